//! Check-ins per second on loopback: the patch server (SQLite) against nginx serving a static
//! file of the same size as a check-in reply, both under the same wrk load in the same run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use patchbay_e2e::ServerProcess;

const THREADS: u32 = 2;
const CONNECTIONS: u32 = 32;
/// The goal from the distribution issue is a ratio, recorded in docs/benchmarks.md; this run
/// only reports it.
pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = 10u32;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .context("--seconds needs a positive number")?;
            }
            other => {
                bail!("unknown argument {other:?}; usage: patchbay-bench server [--seconds N]")
            }
        }
    }
    let work = tempfile::tempdir()?;
    // Plain HTTP, as the nginx it is compared with serves: the bench measures the server's
    // own work per check-in, not TLS.
    let mut server = ServerProcess::start(&work.path().join("server"))?;
    server.serve_insecure_http()?;

    // One registered host checking in again and again: the write path of every agent.
    let build_id = "ab".repeat(20);
    let register = serde_json::json!({
        "key": server.registration_key,
        "hostname": "bench-host",
        "kernel_release": "6.1.0-56-amd64",
        "build_id": build_id,
        "agent_version": env!("CARGO_PKG_VERSION"),
    });
    let reply = post(&format!("{}/api/v1/register", server.url), None, &register)?;
    let token = serde_json::from_str::<serde_json::Value>(&reply)?
        .get("host_token")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .context("register reply has no host_token")?;
    let checkin = serde_json::json!({
        "kernel_release": "6.1.0-56-amd64",
        "build_id": build_id,
        "active_level": null,
        "state": "unpatched",
        "last_error": null,
        "agent_version": env!("CARGO_PKG_VERSION"),
    });
    let checkin_url = format!("{}/api/v1/checkin", server.url);
    let checkin_reply = post(&checkin_url, Some(&token), &checkin)?;

    let script = work.path().join("checkin.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = [[{}]]\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n",
            checkin
        ),
    )?;
    let server_result = wrk(&checkin_url, Some(&script), seconds)?;

    let nginx = Nginx::start(work.path(), checkin_reply.as_bytes())?;
    let nginx_result = wrk(&nginx.url, None, seconds)?;
    drop(nginx);

    let ratio = server_result.requests_per_sec / nginx_result.requests_per_sec;
    println!(
        "wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s on loopback, 2 cores shared by load tool and server"
    );
    println!("reply size {} bytes", checkin_reply.len());
    println!(
        "patchbay-server check-ins (SQLite)   {:>10.0} req/s   p50 {:>8.2} ms   p99 {:>8.2} ms",
        server_result.requests_per_sec, server_result.p50_ms, server_result.p99_ms
    );
    println!(
        "nginx static file, same size         {:>10.0} req/s   p50 {:>8.2} ms   p99 {:>8.2} ms",
        nginx_result.requests_per_sec, nginx_result.p50_ms, nginx_result.p99_ms
    );
    println!("ratio (server / nginx)               {ratio:>10.3}x");
    Ok(())
}

fn post(url: &str, token: Option<&str>, body: &serde_json::Value) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut request = reqwest::Client::new().post(url).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("POST {url} -> {status}: {text}");
        }
        Ok(text)
    })
}

struct WrkResult {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(url: &str, script: Option<&Path>, seconds: u32) -> Result<WrkResult> {
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency");
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let out = command
        .arg(url)
        .output()
        .context("run wrk (apt-get install wrk; scripts/setup does)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if text.contains("Non-2xx or 3xx responses") || text.contains("Socket errors") {
        bail!("wrk saw failed requests against {url}:\n{text}");
    }
    let requests_per_sec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let percentile = |p: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(p)).then(|| parts.next()).flatten()
            })
            .and_then(parse_wrk_duration_ms)
            .with_context(|| format!("no {p} latency in wrk output:\n{text}"))
    };
    Ok(WrkResult {
        requests_per_sec,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
    })
}

/// wrk prints latencies like `512.00us`, `1.20ms`, `2.01s`.
fn parse_wrk_duration_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// nginx on a free loopback port serving one file, as a non-daemon child; stopped on drop.
struct Nginx {
    child: Child,
    url: String,
}

impl Nginx {
    fn start(work: &Path, body: &[u8]) -> Result<Nginx> {
        let prefix = work.join("nginx");
        let root = prefix.join("html");
        std::fs::create_dir_all(prefix.join("logs"))?;
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("checkin.json"), body)?;
        // nginx's workers drop root; they must be able to read the file.
        use std::os::unix::fs::PermissionsExt;
        for dir in [work, prefix.as_path(), root.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::set_permissions(
            root.join("checkin.json"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut conf = String::new();
        writeln!(
            conf,
            "worker_processes 2;\npid {pid};\nerror_log {log} warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  default_type application/json;\n  keepalive_requests 1000000;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    location / {{ try_files /checkin.json =404; }}\n  }}\n}}",
            pid = prefix.join("nginx.pid").display(),
            log = prefix.join("logs/error.log").display(),
            root = root.display(),
        )?;
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start nginx (apt-get install nginx-light; scripts/setup does)")?;
        let url = format!("http://127.0.0.1:{port}/checkin.json");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Nginx { child, url });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not listen on 127.0.0.1:{port}")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master must take its worker processes down with it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
