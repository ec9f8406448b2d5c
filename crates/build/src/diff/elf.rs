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

#[derive(Debug, thiserror::Error)]
#[error("{name} is not a usable x86-64 relocatable object: {reason}")]
pub struct ElfViewError {
    pub name: String,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloc {
    pub offset: u64,
    pub r_type: u32,
    pub target: Target,
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

#[derive(Debug, Clone)]
pub struct Section {
    pub index: usize,
    pub name: String,
    pub data: Vec<u8>,
    pub size: u64,
    pub align: u64,
    pub flags: u64,
    pub sh_type: u32,
    pub relocs: Vec<Reloc>,
}

impl Section {
    pub fn is_text(&self) -> bool {
        self.flags & u64::from(elf::SHF_EXECINSTR) != 0
    }

    pub fn is_writable(&self) -> bool {
        self.flags & u64::from(elf::SHF_WRITE) != 0
    }

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

#[derive(Debug, Clone)]
pub struct Symbol {
    pub index: usize,
    pub name: String,
    pub kind: SymbolKind,
    pub global: bool,
    /// Defined in this section, or `None` (undefined, absolute, common).
    pub section: Option<usize>,
    pub value: u64,
    pub size: u64,
}

impl Symbol {
    pub fn is_function(&self) -> bool {
        self.kind == SymbolKind::Text && self.section.is_some()
    }

    pub fn is_data(&self) -> bool {
        self.kind == SymbolKind::Data && self.section.is_some()
    }
}

/// One parsed object.
#[derive(Debug, Clone)]
pub struct ElfView {
    pub name: String,
    pub sections: BTreeMap<usize, Section>,
    pub symbols: Vec<Symbol>,
}

impl ElfView {
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

    pub fn symbol(&self, index: usize) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.index == index)
    }

    pub fn section(&self, index: usize) -> Option<&Section> {
        self.sections.get(&index)
    }

    pub fn section_by_name(&self, name: &str) -> Option<&Section> {
        self.sections.values().find(|s| s.name == name)
    }

    /// The function or data symbol that owns a whole section (`-ffunction-sections`).
    pub fn symbol_of_section(&self, section: usize) -> Option<&Symbol> {
        self.symbols.iter().find(|s| {
            s.section == Some(section) && s.value == 0 && (s.is_function() || s.is_data())
        })
    }
}

fn section_type(file: &ElfFile64<'_, Endianness>, index: usize) -> u32 {
    use object::read::elf::SectionHeader;
    file.elf_section_table()
        .section(SectionIndex(index))
        .map(|h| h.sh_type(file.endian()))
        .unwrap_or(0)
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

    #[test]
    fn clone_and_static_local_numbers_are_dropped() {
        assert_eq!(correlation_name("foo.isra.0"), "foo.isra");
        assert_eq!(correlation_name("foo.constprop.12"), "foo.constprop");
        assert_eq!(correlation_name("warned.3"), "warned");
        assert_eq!(correlation_name("foo.part.0.cold"), "foo.part.cold");
        assert_eq!(correlation_name("cmdline_proc_show"), "cmdline_proc_show");
    }
}
