//! Diff mode end to end on the newest 6.12 kernels (IBT, call-depth tracking, rethunk) of Debian
//! 12 (gcc-12 on the host), Debian 13 (gcc-14 in its build root) and Debian 13's cloud flavour:
//! bundles built by `patchbay-build diff` from diffs of that kernel's source, loaded by the agent
//! in QEMU (`-smp 1`). Each case's check fails before the patch is loaded, passes while it is
//! live and fails again after unload.
//!
//! QEMU's TCG has no IBT: a missing or sealed `ENDBR64` cannot fault here, so this proves that
//! the modules objtool checked load, run and unload, not IBT enforcement (docs/builder.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use patchbay_e2e::{run_diff_cases, DiffCase};
use patchbay_kernels::{fetch_selector, Flavour, KernelLine, KernelSelector};

/// (case name, diffs under fixtures/diffs, guest check)
const CASES: &[(&str, &[&str], &str)] = &[
    (
        "cmdline-string",
        &["cmdline-string.patch"],
        "grep -q patchbay_diff=1 /proc/cmdline",
    ),
    // A new global helper only called directly: sealed by the module's own objtool run.
    (
        "ibt-cmdline-global-helper",
        &["ibt-cmdline-global-helper.patch"],
        "grep -q pb_ibt_helper /proc/cmdline",
    ),
    (
        "cmdline-new-function",
        &["cmdline-new-function.patch"],
        "grep -q pb_new_function /proc/cmdline",
    ),
    // WARN_ONCE (bug table, `.discard.reachable` after its ud2) and a locked atomic.
    (
        "cmdline-warn-atomic",
        &["cmdline-warn-atomic.patch"],
        "grep -q 'pb_warned pb_hits=' /proc/cmdline && dmesg | grep -q pb_warn_fired",
    ),
    (
        "uname-syscall",
        &["uname-syscall.patch"],
        "uname -m | grep -q pbpatched",
    ),
    // A clone replaced itself, with its pr_warn_once and a jump label on a vmlinux tracepoint.
    (
        "oom-adj-clone-print-once",
        &["oom-adj-clone-print-once.patch"],
        "dmesg -c >/dev/null; echo 0 > /proc/self/oom_adj && dmesg | grep -q pb_oom_adj_patched",
    ),
];

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn diff_bundles_load_and_unload_on_6_12_with_ibt_in_qemu() {
    diff_bundles_in_qemu(12, Flavour::Amd64);
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn diff_bundles_load_and_unload_on_debian13_6_12_in_qemu() {
    diff_bundles_in_qemu(13, Flavour::Amd64);
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn diff_bundles_load_and_unload_on_debian13_6_12_cloud_in_qemu() {
    diff_bundles_in_qemu(13, Flavour::CloudAmd64);
}

fn diff_bundles_in_qemu(debian: u32, flavour: Flavour) {
    let line = KernelLine::choose(
        Some("6.12".parse().unwrap()),
        Some(debian.to_string().parse().unwrap()),
        Some(flavour),
    )
    .unwrap();
    let kernel = fetch_selector(&KernelSelector::Newest(line)).unwrap();
    let cases: Vec<DiffCase<'_>> = CASES
        .iter()
        .map(|(name, diffs, check)| DiffCase {
            name,
            diffs,
            check,
            after_unload: None,
        })
        .collect();
    // 6.12 under TCG with two CPUs can oops; one CPU is what this proves.
    let run = run_diff_cases(&kernel, &cases, 1).unwrap();
    for bad in ["Missing ENDBR", "Oops", "Invalid padding area", "BUG:"] {
        assert!(
            !run.serial_log.contains(bad),
            "the kernel logged {bad:?}\n{}",
            run.serial_log
        );
    }
}
