//! Dashboard and report latency at fleet scale: a server with the real CVE data and N hosts
//! (default 10,000) on 20 kernel releases, then the fleet page, the compliance page and CSV,
//! and `/metrics`, each timed (median of 5) beside the same page with one host.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchbay_e2e::{fixture, server_binary, ServerProcess};

const ROUNDS: usize = 5;

pub fn run(args: &[String]) -> Result<()> {
    let mut hosts = 10_000usize;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--hosts" => {
                hosts = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .context("--hosts needs a positive number")?;
            }
            other => bail!("unknown argument {other:?}; usage: patchbay-bench fleet [--hosts N]"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let small = measure(&runtime, 1)?;
    let large = measure(&runtime, hosts)?;
    println!("server with the bundled CVE data (8,599 CVEs), hosts on 20 kernel releases, median of {ROUNDS}");
    println!(
        "{:<34} {:>12} {:>14} {:>8}",
        "page",
        "1 host",
        format!("{hosts} hosts"),
        "ratio"
    );
    for ((name, one), (_, many)) in small.iter().zip(large.iter()) {
        println!(
            "{:<34} {:>9.1} ms {:>11.1} ms {:>7.1}x",
            name,
            one.as_secs_f64() * 1000.0,
            many.as_secs_f64() * 1000.0,
            many.as_secs_f64() / one.as_secs_f64()
        );
    }
    Ok(())
}

fn measure(runtime: &tokio::runtime::Runtime, hosts: usize) -> Result<Vec<(String, Duration)>> {
    let work = tempfile::tempdir()?;
    let mut server = ServerProcess::start(&work.path().join("server"))?;
    let sync = std::process::Command::new(server_binary()?)
        .args(["cve", "sync", "--snapshot"])
        .arg(fixture("../crates/exposure/data"))
        .arg("--data")
        .arg(&server.data_dir)
        .output()?;
    anyhow::ensure!(sync.status.success(), "cve sync failed: {sync:?}");
    server.restart()?;
    runtime.block_on(async {
        let client = server.client();
        let register = |i: usize| {
            let client = client.clone();
            let url = format!("{}/api/v1/register", server.url);
            let key = server.registration_key.clone();
            async move {
                let body = serde_json::json!({
                    "key": key,
                    "hostname": format!("host-{i:05}"),
                    "kernel_release": "6.1.0-56-amd64",
                    "kernel_version": format!("6.1.{}", 100 + (i % 20) * 4),
                    "build_id": format!("{:040x}", i % 20),
                    "agent_version": "bench",
                });
                let r = client.post(url).json(&body).send().await?;
                anyhow::ensure!(r.status().is_success(), "register: {}", r.status());
                anyhow::Ok(())
            }
        };
        let mut pending = Vec::new();
        for i in 0..hosts {
            pending.push(tokio::spawn(register(i)));
            if pending.len() >= 64 {
                for p in pending.drain(..) {
                    p.await??;
                }
            }
        }
        for p in pending {
            p.await??;
        }
        // A dashboard session: the login page's CSRF token (form field and cookie), then
        // the form.
        let browser = server
            .client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let login_page = browser
            .get(format!("{}/ui/login", server.url))
            .send()
            .await?;
        let login_cookie = login_page
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .context("no login cookie")?
            .to_owned();
        let html = login_page.text().await?;
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .context("no CSRF token on the login page")?
            .to_owned();
        let login = browser
            .post(format!("{}/ui/login", server.url))
            .header("cookie", login_cookie)
            .form(&[
                ("user", "admin"),
                ("password", server.dashboard_password.as_str()),
                ("csrf", csrf.as_str()),
            ])
            .send()
            .await?;
        let cookie = login
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .context("no session cookie")?
            .to_owned();
        let pages = [
            ("fleet page (/ui)", format!("{}/ui", server.url), true),
            (
                "compliance page (/ui/compliance)",
                format!("{}/ui/compliance", server.url),
                true,
            ),
            (
                "hosts page 100 (/ui/hosts)",
                format!("{}/ui/hosts?page=100", server.url),
                true,
            ),
            (
                "compliance CSV (API)",
                format!("{}/api/v1/reports/compliance?format=csv", server.url),
                false,
            ),
            ("/metrics", format!("{}/metrics", server.url), false),
        ];
        let mut results = Vec::new();
        for (name, url, ui) in pages {
            let mut times = Vec::new();
            for _ in 0..ROUNDS {
                let mut request = client.get(&url);
                request = if ui {
                    request.header("cookie", &cookie)
                } else {
                    request.bearer_auth(&server.admin_token)
                };
                let start = Instant::now();
                let response = request.send().await?;
                let status = response.status();
                let _ = response.bytes().await?;
                times.push(start.elapsed());
                anyhow::ensure!(status.is_success(), "{name}: {status}");
            }
            times.sort();
            results.push((
                name.to_owned(),
                times.get(ROUNDS / 2).copied().unwrap_or_default(),
            ));
        }
        anyhow::Ok(results)
    })
}
