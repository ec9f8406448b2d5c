//! Server fault injection: a client publishes, promotes, rolls back and checks in without
//! pause while the server process is killed with SIGKILL at random moments, at least
//! [`KILLS`] times. After every restart a fresh TUF client (the agent's, trusting only
//! `1.root.json`) verifies the whole chain, every channel's signed document equals the
//! database's, and nothing the server acknowledged is lost (about one round in four also
//! kills the next process while it starts and reconciles); a host that has seen every
//! earlier version (the agent's client with a kept datastore, and every eighth round the
//! reference client, python-tuf) still accepts the chain: no version went backwards.
//!
//! The moments are random (xorshift, seed printed; `PATCHBAY_FAULT_SEED` replays a run); the
//! loop is bounded by the number of kills, not by time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patchbay_core::{ChannelDoc, ChannelName};
use serde_json::{json, Value};

mod common;
use common::*;

const KILLS: usize = 50;

/// A small, seedable generator: the run is replayable from its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the server acknowledged (2xx) before a kill.
#[derive(Debug, Default, Clone)]
struct Acknowledged {
    /// Published levels with the sha256 of their bundle.
    levels: Vec<(u32, String)>,
    /// The last channel document a promote or rollback answered with, and whether another
    /// channel change was sent after it (whose answer never came).
    channel: Option<(ChannelDoc, bool)>,
    /// The highest check-in number answered (sent as the agent version `check-<n>`).
    checkin: Option<u64>,
}

/// The certificate of the one server this test runs (its restarts keep it): every request
/// pins it.
static CERTIFICATE: std::sync::OnceLock<patchbay_core::Sha256> = std::sync::OnceLock::new();

/// One request that may fail because the server is gone (connection refused or cut).
fn request(
    rt: &tokio::runtime::Runtime,
    url: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Body>,
) -> Result<(u16, Value), String> {
    rt.block_on(async {
        let pin = CERTIFICATE
            .get()
            .expect("the test pins the certificate first");
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(patchbay_updates::tls::pinned_client_config(pin).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut request = client
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .bearer_auth(token);
        request = match body {
            Some(Body::Json(v)) => request.json(&v),
            Some(Body::Raw(bytes, kind)) => request.header("content-type", kind).body(bytes),
            None => request,
        };
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    })
}

/// The client's work until the server stops answering: the next level, a promote or a
/// rollback to a level it knows, a check-in, in random order.
fn work(
    url: String,
    admin: String,
    host_token: String,
    seed: u64,
    acknowledged: Arc<Mutex<Acknowledged>>,
    next_checkin: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut random = XorShift(seed | 1);
    while !stop.load(Ordering::SeqCst) {
        let (newest, served) = {
            let a = acknowledged.lock().unwrap();
            let newest = a.levels.iter().map(|(l, _)| *l).max().unwrap_or(0);
            let served = a
                .channel
                .as_ref()
                .and_then(|(doc, _)| doc.kernels.values().next().map(|r| r.level.get()))
                .unwrap_or(0);
            (newest, served)
        };
        let result = match random.below(4) {
            0 => {
                let level = newest + 1;
                let bundle = bundle_bytes(level, RELEASE, true);
                let sha = patchbay_core::Sha256::of(&bundle).as_str().to_owned();
                let reply = request(&rt, &url, "POST", "/api/v1/bundles", &admin, raw(bundle));
                // A 409 for these exact bytes, already signed, acknowledges a publish whose
                // first answer was lost in a kill.
                let durable = match &reply {
                    Ok((201, _)) => true,
                    Ok((409, v)) => error_of(v).contains("already published and signed"),
                    _ => false,
                };
                if durable {
                    acknowledged.lock().unwrap().levels.push((level, sha));
                }
                reply
            }
            kind @ (1 | 2) if newest > 0 => {
                let (path, level) = if kind == 1 || served <= 1 {
                    (
                        "promote",
                        served.max(1) + random.below(u64::from(newest - served.max(1)) + 1) as u32,
                    )
                } else {
                    ("rollback", 1 + random.below(u64::from(served - 1)) as u32)
                };
                if let Some((_, sent_after)) = acknowledged.lock().unwrap().channel.as_mut() {
                    *sent_after = true;
                }
                let reply = request(
                    &rt,
                    &url,
                    "POST",
                    &format!("/api/v1/channels/production/{path}"),
                    &admin,
                    Some(Body::Json(json!({"build_id": BUILD_ID, "level": level}))),
                );
                if let Ok((200, doc)) = &reply {
                    acknowledged.lock().unwrap().channel =
                        Some((serde_json::from_value(doc.clone()).unwrap(), false));
                }
                reply
            }
            _ => {
                let n = {
                    let mut next = next_checkin.lock().unwrap();
                    *next += 1;
                    *next
                };
                let reply = request(
                    &rt,
                    &url,
                    "POST",
                    "/api/v1/checkin",
                    &host_token,
                    Some(Body::Json(json!({
                        "kernel_release": RELEASE, "build_id": BUILD_ID,
                        "active_level": if served > 0 { Some(served) } else { None },
                        "state": "patched", "last_error": null,
                        "agent_version": format!("check-{n}")}))),
                );
                if let Ok((200, _)) = reply {
                    let mut a = acknowledged.lock().unwrap();
                    a.checkin = Some(a.checkin.map_or(n, |c| c.max(n)));
                }
                reply
            }
        };
        match result {
            // The server is gone: this round is over.
            Err(_) => return,
            Ok((status, body)) => assert!(status < 500, "the server answered {status}: {body}"),
        }
    }
}

/// The hosts that watch the whole run: each keeps what it trusted across every restart, so
/// a version that went backwards after a crash would be refused.
struct LongLivedHosts {
    /// tough's datastore (the agent's client).
    agent_store: tempfile::TempDir,
    /// python-tuf's metadata directory and its trust anchor.
    reference_dir: tempfile::TempDir,
}

/// How often (in rounds) the reference client, a slower Python process, checks the chain.
const REFERENCE_CLIENT_EVERY: usize = 8;

/// Everything the fault injection promises, checked after a restart.
fn check_after_restart(
    s: &Server,
    acknowledged: &Acknowledged,
    kill: usize,
    hosts: &LongLivedHosts,
    reference: bool,
) {
    tuf_client(s, &[], hosts.agent_store.path()).unwrap_or_else(|e| {
        panic!("after kill {kill}: a host that saw every earlier version refuses: {e}")
    });
    if reference {
        let root = hosts.reference_dir.path().join("1.root.json");
        if !root.exists() {
            std::fs::copy(s.data.join("tuf/metadata/1.root.json"), &root).unwrap();
        }
        reference_client(
            s,
            &hosts.reference_dir.path().join("client"),
            &root,
            &["channels/production.json"],
            &[],
        );
    }
    let admin = Some(s.admin.as_str());
    let (_, channels) = call(s, "GET", "/api/v1/channels", admin, None);
    let names: Vec<ChannelName> = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().parse().unwrap())
        .collect();
    let ClientView {
        targets,
        channels: signed_docs,
        ..
    } = fresh_client(s, &names)
        .unwrap_or_else(|e| panic!("after kill {kill}: a fresh TUF client refuses: {e}"));
    for (name, signed) in names.iter().zip(&signed_docs) {
        let (_, doc) = call(s, "GET", &format!("/api/v1/channels/{name}"), admin, None);
        let database: ChannelDoc = serde_json::from_value(doc).unwrap();
        assert_eq!(
            &database, signed,
            "after kill {kill}: channel {name}: the database and the signed document differ"
        );
    }
    let (_, kernels) = call(s, "GET", "/api/v1/kernels", admin, None);
    let stored: Vec<(u32, String)> = kernels["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|k| k["levels"].as_array().unwrap().clone())
        .map(|l| {
            (
                l["level"].as_u64().unwrap() as u32,
                l["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (level, sha) in &acknowledged.levels {
        assert!(
            stored.contains(&(*level, sha.clone())),
            "after kill {kill}: acknowledged level {level} is gone from the database"
        );
        let name = format!("bundles/{BUILD_ID}/{level}.pbb");
        assert!(
            targets.iter().any(|(n, h, _)| *n == name && h == sha),
            "after kill {kill}: acknowledged level {level} is not signed"
        );
    }
    // Every level in the database is signed too (the database says nothing the metadata
    // does not).
    for (level, sha) in &stored {
        let name = format!("bundles/{BUILD_ID}/{level}.pbb");
        assert!(
            targets.iter().any(|(n, h, _)| *n == name && h == sha),
            "after kill {kill}: level {level} is in the database but not signed"
        );
    }
    if let Some((acked, sent_after)) = &acknowledged.channel {
        let production = &signed_docs[names
            .iter()
            .position(|n| n.as_str() == "production")
            .unwrap()];
        if *sent_after {
            assert!(
                production.serial >= acked.serial,
                "after kill {kill}: the channel went back from serial {} to {}",
                acked.serial,
                production.serial
            );
        } else {
            assert_eq!(
                production, acked,
                "after kill {kill}: the last acknowledged channel change is lost"
            );
        }
    }
    if let Some(n) = acknowledged.checkin {
        let (_, hosts) = call(s, "GET", "/api/v1/hosts", admin, None);
        let version = hosts["hosts"][0]["agent_version"].as_str().unwrap();
        let recorded: u64 = version.strip_prefix("check-").unwrap().parse().unwrap();
        assert!(
            recorded >= n,
            "after kill {kill}: check-in {n} was acknowledged, the database has {recorded}"
        );
    }
}

#[test]
fn kill_9_at_random_points_loses_nothing_acknowledged_and_keeps_the_chain_valid() {
    let seed = std::env::var("PATCHBAY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("fault injection seed {seed} (PATCHBAY_FAULT_SEED={seed} replays it)");
    let mut random = XorShift(seed | 1);
    let mut s = start(|t| t.to_owned());
    let _ = CERTIFICATE.set(s.process.cert_sha256.clone());
    let (status, host) = register_host(&s, &s.registration_key, "victim");
    assert_eq!(status, 201);
    let host_token = host["host_token"].as_str().unwrap().to_owned();
    let hosts = LongLivedHosts {
        agent_store: tempfile::tempdir().unwrap(),
        reference_dir: tempfile::tempdir().unwrap(),
    };
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let next_checkin = Arc::new(Mutex::new(0u64));
    let mut kills = 0;
    let mut kills_at_start = 0;
    let mut round = 0;
    while kills < KILLS {
        round += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (url, admin, token) = (s.url.clone(), s.admin.clone(), host_token.clone());
            let (acknowledged, next_checkin, stop) =
                (acknowledged.clone(), next_checkin.clone(), stop.clone());
            let seed = random.next();
            std::thread::spawn(move || {
                work(url, admin, token, seed, acknowledged, next_checkin, stop)
            })
        };
        // A random moment: often in the middle of a request, sometimes between two.
        std::thread::sleep(Duration::from_millis(random.below(250)));
        if random.below(4) == 0 {
            // SIGKILL, then once more while the next process starts (and reconciles what
            // the first kill left).
            s.process.stop(); // SIGKILL
            kills += 1;
            let mut starting = std::process::Command::new(bin())
                .args(["serve", "--listen", "127.0.0.1:0", "--data"])
                .arg(&s.data)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(random.below(60)));
            let _ = starting.kill();
            let _ = starting.wait();
            kills_at_start += 1;
        }
        // SIGKILL (if still running), then a new process on the same data.
        s.restart_with_env(&[]);
        kills += 1;
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();
        let snapshot = acknowledged.lock().unwrap().clone();
        let reference = round % REFERENCE_CLIENT_EVERY == 0;
        check_after_restart(&s, &snapshot, kills, &hosts, reference);
    }
    let a = acknowledged.lock().unwrap();
    eprintln!(
        "{kills} kills ({kills_at_start} while starting): {} levels, {} check-ins acknowledged",
        a.levels.len(),
        a.checkin.unwrap_or(0)
    );
    assert!(!a.levels.is_empty(), "the loop never got a publish through");
}
