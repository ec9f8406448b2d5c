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

/// An outer server with level 1 published, its export (`first.tar.gz`), and a mirror that
/// imported it pinning the outer server's root, version 1.
fn outer_and_mirror() -> (Server, Server, PathBuf) {
    let outer = start(|t| t.to_owned());
    publish(&outer, 1);
    let first = export(&outer, "first.tar.gz");
    let outer_root = outer.data.join("tuf/metadata/1.root.json");
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
    (outer, inner, first)
}

#[test]
fn an_archive_whose_copy_of_the_trusted_root_is_forged_is_refused() {
    let (outer, inner, first) = outer_and_mirror();
    let outer_root = outer.data.join("tuf/metadata/1.root.json");
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

#[test]
fn an_archive_carrying_metadata_its_chain_does_not_name_gets_none_of_it_served() {
    let (outer, inner, _) = outer_and_mirror();
    let old_version = served_targets_version(&inner);
    let old_name = format!("{old_version}.targets.json");
    let old_targets = served(&inner, &old_name);

    // The next genuine archive, with two files added by whoever carried it: a targets role
    // of version 99 that no key signed, and a rewritten copy of the targets version the
    // mirror already serves (the same signatures over a target list with one more entry).
    publish(&outer, 2);
    let second = export(&outer, "second.tar.gz");
    let work = outer._dir.path();
    let unpacked = work.join("unpacked");
    patchbay_updates::archive::unpack(&second, &unpacked).unwrap();
    let forge = |bytes: &[u8], version: Option<u64>| {
        let mut role: Value = serde_json::from_slice(bytes).unwrap();
        if let Some(version) = version {
            role["signed"]["version"] = Value::from(version);
        }
        role["signed"]["targets"]["attacker.pbb"] = serde_json::json!({
            "length": 4, "hashes": {"sha256": "00".repeat(32)}
        });
        serde_json::to_vec(&role).unwrap()
    };
    let metadata: Vec<(String, Vec<u8>)> = files_in(&unpacked.join("metadata"))
        .into_iter()
        .flat_map(|(name, bytes)| {
            let mut files = vec![];
            if name == old_name {
                files.push((name, forge(&bytes, None)));
            } else {
                if name.ends_with(".targets.json") {
                    files.push(("99.targets.json".to_owned(), forge(&bytes, Some(99))));
                }
                files.push((name, bytes));
            }
            files
        })
        .collect();
    let carried = work.join("carried.tar.gz");
    patchbay_updates::archive::write(&carried, &metadata, &files_in(&unpacked.join("targets")))
        .unwrap();

    // The chain verifies, so the archive imports; the files it does not name are listed
    // and not served, and the targets version served before keeps its bytes.
    let out = cli(&["import", carried.to_str().unwrap()], &inner.data);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let (status, text) = get_text(&inner, "/tuf/metadata/99.targets.json", "none");
    assert_eq!(status, 404, "an unsigned targets role is served: {text}");
    assert_eq!(served(&inner, &old_name), old_targets);
    assert!(
        stdout.contains("left out") && stdout.contains("99.targets.json"),
        "{stdout}"
    );
    let new_version = served_targets_version(&inner);
    assert!(new_version > old_version);
    assert_eq!(
        served(&inner, &format!("{new_version}.targets.json")).as_bytes(),
        std::fs::read(
            outer
                .data
                .join(format!("tuf/metadata/{new_version}.targets.json"))
        )
        .unwrap()
    );
    for file in ["timestamp.json", "root.json"] {
        assert_eq!(
            served(&inner, file).as_bytes(),
            std::fs::read(outer.data.join("tuf/metadata").join(file)).unwrap(),
            "{file}"
        );
    }
    fresh_client(&inner, &[]).unwrap();
}

fn export_unsigned(s: &Server, name: &str) -> PathBuf {
    let unsigned = s._dir.path().join(format!("{name}.unsigned.json"));
    let out = cli(
        &["export-unsigned", "-o", unsigned.to_str().unwrap()],
        &s.data,
    );
    assert!(out.status.success(), "{out:?}");
    unsigned
}

/// `sign-targets` as the offline machine runs it, stdin not a terminal.
fn sign_targets(
    s: &Server,
    key: &Path,
    previous: &Path,
    unsigned: &Path,
    output: &Path,
    flags: &[&str],
) -> std::process::Output {
    Command::new(bin())
        .args(["sign-targets", "--key"])
        .arg(key)
        .arg("--root")
        .arg(s.data.join("tuf/metadata/root.json"))
        .arg("--previous")
        .arg(previous)
        .args(flags)
        .arg(unsigned)
        .arg("-o")
        .arg(output)
        .output()
        .unwrap()
}

/// [`sign_targets`] without `--yes` on a terminal (util-linux `script` gives it a pty) where
/// the signer types `answer`; the terminal's text is the output's stdout.
fn sign_targets_on_a_terminal(
    s: &Server,
    key: &Path,
    previous: &Path,
    unsigned: &Path,
    output: &Path,
    answer: &str,
) -> std::process::Output {
    let command = [
        bin(),
        "sign-targets",
        "--key",
        key.to_str().unwrap(),
        "--root",
        s.data.join("tuf/metadata/root.json").to_str().unwrap(),
        "--previous",
        previous.to_str().unwrap(),
        unsigned.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]
    .map(|word| format!("'{word}'"))
    .join(" ");
    let mut child = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux script (package bsdutils)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{answer}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A server whose targets key was moved out of `keys/`: the server, the key file, and the
/// served targets role (the first `--previous`).
fn server_with_the_targets_key_offline() -> (Server, PathBuf, PathBuf) {
    let s = start(|t| t.to_owned());
    let key = s._dir.path().join("targets-offline.pk8");
    std::fs::rename(s.data.join("keys/targets.pk8"), &key).unwrap();
    let first_version = served_targets_version(&s);
    let served_first = s
        .data
        .join(format!("tuf/metadata/{first_version}.targets.json"));
    (s, key, served_first)
}

#[test]
fn sign_targets_shows_every_change_and_signs_no_removal_or_anything_unconfirmed() {
    let (s, key, served_first) = server_with_the_targets_key_offline();
    let first_version = served_targets_version(&s);

    // Level 1, signed offline against the served role: shown, then signed with --yes.
    publish(&s, 1);
    let unsigned = export_unsigned(&s, "level-1");
    let signed_1 = s._dir.path().join("level-1.signed.json");
    let out = sign_targets(&s, &key, &served_first, &unsigned, &signed_1, &["--yes"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let level_1 = format!("bundles/{BUILD_ID}/1.pbb");
    assert!(
        stdout.contains(&format!("+ added    {level_1}")),
        "{stdout}"
    );
    let out = cli(&["import-signed", signed_1.to_str().unwrap()], &s.data);
    assert!(out.status.success(), "{out:?}");

    // Level 2 is published; the (compromised) server's export also drops level 1.
    publish(&s, 2);
    let exported = export_unsigned(&s, "level-2");
    let mut role: Value = serde_json::from_slice(&std::fs::read(&exported).unwrap()).unwrap();
    let level_2 = format!("bundles/{BUILD_ID}/2.pbb");
    let added = role["targets"][&level_2].clone();
    let removed = role["targets"][&level_1].clone();
    assert!(added.is_object() && removed.is_object(), "{role}");
    role["targets"].as_object_mut().unwrap().remove(&level_1);
    let tampered = s._dir.path().join("tampered.unsigned.json");
    std::fs::write(&tampered, serde_json::to_vec_pretty(&role).unwrap()).unwrap();
    let output = s._dir.path().join("tampered.signed.json");

    for flags in [&[][..], &["--yes"], &["--allow-removals"]] {
        let out = sign_targets(&s, &key, &signed_1, &tampered, &output, flags);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{flags:?}: signed: {stdout}");
        assert!(!output.exists(), "{flags:?}: wrote {}", output.display());
        // Both changes are shown with what they are: kernel, level, CVEs, size, hash.
        for (sign, name, level, entry) in [
            ("+ added", &level_2, 2, &added),
            ("- removed", &level_1, 1, &removed),
        ] {
            let block = stdout
                .split_once(&format!("{sign:<10} {name}\n"))
                .map(|(_, rest)| rest.lines().next().unwrap_or_default())
                .unwrap_or_else(|| panic!("{flags:?}: no {sign} {name} in {stdout}"));
            for wanted in [
                format!("kernel {RELEASE} (build-id {BUILD_ID})"),
                format!("level {level}"),
                "CVE-2024-1086".to_owned(),
                format!("{} bytes", entry["length"]),
                format!("sha256 {}", entry["hashes"]["sha256"].as_str().unwrap()),
            ] {
                assert!(
                    block.contains(&wanted),
                    "{flags:?}: {wanted:?} not in {block:?}"
                );
            }
        }
        let why = if flags.contains(&"--allow-removals") {
            "--yes"
        } else {
            "--allow-removals"
        };
        assert!(
            stderr.contains("not signed") && stderr.contains(why),
            "{flags:?}: {stderr}"
        );
        if why == "--allow-removals" {
            assert!(stderr.contains(&level_1), "{flags:?}: {stderr}");
        }
    }

    // Both allowed: it signs exactly the role it showed.
    let out = sign_targets(
        &s,
        &key,
        &signed_1,
        &tampered,
        &output,
        &["--yes", "--allow-removals"],
    );
    assert!(out.status.success(), "{out:?}");
    let signed: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(signed["signed"], role);

    // A previous role that is not the version just below is refused, naming the one to give.
    let out = sign_targets(&s, &key, &served_first, &exported, &output, &["--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("give version {}", first_version + 1)),
        "{stderr}"
    );
    // The genuine export (level 2 added, nothing removed), on a terminal: the signer who
    // answers no gets nothing, the one who answers yes a role that installs.
    let genuine = s._dir.path().join("level-2.signed.json");
    for (answer, signs) in [("n", false), ("y", true)] {
        let out = sign_targets_on_a_terminal(&s, &key, &signed_1, &exported, &genuine, answer);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains(&format!("+ added    {level_2}")) && shown.contains("[y/N]"),
            "{answer}: {shown}"
        );
        assert_eq!(out.status.success(), signs, "{answer}: {shown}");
        assert_eq!(genuine.exists(), signs, "{answer}: {shown}");
    }
    let out = cli(&["import-signed", genuine.to_str().unwrap()], &s.data);
    assert!(out.status.success(), "{out:?}");
    assert!(served_targets(&s)[&level_2].is_object());
}

/// `channel`'s `action` (promote, rollback) of the test kernel to `level`, as an admin.
fn change_channel(s: &Server, action: &str, level: u32) {
    let (status, reply) = call(
        s,
        "POST",
        &format!("/api/v1/channels/production/{action}"),
        Some(&s.admin),
        Some(Body::Json(
            serde_json::json!({"build_id": BUILD_ID, "level": level}),
        )),
    );
    assert!((200..300).contains(&status), "{action}: {status} {reply}");
}

#[test]
fn sign_targets_shows_what_a_changed_channel_says_and_signs_no_silent_rollback() {
    let (s, key, served_first) = server_with_the_targets_key_offline();

    // Levels 1 and 2, production at level 2: the signer sees what production will serve.
    publish(&s, 1);
    publish(&s, 2);
    change_channel(&s, "promote", 2);
    let unsigned = export_unsigned(&s, "promoted");
    let signed = s._dir.path().join("promoted.signed.json");
    let out = sign_targets(&s, &key, &served_first, &unsigned, &signed, &["--yes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("channel production (channels/production.json)")
            && stdout.contains(&format!("+ kernel {BUILD_ID}: level 2, previous")),
        "{stdout}"
    );
    let out = cli(&["import-signed", signed.to_str().unwrap()], &s.data);
    assert!(out.status.success(), "{out:?}");

    // The (compromised) server exports a role whose only change is production's document,
    // which now sends every host of the kernel down to level 1, losing level 2's fixes.
    change_channel(&s, "rollback", 1);
    let rolled_back = export_unsigned(&s, "rolled-back");
    let output = s._dir.path().join("rolled-back.signed.json");
    for flags in [&["--yes"][..], &[]] {
        let out = sign_targets(&s, &key, &signed, &rolled_back, &output, flags);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{flags:?}: signed: {stdout}");
        assert!(!output.exists());
        let shown = stdout
            .split_once(&format!("~ kernel {BUILD_ID}:"))
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("{flags:?}: the kernel's change is not shown: {stdout}"));
        assert!(shown.starts_with("  LOWER"), "{shown}");
        let mut lines = shown.lines().skip(1);
        assert!(
            lines.next().unwrap().trim().starts_with("was: level 2"),
            "{shown}"
        );
        assert!(
            lines.next().unwrap().trim().starts_with("now: level 1"),
            "{shown}"
        );
        assert!(
            stderr.contains("--allow-removals")
                && stderr.contains(&format!(
                    "kernel {BUILD_ID} lowered from level 2 to level 1"
                )),
            "{flags:?}: {stderr}"
        );
    }

    // Without the documents, or with a forged one in their place, nothing is signed.
    let documents = PathBuf::from(format!("{}.documents", rolled_back.display()));
    let forged = s._dir.path().join("forged.documents");
    std::fs::create_dir(&forged).unwrap();
    // The forger keeps the file names and says level 2 again where the role signs level 1.
    for (name, bytes) in files_in(&documents) {
        let mut doc: Value = serde_json::from_slice(&bytes).unwrap();
        let level = &mut doc["kernels"][BUILD_ID]["level"];
        if level.as_u64() == Some(1) {
            *level = Value::from(2);
        }
        std::fs::write(forged.join(name), serde_json::to_vec(&doc).unwrap()).unwrap();
    }
    let empty = s._dir.path().join("no.documents");
    std::fs::create_dir(&empty).unwrap();
    for dir in [&empty, &forged] {
        let args = [
            "--yes",
            "--allow-removals",
            "--documents",
            dir.to_str().unwrap(),
        ];
        let out = sign_targets(&s, &key, &signed, &rolled_back, &output, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: signed", dir.display());
        assert!(
            stderr.contains("channels/production.json") && stderr.contains("was not given"),
            "{stderr}"
        );
        assert!(!output.exists());
    }

    // Allowed, it signs exactly what it showed, and the rollback installs.
    let out = sign_targets(
        &s,
        &key,
        &signed,
        &rolled_back,
        &output,
        &["--yes", "--allow-removals"],
    );
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["import-signed", output.to_str().unwrap()], &s.data);
    assert!(out.status.success(), "{out:?}");
}
