//! Kernel symbol tables (System.map, /proc/kallsyms, a module's ELF symtab) with livepatch-style
//! positions for symbols whose names repeat.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind, SymbolSection};

use crate::KernelError;

/// One occurrence of a symbol name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SymbolEntry {
    /// The symbol's address as the table gives it (0 in an unprivileged /proc/kallsyms).
    pub address: u64,
    /// The `nm`-style type letter: `t`/`T` text, `d`/`D` data, `b`/`B` bss, `r`/`R` rodata, …
    pub kind: char,
    /// 1-based index among the entries with the same name in the same object, in table
    /// order: livepatch's `sympos` for that symbol.
    pub position: u32,
}

/// A symbol with its name and, for /proc/kallsyms lines with `[module]`, its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// The symbol's name, e.g. `do_sys_open` or `foo.isra.0`.
    pub name: &'a str,
    /// The module of a `[module]` line; `None` for vmlinux symbols.
    pub module: Option<&'a str>,
    /// Its address, type and position.
    pub entry: SymbolEntry,
}

#[derive(Debug, Clone)]
struct StoredSymbol {
    name: String,
    module: Option<String>,
    entry: SymbolEntry,
}

/// Symbols in their original order, indexed by name; vmlinux symbols and module symbols
/// (lines ending in `[module]`) are kept apart because livepatch positions count per object.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    symbols: Vec<StoredSymbol>,
    vmlinux_index: HashMap<String, Vec<usize>>,
    module_index: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl SymbolTable {
    /// Parses System.map / /proc/kallsyms text: `<hex addr> <type> <name>[\t[module]]`.
    pub fn parse(text: &str) -> Result<SymbolTable, KernelError> {
        let mut table = SymbolTable::default();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            if line.trim().is_empty() {
                continue;
            }
            let (name, module, address, kind) =
                parse_line(line).map_err(|reason| KernelError::SymbolLine {
                    line: line_number,
                    reason,
                })?;
            table.push(name, module, address, kind);
        }
        Ok(table)
    }

    /// Reads and parses a System.map or kallsyms file; parse errors name `path`.
    pub fn load(path: &Path) -> Result<SymbolTable, KernelError> {
        let text =
            fs::read_to_string(path).map_err(|e| KernelError::io("read symbol table", path, e))?;
        SymbolTable::parse(&text).map_err(|error| match error {
            KernelError::SymbolLine { line, reason } => KernelError::SymbolLine {
                line,
                reason: format!("{reason} (in {})", path.display()),
            },
            other => other,
        })
    }

    /// The function and object symbols a module's `.ko` defines, in ELF symtab order.
    /// Addresses are section offsets (the module is not loaded).
    pub fn from_module_ko(ko: &[u8]) -> Result<SymbolTable, KernelError> {
        let elf_error = |reason: String| KernelError::Elf {
            path: "<module .ko>".into(),
            reason,
        };
        let file = object::File::parse(ko).map_err(|e| elf_error(e.to_string()))?;
        if file.kind() != object::ObjectKind::Relocatable {
            return Err(elf_error(
                "not a relocatable object (a .ko is ET_REL)".into(),
            ));
        }
        let mut table = SymbolTable::default();
        for symbol in file.symbols() {
            let SymbolSection::Section(section_index) = symbol.section() else {
                continue; // undefined, absolute or common: not defined by this module
            };
            let base_kind = match symbol.kind() {
                SymbolKind::Text => 't',
                SymbolKind::Data => match file.section_by_index(section_index).map(|s| s.kind()) {
                    Ok(SectionKind::UninitializedData | SectionKind::UninitializedTls) => 'b',
                    Ok(SectionKind::ReadOnlyData | SectionKind::ReadOnlyString) => 'r',
                    _ => 'd',
                },
                _ => continue,
            };
            let name = match symbol.name() {
                Ok(name) if !name.is_empty() => name,
                _ => continue,
            };
            let kind = if symbol.is_weak() {
                if base_kind == 't' {
                    'W'
                } else {
                    'V'
                }
            } else if symbol.is_global() {
                base_kind.to_ascii_uppercase()
            } else {
                base_kind
            };
            table.push(name.to_string(), None, symbol.address(), kind);
        }
        Ok(table)
    }

    fn push(&mut self, name: String, module: Option<String>, address: u64, kind: char) {
        let index = self.symbols.len();
        let slots = match &module {
            None => self.vmlinux_index.entry(name.clone()).or_default(),
            Some(module) => self
                .module_index
                .entry(module.clone())
                .or_default()
                .entry(name.clone())
                .or_default(),
        };
        slots.push(index);
        let position = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        self.symbols.push(StoredSymbol {
            name,
            module,
            entry: SymbolEntry {
                address,
                kind,
                position,
            },
        });
    }

    fn entries(&self, indices: Option<&Vec<usize>>) -> Vec<SymbolEntry> {
        indices
            .into_iter()
            .flatten()
            .filter_map(|&i| self.symbols.get(i).map(|s| s.entry))
            .collect()
    }

    /// All vmlinux entries (lines without `[module]`) named `name`, in table order.
    pub fn lookup(&self, name: &str) -> Vec<SymbolEntry> {
        self.entries(self.vmlinux_index.get(name))
    }

    /// All entries named `name` of the `[module]` lines for `module`, in table order.
    pub fn lookup_in_module(&self, module: &str, name: &str) -> Vec<SymbolEntry> {
        self.entries(self.module_index.get(module).and_then(|m| m.get(name)))
    }

    /// The number of entries, module lines included.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether the table has no entries at all.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Every entry in table order.
    pub fn iter(&self) -> impl Iterator<Item = Symbol<'_>> + '_ {
        self.symbols.iter().map(|s| Symbol {
            name: &s.name,
            module: s.module.as_deref(),
            entry: s.entry,
        })
    }
}

type ParsedLine = (String, Option<String>, u64, char);

fn parse_line(line: &str) -> Result<ParsedLine, String> {
    let (symbol_part, module) = match line.split_once('\t') {
        Some((symbol, rest)) => {
            let module = rest
                .trim()
                .strip_prefix('[')
                .and_then(|m| m.strip_suffix(']'))
                .filter(|m| !m.is_empty() && !m.contains(char::is_whitespace))
                .ok_or_else(|| format!("expected \"[module]\" after the tab, found {rest:?}"))?;
            (symbol, Some(module.to_string()))
        }
        None => (line, None),
    };
    let mut fields = symbol_part.split(' ').filter(|f| !f.is_empty());
    let (Some(address), Some(kind), Some(name), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("expected three space-separated fields in {line:?}"));
    };
    if address.is_empty() || address.len() > 16 {
        return Err(format!("address {address:?} is not a 64-bit hex number"));
    }
    let address = u64::from_str_radix(address, 16)
        .map_err(|_| format!("address {address:?} is not a 64-bit hex number"))?;
    let mut kind_chars = kind.chars();
    let kind = match (kind_chars.next(), kind_chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() || c == '?' => c,
        _ => return Err(format!("type {kind:?} is not a single letter")),
    };
    Ok((name.to_string(), module, address, kind))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    const MAP: &str = "\
0000000000000000 D __per_cpu_start
ffffffff81000000 T _stext
ffffffff81001000 t show_val
ffffffff81002000 T cmdline_proc_show
ffffffff81003000 t show_val

ffffffff81004000 d show_val
ffffffff81005000 W weak_thing
ffffffffc0001000 t show_val\t[dummy_mod]
ffffffffc0002000 t mod_only\t[dummy_mod]
ffffffffc0003000 t show_val\t[other_mod]
";

    #[test]
    fn parses_in_order_with_positions() {
        let table = SymbolTable::parse(MAP).unwrap();
        assert_eq!(table.len(), 10);
        assert!(!table.is_empty());
        let show_val = table.lookup("show_val");
        assert_eq!(
            show_val,
            vec![
                SymbolEntry {
                    address: 0xffffffff81001000,
                    kind: 't',
                    position: 1
                },
                SymbolEntry {
                    address: 0xffffffff81003000,
                    kind: 't',
                    position: 2
                },
                SymbolEntry {
                    address: 0xffffffff81004000,
                    kind: 'd',
                    position: 3
                },
            ]
        );
        assert_eq!(table.lookup("cmdline_proc_show").len(), 1);
        assert_eq!(table.lookup("cmdline_proc_show")[0].position, 1);
        assert_eq!(table.lookup("__per_cpu_start")[0].address, 0);
        assert!(table.lookup("missing").is_empty());
        // Module lines are not vmlinux symbols, but can be asked for per module.
        assert!(table.lookup("mod_only").is_empty());
        let in_module = table.lookup_in_module("dummy_mod", "show_val");
        assert_eq!(in_module.len(), 1);
        assert_eq!(in_module[0].position, 1);
        assert_eq!(in_module[0].address, 0xffffffffc0001000);
        assert_eq!(
            table.lookup_in_module("other_mod", "show_val")[0].position,
            1
        );
        assert!(table.lookup_in_module("nope", "show_val").is_empty());
        let names: Vec<&str> = table.iter().map(|s| s.name).collect();
        assert_eq!(names[1], "_stext");
        assert_eq!(table.iter().nth(7).unwrap().module, Some("dummy_mod"));
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "ffffffff81000000 T",
            "zzzz T name",
            "ffffffff81000000 TT name",
            "ffffffff81000000 T name extra",
            "ffffffffffffffff B The real System.map is in the linux-image-6.1.0-56-amd64-dbg package",
            "11112222333344445 T too_long_address",
            "ffffffff81000000 T name\tmodule_without_brackets",
        ] {
            let error = SymbolTable::parse(&format!("ffffffff81000000 T ok\n{bad}\n")).unwrap_err();
            assert!(
                matches!(error, KernelError::SymbolLine { line: 2, .. }),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn reads_a_relocatable_objects_symbols() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("m.c");
        fs::write(
            &source,
            "static int counter; const int table_size = 3; int shared = 1;\n\
             static int helper(int x) { return x + counter + shared; }\n\
             int entry(int x) { return helper(x) * table_size; }\n",
        )
        .unwrap();
        let object_path = dir.path().join("m.o");
        let status = std::process::Command::new("gcc")
            .args(["-O0", "-c", "-o"])
            .arg(&object_path)
            .arg(&source)
            .status()
            .unwrap();
        assert!(status.success());
        let table = SymbolTable::from_module_ko(&fs::read(&object_path).unwrap()).unwrap();
        assert_eq!(table.lookup("helper")[0].kind, 't');
        assert_eq!(table.lookup("entry")[0].kind, 'T');
        assert_eq!(table.lookup("counter")[0].kind, 'b');
        assert_eq!(table.lookup("table_size")[0].kind, 'R');
        assert_eq!(table.lookup("shared")[0].kind, 'D');
        let names: Vec<&str> = table.iter().map(|s| s.name).collect();
        let helper = names.iter().position(|n| *n == "helper").unwrap();
        let entry = names.iter().position(|n| *n == "entry").unwrap();
        assert!(helper < entry, "ELF order kept: {names:?}");
        assert!(SymbolTable::from_module_ko(b"not elf").is_err());
    }
}
