//! Where the root keys sit (issue 18, "keys kept apart"): `serve` warns at every start while a
//! root key sits beside the data, and says nothing of the kind when `init --offline-root` put
//! them elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;
use common::bin;

/// `init` (with `extra` arguments) then `serve`; returns what `serve` wrote to stderr up to
/// the line naming its TLS certificate (printed once it is ready to listen).
fn serve_start_messages(extra: &[&std::ffi::OsStr]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let init = Command::new(bin())
        .args(["init", "--data"])
        .arg(&data)
        .args(extra)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let mut serve = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in BufReader::new(serve.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("TLS certificate") {
            break;
        }
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    seen
}

#[test]
fn serve_warns_while_a_root_key_sits_beside_the_data() {
    let seen = serve_start_messages(&[]);
    assert!(
        seen.contains("WARNING: the root key(s)") && seen.contains("keys/root-1.pk8"),
        "{seen}"
    );
    let usb = tempfile::tempdir().unwrap();
    let seen = serve_start_messages(&["--offline-root".as_ref(), usb.path().as_os_str()]);
    assert!(seen.contains("TLS certificate"), "{seen}");
    assert!(!seen.contains("root key"), "{seen}");
}
