//! Source mode against the newest real Debian 6.1 kernel: what the builder refuses (with an
//! error that names the symbol) and the `sympos` variant for duplicate local function names.
//! Loading the modules is covered by the QEMU tests in `crates/e2e`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use patchbay_build::module_build::{build, ModuleBuild, SourceBuild};
use patchbay_kernels::{fetch_selector, Kernel, KernelSelector, SymbolTable};

fn newest() -> Kernel {
    fetch_selector(&KernelSelector::newest()).unwrap()
}

fn request(dir: &Path, source: &str) -> SourceBuild {
    let path = dir.join("fix.c");
    std::fs::write(&path, source).unwrap();
    SourceBuild {
        sources: vec![path],
        module: ModuleBuild {
            level: "1".parse().unwrap(),
            fixes: Vec::new(),
            extra_objects: Vec::new(),
            symbols_override: None,
            output: dir.join("out.pbb"),
            keep_work_dir: None,
        },
    }
}

/// Names of local symbols of `kind` (`t`, `d`, `b`) defined exactly twice in vmlinux, read from
/// the kernel itself so the test follows Debian's updates.
fn duplicated(kernel: &Kernel, kind: char) -> String {
    let table = SymbolTable::load(&kernel.system_map().unwrap()).unwrap();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for symbol in table.iter() {
        if symbol.entry.kind == kind && !symbol.name.contains('.') && symbol.module.is_none() {
            *counts.entry(symbol.name.to_owned()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .find(|(_, n)| *n == 2)
        .map(|(name, _)| name)
        .unwrap_or_else(|| panic!("no local '{kind}' symbol defined twice"))
}

fn build_err(kernel: &Kernel, req: &SourceBuild) -> String {
    let err = build(kernel, req).expect_err("the build must be refused");
    assert!(
        !req.module.output.exists(),
        "a refused build left {}",
        req.module.output.display()
    );
    format!("{err:#}")
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn unknown_and_ambiguous_symbols_are_refused_by_name() {
    let kernel = newest();
    let dir = tempfile::tempdir().unwrap();
    let variable = duplicated(&kernel, 'd');
    let source = format!(
        "#include <linux/seq_file.h>\n#include <patchbay.h>\n\
         extern int {variable};\nextern int patchbay_no_such_symbol;\n\
         static int pb_show(struct seq_file *m, void *v)\n\
         {{ seq_printf(m, \"%d %d\\n\", {variable}, patchbay_no_such_symbol); return 0; }}\n\
         PATCHBAY_REPLACE(vmlinux, cmdline_proc_show, pb_show);\n"
    );
    let err = build_err(&kernel, &request(dir.path(), &source));
    assert!(err.contains("patchbay_no_such_symbol"), "{err}");
    assert!(err.contains(&variable), "{err}");
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn unknown_old_function_is_refused() {
    let kernel = newest();
    let dir = tempfile::tempdir().unwrap();
    let source = "#include <patchbay.h>\nstatic int pb_new(void) { return 0; }\n\
                  PATCHBAY_REPLACE(vmlinux, patchbay_no_such_function, pb_new);\n";
    let err = build_err(&kernel, &request(dir.path(), source));
    assert!(err.contains("patchbay_no_such_function"), "{err}");
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn duplicate_local_function_needs_sympos() {
    let kernel = newest();
    let function = duplicated(&kernel, 't');
    let dir = tempfile::tempdir().unwrap();
    let body = "static void pb_new(void) { }\n";
    let plain =
        format!("#include <patchbay.h>\n{body}PATCHBAY_REPLACE(vmlinux, {function}, pb_new);\n");
    let err = build_err(&kernel, &request(dir.path(), &plain));
    assert!(err.contains(&function), "{err}");
    assert!(
        err.contains("PATCHBAY_REPLACE_SYMPOS"),
        "the error should say how to choose: {err}"
    );

    let positioned = format!(
        "#include <patchbay.h>\n{body}PATCHBAY_REPLACE_SYMPOS(vmlinux, {function}, pb_new, 2);\n"
    );
    let req = request(dir.path(), &positioned);
    let report = build(&kernel, &req).unwrap();
    let replaced = &report.manifest.replaced_functions;
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].function, function);
    assert_eq!(replaced[0].sympos, 2);
    assert!(req.module.output.is_file());
}
