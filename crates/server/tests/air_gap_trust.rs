//! The two offline crossings of trust, attacked with the real server binary: an archive
//! imported into an air-gapped mirror whose copy of the already-trusted root is forged, and an
//! offline `sign-targets` handed a targets role that adds and silently removes targets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_lc_rs::rand::SystemRandom;
use serde_json::Value;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleType, Root};

mod common;
use common::*;

fn publish(s: &Server, level: u32) {
    let (status, reply) = call(
        s,
        "POST",
        "/api/v1/bundles",
        Some(&s.admin),
        raw(bundle_bytes(level, RELEASE, true)),
    );
    assert_eq!(status, 201, "{reply}");
}

fn export(s: &Server, name: &str) -> PathBuf {
    let archive = s._dir.path().join(name);
    let out = cli(&["export", "-o", archive.to_str().unwrap()], &s.data);
    assert!(out.status.success(), "{out:?}");
    archive
}

/// A served metadata file as the mirror sends it, byte for byte.
fn served(s: &Server, file: &str) -> String {
    let (status, text) = get_text(s, &format!("/tuf/metadata/{file}"), "none");
    assert_eq!(status, 200, "{file}: {text}");
    text
}

/// `genuine` (a root.json) as an attacker rewrites it: the same role keys plus the attacker's
/// own root key, threshold 1, ten more years of life, signed with the attacker's key alone.
async fn forge_root(genuine: &[u8], attacker_key: &Path) -> Vec<u8> {
    let mut signed: Value = serde_json::from_slice(genuine).unwrap();
    let expires = signed["signed"]["expires"].as_str().unwrap().to_owned();
    let later = format!(
        "{}{}",
        expires[..4].parse::<u32>().unwrap() + 10,
        &expires[4..]
    );
    signed["signed"]["expires"] = Value::String(later);
    let mut root: Root = serde_json::from_value(signed["signed"].take()).unwrap();
    let source: Box<dyn KeySource> = Box::new(LocalKeySource {
        path: attacker_key.to_path_buf(),
    });
    let key = source.as_sign().await.unwrap().tuf_key();
    let id = key.key_id().unwrap();
    root.keys.insert(id.clone(), key);
    let role = root.roles.get_mut(&RoleType::Root).unwrap();
    role.keyids.push(id);
    role.threshold = 1.try_into().unwrap();
    let forged = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(root),
        &[source],
        &SystemRandom::new(),
    )
    .await
    .unwrap();
    forged.buffer().clone()
}

#[test]
fn an_archive_whose_copy_of_the_trusted_root_is_forged_is_refused() {
    let outer = start(|t| t.to_owned());
    publish(&outer, 1);
    let first = export(&outer, "first.tar.gz");
    let outer_root = outer.data.join("tuf/metadata/1.root.json");

    // The mirror pins the outer server's root, version 1.
    let inner = start(|t| t.to_owned());
    let out = cli(
        &[
            "import",
            first.to_str().unwrap(),
            "--root",
            outer_root.to_str().unwrap(),
        ],
        &inner.data,
    );
    assert!(out.status.success(), "{out:?}");
    let root_before = served(&inner, "root.json");
    assert_eq!(root_before.as_bytes(), std::fs::read(&outer_root).unwrap());

    // The attacker's archive: the genuine one with 1.root.json (and root.json) forged.
    let work = outer._dir.path();
    let unpacked = work.join("unpacked");
    patchbay_updates::archive::unpack(&first, &unpacked).unwrap();
    let stranger = work.join("stranger");
    let init = Command::new(bin())
        .args(["init", "--data"])
        .arg(&stranger)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let forged_root = rt.block_on(forge_root(
        &std::fs::read(&outer_root).unwrap(),
        &stranger.join("keys/root-1.pk8"),
    ));
    let metadata: Vec<(String, Vec<u8>)> = files_in(&unpacked.join("metadata"))
        .into_iter()
        .map(|(name, bytes)| match name.as_str() {
            "1.root.json" | "root.json" => (name, forged_root.clone()),
            _ => (name, bytes),
        })
        .collect();
    let forged = work.join("forged.tar.gz");
    patchbay_updates::archive::write(&forged, &metadata, &files_in(&unpacked.join("targets")))
        .unwrap();

    // Into the mirror that trusts root version 1, and into a new mirror given the genuine
    // root.json to trust: both refuse it, naming the file, and serve what they served.
    let fresh = start(|t| t.to_owned());
    let fresh_root_before = served(&fresh, "root.json");
    for (mirror, trusted) in [(&inner, None), (&fresh, Some(&outer_root))] {
        let mut args = vec!["import", forged.to_str().unwrap()];
        if let Some(root) = trusted {
            args.extend(["--root", root.to_str().unwrap()]);
        }
        let out = cli(&args, &mirror.data);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a forged copy of the trusted root was imported: {stderr}"
        );
        assert!(
            stderr.contains("metadata/1.root.json") && stderr.contains("signed content differs"),
            "{stderr}"
        );
    }
    assert_eq!(served(&inner, "root.json"), root_before);
    assert_eq!(served(&inner, "1.root.json"), root_before);
    assert_eq!(served(&fresh, "root.json"), fresh_root_before);

    // A genuine archive with a newer root still imports; the served root.json is that root
    // exactly as the outer server signed it.
    let out = cli(&["root", "resign"], &outer.data);
    assert!(out.status.success(), "{out:?}");
    publish(&outer, 2);
    let second = export(&outer, "second.tar.gz");
    let out = cli(&["import", second.to_str().unwrap()], &inner.data);
    assert!(out.status.success(), "{out:?}");
    let newest = std::fs::read(outer.data.join("tuf/metadata/2.root.json")).unwrap();
    assert_eq!(served(&inner, "root.json").as_bytes(), newest.as_slice());
    assert_eq!(served(&inner, "2.root.json").as_bytes(), newest.as_slice());
    assert_eq!(
        served(&inner, "1.root.json").as_bytes(),
        root_before.as_bytes()
    );
    fresh_client(&inner, &[]).unwrap();
}
