//! Where the root keys sit (issue 18, "keys kept apart"): `serve` warns at every start while a
//! root key sits beside the data, and says nothing of the kind when `init --offline-root` put
//! them elsewhere; `doctor` lists each role's keys in the data dir and what a thief could do
//! with them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;
use common::{bin, cli};

/// A data dir made by `init` with `extra` arguments (in the returned temporary dir).
fn init(extra: &[&std::ffi::OsStr]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let init = Command::new(bin())
        .args(["init", "--data"])
        .arg(&data)
        .args(extra)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    (dir, data)
}

/// `init` (with `extra` arguments) then `serve`; returns what `serve` wrote to stderr up to
/// the line naming its TLS certificate (printed once it is ready to listen).
fn serve_start_messages(extra: &[&std::ffi::OsStr]) -> String {
    let (_dir, data) = init(extra);
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

/// `init` (with `extra` arguments) then `doctor`: its report, one line per finding.
fn doctor_after_init(extra: &[&std::ffi::OsStr]) -> (tempfile::TempDir, Vec<String>) {
    let (dir, data) = init(extra);
    let doctor = cli(&["doctor"], &data);
    let lines = String::from_utf8_lossy(&doctor.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (dir, lines)
}

/// doctor's one line about `role`'s keys: "<role> key online: …" or "<role> key offline …".
fn line_about<'a>(lines: &'a [String], role: &str) -> &'a str {
    let (online, offline) = (format!("{role} key online"), format!("{role} key offline"));
    let found: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&online) || l.contains(&offline))
        .collect();
    assert_eq!(found.len(), 1, "one line about the {role} key: {lines:#?}");
    found[0]
}

#[test]
fn doctor_says_which_keys_are_online_and_what_a_thief_could_do() {
    let (dir, lines) = doctor_after_init(&[]);
    let keys = dir.path().join("data/keys");
    let root = line_about(&lines, "root");
    assert!(
        root.starts_with("WARN ")
            && root.contains(&keys.join("root-1.pk8").display().to_string())
            && root.contains("sign any root"),
        "{root}"
    );
    let targets = line_about(&lines, "targets");
    assert!(
        targets.starts_with("ok ")
            && targets.contains(&keys.join("targets.pk8").display().to_string())
            && targets.contains("any module for every host"),
        "{targets}"
    );
    // The freeze bounds are the lifetimes init configured: snapshot 7 days, targets 90.
    let snapshot = line_about(&lines, "snapshot");
    assert!(
        snapshot.contains("snapshot.pk8") && snapshot.contains("up to 90 days"),
        "{snapshot}"
    );
    let timestamp = line_about(&lines, "timestamp");
    assert!(
        timestamp.contains("timestamp.pk8")
            && timestamp.contains("up to 7 days")
            && timestamp.contains("up to 90 days"),
        "{timestamp}"
    );

    let usb = tempfile::tempdir().unwrap();
    let (_dir, lines) = doctor_after_init(&["--offline-root".as_ref(), usb.path().as_os_str()]);
    let root = line_about(&lines, "root");
    assert!(root.starts_with("ok    root key offline"), "{root}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&usb.path().display().to_string())),
        "doctor names no file outside the data dir: {lines:#?}"
    );
}
