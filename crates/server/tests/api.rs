//! The HTTP API against a running `patchbay-server` process (init, then serve on loopback):
//! the happy paths and, above all, bad input — every refusal is a JSON 4xx, never a 500.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

mod common;
use common::*;

#[test]
fn tuf_repository_is_served_and_guarded() {
    let s = start(|t| t.to_owned());
    let (status, root) = call(&s, "GET", "/tuf/metadata/root.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(root["signed"]["_type"], "root");
    assert_eq!(root["signed"]["consistent_snapshot"], true);
    let (status, ts) = call(&s, "GET", "/tuf/metadata/timestamp.json", None, None);
    assert_eq!(status, 200);
    let snapshot_version = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let (status, _) = call(
        &s,
        "GET",
        &format!("/tuf/metadata/{snapshot_version}.snapshot.json"),
        None,
        None,
    );
    assert_eq!(status, 200);
    for bad in [
        "/tuf/metadata/config.toml",
        "/tuf/metadata/..%2Fconfig.toml",
        "/tuf/metadata/99.targets.json",
        "/tuf/targets/nothex.channels/production.json",
        "/tuf/targets/../../keys/targets.pk8",
        "/nope",
    ] {
        let (status, _) = call(&s, "GET", bad, None, None);
        assert_eq!(status, 404, "{bad}");
    }
    let (status, doc) = call(&s, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    assert!(doc["paths"]["/channels/{name}/promote"].is_object());
}

#[test]
fn admin_endpoints_need_an_admin_token() {
    let s = start(|t| t.to_owned());
    for (method, path) in [
        ("GET", "/api/v1/kernels"),
        ("GET", "/api/v1/channels"),
        ("GET", "/api/v1/hosts"),
        ("GET", "/api/v1/audit"),
        ("POST", "/api/v1/bundles"),
        ("POST", "/api/v1/channels/production/promote"),
        ("POST", "/api/v1/registration-keys"),
    ] {
        let (status, v) = call(&s, method, path, None, None);
        assert_eq!(status, 401, "{method} {path}: {v}");
        let (status, _) = call(&s, method, path, Some("pbadm_wrong"), None);
        assert_eq!(status, 401, "{method} {path}");
        // A host token is not an admin token.
        let (_, reg) = call(
            &s,
            "POST",
            "/api/v1/register",
            None,
            Some(Body::Json(json!({
                "key": s.registration_key, "hostname": "h", "kernel_release": RELEASE,
                "build_id": BUILD_ID, "agent_version": "0.1.0"}))),
        );
        let host_token = reg["host_token"].as_str().unwrap().to_owned();
        let (status, _) = call(&s, method, path, Some(&host_token), None);
        assert_eq!(status, 401, "{method} {path} with a host token");
    }
}

#[test]
fn publishing_checks_level_order_module_and_size() {
    let s = start(|t| t.replace("max_bundle_bytes = 67108864", "max_bundle_bytes = 200000"));
    let admin = Some(s.admin.as_str());
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/bundles",
        admin,
        raw(b"garbage".to_vec()),
    );
    assert_eq!(status, 422, "{v}");
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/bundles",
        admin,
        raw(bundle_bytes(2, RELEASE, true)),
    );
    assert_eq!(status, 409, "{v}");
    assert!(error_of(&v).contains("must be level 1"), "{v}");
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/bundles",
        admin,
        raw(bundle_bytes(1, RELEASE, false)),
    );
    assert_eq!(status, 422, "{v}");
    assert!(error_of(&v).contains("livepatch=Y"), "{v}");
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/bundles",
        admin,
        raw(bundle_bytes(1, "6.1.0-55-amd64", true)),
    );
    assert_eq!(status, 422, "{v}");
    assert!(error_of(&v).contains("vermagic"), "{v}");
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/bundles",
        admin,
        raw(vec![0u8; 300_000]),
    );
    assert_eq!(status, 413, "{v}");
    // Nothing of the refused uploads is stored.
    let (_, kernels) = call(&s, "GET", "/api/v1/kernels", admin, None);
    assert_eq!(kernels["kernels"].as_array().unwrap().len(), 0);
    let objects = std::fs::read_dir(s.data.join("objects/sha256"))
        .unwrap()
        .count();

    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/bundles",
        admin,
        raw(bundle_bytes(1, RELEASE, true)),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["target"], format!("bundles/{BUILD_ID}/1.pbb"));
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/bundles",
        admin,
        raw(bundle_bytes(1, RELEASE, true)),
    );
    assert_eq!(status, 409, "{v}");
    let (_, kernels) = call(&s, "GET", "/api/v1/kernels", admin, None);
    assert_eq!(
        kernels["kernels"][0]["levels"][0]["fixes"][0],
        "CVE-2024-1086"
    );
    assert!(
        std::fs::read_dir(s.data.join("objects/sha256"))
            .unwrap()
            .count()
            > objects
    );

    // The level is a signed target carrying its manifest.
    let (_, ts) = call(&s, "GET", "/tuf/metadata/timestamp.json", None, None);
    let sv = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let (_, snap) = call(
        &s,
        "GET",
        &format!("/tuf/metadata/{sv}.snapshot.json"),
        None,
        None,
    );
    let tv = snap["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .unwrap();
    let (_, targets) = call(
        &s,
        "GET",
        &format!("/tuf/metadata/{tv}.targets.json"),
        None,
        None,
    );
    let target = &targets["signed"]["targets"][format!("bundles/{BUILD_ID}/1.pbb")];
    assert_eq!(target["custom"]["manifest"]["level"], 1);
    let sha = target["hashes"]["sha256"].as_str().unwrap();
    let (status, _) = call(
        &s,
        "GET",
        &format!("/tuf/targets/{sha}.bundles/{BUILD_ID}/1.pbb"),
        None,
        None,
    );
    assert_eq!(status, 200);
}

#[test]
fn channels_promote_pin_rollback_and_refuse_bad_requests() {
    let s = start(|t| t.to_owned());
    let admin = Some(s.admin.as_str());
    for level in [1, 2] {
        let (status, v) = call(
            &s,
            "POST",
            "/api/v1/bundles",
            admin,
            raw(bundle_bytes(level, RELEASE, true)),
        );
        assert_eq!(status, 201, "{v}");
    }
    let j = |v: Value| Some(Body::Json(v));
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/channels",
        admin,
        j(json!({"name": "Bad Name"})),
    );
    assert_eq!(status, 400);
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/channels",
        admin,
        j(json!({"name": "staging"})),
    );
    assert_eq!(status, 201);
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/channels",
        admin,
        j(json!({"name": "staging"})),
    );
    assert_eq!(status, 409);
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/channels",
        admin,
        Some(Body::Raw(b"{not json".to_vec(), "application/json")),
    );
    assert_eq!(status, 400);
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/channels",
        admin,
        j(json!({"name": "x", "extra": 1})),
    );
    assert_eq!(status, 400);

    let promote = "/api/v1/channels/staging/promote";
    let (status, v) = call(
        &s,
        "POST",
        promote,
        admin,
        j(json!({"build_id": BUILD_ID, "level": 3})),
    );
    assert_eq!(status, 404, "{v}");
    let (status, _) = call(
        &s,
        "POST",
        promote,
        admin,
        j(json!({"build_id": "xyz", "level": 1})),
    );
    assert_eq!(status, 400);
    let (status, _) = call(
        &s,
        "POST",
        promote,
        admin,
        j(json!({"build_id": BUILD_ID, "level": 0})),
    );
    assert_eq!(status, 400);
    let (status, _) = call(
        &s,
        "POST",
        promote,
        admin,
        j(json!({"build_id": BUILD_ID, "level": -1})),
    );
    assert_eq!(status, 400);
    let (status, _) = call(
        &s,
        "POST",
        promote,
        admin,
        j(
            json!({"build_id": BUILD_ID, "level": 1, "waves": [{"after_secs": 0, "percent": 50}, {"after_secs": 10, "percent": 20}]}),
        ),
    );
    assert_eq!(status, 400);
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/channels/nope/promote",
        admin,
        j(json!({"build_id": BUILD_ID, "level": 1})),
    );
    assert_eq!(status, 404);

    let (status, doc) = call(
        &s,
        "POST",
        promote,
        admin,
        j(json!({"build_id": BUILD_ID, "level": 1})),
    );
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["kernels"][BUILD_ID]["level"], 1);
    let (status, doc) = call(
        &s,
        "POST",
        promote,
        admin,
        j(
            json!({"build_id": BUILD_ID, "level": 2, "deploy_after_secs": 60, "waves": [{"after_secs": 0, "percent": 10}, {"after_secs": 3600, "percent": 100}]}),
        ),
    );
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["kernels"][BUILD_ID]["previous"], 1);
    assert_eq!(
        doc["kernels"][BUILD_ID]["waves"].as_array().unwrap().len(),
        2
    );
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/channels/staging/rollback",
        admin,
        j(json!({"build_id": BUILD_ID, "level": 2})),
    );
    assert_eq!(status, 409, "{v}");
    let (status, doc) = call(
        &s,
        "POST",
        "/api/v1/channels/staging/rollback",
        admin,
        j(json!({"build_id": BUILD_ID, "level": 1})),
    );
    assert_eq!(status, 200);
    assert_eq!(doc["kernels"][BUILD_ID]["level"], 1);
    assert_eq!(doc["kernels"][BUILD_ID]["previous"], Value::Null);
    let (status, doc) = call(
        &s,
        "POST",
        "/api/v1/channels/staging/pin",
        admin,
        j(json!({"build_id": BUILD_ID})),
    );
    assert_eq!(status, 200);
    assert_eq!(doc["kernels"][BUILD_ID]["pinned"], true);
    let (status, v) = call(
        &s,
        "POST",
        promote,
        admin,
        j(json!({"build_id": BUILD_ID, "level": 2})),
    );
    assert_eq!(status, 409);
    assert!(error_of(&v).contains("pinned"), "{v}");
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/channels/staging/unpin",
        admin,
        j(json!({"build_id": BUILD_ID})),
    );
    assert_eq!(status, 200);
    let (status, _) = call(
        &s,
        "POST",
        promote,
        admin,
        j(json!({"build_id": BUILD_ID, "level": 2})),
    );
    assert_eq!(status, 200);
    let (_, doc) = call(&s, "GET", "/api/v1/channels/staging", admin, None);
    assert!(doc["serial"].as_u64().unwrap() >= 6);

    let (_, audit) = call(&s, "GET", "/api/v1/audit", admin, None);
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "init",
        "publish",
        "channel-create",
        "promote",
        "rollback",
        "pin",
        "unpin",
    ] {
        assert!(
            actions.contains(&action),
            "{action} not audited: {actions:?}"
        );
    }
    assert!(audit["audit"][0]["targets_version"].as_u64().is_some());
}

#[test]
fn hosts_register_check_in_and_are_listed() {
    let s = start(|t| t.to_owned());
    let admin = Some(s.admin.as_str());
    let j = |v: Value| Some(Body::Json(v));
    let register = |key: &str, build_id: &str, hostname: &str| {
        call(
            &s,
            "POST",
            "/api/v1/register",
            None,
            j(json!({
            "key": key, "hostname": hostname, "kernel_release": RELEASE,
            "build_id": build_id, "agent_version": "0.1.0"})),
        )
    };
    assert_eq!(register("pbreg_nope", BUILD_ID, "a").0, 401);
    assert_eq!(register(&s.registration_key, "not-hex", "a").0, 400);
    assert_eq!(register(&s.registration_key, BUILD_ID, "").0, 400);
    assert_eq!(register(&s.registration_key, BUILD_ID, "bad\nname").0, 400);
    let (status, reply) = register(&s.registration_key, BUILD_ID, "web-1");
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["channel"], "production");
    assert_eq!(reply["root"]["signed"]["_type"], "root");
    assert_eq!(reply["seed"].as_str().unwrap().len(), 32);
    let token = reply["host_token"].as_str().unwrap().to_owned();

    // A key for another channel places the host there.
    let (_, _) = call(
        &s,
        "POST",
        "/api/v1/channels",
        admin,
        j(json!({"name": "canary"})),
    );
    let (status, key) = call(
        &s,
        "POST",
        "/api/v1/registration-keys",
        admin,
        j(json!({"channel": "canary"})),
    );
    assert_eq!(status, 201);
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/registration-keys",
        admin,
        j(json!({"channel": "missing"})),
    );
    assert_eq!(status, 404);
    let (_, reply2) = register(key["key"].as_str().unwrap(), BUILD_ID, "web-2");
    assert_eq!(reply2["channel"], "canary");

    let checkin = |body: Value| call(&s, "POST", "/api/v1/checkin", Some(&token), j(body));
    let good = json!({"kernel_release": RELEASE, "build_id": BUILD_ID, "active_level": 1,
        "state": "patched", "last_error": null, "agent_version": "0.1.0"});
    let (status, v) = checkin(good.clone());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["channel"], "production");
    let mut bad_state = good.clone();
    bad_state["state"] = json!("hacked");
    assert_eq!(checkin(bad_state).0, 400);
    let mut bad_level = good.clone();
    bad_level["active_level"] = json!(0);
    assert_eq!(checkin(bad_level).0, 400);
    let mut long_error = good.clone();
    long_error["last_error"] = json!("x".repeat(5000));
    assert_eq!(checkin(long_error).0, 400);
    assert_eq!(
        call(&s, "POST", "/api/v1/checkin", Some("pbhost_nope"), j(good)).0,
        401
    );

    let (_, hosts) = call(&s, "GET", "/api/v1/hosts", admin, None);
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 2);
    let (_, hosts) = call(
        &s,
        "GET",
        "/api/v1/hosts?channel=production&state=patched",
        admin,
        None,
    );
    let list = hosts["hosts"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["hostname"], "web-1");
    assert_eq!(list[0]["active_level"], 1);
    assert!(
        list[0].get("token_hash").is_none(),
        "token hashes must not be listed"
    );
    assert_eq!(
        call(&s, "GET", "/api/v1/hosts?colour=red", admin, None).0,
        400
    );
    // An unknown state is refused with the states there are, not answered with no hosts.
    let (status, e) = call(&s, "GET", "/api/v1/hosts?state=hacked", admin, None);
    assert_eq!(status, 400, "{e}");
    let message = e["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("hacked") && message.contains("interrupted"),
        "{message:?} names the value and the states allowed"
    );
    assert_eq!(
        call(&s, "GET", "/api/v1/hosts?build_id=zz", admin, None).0,
        400
    );
}

#[test]
fn init_refuses_an_existing_data_dir_and_serve_a_missing_one() {
    let s = start(|t| t.to_owned());
    let again = Command::new(bin())
        .args(["init", "--data"])
        .arg(&s.data)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already"),
        "{again:?}"
    );
    let missing = Command::new(bin())
        .args(["serve", "--data", "/nonexistent/patchbay"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("patchbay-server init"),
        "{:?} does not contain {:?}",
        String::from_utf8_lossy(&missing.stderr),
        "patchbay-server init"
    );
}

#[test]
fn offline_targets_key_signs_changes_on_another_machine() {
    let s = start(|t| t.to_owned());
    let offline = s._dir.path().join("offline");
    std::fs::create_dir_all(&offline).unwrap();
    let key = offline.join("targets.pk8");
    std::fs::rename(s.data.join("keys/targets.pk8"), &key).unwrap();
    let before = served_targets_version(&s);

    // Changes are recorded but not served until signed.
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/bundles",
        Some(&s.admin),
        raw(bundle_bytes(1, RELEASE, true)),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(served_targets_version(&s), before);
    let (_, audit) = call(&s, "GET", "/api/v1/audit", Some(&s.admin), None);
    assert!(
        audit["audit"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("awaiting offline signature"),
        "{:?} does not contain {:?}",
        audit["audit"][0]["detail"].as_str().unwrap(),
        "awaiting offline signature"
    );

    let unsigned = s._dir.path().join("next.json");
    let signed = s._dir.path().join("signed.json");
    let out = cli(
        &["export-unsigned", "-o", unsigned.to_str().unwrap()],
        &s.data,
    );
    assert!(out.status.success(), "{out:?}");
    let root = s.data.join("tuf/metadata/root.json");
    let previous = s.data.join(format!("tuf/metadata/{before}.targets.json"));

    // Signed with the wrong key: refused, nothing changes.
    let wrong = Command::new(bin())
        .args(["sign-targets", "--key"])
        .arg(s.data.join("keys/snapshot.pk8"))
        .arg("--root")
        .arg(&root)
        .arg("--previous")
        .arg(&previous)
        .arg("--yes")
        .arg(&unsigned)
        .arg("-o")
        .arg(&signed)
        .output()
        .unwrap();
    assert!(
        !wrong.status.success(),
        "a snapshot key must not sign targets: {wrong:?}"
    );

    let sign = Command::new(bin())
        .args(["sign-targets", "--key"])
        .arg(&key)
        .arg("--root")
        .arg(&root)
        .arg("--previous")
        .arg(&previous)
        .arg("--yes")
        .arg(&unsigned)
        .arg("-o")
        .arg(&signed)
        .output()
        .unwrap();
    assert!(sign.status.success(), "{sign:?}");
    let out = cli(&["import-signed", signed.to_str().unwrap()], &s.data);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(served_targets_version(&s), before + 1);
    let tv = served_targets_version(&s);
    let (_, targets) = call(
        &s,
        "GET",
        &format!("/tuf/metadata/{tv}.targets.json"),
        None,
        None,
    );
    assert!(targets["signed"]["targets"][format!("bundles/{BUILD_ID}/1.pbb")].is_object());

    // A signed role that no longer matches the server's state is refused.
    let again = cli(&["import-signed", signed.to_str().unwrap()], &s.data);
    assert!(!again.status.success());
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/channels",
        Some(&s.admin),
        Some(Body::Json(json!({"name": "staging"}))),
    );
    assert_eq!(status, 201);
    let stale = cli(&["import-signed", signed.to_str().unwrap()], &s.data);
    assert!(!stale.status.success());
    assert!(
        String::from_utf8_lossy(&stale.stderr).contains("changed since export-unsigned"),
        "{stale:?}"
    );
}

/// Every `/api/v1` route that takes an API token, called by each role, by a host token, by a
/// registration key and anonymously. A role below the route's gets 403 naming the role it
/// needs; a host token, a registration key and no token get 401; a role at or above gets one
/// of the answers the row lists (the admin rows that revoke act on real ids, so the admin's
/// call succeeds). Check-in takes a host token only: API tokens are 401 there.
#[test]
fn authorization_matrix_each_role_and_endpoint() {
    let s = start(|t| t.to_owned());
    let viewer = token(&s, "viewer");
    let operator = token(&s, "operator");
    // What the admin rows revoke: a token, the registration key `init` made, a host.
    let made = cli(
        &["token", "create", "--name", "doomed", "--role", "viewer"],
        &s.data,
    );
    assert!(made.status.success(), "{made:?}");
    let (_, tokens) = call(&s, "GET", "/api/v1/tokens", Some(&s.admin), None);
    let doomed_token = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "doomed");
    let doomed_token = doomed_token.unwrap()["id"].as_str().unwrap().to_owned();
    let (status, host) = register_host(&s, &s.registration_key, "web-1");
    assert_eq!(status, 201, "{host}");
    let host_token = host["host_token"].as_str().unwrap().to_owned();
    let (status, doomed_host) = register_host(&s, &s.registration_key, "web-2");
    assert_eq!(status, 201, "{doomed_host}");
    let doomed_host = doomed_host["host_id"].as_str().unwrap().to_owned();
    let (_, keys) = call(&s, "GET", "/api/v1/registration-keys", Some(&s.admin), None);
    let keys = keys["registration_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let doomed_key = keys[0]["id"].as_str().unwrap().to_owned();

    let roles = [
        ("viewer", viewer.as_str()),
        ("operator", operator.as_str()),
        ("admin", s.admin.as_str()),
    ];
    // Bearers that are no API token at all.
    let strangers = [
        ("host token", host_token.as_str()),
        ("registration key", s.registration_key.as_str()),
    ];
    let promote = json!({"build_id": BUILD_ID, "level": 1});
    let report = format!("/api/v1/kernels/{BUILD_ID}/levels/1/report");
    let revoke_token = format!("/api/v1/tokens/{doomed_token}");
    let revoke_key = format!("/api/v1/registration-keys/{doomed_key}");
    let revoke_host = format!("/api/v1/hosts/{doomed_host}");
    // (method, path, body, role needed, answers a permitted role may get)
    type Row<'a> = (&'a str, &'a str, Option<Value>, &'a str, &'a [u16]);
    let endpoints: Vec<Row<'_>> = vec![
        ("GET", "/api/v1/kernels", None, "viewer", &[200]),
        ("GET", "/api/v1/channels", None, "viewer", &[200]),
        ("GET", "/api/v1/channels/production", None, "viewer", &[200]),
        ("GET", "/api/v1/hosts", None, "viewer", &[200]),
        ("GET", "/api/v1/audit", None, "viewer", &[200]),
        ("GET", "/api/v1/hosts/none/exposure", None, "viewer", &[404]),
        ("GET", "/api/v1/hosts/none/vex", None, "viewer", &[404]),
        ("GET", "/api/v1/cve/exposure/6.1.1", None, "viewer", &[200]),
        ("GET", "/api/v1/reports/compliance", None, "viewer", &[200]),
        // The operator publishes level 1; the admin's same upload is a conflict.
        ("POST", "/api/v1/bundles", None, "operator", &[201, 409]),
        ("GET", &report, None, "viewer", &[404]),
        // An empty report is judged (400) only past the role check.
        ("POST", &report, Some(json!({})), "operator", &[400]),
        (
            "POST",
            "/api/v1/channels",
            Some(json!({"name": "x"})),
            "operator",
            &[201, 409],
        ),
        (
            "POST",
            "/api/v1/channels/production/promote",
            Some(promote.clone()),
            "operator",
            &[200],
        ),
        (
            "POST",
            "/api/v1/channels/production/pin",
            Some(promote.clone()),
            "operator",
            &[200],
        ),
        (
            "POST",
            "/api/v1/channels/production/unpin",
            Some(json!({"build_id": BUILD_ID})),
            "operator",
            &[200],
        ),
        // Level 1 is the lowest: the rollback is judged (409) only past the role check.
        (
            "POST",
            "/api/v1/channels/production/rollback",
            Some(promote),
            "operator",
            &[409],
        ),
        (
            "POST",
            "/api/v1/registration-keys",
            Some(json!({"channel": "production"})),
            "admin",
            &[201],
        ),
        ("GET", "/api/v1/registration-keys", None, "admin", &[200]),
        ("DELETE", &revoke_key, None, "admin", &[200]),
        ("GET", "/api/v1/tokens", None, "admin", &[200]),
        ("DELETE", &revoke_token, None, "admin", &[200]),
        ("DELETE", &revoke_host, None, "admin", &[200]),
    ];
    let rank = |r: &str| {
        ["viewer", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    let body_of = |path: &str, body: &Option<Value>| match (path.ends_with("/bundles"), body) {
        (true, _) => raw(bundle_bytes(1, RELEASE, true)),
        (false, Some(v)) => Some(Body::Json(v.clone())),
        (false, None) => None,
    };
    for (method, path, body, needed, permitted) in &endpoints {
        for (role, tok) in &roles {
            let (status, v) = call(&s, method, path, Some(tok), body_of(path, body));
            if rank(role) >= rank(needed) {
                assert!(
                    permitted.contains(&status),
                    "{role} {method} {path} -> {status}, not one of {permitted:?}: {v}"
                );
            } else {
                assert_eq!(status, 403, "{role} {method} {path} must be forbidden: {v}");
                assert!(error_of(&v).contains(needed), "{v}");
            }
        }
        for (stranger, tok) in &strangers {
            let (status, v) = call(&s, method, path, Some(tok), body_of(path, body));
            assert_eq!(status, 401, "a {stranger} on {method} {path}: {v}");
        }
        let (status, _) = call(&s, method, path, None, None);
        assert_eq!(status, 401, "anonymous {method} {path}");
    }
    // The admin's revocation took the host away; the other one stays.
    assert_eq!(
        call(&s, "GET", "/api/v1/hosts", Some(&s.admin), None).1["hosts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Check-in is for hosts, not roles: the same well-formed check-in that the host's own
    // token gets answered is refused (401, as documented) with any API token or a key.
    let checkin = json!({"kernel_release": RELEASE, "build_id": BUILD_ID, "active_level": null,
        "state": "unpatched", "last_error": null, "agent_version": "0.1.0"});
    let post_checkin = |tok: &str| {
        call(
            &s,
            "POST",
            "/api/v1/checkin",
            Some(tok),
            Some(Body::Json(checkin.clone())),
        )
    };
    let (status, v) = post_checkin(&host_token);
    assert_eq!(status, 200, "the host's own check-in: {v}");
    for (who, tok) in roles.iter().chain(&strangers[1..]) {
        let (status, v) = post_checkin(tok);
        assert_eq!(status, 401, "a check-in with the {who} token: {v}");
    }
}

#[test]
fn dashboard_login_roles_and_csrf() {
    let s = start(|t| t.to_owned());
    let add_user = |name: &str, role: &str| {
        let out = Command::new(bin())
            .args(["user", "add", "--name", name, "--role", role, "--data"])
            .arg(&s.data)
            .env("PATCHBAY_PASSWORD", "viewer-password")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    add_user("vera", "viewer");
    let published = call(
        &s,
        "POST",
        "/api/v1/bundles",
        Some(&s.admin),
        raw(bundle_bytes(1, RELEASE, true)),
    );
    assert_eq!(published.0, 201);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = s.no_redirect_client();
        let url = |p: &str| format!("{}{p}", s.url);
        // Not logged in: redirected to the login page.
        let r = client.get(url("/ui/hosts")).send().await.unwrap();
        assert_eq!(r.status(), 303);
        let r = ui_login(&client, &s.url, "vera", "wrong-password").await;
        assert_eq!(r.status(), 401);
        let r = ui_login(&client, &s.url, "vera", "viewer-password").await;
        assert_eq!(r.status(), 303);
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let session = cookie.split(';').next().unwrap().to_owned();
        let page = client
            .get(url("/ui/channels/production"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let text = page.text().await.unwrap();
        assert!(
            text.contains("operators change them"),
            "a viewer sees no change forms"
        );
        // A viewer cannot change a channel, even with a hand-made form.
        let r = client
            .post(url("/ui/channels/production/apply"))
            .header("cookie", &session)
            .form(&[
                ("action", "promote"),
                ("build_id", BUILD_ID),
                ("level", "1"),
                ("csrf", "x"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);

        // An operator promotes with a staged rollout through the confirmation page.
        let out = Command::new(bin())
            .args(["user", "add", "--name", "olga", "--role", "operator", "--data"])
            .arg(&s.data)
            .env("PATCHBAY_PASSWORD", "operator-password")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let r = ui_login(&client, &s.url, "olga", "operator-password").await;
        let session = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let confirm = client
            .get(url(&format!("/ui/channels/production/confirm?action=promote&build_id={BUILD_ID}&level=1&deploy_after_hours=0&first_wave_percent=10&full_after_hours=48")))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(confirm.contains("10 % of the hosts first and all of them 48 h later"), "{confirm}");
        let csrf = confirm.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let form = [("action", "promote"), ("build_id", BUILD_ID), ("level", "1"), ("deploy_after_hours", "0"), ("first_wave_percent", "10"), ("full_after_hours", "48")];
        // Without the session's CSRF token: refused.
        let r = client.post(url("/ui/channels/production/apply")).header("cookie", &session).form(&form).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let mut with_csrf = form.to_vec();
        with_csrf.push(("csrf", &csrf));
        let r = client.post(url("/ui/channels/production/apply")).header("cookie", &session).form(&with_csrf).send().await.unwrap();
        assert_eq!(r.status(), 303);
    });
    let (_, doc) = call(
        &s,
        "GET",
        "/api/v1/channels/production",
        Some(&s.admin),
        None,
    );
    let waves = doc["kernels"][BUILD_ID]["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 2, "{doc}");
    assert_eq!(waves[0]["percent"], 10);
    let (_, audit) = call(&s, "GET", "/api/v1/audit", Some(&s.admin), None);
    assert_eq!(audit["audit"][0]["actor"], "user:olga");
    assert_eq!(audit["audit"][0]["action"], "promote");
}

#[test]
fn exposure_reports_vex_and_metrics_for_a_patched_host() {
    let s = start(|t| t.to_owned());
    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../exposure/data");
    let out = Command::new(bin())
        .args(["cve", "sync", "--snapshot"])
        .arg(&snapshot)
        .arg("--data")
        .arg(&s.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The running server picks the new database up within a minute; restart-free check via CLI.
    let out = cli(
        &["cve", "exposure", "6.1.50", "--json", "--at", "2025-01-15"],
        &s.data,
    );
    assert!(out.status.success(), "{out:?}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["version", "cves", "high", "high_overdue", "kev"] {
        assert!(
            summary[key].is_number() || summary[key].is_string(),
            "{key}: {summary}"
        );
    }
    assert!(summary["cves"].as_u64().unwrap() > 1000);

    // A fresh server process sees the synced database at once.
    let s2 = attach(&s.data, &s.admin, &s.registration_key, &[]);
    let admin = Some(s2.admin.as_str());
    let j = |v: Value| Some(Body::Json(v));
    let (status, v) = call(
        &s2,
        "POST",
        "/api/v1/bundles",
        admin,
        raw(bundle_bytes(1, RELEASE, true)),
    );
    assert_eq!(status, 201, "{v}");
    let (_, reg) = call(
        &s2,
        "POST",
        "/api/v1/register",
        None,
        j(json!({
        "key": s2.registration_key, "hostname": "db-1", "kernel_release": RELEASE,
        "kernel_version": "6.1.50", "build_id": BUILD_ID, "agent_version": "0.1.0"})),
    );
    let token = reg["host_token"].as_str().unwrap().to_owned();
    let id = reg["host_id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &s2,
        "POST",
        "/api/v1/checkin",
        Some(&token),
        j(json!({
        "kernel_release": RELEASE, "kernel_version": "6.1.50", "build_id": BUILD_ID,
        "active_level": 1, "state": "patched", "last_error": null, "agent_version": "0.1.0"})),
    );
    assert_eq!(status, 200);
    let (status, _) = call(
        &s2,
        "POST",
        "/api/v1/checkin",
        Some(&token),
        j(json!({
        "kernel_release": RELEASE, "kernel_version": "six", "build_id": BUILD_ID,
        "active_level": 1, "state": "patched", "last_error": null, "agent_version": "0.1.0"})),
    );
    assert_eq!(status, 400, "a bad kernel_version is refused");

    let (status, e) = call(
        &s2,
        "GET",
        &format!("/api/v1/hosts/{id}/exposure"),
        admin,
        None,
    );
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["upstream_version"], "6.1.50");
    let (base, live) = (
        e["base"]["cves"].as_u64().unwrap(),
        e["live"]["cves"].as_u64().unwrap(),
    );
    assert_eq!(
        live,
        base - 1,
        "level 1 fixes CVE-2024-1086, which 6.1.50 has"
    );
    assert_eq!(e["live"]["fixed_by_patch"], 1);
    assert!(e["base"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == "CVE-2024-1086"));
    assert!(!e["live"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == "CVE-2024-1086"));
    assert_eq!(
        call(&s2, "GET", "/api/v1/hosts/nope/exposure", admin, None).0,
        404
    );

    let (status, vex) = call(&s2, "GET", &format!("/api/v1/hosts/{id}/vex"), admin, None);
    assert_eq!(status, 200);
    assert_eq!(vex["document"]["category"], "csaf_vex");
    let fixed: Vec<&Value> = vex["vulnerabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["product_status"]["fixed"].is_array())
        .collect();
    assert_eq!(fixed.len(), 1);
    assert_eq!(fixed[0]["cve"], "CVE-2024-1086");
    assert_eq!(
        vex["vulnerabilities"].as_array().unwrap().len() as u64,
        live + 1
    );

    let (status, report) = call(&s2, "GET", "/api/v1/reports/compliance", admin, None);
    assert_eq!(status, 200);
    assert_eq!(report["hosts"][0]["hostname"], "db-1");
    assert_eq!(report["hosts"][0]["window_breached"], true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let csv = rt.block_on(async {
        s2.client()
            .get(format!("{}/api/v1/reports/compliance?format=csv", s2.url))
            .bearer_auth(&s2.admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(csv.starts_with("host_id,hostname,"), "{csv}");
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert_eq!(
        call(
            &s2,
            "GET",
            "/api/v1/reports/compliance?format=xml",
            admin,
            None
        )
        .0,
        400
    );
    let (status, e) = call(
        &s2,
        "GET",
        "/api/v1/cve/exposure/6.1.192?at=2026-11-22",
        admin,
        None,
    );
    assert_eq!(status, 200);
    assert!(e["cves"].as_u64().unwrap() > 0);
    assert_eq!(
        call(&s2, "GET", "/api/v1/cve/exposure/banana", admin, None).0,
        400
    );
    assert_eq!(
        call(
            &s2,
            "GET",
            "/api/v1/cve/exposure/6.1.1?at=yesterday",
            admin,
            None
        )
        .0,
        400
    );

    let metrics = rt.block_on(async {
        s2.client()
            .get(format!("{}/metrics", s2.url))
            .bearer_auth(&s2.admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        metrics.contains("patchbay_hosts{state=\"patched\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("patchbay_hosts_window_breached 1"),
        "{metrics}"
    );
    assert!(metrics.contains("patchbay_checkins_total 1"), "{metrics}");
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("patchbay_exposed_cves{severity=\"high\"}")));
}

#[test]
fn every_operation_the_openapi_document_lists_is_served() {
    let s = start(|t| t.to_owned());
    let (_, document) = call(&s, "GET", "/api/v1/openapi.json", None, None);
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        // Path parameters get a value no route rejects by its shape alone.
        let concrete: String = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let (status, v) = call_any(
                &s,
                &method,
                &format!("/api/v1{concrete}"),
                Some(&s.admin),
                None,
            );
            assert!(
                status != 405 && !error_of(&v).contains("no such endpoint"),
                "{method} {path} is in the OpenAPI document but not served: {status} {v}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 24, "{checked} operations");
}
