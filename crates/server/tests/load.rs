//! Load: 10,000 simulated hosts register and check in against one server (the real binary)
//! while a level is published and promoted. Every check-in must succeed (no 429/503/5xx, no
//! timeout); the latencies are printed (p50/p99/max) for docs/benchmarks.md, never asserted
//! (speed targets live in benchmarks, not in tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

/// Runs `task(i)` for every i in 0..n with `CONCURRENCY` in flight.
async fn run_all<F, Fut, T>(n: usize, task: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let task = Arc::new(task);
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[test]
fn ten_thousand_hosts_check_in_while_a_level_is_published_and_promoted() {
    let s = start(|t| t.to_owned());
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = s
        .process
        .client_builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // Registration.
    let key = s.registration_key.clone();
    let register_started = Instant::now();
    let tokens: Vec<String> = rt.block_on({
        let client = client.clone();
        let url = url.clone();
        run_all(HOSTS, move |i| {
            let client = client.clone();
            let url = format!("{url}/api/v1/register");
            let body = json!({"key": key, "hostname": format!("host-{i}"),
                "kernel_release": RELEASE, "build_id": BUILD_ID, "agent_version": "0.1.0"});
            async move {
                let (status, reply, _) = post(&client, &url, None, &body).await.unwrap();
                assert_eq!(status, 201, "register host-{i}: {reply}");
                reply["host_token"].as_str().unwrap().to_owned()
            }
        })
    });
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
        run_all(HOSTS, move |i| {
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
