//! Signed distribution end to end: a real `patchbay-server` on the host's loopback, a real
//! Debian kernel in QEMU whose only network is a `guestfwd` to that port, and the real agent
//! registering, following its channel (promote, rollback), keeping its patch while the server is
//! down, and re-applying at boot with the server gone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

use patchbay_e2e::{assert_checks, bundle, fixture, Guest, ServerProcess};
use patchbay_kernels::{fetch_selector, Kernel, KernelSelector};
use patchbay_vm::Network;

const GUEST_PORT: u16 = 8080;

fn guest(kernel: &Kernel, server_port: u16, disk: &Path) -> Guest {
    let mut guest = Guest::new().unwrap();
    guest
        .modules(
            kernel,
            &[
                "virtio_pci",
                "virtio_net",
                "virtio_blk",
                "crc32c_generic",
                "ext4",
            ],
        )
        .unwrap();
    guest.network = Network::ForwardToHost {
        guest_port: GUEST_PORT,
        host_port: server_port,
    };
    guest.disks = vec![disk.to_path_buf()];
    guest
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn agent_follows_its_channel_over_the_network_and_reapplies_at_boot() {
    let kernel: Kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);

    bundle(
        &kernel,
        1,
        &["cmdline_level1.c"],
        &["CVE-2024-1086"],
        &[],
        &path("l1.pbb"),
    )
    .unwrap();
    bundle(
        &kernel,
        2,
        &["cmdline_level2.c", "version_level2.c"],
        &["CVE-2024-1086", "CVE-2023-0179"],
        &[],
        &path("l2.pbb"),
    )
    .unwrap();

    let mut server = ServerProcess::start(&path("server")).unwrap();
    let build_id = kernel.build_id().to_string();
    for bundle in ["l1.pbb", "l2.pbb"] {
        server.publish(&path(bundle)).unwrap();
    }
    server
        .admin(
            "POST",
            "channels/production/promote",
            Some(serde_json::json!({"build_id": build_id, "level": 1})),
        )
        .unwrap();

    let disk = path("state.img");
    std::fs::write(&disk, vec![0u8; 64 << 20]).unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mkfs.success(), "mkfs.ext4 failed");

    let scenario = std::fs::read_to_string(fixture("scenarios/network.sh")).unwrap();
    let script = format!(
        "SERVER=https://{}:{GUEST_PORT}\nREGISTRATION_KEY={}\n{scenario}",
        patchbay_vm::GUEST_SERVER_IP,
        server.registration_key
    );
    let server_port = server.port;
    let mut host_errors = Vec::new();
    let run = {
        let mut on_line = |line: &str| {
            let step = line.trim().strip_prefix("PB: step ").map(str::trim);
            let result = match step {
                Some("promote-level2") => server
                    .admin(
                        "POST",
                        "channels/production/promote",
                        Some(serde_json::json!({"build_id": build_id, "level": 2})),
                    )
                    .map(drop),
                Some("rollback-channel") => server
                    .admin(
                        "POST",
                        "channels/production/rollback",
                        Some(serde_json::json!({"build_id": build_id, "level": 1})),
                    )
                    .map(drop),
                Some("stop-server") => {
                    server.stop();
                    Ok(())
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                host_errors.push(format!("{step:?}: {e:#}"));
            }
        };
        guest(&kernel, server_port, &disk)
            .run_script_with(&kernel, "network", &script, work.path(), &mut on_line)
            .unwrap()
    };
    assert!(
        host_errors.is_empty(),
        "host-side steps failed: {host_errors:?}"
    );
    assert_checks(
        &run,
        &[
            "net-up",
            "state-disk",
            "register",
            "update-picks-level1",
            "level1-live",
            "check-up-to-date",
            "level2-announced",
            "update-picks-level2",
            "level2-live",
            "level1-module-gone",
            "rollback-announced",
            "update-follows-rollback",
            "level1-again",
            "update-fails-while-server-down",
            "patch-kept-while-server-down",
            "still-one-patch",
        ],
    );

    // The server saw the host's check-ins (the last one reports level 1).
    server.restart().unwrap();
    let hosts = server.admin("GET", "hosts", None).unwrap();
    let text = hosts.to_string();
    assert!(text.contains(&build_id), "hosts: {text}");
    server.stop();

    // Reboot with the kill switch on the kernel command line: nothing is applied.
    let reboot = std::fs::read_to_string(fixture("scenarios/reboot.sh")).unwrap();
    let mut disabled = guest(&kernel, server.port, &disk);
    disabled.extra_cmdline = "patchbay.disable".into();
    let run = disabled
        .run_script(&kernel, "reboot-disabled", &reboot, work.path())
        .unwrap();
    assert_checks(
        &run,
        &[
            "state-disk",
            "unpatched-after-reboot",
            "boot-honours-kill-switch",
            "kill-switch-left-kernel-alone",
        ],
    );

    // Reboot: same disk, server gone.
    let run = guest(&kernel, server.port, &disk)
        .run_script(&kernel, "reboot", &reboot, work.path())
        .unwrap();
    assert_checks(
        &run,
        &[
            "state-disk",
            "unpatched-after-reboot",
            "boot-reapplies-offline",
            "level1-after-reboot",
        ],
    );
}
