//! HTTP: the signed TUF repository under `/tuf` (public) and the JSON API under `/api/v1`
//! (bearer tokens). Every rejection is a JSON `{"error": ...}` with a 4xx status. The bodies
//! agents and the builder exchange with it are the types of [`patchbay_core::protocol`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use patchbay_core::protocol::{
    CheckInReply, CheckInRequest, HostState, KernelsReply, RegisterRequest,
};
use patchbay_core::{BuildId, ChannelName, PatchLevel};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::auth::{Caller, Role};
use crate::error::ServerError;
use crate::service::{Service, WaveRequest};
use crate::store::{HostFilter, HostRecord};

type AppState = Arc<Service>;

/// `Json<T>` whose rejections are our JSON errors.
struct ApiJson<T>(T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                let status = rejection.status();
                let text = rejection.body_text();
                Err(if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ServerError::TooLarge(text)
                } else {
                    ServerError::BadRequest(format!("invalid JSON body: {text}"))
                })
            }
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ServerError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ServerError::Unauthorized("missing `Authorization: Bearer <token>` header".into())
        })?
        .to_str()
        .map_err(|_| ServerError::Unauthorized("the Authorization header is not text".into()))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ServerError::Unauthorized("expected `Authorization: Bearer <token>`".into()))
}

/// An API caller: its token's name (the audit actor) and role.
struct Api(Caller);

impl FromRequestParts<AppState> for Api {
    type Rejection = ServerError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        Ok(Api(state.caller_for_token(token).await?))
    }
}

/// A registered host.
struct Host(HostRecord);

impl FromRequestParts<AppState> for Host {
    type Rejection = ServerError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        Ok(Host(state.host_for_token(token).await?))
    }
}

pub(crate) fn channel_name(name: &str) -> Result<ChannelName, ServerError> {
    name.parse()
        .map_err(|e: patchbay_core::IdError| ServerError::BadRequest(e.to_string()))
}

pub(crate) fn build_id(text: &str) -> Result<BuildId, ServerError> {
    text.parse()
        .map_err(|e: patchbay_core::IdError| ServerError::BadRequest(e.to_string()))
}

/// A host state filter; an unknown state is refused (with the states there are) rather than
/// matching no host, like a malformed channel or build-id.
pub(crate) fn host_state(text: &str) -> Result<HostState, ServerError> {
    text.parse()
        .map_err(|e: patchbay_core::protocol::UnknownHostState| {
            ServerError::BadRequest(e.to_string())
        })
}

pub(crate) fn level(n: u32) -> Result<PatchLevel, ServerError> {
    PatchLevel::try_from(n).map_err(|e| ServerError::BadRequest(e.to_string()))
}

/// A level named in a path (`…/levels/{level}/…`).
pub(crate) fn level_in_path(text: &str) -> Result<PatchLevel, ServerError> {
    text.parse()
        .map_err(|e: patchbay_core::IdError| ServerError::BadRequest(format!("level: {e}")))
}

/// The whole HTTP surface of a server: `/api/v1/…`, the TUF repository under `/tuf/`,
/// `/healthz`, `/metrics` and the dashboard under `/ui`, with the body-size, timeout and
/// concurrency limits of `[limits]` applied.
pub fn router(service: Arc<Service>) -> Router {
    let max_json = usize::try_from(service.config.limits.max_json_bytes).unwrap_or(usize::MAX);
    let max_bundle = usize::try_from(service.config.limits.max_bundle_bytes).unwrap_or(usize::MAX);
    let api = Router::new()
        .route("/register", post(register))
        .route("/checkin", post(checkin))
        .route(
            "/bundles",
            post(publish).layer(DefaultBodyLimit::max(max_bundle)),
        )
        .route("/kernels", get(kernels))
        .route(
            "/kernels/{build_id}/levels/{level}/report",
            get(report).post(attach_report).layer(DefaultBodyLimit::max(
                patchbay_core::report::REPORT_MAX_BYTES,
            )),
        )
        .route("/channels", get(channels).post(create_channel))
        .route("/channels/{name}", get(channel))
        .route("/channels/{name}/promote", post(promote))
        .route("/channels/{name}/pin", post(pin))
        .route("/channels/{name}/unpin", post(unpin))
        .route("/channels/{name}/rollback", post(rollback))
        .route(
            "/registration-keys",
            get(registration_keys).post(registration_key),
        )
        .route(
            "/registration-keys/{id}",
            axum::routing::delete(revoke_registration_key),
        )
        .route("/tokens", get(tokens))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/hosts", get(hosts))
        .route("/hosts/{id}", axum::routing::delete(revoke_host))
        .route("/hosts/{id}/exposure", get(host_exposure))
        .route("/hosts/{id}/vex", get(host_vex))
        .route("/cve/exposure/{version}", get(cve_exposure))
        .route("/reports/compliance", get(compliance))
        .route("/audit", get(audit))
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(max_json));
    let app = Router::new()
        .nest("/api/v1", api)
        .route("/tuf/metadata/{file}", get(tuf_metadata))
        .route("/tuf/targets/{*path}", get(tuf_target))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .nest("/ui", crate::ui::router())
        .route(
            "/ui/",
            get(|| async { axum::response::Redirect::to("/ui") }),
        )
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .fallback(|| async {
            ServerError::NotFound("no such endpoint; see /api/v1/openapi.json".into())
        })
        .with_state(service.clone());
    bounded(
        app,
        &service.config.limits,
        service.config.trusted_proxies.clone(),
        Some(Arc::clone(&service)),
    )
}

/// `app` with every request bounded by `limits` (see [`limit_requests`]); `service` tells
/// which requests carry a valid token (without it, only `/tuf` is the fleet's).
fn bounded(
    app: Router,
    limits: &crate::config::Limits,
    trusted_proxies: Vec<crate::proxy::AddressRange>,
    service: Option<Arc<Service>>,
) -> Router {
    let timeout = std::time::Duration::from_secs(u64::from(limits.request_timeout_secs));
    let limits = Arc::new(RequestLimits {
        shares: crate::throttle::RequestShares::new(limits, timeout / 2),
        timeout,
        min_body_bytes_per_sec: limits.min_body_bytes_per_sec,
        body_rate_window: std::time::Duration::from_secs(u64::from(limits.body_rate_window_secs)),
        trusted_proxies,
        service,
    });
    app.layer(axum::middleware::from_fn_with_state(limits, limit_requests))
}

/// How many requests of each share run at once, how long each may take and how fast its
/// body must come (`[limits]` in config.toml).
#[derive(Debug)]
struct RequestLimits {
    shares: crate::throttle::RequestShares,
    timeout: std::time::Duration,
    min_body_bytes_per_sec: u32,
    body_rate_window: std::time::Duration,
    trusted_proxies: Vec<crate::proxy::AddressRange>,
    service: Option<Arc<Service>>,
}

/// The share a request draws from: the fleet's for `/tuf` and for a token the server knows
/// (a host's on check-in, an API token elsewhere under `/api/v1`), else the anonymous one.
async fn request_class(
    service: Option<&Service>,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> crate::throttle::RequestClass {
    use crate::throttle::RequestClass;
    if path.starts_with("/tuf/") {
        return RequestClass::Fleet;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let (Some(service), Some(token), Some(route)) = (service, token, path.strip_prefix("/api/v1/"))
    else {
        return RequestClass::Anonymous;
    };
    let known = if route == "checkin" {
        service.host_for_token(token).await.is_ok()
    } else {
        service.caller_for_token(token).await.is_ok()
    };
    if known {
        RequestClass::Fleet
    } else {
        RequestClass::Anonymous
    }
}

/// Bounds every request: it takes a slot of its share (`limits.max_concurrent_requests` for
/// the fleet, `limits.max_anonymous_requests` for the rest, at most
/// `limits.max_anonymous_requests_per_address` of those from one address: 429) and waits
/// for one at most half the timeout (503: a full server says so rather than queue without
/// end); then it must be answered, body upload included, within
/// `limits.request_timeout_secs` (408), and its body must keep coming at
/// `limits.min_body_bytes_per_sec` (408). A slow or stalled client holds neither a task nor
/// its buffers, and anonymous clients never hold the fleet's slots.
async fn limit_requests(
    State(limits): State<Arc<RequestLimits>>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = tokio::time::Instant::now();
    // The connection's header clock stops until this request's response is sent.
    let connection = request
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::listener::Connection>>()
        .map(|info| info.0.clone());
    let open = connection.as_ref().map(|c| {
        let peer = crate::listener::PeerAddress(c.peer);
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        crate::listener::OpenRequest::start(Arc::clone(&c.state))
    });
    let client = crate::proxy::client_address(
        connection.as_ref().map(|c| c.peer.ip()),
        request.headers(),
        &limits.trusted_proxies,
    );
    let (parts, body) = request.into_parts();
    let class = request_class(limits.service.as_deref(), parts.uri.path(), &parts.headers).await;
    let admitted = match limits.shares.admit(class, client).await {
        Ok(admitted) => admitted,
        Err(refused) => return with_open_request(refused.into_response(), open),
    };
    let (request, mut body_rate) = {
        let (body, rate) = crate::throttle::BodyRate::watch(
            body,
            limits.min_body_bytes_per_sec,
            limits.body_rate_window,
        );
        (Request::from_parts(parts, body), rate)
    };
    let left = limits.timeout.saturating_sub(started.elapsed());
    let handler = next.run(request);
    tokio::pin!(handler);
    let deadline = tokio::time::sleep(left);
    tokio::pin!(deadline);
    let window = limits.body_rate_window;
    let mut windows = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
    let response = loop {
        tokio::select! {
            response = &mut handler => break response,
            () = &mut deadline => break ServerError::Timeout(format!(
                "the request was not complete within {} s (limits.request_timeout_secs); send \
                 it faster or raise the limit",
                limits.timeout.as_secs()
            ))
            .into_response(),
            _ = windows.tick() => if body_rate.too_slow() {
                break ServerError::Timeout(format!(
                    "the request body came slower than {} bytes/s over {} s \
                     (limits.min_body_bytes_per_sec, limits.body_rate_window_secs)",
                    limits.min_body_bytes_per_sec,
                    window.as_secs()
                ))
                .into_response();
            },
        }
    };
    drop(admitted);
    with_open_request(response, open)
}

/// `response` whose body holds `open` until it is sent or dropped.
fn with_open_request(response: Response, open: Option<crate::listener::OpenRequest>) -> Response {
    match open {
        None => response,
        Some(open) => {
            response.map(|body| axum::body::Body::new(HoldWhileSending { body, _open: open }))
        }
    }
}

/// A response body that keeps its request open (see [`crate::listener::ConnectionState`]).
struct HoldWhileSending {
    body: axum::body::Body,
    _open: crate::listener::OpenRequest,
}

impl http_body::Body for HoldWhileSending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

async fn register(
    State(service): State<AppState>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Response, ServerError> {
    let reply = service.register(request).await?;
    Ok((StatusCode::CREATED, Json(reply)).into_response())
}

async fn checkin(
    State(service): State<AppState>,
    Host(host): Host,
    ApiJson(request): ApiJson<CheckInRequest>,
) -> Result<Json<CheckInReply>, ServerError> {
    Ok(Json(service.checkin(&host, request).await?))
}

/// A raw request body, or our JSON error: 413 saying `too_large`, else 400.
fn upload(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    too_large: impl FnOnce() -> String,
) -> Result<Bytes, ServerError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServerError::TooLarge(too_large())
        } else {
            ServerError::BadRequest(r.body_text())
        }
    })
}

async fn publish(
    State(service): State<AppState>,
    Api(caller): Api,
    body: axum::body::Body,
) -> Result<Response, ServerError> {
    caller.require(Role::Operator, "publishing a level")?;
    let actor = caller.actor.as_str();
    // Received into a file, never whole in memory.
    let upload = crate::blobs::Upload::receive(
        body,
        &service.data_dir,
        service.config.limits.max_bundle_bytes,
        "limits.max_bundle_bytes",
    )
    .await?;
    let receipt = service.publish_upload(actor, upload).await?;
    Ok((StatusCode::CREATED, Json(receipt)).into_response())
}

async fn kernels(
    State(service): State<AppState>,
    Api(caller): Api,
) -> Result<Json<KernelsReply>, ServerError> {
    caller.require(Role::Viewer, "listing kernels")?;
    Ok(Json(KernelsReply {
        kernels: service.kernels().await?,
    }))
}

async fn attach_report(
    State(service): State<AppState>,
    Api(caller): Api,
    Path((id, n)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ServerError> {
    caller.require(Role::Operator, "attaching an upgrade report")?;
    let (id, n) = (build_id(&id)?, level_in_path(&n)?);
    let body = upload(body, || {
        format!(
            "the upgrade report is larger than the {} bytes a server accepts",
            patchbay_core::report::REPORT_MAX_BYTES
        )
    })?;
    service
        .attach_report(&caller.actor, &id, n, body.as_ref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "build_id": id, "level": n, "report": true })),
    )
        .into_response())
}

async fn report(
    State(service): State<AppState>,
    Api(caller): Api,
    Path((id, n)): Path<(String, String)>,
) -> Result<Json<patchbay_core::UpgradeReport>, ServerError> {
    caller.require(Role::Viewer, "reading an upgrade report")?;
    Ok(Json(
        service.report(&build_id(&id)?, level_in_path(&n)?).await?,
    ))
}

async fn channels(
    State(service): State<AppState>,
    Api(caller): Api,
) -> Result<Json<serde_json::Value>, ServerError> {
    caller.require(Role::Viewer, "listing channels")?;
    Ok(Json(
        serde_json::json!({ "channels": service.channels().await? }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateChannel {
    name: String,
}

async fn create_channel(
    State(service): State<AppState>,
    Api(caller): Api,
    ApiJson(request): ApiJson<CreateChannel>,
) -> Result<Response, ServerError> {
    caller.require(Role::Operator, "creating a channel")?;
    let actor = caller.actor.as_str();
    let doc = service.create_channel(actor, &request.name).await?;
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

async fn channel(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(name): Path<String>,
) -> Result<Json<patchbay_core::ChannelDoc>, ServerError> {
    caller.require(Role::Viewer, "reading a channel")?;
    Ok(Json(service.channel_doc(&channel_name(&name)?).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Promote {
    build_id: String,
    level: u32,
    #[serde(default)]
    deploy_after_secs: u64,
    #[serde(default)]
    waves: Vec<WaveRequest>,
}

async fn promote(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<Promote>,
) -> Result<Json<patchbay_core::ChannelDoc>, ServerError> {
    caller.require(Role::Operator, "promoting a level")?;
    let actor = caller.actor.as_str();
    let channel = channel_name(&name)?;
    let doc = service
        .promote(
            actor,
            &channel,
            &build_id(&request.build_id)?,
            level(request.level)?,
            request.deploy_after_secs,
            &request.waves,
        )
        .await?;
    Ok(Json(doc))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pin {
    build_id: String,
    level: Option<u32>,
}

async fn pin(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<Pin>,
) -> Result<Json<patchbay_core::ChannelDoc>, ServerError> {
    caller.require(Role::Operator, "pinning a channel")?;
    let actor = caller.actor.as_str();
    let level = request.level.map(level).transpose()?;
    Ok(Json(
        service
            .pin(
                actor,
                &channel_name(&name)?,
                &build_id(&request.build_id)?,
                level,
            )
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Unpin {
    build_id: String,
}

async fn unpin(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<Unpin>,
) -> Result<Json<patchbay_core::ChannelDoc>, ServerError> {
    caller.require(Role::Operator, "unpinning a channel")?;
    let actor = caller.actor.as_str();
    Ok(Json(
        service
            .unpin(actor, &channel_name(&name)?, &build_id(&request.build_id)?)
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    build_id: String,
    level: u32,
}

async fn rollback(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<Rollback>,
) -> Result<Json<patchbay_core::ChannelDoc>, ServerError> {
    caller.require(Role::Operator, "rolling a channel back")?;
    let actor = caller.actor.as_str();
    Ok(Json(
        service
            .rollback(
                actor,
                &channel_name(&name)?,
                &build_id(&request.build_id)?,
                level(request.level)?,
            )
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRegistrationKey {
    channel: String,
}

async fn registration_key(
    State(service): State<AppState>,
    Api(caller): Api,
    ApiJson(request): ApiJson<NewRegistrationKey>,
) -> Result<Response, ServerError> {
    caller.require(Role::Admin, "creating a registration key")?;
    let actor = caller.actor.as_str();
    let key = service
        .create_registration_key(actor, &request.channel)
        .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "key": key }))).into_response())
}

async fn registration_keys(
    State(service): State<AppState>,
    Api(caller): Api,
) -> Result<Json<serde_json::Value>, ServerError> {
    caller.require(Role::Admin, "listing registration keys")?;
    Ok(Json(
        serde_json::json!({ "registration_keys": service.registration_keys().await? }),
    ))
}

async fn revoke_registration_key(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ServerError> {
    caller.require(Role::Admin, "revoking a registration key")?;
    service.revoke_registration_key(&caller.actor, &id).await?;
    Ok(Json(serde_json::json!({ "revoked": id })))
}

async fn tokens(
    State(service): State<AppState>,
    Api(caller): Api,
) -> Result<Json<serde_json::Value>, ServerError> {
    caller.require(Role::Admin, "listing API tokens")?;
    Ok(Json(
        serde_json::json!({ "tokens": service.tokens().await? }),
    ))
}

async fn revoke_token(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ServerError> {
    caller.require(Role::Admin, "revoking an API token")?;
    service.revoke_token(&caller.actor, &id).await?;
    Ok(Json(serde_json::json!({ "revoked": id })))
}

async fn revoke_host(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ServerError> {
    caller.require(Role::Admin, "revoking a host")?;
    service.revoke_host(&caller.actor, &id).await?;
    Ok(Json(serde_json::json!({ "revoked": id })))
}

async fn hosts(
    State(service): State<AppState>,
    Api(caller): Api,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ServerError> {
    caller.require(Role::Viewer, "listing hosts")?;
    let mut filter = HostFilter::default();
    for (key, value) in &query {
        match key.as_str() {
            "channel" => filter.channel = Some(channel_name(value)?),
            "build_id" => filter.build_id = Some(build_id(value)?),
            "state" => filter.state = Some(host_state(value)?),
            other => {
                return Err(ServerError::BadRequest(format!(
                    "unknown filter {other:?}; use channel, build_id or state"
                )))
            }
        }
    }
    Ok(Json(
        serde_json::json!({ "hosts": service.hosts(&filter).await? }),
    ))
}

async fn audit(
    State(service): State<AppState>,
    Api(caller): Api,
) -> Result<Json<serde_json::Value>, ServerError> {
    caller.require(Role::Viewer, "reading the audit log")?;
    Ok(Json(
        serde_json::json!({ "audit": service.audit_log(1000).await? }),
    ))
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn tuf_metadata(
    State(service): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ServerError> {
    let bytes = service
        .served_metadata(&file)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("no TUF metadata {file:?}")))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        bytes,
    )
        .into_response())
}

/// The blob a consistent-snapshot target path asks for. The specification puts the hash on
/// the file name (`bundles/<id>/<sha256>.1.pbb`, as python-tuf asks); tough puts it before the
/// whole target name (`<sha256>.bundles/<id>/1.pbb`). Either way the hash addresses the blob.
fn consistent_target_hash(path: &str) -> Option<&str> {
    let is_hash = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    let whole_name = path.split_once('.').map(|(h, _)| h).filter(|h| is_hash(h));
    let file_name = path
        .rsplit('/')
        .next()
        .and_then(|file| file.split_once('.'))
        .map(|(h, _)| h)
        .filter(|h| is_hash(h));
    whole_name.or(file_name)
}

async fn tuf_target(
    State(service): State<AppState>,
    Path(path): Path<String>,
) -> Result<Response, ServerError> {
    let not_found = || ServerError::NotFound(format!("no TUF target {path:?}"));
    let hash = consistent_target_hash(&path).ok_or_else(not_found)?;
    let (length, body) = service.served_target(hash).await?.ok_or_else(not_found)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(length)),
        ],
        body,
    )
        .into_response())
}

async fn host_exposure(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(id): Path<String>,
) -> Result<Json<crate::cve::WithDataStatus<crate::cve::HostExposure>>, ServerError> {
    caller.require(Role::Viewer, "reading a host's exposure")?;
    let host = service.host(&id).await?;
    Ok(Json(crate::cve::WithDataStatus {
        answer: service.host_exposure(&host).await?,
        cve_data: service.cve_data_status(),
    }))
}

async fn host_vex(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ServerError> {
    caller.require(Role::Viewer, "reading a host's VEX document")?;
    let host = service.host(&id).await?;
    Ok(Json(service.host_vex(&host).await?))
}

fn query_day(query: &HashMap<String, String>) -> Result<patchbay_exposure::Day, ServerError> {
    match query.get("at") {
        Some(day) => patchbay_exposure::parse_day(day)
            .map_err(|e| ServerError::BadRequest(format!("at: {e} (use YYYY-MM-DD)"))),
        None => Ok(crate::cve::today()),
    }
}

fn query_policy(query: &HashMap<String, String>) -> Result<patchbay_exposure::Policy, ServerError> {
    let mut policy = patchbay_exposure::Policy::default();
    if let Some(days) = query.get("window_days") {
        policy.window_days = days
            .parse()
            .ok()
            .filter(|d| (1..=3650).contains(d))
            .ok_or_else(|| ServerError::BadRequest("window_days must be 1 to 3650".into()))?;
    }
    Ok(policy)
}

async fn cve_exposure(
    State(service): State<AppState>,
    Api(caller): Api,
    Path(version): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<crate::cve::WithDataStatus<patchbay_exposure::Exposure>>, ServerError> {
    caller.require(Role::Viewer, "reading exposure")?;
    let version = crate::cve::parse_version(&version)?;
    let db = service.cve_db();
    if db.is_empty() {
        return Err(ServerError::Conflict(
            "no CVE data yet; run `patchbay-server cve sync`".into(),
        ));
    }
    // A series without data is 422 naming the series, never an empty exposure.
    patchbay_exposure::try_exposure(
        &db,
        version,
        query_day(&query)?,
        query_policy(&query)?,
        &Default::default(),
    )
    .map(|answer| {
        Json(crate::cve::WithDataStatus {
            answer,
            cve_data: service.cve_data_status(),
        })
    })
    .map_err(|e| ServerError::Unprocessable(e.to_string()))
}

async fn compliance(
    State(service): State<AppState>,
    Api(caller): Api,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ServerError> {
    caller.require(Role::Viewer, "reading the compliance report")?;
    let series = query
        .get("series")
        .map(|s| {
            s.parse::<patchbay_core::KernelSeries>()
                .map_err(|e| ServerError::BadRequest(format!("series: {e}")))
        })
        .transpose()?;
    let mut rows = service
        .compliance(query_day(&query)?, query_policy(&query)?)
        .await?;
    if let Some(s) = &series {
        rows = crate::cve::rows_of_series(rows, s);
    }
    let data = service.cve_data_status();
    match query.get("format").map(String::as_str) {
        Some("csv") => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            )],
            crate::cve::compliance_csv(&rows, &data),
        )
            .into_response()),
        None | Some("json") => {
            Ok(Json(serde_json::json!({ "hosts": rows, "cve_data": data })).into_response())
        }
        Some(other) => Err(ServerError::BadRequest(format!(
            "format {other:?}: use json or csv"
        ))),
    }
}

/// Prometheus text format (for any API token, or disabled by config): hosts by state, exposed CVEs by severity (distinct CVEs still open
/// somewhere in the fleet, each host evaluated in its own kernel series), hosts breaching the window, hosts by series and CVE data
/// state, check-ins, errors.
async fn metrics(
    State(service): State<AppState>,
    caller: Result<Api, ServerError>,
) -> Result<Response, ServerError> {
    if service.config.metrics.access == crate::config::MetricsAccess::Disabled {
        return Err(ServerError::NotFound(
            "/metrics is disabled on this server (metrics.access = \"disabled\" in config.toml)"
                .into(),
        ));
    }
    let Api(caller) = caller?;
    caller.require(Role::Viewer, "reading /metrics")?;
    let metrics = service.metrics().await?;
    let by_state = &metrics.hosts_by_state;
    let snapshot = &metrics.exposure.snapshot;
    let breaching = snapshot.hosts_breached;
    let by_severity = [
        ("critical", snapshot.critical),
        ("high", snapshot.high),
        ("medium", snapshot.medium),
        ("low", snapshot.low),
        ("unscored", snapshot.unscored),
    ];
    let checkins = metrics.checkins;
    let mut out = String::new();
    out.push_str("# HELP patchbay_hosts Registered hosts by last reported state.\n# TYPE patchbay_hosts gauge\n");
    for state in HostState::ALL {
        out.push_str(&format!(
            "patchbay_hosts{{state=\"{state}\"}} {}\n",
            by_state.get(&state).copied().unwrap_or(0)
        ));
    }
    out.push_str("# HELP patchbay_exposed_cves Distinct CVEs still open on at least one host (live patches counted), by severity.\n# TYPE patchbay_exposed_cves gauge\n");
    for (severity, n) in by_severity {
        out.push_str(&format!(
            "patchbay_exposed_cves{{severity=\"{severity}\"}} {n}\n"
        ));
    }
    out.push_str(&format!("# HELP patchbay_hosts_window_breached Hosts with a CVSS >= 7 CVE open longer than the window.\n# TYPE patchbay_hosts_window_breached gauge\npatchbay_hosts_window_breached {breaching}\n"));
    out.push_str("# HELP patchbay_hosts_by_series Hosts by kernel series and what the CVE data knows of it (complete; stale: the release is newer than the newest fix the data names; no_data: exposure unknown).\n# TYPE patchbay_hosts_by_series gauge\n");
    for ((series, data), n) in &metrics.hosts_by_series {
        out.push_str(&format!(
            "patchbay_hosts_by_series{{series=\"{series}\",cve_data=\"{data}\"}} {n}\n"
        ));
    }
    out.push_str(&format!("# HELP patchbay_hosts_exposure_unknown Hosts whose exposure cannot be computed (no upstream release, or no CVE data for its series): not counted in patchbay_exposed_cves.\n# TYPE patchbay_hosts_exposure_unknown gauge\npatchbay_hosts_exposure_unknown {}\n", metrics.exposure.hosts_unknown));
    out.push_str(&cve_data_metrics(&metrics));
    out.push_str(&format!("# HELP patchbay_checkins_total Check-ins received.\n# TYPE patchbay_checkins_total counter\npatchbay_checkins_total {checkins}\n"));
    out.push_str(&format!("# HELP patchbay_hosts_in_error Hosts whose last check-in reported an error.\n# TYPE patchbay_hosts_in_error gauge\npatchbay_hosts_in_error {}\n", by_state.get(&HostState::Error).copied().unwrap_or(0)));
    let now = jiff::Timestamp::now();
    let expiries = &metrics.expiries;
    out.push_str("# HELP patchbay_tuf_expires_seconds Seconds until each served TUF role expires (negative: expired).\n# TYPE patchbay_tuf_expires_seconds gauge\n");
    for e in expiries {
        out.push_str(&format!(
            "patchbay_tuf_expires_seconds{{role=\"{}\"}} {}\n",
            e.role,
            e.seconds_left(now)
        ));
    }
    out.push_str(&format!("# HELP patchbay_tuf_offline_role_expiring TUF roles whose keys are offline and that expire within {} days: an administrator must sign them.\n# TYPE patchbay_tuf_offline_role_expiring gauge\n", crate::tuf::OFFLINE_WARNING_DAYS));
    for e in expiries {
        out.push_str(&format!(
            "patchbay_tuf_offline_role_expiring{{role=\"{}\"}} {}\n",
            e.role,
            u8::from(e.warning(now).is_some())
        ));
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response())
}

/// The CVE data's part of `/metrics`: its age per series, whether a series lacks data,
/// whether it is outdated (older than `cve.max_age_days`, or missing), the limit and when it
/// was synced.
fn cve_data_metrics(metrics: &crate::service::Metrics) -> String {
    let data = &metrics.cve_data;
    let mut out = String::from("# HELP patchbay_cve_data_age_seconds Seconds since the newest CVE publication day in the CVE data, per series it covers (absent: no data for the series).\n# TYPE patchbay_cve_data_age_seconds gauge\n");
    for s in &data.series {
        out.push_str(&format!(
            "patchbay_cve_data_age_seconds{{series=\"{}\"}} {}\n",
            s.series, s.age_secs
        ));
    }
    out.push_str("# HELP patchbay_cve_data_missing 1 when the CVE data has nothing for the series (the bundled data's series and every series a host runs): its hosts' exposure is unknown.\n# TYPE patchbay_cve_data_missing gauge\n");
    for (series, missing) in &metrics.cve_series_missing {
        out.push_str(&format!(
            "patchbay_cve_data_missing{{series=\"{series}\"}} {}\n",
            u8::from(*missing)
        ));
    }
    out.push_str(&format!(
        "# HELP patchbay_cve_data_outdated 1 when the CVE data is older than cve.max_age_days or missing.\n# TYPE patchbay_cve_data_outdated gauge\npatchbay_cve_data_outdated {}\n",
        u8::from(data.state != crate::cve::Freshness::Current)
    ));
    out.push_str(&format!(
        "# HELP patchbay_cve_data_max_age_seconds The configured limit (cve.max_age_days).\n# TYPE patchbay_cve_data_max_age_seconds gauge\npatchbay_cve_data_max_age_seconds {}\n",
        u64::from(data.max_age_days) * 86_400
    ));
    if let Some(synced) = data
        .synced_at
        .as_deref()
        .and_then(patchbay_core::clock::parse_rfc3339)
    {
        out.push_str(&format!(
            "# HELP patchbay_cve_data_synced_timestamp_seconds When the CVE data was stored (Unix time).\n# TYPE patchbay_cve_data_synced_timestamp_seconds gauge\npatchbay_cve_data_synced_timestamp_seconds {synced}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    /// A server whose `/hold` route answers only when the test says so (and says when a
    /// request is inside), bounded like the real one.
    async fn holding_server(
        limits: crate::config::Limits,
    ) -> (String, Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>) {
        let entered = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let (inside, gate) = (Arc::clone(&entered), Arc::clone(&release));
        let app = Router::new()
            .route(
                "/hold",
                get(move || async move {
                    inside.notify_one();
                    gate.notified().await;
                    "released"
                }),
            )
            .route("/quick", get(|| async { "quick" }));
        let app = bounded(app, &limits, Vec::new(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, entered, release)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_beyond_the_concurrency_limit_is_refused_with_503() {
        let limits = crate::config::Limits {
            max_anonymous_requests: 1,
            request_timeout_secs: 4,
            ..crate::config::Limits::default()
        };
        let (url, entered, release) = holding_server(limits).await;
        let client = reqwest::Client::new();
        let held = tokio::spawn(client.get(format!("{url}/hold")).send());
        entered.notified().await;
        let refused = client.get(format!("{url}/quick")).send().await.unwrap();
        assert_eq!(refused.status(), 503);
        assert!(refused.headers().contains_key(header::RETRY_AFTER));
        release.notify_one();
        let held = held.await.unwrap().unwrap();
        assert!(held.status() == 200 || held.status() == 408, "{held:?}");
        let after = client.get(format!("{url}/quick")).send().await.unwrap();
        assert_eq!(after.status(), 200, "the slot is free again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_takes_longer_than_the_timeout_is_cut_with_408() {
        let limits = crate::config::Limits {
            request_timeout_secs: 1,
            ..crate::config::Limits::default()
        };
        let (url, _entered, _release) = holding_server(limits).await;
        let response = reqwest::get(format!("{url}/hold")).await.unwrap();
        assert_eq!(response.status(), 408);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("limits.request_timeout_secs"),
            "{body}"
        );
    }
}
