//! The web dashboard: server-rendered pages (maud), no JavaScript. Login with a user's password
//! (Argon2id) gives a session cookie (HttpOnly, SameSite=Strict, expiring); every form that
//! changes something carries the session's CSRF token, asks for confirmation first, and goes
//! through the same service calls (and audit log) as the API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use patchbay_core::protocol::HostState;
use patchbay_core::{BuildId, ChannelName, PatchLevel};
use serde::Deserialize;

use crate::api::{build_id, channel_name, host_state, level};
use crate::auth::{Caller, Role};
use crate::error::ServerError;
use crate::service::users::UserChange;
use crate::service::{random_secret, Service};
use crate::store::{HostFilter, SessionRecord, UserState};
use patchbay_core::clock::unix_seconds;

type AppState = Arc<Service>;

const COOKIE: &str = "pb_session";
const PAGE_SIZE: u32 = 50;

/// The dashboard's pages and forms; [`crate::api::router`] nests them under `/ui`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(fleet))
        .route(
            "/login",
            get(login_page)
                .post(login)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::auth::LOGIN_FORM_MAX_BYTES,
                )),
        )
        .route("/logout", post(logout))
        .route("/hosts", get(hosts))
        .route("/hosts/{id}", get(host))
        .route("/kernels", get(kernels))
        .route("/kernels/{build_id}/{level}", get(level_page))
        .route(
            "/kernels/{build_id}/levels/{level}/report",
            get(report_page),
        )
        .route("/channels", get(channels))
        .route("/channels/{name}", get(channel))
        .route("/channels/{name}/confirm", get(confirm))
        .route("/channels/{name}/apply", post(apply))
        .route("/audit", get(audit))
        .route("/access", get(access))
        .route("/revoke", get(confirm_revoke).post(revoke))
        .route("/users", post(change_user))
        .route("/users/confirm", get(confirm_user_change))
        .route("/compliance", get(compliance))
        .route("/compliance.csv", get(compliance_csv))
        .route("/hosts/{id}/vex.json", get(host_vex))
}

/// A logged-in dashboard user, with the warnings every page shows them: signed metadata that
/// expires soon and needs an administrator's offline key, and CVE data that is missing or
/// older than `cve.max_age_days`.
struct UiUser(SessionRecord, Vec<String>, Option<String>);

impl UiUser {
    /// Refuses (403) a form without this session's CSRF token (compared in constant time).
    fn check_form(&self, csrf: Option<&str>) -> Result<(), ServerError> {
        if csrf.is_some_and(|csrf| crate::auth::secrets_equal(csrf, &self.0.csrf)) {
            Ok(())
        } else {
            Err(ServerError::Forbidden(
                "stale or forged form; reload the page".into(),
            ))
        }
    }

    /// The caller of a form that changes something: refused (403) unless they have at least
    /// `role` (`what` names the change) and the form carries this session's CSRF token.
    fn form_caller(
        &self,
        role: Role,
        what: &str,
        csrf: Option<&str>,
    ) -> Result<Caller, ServerError> {
        let caller = self.caller();
        caller.require(role, what)?;
        self.check_form(csrf)?;
        Ok(caller)
    }

    fn caller(&self) -> Caller {
        Caller {
            actor: format!("user:{}", self.0.user),
            role: self.0.role,
        }
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE)
}

impl FromRequestParts<AppState> for UiUser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/ui/login").into_response();
        let Some(cookie) = session_cookie(&parts.headers) else {
            return Err(to_login());
        };
        match state.session(&cookie).await {
            Ok(Some(session)) => {
                let warnings = state
                    .metadata_warnings()
                    .await
                    .unwrap_or_else(|e| vec![format!("cannot read the signed metadata: {e}")]);
                Ok(UiUser(session, warnings, state.cve_data_status().warning))
            }
            Ok(_) => Err(to_login()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// Errors as pages, with the same statuses as the API.
struct PageError(ServerError);

impl From<ServerError> for PageError {
    fn from(e: ServerError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body = page(
            None,
            "Error",
            html! {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.error { (self.0.to_string()) }
                p { a href="/ui" { "Back to the fleet" } }
            },
        );
        let retry_after = match &self.0 {
            ServerError::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let mut response = (status, body).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

type PageResult = Result<Markup, PageError>;

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1f2d3d;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header .who{margin-left:auto}
main{padding:1.2rem;max-width:75rem}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #e3e6ea;padding:.35rem .6rem;text-align:left;font-size:.92rem}
th{background:#eef1f4}.error{color:#b00020}.ok{color:#1a7f37}.warn{color:#9a6700}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{background:#fff;padding:.8rem 1rem;border:1px solid #e3e6ea;min-width:10rem}
.card b{font-size:1.6rem;display:block}form.inline{display:inline}
button{background:#1f6feb;color:#fff;border:0;padding:.35rem .8rem;cursor:pointer}
input,select{padding:.25rem}code{font-size:.85rem}
.banner{background:#fff4ce;border-bottom:2px solid #9a6700;padding:.6rem 1.2rem}
";

fn page(user: Option<&UiUser>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Patchbay" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "Patchbay" }
                    @if let Some(u) = user {
                        a href="/ui" { "Fleet" }
                        a href="/ui/hosts" { "Hosts" }
                        a href="/ui/kernels" { "Patch levels" }
                        a href="/ui/channels" { "Channels" }
                        a href="/ui/compliance" { "Compliance" }
                        a href="/ui/audit" { "Audit log" }
                        @if u.0.role == Role::Admin { a href="/ui/access" { "Access" } }
                        span.who {
                            (u.0.user) " (" (u.0.role) ") "
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(u.0.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                @if let Some(u) = user {
                    @for warning in &u.1 {
                        div.banner role="alert" { strong { "Signed metadata: " } (warning) }
                    }
                    @if let Some(warning) = &u.2 {
                        div.banner.cve-data #cve-data-banner role="alert" { strong { "CVE data: " } (warning) }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The CVE data's date and source, shown beside every exposure figure.
fn data_line(status: &crate::cve::CveDataStatus) -> Markup {
    let class = match status.state {
        crate::cve::Freshness::Current => "data-line",
        _ => "data-line warn",
    };
    html! { p #cve-data class=(class) { (status.describe()) } }
}

/// A fleet total over the hosts whose exposure is known: the number, or `unknown` when no
/// host's is (never 0 for want of data).
fn fleet_total(fleet: &crate::cve::FleetExposure, n: u64) -> String {
    if fleet.all_unknown() {
        "unknown".to_owned()
    } else {
        n.to_string()
    }
}

fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| unix.to_string())
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// The cookie that carries the login form's CSRF token (double submit: a cross-site form
/// can neither read nor set it, so it cannot send the matching field).
const LOGIN_COOKIE: &str = "pb_login";

/// The attributes every cookie the dashboard sets carries (`Secure` when it is served over
/// TLS, see `ui.served_over`).
fn cookie_attributes(service: &Service, max_age: i64) -> String {
    let secure = match service.config.ui.served_over {
        crate::config::Transport::Https => "; Secure",
        crate::config::Transport::Http => "",
    };
    format!("Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

fn cookie(headers: &HeaderMap, wanted: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == wanted).then(|| value.to_owned())
        })
}

/// The login page with a fresh login CSRF token in the form and in a short-lived cookie.
async fn login_page(State(service): State<AppState>) -> Response {
    login_response(&service, StatusCode::OK, None)
}

fn login_response(service: &Service, status: StatusCode, error: Option<&str>) -> Response {
    let Ok(token) = random_secret("l") else {
        return ServerError::Tuf("random".into()).into_response();
    };
    let mut response = (status, login_form(&token, error)).into_response();
    let set = format!(
        "{LOGIN_COOKIE}={token}; {}",
        cookie_attributes(service, 3600)
    );
    if let Ok(value) = HeaderValue::from_str(&set) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn login_form(csrf: &str, error: Option<&str>) -> Markup {
    page(
        None,
        "Log in",
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.error { (e) } }
            form method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(csrf);
                p { label { "User " input name="user" autocomplete="username" required; } }
                p { label { "Password " input name="password" type="password" autocomplete="current-password" required; } }
                p { button type="submit" { "Log in" } }
            }
        },
    )
}

async fn login(
    State(service): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE);
    let csrf_ok = matches!(
        (&expected, &form.csrf),
        (Some(cookie), Some(field)) if crate::auth::secrets_equal(cookie, field)
    );
    if !csrf_ok {
        return login_response(
            &service,
            StatusCode::FORBIDDEN,
            Some("The login form expired or came from another site; log in again here."),
        );
    }
    // `serve` gives every request its peer's address; a router served without it (in-process
    // tests) counts all its clients as one address. Behind a trusted proxy the client is
    // named in X-Forwarded-For.
    let peer = extensions
        .get::<axum::extract::ConnectInfo<crate::listener::PeerAddress>>()
        .map(|info| info.0 .0.ip());
    let address = crate::proxy::client_address(peer, &headers, &service.config.trusted_proxies);
    let opened = match service.login(&form.user, form.password, address).await {
        Ok(Some(opened)) => opened,
        Ok(None) => {
            return login_response(
                &service,
                StatusCode::UNAUTHORIZED,
                Some("Unknown user or wrong password."),
            )
        }
        Err(e) => return PageError(e).into_response(),
    };
    let set = format!(
        "{COOKIE}={}; {}",
        opened.cookie,
        cookie_attributes(&service, opened.max_age_secs)
    );
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(value) = HeaderValue::from_str(&set) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    // The login token has served its purpose.
    let spent = format!("{LOGIN_COOKIE}=; {}", cookie_attributes(&service, 0));
    if let Ok(value) = HeaderValue::from_str(&spent) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(service): State<AppState>,
    user: UiUser,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(e) = user.check_form(Some(&form.csrf)) {
        return PageError(e).into_response();
    }
    let _ = service.end_session(&user.0).await;
    let mut response = Redirect::to("/ui/login").into_response();
    let cleared = format!("{COOKIE}=; {}", cookie_attributes(&service, 0));
    if let Ok(value) = HeaderValue::from_str(&cleared) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A horizontal bar chart as inline SVG.
fn bar_chart(title: &str, bars: &[(String, u64)]) -> Markup {
    let max = bars.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let row = 26u64;
    let height = row * bars.len() as u64 + 10;
    html! {
        figure {
            figcaption { (title) }
            svg xmlns="http://www.w3.org/2000/svg" width="520" height=(height) role="img" aria-label=(title) {
                @for (i, (label, n)) in bars.iter().enumerate() {
                    @let y = i as u64 * row + 4;
                    @let width = 300 * n / max;
                    text x="0" y=(y + 15) font-size="13" { (label) }
                    rect x="150" y=(y) width=(width.max(1)) height="18" fill="#1f6feb" {}
                    text x=(155 + width) y=(y + 15) font-size="13" { (n) }
                }
            }
        }
    }
}

async fn fleet(State(service): State<AppState>, user: UiUser) -> PageResult {
    let hosts = service.hosts(&HostFilter::default()).await?;
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_kernel: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_channel: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_level: BTreeMap<String, u64> = BTreeMap::new();
    for h in &hosts {
        *by_state.entry(h.state.to_string()).or_default() += 1;
        *by_kernel.entry(h.kernel_release.to_string()).or_default() += 1;
        *by_channel.entry(h.channel.to_string()).or_default() += 1;
        *by_level
            .entry(
                h.active_level
                    .map_or("none".into(), |l| format!("level {l}")),
            )
            .or_default() += 1;
    }
    let stale = hosts
        .iter()
        .filter(|h| unix_seconds() - h.last_checkin > 8 * 3600)
        .count();
    let bars = |m: &BTreeMap<String, u64>| -> Vec<(String, u64)> {
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    };
    let fleet = service.fleet_exposure(&hosts).await?;
    let now_snapshot = &fleet.snapshot;
    let data = service.cve_data_status();
    let (by_series, notices) = service.fleet_series(&hosts).await?;
    let series_bars: Vec<(String, u64)> = by_series
        .iter()
        .map(|((series, data), n)| match *data {
            "complete" | "unknown" => (series.clone(), *n),
            other => (format!("{series} ({})", other.replace('_', " ")), *n),
        })
        .collect();
    let mut history = service.exposure_history(90).await?;
    if !fleet.all_unknown() && history.last().is_none_or(|h| h.day != now_snapshot.day) {
        history.push(now_snapshot.clone());
    }
    let severity_bars = vec![
        ("critical".to_owned(), now_snapshot.critical),
        ("high".to_owned(), now_snapshot.high),
        ("medium".to_owned(), now_snapshot.medium),
        ("low".to_owned(), now_snapshot.low),
        ("unscored".to_owned(), now_snapshot.unscored),
    ];
    Ok(page(
        Some(&user),
        "Fleet",
        html! {
            h1 { "Fleet" }
            div.cards {
                div.card { b #hosts-total { (hosts.len()) } "hosts" }
                div.card { b { (by_state.get(HostState::Patched.as_str()).copied().unwrap_or(0)) } "patched" }
                div.card { b { (by_state.get(HostState::Error.as_str()).copied().unwrap_or(0)) } "in error" }
                div.card { b { (stale) } "silent > 8 h" }
                div.card { b #breached { (fleet_total(&fleet, now_snapshot.hosts_breached)) } "hosts past the 30-day window" }
                div.card { b #open-high { (fleet_total(&fleet, now_snapshot.critical + now_snapshot.high)) } "open CVEs with CVSS ≥ 7" }
                @if fleet.hosts_unknown > 0 {
                    div.card.warn { b #hosts-unknown { (fleet.hosts_unknown) } "hosts of unknown exposure (not counted)" }
                }
            }
            (data_line(&data))
            @if !notices.is_empty() {
                ul #data-notices { @for n in &notices { li.warn { (n) } } }
            }
            @if fleet.all_unknown() {
                p.warn #severity-unknown { "Open CVEs by severity: unknown (no host's exposure can be computed)." }
            } @else {
                (bar_chart("Open CVEs by severity (live patches counted)", &severity_bars))
            }
            (trend_chart(&history))
            (bar_chart("Hosts by state", &bars(&by_state)))
            (bar_chart("Hosts by kernel series", &series_bars))
            (bar_chart("Hosts by kernel", &bars(&by_kernel)))
            (bar_chart("Hosts by patch level", &bars(&by_level)))
            (bar_chart("Hosts by channel", &bars(&by_channel)))
        },
    ))
}

/// One line of the trend chart: name, colour, and the value it plots.
type Series = (
    &'static str,
    &'static str,
    fn(&crate::store::ExposureSnapshot) -> u64,
);

/// Open CVEs by severity over time, one polyline per severity, as inline SVG.
fn trend_chart(history: &[crate::store::ExposureSnapshot]) -> Markup {
    let (w, h, pad) = (520u64, 160u64, 30u64);
    let max = history
        .iter()
        .map(|s| {
            s.critical
                .max(s.high)
                .max(s.medium)
                .max(s.low)
                .max(s.unscored)
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let n = history.len().max(2) as u64 - 1;
    let x = |i: usize| pad + (w - 2 * pad) * i as u64 / n;
    let y = |v: u64| h - pad + 5 - (h - pad) * v / max;
    let series: [Series; 5] = [
        ("critical", "#8b0000", |s| s.critical),
        ("high", "#d1242f", |s| s.high),
        ("medium", "#bf8700", |s| s.medium),
        ("low", "#1f6feb", |s| s.low),
        ("unscored", "#6e7781", |s| s.unscored),
    ];
    html! {
        figure {
            figcaption { "Open CVEs over time (daily snapshots)" }
            svg xmlns="http://www.w3.org/2000/svg" width=(w) height=(h + 20) role="img" aria-label="Open CVEs over time" {
                line x1=(pad) y1=(h - pad + 5) x2=(w - pad) y2=(h - pad + 5) stroke="#888" {}
                @for (name, colour, get) in series {
                    @let points = history.iter().enumerate().map(|(i, s)| format!("{},{}", x(i), y(get(s)))).collect::<Vec<_>>().join(" ");
                    polyline points=(points) fill="none" stroke=(colour) stroke-width="2" { title { (name) } }
                }
                @if let (Some(first), Some(last)) = (history.first(), history.last()) {
                    text x=(pad) y=(h + 12) font-size="11" { (first.day) }
                    text x=(w - pad - 60) y=(h + 12) font-size="11" { (last.day) }
                }
                text x="0" y="12" font-size="11" { (max) }
            }
            p { @for (name, colour, _) in series { span style={"color:" (colour)} { "■ " (name) " " } } }
        }
    }
}

async fn hosts(
    State(service): State<AppState>,
    user: UiUser,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let mut filter = HostFilter::default();
    if let Some(c) = query.get("channel").filter(|c| !c.is_empty()) {
        filter.channel = Some(
            c.parse()
                .map_err(|e: patchbay_core::IdError| ServerError::BadRequest(e.to_string()))?,
        );
    }
    if let Some(s) = query.get("state").filter(|s| !s.is_empty()) {
        filter.state = Some(host_state(s)?);
    }
    let page_no: u32 = query
        .get("page")
        .map(|p| p.parse())
        .transpose()
        .map_err(|_| ServerError::BadRequest("page must be a number".into()))?
        .unwrap_or(1)
        .max(1);
    let total = service.count_hosts(&filter).await?;
    filter.limit = Some(PAGE_SIZE);
    filter.offset = (page_no - 1).saturating_mul(PAGE_SIZE);
    let list = service.hosts(&filter).await?;
    let pages = total.div_ceil(u64::from(PAGE_SIZE)).max(1);
    Ok(page(
        Some(&user),
        "Hosts",
        html! {
            h1 { "Hosts (" (total) ")" }
            form method="get" action="/ui/hosts" {
                "Channel " input name="channel" value=(query.get("channel").cloned().unwrap_or_default());
                " State " input name="state" value=(query.get("state").cloned().unwrap_or_default());
                " " button type="submit" { "Filter" }
            }
            table #hosts {
                tr { th { "Host" } th { "Kernel" } th { "Channel" } th { "Level" } th { "State" } th { "Last check-in" } }
                @for h in &list {
                    tr {
                        td { a href={"/ui/hosts/" (h.id)} { (h.hostname) } }
                        td { (h.kernel_release) }
                        td { (h.channel) }
                        td.level { @if let Some(l) = h.active_level { (l) } @else { "none" } }
                        td.state { (h.state) }
                        td { (when(h.last_checkin)) }
                    }
                }
            }
            p { "Page " (page_no) " of " (pages) " "
                @if page_no > 1 { a href={"/ui/hosts?page=" (page_no - 1)} { "previous" } " " }
                @if u64::from(page_no) < pages { a href={"/ui/hosts?page=" (page_no + 1)} { "next" } }
            }
        },
    ))
}

async fn host(State(service): State<AppState>, user: UiUser, Path(id): Path<String>) -> PageResult {
    let h = service.host(&id).await?;
    let exposure = service.host_exposure(&h).await?;
    let data = service.cve_data_status();
    let coverage = exposure
        .upstream_version
        .map(|v| patchbay_exposure::DataCoverage::of(&service.cve_db(), &v));
    let level = match h.active_level {
        Some(l) => service.find_level(&h.build_id, l).await?,
        None => None,
    };
    Ok(page(
        Some(&user),
        &h.hostname,
        html! {
            h1 { "Host " (h.hostname) }
            table {
                tr { th { "Host id" } td { code { (h.id) } } }
                tr { th { "Kernel" } td { (h.kernel_release) " " code { (h.build_id) } } }
                tr { th { "Channel" } td { a href={"/ui/channels/" (h.channel)} { (h.channel) } } }
                tr { th { "Active level" } td #active-level { @if let Some(l) = h.active_level {
                    a href={"/ui/kernels/" (h.build_id) "/" (l)} { "level " (l) } } @else { "none" } } }
                tr { th { "State" } td #state { (h.state) } }
                @if let Some(e) = &h.last_error { tr { th { "Last error" } td.error { (e) } } }
                @if let Some(c) = &h.clock_warning { tr #clock-warning { th { "Clock" } td.error {
                    "the host's clock read " (when(c.host_time)) " when the server's read "
                    (when(c.reported_at)) " (" (clock_offset(c.behind_secs())) "): " (c.detail) } } }
                tr { th { "Agent" } td { (h.agent_version) } }
                tr { th { "Registered" } td { (when(h.registered_at)) } }
                tr { th { "Last check-in" } td { (when(h.last_checkin)) } }
            }
            @if user.0.role == Role::Admin {
                p { a #revoke href={"/ui/revoke?kind=host&id=" (h.id)} { "Revoke this host…" } }
            }
            @if let Some(level) = level {
                h2 { "Fixes live on this host" }
                ul #live-fixes { @for cve in &level.manifest.fixes { li { (cve) } } }
            }
            h2 { "Exposure" }
            (data_line(&data))
            @if let Some(notice) = exposure.live.as_ref().and_then(|l| l.data.notice.as_ref()) {
                p.warn #data-notice { (notice) }
            }
            @match (&exposure.base, &exposure.live) {
                (Some(base), Some(live)) => {
                    table #exposure {
                        tr { th {} th { "Kernel alone" } th { "With the live patch" } }
                        tr { th { "CVEs" } td #base-cves { (base.cves) } td #live-cves { (live.cves) } }
                        tr { th { "CVSS ≥ 7" } td { (base.high) } td #live-high { (live.high) } }
                        tr { th { "≥ 7 and public > 30 days" } td { (base.high_overdue) } td #live-overdue { (live.high_overdue) } }
                        tr { th { "Known exploited (KEV)" } td { (base.kev) } td { (live.kev) } }
                    }
                    p { "Upstream release " (exposure.upstream_version.map(|v| v.to_string()).unwrap_or_default())
                        "; effective release with the live patch " strong #effective { (exposure.effective_version.map(|v| v.to_string()).unwrap_or_default()) }
                        ". " a href={"/ui/hosts/" (h.id) "/vex.json"} { "CSAF VEX document" } }
                    @for offer in exposure.upgrades.iter().filter(|o| !o.closes.is_empty()) {
                        p.upgrade { "Level " (offer.level) " (published) would close " (offer.closes.len()) ": " (offer.closes.join(", ")) }
                    }
                    h3 { "Open CVEs, most urgent first" }
                    table #cves {
                        tr { th { "CVE" } th { "Score" } th { "Severity" } th { "KEV" } th { "Public" } th { "Window" } th { "Fixed upstream in" } }
                        @for c in live.list.iter().take(200) {
                            tr {
                                td { (c.id) }
                                td { @if let Some(s) = c.score { (format!("{s:.1}")) } @else { "–" } }
                                td { (c.severity.map_or("unscored", |s| s.as_str())) }
                                td { @if c.kev { strong.error { "KEV" } } }
                                td { @if let Some(d) = c.days_public { (d) " days" } @else { "?" } }
                                td { @if c.window_breached { span.error { "breached" } } @else if c.high { span.warn { "open" } } }
                                td { (c.fixed_in.map_or_else(|| live.data.no_fix_text(), |v| v.to_string())) }
                            }
                        }
                    }
                    @if live.list.len() > 200 { p { "… and " (live.list.len() - 200) " more (see the compliance export)." } }
                }
                _ => { @match &coverage {
                    Some(c) if c.state == patchbay_exposure::DataState::NoData => {
                        p.warn #data-notice { (c.notice.clone().unwrap_or_default()) }
                    }
                    Some(_) => { p.warn #data-notice { "Exposure unknown: the server has no CVE data (patchbay-server cve sync)." } }
                    None => { p { "No upstream release known for this kernel." } }
                } }
            }
        },
    ))
}

async fn kernels(State(service): State<AppState>, user: UiUser) -> PageResult {
    let kernels = service.kernels().await?;
    Ok(page(
        Some(&user),
        "Patch levels",
        html! {
            h1 { "Patch levels" }
            @for k in &kernels {
                h2 { (k.kernel_release) " (upstream " (k.upstream_version) ")" }
                p { code { (k.build_id) } }
                table {
                    tr { th { "Level" } th { "Fixes" } th { "Size" } th { "Published" } th { "Upgrade report" } }
                    @for l in &k.levels {
                        tr {
                            td { a href={"/ui/kernels/" (k.build_id) "/" (l.level)} { "level " (l.level) } }
                            td { (l.fixes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")) }
                            td { (l.length) " bytes" }
                            td { (when(l.published_at)) }
                            td { @if l.report { a.report href=(report_href(&k.build_id, l.level)) { "report" } } }
                        }
                    }
                }
            }
        },
    ))
}

async fn level_page(
    State(service): State<AppState>,
    user: UiUser,
    Path((build_id, level)): Path<(String, u32)>,
) -> PageResult {
    let record = match (build_id.parse::<BuildId>(), PatchLevel::try_from(level)) {
        (Ok(id), Ok(n)) => service.find_level(&id, n).await?,
        // Not a build-id or not a level: no such page, as for a level never published.
        _ => None,
    }
    .ok_or_else(|| ServerError::NotFound(format!("no level {level} of kernel {build_id}")))?;
    let has_report = service.has_report(&record.build_id, record.level).await?;
    Ok(page(
        Some(&user),
        "Patch level",
        html! {
            h1 { "Level " (record.level) " of " (record.kernel_release) }
            p { "Build-id " code { (record.build_id) } ", sha256 " code { (record.sha256) } }
            @if has_report { p { a.report href=(report_href(&record.build_id, record.level)) { "Upgrade report" } } }
            h2 { "Fixes" }
            ul #fixes { @for c in &record.manifest.fixes { li { (c) } } }
            h2 { "Replaced functions" }
            table {
                tr { th { "Object" } th { "Function" } th { "Position" } }
                @for f in &record.manifest.replaced_functions {
                    tr { td { (f.object) } td { code { (f.function) } } td { (f.sympos) } }
                }
            }
        },
    ))
}

fn report_href(build_id: &patchbay_core::BuildId, level: PatchLevel) -> String {
    format!("/ui/kernels/{build_id}/levels/{level}/report")
}

/// A clock's offset from the server's in words: `7 d 0 h behind`, `5 min ahead`.
fn clock_offset(behind_secs: i64) -> String {
    let (n, way) = if behind_secs >= 0 {
        (behind_secs, "behind")
    } else {
        (behind_secs.saturating_neg(), "ahead")
    };
    match n {
        0..3600 => format!("{} min {way}", n / 60),
        3600..86_400 => format!("{} h {way}", n / 3600),
        _ => format!("{} d {} h {way}", n / 86_400, n % 86_400 / 3600),
    }
}

fn score(score: Option<f64>) -> String {
    score.map_or_else(|| "–".to_owned(), |s| format!("{s:.1}"))
}

fn seconds(secs: f64) -> String {
    if secs >= 60.0 {
        let whole = secs.round();
        format!("{:.0} min {:.0} s", (whole / 60.0).floor(), whole % 60.0)
    } else {
        format!("{secs:.1} s")
    }
}

/// What `patchbay-build upgrade` did with each CVE of the level's window.
async fn report_page(
    State(service): State<AppState>,
    user: UiUser,
    Path((id, n)): Path<(String, String)>,
) -> PageResult {
    use patchbay_core::CveStatus;
    let (id, n) = (build_id(&id)?, crate::api::level_in_path(&n)?);
    let r = service.report(&id, n).await?;
    let of = |status| r.with_status(status).collect::<Vec<_>>();
    let (patched, partial, not_patchable, not_applicable) = (
        of(CveStatus::Patched),
        of(CveStatus::Partial),
        of(CveStatus::NotPatchable),
        of(CveStatus::NotApplicable),
    );
    let text = |o: &Option<String>| o.clone().unwrap_or_else(|| "–".to_owned());
    Ok(page(
        Some(&user),
        "Upgrade report",
        html! {
            h1 { "Upgrade report: level " (r.level) " of " (r.kernel) }
            table #summary {
                tr { th { "Build-id" } td { code { (r.build_id) } } }
                tr { th { "Upstream" } td #versions { (r.from_version) " → " (r.to_version) } }
                tr { th { "Fixes taken from" } td { (r.fixes_from) } }
                tr { th { "CVEs selected" } td { "CVSS ≥ " (format!("{:.1}", r.min_cvss)) } }
                tr { th { "Run" } td #run { "started " (r.started) ", took " (seconds(r.elapsed_seconds)) } }
                tr { th { "Module" } td { @if let Some(m) = &r.module {
                    code { (m.name) } " (" (m.size) " bytes, sha256 " code { (m.sha256) } ")" } @else { "none built" } } }
                tr { th { "Level" } td { a href={"/ui/kernels/" (r.build_id) "/" (r.level)} { "level " (r.level) } } }
            }
            @if !r.notices.is_empty() {
                div #notices { @for n in &r.notices { p.notice { "Note: " (n) } } }
            }
            div.cards #counts {
                div.card #count-patched { b { (patched.len()) } "patched" }
                div.card #count-partial { b { (partial.len()) } "partial" }
                div.card #count-not-patchable { b { (not_patchable.len()) } "not patchable" }
                div.card #count-not-applicable { b { (not_applicable.len()) } "not applicable" }
            }
            h2 { "Closed by this level" }
            @if patched.is_empty() { p { "None." } } @else {
                table #patched {
                    tr { th { "CVE" } th { "Score" } th { "Title" } th { "Functions replaced" } }
                    @for c in &patched {
                        tr { td { (c.cve) } td { (score(c.score)) } td { (c.title) } td { code { (c.functions.join(", ")) } } }
                    }
                }
            }
            @if !partial.is_empty() {
                h2 { "Partly patched" }
                p { "The runtime part is live; the rest of the fix is not (these CVEs are not in the level's fixes)." }
                table #partial {
                    tr { th { "CVE" } th { "Score" } th { "Title" } th { "Functions replaced" } th { "Why partial" } }
                    @for c in &partial {
                        tr { td { (c.cve) } td { (score(c.score)) } td { (c.title) } td { code { (c.functions.join(", ")) } }
                             td { @if let Some(cat) = &c.category { code { (cat) } ": " } (text(&c.reason)) } }
                    }
                }
            }
            h2 { "Not patchable" }
            @if not_patchable.is_empty() { p { "None." } } @else {
                table #not-patchable {
                    tr { th { "CVE" } th { "Score" } th { "Title" } th { "Category" } th { "Reason" } }
                    @for c in &not_patchable {
                        tr { td { (c.cve) } td { (score(c.score)) } td { (c.title) } td { code { (text(&c.category)) } } td { (text(&c.reason)) } }
                    }
                }
            }
            h2 { "Not applicable to this kernel" }
            @if not_applicable.is_empty() { p { "None." } } @else {
                table #not-applicable {
                    tr { th { "CVE" } th { "Score" } th { "Title" } th { "Reason" } }
                    @for c in &not_applicable {
                        tr { td { (c.cve) } td { (score(c.score)) } td { (c.title) } td { (text(&c.reason)) } }
                    }
                }
            }
            h2 { "Verification" }
            @if let Some(v) = &r.verification {
                table #verification {
                    tr { th { "Result" } td { @if v.passed { span.ok { "passed" } } @else { span.error { "failed" } } } }
                    tr { th { "Modules loaded" } td { @if v.modules_loaded.is_empty() { "none" } @else { code { (v.modules_loaded.join(", ")) } } } }
                    tr { th { "Workloads" } td { @if v.workloads.is_empty() { "none" } @else { (v.workloads.join(", ")) } } }
                    tr { th { "Took" } td { (seconds(v.seconds)) } }
                    @if let Some(apply) = v.apply_seconds {
                        tr { th { "Apply (load and transition)" } td { (format!("{apply:.1} s")) } }
                    }
                }
                @if !v.notes.is_empty() {
                    h3 { "Notes on this kernel" }
                    ul #notes { @for n in &v.notes { li { (n) } } }
                }
                @if !v.dropped_groups.is_empty() {
                    h3 { "Groups left out of the bundle" }
                    table #dropped {
                        tr { th { "Group" } th { "CVEs" } th { "Why" } th { "Details" } }
                        @for g in &v.dropped_groups {
                            tr { td { (g.group) } td { (g.cves.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")) } td { (g.category.as_str()) } td { (g.reason) } }
                        }
                    }
                }
            } @else {
                p #verification { "The bundle was not verified in QEMU before it was offered." }
            }
        },
    ))
}

async fn channels(State(service): State<AppState>, user: UiUser) -> PageResult {
    let list = service.channels().await?;
    Ok(page(
        Some(&user),
        "Channels",
        html! {
            h1 { "Channels" }
            table {
                tr { th { "Channel" } th { "Serial" } th { "Updated" } }
                @for c in &list {
                    tr { td { a href={"/ui/channels/" (c.name)} { (c.name) } } td { (c.serial) } td { (c.updated) } }
                }
            }
        },
    ))
}

async fn channel(
    State(service): State<AppState>,
    user: UiUser,
    Path(name): Path<String>,
) -> PageResult {
    let name = channel_name(&name)?;
    let doc = service.channel_doc(&name).await?;
    let kernels = service.kernels().await?;
    let can_change = user.0.role >= Role::Operator;
    Ok(page(
        Some(&user),
        name.as_str(),
        html! {
            h1 { "Channel " (name) }
            table #rollouts {
                tr { th { "Kernel" } th { "Level" } th { "Previous" } th { "Effective" } th { "Waves" } th { "Pinned" } }
                @for (bid, r) in &doc.kernels {
                    tr {
                        td { code { (bid) } }
                        td.level { (r.level) }
                        td { @if let Some(p) = r.previous { (p) } @else { "none" } }
                        td { (when(r.effective_at)) }
                        td { @for w in &r.waves { (w.percent) "% from " (when(w.at)) br; } }
                        td { @if r.pinned { "pinned" } @else { "no" } }
                    }
                }
            }
            @if can_change {
                h2 { "Change" }
                @for k in &kernels {
                    form method="get" action={"/ui/channels/" (name) "/confirm"} {
                        input type="hidden" name="build_id" value=(k.build_id);
                        (k.kernel_release) " "
                        select name="action" {
                            option value="promote" { "promote" }
                            option value="rollback" { "roll back to" }
                            option value="pin" { "pin at" }
                            option value="unpin" { "unpin" }
                        }
                        " level "
                        select name="level" { @for l in &k.levels { option value=(l.level) { (l.level) } } }
                        " — promote only: start in " input name="deploy_after_hours" type="number" min="0" value="0" size="3";
                        " h, first wave " input name="first_wave_percent" type="number" min="1" max="100" value="100" size="3";
                        " %, everyone after " input name="full_after_hours" type="number" min="0" value="24" size="3";
                        " h " button type="submit" { "Review" }
                    }
                }
            } @else {
                p { "Your role (" (user.0.role) ") can view channels; operators change them." }
            }
        },
    ))
}

#[derive(Debug, Deserialize)]
struct ChangeRequest {
    action: String,
    build_id: String,
    level: Option<u32>,
    csrf: Option<String>,
    #[serde(default)]
    deploy_after_hours: Option<u32>,
    #[serde(default)]
    first_wave_percent: Option<u8>,
    #[serde(default)]
    full_after_hours: Option<u32>,
}

impl ChangeRequest {
    /// The promote's delay and waves (none: everyone at once).
    fn rollout(&self) -> Result<(u64, Vec<crate::service::WaveRequest>), ServerError> {
        let delay = u64::from(self.deploy_after_hours.unwrap_or(0)) * 3600;
        let first = self.first_wave_percent.unwrap_or(100);
        if first == 0 || first > 100 {
            return Err(ServerError::BadRequest(
                "the first wave is 1 to 100 %".into(),
            ));
        }
        let waves = if first < 100 {
            vec![
                crate::service::WaveRequest {
                    after_secs: 0,
                    percent: first,
                },
                crate::service::WaveRequest {
                    after_secs: u64::from(self.full_after_hours.unwrap_or(24)).max(1) * 3600,
                    percent: 100,
                },
            ]
        } else {
            Vec::new()
        };
        Ok((delay, waves))
    }
}

fn describe(name: &ChannelName, change: &ChangeRequest) -> Result<String, ServerError> {
    let level = change.level.map_or("?".into(), |l| l.to_string());
    Ok(match change.action.as_str() {
        "promote" => {
            let (delay, waves) = change.rollout()?;
            let mut text = format!(
                "Promote level {level} of kernel {} into {name}",
                change.build_id
            );
            if delay > 0 {
                text.push_str(&format!(", starting in {} h", delay / 3600));
            }
            if let [first, full] = waves.as_slice() {
                text.push_str(&format!(
                    ", {} % of the hosts first and all of them {} h later",
                    first.percent,
                    full.after_secs / 3600
                ));
            }
            text
        }
        "rollback" => format!(
            "Roll {name} back to level {level} for kernel {}",
            change.build_id
        ),
        "pin" => format!("Pin {name} at level {level} for kernel {}", change.build_id),
        "unpin" => format!("Unpin {name} for kernel {}", change.build_id),
        other => {
            return Err(ServerError::BadRequest(format!(
                "unknown action {other:?}; use promote, rollback, pin or unpin"
            )))
        }
    })
}

async fn confirm(
    user: UiUser,
    Path(name): Path<String>,
    Query(change): Query<ChangeRequest>,
) -> PageResult {
    user.caller()
        .require(Role::Operator, "changing a channel")?;
    let name = channel_name(&name)?;
    let summary = describe(&name, &change)?;
    Ok(page(
        Some(&user),
        "Confirm",
        html! {
            h1 { "Confirm" }
            p #summary { (summary) "? Hosts in the channel follow at their next check." }
            form method="post" action={"/ui/channels/" (name) "/apply"} {
                input type="hidden" name="action" value=(change.action);
                input type="hidden" name="build_id" value=(change.build_id);
                @if let Some(l) = change.level { input type="hidden" name="level" value=(l); }
                @if let Some(v) = change.deploy_after_hours { input type="hidden" name="deploy_after_hours" value=(v); }
                @if let Some(v) = change.first_wave_percent { input type="hidden" name="first_wave_percent" value=(v); }
                @if let Some(v) = change.full_after_hours { input type="hidden" name="full_after_hours" value=(v); }
                input type="hidden" name="csrf" value=(user.0.csrf);
                button #confirm type="submit" { "Confirm" }
                " " a href={"/ui/channels/" (name)} { "Cancel" }
            }
        },
    ))
}

async fn apply(
    State(service): State<AppState>,
    user: UiUser,
    Path(name): Path<String>,
    Form(change): Form<ChangeRequest>,
) -> Result<Response, PageError> {
    let caller = user.form_caller(Role::Operator, "changing a channel", change.csrf.as_deref())?;
    let name = channel_name(&name)?;
    let build_id = build_id(&change.build_id)?;
    let chosen_level = || -> Result<PatchLevel, ServerError> {
        level(
            change
                .level
                .ok_or_else(|| ServerError::BadRequest("choose a level".into()))?,
        )
    };
    let actor = caller.actor.as_str();
    match change.action.as_str() {
        "promote" => {
            let (delay, waves) = change.rollout()?;
            service
                .promote(actor, &name, &build_id, chosen_level()?, delay, &waves)
                .await?
        }
        "rollback" => {
            service
                .rollback(actor, &name, &build_id, chosen_level()?)
                .await?
        }
        "pin" => {
            service
                .pin(actor, &name, &build_id, Some(chosen_level()?))
                .await?
        }
        "unpin" => service.unpin(actor, &name, &build_id).await?,
        other => return Err(ServerError::BadRequest(format!("unknown action {other:?}")).into()),
    };
    Ok(Redirect::to(&format!("/ui/channels/{name}")).into_response())
}

async fn audit(State(service): State<AppState>, user: UiUser) -> PageResult {
    let entries = service.audit_log(500).await?;
    Ok(page(
        Some(&user),
        "Audit log",
        html! {
            h1 { "Audit log" }
            table #audit {
                tr { th { "When" } th { "Who" } th { "What" } th { "Detail" } th { "Targets version" } }
                @for e in &entries {
                    tr {
                        td { (when(e.at)) } td { (e.actor) } td { (e.action) } td { (e.detail) }
                        td { @if let Some(v) = e.targets_version { (v) } }
                    }
                }
            }
        },
    ))
}

/// What an administrator can revoke from the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Revocable {
    Host,
    Token,
    RegistrationKey,
}

#[derive(Debug, Deserialize)]
struct RevokeRequest {
    kind: Revocable,
    id: String,
    csrf: Option<String>,
}

impl Revocable {
    fn as_str(self) -> &'static str {
        match self {
            Revocable::Host => "host",
            Revocable::Token => "token",
            Revocable::RegistrationKey => "registration-key",
        }
    }
}

/// API tokens and registration keys, each with a way to revoke it (admins only).
async fn access(State(service): State<AppState>, user: UiUser) -> PageResult {
    user.caller()
        .require(Role::Admin, "managing tokens, registration keys and users")?;
    let tokens = service.tokens().await?;
    let keys = service.registration_keys().await?;
    let users = service.users().await?;
    Ok(page(
        Some(&user),
        "Access",
        html! {
            h1 { "Access" }
            p { "Ids are the SHA-256 of each secret; the secrets themselves are not stored. Hosts are revoked from their own page." }
            h2 { "API tokens" }
            table #tokens {
                tr { th { "Name" } th { "Role" } th { "Created" } th { "Id" } th {} }
                @for t in &tokens {
                    tr {
                        td { (t.name) } td { (t.role) } td { (when(t.created_at)) }
                        td { code { (crate::service::short_id(&t.id)) } }
                        td { a href={"/ui/revoke?kind=token&id=" (t.id)} { "Revoke…" } }
                    }
                }
            }
            h2 { "Registration keys" }
            table #registration-keys {
                tr { th { "Channel" } th { "Created" } th { "Id" } th {} }
                @for k in &keys {
                    tr {
                        td { (k.channel) } td { (when(k.created_at)) }
                        td { code { (crate::service::short_id(&k.id)) } }
                        td { a href={"/ui/revoke?kind=registration-key&id=" (k.id)} { "Revoke…" } }
                    }
                }
            }
            h2 { "Dashboard users" }
            p { "A change ends the user's sessions at once. The last enabled admin cannot be deleted or disabled." }
            table #users {
                tr { th { "Name" } th { "Role" } th { "State" } th {} }
                @for u in &users {
                    @let link = |action: UserAction| format!("/ui/users/confirm?action={}&name={}", action.as_str(), u.name);
                    tr {
                        td { (u.name) } td { (u.role) } td.state { (u.state.as_str()) }
                        td {
                            a href=(link(UserAction::Password)) { "New password…" } " "
                            @if u.state == UserState::Enabled {
                                a href=(link(UserAction::Disable)) { "Disable…" }
                            } @else {
                                a href=(link(UserAction::Enable)) { "Enable…" }
                            }
                            " " a href=(link(UserAction::Delete)) { "Delete…" }
                        }
                    }
                }
            }
        },
    ))
}

/// What an administrator can do to a dashboard user from the Access page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum UserAction {
    Delete,
    Disable,
    Enable,
    Password,
}

impl UserAction {
    fn as_str(self) -> &'static str {
        match self {
            UserAction::Delete => "delete",
            UserAction::Disable => "disable",
            UserAction::Enable => "enable",
            UserAction::Password => "password",
        }
    }
}

#[derive(Debug, Deserialize)]
struct UserChangeQuery {
    action: UserAction,
    name: String,
}

/// The form a user-change confirmation page posts; `password` only for `password`.
#[derive(Deserialize)]
struct UserChangeForm {
    action: UserAction,
    name: String,
    csrf: Option<String>,
    password: Option<String>,
}

async fn confirm_user_change(
    State(service): State<AppState>,
    user: UiUser,
    Query(request): Query<UserChangeQuery>,
) -> PageResult {
    user.caller().require(Role::Admin, "managing users")?;
    let target = service.user_by_name(&request.name).await?;
    let summary = match request.action {
        UserAction::Delete => format!(
            "Delete {} user {}: their sessions end at once and they can no longer log in",
            target.role, target.name
        ),
        UserAction::Disable => format!(
            "Disable {} user {}: their sessions end at once and their logins are refused \
             until they are enabled again",
            target.role, target.name
        ),
        UserAction::Enable => format!(
            "Enable {} user {}: they can log in again",
            target.role, target.name
        ),
        UserAction::Password => format!(
            "Set a new password for {} user {}: their sessions end at once",
            target.role, target.name
        ),
    };
    let password = html! {
        @if request.action == UserAction::Password {
            label { "New password (at least 8 characters) "
                input type="password" name="password" minlength="8" required autocomplete="new-password"; }
            " "
        }
    };
    let button = match request.action {
        UserAction::Delete => "Delete",
        UserAction::Disable => "Disable",
        UserAction::Enable => "Enable",
        UserAction::Password => "Set password",
    };
    Ok(confirm_page(
        &user,
        &summary,
        "/ui/users",
        &[("action", request.action.as_str()), ("name", &target.name)],
        password,
        button,
    ))
}

async fn change_user(
    State(service): State<AppState>,
    user: UiUser,
    Form(request): Form<UserChangeForm>,
) -> Result<Response, PageError> {
    let caller = user.form_caller(Role::Admin, "managing users", request.csrf.as_deref())?;
    let change = match (request.action, request.password) {
        (UserAction::Delete, _) => UserChange::Delete,
        (UserAction::Disable, _) => UserChange::Disable,
        (UserAction::Enable, _) => UserChange::Enable,
        (UserAction::Password, Some(password)) => UserChange::NewPassword(password),
        (UserAction::Password, None) => {
            return Err(ServerError::BadRequest(
                "a new password needs the password field; use the form on the user's page".into(),
            )
            .into())
        }
    };
    service
        .change_user(&caller.actor, &request.name, change)
        .await?;
    Ok(Redirect::to("/ui/access").into_response())
}

/// What revoking `kind` `id` does, in words, or why it cannot be revoked.
async fn describe_revocation(
    service: &Service,
    kind: Revocable,
    id: &str,
) -> Result<String, ServerError> {
    match kind {
        Revocable::Host => {
            let h = service.host(id).await?;
            Ok(format!(
                "Revoke host {} ({}, channel {}): it and its check-in history are deleted and \
                 its token stops working; it must register again",
                h.hostname, h.id, h.channel
            ))
        }
        Revocable::Token => {
            let t = service.token_by_id(id).await?;
            Ok(format!(
                "Revoke the {} API token {}: it stops working at once",
                t.role, t.name
            ))
        }
        Revocable::RegistrationKey => {
            let k = service.registration_key_by_id(id).await?;
            Ok(format!(
                "Revoke registration key {} for channel {}: no host can register with it any \
                 more (hosts registered with it stay)",
                crate::service::short_id(&k.id),
                k.channel
            ))
        }
    }
}

async fn confirm_revoke(
    State(service): State<AppState>,
    user: UiUser,
    Query(request): Query<RevokeRequest>,
) -> PageResult {
    user.caller().require(Role::Admin, "revoking access")?;
    let summary = describe_revocation(&service, request.kind, &request.id).await?;
    Ok(confirm_page(
        &user,
        &summary,
        "/ui/revoke",
        &[("kind", request.kind.as_str()), ("id", &request.id)],
        html! {},
        "Revoke",
    ))
}

/// A confirmation page of an Access change: `summary` as a question, and a form posting
/// `fields` (and the session's CSRF token) to `action`, with `extra` inputs before the button.
fn confirm_page(
    user: &UiUser,
    summary: &str,
    action: &str,
    fields: &[(&str, &str)],
    extra: Markup,
    button: &str,
) -> Markup {
    page(
        Some(user),
        "Confirm",
        html! {
            h1 { "Confirm" }
            p #summary { (summary) "?" }
            form method="post" action=(action) {
                @for (name, value) in fields {
                    input type="hidden" name=(name) value=(value);
                }
                input type="hidden" name="csrf" value=(user.0.csrf);
                (extra)
                button #confirm type="submit" { (button) }
                " " a href="/ui/access" { "Cancel" }
            }
        },
    )
}

async fn revoke(
    State(service): State<AppState>,
    user: UiUser,
    Form(request): Form<RevokeRequest>,
) -> Result<Response, PageError> {
    let caller = user.form_caller(Role::Admin, "revoking access", request.csrf.as_deref())?;
    let next = match request.kind {
        Revocable::Host => {
            service.revoke_host(&caller.actor, &request.id).await?;
            "/ui/hosts"
        }
        Revocable::Token => {
            service.revoke_token(&caller.actor, &request.id).await?;
            "/ui/access"
        }
        Revocable::RegistrationKey => {
            service
                .revoke_registration_key(&caller.actor, &request.id)
                .await?;
            "/ui/access"
        }
    };
    Ok(Redirect::to(next).into_response())
}

async fn compliance(
    State(service): State<AppState>,
    user: UiUser,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let page_no: usize = query
        .get("page")
        .map(|p| p.parse())
        .transpose()
        .map_err(|_| ServerError::BadRequest("page must be a number".into()))?
        .unwrap_or(1)
        .max(1);
    let series = series_query(&query)?;
    let policy = patchbay_exposure::Policy::default();
    let all = service.compliance(crate::cve::today(), policy).await?;
    let data = service.cve_data_status();
    let groups = series_groups(&all);
    let rows = match &series {
        Some(s) => crate::cve::rows_of_series(all, s),
        None => all,
    };
    let breached = rows
        .iter()
        .filter(|r| r.window == crate::cve::WindowState::Breached)
        .count();
    let unknown = rows
        .iter()
        .filter(|r| r.window == crate::cve::WindowState::Unknown)
        .count();
    // Links keep the series filter.
    let filter = series.map_or(String::new(), |s| format!("series={s}&"));
    let count = |n: Option<usize>| n.map_or("–".to_owned(), |n| n.to_string());
    Ok(page(
        Some(&user),
        "Compliance",
        html! {
            h1 { "Compliance report" @if let Some(s) = &series { " — " (s) ".y" } }
            p { "Policy: a CVE with CVSS ≥ " (policy.min_high_score) " must be fixed within "
                (policy.window_days) " days of publication. "
                strong #breached-hosts { (breached) } " of " (rows.len()) " hosts breach it today"
                @if unknown > 0 { "; for " strong.warn #unknown-hosts { (unknown) } " it is unknown" }
                ". "
                a href={"/ui/compliance.csv" @if let Some(s) = &series { "?series=" (s) }} { "Download CSV" } }
            (data_line(&data))
            h2 { "By kernel series" }
            table #series {
                tr { th { "Series" } th { "Hosts" } th { "Breaching" } th { "CVE data" } }
                @for g in &groups {
                    tr {
                        td { @if let Some(s) = &g.series { a href={"/ui/compliance?series=" (s)} { (s) ".y" } } @else { "unknown release" } }
                        td { (g.hosts) } td { (g.breached) }
                        td.series-data { @match &g.notice {
                            Some(n) => { span.warn { (n) } }
                            None => { @if g.series.is_some() { span.ok { "complete" } } }
                        } }
                    }
                }
                @if series.is_some() { tr { td colspan="4" { a href="/ui/compliance" { "all series" } } } }
            }
            table #compliance {
                tr { th { "Host" } th { "Kernel" } th { "Series" } th { "Effective" } th { "Level" } th { "Open CVEs" } th { "CVSS ≥ 7" } th { "Overdue" } th { "KEV" } th { "Fixed by patch" } th { "Window" } }
                @for r in rows.iter().skip((page_no - 1) * PAGE_SIZE as usize).take(PAGE_SIZE as usize) {
                    tr {
                        td { a href={"/ui/hosts/" (r.host_id)} { (r.hostname) } }
                        td { (r.kernel_release) " (" (r.upstream_version.clone().unwrap_or_default()) ")" }
                        td { (r.series.clone().unwrap_or_default())
                            @if let Some(n) = &r.notice { " " span.warn title=(n) { @if r.cve_data == Some(patchbay_exposure::DataState::NoData) { "no CVE data" } @else { "data ends " (r.data_through.clone().unwrap_or_default()) } } } }
                        td { (r.effective_version.clone().unwrap_or_default()) }
                        td { @if let Some(l) = r.active_level { (l) } @else { "none" } }
                        td { (count(r.live_cves)) } td { (count(r.live_high)) } td { (count(r.live_high_overdue)) } td { (count(r.live_kev)) } td { (count(r.fixed_by_patch)) }
                        td.window { @match r.window {
                            crate::cve::WindowState::Breached => { span.error { "breached" } }
                            crate::cve::WindowState::Unknown => { span.warn { "unknown" } }
                            crate::cve::WindowState::Within => { span.ok { "within" } }
                        } }
                    }
                }
            }
            @let pages = rows.len().div_ceil(PAGE_SIZE as usize).max(1);
            p { "Page " (page_no) " of " (pages) " "
                @if page_no > 1 { a href={"/ui/compliance?" (filter) "page=" (page_no - 1)} { "previous" } " " }
                @if page_no < pages { a href={"/ui/compliance?" (filter) "page=" (page_no + 1)} { "next" } }
            }
        },
    ))
}

/// The `series` query parameter of the compliance pages (`6.12`), if given.
fn series_query(
    query: &HashMap<String, String>,
) -> Result<Option<patchbay_core::KernelSeries>, ServerError> {
    query
        .get("series")
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| ServerError::BadRequest(format!("series: {e}")))
        })
        .transpose()
}

/// One kernel series of the fleet on the compliance page.
struct SeriesGroup {
    /// `6.12`; `None`: hosts whose upstream release is unknown.
    series: Option<String>,
    /// Hosts on it.
    hosts: usize,
    /// Of those, breaching the window.
    breached: usize,
    /// The data's notice for the series' newest host release (stale or no data), if any.
    notice: Option<String>,
}

/// The fleet's compliance rows grouped by series, oldest series first.
fn series_groups(rows: &[crate::cve::ComplianceRow]) -> Vec<SeriesGroup> {
    let mut groups: BTreeMap<Option<(u32, u32)>, SeriesGroup> = BTreeMap::new();
    for r in rows {
        let key = r
            .series
            .as_deref()
            .and_then(|s| s.parse::<patchbay_core::KernelSeries>().ok())
            .map(|s| s.as_pair());
        let g = groups.entry(key).or_insert_with(|| SeriesGroup {
            series: r.series.clone(),
            hosts: 0,
            breached: 0,
            notice: None,
        });
        g.hosts += 1;
        g.breached += usize::from(r.window == crate::cve::WindowState::Breached);
        if g.notice.is_none() {
            g.notice.clone_from(&r.notice);
        }
    }
    groups.into_values().collect()
}

async fn compliance_csv(
    State(service): State<AppState>,
    _user: UiUser,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let series = series_query(&query)?;
    let mut rows = service
        .compliance(crate::cve::today(), patchbay_exposure::Policy::default())
        .await?;
    if let Some(s) = &series {
        rows = crate::cve::rows_of_series(rows, s);
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"patchbay-compliance.csv\""),
            ),
        ],
        crate::cve::compliance_csv(&rows, &service.cve_data_status()),
    )
        .into_response())
}

async fn host_vex(
    State(service): State<AppState>,
    _user: UiUser,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let h = service.host(&id).await?;
    Ok(axum::Json(service.host_vex(&h).await?).into_response())
}
