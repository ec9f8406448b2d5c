//! The database and the signed metadata never disagree, and nothing signed from elsewhere
//! (an imported archive, an offline-signed targets role) is served unless it is exactly what
//! it claims: each test runs the real server process and fails on the weakness it names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

use patchbay_core::{BuildId, HostSeed, KernelRollout, PatchLevel};
use serde_json::{json, Value};

mod common;
use common::*;

fn publish(s: &Server, level: u32) -> (u16, Value) {
    call(
        s,
        "POST",
        "/api/v1/bundles",
        Some(&s.admin),
        raw(bundle_bytes(level, RELEASE, true)),
    )
}

fn promote(s: &Server, body: Value) -> Value {
    let (status, doc) = call(
        s,
        "POST",
        "/api/v1/channels/production/promote",
        Some(&s.admin),
        Some(Body::Json(body)),
    );
    assert_eq!(status, 200, "{doc}");
    doc
}

fn served_root(s: &Server) -> Value {
    let (status, root) = call(s, "GET", "/tuf/metadata/root.json", None, None);
    assert_eq!(status, 200);
    root
}

#[test]
fn import_serves_only_the_newest_root_its_chain_verifies() {
    let outer = start(|t| t.to_owned());
    assert_eq!(publish(&outer, 1).0, 201);
    let out = cli(&["root", "resign"], &outer.data);
    assert!(out.status.success(), "{out:?}");
    let work = outer._dir.path();
    let archive = work.join("export.tar.gz");
    let out = cli(&["export", "-o", archive.to_str().unwrap()], &outer.data);
    assert!(out.status.success(), "{out:?}");

    // The same archive with another repository's root as its unversioned root.json.
    let unpacked = work.join("unpacked");
    patchbay_updates::archive::unpack(&archive, &unpacked).unwrap();
    let stranger = work.join("stranger");
    let init = Command::new(bin())
        .args(["init", "--data"])
        .arg(&stranger)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let forged_root = std::fs::read(stranger.join("tuf/metadata/1.root.json")).unwrap();
    let metadata: Vec<(String, Vec<u8>)> = files_in(&unpacked.join("metadata"))
        .into_iter()
        .map(|(name, bytes)| {
            if name == "root.json" {
                (name, forged_root.clone())
            } else {
                (name, bytes)
            }
        })
        .collect();
    let forged = work.join("forged.tar.gz");
    patchbay_updates::archive::write(&forged, &metadata, &files_in(&unpacked.join("targets")))
        .unwrap();

    let inner = start(|t| t.to_owned());
    // What an import killed earlier left unpacked goes at the next import.
    let stale = inner.data.join("tuf/.import-999999/metadata");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("root.json"), b"left by a killed import").unwrap();
    let before = served_root(&inner);
    let out = cli(&["import", forged.to_str().unwrap()], &inner.data);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a forged root.json was imported");
    assert!(
        stderr.contains("root.json") && stderr.contains("2.root.json"),
        "{stderr}"
    );
    assert_eq!(served_root(&inner), before, "nothing of it is served");
    assert!(!inner.data.join("tuf/.import-999999").exists());
    let leftovers: Vec<_> = std::fs::read_dir(inner.data.join("tuf"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".import-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let out = cli(&["import", archive.to_str().unwrap()], &inner.data);
    assert!(out.status.success(), "{out:?}");
    let newest: Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("metadata/2.root.json")).unwrap())
            .unwrap();
    assert_eq!(served_root(&inner), newest);
    fresh_client(&inner, &[]).unwrap();
}

#[test]
fn import_signed_refuses_a_role_that_differs_in_hashes_length_or_custom_data() {
    let s = start(|t| t.to_owned());
    let offline = s._dir.path().join("targets-offline.pk8");
    std::fs::rename(s.data.join("keys/targets.pk8"), &offline).unwrap();
    assert_eq!(publish(&s, 1).0, 201);
    let before = served_targets_version(&s);
    let unsigned = s._dir.path().join("next.json");
    let out = cli(
        &["export-unsigned", "-o", unsigned.to_str().unwrap()],
        &s.data,
    );
    assert!(out.status.success(), "{out:?}");
    let role: Value = serde_json::from_slice(&std::fs::read(&unsigned).unwrap()).unwrap();
    let bundle = format!("bundles/{BUILD_ID}/1.pbb");
    let sign = |role: &Value, name: &str| {
        let unsigned = s._dir.path().join(format!("{name}.unsigned.json"));
        let signed = s._dir.path().join(format!("{name}.signed.json"));
        std::fs::write(&unsigned, serde_json::to_vec(role).unwrap()).unwrap();
        let out = Command::new(bin())
            .args(["sign-targets", "--key"])
            .arg(&offline)
            .arg("--root")
            .arg(s.data.join("tuf/metadata/root.json"))
            .arg("--previous")
            .arg(s.data.join(format!("tuf/metadata/{before}.targets.json")))
            .arg("--yes")
            .arg(&unsigned)
            .arg("-o")
            .arg(&signed)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        signed
    };
    let mut other_hash = role.clone();
    other_hash["targets"][&bundle]["hashes"]["sha256"] = json!("ab".repeat(32));
    let mut other_length = role.clone();
    let length = role["targets"][&bundle]["length"].as_u64().unwrap();
    other_length["targets"][&bundle]["length"] = json!(length + 1);
    let mut other_custom = role.clone();
    other_custom["targets"][&bundle]["custom"]["manifest"]["fixes"] = json!(["CVE-2099-0001"]);
    for (name, tampered, says) in [
        ("hash", other_hash, "sha256"),
        ("length", other_length, "length"),
        ("custom", other_custom, "custom data"),
    ] {
        let signed = sign(&tampered, name);
        let out = cli(&["import-signed", signed.to_str().unwrap()], &s.data);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a role with another {name} was installed"
        );
        assert!(
            stderr.contains("changed since export-unsigned") && stderr.contains(says),
            "{name}: {stderr}"
        );
        assert_eq!(served_targets_version(&s), before, "{name}");
    }
    let signed = sign(&role, "untouched");
    let out = cli(&["import-signed", signed.to_str().unwrap()], &s.data);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(served_targets_version(&s), before + 1);
}

fn rollout(doc: &Value) -> KernelRollout {
    serde_json::from_value(doc["kernels"][BUILD_ID].clone()).unwrap()
}

fn seeds() -> Vec<HostSeed> {
    (0..200u32)
        .map(|i| {
            format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15_u128)
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn re_promoting_the_served_level_never_sends_a_host_down() {
    let s = start(|t| t.to_owned());
    for level in 1..=3 {
        assert_eq!(publish(&s, level).0, 201);
    }
    let build: BuildId = BUILD_ID.parse().unwrap();
    let two = PatchLevel::try_from(2).unwrap();
    promote(&s, json!({"build_id": BUILD_ID, "level": 1}));
    let served = rollout(&promote(&s, json!({"build_id": BUILD_ID, "level": 2})));
    // Each "now" is read after the promotes it looks at, never before the server's.
    let now = patchbay_core::clock::unix_seconds();
    assert!(seeds()
        .iter()
        .all(|seed| served.level_for(&build, seed, now) == Some(two)));

    // Level 2 again, to take effect in an hour: every host already on it stays.
    let again = rollout(&promote(
        &s,
        json!({"build_id": BUILD_ID, "level": 2, "deploy_after_secs": 3600}),
    ));
    for at in [now, now + 1800, now + 7200] {
        for seed in seeds() {
            assert_eq!(
                again.level_for(&build, &seed, at),
                Some(two),
                "host {seed:?} at +{}s",
                at - now
            );
        }
    }

    // Level 3 to half the hosts, then again with a slower schedule: the half keeps it.
    let half = rollout(&promote(
        &s,
        json!({"build_id": BUILD_ID, "level": 3,
               "waves": [{"after_secs": 0, "percent": 50}, {"after_secs": 86400, "percent": 100}]}),
    ));
    let slower = rollout(&promote(
        &s,
        json!({"build_id": BUILD_ID, "level": 3, "deploy_after_secs": 600,
               "waves": [{"after_secs": 3600, "percent": 10}, {"after_secs": 7200, "percent": 100}]}),
    ));
    let now = patchbay_core::clock::unix_seconds();
    let on_three = seeds()
        .into_iter()
        .filter(|seed| half.level_for(&build, seed, now).map(PatchLevel::get) == Some(3))
        .collect::<Vec<_>>();
    assert!(!on_three.is_empty());
    for at in [now, now + 3000, now + 5000] {
        for seed in &on_three {
            assert_eq!(
                slower.level_for(&build, seed, at).map(PatchLevel::get),
                Some(3),
                "host {seed:?} at +{}s",
                at - now
            );
        }
    }
    assert!(seeds().iter().all(|seed| slower
        .level_for(&build, seed, now + 10_000)
        .map(PatchLevel::get)
        == Some(3)));
}

fn audit_head(s: &Server) -> Value {
    let (_, audit) = call(s, "GET", "/api/v1/audit", Some(&s.admin), None);
    audit["audit"][0].clone()
}

#[test]
fn a_mutation_whose_signing_fails_leaves_no_trace() {
    let mut s = start(|t| t.to_owned());
    assert_eq!(publish(&s, 1).0, 201);
    let (_, production) = call(
        &s,
        "GET",
        "/api/v1/channels/production",
        Some(&s.admin),
        None,
    );
    let audit = audit_head(&s);
    let targets = served_targets_version(&s);
    // Without the snapshot key every signature of a change fails.
    let snapshot_key = s.data.join("keys/snapshot.pk8");
    let away = s._dir.path().join("snapshot.pk8");
    std::fs::rename(&snapshot_key, &away).unwrap();

    let admin = Some(s.admin.as_str());
    let (status, v) = call_any(
        &s,
        "POST",
        "/api/v1/channels",
        admin,
        Some(Body::Json(json!({"name": "staging"}))),
    );
    assert_eq!(status, 503, "{v}");
    let (status, v) = call_any(
        &s,
        "POST",
        "/api/v1/channels/production/promote",
        admin,
        Some(Body::Json(json!({"build_id": BUILD_ID, "level": 1}))),
    );
    assert_eq!(status, 503, "{v}");
    let (status, v) = call_any(
        &s,
        "POST",
        "/api/v1/bundles",
        admin,
        raw(bundle_bytes(2, RELEASE, true)),
    );
    assert_eq!(status, 503, "{v}");

    let (_, channels) = call(&s, "GET", "/api/v1/channels", admin, None);
    let names: Vec<&str> = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["production"], "the channel creation left a trace");
    let (_, now) = call(&s, "GET", "/api/v1/channels/production", admin, None);
    assert_eq!(now, production, "the first promote left a trace");
    let (_, kernels) = call(&s, "GET", "/api/v1/kernels", admin, None);
    assert_eq!(kernels["kernels"][0]["levels"].as_array().unwrap().len(), 1);
    assert_eq!(audit_head(&s), audit);
    assert_eq!(served_targets_version(&s), targets);

    // With the key back, a restart finds nothing to reconcile and the changes go through.
    std::fs::rename(&away, &snapshot_key).unwrap();
    s.restart_with_env(&[]);
    assert_eq!(served_targets_version(&s), targets);
    assert_eq!(audit_head(&s), audit);
    promote(&s, json!({"build_id": BUILD_ID, "level": 1}));
    fresh_client(&s, &[]).unwrap();
}

#[test]
fn serve_signs_at_start_what_a_crash_left_unsigned_and_a_publish_can_be_retried() {
    let mut s = start(|t| t.to_owned());
    let key = s.data.join("keys/targets.pk8");
    let away = s._dir.path().join("targets.pk8");
    // Without the targets key a change reaches the database and no signature: the state a
    // crash between the two leaves.
    std::fs::rename(&key, &away).unwrap();
    assert_eq!(publish(&s, 1).0, 201);
    let channel = call(
        &s,
        "POST",
        "/api/v1/channels",
        Some(&s.admin),
        Some(Body::Json(json!({"name": "staging"}))),
    );
    assert_eq!(channel.0, 201);
    let bundle = format!("bundles/{BUILD_ID}/1.pbb");
    assert!(served_targets(&s)[&bundle].is_null());

    std::fs::rename(&away, &key).unwrap();
    s.restart_with_env(&[]);
    let targets = served_targets(&s);
    assert!(targets[&bundle].is_object(), "{targets}");
    assert!(targets["channels/staging.json"].is_object(), "{targets}");
    assert_eq!(audit_head(&s)["action"], "reconcile");
    let view = fresh_client(&s, &["staging".parse().unwrap()]).unwrap();
    assert!(view.targets.iter().any(|(name, _, _)| *name == bundle));
    assert_eq!(view.channels[0].channel.as_str(), "staging");

    // A publish the database took but nobody signed is signed when it is sent again.
    std::fs::rename(&key, &away).unwrap();
    assert_eq!(publish(&s, 2).0, 201);
    std::fs::rename(&away, &key).unwrap();
    let level_two = format!("bundles/{BUILD_ID}/2.pbb");
    assert!(served_targets(&s)[&level_two].is_null());
    let (status, receipt) = publish(&s, 2);
    assert_eq!(status, 201, "{receipt}");
    assert_eq!(receipt["target"], level_two);
    assert!(served_targets(&s)[&level_two].is_object());
    let (status, v) = publish(&s, 2);
    assert_eq!(status, 409, "{v}");
    assert!(error_of(&v).contains("already published and signed"), "{v}");
    fresh_client(&s, &[]).unwrap();
}

#[test]
fn the_database_file_is_readable_by_the_server_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let s = start(|t| t.to_owned());
    assert_eq!(publish(&s, 1).0, 201);
    for name in ["patchbay.db", "patchbay.db-wal", "patchbay.db-shm"] {
        let path = s.data.join(name);
        if name == "patchbay.db" || path.exists() {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        }
    }
}
