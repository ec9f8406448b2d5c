//! Diff mode on Debian 12's newest 6.12 kernel (IBT, call-depth tracking, rethunk; objtool runs
//! on the linked module only): real gcc-12 objects of the kernel's own source, built all the way
//! to a bundle. The objtool tables of the patch module are objtool's own for the module (never
//! copied from the kernel's objects), `__pfx_` symbols confuse nothing, static calls keep their
//! key, and taking the address of a function the running kernel sealed is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
use patchbay_build::diff::pipeline::{build, DiffBuild, DiffBuildError, DiffBuildReport};
use patchbay_build::diff::refusal::Category;
use patchbay_kernels::{fetch_selector, Kernel, KernelLine, KernelSelector};

fn kernel_6_12() -> Kernel {
    let line = KernelLine::choose(
        Some("6.12".parse().unwrap()),
        Some("12".parse().unwrap()),
        None,
    )
    .unwrap();
    fetch_selector(&KernelSelector::Newest(line)).unwrap()
}

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/diffs")
        .join(rel)
}

/// What one build left behind: the report, the extracted object, the module as kbuild linked
/// it (before the livepatch rewrite).
struct Built {
    report: DiffBuildReport,
    extracted: Vec<u8>,
    linked: Vec<u8>,
}

fn try_build(
    kernel: &Kernel,
    diff: &str,
    work: &std::path::Path,
) -> Result<DiffBuildReport, DiffBuildError> {
    build(
        kernel,
        &DiffBuild {
            level: 1.try_into().unwrap(),
            fixes: Vec::new(),
            patches: vec![fixture(diff)],
            output: work.join("out.pbb"),
            keep_work_dir: Some(work.join("work")),
            strip_level: None,
            header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
        },
    )
}

fn build_fixture(kernel: &Kernel, diff: &str) -> Built {
    let work = tempfile::tempdir().unwrap();
    let report = try_build(kernel, diff, work.path()).unwrap_or_else(|e| panic!("{diff}: {e}"));
    assert!(work.path().join("out.pbb").is_file());
    let extracted = std::fs::read(work.path().join("work/extracted0.o")).unwrap();
    let ko = std::fs::read_dir(work.path().join("work/module"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "ko"))
        .unwrap();
    let linked = std::fs::read(ko).unwrap();
    Built {
        report,
        extracted,
        linked,
    }
}

fn section_names(object: &[u8]) -> Vec<String> {
    object::File::parse(object)
        .unwrap()
        .sections()
        .map(|s| s.name().unwrap().to_owned())
        .collect()
}

fn symbol_names(object: &[u8]) -> Vec<String> {
    object::File::parse(object)
        .unwrap()
        .symbols()
        .map(|s| s.name().unwrap().to_owned())
        .collect()
}

/// The names of the sections (through section symbols) or symbols a section's relocations
/// point at.
fn relocation_targets(object: &[u8], section: &str) -> Vec<String> {
    let file = object::File::parse(object).unwrap();
    let section = file.section_by_name(section).unwrap();
    section
        .relocations()
        .map(|(_, r)| match r.target() {
            RelocationTarget::Symbol(i) => {
                let symbol = file.symbol_by_index(i).unwrap();
                match symbol.section_index() {
                    Some(s) if symbol.kind() == object::SymbolKind::Section => {
                        file.section_by_index(s).unwrap().name().unwrap().to_owned()
                    }
                    _ => symbol.name().unwrap().to_owned(),
                }
            }
            other => format!("{other:?}"),
        })
        .collect()
}

const OBJTOOL_TABLES: &[&str] = &[
    ".return_sites",
    ".retpoline_sites",
    ".call_sites",
    ".ibt_endbr_seal",
    ".orc_unwind",
    ".orc_unwind_ip",
    ".orc_header",
    ".static_call_sites",
];

/// The extracted object carries no objtool output; the module has objtool's, made for it.
fn assert_objtool_tables_are_the_module_s(built: &Built) {
    let extracted = section_names(&built.extracted);
    for table in OBJTOOL_TABLES {
        assert!(
            !extracted.iter().any(|s| s == table),
            "{table} copied into the extracted object: {extracted:?}"
        );
    }
    assert!(
        !extracted
            .iter()
            .any(|s| s == "__patchable_function_entries"),
        "{extracted:?}"
    );
    assert!(
        !symbol_names(&built.extracted)
            .iter()
            .any(|s| s.starts_with("__pfx_")),
        "__pfx_ symbols in the extracted object"
    );
    let linked = section_names(&built.linked);
    for table in [
        ".return_sites",
        ".call_sites",
        ".orc_unwind_ip",
        ".orc_header",
    ] {
        assert!(
            linked.iter().any(|s| s == table),
            "objtool made no {table} for the module: {linked:?}"
        );
    }
    // objtool's returns include the replacement's own.
    for replaced in &built.report.module.manifest.replaced_functions {
        let new = &replaced.replacement;
        assert!(!replaced.function.starts_with("__pfx_"), "{replaced:?}");
        let symbols = symbol_names(&built.linked);
        assert!(symbols.contains(new), "{new} not in {symbols:?}");
        assert!(
            symbols.contains(&format!("__pfx_{new}")),
            "objtool made no __pfx_ for {new}"
        );
    }
}

/// A change in `cmdline_proc_show`: objtool's tables are made for the module, the replacement
/// is named after the function, never after its `__pfx_`.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn cmdline_change_gets_objtool_tables_made_for_the_module() {
    let kernel = kernel_6_12();
    let built = build_fixture(&kernel, "cmdline-string.patch");
    let diff = &built.report.files[0].diff;
    assert_eq!(diff.changed_functions, ["cmdline_proc_show"], "{diff:?}");
    assert!(diff.new_functions.is_empty(), "{diff:?}");
    assert_objtool_tables_are_the_module_s(&built);
    let returns = relocation_targets(&built.linked, ".return_sites");
    assert!(
        returns.iter().any(|s| s == ".text.cmdline_proc_show"),
        "{returns:?}"
    );
}

/// A new global helper only called directly has `ENDBR64`: objtool seals it in the module (its
/// `.ibt_endbr_seal` is the module's), while the replacement, referenced from the `klp_func`
/// table, keeps its own.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn a_directly_called_new_function_is_sealed_by_the_module_s_objtool() {
    let kernel = kernel_6_12();
    let built = build_fixture(&kernel, "ibt-cmdline-global-helper.patch");
    let diff = &built.report.files[0].diff;
    assert_eq!(diff.changed_functions, ["cmdline_proc_show"], "{diff:?}");
    assert_eq!(diff.new_functions, ["pb_ibt_helper"], "{diff:?}");
    assert_objtool_tables_are_the_module_s(&built);
    let sealed = relocation_targets(&built.linked, ".ibt_endbr_seal");
    assert_eq!(sealed, [".text.pb_ibt_helper"]);
}

/// A change in a function with a tracepoint (a static call through `__SCT__tp_func_*`): the
/// key stays as an undefined symbol, so objtool's `.static_call_sites` for the module names
/// the key and not the trampoline.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn static_call_site_names_its_key() {
    let kernel = kernel_6_12();
    let built = build_fixture(&kernel, "ibt-itimer-tracepoint.patch");
    let diff = &built.report.files[0].diff;
    assert_eq!(diff.changed_functions, ["it_real_fn"], "{diff:?}");
    assert_objtool_tables_are_the_module_s(&built);
    let keys = relocation_targets(&built.linked, ".static_call_sites");
    assert!(
        keys.iter().any(|s| s == "__SCK__tp_func_itimer_expire"),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|s| s.starts_with("__SCT__")),
        "a site names the trampoline: {keys:?}"
    );
}

/// `validate_prctl_map_addr` reads `TASK_SIZE` through an alternative: its entry (14 bytes in
/// 6.12, `ft_flags`) and replacement are carried, the other function's entry is not.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn alternatives_use_the_6_12_entry_size() {
    let kernel = kernel_6_12();
    let built = build_fixture(&kernel, "ibt-prctl-alternative.patch");
    let diff = &built.report.files[0].diff;
    assert_eq!(
        diff.changed_functions,
        ["validate_prctl_map_addr"],
        "{diff:?}"
    );
    assert_objtool_tables_are_the_module_s(&built);
    let file = object::File::parse(&*built.extracted).unwrap();
    let alt = file.section_by_name(".altinstructions").unwrap();
    assert_eq!(alt.size(), 14);
    assert_eq!(
        relocation_targets(&built.extracted, ".altinstructions"),
        [".text.validate_prctl_map_addr", ".altinstr_replacement"]
    );
    assert!(file.section_by_name(".parainstructions").is_none());
    let linked = object::File::parse(&*built.linked).unwrap();
    assert_eq!(
        linked.section_by_name(".altinstructions").unwrap().size(),
        14
    );
}

/// Rule fixtures written for 6.1 that apply to 6.12 too build on 6.12.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn rule_fixtures_that_apply_build_on_6_12() {
    let kernel = kernel_6_12();
    for diff in [
        "cmdline-new-static.patch",
        "cmdline-static-local.patch",
        "cmdline-warn-atomic.patch",
        "locked-vm-export-dyndbg.patch",
        "oom-adj-clone-print-once.patch",
    ] {
        let built = build_fixture(&kernel, diff);
        assert_objtool_tables_are_the_module_s(&built);
        assert_cold_parts_have_their_parent(&built.extracted);
        assert_cold_parts_have_their_parent(&built.linked);
    }
}

/// Debian 13's newest 6.12 (gcc-14, compiled in a Debian 13 build root).
fn kernel_6_12_debian13() -> Kernel {
    let line = KernelLine::choose(
        Some("6.12".parse().unwrap()),
        Some("13".parse().unwrap()),
        None,
    )
    .unwrap();
    fetch_selector(&KernelSelector::Newest(line)).unwrap()
}

/// The function symbols of an object whose names have a `.cold` part (`foo.cold`,
/// `foo.isra.0.cold.3`), with the name objtool looks their parent up by: the name up to
/// `.cold`.
fn cold_parts(object: &[u8]) -> Vec<(String, String)> {
    object::File::parse(object)
        .unwrap()
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text)
        .filter_map(|s| {
            let name = s.name().unwrap();
            let index = name.find(".cold")?;
            Some((name.to_owned(), name[..index].to_owned()))
        })
        .collect()
}

/// Every `.cold` part has a function symbol named `<parent>` beside it, as objtool requires
/// ("can't find parent function" otherwise).
fn assert_cold_parts_have_their_parent(object: &[u8]) -> Vec<(String, String)> {
    let file = object::File::parse(object).unwrap();
    let functions: Vec<String> = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition())
        .map(|s| s.name().unwrap().to_owned())
        .collect();
    let cold = cold_parts(object);
    for (part, parent) in &cold {
        assert!(
            functions.contains(parent),
            "{part}: no function {parent} in {functions:?}"
        );
    }
    cold
}

/// gcc-14 splits the cold blocks of the `pr_warn_once` in `__set_oom_adj.isra.0` into
/// `__set_oom_adj.isra.0.cold`: the replacement is `__patchbay_new__…`, and its cold part is
/// named after it, so the module's objtool run finds the cold part's parent.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn cold_part_follows_its_replaced_parent_on_debian13() {
    let kernel = kernel_6_12_debian13();
    let built = build_fixture(&kernel, "oom-adj-clone-print-once.patch");
    let replaced = &built.report.module.manifest.replaced_functions;
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    let replacement = &replaced[0].replacement;
    assert!(
        replacement.starts_with(patchbay_build::diff::extract::NEW_FUNCTION_PREFIX),
        "{replaced:?}"
    );
    assert_objtool_tables_are_the_module_s(&built);
    for object in [&built.extracted, &built.linked] {
        let cold = assert_cold_parts_have_their_parent(object);
        assert!(
            cold.iter().any(|(_, parent)| parent == replacement),
            "no cold part of {replacement}: {cold:?}"
        );
        // No part keeps the patched object's name of a renamed parent.
        assert!(
            !cold
                .iter()
                .any(|(part, _)| part.starts_with("__set_oom_adj")),
            "{cold:?}"
        );
    }
}

/// The rule fixtures build on Debian 13's 6.12 too, every `.cold` part beside its parent.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn rule_fixtures_that_apply_build_on_debian13() {
    let kernel = kernel_6_12_debian13();
    for diff in [
        "cmdline-new-static.patch",
        "cmdline-static-local.patch",
        "cmdline-warn-atomic.patch",
        "locked-vm-export-dyndbg.patch",
    ] {
        let built = build_fixture(&kernel, diff);
        assert_objtool_tables_are_the_module_s(&built);
        assert_cold_parts_have_their_parent(&built.extracted);
        assert_cold_parts_have_their_parent(&built.linked);
    }
}

/// Taking the address of `kill_pid_info`, which Debian's 6.12 seals at boot: refused before
/// anything is built.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn address_of_a_sealed_function_is_refused() {
    let kernel = kernel_6_12();
    let work = tempfile::tempdir().unwrap();
    let err = try_build(&kernel, "refuse-ibt-sealed-address.patch", work.path()).unwrap_err();
    let refusals = err.refusals();
    assert_eq!(refusals.len(), 1, "{err}");
    assert_eq!(
        refusals[0].category,
        Category::SealedFunctionAddress,
        "{err}"
    );
    assert_eq!(
        refusals[0].function.as_deref(),
        Some("kill_pid_info"),
        "{err}"
    );
    assert!(refusals[0].reason.contains("sealed"), "{err}");
    assert!(!work.path().join("out.pbb").exists());
}

/// A module's tracepoint (ocfs2): its static call trampoline is the module's own and is named
/// per module in the patch, so objtool sees no static call there (the kept code calls through
/// the trampoline, which follows its key) and no site names a key of the module; the module's
/// `.ko.xz` is read for its symbols.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn module_tracepoint_calls_go_through_the_module_s_trampoline() {
    let kernel = kernel_6_12();
    let built = build_fixture(&kernel, "module-ocfs2-tracepoint.patch");
    assert_eq!(
        built.report.files[0].owner,
        patchbay_build::diff::objects::Owner::Module("ocfs2".parse().unwrap())
    );
    assert_eq!(
        built.report.files[0].diff.changed_functions,
        ["ocfs2_validate_inode_block"]
    );
    assert_objtool_tables_are_the_module_s(&built);
    // A trampoline exported with EXPORT_STATIC_CALL_TRAMP (`preempt_schedule_notrace`, which
    // `static_call_mod()` calls without naming the key) is a key the loader maps itself, as for
    // any module.
    let symvers = std::fs::read_to_string(kernel.module_symvers()).unwrap();
    let exported = |name: &str| symvers.lines().any(|l| l.split('\t').nth(1) == Some(name));
    let file = object::File::parse(&*built.linked).unwrap();
    for name in ["__jump_table", ".static_call_sites"] {
        if file.section_by_name(name).is_none() {
            continue;
        }
        for key in relocation_targets(&built.linked, name) {
            assert!(
                !key.starts_with("__tracepoint_") && !key.starts_with("__SCK__"),
                "{name} keys on {key}"
            );
            assert!(
                !key.starts_with("__SCT__") || exported(&key),
                "{name} keys on the unexported trampoline {key}"
            );
        }
    }
}

/// A module's tracepoint site in kept code (`trace_f2fs_iget*` in `f2fs_iget`): gcc left a
/// `jmp` for objtool's jump_label hack, and the module's objtool run sees it only through a
/// `__jump_table` entry. The entry is kept, keyed on the patch's own never-enabled key (not the
/// module's `__tracepoint_*`), so the build passes objtool and every such site is a NOP in the
/// module: the tracepoint is inert.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn module_tracepoint_sites_are_nops_keyed_on_the_patch_s_inert_key() {
    let kernel = kernel_6_12();
    let built = build_fixture(&kernel, "module-f2fs-tracepoint-site.patch");
    assert_eq!(
        built.report.files[0].owner,
        patchbay_build::diff::objects::Owner::Module("f2fs".parse().unwrap())
    );
    assert_eq!(built.report.files[0].diff.changed_functions, ["f2fs_iget"]);
    let file = object::File::parse(&*built.linked).unwrap();
    let table = file.section_by_name("__jump_table").unwrap();
    let mut inert_sites = 0;
    for (offset, reloc) in table.relocations() {
        // `struct jump_entry { s32 code; s32 target; long key; }`: the key of the entry whose
        // code field is at `offset`.
        if offset % 16 != 0 {
            continue;
        }
        let key = table
            .relocations()
            .find(|(o, _)| *o == offset + 8)
            .map(|(_, r)| r)
            .unwrap();
        let RelocationTarget::Symbol(key_symbol) = key.target() else {
            panic!("key relocation at {offset:#x} has no symbol");
        };
        let key_name = file.symbol_by_index(key_symbol).unwrap().name().unwrap();
        assert!(
            !key_name.starts_with("__tracepoint_"),
            "keyed on {key_name}"
        );
        if key_name != patchbay_build::diff::extract::INERT_KEY {
            continue;
        }
        assert_eq!(key.addend() & 3, 2, "branch bits of the inert site");
        let RelocationTarget::Symbol(code_symbol) = reloc.target() else {
            panic!("code relocation at {offset:#x} has no symbol");
        };
        let code = file.symbol_by_index(code_symbol).unwrap();
        let section = file
            .section_by_index(code.section_index().unwrap())
            .unwrap();
        let site = usize::try_from(code.address() as i64 + reloc.addend()).unwrap();
        let bytes = &section.data().unwrap()[site..];
        assert!(
            bytes.starts_with(&[0x66, 0x90]) || bytes.starts_with(&[0x0f, 0x1f, 0x44, 0x00, 0x00]),
            "{} + {site:#x} is not a NOP: {:02x?}",
            section.name().unwrap(),
            &bytes[..5]
        );
        inert_sites += 1;
    }
    assert!(inert_sites >= 2, "{inert_sites} inert tracepoint sites");
}

/// A changed function that init-time data points at (an ops template in `__initdata`, copied
/// into place when the module initialised): the pointer copies reach the replacement through
/// ftrace, so the template is not carried and the function is replaced.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn function_in_an_init_data_ops_template_is_replaced() {
    let kernel = kernel_6_12();
    let built = build_fixture(&kernel, "module-kvm-initdata-ops-changed.patch");
    let diff = &built.report.files[0].diff;
    assert_eq!(diff.changed_functions, ["intel_is_valid_msr"], "{diff:?}");
    assert!(
        !section_names(&built.extracted)
            .iter()
            .any(|s| s.starts_with(".init")),
        "init-time data carried: {:?}",
        section_names(&built.extracted)
    );
}

/// A new function the fix puts into init-time data would never be installed: refused as
/// init-only, naming the function and the section, and nothing is written.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn new_function_in_init_data_is_refused() {
    let kernel = kernel_6_12();
    let work = tempfile::tempdir().unwrap();
    let err = try_build(
        &kernel,
        "refuse-module-kvm-initdata-new-op.patch",
        work.path(),
    )
    .unwrap_err();
    let refusals = err.refusals();
    assert_eq!(refusals.len(), 1, "{err}");
    assert_eq!(refusals[0].category, Category::InitOnly, "{err}");
    assert_eq!(
        refusals[0].function.as_deref(),
        Some("intel_check_rdpmc_early"),
        "{err}"
    );
    assert!(refusals[0].reason.contains(".init.data"), "{err}");
    assert!(!work.path().join("out.pbb").exists());
}
