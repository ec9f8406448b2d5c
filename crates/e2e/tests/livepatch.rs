//! The foundation, end to end: real Debian 6.1 kernels (the newest ABI apt offers and an older
//! one) booted in QEMU, live-patched by the real agent with bundles the real builder made.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use patchbay_e2e::{assert_checks, bundle, fixture_module, Guest};
use patchbay_kernels::{fetch_selector, Flavour, Kernel, KernelLine, KernelSelector};

fn kernel(selector: KernelSelector) -> Kernel {
    fetch_selector(&selector).unwrap_or_else(|e| panic!("fetch kernel {selector:?}: {e}"))
}

/// The other kernel of the pair, to build a bundle the guest must refuse.
fn other(selector: &KernelSelector) -> KernelSelector {
    match selector {
        KernelSelector::Newest(line) => KernelSelector::Older(*line),
        other => KernelSelector::Newest(other.line().unwrap()),
    }
}

/// Flips one byte inside the module of a bundle (past the ELF header), keeping the manifest.
fn corrupt_copy(bundle: &Path, out: &Path) {
    let mut bytes = std::fs::read(bundle).unwrap();
    let elf = bytes
        .windows(4)
        .position(|w| w == b"\x7fELF")
        .expect("module in bundle");
    bytes[elf + 0x200] ^= 0x55;
    std::fs::write(out, bytes).unwrap();
}

fn lifecycle(selector: KernelSelector) {
    let kernel = kernel(selector.clone());
    let other_kernel = kernel_for_refusal(&selector);
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| -> PathBuf { work.path().join(name) };

    bundle(
        &kernel,
        1,
        &["cmdline_level1.c"],
        &["CVE-2024-1086"],
        &[],
        &path("level1.pbb"),
    )
    .unwrap();
    bundle(
        &kernel,
        2,
        &["cmdline_level2.c", "version_level2.c"],
        &["CVE-2024-1086", "CVE-2023-0179"],
        &[],
        &path("level2.pbb"),
    )
    .unwrap();
    bundle(
        &other_kernel,
        1,
        &["cmdline_level1.c"],
        &[],
        &[],
        &path("other-kernel.pbb"),
    )
    .unwrap();
    corrupt_copy(&path("level1.pbb"), &path("corrupt.pbb"));

    let mut guest = Guest::new().unwrap();
    for name in [
        "level1.pbb",
        "level2.pbb",
        "other-kernel.pbb",
        "corrupt.pbb",
    ] {
        guest
            .file(&format!("/bundles/{name}"), &path(name))
            .unwrap();
    }
    let run = guest.run(&kernel, "lifecycle.sh", work.path()).unwrap();
    assert_checks(
        &run,
        &[
            "status-unsupported-before",
            "refuse-other-kernel",
            "refuse-corrupt",
            "nothing-loaded-after-refusals",
            "apply-level1",
            "cmdline-shows-level1",
            "status-up-to-date-level1",
            "apply-level1-again-is-noop",
            "apply-level2",
            "cmdline-shows-level2",
            "version-shows-level2",
            "level1-module-gone",
            "one-patch-in-sysfs",
            "rollback",
            "cmdline-shows-level1-again",
            "version-unpatched-after-rollback",
            "level2-module-gone",
            "status-newer-available",
            "unload",
            "cmdline-original-again",
            "no-patch-in-sysfs",
            "no-module-left",
            "status-none-applied",
        ],
    );
}

fn kernel_for_refusal(selector: &KernelSelector) -> Kernel {
    kernel(other(selector))
}

fn module_and_blocked_transition(selector: KernelSelector) {
    let kernel = kernel(selector);
    let work = tempfile::tempdir().unwrap();
    let fixture = fixture_module(&kernel, work.path()).unwrap();
    let path = |name: &str| -> PathBuf { work.path().join(name) };
    bundle(
        &kernel,
        1,
        &["fixture_level1.c"],
        &[],
        std::slice::from_ref(&fixture),
        &path("fixture1.pbb"),
    )
    .unwrap();
    bundle(
        &kernel,
        2,
        &["fixture_park_level2.c"],
        &[],
        std::slice::from_ref(&fixture),
        &path("fixture2.pbb"),
    )
    .unwrap();

    let mut guest = Guest::new().unwrap();
    guest.file("/lib/pb_fixture.ko", &fixture).unwrap();
    guest
        .file("/bundles/fixture1.pbb", &path("fixture1.pbb"))
        .unwrap();
    guest
        .file("/bundles/fixture2.pbb", &path("fixture2.pbb"))
        .unwrap();
    let run = guest.run(&kernel, "module.sh", work.path()).unwrap();
    assert_checks(
        &run,
        &[
            "load-fixture-module",
            "fixture-original",
            "parked-kthread-runs",
            "apply-module-patch",
            "module-function-patched",
            "blocked-exit-code",
            "blocked-report-names-task",
            "reverted-within-timeout",
            "previous-level-still-active",
            "blocked-module-gone",
            "one-patch-in-sysfs",
            "status-reports-level1",
            "unload",
            "module-function-original-again",
            "no-patch-left",
        ],
    );
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn lifecycle_on_newest_kernel() {
    lifecycle(KernelSelector::newest());
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn lifecycle_on_older_kernel() {
    lifecycle(KernelSelector::older());
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn module_patch_and_blocked_transition_on_newest_kernel() {
    module_and_blocked_transition(KernelSelector::newest());
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn module_patch_and_blocked_transition_on_older_kernel() {
    module_and_blocked_transition(KernelSelector::older());
}

/// The newest build of 6.12 as Debian `debian` ships it, in `flavour`.
fn newest_6_12(debian: u32, flavour: Flavour) -> KernelSelector {
    let line = KernelLine::choose(
        Some("6.12".parse().unwrap()),
        Some(debian.to_string().parse().unwrap()),
        Some(flavour),
    )
    .unwrap();
    KernelSelector::Newest(line)
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn lifecycle_on_newest_debian13_6_12() {
    lifecycle(newest_6_12(13, Flavour::Amd64));
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn lifecycle_on_newest_debian12_6_12() {
    lifecycle(newest_6_12(12, Flavour::Amd64));
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn lifecycle_on_newest_debian13_6_12_cloud() {
    lifecycle(newest_6_12(13, Flavour::CloudAmd64));
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn module_patch_and_blocked_transition_on_newest_debian13_6_12() {
    module_and_blocked_transition(newest_6_12(13, Flavour::Amd64));
}
