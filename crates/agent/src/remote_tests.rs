//! The agent's network half against a real `patchbay-server` (in-process, on loopback, real
//! SQLite and TUF) and the fake kernel: channel following, waves, server outages, offline
//! archives, and the attack suite. Each attack must be refused with a clear error, load
//! nothing and leave the agent's state as it was.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use patchbay_core::protocol::HostState;
use patchbay_core::{Bundle, ChannelName, PatchLevel};
use patchbay_server::service::WaveRequest;
use patchbay_server::Service;

use crate::agent::{Agent, ApplyOptions};
use crate::error::exit;
use crate::remote::{
    register, Origin, Plan, RegisterTrust, Remote, RemoteError, RemoteFiles, Settings,
};
use crate::testutil::{elf_bundle, module_name, FakeKernel, BUILD_ID, OTHER_BUILD_ID, RELEASE};
use patchbay_core::registration::RegistrationKey;
use patchbay_updates::tls::ServerTrust;

/// A real server on 127.0.0.1 with its own runtime, serving HTTPS with a self-signed
/// certificate as `patchbay-server init` makes one; its registration key pins it.
struct TestServer {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    service: Arc<Service>,
    url: String,
    registration_key: RegistrationKey,
    tls: patchbay_server::tls::CertificateFiles,
    /// The dashboard password of user `admin`.
    dashboard_password: String,
}

/// Serves `router` over TLS with `tls`'s certificate on a new loopback port; its https URL.
fn serve_tls(
    rt: &tokio::runtime::Runtime,
    tls: &patchbay_server::tls::CertificateFiles,
    router: axum::Router,
) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let config = tls.server_config().unwrap();
    rt.spawn(async move {
        let limits = patchbay_server::config::ServerConfig::default().limits;
        let listener = patchbay_server::listener::TlsListener::new(
            listener,
            patchbay_server::listener::ConnectionLimits::of(&limits),
            config,
            64,
        )
        .unwrap();
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<patchbay_server::listener::Connection>(),
        )
        .await
    });
    url
}

impl TestServer {
    fn start() -> TestServer {
        TestServer::start_with(|_, tls| {
            tls.generate_self_signed(&["127.0.0.1".into()]).unwrap();
        })
    }

    /// A server whose certificate `make_certificate` writes (before `init`), with the config
    /// it may change.
    fn start_with(
        make_certificate: impl FnOnce(
            &mut patchbay_server::config::ServerConfig,
            &patchbay_server::tls::CertificateFiles,
        ),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data = dir.path().join("server");
        let mut config = patchbay_server::config::ServerConfig::default();
        let tls = config.tls.files(&data);
        make_certificate(&mut config, &tls);
        let report = rt.block_on(Service::init(&data, None, config)).unwrap();
        let service = Arc::new(rt.block_on(Service::open(&data)).unwrap());
        let url = serve_tls(
            &rt,
            &tls,
            patchbay_server::api::router(Arc::clone(&service)),
        );
        TestServer {
            dir,
            rt,
            service,
            url,
            registration_key: report.registration_key.parse().unwrap(),
            tls,
            dashboard_password: report.admin_password,
        }
    }

    /// The dashboard page at `path` as user `admin` sees it (a new session), over HTTPS.
    fn dashboard_page(&self, path: &str) -> String {
        self.rt.block_on(async {
            let session = self
                .service
                .login("admin", self.dashboard_password.clone(), None)
                .await
                .unwrap()
                .expect("admin logs in");
            let reply =
                patchbay_updates::tls::client(&self.trust(), std::time::Duration::from_secs(30))
                    .unwrap()
                    .get(format!("{}{path}", self.url))
                    .header("cookie", format!("pb_session={}", session.cookie))
                    .send()
                    .await
                    .unwrap();
            assert_eq!(reply.status(), 200, "{path}");
            reply.text().await.unwrap()
        })
    }

    /// How a client pins this server's certificate.
    fn trust(&self) -> ServerTrust {
        ServerTrust::Pinned(self.tls.sha256().unwrap())
    }

    fn publish(&self, bundle: &Bundle) {
        let mut bytes = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut bytes);
            for (name, data) in [
                ("manifest.json", bundle.manifest().to_json().unwrap()),
                ("module.ko", bundle.module().to_vec()),
            ] {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_entry_type(tar::EntryType::Regular);
                builder
                    .append_data(&mut header, name, data.as_slice())
                    .unwrap();
            }
            builder.finish().unwrap();
        }
        self.rt
            .block_on(self.service.publish_bundle("test", Bytes::from(bytes)))
            .unwrap();
    }

    fn promote(&self, channel: &str, build_id: &str, level: u32, waves: &[WaveRequest]) {
        self.rt
            .block_on(self.service.promote(
                "test",
                &channel.parse().unwrap(),
                &build_id.parse().unwrap(),
                level.try_into().unwrap(),
                0,
                waves,
            ))
            .unwrap();
    }

    /// A rollback of production's `build_id` to `level`, signed now.
    fn rollback(&self, build_id: &str, level: u32) {
        self.rt
            .block_on(self.service.rollback(
                "test",
                &ChannelName::default_channel(),
                &build_id.parse().unwrap(),
                level.try_into().unwrap(),
            ))
            .unwrap();
    }

    /// The served metadata directory: attacks replace files in it.
    fn metadata(&self) -> PathBuf {
        self.dir.path().join("server/tuf/metadata")
    }

    fn versions(&self) -> patchbay_server::tuf::ChainVersions {
        self.service.metadata_versions().unwrap().unwrap()
    }

    fn object_path(&self, sha256: &str) -> PathBuf {
        self.dir.path().join("server/objects/sha256").join(sha256)
    }

    fn level_sha(&self, build_id: &str, level: u32) -> String {
        self.rt
            .block_on(
                self.service
                    .level(&build_id.parse().unwrap(), level.try_into().unwrap()),
            )
            .unwrap()
            .sha256
            .as_str()
            .to_owned()
    }
}

/// An HTTP proxy in front of the server that can replace or corrupt answers: the network
/// attacker of the attack suite.
#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    rules: Arc<Mutex<Vec<(String, Rule)>>>,
}

#[derive(Clone)]
enum Rule {
    Replace(Vec<u8>),
    Endless,
    /// Answer with this status and an empty body.
    Status(StatusCode),
}

impl Proxy {
    /// The proxy answers with the server's own certificate: it stands for a compromised
    /// server or mirror (the hosts' pin holds), which TUF alone must stop.
    fn start(server: &TestServer) -> (Proxy, String) {
        let proxy = Proxy {
            upstream: server.url.clone(),
            client: patchbay_updates::tls::client(
                &server.trust(),
                std::time::Duration::from_secs(60),
            )
            .unwrap(),
            rules: Arc::new(Mutex::new(Vec::new())),
        };
        let router = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        let url = serve_tls(&server.rt, &server.tls, router);
        (proxy, url)
    }

    fn rule(&self, path_contains: &str, rule: Rule) {
        self.rules
            .lock()
            .unwrap()
            .push((path_contains.to_owned(), rule));
    }
}

async fn forward(
    State(proxy): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let rule = proxy
        .rules
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| path.contains(p.as_str()))
        .map(|(_, r)| r.clone());
    match rule {
        Some(Rule::Replace(bytes)) => return (StatusCode::OK, bytes).into_response(),
        Some(Rule::Status(status)) => return status.into_response(),
        Some(Rule::Endless) => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream =
                futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            return (StatusCode::OK, Body::from_stream(stream)).into_response();
        }
        None => {}
    }
    let mut request = proxy.client.request(
        reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(),
        format!("{}{}", proxy.upstream, uri),
    );
    for name in ["authorization", "content-type"] {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v.to_str().unwrap());
        }
    }
    match request.body(body).send().await {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            (status, response.bytes().await.unwrap_or_default()).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

fn agent(k: &FakeKernel) -> Agent<'_> {
    Agent {
        kernel: k,
        clock: k,
        paths: k.paths(),
        state_dir: k.state_dir(),
        log: &|_| {},
    }
}

fn defaults() -> Settings {
    Settings {
        interval: std::time::Duration::from_secs(3600),
        jitter: std::time::Duration::ZERO,
        auto_update: true,
        pinned_level: None,
        channel: None,
        server_ca_file: None,
    }
}

fn update(k: &FakeKernel) -> Result<crate::remote::UpdateReport, RemoteError> {
    let a = agent(k);
    Remote::new(&a, defaults(), ApplyOptions::default()).update(&Origin::Server, true)
}

fn check(k: &FakeKernel) -> Result<Plan, RemoteError> {
    let a = agent(k);
    Remote::new(&a, defaults(), ApplyOptions::default())
        .update(&Origin::Server, false)
        .map(|r| r.plan)
}

fn level(n: u32) -> PatchLevel {
    n.try_into().unwrap()
}

/// Server with levels 1 and 2 for the fake kernel, level 1 for another kernel, production at
/// level 1; a registered fake host.
fn setup() -> (TestServer, FakeKernel) {
    let server = TestServer::start();
    server.publish(&elf_bundle(BUILD_ID, RELEASE, 1));
    server.publish(&elf_bundle(BUILD_ID, RELEASE, 2));
    server.publish(&elf_bundle(OTHER_BUILD_ID, "6.1.0-55-amd64", 1));
    server.promote("production", BUILD_ID, 1, &[]);
    let k = FakeKernel::new();
    register(
        &agent(&k),
        &server.url,
        &server.registration_key,
        &RegisterTrust::default(),
    )
    .unwrap();
    (server, k)
}

/// What must not change when an attack is refused.
fn agent_snapshot(k: &FakeKernel) -> BTreeMap<String, Vec<u8>> {
    let root = k.state_dir().root().to_path_buf();
    let mut files = BTreeMap::new();
    for sub in ["state.json", "bundles", "modules"] {
        collect(&root.join(sub), &root, &mut files);
    }
    files.insert("<loads>".into(), k.sim().loads.join(",").into_bytes());
    files.insert("<sysfs>".into(), k.sysfs().join(",").into_bytes());
    files
}

fn collect(path: &Path, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            collect(&entry.unwrap().path(), root, out);
        }
    } else if path.exists() {
        out.insert(
            path.strip_prefix(root).unwrap().display().to_string(),
            std::fs::read(path).unwrap(),
        );
    }
}

/// Runs `update`, expects a refusal whose message contains `needle`, and checks that nothing
/// was loaded and the agent's state did not change.
fn assert_refused(k: &FakeKernel, needle: &str) -> RemoteError {
    let before = agent_snapshot(k);
    let err = update(k).expect_err("the attack must be refused");
    let text = err.to_string();
    eprintln!("refused as expected: {text}");
    assert!(
        text.to_lowercase().contains(&needle.to_lowercase()),
        "error {text:?} should mention {needle:?}"
    );
    assert_eq!(err.exit_code(), exit::REFUSED, "{text}");
    assert!(
        !matches!(err, RemoteError::Unreachable { .. }),
        "a refusal must not look like an outage: {text}"
    );
    assert_eq!(
        agent_snapshot(k),
        before,
        "agent state changed by a refused update: {text}"
    );
    err
}

fn point_at(k: &FakeKernel, url: &str) {
    let files = RemoteFiles::new(k.state_dir().root());
    let mut link = files.load_link().unwrap().unwrap();
    link.url = url.to_owned();
    std::fs::write(&files.link, serde_json::to_vec(&link).unwrap()).unwrap();
}

#[test]
fn follows_promote_and_channel_rollback_and_reports_check_ins() {
    let (server, k) = setup();
    let report = update(&k).unwrap();
    assert_eq!(report.channel.as_str(), "production");
    assert_eq!(k.sim().loads, vec![module_name(BUILD_ID, 1)]);
    assert_eq!(check(&k).unwrap(), Plan::UpToDate(level(1)));

    server.promote("production", BUILD_ID, 2, &[]);
    assert!(
        matches!(check(&k).unwrap(), Plan::Change { to, downgrade: false, .. } if to == level(2))
    );
    update(&k).unwrap();
    assert_eq!(k.sim().loads.last().unwrap(), &module_name(BUILD_ID, 2));

    server.rollback(BUILD_ID, 1);
    assert!(
        matches!(check(&k).unwrap(), Plan::Change { to, downgrade: true, .. } if to == level(1))
    );
    update(&k).unwrap();
    assert_eq!(k.sim().loads.last().unwrap(), &module_name(BUILD_ID, 1));
    assert_eq!(check(&k).unwrap(), Plan::UpToDate(level(1)));

    let hosts = server
        .rt
        .block_on(server.service.hosts(&Default::default()))
        .unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].active_level, Some(level(1)));
    assert_eq!(hosts[0].state, HostState::Patched);
}

#[test]
fn staged_waves_and_deploy_delay_decide_with_the_host_seed() {
    let (server, k) = setup();
    update(&k).unwrap();
    // 1 % now, everyone in an hour: the host's own bucket decides, as the server computes it.
    server.promote(
        "production",
        BUILD_ID,
        2,
        &[
            WaveRequest {
                after_secs: 0,
                percent: 1,
            },
            WaveRequest {
                after_secs: 3600,
                percent: 100,
            },
        ],
    );
    let seed = RemoteFiles::new(k.state_dir().root())
        .load_link()
        .unwrap()
        .unwrap()
        .seed;
    let in_first_wave = seed.bucket(&BUILD_ID.parse().unwrap(), level(2)) < 1;
    let expected = if in_first_wave {
        Plan::Change {
            from: Some(level(1)),
            to: level(2),
            downgrade: false,
        }
    } else {
        Plan::UpToDate(level(1))
    };
    assert_eq!(check(&k).unwrap(), expected);

    // A delayed promote changes nothing until its time.
    let server2 = TestServer::start();
    server2.publish(&elf_bundle(BUILD_ID, RELEASE, 1));
    let k2 = FakeKernel::new();
    register(
        &agent(&k2),
        &server2.url,
        &server2.registration_key,
        &RegisterTrust::default(),
    )
    .unwrap();
    server2
        .rt
        .block_on(server2.service.promote(
            "test",
            &ChannelName::default_channel(),
            &BUILD_ID.parse().unwrap(),
            level(1),
            3600,
            &[],
        ))
        .unwrap();
    assert_eq!(check(&k2).unwrap(), Plan::NothingServed { active: None });
    update(&k2).unwrap();
    assert!(k2.sim().loads.is_empty());
}

#[test]
fn pinned_level_in_the_agent_config_wins() {
    let (server, k) = setup();
    server.promote("production", BUILD_ID, 2, &[]);
    let a = agent(&k);
    let settings = Settings {
        pinned_level: Some(level(1)),
        ..defaults()
    };
    Remote::new(&a, settings, ApplyOptions::default())
        .update(&Origin::Server, true)
        .unwrap();
    assert_eq!(k.sim().loads, vec![module_name(BUILD_ID, 1)]);
}

#[test]
fn server_down_keeps_the_active_patch() {
    let (server, k) = setup();
    update(&k).unwrap();
    let url = server.url.clone();
    drop(server);
    let before = agent_snapshot(&k);
    let err = update(&k).unwrap_err();
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("active patch is kept"), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert_eq!(agent_snapshot(&k), before);
    assert_eq!(k.sysfs(), vec![module_name(BUILD_ID, 1)]);
}

#[test]
fn an_error_status_is_a_refusal_and_a_gateway_error_an_outage() {
    let (server, k) = setup();
    update(&k).unwrap();
    let (proxy, url) = Proxy::start(&server);
    point_at(&k, &url);
    // The server itself answering 500: a refusal, with the status, not an outage.
    proxy.rule(
        "/tuf/metadata/",
        Rule::Status(StatusCode::INTERNAL_SERVER_ERROR),
    );
    let err = update(&k).unwrap_err();
    assert!(
        matches!(
            &err,
            RemoteError::Update(patchbay_updates::UpdateError::Metadata {
                fetch: Some(patchbay_updates::transport::FetchFailure::Status(500)),
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), exit::REFUSED, "{err}");
    // A gateway saying the server behind it is down: an outage, like a refused connection.
    proxy.rules.lock().unwrap().clear();
    proxy.rule(
        "/tuf/metadata/",
        Rule::Status(StatusCode::SERVICE_UNAVAILABLE),
    );
    let before = agent_snapshot(&k);
    let err = update(&k).unwrap_err();
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("503 Service Unavailable"),
        "{:?} does not name the status",
        err.to_string()
    );
    assert_eq!(agent_snapshot(&k), before);
    assert_eq!(k.sysfs(), vec![module_name(BUILD_ID, 1)]);
}

#[test]
fn air_gapped_archive_applies_with_the_same_verification() {
    let (server, _registered) = setup();
    let archive = server.dir.path().join("export.tar.gz");
    server
        .rt
        .block_on(patchbay_server::service::archive::export(
            &server.service,
            &archive,
        ))
        .unwrap();
    let root = server.metadata().join("root.json");

    let k = FakeKernel::new();
    let a = agent(&k);
    let remote = Remote::new(&a, defaults(), ApplyOptions::default());
    let origin = Origin::Archive {
        path: archive.clone(),
        root: Some(root.clone()),
    };
    remote.update(&origin, true).unwrap();
    assert_eq!(k.sim().loads, vec![module_name(BUILD_ID, 1)]);

    // A tampered archive (one byte of the bundle flipped) is refused on a fresh host.
    let unpacked = server.dir.path().join("unpacked");
    patchbay_updates::archive::unpack(&archive, &unpacked).unwrap();
    let sha = server.level_sha(BUILD_ID, 1);
    let target = unpacked.join(format!("targets/{sha}.bundles/{BUILD_ID}/1.pbb"));
    let mut bytes = std::fs::read(&target).unwrap();
    let last = bytes.len() - 700;
    bytes[last] ^= 1;
    std::fs::write(&target, bytes).unwrap();
    let tampered = server.dir.path().join("tampered.tar.gz");
    let collect_dir = |sub: &str| -> Vec<(String, Vec<u8>)> {
        let mut out = BTreeMap::new();
        collect(&unpacked.join(sub), &unpacked.join(sub), &mut out);
        out.into_iter().collect()
    };
    patchbay_updates::archive::write(&tampered, &collect_dir("metadata"), &collect_dir("targets"))
        .unwrap();
    let k2 = FakeKernel::new();
    let a2 = agent(&k2);
    let err = Remote::new(&a2, defaults(), ApplyOptions::default())
        .update(
            &Origin::Archive {
                path: tampered,
                root: Some(root),
            },
            true,
        )
        .unwrap_err();
    assert!(err.to_string().contains("verification"), "{err}");
    assert!(k2.sim().loads.is_empty());
}

#[test]
fn attack_tampered_module_is_refused() {
    let (server, k) = setup();
    let object = server.object_path(&server.level_sha(BUILD_ID, 1));
    let mut bytes = std::fs::read(&object).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    let err = assert_refused(&k, "failed verification");
    assert_eq!(err.exit_code(), exit::REFUSED);
}

#[test]
fn attack_tampered_manifest_is_refused() {
    let (server, k) = setup();
    let v = server.versions();
    let path = server
        .metadata()
        .join(format!("{}.targets.json", v.targets));
    let text = std::fs::read_to_string(&path).unwrap();
    let tampered = text.replacen("CVE-2024-1001", "CVE-2024-9999", 1);
    assert_ne!(text, tampered);
    std::fs::write(&path, tampered).unwrap();
    assert_refused(&k, "refused");
}

#[test]
fn attack_signature_by_unknown_key_is_refused() {
    let (server, k) = setup();
    // Another server's timestamp: well-formed, signed, but by a key this root does not know.
    let other = TestServer::start();
    std::fs::copy(
        other.metadata().join("timestamp.json"),
        server.metadata().join("timestamp.json"),
    )
    .unwrap();
    assert_refused(&k, "signature");
}

#[test]
fn registered_hosts_follow_a_root_key_rotation() {
    let (server, k) = setup();
    update(&k).unwrap();
    assert_eq!(k.sim().loads, vec![module_name(BUILD_ID, 1)]);
    // The root key moves to two new keys (both must sign), made where the operator said;
    // root version 2 carries the old key's signature and the new ones'.
    let usb = tempfile::tempdir().unwrap();
    let files = vec![usb.path().join("root-a.pk8"), usb.path().join("root-b.pk8")];
    let new_keys = patchbay_server::tuf::NewRootKeys::new(files.clone(), 2).unwrap();
    let rotation = server
        .rt
        .block_on(server.service.rotate_root_keys(&[], &new_keys))
        .unwrap();
    assert_eq!(rotation.version, 2);
    // The host registered under version 1 takes version 2 and keeps updating.
    server.promote("production", BUILD_ID, 2, &[]);
    update(&k).unwrap();
    assert_eq!(k.sim().loads.last().unwrap(), &module_name(BUILD_ID, 2));
    let trusted = RemoteFiles::new(k.state_dir().root()).root;
    let served = server.dir.path().join("server/tuf/metadata/2.root.json");
    let json = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    // The same signed root (the agent stores the one its TUF client verified, re-serialised).
    assert_eq!(
        json(&trusted),
        json(&served),
        "the host now trusts root version 2"
    );
    // A root signed by the new keys alone (version 3) is taken up too.
    assert_eq!(
        server
            .rt
            .block_on(server.service.resign_root(&files, None))
            .unwrap(),
        3
    );
    server.rollback(BUILD_ID, 1);
    update(&k).unwrap();
    assert_eq!(k.sim().loads.last().unwrap(), &module_name(BUILD_ID, 1));
    // A registration key made before the rotation names root version 1: a new host still
    // registers with it, walking the chain from there, and updates.
    let late = FakeKernel::new();
    register(
        &agent(&late),
        &server.url,
        &server.registration_key,
        &RegisterTrust::default(),
    )
    .unwrap();
    update(&late).unwrap();
    assert_eq!(late.sim().loads, vec![module_name(BUILD_ID, 1)]);
}

#[test]
fn attack_rollback_to_older_metadata_is_refused() {
    let (server, k) = setup();
    let old_timestamp = std::fs::read(server.metadata().join("timestamp.json")).unwrap();
    server.promote("production", BUILD_ID, 2, &[]);
    // The host sees the newer chain once (check only: nothing loaded).
    assert!(matches!(check(&k).unwrap(), Plan::Change { .. }));
    std::fs::write(server.metadata().join("timestamp.json"), old_timestamp).unwrap();
    assert_refused(&k, "version");
}

#[test]
fn attack_expired_timestamp_freeze_is_refused() {
    let (server, k) = setup();
    server
        .rt
        .block_on(server.service.resign_timestamp_for_tests(-60))
        .unwrap();
    assert_refused(&k, "expired");
}

#[test]
fn attack_mix_and_match_snapshot_and_targets_is_refused() {
    let (server, k) = setup();
    let v = server.versions();
    let meta = server.metadata();
    // An older snapshot under the current name: the timestamp's hash no longer matches.
    std::fs::copy(
        meta.join(format!("{}.snapshot.json", v.snapshot - 1)),
        meta.join(format!("{}.snapshot.json", v.snapshot)),
    )
    .unwrap();
    assert_refused(&k, "refused");

    // Fresh setup: older targets under the current name.
    let (server, k) = setup();
    let v = server.versions();
    let meta = server.metadata();
    std::fs::copy(
        meta.join(format!("{}.targets.json", v.targets - 1)),
        meta.join(format!("{}.targets.json", v.targets)),
    )
    .unwrap();
    assert_refused(&k, "refused");
}

#[test]
fn attack_endless_download_is_cut_at_the_signed_size() {
    let (server, k) = setup();
    let (proxy, url) = Proxy::start(&server);
    point_at(&k, &url);
    proxy.rule("/tuf/targets/", Rule::Endless);
    assert_refused(&k, "failed verification");

    // Endless metadata is cut at the metadata limit.
    let (server, k) = setup();
    let (proxy, url) = Proxy::start(&server);
    point_at(&k, &url);
    proxy.rule("/tuf/metadata/timestamp.json", Rule::Endless);
    assert_refused(&k, "refused");
}

#[test]
fn attack_bundle_for_another_kernel_is_refused() {
    let (server, k) = setup();
    let (proxy, url) = Proxy::start(&server);
    point_at(&k, &url);
    let other = std::fs::read(server.object_path(&server.level_sha(OTHER_BUILD_ID, 1))).unwrap();
    proxy.rule(&format!("bundles/{BUILD_ID}/1.pbb"), Rule::Replace(other));
    assert_refused(&k, "failed verification");
}

#[test]
fn attack_level_the_channel_does_not_serve_is_refused() {
    let (server, k) = setup();
    server
        .rt
        .block_on(server.service.create_channel("test", "staging"))
        .unwrap();
    server.promote("staging", BUILD_ID, 2, &[]);
    // Level 2 is signed and available, but production serves 1: the host takes 1 only.
    update(&k).unwrap();
    assert_eq!(k.sim().loads, vec![module_name(BUILD_ID, 1)]);
    // A network attacker answers production's channel document with staging's.
    let (proxy, url) = Proxy::start(&server);
    point_at(&k, &url);
    let staging = server
        .rt
        .block_on(server.service.channel_doc(&"staging".parse().unwrap()))
        .unwrap()
        .to_bytes();
    proxy.rule("production.json", Rule::Replace(staging));
    assert_refused(&k, "failed verification");
}

#[test]
fn inner_server_serves_an_imported_archive_to_its_hosts() {
    let (outer, _k) = setup();
    let archive = outer.dir.path().join("export.tar.gz");
    outer
        .rt
        .block_on(patchbay_server::service::archive::export(
            &outer.service,
            &archive,
        ))
        .unwrap();
    let outer_root = outer.metadata().join("root.json");

    let inner = TestServer::start();
    let summary = inner
        .rt
        .block_on(patchbay_server::service::archive::import(
            &inner.service,
            &archive,
            Some(&outer_root),
        ))
        .unwrap();
    assert!(summary.targets >= 4, "{summary:?}");
    // The inner server serves the outer server's signed metadata unchanged.
    assert_eq!(
        std::fs::read(inner.metadata().join("timestamp.json")).unwrap(),
        std::fs::read(outer.metadata().join("timestamp.json")).unwrap()
    );
    // It refuses to publish on its own.
    let err = inner
        .rt
        .block_on(inner.service.create_channel("test", "staging"))
        .unwrap_err();
    assert!(err.to_string().contains("mirror"), "{err}");

    // A key made before the import names the inner server's own root, which it no longer
    // serves; one made now names the outer root it serves.
    let k = FakeKernel::new();
    let err = register(
        &agent(&k),
        &inner.url,
        &inner.registration_key,
        &RegisterTrust::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RemoteError::RootMismatch { .. }), "{err}");
    let key: RegistrationKey = inner
        .rt
        .block_on(inner.service.create_registration_key("test", "production"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        key.pins().unwrap().root_sha256,
        patchbay_core::Sha256::of(&std::fs::read(&outer_root).unwrap())
    );
    register(&agent(&k), &inner.url, &key, &RegisterTrust::default()).unwrap();
    update(&k).unwrap();
    assert_eq!(k.sim().loads, vec![module_name(BUILD_ID, 1)]);

    // A second import of an older archive is refused (rollback), the served chain unchanged.
    outer.promote("production", BUILD_ID, 2, &[]);
    let newer = outer.dir.path().join("newer.tar.gz");
    outer
        .rt
        .block_on(patchbay_server::service::archive::export(
            &outer.service,
            &newer,
        ))
        .unwrap();
    inner
        .rt
        .block_on(patchbay_server::service::archive::import(
            &inner.service,
            &newer,
            None,
        ))
        .unwrap();
    let served = std::fs::read(inner.metadata().join("timestamp.json")).unwrap();
    let err = inner
        .rt
        .block_on(patchbay_server::service::archive::import(
            &inner.service,
            &archive,
            None,
        ))
        .unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");
    assert_eq!(
        std::fs::read(inner.metadata().join("timestamp.json")).unwrap(),
        served
    );
    update(&k).unwrap();
    assert_eq!(k.sim().loads.last().unwrap(), &module_name(BUILD_ID, 2));
}

#[test]
fn daemon_rounds_apply_or_only_report_and_back_off_when_the_server_is_gone() {
    let (server, k) = setup();
    let a = agent(&k);
    let report_only = Remote::new(
        &a,
        Settings {
            auto_update: false,
            interval: std::time::Duration::from_secs(600),
            jitter: std::time::Duration::from_secs(60),
            ..defaults()
        },
        ApplyOptions::default(),
    );
    let mut failures = 0;
    let wait = report_only.daemon_step(&mut failures);
    assert!(
        k.sim().loads.is_empty(),
        "auto_update = false must not apply"
    );
    assert!(
        wait >= std::time::Duration::from_secs(600) && wait < std::time::Duration::from_secs(660)
    );
    let hosts = server
        .rt
        .block_on(server.service.hosts(&Default::default()))
        .unwrap();
    assert_eq!(
        hosts[0].state,
        HostState::Unpatched,
        "the check-in still reports"
    );

    let auto = Remote::new(&a, defaults(), ApplyOptions::default());
    auto.daemon_step(&mut failures);
    assert_eq!(k.sim().loads, vec![module_name(BUILD_ID, 1)]);
    assert_eq!(failures, 0);

    drop(server);
    let first = auto.daemon_step(&mut failures);
    let second = auto.daemon_step(&mut failures);
    assert_eq!(failures, 2);
    assert!(
        first >= std::time::Duration::from_secs(30) && first <= std::time::Duration::from_secs(45)
    );
    assert!(
        second >= std::time::Duration::from_secs(60)
            && second <= std::time::Duration::from_secs(90)
    );
    assert_eq!(k.sysfs(), vec![module_name(BUILD_ID, 1)]);
}

#[test]
fn uname_reports_the_release_whose_fixes_the_live_patch_brings() {
    let server = TestServer::start();
    let data = server.dir.path().join("server");
    patchbay_server::cve::sync(
        &data,
        &patchbay_server::cve::CveSource::Snapshot(patchbay_exposure::snapshot::bundled_dir()),
    )
    .unwrap();
    assert!(server.service.reload_cve_if_changed().unwrap());
    // The CVEs the first 6.1.y release after 6.1.100 fixed: a level carrying all of them makes
    // the host as fixed as that release.
    let db = server.service.cve_db();
    let from: patchbay_core::UpstreamVersion = "6.1.100".parse().unwrap();
    let next = db
        .records
        .values()
        .flat_map(|c| {
            c.ranges
                .iter()
                .filter(|r| r.contains(&from))
                .filter_map(|r| r.fixed)
        })
        .min()
        .unwrap();
    let fixes: Vec<String> = db
        .records
        .values()
        .filter(|c| {
            c.ranges
                .iter()
                .any(|r| r.contains(&from) && r.fixed == Some(next))
        })
        .map(|c| c.id.clone())
        .collect();
    server.publish(&crate::testutil::elf_bundle_fixing(
        BUILD_ID,
        RELEASE,
        1,
        Some(fixes),
    ));
    server.promote("production", BUILD_ID, 1, &[]);

    let k = FakeKernel::new();
    std::fs::write(
        k.root.path().join("proc/version"),
        "Linux version 6.1.0-56-amd64 (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP Debian 6.1.100-1 (2024-07-01)\n",
    )
    .unwrap();
    register(
        &agent(&k),
        &server.url,
        &server.registration_key,
        &RegisterTrust::default(),
    )
    .unwrap();
    // Before any patch: the kernel's own release.
    assert_eq!(crate::remote::uname(&agent(&k)).unwrap().0, "6.1.100");
    update(&k).unwrap();
    let (release, detail) = crate::remote::uname(&agent(&k)).unwrap();
    assert_eq!(release, next.to_string(), "{detail}");
    assert!(detail.contains("level 1"), "{detail}");
    // The server shows the same release for the host.
    let hosts = server
        .rt
        .block_on(server.service.hosts(&Default::default()))
        .unwrap();
    let e = server
        .rt
        .block_on(server.service.host_exposure(&hosts[0]))
        .unwrap();
    assert_eq!(e.effective_version, Some(next));
    assert_eq!(e.live.unwrap().fixed_by_patch, e.fixes.len());
}

#[test]
fn a_clock_that_jumped_forward_once_does_not_block_updates() {
    let (server, k) = setup();
    update(&k).unwrap();
    // The host's clock once read a year ahead and the TUF client recorded that time; the
    // clock is right again now.
    let ahead = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(365 * 24))
        .unwrap();
    let record = k
        .state_dir()
        .root()
        .join("tuf/datastore/latest_known_time.json");
    assert!(
        record.exists(),
        "the TUF client keeps its clock record at {record:?}"
    );
    std::fs::write(&record, serde_json::to_vec(&ahead.to_string()).unwrap()).unwrap();
    server.promote("production", BUILD_ID, 2, &[]);
    let report = update(&k).unwrap();
    assert_eq!(
        report.applied.map(|o| o.level),
        Some(level(2)),
        "the corrected clock must not block the update"
    );
}

/// Environment variable that tells the test process it runs under libfaketime, and which file
/// holds the offset (`+8d`, …) it reads the time from.
const FAKETIME_FILE_ENV: &str = "PATCHBAY_TEST_FAKETIME_FILE";
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Runs the test `name` of this binary again in a child process whose clock libfaketime
/// moves as the offset file says (the server and the agent in it see the same moved clock,
/// as tough and jiff read the real clock, not one we could inject).
fn rerun_under_faketime(name: &str) {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's faketime package (scripts/setup does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let offset_file = dir.path().join("faketime");
    std::fs::write(&offset_file, "+0").unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", &offset_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env(FAKETIME_FILE_ENV, &offset_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the test under faketime failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

/// Moves this process's clock to `days` after the real time and checks that it moved.
fn travel_to(offset_file: &Path, start: jiff::Timestamp, days: i64) {
    std::fs::write(offset_file, format!("+{days}d")).unwrap();
    let now = jiff::Timestamp::now();
    let moved = now.as_second() - start.as_second();
    assert!(
        (days * 86_400 - 3_600..days * 86_400 + 3_600).contains(&moved),
        "libfaketime did not move the clock to +{days} days (moved {moved} s)"
    );
}

#[test]
fn a_quiet_fleet_keeps_updating_8_100_and_400_days_later() {
    let Some(offset_file) = std::env::var_os(FAKETIME_FILE_ENV) else {
        let name = concat!(
            module_path!(),
            "::a_quiet_fleet_keeps_updating_8_100_and_400_days_later"
        );
        // Test names leave out the crate.
        rerun_under_faketime(name.split_once("::").map_or(name, |(_, rest)| rest));
        return;
    };
    let offset_file = PathBuf::from(offset_file);
    let start = jiff::Timestamp::now();
    let (server, k) = setup();
    update(&k).unwrap();
    let mut resigned = BTreeMap::<String, u32>::new();
    // The server's refresh runs every minute while it serves; once a day is enough to meet
    // every role's half-lifetime. Nobody publishes or promotes in between.
    for day in 1..=400 {
        travel_to(&offset_file, start, day);
        let report = server
            .rt
            .block_on(server.service.refresh_metadata())
            .unwrap();
        assert!(report.warnings.is_empty(), "day {day}: {report:?}");
        for role in report.resigned {
            *resigned.entry(role.to_string()).or_default() += 1;
        }
        if [8, 100, 400].contains(&day) {
            let report = update(&k).unwrap_or_else(|e| panic!("day {day}: update failed: {e}"));
            assert!(
                matches!(report.plan, Plan::UpToDate(_)),
                "day {day}: {:?}",
                report.plan
            );
        }
    }
    // Root (365 days) was renewed at least once, targets (90) several times, and the host
    // followed the root rotation.
    assert!(
        resigned.get("root").copied().unwrap_or(0) >= 1,
        "{resigned:?}"
    );
    assert!(
        resigned.get("targets").copied().unwrap_or(0) >= 4,
        "{resigned:?}"
    );
    println!("re-signed over 400 days: {resigned:?}");
    // And the channel still moves the host.
    server.promote("production", BUILD_ID, 2, &[]);
    let report = update(&k).unwrap();
    assert_eq!(report.applied.map(|o| o.level), Some(level(2)));
}

/// Sets this process's clock (libfaketime, see [`rerun_under_faketime`]) to `offset` from
/// the real time (`-7d`, `+0`) and checks that it moved about that far from `real`.
fn set_clock(offset_file: &Path, offset: &str, real: jiff::Timestamp, expected_secs: i64) {
    std::fs::write(offset_file, offset).unwrap();
    let moved = jiff::Timestamp::now().as_second() - real.as_second();
    assert!(
        (expected_secs - 3_600..expected_secs + 3_600).contains(&moved),
        "libfaketime did not move the clock to {offset} (moved {moved} s)"
    );
}

/// The offset file when this test runs under libfaketime; else runs test `name` (its
/// `module_path!()`-qualified name) again under it and returns `None`.
fn under_faketime(name: &str) -> Option<PathBuf> {
    match std::env::var_os(FAKETIME_FILE_ENV) {
        Some(file) => Some(PathBuf::from(file)),
        None => {
            rerun_under_faketime(name.split_once("::").map_or(name, |(_, rest)| rest));
            None
        }
    }
}

/// In test `$test`: the libfaketime offset file; outside libfaketime the test runs again
/// under it and this one returns.
macro_rules! offset_file_or_rerun {
    ($test:ident) => {
        match under_faketime(concat!(module_path!(), "::", stringify!($test))) {
            Some(file) => file,
            None => return,
        }
    };
}

const WEEK: i64 = 7 * 86_400;

/// The server's hosts as the API lists them.
fn listed_hosts(server: &TestServer) -> Vec<patchbay_server::store::HostRecord> {
    server
        .rt
        .block_on(server.service.hosts(&Default::default()))
        .unwrap()
}

#[test]
fn a_clock_set_back_a_week_keeps_the_level_and_the_check_in_says_so() {
    let offset_file =
        offset_file_or_rerun!(a_clock_set_back_a_week_keeps_the_level_and_the_check_in_says_so);
    let real = jiff::Timestamp::now();
    let (server, k) = setup();
    update(&k).unwrap();
    // Level 2 from now on (deploy-after: now); level 1 before.
    server.promote("production", BUILD_ID, 2, &[]);
    assert_eq!(update(&k).unwrap().applied.map(|o| o.level), Some(level(2)));
    let loads = k.sim().loads.clone();

    // A spoofed NTP answer: the host's clock (and, in this one process, the server's) reads a
    // week ago, before level 2's deploy-after time.
    set_clock(&offset_file, "-7d", real, -WEEK);
    let report = update(&k).unwrap();
    assert_eq!(report.plan, Plan::UpToDate(level(2)), "no downgrade");
    assert!(report.applied.is_none());
    assert_eq!(k.sim().loads, loads, "nothing loaded");
    assert_eq!(k.sysfs(), vec![module_name(BUILD_ID, 2)]);
    let hosts = listed_hosts(&server);
    let warning = hosts[0]
        .clock_warning
        .as_ref()
        .expect("the check-in carries a clock warning");
    assert!(
        warning.detail.contains("level 2 stays active") && warning.detail.contains("set back"),
        "{warning:?}"
    );
    assert_eq!(hosts[0].state, HostState::Patched);
    let host_page = format!("/ui/hosts/{}", hosts[0].id);
    let page = server.dashboard_page(&host_page);
    let shown = page
        .split_once("id=\"clock-warning\"")
        .map(|(_, rest)| rest.split("</tr>").next().unwrap_or_default())
        .unwrap_or_else(|| panic!("the host page shows no clock warning: {page}"));
    assert!(
        shown.contains("the host&#39;s clock read") || shown.contains("the host's clock read"),
        "{shown}"
    );
    assert!(shown.contains("level 2 stays active"), "{shown}");

    // A rollback the operator signs (the server's clock right) lowers the level, whatever the
    // host's clock reads.
    set_clock(&offset_file, "+0", real, 0);
    server.rollback(BUILD_ID, 1);
    set_clock(&offset_file, "-7d", real, -WEEK);
    let report = update(&k).unwrap();
    assert_eq!(report.applied.map(|o| o.level), Some(level(1)));

    // The clock right again: the next check-in carries no warning, and the dashboard drops it.
    set_clock(&offset_file, "+0", real, 0);
    update(&k).unwrap();
    let hosts = listed_hosts(&server);
    assert_eq!(hosts[0].clock_warning, None);
    assert!(!server
        .dashboard_page(&host_page)
        .contains("id=\"clock-warning\""));
}

#[test]
fn expired_metadata_after_the_clock_was_set_back_is_refused() {
    let offset_file =
        offset_file_or_rerun!(expired_metadata_after_the_clock_was_set_back_is_refused);
    let real = jiff::Timestamp::now();
    let (server, k) = setup();
    update(&k).unwrap();
    // Metadata that expired two days ago: a correct clock refuses it (TUF's expiry check).
    server
        .rt
        .block_on(server.service.resign_timestamp_for_tests(-2 * 86_400))
        .unwrap();
    assert_refused(&k, "expired");
    // With the clock a week back it is valid again as far as TUF can tell; but this host
    // verified the repository after it expired.
    set_clock(&offset_file, "-7d", real, -WEEK);
    let err = assert_refused(&k, "replay of expired metadata");
    assert!(err.to_string().contains("timestamp.json expired"), "{err}");
    let hosts = listed_hosts(&server);
    assert_eq!(hosts[0].state, HostState::Error);
    assert!(
        hosts[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("replay")),
        "{:?}",
        hosts[0].last_error
    );
    assert!(hosts[0].clock_warning.is_some(), "{:?}", hosts[0]);
}

#[test]
fn the_kill_switch_stops_update_daemon_and_boot_and_the_check_in_says_disabled() {
    let (server, k) = setup();
    let a = agent(&k);
    let switch = k
        .paths()
        .proc_dir
        .parent()
        .unwrap()
        .join("etc-patchbay-disable");
    std::fs::write(&switch, "").unwrap();
    let remote = Remote::new(&a, defaults(), ApplyOptions::default()).with_disable_file(&switch);
    let report = remote.update(&Origin::Server, true).unwrap();
    assert!(report.applied.is_none(), "{:?}", report.applied);
    assert!(
        report
            .disabled
            .as_deref()
            .is_some_and(|w| w.contains("exists")),
        "{:?}",
        report.disabled
    );
    assert!(
        matches!(report.plan, Plan::Change { .. }),
        "the plan is still reported"
    );
    let mut failures = 0;
    remote.daemon_step(&mut failures);
    assert_eq!(failures, 0);
    assert!(
        k.sim().loads.is_empty(),
        "nothing loaded: {:?}",
        k.sim().loads
    );
    let hosts = server
        .rt
        .block_on(server.service.hosts(&Default::default()))
        .unwrap();
    assert_eq!(hosts[0].state, HostState::Disabled);

    // The kernel command line switch does the same, for update and for boot.
    std::fs::remove_file(&switch).unwrap();
    let cmdline = k.paths().proc_dir.join("cmdline");
    std::fs::write(&cmdline, "root=/dev/vda quiet patchbay.disable\n").unwrap();
    let report = remote.update(&Origin::Server, true).unwrap();
    assert!(
        report
            .disabled
            .as_deref()
            .is_some_and(|w| w.contains("command line")),
        "{:?}",
        report.disabled
    );
    assert!(matches!(
        crate::remote::boot(&a, &switch, &ApplyOptions::default()).unwrap(),
        crate::remote::BootOutcome::Disabled(_)
    ));
    assert!(
        k.sim().loads.is_empty(),
        "nothing loaded: {:?}",
        k.sim().loads
    );

    // Switched off again: the next round applies.
    std::fs::write(&cmdline, "root=/dev/vda quiet\n").unwrap();
    let report = remote.update(&Origin::Server, true).unwrap();
    assert_eq!(report.applied.map(|o| o.level), Some(level(1)));
}

/// Level 1 recorded; level 2 loaded and its transition finished in the kernel, but the agent
/// died before recording it.
fn crash_between_transition_and_record(server: &TestServer, k: &FakeKernel) {
    update(k).unwrap();
    server.promote("production", BUILD_ID, 2, &[]);
    k.sim().crash_after_load = true;
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| update(k)));
    assert!(crashed.is_err(), "the simulated crash did not happen");
    k.sim().crash_after_load = false;
    crate::host::Clock::sleep(k, std::time::Duration::from_millis(50));
    crate::host::Clock::sleep(k, std::time::Duration::from_millis(5));
    assert!(
        k.sysfs().contains(&module_name(BUILD_ID, 2)),
        "{:?} does not contain {:?}",
        k.sysfs(),
        &module_name(BUILD_ID, 2)
    );
}

#[test]
fn boot_after_a_crash_between_transition_and_record_re_applies_the_live_level() {
    let (server, k) = setup();
    crash_between_transition_and_record(&server, &k);
    k.reboot();
    let a = agent(&k);
    let switch = k.root.path().join("no-disable-file");
    let outcome = crate::remote::boot(&a, &switch, &ApplyOptions::default()).unwrap();
    match outcome {
        crate::remote::BootOutcome::Applied(o) => assert_eq!(o.level, level(2), "not level 1"),
        other => panic!("boot did not re-apply: {other:?}"),
    }
    assert_eq!(k.sysfs(), vec![module_name(BUILD_ID, 2)]);
}

#[test]
fn update_after_a_crash_between_transition_and_record_finishes_the_apply() {
    let (server, k) = setup();
    crash_between_transition_and_record(&server, &k);
    // The kernel says level 2; the agent must not just call that "up to date" and leave the
    // history saying level 1 (and level 1's module loaded).
    let report = update(&k).unwrap();
    assert!(
        matches!(report.plan, Plan::UpToDate(_)),
        "{:?}",
        report.plan
    );
    let outcome = report.applied.expect("the unrecorded apply is finished");
    assert!(outcome.already_active);
    assert_eq!(
        k.loaded(),
        vec![module_name(BUILD_ID, 2)],
        "level 1's module removed"
    );
    // Now a reboot re-applies level 2 from the history.
    k.reboot();
    let a = agent(&k);
    let switch = k.root.path().join("no-disable-file");
    match crate::remote::boot(&a, &switch, &ApplyOptions::default()).unwrap() {
        crate::remote::BootOutcome::Applied(o) => assert_eq!(o.level, level(2)),
        other => panic!("boot did not re-apply: {other:?}"),
    }
}

#[test]
fn boot_with_a_corrupt_state_file_quarantines_it_and_re_applies_from_the_cache() {
    let (_server, k) = setup();
    update(&k).unwrap();
    let state = k.state_dir().state_file();
    std::fs::write(&state, b"{ not json").unwrap();
    k.reboot();
    let a = agent(&k);
    let switch = k.root.path().join("no-disable-file");
    match crate::remote::boot(&a, &switch, &ApplyOptions::default()).unwrap() {
        crate::remote::BootOutcome::Applied(o) => assert_eq!(o.level, level(1)),
        other => panic!("boot did not re-apply: {other:?}"),
    }
    let kept: Vec<_> = std::fs::read_dir(k.state_dir().root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("state.json.corrupt"))
        .collect();
    assert_eq!(kept.len(), 1, "the corrupt file is kept for inspection");
}

#[test]
fn a_damaged_cached_bundle_is_replaced_from_the_next_download() {
    let (_server, k) = setup();
    update(&k).unwrap();
    let cached = k
        .state_dir()
        .bundle_path(&BUILD_ID.parse().unwrap(), level(1));
    let mut bytes = std::fs::read(&cached).unwrap();
    // A flipped byte inside the module (the tar entry after `module.ko`'s 512-byte header).
    let header = bytes
        .windows(b"module.ko".len())
        .position(|w| w == b"module.ko")
        .unwrap();
    bytes[header + 512 + 16] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    assert!(
        patchbay_core::Bundle::read(&cached).is_err(),
        "the damage must show"
    );
    let report = update(&k).unwrap();
    assert!(matches!(report.plan, Plan::UpToDate(_)));
    patchbay_core::Bundle::read(&cached).expect("replaced by the signed download");
    // And boot can use it again.
    k.reboot();
    let a = agent(&k);
    let switch = k.root.path().join("no-disable-file");
    assert!(matches!(
        crate::remote::boot(&a, &switch, &ApplyOptions::default()).unwrap(),
        crate::remote::BootOutcome::Applied(_)
    ));
}

#[test]
fn an_unrecorded_apply_with_a_damaged_cache_is_finished_from_the_signed_download() {
    let (server, k) = setup();
    crash_between_transition_and_record(&server, &k);
    let cached = k
        .state_dir()
        .bundle_path(&BUILD_ID.parse().unwrap(), level(2));
    let mut bytes = std::fs::read(&cached).unwrap();
    let last = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[last] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    assert!(patchbay_core::Bundle::read(&cached).is_err());
    // The download replaces the cache entry and, held in memory, finishes the apply.
    let report = update(&k).unwrap();
    assert!(
        matches!(report.plan, Plan::UpToDate(_)),
        "{:?}",
        report.plan
    );
    assert!(
        report
            .applied
            .expect("the apply is finished")
            .already_active
    );
    patchbay_core::Bundle::read(&cached).expect("replaced by the signed download");
    assert_eq!(k.loaded(), vec![module_name(BUILD_ID, 2)]);
}

#[test]
fn scratch_left_by_a_killed_agent_is_removed_and_archives_unpack_privately() {
    let (server, k) = setup();
    // A scratch dir of a process that no longer exists (as after kill -9 mid-unpack), and one
    // of a live process (this one), which must stay.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let state = k.state_dir().root().to_path_buf();
    std::fs::create_dir_all(&state).unwrap();
    let stale = state.join(format!(".tuf-{dead}-abcdef"));
    std::fs::create_dir_all(stale.join("metadata")).unwrap();
    let live = state.join(format!(".tuf-{}-abcdef", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let torn_write = state.join(format!(".state.json.tmp.{dead}"));
    std::fs::write(&torn_write, b"{ half").unwrap();
    let archive = k.root.path().join("export.tar.gz");
    server
        .rt
        .block_on(patchbay_server::service::archive::export(
            &server.service,
            &archive,
        ))
        .unwrap();
    let a = agent(&k);
    Remote::new(&a, defaults(), ApplyOptions::default())
        .update(
            &Origin::Archive {
                path: archive,
                root: None,
            },
            true,
        )
        .unwrap();
    assert!(!stale.exists(), "the killed agent's scratch is removed");
    assert!(
        !torn_write.exists(),
        "the killed agent's temp file is removed"
    );
    assert!(live.exists(), "a running agent's scratch is left alone");
    let leftovers: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tuf-") && *n != live.file_name().unwrap().to_str().unwrap())
        .collect();
    assert!(
        leftovers.is_empty(),
        "this run's scratch is removed too: {leftovers:?}"
    );
}

#[test]
fn a_level_that_brought_the_machine_down_at_boot_is_not_tried_again() {
    let (server, k) = setup();
    crash_between_transition_and_record(&server, &k);
    k.reboot();
    let a = agent(&k);
    let switch = k.root.path().join("no-disable-file");
    // The first boot tries to complete the interrupted apply of level 2 and "dies" loading it
    // (as a kernel oops with panic_on_oops would).
    k.sim().crash_on_load = true;
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::remote::boot(&a, &switch, &ApplyOptions::default())
    }));
    assert!(crashed.is_err(), "the simulated crash did not happen");
    k.sim().crash_on_load = false;
    k.reboot();
    // The pending operation the crashed boot recorded was its own process's, started at its
    // own time; the next boot must still know it tried this level (whatever the clock says).
    let state_file = k.state_dir().state_file();
    let mut state = crate::state::AgentState::load(&state_file).unwrap();
    if let Some(pending) = state.pending.as_mut() {
        pending.pid = pending.pid.wrapping_add(1);
        pending.started_unix += 7;
    }
    state.save(&state_file).unwrap();
    // The next boot does not try level 2 again: it re-applies the last recorded level.
    match crate::remote::boot(&a, &switch, &ApplyOptions::default()).unwrap() {
        crate::remote::BootOutcome::Applied(o) => assert_eq!(o.level, level(1)),
        other => panic!("boot did not fall back: {other:?}"),
    }
    assert_eq!(k.sysfs(), vec![module_name(BUILD_ID, 1)]);
}

#[test]
fn a_boot_that_completed_an_interrupted_apply_does_not_block_the_next_one() {
    let (server, k) = setup();
    crash_between_transition_and_record(&server, &k);
    k.reboot();
    let a = agent(&k);
    let switch = k.root.path().join("no-disable-file");
    match crate::remote::boot(&a, &switch, &ApplyOptions::default()).unwrap() {
        crate::remote::BootOutcome::Applied(o) => assert_eq!(o.level, level(2)),
        other => panic!("boot did not complete the apply: {other:?}"),
    }
    assert!(
        !k.state_dir().root().join("boot-attempt").exists(),
        "the boot returned from the load: its attempt marker must be gone"
    );
}

#[test]
fn a_success_reply_that_is_not_ours_is_a_bad_reply_not_a_refusal() {
    let server = TestServer::start();
    let (proxy, url) = Proxy::start(&server);
    proxy.rule(
        "/api/v1/register",
        Rule::Replace(b"<html>captive portal</html>".to_vec()),
    );
    let k = FakeKernel::new();
    let err = register(
        &agent(&k),
        &url,
        &server.registration_key,
        &RegisterTrust::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, RemoteError::BadReply { status: 200, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("cannot be used") && !text.contains("refused"),
        "{text}"
    );
    assert!(
        !RemoteFiles::new(k.state_dir().root()).link.exists(),
        "a failed register keeps no server link"
    );
}

/// A plain TCP relay on loopback in front of `upstream` (host:port) that records every byte
/// in both directions: what someone on the network path would see.
fn recording_relay(rt: &tokio::runtime::Runtime, upstream: &str) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let upstream = upstream.to_owned();
    rt.spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, Arc::clone(&record)));
            tokio::spawn(pump(server_read, client_write, Arc::clone(&record)));
        }
    });
    (address.to_string(), seen)
}

/// Copies `from` to `to`, appending every byte to `record`.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    record: Arc<Mutex<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[test]
fn register_update_and_check_in_send_no_secret_in_clear() {
    let server = TestServer::start();
    server.publish(&elf_bundle(BUILD_ID, RELEASE, 1));
    server.promote("production", BUILD_ID, 1, &[]);
    let upstream = server.url.trim_start_matches("https://").to_owned();
    let (relay, seen) = recording_relay(&server.rt, &upstream);
    let k = FakeKernel::new();
    register(
        &agent(&k),
        &format!("https://{relay}"),
        &server.registration_key,
        &RegisterTrust::default(),
    )
    .unwrap();
    update(&k).unwrap();
    assert_eq!(k.sim().loads, vec![module_name(BUILD_ID, 1)]);
    let link = RemoteFiles::new(k.state_dir().root())
        .load_link()
        .unwrap()
        .unwrap();
    let captured = seen.lock().unwrap().clone();
    assert!(captured.len() > 10_000, "the relay carried the traffic");
    let secret = server
        .registration_key
        .secret()
        .expose()
        .as_bytes()
        .to_vec();
    for (name, needle) in [
        ("host token", link.host_token.as_bytes().to_vec()),
        ("registration key", secret.clone()),
        ("registration key hex", secret[6..].to_vec()),
        ("request path", b"/api/v1/checkin".to_vec()),
    ] {
        assert!(
            !captured
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "the {name} crossed the network in clear"
        );
    }
}

/// A check-in through the host's link is refused as untrusted (nothing sent), not as an outage.
fn assert_checkin_untrusted(server: &TestServer, k: &FakeKernel) {
    let a = agent(k);
    let remote = Remote::new(&a, defaults(), ApplyOptions::default());
    let link = RemoteFiles::new(k.state_dir().root())
        .load_link()
        .unwrap()
        .unwrap();
    let err = server
        .rt
        .block_on(remote.checkin(&link, None, false))
        .unwrap_err();
    assert!(matches!(err, RemoteError::Untrusted(_)), "{err:?}");
    assert_eq!(err.exit_code(), exit::REFUSED);
}

#[test]
fn a_pinned_link_turned_to_plain_http_sends_nothing() {
    let (server, k) = setup();
    update(&k).unwrap();
    // A listener that records whatever reaches it in clear, where the link now points.
    let listener = server
        .rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let plain = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&received);
    server.rt.spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                record.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    point_at(&k, &plain);
    assert_refused(&k, "plain HTTP");
    assert_checkin_untrusted(&server, &k);
    assert!(
        received.lock().unwrap().is_empty(),
        "the agent spoke plain HTTP for a pinned server"
    );
}

#[test]
fn the_agent_refuses_a_server_whose_certificate_is_not_the_pinned_one() {
    let (server, k) = setup();
    update(&k).unwrap();
    // Another server (same software, its own self-signed certificate) at the agent's URL: a
    // man in the middle, or a replaced server.
    let impostor = TestServer::start();
    point_at(&k, &impostor.url);
    let err = assert_refused(&k, "not the pinned one");
    let text = err.to_string();
    let expected = server.tls.sha256().unwrap();
    let seen = impostor.tls.sha256().unwrap();
    assert!(
        text.contains(expected.as_str()) && text.contains(seen.as_str()),
        "the error names both fingerprints: {text}"
    );
    // The check-in is refused too, as untrusted (nothing sent), not as an outage.
    assert_checkin_untrusted(&server, &k);
    // Registering there with the first server's key is refused in the handshake.
    let k2 = FakeKernel::new();
    let err = register(
        &agent(&k2),
        &impostor.url,
        &server.registration_key,
        &RegisterTrust::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RemoteError::Untrusted(_)), "{err:?}");
    assert_eq!(
        impostor
            .rt
            .block_on(impostor.service.hosts(&Default::default()))
            .unwrap()
            .len(),
        0,
        "the impostor registered nobody"
    );
}

/// A private CA of the test's own (rcgen): the issuer that signs, and its certificate's PEM
/// file, as an operator hands it to hosts.
struct PrivateCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pem: PathBuf,
}

impl PrivateCa {
    fn new(dir: &Path, name: &str) -> PrivateCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, issuer.pem()).unwrap();
        PrivateCa { issuer, pem }
    }

    /// Writes a certificate for 127.0.0.1 signed by this CA, and its key, as `files`.
    fn sign_server_certificate(&self, files: &patchbay_server::tls::CertificateFiles) {
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        std::fs::create_dir_all(files.certificate.parent().unwrap()).unwrap();
        std::fs::write(&files.certificate, certificate.pem()).unwrap();
        std::fs::write(&files.private_key, key.serialize_pem()).unwrap();
    }
}

#[test]
fn a_certificate_from_a_private_ca_is_trusted_through_the_configs_server_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = PrivateCa::new(dir.path(), "patchbay-test-ca");
    let other_ca = PrivateCa::new(dir.path(), "another-ca");
    let server = TestServer::start_with(|config, tls| {
        config.tls.hosts_check = patchbay_server::config::HostsCheckCertificate::Ca;
        ca.sign_server_certificate(tls);
    });
    assert_eq!(
        server.registration_key.pins().unwrap().cert_sha256,
        None,
        "hosts check a CA-signed certificate against the CA"
    );
    server.publish(&elf_bundle(BUILD_ID, RELEASE, 1));
    server.promote("production", BUILD_ID, 1, &[]);
    let with_ca = Settings {
        server_ca_file: Some(ca.pem.clone()),
        ..defaults()
    };
    let with_other_ca = Settings {
        server_ca_file: Some(other_ca.pem.clone()),
        ..defaults()
    };

    // Without the CA file (the platform's roots), and with another CA's: refused in the
    // handshake, before the key's secret is sent.
    for settings in [defaults(), with_other_ca.clone()] {
        let k = FakeKernel::new();
        let trust = RegisterTrust::default().or_config_ca_file(&settings);
        let err = register(&agent(&k), &server.url, &server.registration_key, &trust)
            .expect_err("an unknown CA's certificate must be refused");
        assert!(matches!(err, RemoteError::Untrusted(_)), "{err:?}");
    }
    assert!(listed_hosts(&server).is_empty(), "a host registered");

    // With it (no --ca-file): registered, updated, checked in.
    let k = FakeKernel::new();
    let trust = RegisterTrust::default().or_config_ca_file(&with_ca);
    register(&agent(&k), &server.url, &server.registration_key, &trust).unwrap();
    let a = agent(&k);
    let report = Remote::new(&a, with_ca.clone(), ApplyOptions::default())
        .update(&Origin::Server, true)
        .unwrap();
    assert!(report.applied.is_some(), "{report:?}");
    assert_eq!(k.sim().loads, vec![module_name(BUILD_ID, 1)]);
    let hosts = listed_hosts(&server);
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].active_level, Some(level(1)), "{hosts:?}");

    // The config now names another CA: every connection is refused as untrusted (not as an
    // outage) and nothing changes.
    let before = agent_snapshot(&k);
    let err = Remote::new(&a, with_other_ca, ApplyOptions::default())
        .update(&Origin::Server, true)
        .expect_err("another CA's file must not trust the server");
    assert_eq!(err.exit_code(), exit::REFUSED, "{err}");
    assert!(!matches!(err, RemoteError::Unreachable { .. }), "{err:?}");
    assert_eq!(agent_snapshot(&k), before);
}
