//! Root key rotation (issue 18, "keys kept apart"): `root rotate --role root` writes new root
//! keys where the operator says and signs root N+1 with the old root keys and the new ones.
//! A client that trusted version N must follow: python-tuf's reference client (ngclient) and
//! our own (`patchbay-updates`, as the agent runs it). And both signatures are needed: a root
//! N+1 signed only by the new key, or only by the old one, is refused by both clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Output;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde_json::{json, Value};
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signed};

mod common;
use common::*;

const CHANNEL: &str = "channels/production.json";

fn bundle(level: u32) -> String {
    format!("bundles/{BUILD_ID}/{level}.pbb")
}

fn publish_and_promote(s: &Server, level: u32) {
    publish_level(s, level);
    let (status, v) = call(
        s,
        "POST",
        "/api/v1/channels/production/promote",
        Some(&s.admin),
        Some(Body::Json(json!({"build_id": BUILD_ID, "level": level}))),
    );
    assert_eq!(status, 200, "{v}");
}

fn served_level(report: &Value) -> u64 {
    report["files"][CHANNEL]["json"]["kernels"][BUILD_ID]["level"]
        .as_u64()
        .unwrap_or_else(|| panic!("no level for {BUILD_ID} in {report}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A server with level 1 published and promoted, and two hosts' TUF clients that trusted its
/// `1.root.json` and verified the repository once: python-tuf's and ours.
struct Hosts {
    server: Server,
    work: tempfile::TempDir,
    root_v1: PathBuf,
    python: PathBuf,
    ours: PathBuf,
}

impl Hosts {
    fn start() -> Hosts {
        let server = start(|t| t.to_owned());
        let work = tempfile::tempdir().unwrap();
        let root_v1 = work.path().join("1.root.json");
        std::fs::copy(server.data.join("tuf/metadata/1.root.json"), &root_v1).unwrap();
        let (python, ours) = (work.path().join("python"), work.path().join("ours"));
        std::fs::create_dir_all(&ours).unwrap();
        publish_and_promote(&server, 1);
        let hosts = Hosts {
            server,
            work,
            root_v1,
            python,
            ours,
        };
        let first = hosts.python_client(&[CHANNEL, &bundle(1)]).unwrap();
        assert_eq!((first["root"].as_u64(), served_level(&first)), (Some(1), 1));
        assert_eq!(hosts.our_client(), Ok((1, 1)));
        hosts
    }

    /// python-tuf's refresh and downloads of `targets`: its report, or its refusal.
    fn python_client(&self, targets: &[&str]) -> Result<Value, String> {
        reference_client_result(&self.server, &self.python, &self.root_v1, targets, &[])
    }

    /// Our client's refresh (the agent's, with the datastore a host keeps): the root version
    /// it trusts and the level production serves the test kernel, or its refusal.
    fn our_client(&self) -> Result<(u64, u32), String> {
        let view = tuf_client(
            &self.server,
            &[patchbay_core::ChannelName::default_channel()],
            &self.ours,
        )?;
        let build_id = BUILD_ID.parse().unwrap();
        let level = view.channels[0].kernels[&build_id].level.get();
        Ok((view.root, level))
    }
}

#[test]
fn clients_that_trusted_the_old_root_follow_a_root_key_rotation() {
    let hosts = Hosts::start();
    let s = &hosts.server;
    // A plain init keeps the root key beside the data; the rotation moves root to a new key
    // written where the operator said (here: "the USB stick"), while `serve` runs.
    let old_key = s.data.join("keys/root-1.pk8");
    assert!(old_key.exists());
    let usb = tempfile::tempdir().unwrap();
    let new_key = usb.path().join("root-2026.pk8");
    let new_key_arg = new_key.to_str().unwrap();
    let rotate = ["root", "rotate", "--role", "root"];
    let out = cli(
        &[&rotate[..], &["--new-root-key-out", new_key_arg]].concat(),
        &s.data,
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("root version 2") && said.contains(new_key_arg),
        "{said}"
    );
    assert!(!old_key.exists(), "the old root key is gone from keys/");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&new_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // The file is never overwritten: a second rotation to the same place is refused whole.
    let again = cli(
        &[
            &rotate[..],
            &["--root-key", new_key_arg, "--new-root-key-out", new_key_arg],
        ]
        .concat(),
        &s.data,
    );
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("never overwritten"),
        "{}",
        text(&again)
    );
    // New root key files are for --role root only, one per key.
    let other = usb.path().join("other.pk8");
    let other_arg = other.to_str().unwrap();
    for (args, says) in [
        (
            &[
                "root",
                "rotate",
                "--role",
                "timestamp",
                "--new-root-key-out",
                other_arg,
            ][..],
            "are for --role root",
        ),
        (
            &[
                &rotate[..],
                &["--root-keys", "2", "--new-root-key-out", other_arg],
            ]
            .concat()[..],
            "needs 2 --new-root-key-out files",
        ),
        (
            &[
                &rotate[..],
                &["--root-threshold", "2", "--new-root-key-out", other_arg],
            ]
            .concat()[..],
            "--root-threshold 2 must be between 1 and",
        ),
    ] {
        let out = cli(args, &s.data);
        assert!(
            !out.status.success() && text(&out).contains(says),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert!(!other.exists());
    assert!(!s.data.join("tuf/metadata/3.root.json").exists());

    // Both clients, still holding version 1, take version 2 and keep updating.
    publish_and_promote(s, 2);
    let after = hosts.python_client(&[CHANNEL, &bundle(2)]).unwrap();
    assert_eq!((after["root"].as_u64(), served_level(&after)), (Some(2), 2));
    assert_eq!(hosts.our_client(), Ok((2, 2)));
    // A client that starts from version 1 today, too.
    let fresh = reference_client(
        s,
        &hosts.work.path().join("fresh"),
        &hosts.root_v1,
        &[CHANNEL],
        &[],
    );
    assert_eq!(fresh["root"], 2, "{fresh}");

    // From now on only the new key signs roots: without it the server cannot.
    let refused = cli(&["root", "resign"], &s.data);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("--root-key"), "{}", text(&refused));
    let resigned = cli(&["root", "resign", "--root-key", new_key_arg], &s.data);
    assert!(resigned.status.success(), "{}", text(&resigned));
    let later = hosts.python_client(&[CHANNEL, &bundle(2)]).unwrap();
    assert_eq!(later["root"], 3, "{later}");
    assert_eq!(hosts.our_client(), Ok((3, 2)));

    // doctor no longer finds a root key in the data dir.
    let doctor = text(&cli(&["doctor"], &s.data));
    assert!(doctor.contains("ok    root key offline"), "{doctor}");
}

/// Which keys sign a forged root version 2.
#[derive(Debug, Clone, Copy)]
enum SignedBy {
    NewKeyOnly,
    OldKeyOnly,
    OldAndNew,
}

/// A root version 2 that hands root to a freshly made key (in `dir`), signed as `by` says
/// with the server's own root key (`keys/root-1.pk8`) and the new key.
fn root_v2_to_a_new_key(data: &Path, dir: &Path, by: SignedBy) -> Vec<u8> {
    let new_key: PathBuf = dir.join(format!("{by:?}.pk8"));
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    std::fs::write(&new_key, document.as_ref()).unwrap();
    let old_key = data.join("keys/root-1.pk8");
    let current: Signed<Root> =
        serde_json::from_slice(&std::fs::read(data.join("tuf/metadata/1.root.json")).unwrap())
            .unwrap();
    let current = current.signed;
    let source = |path: &Path| -> Box<dyn KeySource> {
        Box::new(LocalKeySource {
            path: path.to_path_buf(),
        })
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let tuf_key = source(&new_key).as_sign().await.unwrap().tuf_key();
        let new_id = tuf_key.key_id().unwrap();
        let mut next = current.clone();
        next.version = 2.try_into().unwrap();
        for old in &current.roles[&RoleType::Root].keyids {
            next.keys.remove(old);
        }
        next.keys.insert(new_id.clone(), tuf_key);
        next.roles.insert(
            RoleType::Root,
            RoleKeys {
                keyids: vec![new_id],
                threshold: 1.try_into().unwrap(),
                _extra: Default::default(),
            },
        );
        let rng = SystemRandom::new();
        let by_old = SignedRole::new(
            next.clone(),
            &KeyHolder::Root(current.clone()),
            &[source(&old_key)],
            &rng,
        )
        .await
        .unwrap();
        let by_new = SignedRole::new(
            next.clone(),
            &KeyHolder::Root(next.clone()),
            &[source(&new_key)],
            &rng,
        )
        .await
        .unwrap();
        let signatures = match by {
            SignedBy::NewKeyOnly => by_new.signed().signatures.clone(),
            SignedBy::OldKeyOnly => by_old.signed().signatures.clone(),
            SignedBy::OldAndNew => [
                by_old.signed().signatures.clone(),
                by_new.signed().signatures.clone(),
            ]
            .concat(),
        };
        let mut bytes = serde_json::to_vec_pretty(&Signed {
            signed: next,
            signatures,
        })
        .unwrap();
        bytes.push(b'\n');
        bytes
    })
}

#[test]
fn a_new_root_needs_the_old_keys_and_the_new_ones_for_both_clients() {
    let hosts = Hosts::start();
    let (s, work) = (&hosts.server, hosts.work.path());
    // Served as clients look for the next root: tuf/metadata/2.root.json.
    let next_root = s.data.join("tuf/metadata/2.root.json");
    for by in [SignedBy::NewKeyOnly, SignedBy::OldKeyOnly] {
        std::fs::write(&next_root, root_v2_to_a_new_key(&s.data, work, by)).unwrap();
        let refusal = hosts
            .python_client(&[CHANNEL])
            .expect_err("python-tuf must refuse the root");
        assert!(
            refusal.contains("UnsignedMetadataError") && refusal.contains("root"),
            "{by:?}: {refusal}"
        );
        let ours_said = hosts.our_client().expect_err("our client must refuse");
        let last_line = refusal.lines().rev().find(|l| !l.trim().is_empty());
        eprintln!("{by:?}: python-tuf: {last_line:?}; ours: {ours_said}");
        assert!(ours_said.contains("root"), "{by:?}: {ours_said}");
    }
    // The same forgery with both signatures is a valid rotation: each refusal above was for
    // the missing signature alone.
    let valid = root_v2_to_a_new_key(&s.data, work, SignedBy::OldAndNew);
    std::fs::write(&next_root, valid).unwrap();
    let taken = hosts.python_client(&[CHANNEL]).unwrap();
    assert_eq!(taken["root"], 2, "{taken}");
    assert_eq!(hosts.our_client(), Ok((2, 1)));
}
