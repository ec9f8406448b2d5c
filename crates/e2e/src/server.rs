//! A real `patchbay-server` process on the host's loopback, for guests and the demo.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Builds `patchbay-server` (release, once per process) in its own target dir, so it does not
/// wait on the lock of the cargo command running the tests. `PATCHBAY_SERVER_BIN` overrides it.
pub fn server_binary() -> Result<PathBuf> {
    static SERVER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| build_server().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The `patchbay-build` CLI in release mode, built in the server's target dir (they share
/// most dependencies, so CI compiles them once).
pub fn builder_binary() -> Result<PathBuf> {
    static BUILDER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILDER
        .get_or_init(|| {
            server_binary().map_err(|e| format!("{e:#}"))?;
            crate::release_binary(
                "patchbay-build",
                "patchbay-build",
                "e2e-server",
                crate::Linking::Dynamic,
            )
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_server() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATCHBAY_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    crate::release_binary(
        "patchbay-server",
        "patchbay-server",
        "e2e-server",
        crate::Linking::Dynamic,
    )
}

/// A `patchbay-server` process on a data dir `init` made; killed on drop. The one server
/// harness: the e2e suites, the benches and the server crate's own tests (which pass their
/// debug binary to [`ServerProcess::init`]) all start servers through it.
#[derive(Debug)]
pub struct ServerProcess {
    /// The `patchbay-server` binary this process runs.
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    /// `https://127.0.0.1:<port>` (`http://` with [`ServerProcess::serve_insecure_http`])
    pub url: String,
    /// The SHA-256 of the self-signed certificate `init` made: every client here pins it.
    pub cert_sha256: patchbay_core::Sha256,
    /// Serve plain HTTP (`serve --insecure-http`), for the tests about it.
    pub insecure_http: bool,
    pub port: u16,
    pub admin_token: String,
    /// The first registration key `init` made, for the `production` channel.
    pub registration_key: String,
    /// The dashboard password of user `admin`.
    pub dashboard_password: String,
    child: Option<Child>,
}

impl ServerProcess {
    /// `patchbay-server init` into `data_dir`, then `serve` on a free loopback port.
    pub fn start(data_dir: &Path) -> Result<ServerProcess> {
        let mut server = ServerProcess::init(&server_binary()?, data_dir)?;
        server.serve_on("127.0.0.1:0", &[])?;
        Ok(server)
    }

    /// `bin init` into `data_dir`, without serving yet (the caller may edit `config.toml`
    /// first, then [`ServerProcess::serve`]).
    pub fn init(bin: &Path, data_dir: &Path) -> Result<ServerProcess> {
        let init = Command::new(bin)
            .arg("init")
            .arg("--data")
            .arg(data_dir)
            .output()
            .context("run patchbay-server init")?;
        let stdout = String::from_utf8_lossy(&init.stdout).into_owned();
        if !init.status.success() {
            bail!(
                "patchbay-server init failed ({}):\n{stdout}\n{}",
                init.status,
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let field = |name: &str| -> Result<String> {
            stdout
                .lines()
                .find_map(|line| line.trim().strip_prefix(name))
                .map(|rest| rest.trim().to_owned())
                .with_context(|| {
                    format!("`patchbay-server init` printed no `{name}` line:\n{stdout}")
                })
        };
        let admin_token = field("admin-token:")?;
        let registration_key = field("registration-key:")?;
        let dashboard_password = field("dashboard-password:")?;
        let mut server = ServerProcess::attach(bin, data_dir, admin_token, registration_key)?;
        server.dashboard_password = dashboard_password;
        Ok(server)
    }

    /// A second process on a data dir another `ServerProcess` initialised (same secrets), not
    /// serving yet.
    pub fn attach(
        bin: &Path,
        data_dir: &Path,
        admin_token: String,
        registration_key: String,
    ) -> Result<ServerProcess> {
        let cert_sha256 = patchbay_server_tls_sha256(data_dir)?;
        Ok(ServerProcess {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            url: String::new(),
            port: 0,
            cert_sha256,
            insecure_http: false,
            admin_token,
            registration_key,
            dashboard_password: String::new(),
            child: None,
        })
    }

    /// The arguments a builder command (`publish`, `upgrade --publish`, `watch`) takes to reach
    /// this server as its administrator: URL, admin token and the pinned certificate.
    pub fn builder_args(&self) -> Vec<String> {
        vec![
            "--server".into(),
            self.url.clone(),
            "--token".into(),
            self.admin_token.clone(),
            "--server-cert-sha256".into(),
            self.cert_sha256.as_str().to_owned(),
        ]
    }

    /// How clients trust this server: its certificate pinned.
    pub fn trust(&self) -> patchbay_updates::tls::ServerTrust {
        patchbay_updates::tls::ServerTrust::Pinned(self.cert_sha256.clone())
    }

    /// An HTTP client that pins this server's certificate (what a user's client does with
    /// `--server-cert-sha256`).
    pub fn client(&self) -> reqwest::Client {
        self.client_builder()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    }

    /// A client builder pinning this server's certificate, for clients that need more
    /// settings (cookies, redirects).
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder();
        match patchbay_updates::tls::pinned_client_config(&self.cert_sha256) {
            Ok(config) => builder.tls_backend_preconfigured(config),
            Err(_) => builder,
        }
    }

    /// The builder's view of this server: URL, admin token, pinned certificate.
    pub fn access(&self) -> patchbay_build::publish::ServerAccess {
        patchbay_build::publish::ServerAccess {
            url: self.url.clone(),
            token: self.admin_token.clone(),
            trust: self.trust(),
        }
    }

    /// Serves plain HTTP from now on (`serve --insecure-http`), after stopping a running
    /// process.
    pub fn serve_insecure_http(&mut self) -> Result<()> {
        self.insecure_http = true;
        self.serve()
    }

    /// Serves (again) on a free loopback port, after stopping a running process.
    pub fn serve(&mut self) -> Result<()> {
        self.serve_with_env(&[])
    }

    /// [`ServerProcess::serve`] with extra environment variables (e.g. libfaketime's, to move
    /// the server's clock).
    pub fn serve_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
        self.stop();
        self.serve_on("127.0.0.1:0", env)
    }

    /// The process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn serve_on(&mut self, listen: &str, env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
        let mut command = Command::new(&self.bin);
        command
            .arg("serve")
            .arg("--data")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(listen);
        if self.insecure_http {
            command.arg("--insecure-http");
        }
        let mut child = command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start patchbay-server serve")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("patchbay-server serve exited before printing `listening on`");
            };
            let line = line.context("read server output")?;
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                break url.trim().trim_end_matches('/').to_owned();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("patchbay-server serve printed no `listening on` line in 30 s");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in {url:?}"))?;
        self.url = url;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server with SIGKILL, as a crash would (the data dir stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let listen = format!("127.0.0.1:{}", self.port);
        self.serve_on(&listen, &[])
    }

    /// Loads the bundled CVE snapshot into the server's database (`cve sync --snapshot`) and
    /// restarts it, so its exposure reports know the real 6.1 CVEs.
    pub fn sync_cve_snapshot(&mut self) -> Result<()> {
        let sync = Command::new(&self.bin)
            .args(["cve", "sync", "--snapshot"])
            .arg(crate::fixture("../crates/exposure/data"))
            .arg("--data")
            .arg(&self.data_dir)
            .output()
            .context("run patchbay-server cve sync")?;
        if !sync.status.success() {
            bail!(
                "patchbay-server cve sync failed ({}): {}",
                sync.status,
                String::from_utf8_lossy(&sync.stderr)
            );
        }
        self.restart()
    }

    /// The upgrade report attached to a level (`GET kernels/{build_id}/levels/{level}/report`).
    pub fn level_report(&self, build_id: &str, level: u32) -> Result<serde_json::Value> {
        self.admin(
            "GET",
            &format!("kernels/{build_id}/levels/{level}/report"),
            None,
        )
    }

    /// An admin API call; returns the JSON reply, or an error with the server's message.
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = format!("{}/api/v1/{}", self.url, path.trim_start_matches('/'));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = self.client();
            let method = reqwest::Method::from_bytes(method.as_bytes())?;
            let mut request = client
                .request(method.clone(), &url)
                .bearer_auth(&self.admin_token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("{method} {url}"))?;
            let status = response.status();
            let text = response.text().await?;
            if !status.is_success() {
                bail!("{method} {url} -> {status}: {text}");
            }
            Ok(if text.trim().is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&text).with_context(|| format!("{method} {url}: {text}"))?
            })
        })
    }

    /// Publishes a bundle with the builder's client.
    pub fn publish(&self, bundle: &Path) -> Result<patchbay_core::protocol::PublishReceipt> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(patchbay_build::publish::publish(&self.access(), bundle))?)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The SHA-256 of the certificate a data dir's server serves (`<data>/tls/server.crt`, as
/// `init` makes it).
fn patchbay_server_tls_sha256(data_dir: &Path) -> Result<patchbay_core::Sha256> {
    let path = data_dir.join("tls/server.crt");
    let pem = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    patchbay_updates::tls::pem_certificate_sha256(&pem)
        .with_context(|| format!("{}: no PEM certificate", path.display()))
}
