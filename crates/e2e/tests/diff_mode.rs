//! Diff mode end to end: bundles built by `patchbay-build diff` from source diffs of the newest
//! Debian kernel, loaded by the agent in QEMU. Each case has a check that fails before the patch
//! is loaded, passes while it is live, and fails again after unload.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use patchbay_build::diff::pipeline::{build, DiffBuild};
use patchbay_e2e::{fixture, run_diff_cases, DiffCase, Guest};
use patchbay_kernels::{fetch_selector, KernelSelector};

/// (case name, diffs under fixtures/diffs, guest check)
const CASES: &[(&str, &[&str], &str)] = &[
    (
        "cmdline-string",
        &["cmdline-string.patch"],
        "grep -q patchbay_diff=1 /proc/cmdline",
    ),
    (
        "uname-syscall",
        &["uname-syscall.patch"],
        "uname -m | grep -q pbpatched",
    ),
    (
        "version-format",
        &["version-format.patch"],
        "grep -q pb_version_patched /proc/version",
    ),
    (
        "cmdline-new-static",
        &["cmdline-new-static.patch"],
        "grep -q pb_counter=42 /proc/cmdline",
    ),
    (
        "cmdline-new-function",
        &["cmdline-new-function.patch"],
        "grep -q pb_new_function /proc/cmdline",
    ),
    (
        "cmdline-static-local",
        &["cmdline-static-local.patch"],
        "cat /proc/cmdline >/dev/null && grep -q 'pb_reads=[2-9]' /proc/cmdline",
    ),
    // WARN_ONCE (bug table entry; the warning must print and the read still succeed) and a
    // locked instruction on a new atomic (SMP lock table).
    (
        "cmdline-warn-atomic",
        &["cmdline-warn-atomic.patch"],
        "grep -q 'pb_warned pb_hits=' /proc/cmdline && dmesg | grep -q pb_warn_fired",
    ),
    // A shadow variable (klp_shadow_get_or_alloc) attached to an existing object.
    (
        "cmdline-shadow",
        &["cmdline-shadow.patch"],
        "cat /proc/cmdline >/dev/null && grep -q 'pb_shadow=[2-9]' /proc/cmdline",
    ),
    // Post-patch and post-unpatch callbacks (patchbay-diff.h); the latter frees shadow data.
    (
        "cmdline-callbacks",
        &["cmdline-callbacks.patch"],
        "grep -q pb_cb_live /proc/cmdline && dmesg | grep -q pb_cb_post_patch",
    ),
    // A helper GCC inlined into its caller: the caller is what changes.
    (
        "meminfo-inlined-helper",
        &["meminfo-inlined-helper.patch"],
        "grep -q 'MemTotal:.*pbkB' /proc/meminfo",
    ),
    // A new global function in one object called from another.
    (
        "cross-object-global",
        &["cross-object-global.patch"],
        "grep -q pb_global_helper /proc/cmdline",
    ),
    // A static function whose name repeats in vmlinux (c_start): its position comes from the
    // -dbg symbol table's FILE symbols.
    (
        "consoles-duplicate-name",
        &["consoles-duplicate-name.patch"],
        "grep -q pb_consoles /proc/consoles",
    ),
    // A GCC clone (`__set_oom_adj.isra.0`, replaced itself: ftrace entry, callers unchanged)
    // whose pr_warn_once has the patch's own `__already_done` (the original already fired or
    // not, the patched one prints once); its jump label keys on an unexported vmlinux
    // tracepoint, relocated by the loader before jump labels are registered.
    (
        "oom-adj-clone-print-once",
        &["oom-adj-clone-print-once.patch"],
        "dmesg -c >/dev/null; echo 0 > /proc/self/oom_adj && dmesg | grep -q pb_oom_adj_patched",
    ),
    // A fix that also changes __init code: the runtime function is live, the init part is
    // reported as not applied.
    (
        "cmdline-init-and-runtime",
        &["cmdline-init-and-runtime.patch"],
        "grep -q pb_init_not_applied=1 /proc/cmdline",
    ),
    // A header change the fix needs (a new inline helper in fs/proc/fd.h): base.o, which also
    // includes the header, was recompiled and is unchanged, so only fd.c's seq_show is patched.
    (
        "fd-header-new-helper",
        &["fd-header-new-helper.patch"],
        "grep -q pb_header_helper /proc/self/fdinfo/0",
    ),
    // An exported function changed (proc_dostring, EXPORT_SYMBOL; its pr_info moved to a
    // `.cold` part): the export stays with the running kernel's function, nothing is carried
    // for it, and callers through the sysctl table's pointer reach the replacement by ftrace.
    (
        "exported-proc-dostring",
        &["exported-proc-dostring.patch"],
        "dmesg -c >/dev/null; cat /proc/sys/kernel/modprobe >/dev/null && dmesg | grep -q pb_exported_patched",
    ),
    // The independent cases above as one cumulative patch.
    (
        "combined",
        &[
            "cmdline-string.patch",
            "uname-syscall.patch",
            "version-format.patch",
            "meminfo-inlined-helper.patch",
        ],
        "grep -q patchbay_diff=1 /proc/cmdline && uname -m | grep -q pbpatched && grep -q pb_version_patched /proc/version && grep -q pbkB /proc/meminfo",
    ),
];

/// Checks that must pass after a case's unload.
const AFTER_UNLOAD: &[(&str, &str)] =
    &[("cmdline-callbacks", "dmesg | grep -q pb_cb_post_unpatch")];

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn diff_bundles_load_and_unload_in_qemu() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let cases: Vec<DiffCase<'_>> = CASES
        .iter()
        .map(|(name, diffs, check)| DiffCase {
            name,
            diffs,
            check,
            after_unload: AFTER_UNLOAD
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, after)| *after),
        })
        .collect();
    run_diff_cases(&kernel, &cases, 1).unwrap();
}

/// A function of a loadable module (binfmt_misc), patched after the module loaded and before.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn diff_bundle_patches_a_module_loaded_before_or_after() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut guest = Guest::new().unwrap();
    guest.modules(&kernel, &["binfmt_misc"]).unwrap();
    for (level, file) in [(1u32, "module.pbb"), (2, "module2.pbb")] {
        let out = work.path().join(file);
        build(
            &kernel,
            &DiffBuild {
                level: level.try_into().unwrap(),
                fixes: Vec::new(),
                patches: vec![fixture("diffs/module-binfmt-misc.patch")],
                output: out.clone(),
                keep_work_dir: None,
                strip_level: None,
                header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
            },
        )
        .unwrap();
        guest.file(&format!("/bundles/{file}"), &out).unwrap();
    }
    let run = guest.run(&kernel, "diff-module.sh", work.path()).unwrap();
    patchbay_e2e::assert_checks(
        &run,
        &[
            "module-loaded",
            "original-before",
            "apply-after-module",
            "patched-live",
            "unload-1",
            "original-after-unload",
            "module-removed",
            "apply-before-module",
            "module-loaded-late",
            "patched-on-module-load",
            "unload-2",
            "original-after-unload-2",
        ],
    );
}
