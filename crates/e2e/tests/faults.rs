//! Fault injection on a real Debian kernel in QEMU: the agent is killed (`SIGKILL`, from its
//! own crash points: `PATCHBAY_FAULT`) after the download, after the cache write, after
//! `finit_module`, mid-transition and before the record, and the machine's power is cut
//! mid-transition. After each: `status` tells the truth, `boot` then `update` converge to the
//! channel's level, no stray module, no leftover temp file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

use patchbay_e2e::{
    agent_binary_with_fault_injection, assert_checks, bundle, fixture, server_binary, Guest,
    ServerProcess,
};
use patchbay_kernels::{fetch_selector, Kernel, KernelSelector};

const POINTS: [&str; 5] = [
    "after-download",
    "after-cache-write",
    "after-finit-module",
    "mid-transition",
    "before-record",
];

fn export(server: &ServerProcess, output: &Path) {
    let out = Command::new(server_binary().unwrap())
        .args(["export", "--data"])
        .arg(&server.data_dir)
        .arg("-o")
        .arg(output)
        .output()
        .unwrap();
    assert!(out.status.success(), "export: {out:?}");
}

fn guest(kernel: &Kernel, files: &Path, disk: Option<&Path>) -> Guest {
    let mut guest = Guest::with_agent(&agent_binary_with_fault_injection().unwrap()).unwrap();
    for name in [
        "channel-level1.tar.gz",
        "channel-level2.tar.gz",
        "root.json",
    ] {
        guest
            .file(&format!("/bundles/{name}"), &files.join(name))
            .unwrap();
    }
    guest
        .file("/lib/faults-lib.sh", &fixture("scenarios/faults-lib.sh"))
        .unwrap();
    if let Some(disk) = disk {
        guest
            .modules(
                kernel,
                &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"],
            )
            .unwrap();
        guest.disks = vec![disk.to_path_buf()];
    }
    guest
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn killed_at_every_step_and_after_a_power_cut_the_agent_converges() {
    let kernel: Kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);
    bundle(&kernel, 1, &["cmdline_level1.c"], &[], &[], &path("l1.pbb")).unwrap();
    bundle(&kernel, 2, &["cmdline_level2.c"], &[], &[], &path("l2.pbb")).unwrap();

    // One server, exported with the channel at level 1 and at level 2.
    let server = ServerProcess::start(&path("server")).unwrap();
    let build_id = kernel.build_id().to_string();
    for b in ["l1.pbb", "l2.pbb"] {
        server.publish(&path(b)).unwrap();
    }
    for level in [1, 2] {
        server
            .admin(
                "POST",
                "channels/production/promote",
                Some(serde_json::json!({"build_id": build_id, "level": level})),
            )
            .unwrap();
        export(&server, &path(&format!("channel-level{level}.tar.gz")));
    }
    std::fs::copy(
        server.data_dir.join("tuf/metadata/1.root.json"),
        path("root.json"),
    )
    .unwrap();
    drop(server);

    // kill -9 at each step.
    let run = guest(&kernel, work.path(), None)
        .run(&kernel, "faults.sh", work.path())
        .unwrap();
    let mut expected = vec!["start-at-level1".to_owned()];
    for point in POINTS {
        for check in [
            "killed",
            "status-truthful",
            "boot-after",
            "update-after",
            "level2-live",
            "converged",
            "no-leftovers",
            "back-to-level1",
            "level1-only",
        ] {
            expected.push(format!("{check}-{point}"));
        }
    }
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_checks(&run, &expected);

    // Power cut mid-transition, then the next boot on the same disk.
    let disk = path("state.img");
    std::fs::write(&disk, vec![0u8; 64 << 20]).unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mkfs.success(), "mkfs.ext4 failed");
    let cut = guest(&kernel, work.path(), Some(&disk))
        .run(&kernel, "faults-powercut.sh", work.path())
        .unwrap();
    let log = &cut.serial_log;
    for check in ["state-disk", "start-at-level1"] {
        assert!(
            log.contains(&format!("PB: check {check} ok")),
            "{check} did not pass before the power cut:\n{log}"
        );
    }
    assert!(
        log.contains("fault injection: dying at mid-transition")
            && !log.contains("power-cut-did-not-happen"),
        "the power was not cut mid-transition:\n{log}"
    );
    assert_eq!(cut.exit, patchbay_vm::VmExit::NoEndMarker, "{log}");
    let after = guest(&kernel, work.path(), Some(&disk))
        .run(&kernel, "faults-after-powercut.sh", work.path())
        .unwrap();
    assert_checks(
        &after,
        &[
            "state-disk",
            "unpatched-after-power-cut",
            "status-truthful-after-power-cut",
            "boot-after-power-cut",
            "a-level-after-boot",
            "status-truthful-after-boot",
            "update-after-power-cut",
            "level2-after-power-cut",
            "converged-after-power-cut",
            "no-leftovers-after-power-cut",
        ],
    );
}
