//! Load: 10,000 simulated hosts register and check in against one server (the real binary)
//! while a level is published and promoted. Every check-in must succeed (no 429/503/5xx, no
//! timeout); the latencies are printed (p50/p99/max) for docs/benchmarks.md, never asserted
//! (speed targets live in benchmarks, not in tests). And a trickle flood of anonymous logins
//! while 1,000 hosts check in: no check-in fails, every trickling connection is cut.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::*;

const HOSTS: usize = 10_000;
/// Requests in flight at once (each simulated host is one request at a time).
const CONCURRENCY: usize = 64;

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<(u16, Value, Duration), String> {
    let started = Instant::now();
    let mut request = client.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| format!("{url}: {e}"))?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value, started.elapsed()))
}

/// Runs `task(i)` for every i in 0..n with `concurrency` in flight; the results in order.
async fn run_all<F, Fut, T>(n: usize, concurrency: usize, task: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let task = Arc::new(task);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let next = Arc::clone(&next);
        let task = Arc::clone(&task);
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                out.push((i, task(i).await));
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// A two-thread runtime and a client for a simulated fleet with `concurrency` in flight.
fn fleet(s: &Server, concurrency: usize) -> (tokio::runtime::Runtime, reqwest::Client) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = s
        .process
        .client_builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    (rt, client)
}

/// Registers hosts `host-0` to `host-<n-1>`, `concurrency` at a time; their host tokens.
fn register_all(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    s: &Server,
    n: usize,
    concurrency: usize,
) -> Vec<String> {
    let key = s.registration_key.clone();
    let (client, url) = (client.clone(), s.url.clone());
    rt.block_on(run_all(n, concurrency, move |i| {
        let (client, url) = (client.clone(), format!("{url}/api/v1/register"));
        let body = json!({"key": key, "hostname": format!("host-{i}"),
            "kernel_release": RELEASE, "build_id": BUILD_ID, "agent_version": "0.1.0"});
        async move {
            let (status, reply, _) = post(&client, &url, None, &body).await.unwrap();
            assert_eq!(status, 201, "register host-{i}: {reply}");
            reply["host_token"].as_str().unwrap().to_owned()
        }
    }))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[test]
fn ten_thousand_hosts_check_in_while_a_level_is_published_and_promoted() {
    // Every simulated host comes from 127.0.0.1, like a fleet behind one NAT address that
    // registers all at once: such an operator raises that address's anonymous share.
    let s = start(|t| {
        t.replace(
            "max_anonymous_requests_per_address = 8",
            &format!("max_anonymous_requests_per_address = {CONCURRENCY}"),
        )
    });
    let admin = s.admin.clone();
    let url = s.url.clone();
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/bundles",
        Some(&admin),
        Some(Body::Raw(
            bundle_bytes(1, RELEASE, true),
            "application/octet-stream",
        )),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/channels/production/promote",
        Some(&admin),
        Some(Body::Json(json!({"build_id": BUILD_ID, "level": 1}))),
    );
    assert_eq!(status, 200, "{v}");

    let (rt, client) = fleet(&s, CONCURRENCY);

    // Registration.
    let register_started = Instant::now();
    let tokens = register_all(&rt, &client, &s, HOSTS, CONCURRENCY);
    let register_time = register_started.elapsed();

    // Check-ins, with a publish and a promote once a third of the hosts have checked in.
    let done = Arc::new(AtomicUsize::new(0));
    let changes = {
        let done = Arc::clone(&done);
        let client = client.clone();
        let url = url.clone();
        let admin = admin.clone();
        let bundle = bundle_bytes(2, RELEASE, true);
        rt.spawn(async move {
            while done.load(Ordering::Relaxed) < HOSTS / 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let published = client
                .post(format!("{url}/api/v1/bundles"))
                .bearer_auth(&admin)
                .header("content-type", "application/octet-stream")
                .body(bundle)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            let promoted = post(
                &client,
                &format!("{url}/api/v1/channels/production/promote"),
                Some(&admin),
                &json!({"build_id": BUILD_ID, "level": 2}),
            )
            .await
            .unwrap()
            .0;
            (published, promoted, done.load(Ordering::Relaxed))
        })
    };
    let tokens = Arc::new(tokens);
    let checkin_started = Instant::now();
    let results: Vec<Result<Duration, String>> = rt.block_on({
        let client = client.clone();
        let url = url.clone();
        let done = Arc::clone(&done);
        let tokens = Arc::clone(&tokens);
        run_all(HOSTS, CONCURRENCY, move |i| {
            let client = client.clone();
            let url = format!("{url}/api/v1/checkin");
            let tokens = Arc::clone(&tokens);
            let done = Arc::clone(&done);
            let body = json!({"kernel_release": RELEASE, "build_id": BUILD_ID,
                "active_level": 1, "state": "patched", "last_error": null,
                "agent_version": "0.1.0"});
            async move {
                let result = match post(&client, &url, Some(&tokens[i]), &body).await {
                    Ok((200, _, took)) => Ok(took),
                    Ok((status, reply, _)) => Err(format!("host {i}: {status} {reply}")),
                    Err(e) => Err(format!("host {i}: {e}")),
                };
                done.fetch_add(1, Ordering::Relaxed);
                result
            }
        })
    });
    let checkin_time = checkin_started.elapsed();
    let (published, promoted, at) = rt.block_on(changes).unwrap();
    assert_eq!(
        (published, promoted),
        (201, 200),
        "the publish and the promote during the load"
    );
    assert!(
        at < HOSTS,
        "the changes happened during the check-ins ({at} done)"
    );
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {HOSTS} check-ins failed; first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    let mut latencies: Vec<Duration> = results.into_iter().map(Result::unwrap).collect();
    latencies.sort();
    println!(
        "load: {HOSTS} hosts, {CONCURRENCY} in flight; register {:.1} s; check-ins {:.1} s \
         ({:.0}/s) with a publish and a promote after {at}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        register_time.as_secs_f64(),
        checkin_time.as_secs_f64(),
        HOSTS as f64 / checkin_time.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    // Every check-in was recorded.
    let (status, metrics) = call(&s, "GET", "/metrics", Some(&admin), None);
    assert_eq!(status, 200, "{metrics}");
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("patchbay_hosts{{state=\"patched\"}} {HOSTS}")),
        "{text}"
    );
}

// Fair shares: anonymous clients that trickle their requests cannot take the fleet's
// capacity. More than 1,000 TLS connections from 110 loopback addresses each send a login
// request's headers and then its body one byte every two seconds, while 1,000 registered
// hosts fetch `/tuf` metadata and check in. Every check-in must succeed, and every trickling
// connection must be cut (408 once its body is too slow, 503 when it waited too long for an
// anonymous slot, 429 beyond its address's share) long before its body could have been
// sent. The only clock is the test's own safety net.

/// More trickling connections than the fleet's 1,024 slots: before the fix they held every
/// slot of the one shared limit.
const TRICKLERS: usize = 1_100;
/// Trickling connections per loopback address (beyond `max_anonymous_requests_per_address`).
const PER_ADDRESS: usize = 10;
const FLOOD_HOSTS: usize = 1_000;
/// Requests the simulated fleet has in flight at once.
const FLEET_CONCURRENCY: usize = 64;
/// The login body the tricklers announce, sent a byte every two seconds: 400 s in all.
const BODY_BYTES: usize = 200;

/// How a trickling connection ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Trickle {
    /// Answered with this status before its body was complete.
    Answered(u16),
    /// Closed without an answer.
    Closed,
    /// It sent its whole body: nothing cut it.
    BodyCompleted,
    /// Still open when the test gave up on it.
    StillOpen,
}

/// The `n`th trickler's source address: 127.1.x.y, `PER_ADDRESS` connections each.
fn trickler_address(n: usize) -> Ipv4Addr {
    let host = n / PER_ADDRESS;
    Ipv4Addr::new(127, 1, (host / 250) as u8, (host % 250 + 1) as u8)
}

/// One trickling login: a TLS connection from `source`, full headers, then one body byte
/// every two seconds until the server answers or closes. `ready` counts the tricklers whose
/// headers are out.
async fn trickle(
    server: SocketAddr,
    source: Ipv4Addr,
    tls: Arc<rustls::ClientConfig>,
    ready: Arc<AtomicUsize>,
) -> Trickle {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    let tcp = socket.connect(server).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let head = format!(
        "POST /ui/login HTTP/1.1\r\nHost: patchbay\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {BODY_BYTES}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    writer.flush().await.unwrap();
    ready.fetch_add(1, Ordering::SeqCst);
    let sending = async {
        for _ in 0..BODY_BYTES {
            if writer.write_all(b"a").await.is_err() || writer.flush().await.is_err() {
                // The server closed; the reader says how.
                return std::future::pending::<Trickle>().await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Trickle::BodyCompleted
    };
    let answer = async {
        let mut reply = Vec::new();
        let mut buffer = [0u8; 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buffer[..n]),
            }
            if reply.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&reply);
        match text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
        {
            Some(code) => Trickle::Answered(code.parse().unwrap()),
            None => Trickle::Closed,
        }
    };
    // The safety net only: a connection nothing cut would otherwise run for 400 s.
    let outcome = tokio::time::timeout(Duration::from_secs(150), async {
        tokio::select! {
            outcome = sending => outcome,
            outcome = answer => outcome,
        }
    });
    outcome.await.unwrap_or(Trickle::StillOpen)
}

#[test]
fn a_trickle_flood_of_logins_neither_fails_a_check_in_nor_holds_its_connections() {
    // A shorter request timeout than the default keeps the test short: requests waiting for
    // a slot give up after half of it (503).
    let s = start(|t| t.replace("request_timeout_secs = 120", "request_timeout_secs = 30"));
    publish_level(&s, 1);
    let server: SocketAddr = s.url.strip_prefix("https://").unwrap().parse().unwrap();
    let (rt, client) = fleet(&s, FLEET_CONCURRENCY);

    // The fleet registers first, within one address's anonymous share.
    let tokens = register_all(&rt, &client, &s, FLOOD_HOSTS, 8);

    // The flood: every trickler has sent its headers before the fleet starts.
    let tls =
        Arc::new(patchbay_updates::tls::pinned_client_config(&s.process.cert_sha256).unwrap());
    let ready = Arc::new(AtomicUsize::new(0));
    let tricklers: Vec<_> = (0..TRICKLERS)
        .map(|n| {
            rt.spawn(trickle(
                server,
                trickler_address(n),
                Arc::clone(&tls),
                Arc::clone(&ready),
            ))
        })
        .collect();
    rt.block_on(async {
        while ready.load(Ordering::SeqCst) < TRICKLERS {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // The fleet: each host fetches the repository's timestamp and checks in.
    let tokens = Arc::new(tokens);
    let results: Vec<Result<(), String>> = rt.block_on({
        let (client, url) = (client.clone(), s.url.clone());
        run_all(FLOOD_HOSTS, FLEET_CONCURRENCY, move |i| {
            let (client, url, tokens) = (client.clone(), url.clone(), Arc::clone(&tokens));
            let body = json!({"kernel_release": RELEASE, "build_id": BUILD_ID,
                "active_level": 1, "state": "patched", "last_error": null,
                "agent_version": "0.1.0"});
            async move {
                let timestamp = client
                    .get(format!("{url}/tuf/metadata/timestamp.json"))
                    .send()
                    .await
                    .map_err(|e| format!("host {i}: timestamp.json: {e}"))?
                    .status()
                    .as_u16();
                if timestamp != 200 {
                    return Err(format!("host {i}: timestamp.json answered {timestamp}"));
                }
                match post(
                    &client,
                    &format!("{url}/api/v1/checkin"),
                    Some(&tokens[i]),
                    &body,
                )
                .await
                {
                    Ok((200, _, _)) => Ok(()),
                    Ok((status, reply, _)) => Err(format!("host {i}: check-in {status} {reply}")),
                    Err(e) => Err(format!("host {i}: check-in {e}")),
                }
            }
        })
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let outcomes: Vec<Trickle> = rt.block_on(async {
        let mut outcomes = Vec::new();
        for trickler in tricklers {
            outcomes.push(trickler.await.unwrap());
        }
        outcomes
    });
    let mut counted: BTreeMap<Trickle, usize> = BTreeMap::new();
    for outcome in &outcomes {
        *counted.entry(outcome.clone()).or_default() += 1;
    }
    eprintln!("{TRICKLERS} trickling logins ended: {counted:?}");
    assert!(
        failures.is_empty(),
        "{} of {FLOOD_HOSTS} hosts failed during the flood; first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    let not_cut: Vec<&Trickle> = outcomes
        .iter()
        .filter(|o| !matches!(o, Trickle::Answered(408 | 429 | 503)))
        .collect();
    assert!(
        not_cut.is_empty(),
        "{} trickling connections were not cut with 408, 429 or 503: {counted:?}",
        not_cut.len()
    );
    assert!(
        counted.contains_key(&Trickle::Answered(408)),
        "some tricklers got an anonymous slot and were cut for their rate: {counted:?}"
    );
    assert!(
        counted.contains_key(&Trickle::Answered(429)),
        "an address's share of anonymous requests is bounded: {counted:?}"
    );
    // Every check-in was recorded.
    let (status, metrics) = call(&s, "GET", "/metrics", Some(&s.admin), None);
    assert_eq!(status, 200, "{metrics}");
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.contains(&format!(
            "patchbay_hosts{{state=\"patched\"}} {FLOOD_HOSTS}"
        )),
        "{text}"
    );
}
