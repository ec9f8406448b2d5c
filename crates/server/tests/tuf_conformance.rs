//! Our TUF metadata checked by an implementation nobody here wrote: python-tuf's ngclient
//! (the reference client, installed by `scripts/setup` into a cached venv) bootstraps from
//! `1.root.json`, refreshes and downloads the channel document and a bundle after publish,
//! promote, rollback and key rotation, and again with the server's and the client's clocks
//! 400 days later (libfaketime) with nothing published in between.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

mod common;
use common::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn served_level(report: &Value) -> u64 {
    let doc = &report["files"]["channels/production.json"]["json"];
    doc["kernels"][BUILD_ID]["level"]
        .as_u64()
        .unwrap_or_else(|| panic!("no level for {BUILD_ID} in {doc}"))
}

fn bundle(level: u32) -> String {
    format!("bundles/{BUILD_ID}/{level}.pbb")
}

fn post(s: &Server, path: &str, body: Value) {
    let (status, v) = call(s, "POST", path, Some(&s.admin), Some(Body::Json(body)));
    assert_eq!(status, 200, "POST {path}: {v}");
}

fn cli(s: &Server, args: &[&str]) -> String {
    let output = Command::new(bin())
        .args(args)
        .arg("--data")
        .arg(&s.data)
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_reference_client_accepts_publish_promote_rollback_rotation_and_a_quiet_year() {
    let mut s = start(|t| t.to_owned());
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("1.root.json");
    std::fs::copy(s.data.join("tuf/metadata/1.root.json"), &root).unwrap();
    let client = work.path().join("client");
    let channel = "channels/production.json";

    // Bootstrap on the empty repository.
    let first = reference_client(&s, &client, &root, &[], &[]);
    assert_eq!(first["root"], 1, "{first}");

    // Publish two levels, promote level 1.
    for level in [1, 2] {
        publish_level(&s, level);
    }
    let promote = json!({"build_id": BUILD_ID, "level": 1});
    post(&s, "/api/v1/channels/production/promote", promote.clone());
    let after = reference_client(&s, &client, &root, &[channel, &bundle(1)], &[]);
    assert_eq!(served_level(&after), 1, "{after}");
    let published = call(&s, "GET", "/api/v1/kernels", Some(&s.admin), None).1;
    assert!(
        published
            .to_string()
            .contains(after["files"][bundle(1)]["sha256"].as_str().unwrap()),
        "the bundle the client downloaded is the one published: {after} vs {published}"
    );

    // Promote level 2, then roll the channel back to 1.
    post(
        &s,
        "/api/v1/channels/production/promote",
        json!({"build_id": BUILD_ID, "level": 2}),
    );
    let after = reference_client(&s, &client, &root, &[channel, &bundle(2)], &[]);
    assert_eq!(served_level(&after), 2, "{after}");
    post(&s, "/api/v1/channels/production/rollback", promote);
    let after = reference_client(&s, &client, &root, &[channel, &bundle(1)], &[]);
    assert_eq!(served_level(&after), 1, "{after}");

    // Rotate every online key (each a new root version) and re-sign root itself.
    let before_root = after["root"].as_u64().unwrap();
    for role in ["timestamp", "snapshot", "targets"] {
        cli(&s, &["root", "rotate", "--role", role]);
    }
    cli(&s, &["root", "resign"]);
    let after = reference_client(&s, &client, &root, &[channel, &bundle(1)], &[]);
    assert_eq!(after["root"].as_u64().unwrap(), before_root + 4, "{after}");
    assert_eq!(served_level(&after), 1, "{after}");
    // A client that starts from 1.root.json today walks the whole root chain.
    let fresh = reference_client(&s, &work.path().join("fresh"), &root, &[channel], &[]);
    assert_eq!(fresh["root"], after["root"], "{fresh}");

    // 400 days later, nothing published: the server re-signs what is due as it starts and
    // the client, with the same clock, still verifies and downloads.
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's faketime package (scripts/setup does)"
    );
    let later: [(&str, &OsStr); 3] = [
        ("LD_PRELOAD", OsStr::new(LIBFAKETIME)),
        ("FAKETIME", OsStr::new("+400d")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", OsStr::new("1")),
    ];
    s.restart_with_env(&later);
    let year_later = reference_client(&s, &client, &root, &[channel, &bundle(1)], &later);
    assert_eq!(served_level(&year_later), 1, "{year_later}");
    assert!(
        year_later["root"].as_u64() > after["root"].as_u64(),
        "root (365 days) was renewed: {year_later}"
    );
    assert!(
        year_later["targets"].as_u64() > after["targets"].as_u64(),
        "targets (90 days) was renewed: {year_later}"
    );
}
