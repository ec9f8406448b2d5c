//! Diff mode refuses what cannot become a safe live patch, with an error that says what to do,
//! and writes no bundle (real Debian source, real gcc-12 objects).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use patchbay_build::diff::pipeline::{build, DiffBuild};
use patchbay_build::diff::refusal::Category;
use patchbay_kernels::{fetch_selector, KernelSelector};

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/diffs")
        .join(rel)
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn unsafe_or_empty_diffs_are_refused_with_advice() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let garbage = work.path().join("garbage.patch");
    std::fs::write(&garbage, "this is not a diff\n").unwrap();
    let stale = work.path().join("stale.patch");
    std::fs::write(
        &stale,
        "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -8,3 +8,3 @@\n-\tnot in this kernel();\n+\tnor this();\n \treturn 0;\n",
    )
    .unwrap();
    let kpatch_style_wrong_level = work.path().join("kpatch.patch");
    std::fs::write(
        &kpatch_style_wrong_level,
        std::fs::read_to_string(fixture("cmdline-string.patch"))
            .unwrap()
            .replace("a/fs/", "linux/src.orig/fs/")
            .replace("b/fs/", "linux/src/fs/"),
    )
    .unwrap();
    for (diff, expected, category, strip_level) in [
        (
            fixture("refuse-data-change.patch"),
            "shadow variable",
            Category::ChangedData,
            None,
        ),
        (
            fixture("refuse-init-change.patch"),
            "__init",
            Category::InitOnly,
            None,
        ),
        (
            fixture("refuse-comment-only.patch"),
            "no functional change",
            Category::NoFunctionalChange,
            None,
        ),
        (
            fixture("refuse-header.patch"),
            "move the fix into the .c files that need it",
            Category::HeaderChange,
            None,
        ),
        (
            fixture("refuse-module-unexported.patch"),
            "may only use exported vmlinux symbols",
            Category::ModuleUsesUnexported,
            None,
        ),
        // A member added to a private struct the running kernel has allocated.
        (
            fixture("refuse-struct-layout-change.patch"),
            "`struct kthread_create_info` adds `flags`",
            Category::ChangedStructLayout,
            None,
        ),
        (garbage, "no file changes found", Category::NotADiff, None),
        (stale, "does not apply", Category::PatchDoesNotApply, None),
        // Two prefix directories: -p2 is found; -p1, asked for, names no file of the tree.
        (
            kpatch_style_wrong_level,
            "-p1",
            Category::PathNotInTree,
            Some(1),
        ),
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
                strip_level,
                header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
            },
        )
        .expect_err("must be refused");
        assert_eq!(
            err.refusals().first().map(|r| r.category),
            Some(category),
            "{}: {err}",
            diff.display()
        );
        assert_eq!(err.category(), category.as_str());
        let err = err.to_string();
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

/// A fix written as people write patches (kpatch's `diff -Nupr src.orig/ src/`, quilt's
/// `linux.orig/`, no prefix at all) builds the same module as the git-style fixture: the strip
/// level is found from the tree.
/// The build changed `cmdline_proc_show` of `fs/proc/cmdline.c` only and wrote its bundle.
fn assert_only_cmdline_show_changed(
    report: &patchbay_build::diff::pipeline::DiffBuildReport,
    output: &std::path::Path,
) {
    assert_eq!(report.files.len(), 1);
    assert_eq!(report.files[0].source, "fs/proc/cmdline.c");
    assert_eq!(
        report.files[0].diff.changed_functions,
        ["cmdline_proc_show"]
    );
    assert!(output.is_file());
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn patches_with_any_prefix_build() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let git = std::fs::read_to_string(fixture("cmdline-string.patch")).unwrap();
    let kpatch = format!(
        "diff -Nupr src.orig/fs/proc/cmdline.c src/fs/proc/cmdline.c\n{}",
        git.replace("a/fs/", "src.orig/fs/")
            .replace("b/fs/", "src/fs/")
    );
    let bare = git.replace("a/fs/", "fs/").replace("b/fs/", "fs/");
    for (name, text) in [("kpatch", kpatch), ("bare", bare)] {
        let diff = work.path().join(format!("{name}.patch"));
        std::fs::write(&diff, text).unwrap();
        let output = work.path().join(format!("{name}.pbb"));
        let report = build(
            &kernel,
            &DiffBuild {
                level: 1.try_into().unwrap(),
                fixes: Vec::new(),
                patches: vec![diff],
                output: output.clone(),
                keep_work_dir: None,
                strip_level: None,
                header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_only_cmdline_show_changed(&report, &output);
    }
}

/// A level-1 build of one patch file.
fn one_patch(
    patch: std::path::PathBuf,
    output: std::path::PathBuf,
    strip_level: Option<usize>,
) -> DiffBuild {
    DiffBuild {
        level: 1.try_into().unwrap(),
        fixes: Vec::new(),
        patches: vec![patch],
        output,
        keep_work_dir: None,
        strip_level,
        header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
    }
}

/// A fix that adds a header (upgrade carries headers the newer tree added, when a fix's
/// file includes one): allowed, since only the changed files can include it; the tree is left
/// without it afterwards. A new `.c` file stays refused (no object to map it to).
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn a_new_header_included_by_the_fix_builds_and_leaves_no_file_behind() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let request = |patch, output| one_patch(patch, output, None);
    let output = work.path().join("header.pbb");
    let report = build(
        &kernel,
        &request(fixture("cmdline-new-header.patch"), output.clone()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_only_cmdline_show_changed(&report, &output);
    let tree = kernel.source_tree().unwrap();
    assert!(!tree.dir().join("fs/proc/cmdline-suffix.h").exists());

    let new_c = work.path().join("new-c.patch");
    std::fs::write(
        &new_c,
        std::fs::read_to_string(fixture("cmdline-new-header.patch"))
            .unwrap()
            .replace("cmdline-suffix.h", "cmdline-suffix.c"),
    )
    .unwrap();
    let err = build(&kernel, &request(new_c, work.path().join("new-c.pbb")))
        .expect_err("a new .c file must be refused");
    assert_eq!(err.category(), Category::NewOrDeletedFile.as_str(), "{err}");
}

/// A new `static inline` helper in a header included by thousands of units
/// (`include/linux/seq_file.h`), used by the fix's own file: the header proof compares only the
/// units that name the helper (none but the patched one), so it builds. The same header change
/// made a non-static definition (every includer would emit it) gets the full proof and is
/// refused as too wide.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn a_header_change_of_new_named_items_is_proven_on_the_units_naming_them() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let named = fixture("seq-file-header-new-helper.patch");
    let request = |patch, output| one_patch(patch, output, Some(1));
    let output = work.path().join("named.pbb");
    let report =
        build(&kernel, &request(named.clone(), output.clone())).unwrap_or_else(|e| panic!("{e}"));
    assert_only_cmdline_show_changed(&report, &output);

    let global = std::fs::read_to_string(&named).unwrap().replace(
        "+static inline void seq_puts_patchbay_note",
        "+void seq_puts_patchbay_note",
    );
    let global_patch = work.path().join("global.patch");
    std::fs::write(&global_patch, global).unwrap();
    let output = work.path().join("global.pbb");
    let err = build(&kernel, &request(global_patch, output.clone()))
        .expect_err("a definition every includer emits must be refused");
    assert_eq!(err.category(), Category::HeaderChange.as_str(), "{err}");
    assert!(
        err.to_string().contains("is defined without `static`"),
        "{err}"
    );
    assert!(!output.exists());
}
