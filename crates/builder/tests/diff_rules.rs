//! Diff-engine rules for what real kernel fixes contain, each on real gcc-12 objects of the
//! newest Debian kernel's own source, built all the way to a bundle (so symbol resolution, where
//! an ambiguous name would be refused, runs too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use object::{Object, ObjectSection, ObjectSymbol};
use patchbay_build::diff::elf::correlation_name;
use patchbay_build::diff::pipeline::{build, DiffBuild, DiffBuildReport};
use patchbay_kernels::{fetch_selector, Kernel, KernelSelector};

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/diffs")
        .join(rel)
}

/// Builds `diff` for `kernel`; returns the report and the extracted object of the first file.
fn build_fixture(kernel: &Kernel, diff: &str) -> (DiffBuildReport, Vec<u8>) {
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("out.pbb");
    let report = build(
        kernel,
        &DiffBuild {
            level: 1.try_into().unwrap(),
            fixes: Vec::new(),
            patches: vec![fixture(diff)],
            output: output.clone(),
            keep_work_dir: Some(work.path().join("work")),
            strip_level: None,
            header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
        },
    )
    .unwrap_or_else(|e| panic!("{diff}: {e}"));
    assert!(output.is_file());
    let extracted = std::fs::read(work.path().join("work/extracted0.o")).unwrap();
    (report, extracted)
}

/// (defined, undefined) symbol names of an object.
fn symbols(object: &[u8]) -> (Vec<String>, Vec<String>) {
    let file = object::File::parse(object).unwrap();
    let mut defined = Vec::new();
    let mut undefined = Vec::new();
    for symbol in file.symbols() {
        let name = symbol.name().unwrap().to_owned();
        if symbol.is_undefined() {
            undefined.push(name);
        } else {
            defined.push(name);
        }
    }
    (defined, undefined)
}

fn section_names(object: &[u8]) -> Vec<String> {
    object::File::parse(object)
        .unwrap()
        .sections()
        .map(|s| s.name().unwrap().to_owned())
        .collect()
}

/// A GCC clone (`__set_oom_adj.isra.0`) whose fix changes a `pr_warn_once` (an
/// `__already_done` special static, a name that repeats all over vmlinux): the clone is replaced itself (it has an ftrace
/// entry and its callers are unchanged) and the patch has its own `__print_once`.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn clone_is_replaced_and_special_statics_are_copied() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let (report, extracted) = build_fixture(&kernel, "oom-adj-clone-print-once.patch");
    let diff = &report.files[0].diff;
    assert_eq!(diff.changed_functions.len(), 1, "{diff:?}");
    let clone = &diff.changed_functions[0];
    assert_eq!(correlation_name(clone), "__set_oom_adj.isra", "{diff:?}");
    let replaced: Vec<&str> = report
        .module
        .manifest
        .replaced_functions
        .iter()
        .map(|f| f.function.as_str())
        .collect();
    assert_eq!(replaced, [clone.as_str()]);
    // pr_warn_once's `__already_done` lives in `.data.once`: the patch has its own copy of
    // the section and looks nothing of it up in vmlinux, where the name repeats.
    assert!(
        section_names(&extracted).iter().any(|s| s == ".data.once"),
        "{:?}",
        section_names(&extracted)
    );
    let (defined, undefined) = symbols(&extracted);
    assert!(
        !undefined
            .iter()
            .any(|n| correlation_name(n) == "__already_done"),
        "__already_done must not be looked up in vmlinux: {undefined:?}"
    );
    // The clone's cold part travels with it (it jumps back into the replacement).
    assert!(
        defined
            .iter()
            .any(|n| n.starts_with("__set_oom_adj.isra") && n.ends_with(".cold")),
        "{defined:?}"
    );
}

/// An exported function (`__account_locked_vm`, EXPORT_SYMBOL_GPL) whose fix adds a
/// WARN_ON_ONCE and changes a `pr_debug`: the export stays with the running kernel (no ksymtab
/// in the patch), the dynamic-debug descriptor and its jump entry are the patch's own.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn exported_function_with_pr_debug_keeps_its_export() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let (report, extracted) = build_fixture(&kernel, "locked-vm-export-dyndbg.patch");
    let diff = &report.files[0].diff;
    assert_eq!(diff.changed_functions, ["__account_locked_vm"], "{diff:?}");
    let sections = section_names(&extracted);
    assert!(
        !sections
            .iter()
            .any(|s| s.contains("ksymtab") || s.contains("kcrctab")),
        "{sections:?}"
    );
    assert!(sections.iter().any(|s| s == "__dyndbg"), "{sections:?}");
    assert!(sections.iter().any(|s| s == "__jump_table"), "{sections:?}");
    let (_, undefined) = symbols(&extracted);
    assert!(
        !undefined
            .iter()
            .any(|n| n.contains("ddebug") || correlation_name(n) == "descriptor"),
        "dynamic debug descriptors must be the patch's own: {undefined:?}"
    );
}

/// A fix touching `__init` code and a runtime function: the runtime function is patched, the
/// init part reported as not applied (it already ran).
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn init_changes_beside_runtime_changes_are_reported_not_applied() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let (report, _) = build_fixture(&kernel, "cmdline-init-and-runtime.patch");
    let diff = &report.files[0].diff;
    assert_eq!(diff.changed_functions, ["cmdline_proc_show"], "{diff:?}");
    assert_eq!(diff.changed_init, ["proc_cmdline_init"], "{diff:?}");
}

/// A header change the fix needs (a new inline helper in fs/proc/fd.h, used by fd.c): every
/// other object that includes the header (fs/proc/base.o) is recompiled and unchanged, so the
/// fix builds with fd.c alone. A header change that alters an object the diff does not patch
/// (an inline `proc_fd()` that fd.c's functions inline) patches that object too, as klp-build
/// does, and says so; the unaltered includer stays out.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn header_changes_patch_the_objects_they_alter_and_only_those() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let (report, _) = build_fixture(&kernel, "fd-header-new-helper.patch");
    assert_eq!(report.files.len(), 1);
    assert_eq!(report.files[0].source, "fs/proc/fd.c");
    assert_eq!(report.files[0].diff.changed_functions, ["seq_show"]);
    assert_eq!(report.files[0].altered_by, None);

    let (report, _) = build_fixture(&kernel, "header-changes-other-object.patch");
    let sources: Vec<&str> = report.files.iter().map(|f| f.source.as_str()).collect();
    assert!(sources.contains(&"fs/proc/fd.c"), "{sources:?}");
    assert!(!sources.contains(&"fs/proc/base.c"), "{sources:?}");
    for file in &report.files {
        assert_eq!(
            file.altered_by.as_deref(),
            Some("fs/proc/fd.h"),
            "{}",
            file.source
        );
        assert!(!file.diff.changed_functions.is_empty(), "{}", file.source);
    }
}

/// A module's fix with a `pr_debug` (binfmt_misc): the dynamic-debug descriptor and the jump
/// entry keyed on it are the patch's own, so no jump entry of the patch points into the module
/// or vmlinux through a livepatch relocation (which the loader could not honour in time).
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn module_pr_debug_sites_use_the_patch_s_own_descriptor() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let (report, extracted) = build_fixture(&kernel, "module-binfmt-misc.patch");
    assert_eq!(
        report.files[0].owner,
        patchbay_build::diff::objects::Owner::Module("binfmt_misc".parse().unwrap())
    );
    assert_eq!(report.files[0].diff.changed_functions, ["bm_status_read"]);
    let sections = section_names(&extracted);
    assert!(sections.iter().any(|s| s == "__dyndbg"), "{sections:?}");
    assert!(sections.iter().any(|s| s == "__jump_table"), "{sections:?}");
    let (_, undefined) = symbols(&extracted);
    assert!(
        !undefined.iter().any(|n| n.contains("ddebug")),
        "{undefined:?}"
    );
}

/// A module's function with a tracepoint (ocfs2_validate_inode_block, modelled on the fix of
/// CVE-2026-43075: one more validation of an on-disk inode, seven new lines): the tracepoint's
/// jump label and static call sites key on the module's own symbols, which a patch cannot
/// relocate before the loader uses the entries; they are left out (the tracepoint is inert in
/// the replacement, static calls go through their trampoline) and the patch builds. The
/// functions below it whose code differs only in the `__LINE__` of `mlog()` calls
/// (ocfs2_filecheck_*) are not replaced.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn module_tracepoint_sites_are_left_inert() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let (report, extracted) = build_fixture(&kernel, "module-ocfs2-tracepoint.patch");
    assert_eq!(
        report.files[0].owner,
        patchbay_build::diff::objects::Owner::Module("ocfs2".parse().unwrap())
    );
    assert_eq!(
        report.files[0].diff.changed_functions,
        ["ocfs2_validate_inode_block"]
    );
    let file = object::File::parse(&*extracted).unwrap();
    for name in ["__jump_table", ".static_call_sites"] {
        let Some(section) = file.section_by_name(name) else {
            continue;
        };
        for (_, relocation) in section.relocations() {
            let object::RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let key = file.symbol_by_index(index).unwrap().name().unwrap();
            assert!(
                !key.starts_with("__tracepoint_") && !key.starts_with("__SCK__"),
                "{name} still keys on {key}"
            );
        }
    }
}

/// amdgpu's display code lives in `../display/` and is built by amdgpu's Makefile (its include
/// paths come from there), and `bios_parser_get_gpio_pin_info` is a static function of both
/// `bios_parser.c` and `bios_parser2.c`: the object compiles through amdgpu's directory, its
/// home is amdgpu.ko, and the copy replaced is bios_parser2's (linked after bios_parser.o, so
/// position 2 by address), found from the object's block of the module's addresses.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn a_composite_part_built_from_another_directory_and_a_repeated_module_local() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let report = build(
        &kernel,
        &DiffBuild {
            level: 1.try_into().unwrap(),
            fixes: Vec::new(),
            patches: vec![fixture("module-amdgpu-composite-sympos.patch")],
            output: work.path().join("out.pbb"),
            keep_work_dir: Some(work.path().join("work")),
            strip_level: None,
            header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.files[0].owner,
        patchbay_build::diff::objects::Owner::Module("amdgpu".parse().unwrap())
    );
    let replaced = &report.module.manifest.replaced_functions;
    assert!(
        replaced.iter().any(|f| f.object.as_str() == "amdgpu"
            && f.function == "bios_parser_get_gpio_pin_info"
            && f.sympos == 2
            && f.replacement == "__patchbay_new__bios_parser_get_gpio_pin_info"),
        "{replaced:?}"
    );
}

/// Two modules' static functions of one name (hfs and hfsplus each have `hfs_bnode_split`),
/// both fixed: each gets its own replacement symbol in the one patch module, so the link does
/// not see the name twice, and each is replaced in its own module.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn same_named_functions_of_two_modules_get_their_own_replacements() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let (report, _) = build_fixture(&kernel, "modules-hfs-same-function-name.patch");
    let replaced = &report.module.manifest.replaced_functions;
    let mut objects: Vec<(&str, &str)> = replaced
        .iter()
        .map(|r| (r.object.as_str(), r.function.as_str()))
        .collect();
    objects.sort();
    assert_eq!(
        objects,
        [("hfs", "hfs_bnode_split"), ("hfsplus", "hfs_bnode_split")],
        "{replaced:?}"
    );
    assert_ne!(
        replaced[0].replacement, replaced[1].replacement,
        "{replaced:?}"
    );
}
