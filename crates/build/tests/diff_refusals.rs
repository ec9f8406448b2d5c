//! Diff mode refuses what cannot become a safe live patch, with an error that says what to do,
//! and writes no bundle (real Debian source, real gcc-12 objects).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use patchbay_build::diff::pipeline::{build, DiffBuild};
use patchbay_kernels::{fetch_selector, KernelSelector};

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/diffs")
        .join(rel)
}

#[test]
fn unsafe_or_empty_diffs_are_refused_with_advice() {
    let kernel = fetch_selector(&KernelSelector::Newest).unwrap();
    let work = tempfile::tempdir().unwrap();
    let garbage = work.path().join("garbage.patch");
    std::fs::write(&garbage, "this is not a diff\n").unwrap();
    let stale = work.path().join("stale.patch");
    std::fs::write(
        &stale,
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -8,3 +8,3 @@\n-\tnot in this kernel();\n+\tnor this();\n \treturn 0;\n",
    )
    .unwrap();
    for (diff, expected) in [
        (fixture("refuse-data-change.patch"), "shadow variable"),
        (fixture("refuse-init-change.patch"), "__init"),
        (fixture("refuse-comment-only.patch"), "no functional change"),
        (fixture("refuse-header.patch"), "header changes are refused"),
        (
            fixture("refuse-module-unexported.patch"),
            "may only use exported vmlinux symbols",
        ),
        (garbage, "no file changes found"),
        (stale, "does not apply"),
    ] {
        let output = work.path().join("out.pbb");
        let err = build(
            &kernel,
            &DiffBuild {
                level: 1.try_into().unwrap(),
                fixes: Vec::new(),
                patches: vec![diff.clone()],
                output: output.clone(),
                keep_work_dir: None,
            },
        )
        .expect_err("must be refused")
        .to_string();
        assert!(
            err.contains(expected),
            "{}: expected {expected:?} in: {err}",
            diff.display()
        );
        assert!(
            !output.exists(),
            "a refused build wrote {}",
            output.display()
        );
    }
    // The shared source tree is left as it was.
    let tree = kernel.source_tree().unwrap();
    let status = std::process::Command::new("patch")
        .current_dir(tree.dir())
        .args(["-p1", "--dry-run", "--batch", "--silent", "-i"])
        .arg(fixture("cmdline-string.patch"))
        .status()
        .unwrap();
    assert!(status.success(), "the source tree was left modified");
}
