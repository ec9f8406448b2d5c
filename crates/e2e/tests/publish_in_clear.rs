//! The admin token never crosses the network in clear: the builder's `publish` (the client
//! `patchbay-build publish`, `upgrade --publish` and `watch` use) talks to the real server
//! binary through a relay of our own on loopback that records every byte both ways. Over TLS
//! the server reads the token (it answers the bundle, where a wrong token is 401) and the
//! recording holds neither the token nor the request path; the same relay in front of a
//! plain-HTTP server records both, so the capture would see a token sent in clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use patchbay_build::publish::{publish, PublishError, ServerAccess};
use patchbay_core::{Bundle, Manifest, Sha256};
use patchbay_e2e::server::{server_binary, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP relay on a new loopback port to `upstream`, recording every byte it carries (both
/// directions, in one buffer); its port.
fn recording_relay(rt: &tokio::runtime::Runtime, upstream: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    rt.spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(server_read), Box::new(client_write)),
            ] {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown().await;
                });
            }
        }
    });
    (port, seen)
}

/// A bundle whose module the server refuses (not a kernel module) after reading the token.
fn write_bundle(path: &Path) {
    // The ELF magic the bundle format asks for, and nothing of a kernel module after it.
    let module = b"\x7fELF, and no kernel module: refused by the server's module checks".to_vec();
    let manifest = serde_json::json!({
        "format": 1,
        "kernel": {
            "build_id": "0123456789abcdef0123456789abcdef01234567",
            "release": "6.1.0-56-amd64",
            "upstream_version": "6.1.192"
        },
        "level": 1,
        "module": {
            "name": "pb_0123456789ab_l1",
            "sha256": Sha256::of(&module).as_str(),
            "size": module.len()
        },
        "replaced_functions": [{
            "object": "vmlinux", "function": "cmdline_proc_show",
            "replacement": "pb_cmdline_proc_show", "sympos": 0
        }],
        "fixes": ["CVE-2024-1086"],
        "builder": {"name": "test", "version": "0"},
        "created": "2026-11-22T00:00:00Z"
    });
    let manifest = Manifest::parse(&serde_json::to_vec(&manifest).unwrap()).unwrap();
    let bundle = Bundle::new(manifest, module).unwrap();
    std::fs::write(path, bundle.to_bytes().unwrap()).unwrap();
}

/// `publish` through a recording relay in front of `server`: the server's answer (it must
/// have read the token: anything but 401) and what the relay recorded.
fn publish_through_relay(server: &ServerProcess, bundle: &Path) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (port, seen) = recording_relay(&rt, server.port);
    let access = if server.insecure_http {
        // A plain-HTTP URL goes with no certificate check (a pin would refuse to send).
        ServerAccess {
            url: format!("http://127.0.0.1:{port}"),
            trust: patchbay_updates::tls::ServerTrust::PlatformRoots,
            ..server.access()
        }
    } else {
        ServerAccess {
            url: format!("https://127.0.0.1:{port}"),
            ..server.access()
        }
    };
    let status = match rt.block_on(publish(&access, bundle)) {
        Err(PublishError::Refused { status, .. }) => status,
        other => panic!("the server should refuse a bundle without a kernel module: {other:?}"),
    };
    assert_ne!(status, 401, "the server did not read the admin token");
    let captured = seen.lock().unwrap().clone();
    (status, captured)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
#[ignore = "builds the release server"]
fn publish_sends_the_admin_token_only_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("level-1.pbb");
    write_bundle(&bundle);
    let bin = server_binary().unwrap();

    let mut tls = ServerProcess::init(&bin, &dir.path().join("tls")).unwrap();
    tls.serve().unwrap();
    let (status, captured) = publish_through_relay(&tls, &bundle);
    assert!((400..500).contains(&status), "{status}");
    assert!(
        captured.len() > 1000,
        "the relay carried the exchange ({} bytes)",
        captured.len()
    );
    for (name, needle) in [
        ("admin token", tls.admin_token.as_str()),
        ("request path", "/api/v1/bundles"),
    ] {
        assert!(!contains(&captured, needle), "the {name} crossed in clear");
    }

    // The control: the same relay in front of a plain-HTTP server records both.
    let mut plain = ServerProcess::init(&bin, &dir.path().join("plain")).unwrap();
    plain.serve_insecure_http().unwrap();
    let (_, captured) = publish_through_relay(&plain, &bundle);
    assert!(
        contains(&captured, &plain.admin_token),
        "the capture missed the token"
    );
    assert!(contains(&captured, "/api/v1/bundles"));
}
