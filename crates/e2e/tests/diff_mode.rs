//! Diff mode end to end: bundles built by `patchbay-build diff` from source diffs of the newest
//! Debian kernel, loaded by the agent in QEMU. Each case has a check that fails before the patch
//! is loaded, passes while it is live, and fails again after unload.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use patchbay_build::diff::pipeline::{build, DiffBuild};
use patchbay_e2e::{fixture, Guest};
use patchbay_kernels::{fetch_selector, KernelSelector};

/// (case name, diff under fixtures/diffs, guest check)
const CASES: &[(&str, &str, &str)] = &[(
    "cmdline-string",
    "cmdline-string.patch",
    "grep -q patchbay_diff=1 /proc/cmdline",
)];

#[test]
fn diff_bundles_load_and_unload_in_qemu() {
    let kernel = fetch_selector(&KernelSelector::Newest).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut guest = Guest::new().unwrap();
    for (name, diff, check) in CASES {
        let out = work.path().join(format!("{name}.pbb"));
        let report = build(
            &kernel,
            &DiffBuild {
                level: 1.try_into().unwrap(),
                fixes: Vec::new(),
                patches: vec![fixture(&format!("diffs/{diff}"))],
                output: out.clone(),
                keep_work_dir: None,
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
        .run_script(&kernel, "diff", &script, work.path())
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
}
