//! Decides how every symbol a patch module references gets resolved in the running kernel:
//! exported symbols by the module loader (normal relocations), everything else by livepatch
//! (`.klp.sym.<object>.<name>,<sympos>`), and nothing ambiguous at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use patchbay_core::ObjectName;
use patchbay_kernels::SymbolTable;

use crate::klp_elf::KlpTarget;
use crate::markers::Marker;

/// Symbols exported to modules, from a kernel's `Module.symvers`.
#[derive(Debug, Default)]
pub struct Exports(BTreeMap<String, String>);

impl Exports {
    /// Parses `Module.symvers`: `<crc>\t<symbol>\t<module>\t<export type>[\t<namespace>]`.
    pub fn parse(text: &str) -> Exports {
        Exports(
            text.lines()
                .filter_map(|line| {
                    let mut fields = line.split('\t');
                    let symbol = fields.nth(1)?;
                    let module = fields.next().unwrap_or("vmlinux");
                    Some((symbol.to_owned(), exporter_name(module)))
                })
                .collect(),
        )
    }

    /// Whether modules may link against `name` directly.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The object that exports `name`: `vmlinux`, or a module name as the kernel spells it.
    pub fn exporter(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Number of exported symbols.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is exported (a wrong or empty file).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `fs/jbd2/jbd2` → `jbd2`; `vmlinux` stays; `-` becomes `_` as the kernel spells modules.
fn exporter_name(module_path: &str) -> String {
    module_path
        .rsplit('/')
        .next()
        .unwrap_or(module_path)
        .replace('-', "_")
}

/// What the diff pipeline knows of the patch's references beyond their names: which copy of a
/// repeated name each one means. Source mode knows none of it (`Default`): its author names
/// only what resolves uniquely.
#[derive(Debug, Clone, Default)]
pub struct ResolutionHints {
    /// For local vmlinux symbols whose name repeats: the source file (base name) the patch
    /// means, resolved to a position through [`SymbolSources::symbol_files`].
    pub file_hints: BTreeMap<String, String>,
    /// Local symbols of a module's translation unit: resolved in that module only, even when
    /// vmlinux or another module has the same name.
    pub module_locals: BTreeMap<String, ObjectName>,
    /// For module locals whose name the module repeats: the position of the copy meant (see
    /// [`module_sympos`]).
    pub module_local_positions: BTreeMap<String, u32>,
    /// Undefined names the diff pipeline gave to references from a patched module's code
    /// (another module's exports, the module's own locals), with the livepatch symbol each
    /// stands for: one name per patched module, so that objects never mix them up.
    pub renamed_references: BTreeMap<String, KlpTarget>,
}

/// Where non-exported symbols can be found: vmlinux, and the modules the patch touches.
#[derive(Debug)]
pub struct SymbolSources<'a> {
    /// The core kernel's symbols (System.map, or a host's kallsyms).
    pub vmlinux: &'a SymbolTable,
    /// The symbol tables of the modules the patch replaces functions of (and extra objects).
    pub modules: Vec<(ObjectName, &'a SymbolTable)>,
    /// The kernel's symbol-to-source-file index, loaded only when a file hint needs it.
    pub symbol_files: Option<&'a patchbay_kernels::SymbolFiles>,
    /// Which copy of a repeated name the patch means.
    pub hints: &'a ResolutionHints,
}

impl SymbolSources<'_> {
    fn table(&self, object: &ObjectName) -> Option<&SymbolTable> {
        if object.is_vmlinux() {
            return Some(self.vmlinux);
        }
        self.modules
            .iter()
            .find(|(name, _)| name == object)
            .map(|(_, table)| *table)
    }

    fn objects(&self) -> impl Iterator<Item = (ObjectName, &SymbolTable)> {
        std::iter::once((ObjectName::vmlinux(), self.vmlinux)).chain(
            self.modules
                .iter()
                .map(|(name, table)| (name.clone(), *table)),
        )
    }
}

/// The position of the vmlinux symbol `name` from the file the patch's hints name.
pub fn hinted_position(sources: &SymbolSources<'_>, name: &str) -> Option<u32> {
    let file = sources.hints.file_hints.get(name)?;
    sources.symbol_files?.sympos(sources.vmlinux, name, file)
}

/// The livepatch position of the local function `name` that a module repeats (two `static`
/// functions of one name in two of its files), for the copy compiled from the object that
/// defines `object_functions`.
///
/// A linked module keeps each object's functions together, in one block of addresses: the
/// right copy is the one whose run of neighbours (by address) that the object also defines is
/// the longest, by a clear margin, covering at least half of the object's functions. `None`
/// when no copy stands out so (the author names the position).
pub fn module_sympos(
    module: &SymbolTable,
    name: &str,
    object_functions: &std::collections::BTreeSet<String>,
) -> Option<u32> {
    let mut functions: Vec<(u64, &str, u32)> = module
        .iter()
        .filter(|s| s.module.is_none() && matches!(s.entry.kind, 't' | 'T' | 'w' | 'W'))
        // 6.12's `__pfx_foo` sits right before each `foo`: not a function of any object.
        .filter(|s| !crate::diff::elf::is_prefix_symbol(s.name))
        .map(|s| (s.entry.address, s.name, s.entry.position))
        .collect();
    functions.sort_unstable();
    let in_object = |i: usize| {
        functions
            .get(i)
            .is_some_and(|(_, n, _)| object_functions.contains(*n))
    };
    let mut runs: Vec<(usize, u32)> = Vec::new();
    for (i, (_, n, position)) in functions.iter().enumerate() {
        if *n != name {
            continue;
        }
        let mut low = i;
        while low > 0 && in_object(low - 1) {
            low -= 1;
        }
        let mut high = i;
        while in_object(high + 1) {
            high += 1;
        }
        runs.push((high - low + 1, *position));
    }
    runs.sort_unstable_by(|a, b| b.cmp(a));
    let (best, position) = *runs.first()?;
    let second = runs.get(1).map_or(0, |r| r.0);
    (best > second * 2 && best * 2 >= object_functions.len()).then_some(position)
}

/// Symbols that cannot be resolved safely, all listed at once so the author fixes them in one go.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SymbolError(String);

/// Checks that each marker's old function exists in its object, exactly once unless a
/// position was given.
pub fn check_old_functions(
    markers: &[Marker],
    sources: &SymbolSources<'_>,
) -> Result<(), SymbolError> {
    let mut problems = String::new();
    for m in markers {
        let Some(table) = sources.table(&m.object) else {
            let _ = writeln!(
                problems,
                "- {}: no symbol table for object {} (is it a module of this kernel?)",
                m.old_function, m.object
            );
            continue;
        };
        let found = table.lookup(&m.old_function);
        let functions: Vec<_> = found
            .iter()
            .filter(|e| matches!(e.kind, 't' | 'T' | 'W' | 'w'))
            .collect();
        match (functions.len(), m.sympos) {
            (0, _) => {
                let _ = writeln!(
                    problems,
                    "- {}: no function of that name in {} (check the name against the kernel's source; \
                     inlined functions cannot be patched, patch their caller)",
                    m.old_function, m.object
                );
            }
            (1, 0) => {}
            (n, 0) => {
                let _ = writeln!(
                    problems,
                    "- {}: {n} local functions of that name in {}; say which one with \
                     PATCHBAY_REPLACE_SYMPOS({}, {}, {}, <1..{n}>) (positions by address: {})",
                    m.old_function,
                    m.object,
                    m.object,
                    m.old_function,
                    m.new_function,
                    describe(&functions)
                );
            }
            (n, pos) if pos as usize > n => {
                let _ = writeln!(
                    problems,
                    "- {}: position {pos} asked, but {} has only {n} function(s) of that name",
                    m.old_function, m.object
                );
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SymbolError(format!(
            "the functions to replace are not found uniquely in the target kernel:\n{problems}"
        )))
    }
}

/// Maps every undefined symbol of the linked module that the kernel does not export to the
/// livepatch symbol that resolves it. Refuses names that are missing or ambiguous.
pub fn resolve_undefined(
    undefined: &[String],
    exports: &Exports,
    sources: &SymbolSources<'_>,
) -> Result<BTreeMap<String, KlpTarget>, SymbolError> {
    let mut targets = BTreeMap::new();
    let mut problems = String::new();
    // The patched modules: code replacing one of their functions may call another module's
    // exports only through that module's symbols resolved when the patched module loads.
    let patched_modules: Vec<&ObjectName> = sources
        .modules
        .iter()
        .map(|(object, _)| object)
        .filter(|o| !o.is_vmlinux())
        .collect();
    for name in undefined {
        if let Some(target) = sources.hints.renamed_references.get(name) {
            targets.insert(name.clone(), target.clone());
            continue;
        }
        if let Some(exporter) = exports.exporter(name) {
            // A module's export used by a patched module's code: an ordinary reference would
            // make the patch depend on that module, and the patch could not load before it
            // (`finit_module` fails with ENOENT on a host that has not loaded it). As a
            // livepatch symbol of the exporting module, in the patched module's relocation
            // section, it is resolved when the patched module loads, which loads its
            // dependencies first.
            let exporter_is_patched = patched_modules.iter().any(|o| o.as_str() == exporter);
            let relocated_in = match (exporter, patched_modules.as_slice()) {
                ("vmlinux", _) => None,
                (_, _) if exporter_is_patched => Some(None),
                (_, [only]) => Some(Some(only.to_string())),
                _ => None,
            };
            if let Some(relocated_in) = relocated_in {
                targets.insert(
                    name.clone(),
                    KlpTarget {
                        object: exporter.to_owned(),
                        symbol: name.clone(),
                        sympos: 0,
                        relocated_in,
                    },
                );
            }
            continue;
        }
        // A module's own static symbol is that module's, whatever else shares its name; a
        // local of vmlinux code (it has a file hint) is vmlinux's.
        let vmlinux_local = ObjectName::vmlinux();
        let own_module = sources.hints.module_locals.get(name).or_else(|| {
            sources
                .hints
                .file_hints
                .contains_key(name)
                .then_some(&vmlinux_local)
        });
        let holders: Vec<(ObjectName, usize)> = sources
            .objects()
            .filter(|(object, _)| own_module.is_none_or(|own| own == object))
            .map(|(object, table)| (object, table.lookup(name).len()))
            .filter(|(_, count)| *count > 0)
            .collect();
        match holders.as_slice() {
            [] => {
                let _ = writeln!(
                    problems,
                    "- {name}: not exported and not in the symbol table of {}; \
                     check the spelling, or the symbol was inlined or optimised away",
                    sources
                        .objects()
                        .map(|(o, _)| o.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            [(object, 1)] => {
                targets.insert(
                    name.clone(),
                    KlpTarget {
                        object: object.to_string(),
                        symbol: name.clone(),
                        sympos: 0,
                        relocated_in: None,
                    },
                );
            }
            [(object, _)] if object.is_vmlinux() && hinted_position(sources, name).is_some() => {
                targets.insert(
                    name.clone(),
                    KlpTarget {
                        object: object.to_string(),
                        symbol: name.clone(),
                        sympos: hinted_position(sources, name).unwrap_or(0),
                        relocated_in: None,
                    },
                );
            }
            [(object, _)]
                if !object.is_vmlinux()
                    && sources.hints.module_local_positions.contains_key(name) =>
            {
                targets.insert(
                    name.clone(),
                    KlpTarget {
                        object: object.to_string(),
                        symbol: name.clone(),
                        sympos: sources
                            .hints
                            .module_local_positions
                            .get(name)
                            .copied()
                            .unwrap_or(0),
                        relocated_in: None,
                    },
                );
            }
            [(object, n)] => {
                let _ = writeln!(
                    problems,
                    "- {name}: {n} local symbols of that name in {object} ({}); a reference cannot \
                     say which one: call it through a uniquely named symbol instead",
                    describe(&sources.table(object).map(|t| t.lookup(name)).unwrap_or_default().iter().collect::<Vec<_>>())
                );
            }
            several => {
                let _ = writeln!(
                    problems,
                    "- {name}: defined in several objects ({}); a reference cannot say which one",
                    several
                        .iter()
                        .map(|(o, _)| o.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(targets)
    } else {
        Err(SymbolError(format!(
            "the patch references kernel symbols that cannot be resolved uniquely:\n{problems}"
        )))
    }
}

fn describe(entries: &[&patchbay_kernels::SymbolEntry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}: {:#x} {}", e.position, e.address, e.kind))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81100000 t cmdline_proc_show
ffffffff81200000 t dup_helper
ffffffff81300000 t dup_helper
ffffffff82000000 D saved_command_line
ffffffff82000100 D printk_like
";

    fn tables() -> (SymbolTable, SymbolTable) {
        let vmlinux = SymbolTable::parse(MAP).unwrap();
        let module = SymbolTable::parse(
            "0000000000000010 t pb_fixture_show\n0000000000000020 d saved_command_line\n",
        )
        .unwrap();
        (vmlinux, module)
    }

    #[test]
    fn exported_symbols_stay_normal_and_others_become_klp_symbols() {
        let (vmlinux, _) = tables();
        let sources = SymbolSources {
            vmlinux: &vmlinux,
            modules: vec![],
            symbol_files: None,
            hints: &ResolutionHints::default(),
        };
        let exports = Exports::parse("0x1234abcd\tprintk_like\tvmlinux\tEXPORT_SYMBOL\t\n");
        assert_eq!(exports.len(), 1);
        let undefined = vec!["printk_like".to_owned(), "saved_command_line".to_owned()];
        let targets = resolve_undefined(&undefined, &exports, &sources).unwrap();
        assert_eq!(targets.len(), 1);
        let t = &targets["saved_command_line"];
        assert_eq!((t.object.as_str(), t.sympos), ("vmlinux", 0));
    }

    #[test]
    fn missing_ambiguous_and_multi_object_symbols_are_refused_together() {
        let (vmlinux, module) = tables();
        let sources = SymbolSources {
            vmlinux: &vmlinux,
            modules: vec![("pb_fixture".parse().unwrap(), &module)],
            symbol_files: None,
            hints: &ResolutionHints::default(),
        };
        let undefined = vec![
            "no_such_symbol".to_owned(),
            "dup_helper".to_owned(),
            "saved_command_line".to_owned(),
        ];
        let err = resolve_undefined(&undefined, &Exports::default(), &sources)
            .unwrap_err()
            .to_string();
        assert!(err.contains("- no_such_symbol: not exported"), "{err}");
        assert!(err.contains("- dup_helper: 2 local symbols"), "{err}");
        assert!(
            err.contains("- saved_command_line: defined in several objects (vmlinux, pb_fixture)"),
            "{err}"
        );

        // The same name as a static symbol of the module's own translation unit: the module's.
        let own_hints = ResolutionHints {
            module_locals: BTreeMap::from([(
                "saved_command_line".to_owned(),
                "pb_fixture".parse().unwrap(),
            )]),
            ..ResolutionHints::default()
        };
        let own = SymbolSources {
            hints: &own_hints,
            ..sources
        };
        let targets = resolve_undefined(
            &["saved_command_line".to_owned()],
            &Exports::default(),
            &own,
        )
        .unwrap();
        assert_eq!(targets["saved_command_line"].object, "pb_fixture");
    }

    #[test]
    fn module_local_symbols_resolve_to_the_module() {
        let (vmlinux, module) = tables();
        let sources = SymbolSources {
            vmlinux: &vmlinux,
            modules: vec![("pb_fixture".parse().unwrap(), &module)],
            symbol_files: None,
            hints: &ResolutionHints::default(),
        };
        let targets = resolve_undefined(
            &["pb_fixture_show".to_owned()],
            &Exports::default(),
            &sources,
        )
        .unwrap();
        assert_eq!(targets["pb_fixture_show"].object, "pb_fixture");
    }

    #[test]
    fn a_repeated_module_local_is_the_copy_in_its_object_s_block() {
        // Two files of one module each define `get_pin`; the second file's block holds
        // `alpha`, `get_pin`, `beta`, `gamma`.
        let ko_symbols = "0000000000001000 t first_a\n0000000000001100 t get_pin\n\
                          0000000000001200 t first_b\n0000000000002000 t alpha\n\
                          0000000000002100 t get_pin\n0000000000002200 t beta\n\
                          0000000000002300 t gamma\n0000000000003000 t other\n";
        let table = SymbolTable::parse(ko_symbols).unwrap();
        let object: std::collections::BTreeSet<String> = ["alpha", "get_pin", "beta", "gamma"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(module_sympos(&table, "get_pin", &object), Some(2));
        let first: std::collections::BTreeSet<String> = ["first_a", "get_pin", "first_b"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(module_sympos(&table, "get_pin", &first), Some(1));
        // An object whose functions are not laid out around either copy: no guess.
        let unrelated: std::collections::BTreeSet<String> = ["get_pin", "x", "y", "z"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(module_sympos(&table, "get_pin", &unrelated), None);
    }

    #[test]
    fn old_functions_must_exist_uniquely_or_by_position() {
        let (vmlinux, _) = tables();
        let sources = SymbolSources {
            vmlinux: &vmlinux,
            modules: vec![],
            symbol_files: None,
            hints: &ResolutionHints::default(),
        };
        let marker = |name: &str, sympos| Marker {
            object: ObjectName::vmlinux(),
            old_function: name.into(),
            new_function: "pb_new".into(),
            sympos,
            defined: crate::markers::Definition::Macro,
        };
        assert!(check_old_functions(&[marker("cmdline_proc_show", 0)], &sources).is_ok());
        assert!(check_old_functions(&[marker("dup_helper", 2)], &sources).is_ok());
        let err = check_old_functions(
            &[
                marker("dup_helper", 0),
                marker("dup_helper_x", 0),
                marker("cmdline_proc_show", 3),
                // data, not a function
                marker("saved_command_line", 0),
            ],
            &sources,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("PATCHBAY_REPLACE_SYMPOS(vmlinux, dup_helper, pb_new, <1..2>)"),
            "{err}"
        );
        assert!(err.contains("- dup_helper_x: no function"), "{err}");
        assert!(err.contains("position 3 asked"), "{err}");
        assert!(err.contains("- saved_command_line: no function"), "{err}");
    }
}
