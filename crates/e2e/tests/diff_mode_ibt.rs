//! Diff mode end to end on the newest 6.12 kernels (IBT, call-depth tracking, rethunk) of Debian
//! 12 (gcc-12 on the host), Debian 13 (gcc-14 in its build root) and Debian 13's cloud flavour:
//! bundles built by `patchbay-build diff` from diffs of that kernel's source, loaded by the agent
//! in QEMU (`-smp 1`). Each case's check fails before the patch is loaded, passes while it is
//! live and fails again after unload.
//!
//! QEMU's TCG has no IBT: a missing or sealed `ENDBR64` cannot fault here, so this proves that
//! the modules objtool checked load, run and unload, not IBT enforcement (docs/builder.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use patchbay_build::diff::pipeline::{build, DiffBuild};
use patchbay_e2e::{fixture, Guest};
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
    let work = tempfile::tempdir().unwrap();
    let mut guest = Guest::new().unwrap();
    // 6.12 under TCG with two CPUs can oops; one CPU is what this proves.
    guest.cpus = 1;
    for (index, (name, diffs, check)) in CASES.iter().enumerate() {
        let out = work.path().join(format!("{name}.pbb"));
        let report = build(
            &kernel,
            &DiffBuild {
                level: u32::try_from(index + 1).unwrap().try_into().unwrap(),
                fixes: Vec::new(),
                patches: diffs
                    .iter()
                    .map(|d| fixture(&format!("diffs/{d}")))
                    .collect(),
                output: out.clone(),
                keep_work_dir: None,
                strip_level: None,
                header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
            },
        )
        .unwrap_or_else(|e| panic!("build {name}: {e}"));
        eprintln!("{name}: {:?}", report.files);
        guest.file(&format!("/bundles/{name}.pbb"), &out).unwrap();
        let check_file = work.path().join(format!("{name}.check"));
        std::fs::write(&check_file, check).unwrap();
        guest
            .file(&format!("/cases/{name}.check"), &check_file)
            .unwrap();
    }
    let names: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    let scenario = std::fs::read_to_string(fixture("scenarios/diff.sh")).unwrap();
    let script = format!("CASES=\"{}\"\n{scenario}", names.join(" "));
    let run = guest
        .run_script(&kernel, "diff-ibt", &script, work.path())
        .unwrap();
    eprintln!("serial log:\n{}", run.serial_log);
    let passed = patchbay_vm::check_report(&run).unwrap_or_else(|e| panic!("{e}"));
    for name in names {
        for step in [
            "fails-before",
            "apply",
            "passes-live",
            "unload",
            "fails-after-unload",
        ] {
            let check = format!("{name}-{step}");
            assert!(
                passed.contains(&check),
                "{check} did not pass\n{}",
                run.serial_log
            );
        }
    }
    for bad in ["Missing ENDBR", "Oops", "Invalid padding area", "BUG:"] {
        assert!(
            !run.serial_log.contains(bad),
            "the kernel logged {bad:?}\n{}",
            run.serial_log
        );
    }
}
