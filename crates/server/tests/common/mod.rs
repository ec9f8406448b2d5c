//! The server test harness: a real `patchbay-server` process (init, then serve on loopback),
//! requests that fail the test on any 5xx, and bundles with small real ELF modules.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

use patchbay_core::manifest::{BuilderInfo, KernelTarget, ModuleInfo};
use patchbay_core::{Manifest, ObjectName, ReplacedFunction, Sha256, MANIFEST_FORMAT};
use patchbay_e2e::ServerProcess;
use serde_json::Value;

pub const BUILD_ID: &str = "0123456789abcdef0123456789abcdef01234567";
pub const RELEASE: &str = "6.1.0-56-amd64";

/// A server the test started, through the one server harness (`patchbay_e2e::ServerProcess`)
/// with this crate's own binary.
pub struct Server {
    pub process: ServerProcess,
    pub url: String,
    pub admin: String,
    pub registration_key: String,
    pub _dir: tempfile::TempDir,
    pub data: std::path::PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_patchbay-server")
}

/// `init`, `config.toml` rewritten by `edit`, then `serve` on a free loopback port.
pub fn start(edit: impl FnOnce(&str) -> String) -> Server {
    start_with(edit, ServerProcess::serve)
}

/// [`start`] serving plain HTTP (`serve --insecure-http`), for the tests about it.
pub fn start_insecure_http(edit: impl FnOnce(&str) -> String) -> Server {
    start_with(edit, ServerProcess::serve_insecure_http)
}

fn start_with<E: std::fmt::Debug>(
    edit: impl FnOnce(&str) -> String,
    serve: impl FnOnce(&mut ServerProcess) -> Result<(), E>,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut process = ServerProcess::init(Path::new(bin()), &data).unwrap();
    edit_config(&data, edit);
    serve(&mut process).unwrap();
    Server::from_process(process, dir)
}

/// Rewrites `<data>/config.toml` with `edit` (read when a server process starts).
pub fn edit_config(data: &Path, edit: impl FnOnce(&str) -> String) {
    let config = data.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, edit(&text)).unwrap();
}

/// Another server process on `data` (initialised before, by a test or by [`start`]), with
/// extra environment variables (e.g. libfaketime's, to move its clock).
pub fn attach(
    data: &Path,
    admin: &str,
    registration_key: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> Server {
    let mut process = ServerProcess::attach(
        Path::new(bin()),
        data,
        admin.to_owned(),
        registration_key.to_owned(),
    )
    .unwrap();
    process.serve_with_env(env).unwrap();
    Server::from_process(process, tempfile::tempdir().unwrap())
}

impl Server {
    fn from_process(process: ServerProcess, dir: tempfile::TempDir) -> Server {
        Server {
            url: process.url.clone(),
            admin: process.admin_token.clone(),
            registration_key: process.registration_key.clone(),
            data: process.data_dir.clone(),
            process,
            _dir: dir,
        }
    }

    /// An HTTP client that pins this server's certificate.
    pub fn client(&self) -> reqwest::Client {
        self.process.client()
    }

    /// [`Server::client`] that does not follow redirects, as the dashboard tests need (a
    /// login's 303 and its cookie are read, not followed).
    pub fn no_redirect_client(&self) -> reqwest::Client {
        self.process
            .client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// The certificate file, for tools that take a CA bundle (python-tuf, schemathesis).
    pub fn certificate(&self) -> std::path::PathBuf {
        self.data.join("tls/server.crt")
    }

    /// Stops the server process and starts it again on the same data (new port).
    pub fn restart_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        self.process.serve_with_env(env).unwrap();
        self.url = self.process.url.clone();
    }
}

/// One request; returns (status, JSON body). Fails the test on a 5xx or a non-JSON error.
pub fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Body>,
) -> (u16, Value) {
    let (status, value) = call_any(server, method, path, token, body);
    assert!(status < 500, "{method} {path} -> {status}: {value}");
    (status, value)
}

/// [`call`] for requests that are meant to fail on the server's side (a 5xx is returned, not
/// a test failure); errors must still be JSON.
pub fn call_any(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Body>,
) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = server.client();
        let mut request = client.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", server.url),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request = match body {
            Some(Body::Json(v)) => request.json(&v),
            Some(Body::Raw(bytes, kind)) => request.header("content-type", kind).body(bytes),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if status >= 400 {
            assert!(
                value.get("error").and_then(Value::as_str).is_some(),
                "{method} {path} -> {status} without a JSON error: {text}"
            );
        }
        (status, value)
    })
}

pub enum Body {
    Json(Value),
    Raw(Vec<u8>, &'static str),
}

pub fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_owned()
}

/// A small ELF object with a livepatch's `.modinfo`, like the builder's modules.
pub fn module(name: &str, release: &str, livepatch: bool) -> Vec<u8> {
    module_with_padding(name, release, livepatch, 0)
}

/// [`module`] with a data section of `padding` bytes (a large bundle).
pub fn module_with_padding(name: &str, release: &str, livepatch: bool, padding: usize) -> Vec<u8> {
    use object::write::Object;
    use object::{Architecture, BinaryFormat, Endianness, SectionKind};
    let mut elf = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let this = elf.add_section(
        Vec::new(),
        b".gnu.linkonce.this_module".to_vec(),
        SectionKind::Data,
    );
    elf.append_section_data(this, &[0u8; 64], 8);
    let info = elf.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::ReadOnlyData);
    let lp = if livepatch { "livepatch=Y\0" } else { "" };
    let text = format!(
        "{lp}license=GPL\0vermagic={release} SMP preempt mod_unload modversions \0name={name}\0"
    );
    elf.append_section_data(info, text.as_bytes(), 1);
    if padding > 0 {
        let pad = elf.add_section(Vec::new(), b".data.pad".to_vec(), SectionKind::Data);
        let bytes: Vec<u8> = (0..padding).map(|i| (i * 31 % 251) as u8).collect();
        elf.append_section_data(pad, &bytes, 1);
    }
    elf.write().unwrap()
}

pub fn bundle_bytes(level: u32, release_in_module: &str, livepatch: bool) -> Vec<u8> {
    bundle_bytes_padded(level, release_in_module, livepatch, 0)
}

/// The module name the builder gives level `level` of the harness's kernel.
pub fn module_of_level(level: u32) -> String {
    let build: patchbay_core::BuildId = BUILD_ID.parse().unwrap();
    patchbay_core::ModuleName::of_level(&build, level.try_into().unwrap())
        .as_str()
        .to_owned()
}

/// [`bundle_bytes`] whose module carries `padding` more bytes.
pub fn bundle_bytes_padded(
    level: u32,
    release_in_module: &str,
    livepatch: bool,
    padding: usize,
) -> Vec<u8> {
    let name = module_of_level(level);
    let module = module_with_padding(&name, release_in_module, livepatch, padding);
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        kernel: KernelTarget {
            release: RELEASE.parse().unwrap(),
            build_id: BUILD_ID.parse().unwrap(),
            upstream_version: patchbay_core::UpstreamVersion::new(6, 1, 192),
            package_version: None,
        },
        level: level.try_into().unwrap(),
        module: ModuleInfo {
            name: name.parse().unwrap(),
            sha256: Sha256::of(&module),
            size: module.len() as u64,
        },
        replaced_functions: vec![ReplacedFunction {
            object: ObjectName::vmlinux(),
            function: "cmdline_proc_show".into(),
            sympos: 0,
            replacement: "pb_cmdline_proc_show".into(),
        }],
        fixes: vec!["CVE-2024-1086".parse().unwrap()],
        builder: BuilderInfo {
            name: "test".into(),
            version: "0".into(),
        },
        created: "2026-11-22T00:00:00Z".into(),
    };
    let mut out = Vec::new();
    {
        let mut tar = tar::Builder::new(&mut out);
        for (entry, data) in [
            ("manifest.json", manifest.to_json().unwrap()),
            ("module.ko", module),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, entry, data.as_slice()).unwrap();
        }
        tar.finish().unwrap();
    }
    out
}

pub fn raw(bytes: Vec<u8>) -> Option<Body> {
    Some(Body::Raw(bytes, "application/octet-stream"))
}

/// Publishes the test kernel's bundle of `level` (as the admin).
pub fn publish_level(s: &Server, level: u32) {
    let (status, v) = call(
        s,
        "POST",
        "/api/v1/bundles",
        Some(&s.admin),
        Some(Body::Raw(
            bundle_bytes(level, RELEASE, true),
            "application/octet-stream",
        )),
    );
    assert_eq!(status, 201, "{v}");
}

/// One `patchbay-server` subcommand on `data`.
pub fn cli(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

/// The targets version the server's timestamp points to.
pub fn served_targets_version(s: &Server) -> u64 {
    let (_, ts) = call(s, "GET", "/tuf/metadata/timestamp.json", None, None);
    let sv = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let (_, snap) = call(
        s,
        "GET",
        &format!("/tuf/metadata/{sv}.snapshot.json"),
        None,
        None,
    );
    snap["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .unwrap()
}

/// The served targets role (`signed.targets`).
pub fn served_targets(s: &Server) -> Value {
    let tv = served_targets_version(s);
    let (_, targets) = call(
        s,
        "GET",
        &format!("/tuf/metadata/{tv}.targets.json"),
        None,
        None,
    );
    targets["signed"]["targets"].clone()
}

/// A new API token with `role` (named after it).
pub fn token(s: &Server, role: &str) -> String {
    let out = cli(
        &["token", "create", "--name", role, "--role", role],
        &s.data,
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_owned()
}

/// What a fresh host's TUF client sees: the verified target list (name, sha256, length) and
/// the signed documents of the channels asked for.
pub struct ClientView {
    /// The version of the newest root the client verified.
    pub root: u64,
    pub targets: Vec<(String, String, u64)>,
    pub channels: Vec<patchbay_core::ChannelDoc>,
}

/// What a fresh host's TUF client (the agent's, trusting `1.root.json`) makes of the server
/// now: the whole chain verified and `channels` read, or the client's refusal.
pub fn fresh_client(
    s: &Server,
    channels: &[patchbay_core::ChannelName],
) -> Result<ClientView, String> {
    let store = tempfile::tempdir().unwrap();
    tuf_client(s, channels, store.path())
}

/// [`fresh_client`] with the client's datastore in `store`: run again with the same store it
/// is a host that remembers every version it saw (rollback and freeze are refused).
pub fn tuf_client(
    s: &Server,
    channels: &[patchbay_core::ChannelName],
    store: &Path,
) -> Result<ClientView, String> {
    let trusted = std::fs::read(s.data.join("tuf/metadata/1.root.json")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let repo = patchbay_updates::SignedRepo::load(
            &trusted,
            &patchbay_updates::Source::Server(s.url.parse().unwrap(), s.process.trust()),
            store,
            patchbay_updates::Limits::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut docs = Vec::new();
        for channel in channels {
            docs.push(repo.channel(channel).await.map_err(|e| e.to_string())?);
        }
        let root: serde_json::Value =
            serde_json::from_slice(&repo.root_json().map_err(|e| e.to_string())?).unwrap();
        Ok(ClientView {
            root: root["signed"]["version"].as_u64().unwrap(),
            targets: repo.target_list(),
            channels: docs,
        })
    })
}

/// The dashboard's login page as a browser gets it: the login cookie (`name=value`) and the
/// CSRF token its form carries.
pub async fn login_page(client: &reqwest::Client, base: &str) -> (String, String) {
    let page = client.get(format!("{base}/ui/login")).send().await.unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    (cookie, csrf_in(&html))
}

/// The CSRF token a dashboard page's form carries.
pub fn csrf_in(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no CSRF token in {html}"))
        .split('"')
        .next()
        .unwrap()
        .to_owned()
}

/// Logs in to the dashboard as a browser does: the login page first (its form carries a
/// CSRF token, its cookie the same), then the form. Returns the reply to the form.
pub async fn ui_login(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let (cookie, csrf) = login_page(client, base).await;
    client
        .post(format!("{base}/ui/login"))
        .header("cookie", cookie)
        .form(&[("user", user), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap()
}

/// Logs in to the dashboard (see [`ui_login`]) and returns the session cookie (`name=value`);
/// fails the test when the login is refused.
pub async fn ui_session(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> String {
    let r = ui_login(client, base, user, password).await;
    assert_eq!(r.status(), 303, "login of {user} refused: {r:?}");
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// Adds a dashboard user with `patchbay-server user add`.
pub fn add_user(s: &Server, name: &str, role: &str, password: &str) {
    let out = Command::new(bin())
        .args(["user", "add", "--name", name, "--role", role, "--data"])
        .arg(&s.data)
        .env("PATCHBAY_PASSWORD", password)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A GET with a bearer token; returns the status and the body as text (CSV, metrics).
pub fn get_text(server: &Server, path: &str, token: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let response = server
            .client()
            .get(format!("{}{path}", server.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    })
}

/// Registers a host with `key`; returns the status and the reply (host_id, host_token, …).
pub fn register_host(s: &Server, key: &str, hostname: &str) -> (u16, Value) {
    call(
        s,
        "POST",
        "/api/v1/register",
        None,
        Some(Body::Json(serde_json::json!({
            "key": key, "hostname": hostname, "kernel_release": RELEASE,
            "build_id": BUILD_ID, "agent_version": "0.1.0"}))),
    )
}

/// The venv `scripts/setup` installs a Python tool into (`~/.cache/patchbay/python/<name>`),
/// or a test failure that says to run it.
pub fn python_venv(name: &str) -> std::path::PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache")
        });
    let venv = cache.join("patchbay/python").join(name);
    assert!(
        venv.join(".complete").exists(),
        "{name} is not installed in {}: run scripts/setup",
        venv.display()
    );
    venv
}

/// The python-tuf version `scripts/setup` installs for [`reference_client`].
pub const PYTHON_TUF_VERSION: &str = "7.0.1";

/// One run of the reference TUF client (python-tuf's ngclient, `tests/tuf_reference_client.py`)
/// against the server: bootstraps from `root`, keeps what it trusted in `client_dir` (as a
/// real host does), refreshes and downloads `targets`. Fails the test with its whole output
/// when it refuses.
pub fn reference_client(
    s: &Server,
    client_dir: &Path,
    root: &Path,
    targets: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Value {
    reference_client_result(s, client_dir, root, targets, env).unwrap_or_else(|refusal| {
        panic!("python-tuf refused the repository for {targets:?}:\n{refusal}")
    })
}

/// [`reference_client`] for a repository python-tuf may refuse: its report, or what it said
/// (exit status, stdout, stderr) when it refused.
pub fn reference_client_result(
    s: &Server,
    client_dir: &Path,
    root: &Path,
    targets: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<Value, String> {
    let python = python_venv(&format!("tuf-{PYTHON_TUF_VERSION}")).join("bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tuf_reference_client.py");
    let output = Command::new(python)
        .arg(script)
        .arg(&s.url)
        .arg(client_dir)
        .arg(root)
        .args(targets)
        // The server's self-signed certificate as the one CA (OpenSSL's trust store).
        .env("SSL_CERT_FILE", s.certificate())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "{}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            output.status
        ));
    }
    Ok(serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}")))
}

/// Every file under `dir`, by its path relative to `dir` (target names hold slashes).
pub fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let name = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    files
}

/// A dashboard session over HTTP, as a browser would hold it (redirects not followed).
pub struct UiPages {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    cookie: String,
    url: String,
}

impl UiPages {
    /// Adds a viewer `user` with `password` and logs them in.
    pub fn login(s: &Server, user: &str, password: &str) -> UiPages {
        add_user(s, user, "viewer", password);
        UiPages::session(s, user, password)
    }

    /// A new session of an existing `user` (e.g. after the server restarted on another port).
    pub fn session(s: &Server, user: &str, password: &str) -> UiPages {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = s.no_redirect_client();
        let cookie = rt.block_on(ui_session(&client, &s.url, user, password));
        UiPages {
            rt,
            client,
            cookie,
            url: s.url.clone(),
        }
    }

    /// The page at `path`; fails the test unless it is answered 200.
    pub fn page(&self, path: &str) -> String {
        self.rt.block_on(async {
            let r = self
                .client
                .get(format!("{}{path}", self.url))
                .header("cookie", &self.cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.text().await.unwrap()
        })
    }
}
