//! A read-only view of one relocatable x86-64 object compiled with `-ffunction-sections
//! -fdata-sections`: its sections with their relocations, and its symbols. The diff engine
//! and the extractor work on this view, never on raw ELF.

use std::collections::BTreeMap;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader};
use object::{
    Endianness, Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget,
    SectionIndex, SymbolIndex, SymbolKind, SymbolScope, SymbolSection,
};

/// The bytes are not an ELF64 x86-64 relocatable object this view can read.
#[derive(Debug, thiserror::Error)]
#[error("{name} is not a usable x86-64 relocatable object: {reason}")]
pub struct ElfViewError {
    /// The object's name as the caller gave it to [`ElfView::parse`].
    pub name: String,
    /// What could not be read (the ELF parser's message, a wrong type or machine, ...).
    pub reason: String,
}

/// What a relocation points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A named symbol (defined here or undefined).
    Symbol(usize),
    /// A section (through its section symbol).
    Section(usize),
}

/// One relocation entry of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloc {
    /// Byte offset of the patched field inside the section.
    pub offset: u64,
    /// The x86-64 relocation type (`R_X86_64_PC32`, `R_X86_64_64`, ...).
    pub r_type: u32,
    /// What the field refers to.
    pub target: Target,
    /// The addend as stored (see [`Reloc::target_offset`] for the byte it means).
    pub addend: i64,
}

impl Reloc {
    /// Whether the CPU adds the address of the field (the addend then carries -4 for a
    /// 32-bit field, so the referenced byte is at addend + 4).
    pub fn is_pc_relative(&self) -> bool {
        matches!(
            self.r_type,
            elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 | elf::R_X86_64_PC64
        )
    }

    /// The offset inside the target the relocation refers to.
    pub fn target_offset(&self) -> i64 {
        if self.is_pc_relative() {
            self.addend + 4
        } else {
            self.addend
        }
    }
}

/// One section of the object, with its relocations folded in.
#[derive(Debug, Clone)]
pub struct Section {
    /// The ELF section index (what [`Target::Section`] and [`Symbol::section`] refer to).
    pub index: usize,
    /// The section name (`.text.cmdline_proc_show`, `.rodata.str1.1`).
    pub name: String,
    /// The section's bytes; empty for `SHT_NOBITS` (`.bss*`), whose length is `size`.
    pub data: Vec<u8>,
    /// The size in bytes in memory (for `SHT_NOBITS` too).
    pub size: u64,
    /// The required alignment in bytes (0 or 1: none).
    pub align: u64,
    /// ELF `sh_flags` (`SHF_ALLOC`, `SHF_EXECINSTR`, ...).
    pub flags: u64,
    /// ELF `sh_type` (`SHT_PROGBITS`, `SHT_NOBITS`, ...).
    pub sh_type: u32,
    /// The relocations that apply to this section, sorted by offset.
    pub relocs: Vec<Reloc>,
}

impl Section {
    /// Whether it holds code (`SHF_EXECINSTR`).
    pub fn is_text(&self) -> bool {
        self.flags & u64::from(elf::SHF_EXECINSTR) != 0
    }

    /// Whether it is writable at run time (`SHF_WRITE`: `.data*`, `.bss*`).
    pub fn is_writable(&self) -> bool {
        self.flags & u64::from(elf::SHF_WRITE) != 0
    }

    /// Whether it is loaded into memory (`SHF_ALLOC`); debug info and notes are not.
    pub fn is_alloc(&self) -> bool {
        self.flags & u64::from(elf::SHF_ALLOC) != 0
    }

    /// `.rodata.str1.1` and friends: NUL-terminated strings the compiler may merge.
    pub fn is_strings(&self) -> bool {
        self.flags & u64::from(elf::SHF_STRINGS) != 0
    }

    /// The NUL-terminated bytes at `offset`, if there are any.
    pub fn c_string_at(&self, offset: i64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let rest = self.data.get(start..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        rest.get(..end)
    }
}

/// One symbol-table entry.
#[derive(Debug, Clone)]
pub struct Symbol {
    /// The ELF symbol index (what [`Target::Symbol`] refers to).
    pub index: usize,
    /// The symbol name; empty for unnamed symbols.
    pub name: String,
    /// Function, data, section, file, ... as the `object` crate classifies it.
    pub kind: SymbolKind,
    /// Visible to the linker outside the object (`STB_GLOBAL`/`STB_WEAK`), not `static`.
    pub global: bool,
    /// Defined in this section, or `None` (undefined, absolute, common).
    pub section: Option<usize>,
    /// The offset inside its section (objects are not linked, so not an address).
    pub value: u64,
    /// The size in bytes (0 when the compiler did not say).
    pub size: u64,
}

impl Symbol {
    /// Whether it is a function defined in this object.
    pub fn is_function(&self) -> bool {
        self.kind == SymbolKind::Text && self.section.is_some()
    }

    /// Whether it is a data object defined in this object.
    pub fn is_data(&self) -> bool {
        self.kind == SymbolKind::Data && self.section.is_some()
    }
}

/// One parsed object.
#[derive(Debug, Clone)]
pub struct ElfView {
    /// A name for messages, as given to [`ElfView::parse`].
    pub name: String,
    /// Every section, keyed by its ELF index.
    pub sections: BTreeMap<usize, Section>,
    /// Every symbol, in symbol-table order (look one up by index with [`ElfView::symbol`]).
    pub symbols: Vec<Symbol>,
}

impl ElfView {
    /// Reads `bytes` as an ELF64 x86-64 `ET_REL` object; `name` is only used in messages.
    /// Errors on any other file type or an unreadable section, symbol or relocation.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Self, ElfViewError> {
        let bad = |reason: String| ElfViewError {
            name: name.to_owned(),
            reason,
        };
        let file = ElfFile64::<Endianness>::parse(bytes).map_err(|e| bad(e.to_string()))?;
        let header = file.elf_header();
        let endian = file.endian();
        if header.e_type(endian) != elf::ET_REL || header.e_machine(endian) != elf::EM_X86_64 {
            return Err(bad("not an ET_REL object for x86-64".into()));
        }
        let mut sections = BTreeMap::new();
        for section in file.sections() {
            let index = section.index().0;
            let name = section.name().map_err(|e| bad(e.to_string()))?.to_owned();
            let (flags, sh_type) = match section.flags() {
                object::SectionFlags::Elf { sh_flags } => (sh_flags, section_type(&file, index)),
                _ => (0, 0),
            };
            let data = if sh_type == elf::SHT_NOBITS {
                Vec::new()
            } else {
                section
                    .data()
                    .map_err(|e| bad(format!("section {name}: {e}")))?
                    .to_vec()
            };
            let mut relocs = Vec::new();
            for (offset, reloc) in section.relocations() {
                let RelocationFlags::Elf { r_type } = reloc.flags() else {
                    return Err(bad(format!("section {name}: a relocation is not ELF")));
                };
                let target = match reloc.target() {
                    RelocationTarget::Symbol(SymbolIndex(i)) => {
                        match file.symbol_by_index(SymbolIndex(i)) {
                            Ok(sym) if sym.kind() == SymbolKind::Section => {
                                match sym.section() {
                                    SymbolSection::Section(SectionIndex(s)) => Target::Section(s),
                                    _ => return Err(bad(format!(
                                        "section {name}: relocation against a section symbol without a section"
                                    ))),
                                }
                            }
                            Ok(_) => Target::Symbol(i),
                            Err(e) => return Err(bad(format!("section {name}: {e}"))),
                        }
                    }
                    RelocationTarget::Section(SectionIndex(s)) => Target::Section(s),
                    _ => {
                        return Err(bad(format!(
                            "section {name}: unsupported relocation target"
                        )))
                    }
                };
                relocs.push(Reloc {
                    offset,
                    r_type,
                    target,
                    addend: reloc.addend(),
                });
            }
            // By offset: the diff engine compares two compiles' relocations pairwise, in order.
            relocs.sort_by_key(|r| r.offset);
            sections.insert(
                index,
                Section {
                    index,
                    name,
                    data,
                    size: section.size(),
                    align: section.align(),
                    flags,
                    sh_type,
                    relocs,
                },
            );
        }
        let mut symbols = Vec::new();
        for sym in file.symbols() {
            let name = sym.name().unwrap_or("").to_owned();
            let section = match sym.section() {
                SymbolSection::Section(SectionIndex(s)) => Some(s),
                _ => None,
            };
            symbols.push(Symbol {
                index: sym.index().0,
                name,
                kind: sym.kind(),
                global: matches!(sym.scope(), SymbolScope::Linkage | SymbolScope::Dynamic),
                section,
                value: sym.address(),
                size: sym.size(),
            });
        }
        Ok(ElfView {
            name: name.to_owned(),
            sections,
            symbols,
        })
    }

    /// The symbol with ELF index `index`, `None` when there is none.
    pub fn symbol(&self, index: usize) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.index == index)
    }

    /// The section with ELF index `index`, `None` when there is none.
    pub fn section(&self, index: usize) -> Option<&Section> {
        self.sections.get(&index)
    }

    /// The section called `name` (the lowest-indexed one if the name repeats).
    pub fn section_by_name(&self, name: &str) -> Option<&Section> {
        self.sections.values().find(|s| s.name == name)
    }

    /// Whether `symbol` is a "special" static local: state the compiler or a kernel macro
    /// creates per call site (`WARN_ONCE`'s `__already_done.N`, `__warned`, lockdep's `__key`,
    /// ratelimit `_rs`, dynamic debug descriptors, `__func__`, switch tables). Their names repeat
    /// across the kernel with per-compile numbers, so they are never correlated with the running
    /// kernel: a live patch gets its own copy of each one its code uses.
    pub fn is_special_static(&self, symbol: &Symbol) -> bool {
        let Some(section) = symbol.section.and_then(|s| self.section(s)) else {
            return false;
        };
        if is_dynamic_debug_section(&section.name) {
            return true;
        }
        if symbol.global || symbol.kind != SymbolKind::Data {
            return false;
        }
        if section.name == ".data.once" {
            return true;
        }
        let base = correlation_name(&symbol.name);
        SPECIAL_STATIC_NAMES.contains(&base.as_str())
    }

    /// The function or data symbol that owns a whole section (`-ffunction-sections`): the one
    /// at offset 0, or a function after nothing but the NOP padding
    /// `-fpatchable-function-entry=N,N` puts before it (`CONFIG_CALL_PADDING`, 6.12: 16 NOPs,
    /// the symbol at 16).
    pub fn symbol_of_section(&self, section: usize) -> Option<&Symbol> {
        let at_start = self.symbols.iter().find(|s| {
            s.section == Some(section) && s.value == 0 && (s.is_function() || s.is_data())
        });
        at_start.or_else(|| {
            let data = &self.section(section)?.data;
            self.symbols
                .iter()
                .filter(|s| s.section == Some(section) && s.is_function() && s.value > 0)
                .min_by_key(|s| s.value)
                .filter(|s| {
                    usize::try_from(s.value)
                        .ok()
                        .and_then(|end| data.get(..end))
                        .is_some_and(|padding| padding.iter().all(|b| *b == NOP))
                })
        })
    }

    /// The view without what objtool adds to an object (see [`OBJTOOL_SECTIONS`] and
    /// [`is_prefix_symbol`]) and without `__patchable_function_entries`. For kernels whose
    /// objtool runs on the linked module only (IBT): the patch module's own run generates all
    /// of it, and skips a table the object already has.
    pub fn without_objtool_outputs(mut self) -> ElfView {
        self.sections.retain(|_, s| {
            !OBJTOOL_SECTIONS.contains(&s.name.as_str()) && s.name != "__patchable_function_entries"
        });
        self.symbols.retain(|s| !is_prefix_symbol(&s.name));
        self
    }
}

/// The one-byte NOP GCC pads functions with.
const NOP: u8 = 0x90;

/// Sections objtool writes into the object it checks (6.12: `--ibt --orc --retpoline --rethunk
/// --static-call --hacks=skylake`).
pub const OBJTOOL_SECTIONS: &[&str] = &[
    ".retpoline_sites",
    ".return_sites",
    ".call_sites",
    ".ibt_endbr_seal",
    ".cfi_sites",
    ".orc_unwind",
    ".orc_unwind_ip",
    ".orc_header",
    ".static_call_sites",
];

/// `__pfx_foo`: the symbol objtool `--prefix` puts over the padding before `foo` (in objects,
/// kallsyms and System.map of 6.12). Never a function to correlate, replace or look up.
pub fn is_prefix_symbol(name: &str) -> bool {
    name.starts_with("__pfx_")
}

fn section_type(file: &ElfFile64<'_, Endianness>, index: usize) -> u32 {
    use object::read::elf::SectionHeader;
    file.elf_section_table()
        .section(SectionIndex(index))
        .map(|h| h.sh_type(file.endian()))
        .unwrap_or(0)
}

/// Names (without GCC's number) of static locals that kernel macros create per call site.
const SPECIAL_STATIC_NAMES: &[&str] = &[
    "__key",
    "__warned",
    "__already_done",
    "__print_once",
    "__func__",
    "__FUNCTION__",
    "_rs",
    "CSWTCH",
    "_entry",
    "descriptor",
];

/// Sections holding dynamic debug descriptors (`pr_debug`, `dev_dbg`, …).
pub fn is_dynamic_debug_section(name: &str) -> bool {
    name == "__dyndbg" || name == "__verbose" || name == "__dyndbg_classes"
}

/// A symbol name without GCC's per-compile numbering: `foo.isra.0` → `foo.isra`,
/// `warned.12` → `warned`. Original and patched objects number clones and static locals
/// independently, so names are correlated without the numbers.
pub fn correlation_name(name: &str) -> String {
    let mut parts: Vec<&str> = name.split('.').collect();
    parts.retain(|p| !p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit()));
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_with(section: &str, symbol: &str, global: bool) -> (ElfView, Symbol) {
        let symbol = Symbol {
            index: 1,
            name: symbol.to_owned(),
            kind: SymbolKind::Data,
            global,
            section: Some(1),
            value: 0,
            size: 8,
        };
        let mut sections = BTreeMap::new();
        sections.insert(
            1,
            Section {
                index: 1,
                name: section.to_owned(),
                data: vec![0; 8],
                size: 8,
                align: 8,
                flags: 0,
                sh_type: elf::SHT_PROGBITS,
                relocs: Vec::new(),
            },
        );
        let view = ElfView {
            name: "t.o".into(),
            sections,
            symbols: vec![symbol.clone()],
        };
        (view, symbol)
    }

    #[test]
    fn special_statics_are_recognised_by_name_and_section() {
        for (section, name, global, special) in [
            (".data.once", "__already_done.12", false, true),
            (".data.once", "anything.3", false, true),
            (".bss.__warned.4", "__warned.4", false, true),
            (".bss", "__key.7", false, true),
            (".data._rs.2", "_rs.2", false, true),
            ("__dyndbg", "__UNIQUE_ID_ddebug545.9", false, true),
            ("__dyndbg", "descriptor.1", false, true),
            (".data.counter", "counter", false, false),
            (".data.counter.5", "counter.5", false, false),
            (".data.__key", "__key", true, false),
        ] {
            let (view, symbol) = view_with(section, name, global);
            assert_eq!(view.is_special_static(&symbol), special, "{section} {name}");
        }
    }

    #[test]
    fn clone_and_static_local_numbers_are_dropped() {
        assert_eq!(correlation_name("foo.isra.0"), "foo.isra");
        assert_eq!(correlation_name("foo.constprop.12"), "foo.constprop");
        assert_eq!(correlation_name("warned.3"), "warned");
        assert_eq!(correlation_name("foo.part.0.cold"), "foo.part.cold");
        assert_eq!(correlation_name("cmdline_proc_show"), "cmdline_proc_show");
    }

    /// A 6.12-style compile (`-fpatchable-function-entry=16,16`, IBT): the function sits after
    /// 16 NOPs in its section, which still owns it; objtool's outputs and `__pfx_` go.
    #[test]
    fn padded_functions_own_their_section_and_objtool_outputs_are_dropped() {
        #![allow(clippy::unwrap_used, clippy::expect_used)]
        let dir = tempfile::tempdir().unwrap();
        let mut view = crate::diff::gcc12_object(
            dir.path(),
            "p",
            "static int helper(int x) { return x * 3; }\n\
                            int (*ptr)(int) = helper;\n\
                            int user(int x) { return x + 1; }\n",
            &["-fcf-protection=branch", "-fpatchable-function-entry=16,16"],
        );
        let user = view
            .symbols
            .iter()
            .find(|s| s.name == "user")
            .unwrap()
            .clone();
        assert_eq!(user.value, 16);
        let section = user.section.unwrap();
        assert_eq!(
            view.symbol_of_section(section).map(|s| s.index),
            Some(user.index)
        );
        // What objtool --prefix would add, and a table it would write.
        let mut prefix = user.clone();
        prefix.name = "__pfx_user".into();
        prefix.index = 9999;
        prefix.value = 0;
        prefix.size = 16;
        view.symbols.push(prefix);
        view.sections.insert(
            9998,
            Section {
                index: 9998,
                name: ".return_sites".into(),
                data: vec![0; 4],
                size: 4,
                align: 4,
                flags: 0,
                sh_type: elf::SHT_PROGBITS,
                relocs: Vec::new(),
            },
        );
        assert_eq!(
            view.symbol_of_section(section).map(|s| s.name.as_str()),
            Some("__pfx_user")
        );
        let view = view.without_objtool_outputs();
        assert!(view.section_by_name(".return_sites").is_none());
        assert!(view
            .section_by_name("__patchable_function_entries")
            .is_none());
        assert!(!view.symbols.iter().any(|s| is_prefix_symbol(&s.name)));
        assert_eq!(
            view.symbol_of_section(section).map(|s| s.index),
            Some(user.index)
        );
    }
}
