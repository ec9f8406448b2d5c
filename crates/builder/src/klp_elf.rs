//! Turns references to non-exported kernel symbols in a kbuild-linked livepatch `.ko` into
//! livepatch symbols and livepatch relocation sections, as described in the kernel's
//! `Documentation/livepatch/module-elf-format.rst`.
//!
//! kbuild with `KBUILD_MODPOST_WARN=1` leaves such references as undefined symbols, which the
//! module loader would refuse. After [`rewrite`], each mapped symbol is named
//! `.klp.sym.<object>.<symbol>,<sympos>` with section index `SHN_LIVEPATCH`, and every
//! relocation against it lives in `.klp.rela.<object>.<section>`, which livepatch applies once
//! it has resolved the symbols (for vmlinux while the patch module loads, for a module object
//! when that module loads).
//!
//! The writer is append-only: the original bytes stay where they are, except the patched
//! symbol entries and the shrunk `.rela*` sections. Copies of the symbol string table and the
//! section name table (with the new names appended), the livepatch relocation sections and a
//! new section header table go at the end; the existing `.strtab`/`.shstrtab` headers are
//! pointed at the copies, so every existing section index stays valid.
//!
//! Only ELF64 little-endian x86-64 relocatable objects are handled (what Debian amd64 kbuild
//! produces). Parsing is bounds-checked throughout: malformed input gives an error, never a
//! panic.

use std::collections::{BTreeMap, BTreeSet};

/// Where a mapped symbol lives in the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlpTarget {
    /// `vmlinux` or a module name as the kernel spells it (`_`, never `-`).
    pub object: String,
    /// The symbol's name in that object (may contain `.`, e.g. `foo.isra.0`).
    pub symbol: String,
    /// Position among equally named symbols of the object, as kallsyms orders them; 0 = unique.
    pub sympos: u32,
    /// The object whose `.klp.rela.<object>.*` sections carry the references (`None`: the
    /// symbol's own object). Another module's export used by a patched module's code is
    /// resolved when the patched module loads (its dependencies are loaded by then).
    pub relocated_in: Option<String>,
}

/// One livepatch relocation section of a module, as [`inspect`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlpRelaSection {
    /// Section name, `.klp.rela.<object>.<target_section>`.
    pub name: String,
    /// The object whose symbols the relocations need.
    pub object: String,
    /// The section of the patch module the relocations are applied to.
    pub target_section: String,
    /// Number of relocation entries.
    pub relocations: usize,
    /// The distinct livepatch symbols referenced (`.klp.sym.…`), in order of first use.
    pub symbols: Vec<String>,
}

/// Why a module could not be read, rewritten or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KlpElfError {
    /// The bytes are not a consistent ELF64 relocatable object (truncated, bad offsets, ...).
    #[error(
        "the module is not a well-formed ELF64 relocatable object: {problem}; \
         pass the .ko exactly as kbuild linked it"
    )]
    Malformed {
        /// Which structure is broken.
        problem: String,
    },
    /// A valid ELF this writer does not handle (not x86-64 little-endian, `SHT_REL`
    /// relocations, extended section numbering, a shared string table).
    #[error("the module cannot be handled: {problem}")]
    Unsupported {
        /// What is not supported.
        problem: String,
    },
    /// The `.ko` ends in a module signature; rewriting must happen before signing.
    #[error(
        "the module carries an appended module signature, which any change would invalidate; \
         rewrite the unsigned .ko and sign it afterwards"
    )]
    Signed,
    /// The `.ko` already has `.klp.sym.*` symbols or `.klp.rela.*` sections.
    #[error(
        "the module already carries livepatch symbols or livepatch relocation sections; \
         rewrite the .ko as kbuild linked it, not an already rewritten one"
    )]
    AlreadyRewritten,
    /// A name in the mapping given to [`rewrite`] is not a symbol of the module.
    #[error(
        "no symbol named `{symbol}` in the module's symbol table; \
         map only names that undefined_symbols() returns"
    )]
    UnknownSymbol {
        /// The mapped name.
        symbol: String,
    },
    /// A name in the mapping is defined in the module (or local), not an undefined reference.
    #[error(
        "symbol `{symbol}` is {detail} in the module, not undefined; only undefined references \
         can become livepatch symbols, so drop it from the mapping"
    )]
    NotUndefined {
        /// The mapped name.
        symbol: String,
        /// How the module has it (`a local symbol`, `defined (section index 0x2)`).
        detail: String,
    },
    /// A [`KlpTarget`] has names the kernel could not read back from `.klp.sym.*`, or pairs
    /// objects `relocated_in` cannot (vmlinux with a module).
    #[error("invalid livepatch target for `{symbol}`: {problem}")]
    InvalidTarget {
        /// The mapped name whose target is invalid.
        symbol: String,
        /// What is wrong with the target.
        problem: String,
    },
    /// A mapped symbol is used from a section the module loader processes itself (jump labels,
    /// alternatives, ...), where a livepatch relocation would be applied too late.
    #[error(
        "`{symbol}` is referenced from `{relocation_section}`, which relocates \
         `{target_section}`: {reason}; the livepatch ELF format cannot express that, so use the \
         symbol only from function code or ordinary data"
    )]
    SpecialSectionReference {
        /// The mapped name.
        symbol: String,
        /// The `.rela*` section holding the reference.
        relocation_section: String,
        /// The section that relocation section applies to.
        target_section: String,
        /// Why livepatch cannot relocate it there.
        reason: String,
    },
    /// [`inspect`] found a `.klp.rela.*` section (or an ordinary one using a `.klp.sym.*`
    /// symbol) that the kernel would misapply.
    #[error("livepatch relocations in `{section}` are malformed: {problem}")]
    InvalidLivepatchSection {
        /// The offending relocation section.
        section: String,
        /// What is wrong with it.
        problem: String,
    },
}

type Result<T, E = KlpElfError> = std::result::Result<T, E>;

// ELF constants (include/uapi/linux/elf.h, System V gABI).
const EHDR_SIZE: usize = 64;
const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;
const RELA_SIZE: usize = 24;
const REL_SIZE: usize = 16;
const ET_REL: u16 = 1;
const EM_X86_64: u16 = 62;
const SHN_UNDEF: u16 = 0;
const SHN_LORESERVE: u16 = 0xff00;
const SHN_LIVEPATCH: u16 = 0xff20;
const SHN_XINDEX: u16 = 0xffff;
const SHT_NULL: u32 = 0;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;
const SHT_REL: u32 = 9;
const SHF_ALLOC: u64 = 0x2;
const SHF_INFO_LINK: u64 = 0x40;
const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
const STB_LOCAL: u8 = 0;
// Offsets in the ELF64 header.
const E_SHOFF: usize = 0x28;
const E_SHNUM: usize = 0x3c;

const KLP_SYM_PREFIX: &str = ".klp.sym.";
const KLP_RELA_PREFIX: &str = ".klp.rela.";
const VMLINUX: &str = "vmlinux";
/// `klp_resolve_symbols()` reads names with `%55[^.]` and `%511[^,]` (MODULE_NAME_LEN 56,
/// KSYM_NAME_LEN 512 in 6.1).
const MAX_OBJECT_NAME: usize = 55;
const MAX_SYMBOL_NAME: usize = 511;
const MODULE_SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// Sections the module loader (or arch code it calls) consumes on its own while loading a
/// module. A livepatch relocation there for a module object would be written only when that
/// module loads, long after the loader used the data; for vmlinux the loader writes it first
/// (see `rewrite`). `true` = name prefix, `false` = exact name.
///
/// Checked against 6.12 too: `.klp.rela.vmlinux.*` is applied inside `apply_relocations()`,
/// before `module_finalize()` (alternatives, return/retpoline sites, call thunks, IBT sealing,
/// ORC), jump labels and static calls; `.klp.rela.<module>.*` only by `klp_init_object_loaded()`,
/// after which nothing re-reads these sections. So a vmlinux static call key in
/// `.static_call_sites` (diff mode keeps `__SCK__*` for objtool on IBT kernels) is fine, a
/// module's is not.
const LOADER_SECTIONS: &[(&str, bool, &str)] = &[
    ("__jump_table", false, "jump labels are registered from it"),
    (
        ".static_call_sites",
        false,
        "static calls are patched from it",
    ),
    (
        ".altinstructions",
        false,
        "alternatives are applied from it",
    ),
    (
        ".altinstr_replacement",
        false,
        "alternatives copy code out of it",
    ),
    (
        ".altinstr_aux",
        false,
        "it belongs to the alternatives machinery",
    ),
    (
        ".parainstructions",
        false,
        "paravirt call sites are patched from it",
    ),
    (".smp_locks", false, "lock prefixes are patched from it"),
    (
        "__ex_table",
        false,
        "the exception table is sorted and searched",
    ),
    ("__bug_table", false, "BUG/WARN sites are looked up in it"),
    (
        ".retpoline_sites",
        false,
        "retpoline call sites are patched from it",
    ),
    (".return_sites", false, "return thunks are patched from it"),
    (".call_sites", false, "call depth tracking patches from it"),
    (".ibt_endbr_seal", false, "IBT sealing patches from it"),
    (".cfi_sites", false, "CFI patching reads it"),
    ("__mcount_loc", false, "ftrace records call sites from it"),
    (
        "__patchable_function_entries",
        false,
        "ftrace records call sites from it",
    ),
    (
        ".orc_unwind",
        true,
        "the ORC unwinder tables are sorted and registered",
    ),
    (".orc_header", false, "the ORC unwinder checks it"),
    ("__param", false, "module parameters are parsed from it"),
    ("__ksymtab", true, "exported symbols are registered from it"),
    ("__kcrctab", true, "export CRCs are read from it"),
    (".ctors", true, "constructors are called from it"),
    (".init_array", true, "constructors are called from it"),
    ("__tracepoints", true, "tracepoints are registered from it"),
    (
        "___srcu_struct_ptrs",
        false,
        "SRCU structures are initialised from it",
    ),
    (
        "__bpf_raw_tp_map",
        false,
        "BPF raw tracepoints are registered from it",
    ),
    (
        "_ftrace_events",
        false,
        "trace events are registered from it",
    ),
    (
        "_ftrace_eval_map",
        false,
        "trace eval maps are registered from it",
    ),
    (
        "__trace_printk_fmt",
        false,
        "trace_printk formats are registered from it",
    ),
    (
        "_error_injection_whitelist",
        false,
        "error injection points are registered",
    ),
    (
        "_kprobe_blacklist",
        false,
        "the kprobe blacklist is built from it",
    ),
    (".printk_index", false, "the printk index is built from it"),
    (".kunit_test_suites", false, "KUnit suites are run from it"),
    (
        "__dyndbg",
        true,
        "dynamic debug sites are registered from it",
    ),
    (
        ".gnu.linkonce.this_module",
        false,
        "it is the module's struct module",
    ),
    ("__versions", false, "symbol versions are checked from it"),
    (".modinfo", false, "module information is read from it"),
    (".data..percpu", false, "per-CPU data is copied out of it"),
];

/// Why the loader consumes `section` itself, if it does.
fn loader_consumes(section: &[u8]) -> Option<&'static str> {
    LOADER_SECTIONS
        .iter()
        .find(|(name, prefix, _)| {
            if *prefix {
                section.starts_with(name.as_bytes())
            } else {
                section == name.as_bytes()
            }
        })
        .map(|(_, _, why)| *why)
}

fn malformed(problem: impl Into<String>) -> KlpElfError {
    KlpElfError::Malformed {
        problem: problem.into(),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn to_usize(value: u64, what: &str) -> Result<usize> {
    usize::try_from(value).map_err(|_| malformed(format!("{what} {value} does not fit in memory")))
}

fn bytes_at<const N: usize>(data: &[u8], offset: usize) -> Result<[u8; N]> {
    offset
        .checked_add(N)
        .and_then(|end| data.get(offset..end))
        .and_then(|slice| <[u8; N]>::try_from(slice).ok())
        .ok_or_else(|| malformed(format!("{N} bytes at offset {offset} lie beyond the data")))
}

fn u16_at(data: &[u8], offset: usize) -> Result<u16> {
    bytes_at::<2>(data, offset).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], offset: usize) -> Result<u32> {
    bytes_at::<4>(data, offset).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], offset: usize) -> Result<u64> {
    bytes_at::<8>(data, offset).map(u64::from_le_bytes)
}

fn write_at(out: &mut [u8], offset: usize, bytes: &[u8]) -> Result<()> {
    let end = offset
        .checked_add(bytes.len())
        .ok_or_else(|| malformed("write offset overflows"))?;
    out.get_mut(offset..end)
        .ok_or_else(|| malformed(format!("write at offset {offset} lies beyond the file")))?
        .copy_from_slice(bytes);
    Ok(())
}

/// The NUL-terminated string at `offset` of a string table.
fn c_string<'t>(table: &'t [u8], offset: u32, what: &str) -> Result<&'t [u8]> {
    let rest = usize::try_from(offset)
        .ok()
        .and_then(|offset| table.get(offset..))
        .ok_or_else(|| {
            malformed(format!(
                "{what}: name offset {offset} is outside its string table"
            ))
        })?;
    let len = rest.iter().position(|&b| b == 0).ok_or_else(|| {
        malformed(format!(
            "{what}: name at offset {offset} is not NUL-terminated"
        ))
    })?;
    rest.get(..len)
        .ok_or_else(|| malformed(format!("{what}: name at offset {offset} is cut off")))
}

#[derive(Debug, Clone, Copy)]
struct SectionHeader {
    name: u32,
    kind: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    addralign: u64,
    entsize: u64,
}

impl SectionHeader {
    fn parse(data: &[u8], at: usize) -> Result<SectionHeader> {
        Ok(SectionHeader {
            name: u32_at(data, at)?,
            kind: u32_at(data, at + 0x04)?,
            flags: u64_at(data, at + 0x08)?,
            addr: u64_at(data, at + 0x10)?,
            offset: u64_at(data, at + 0x18)?,
            size: u64_at(data, at + 0x20)?,
            link: u32_at(data, at + 0x28)?,
            info: u32_at(data, at + 0x2c)?,
            addralign: u64_at(data, at + 0x30)?,
            entsize: u64_at(data, at + 0x38)?,
        })
    }

    fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SHDR_SIZE);
        out.extend_from_slice(&self.name.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.addr.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.link.to_le_bytes());
        out.extend_from_slice(&self.info.to_le_bytes());
        out.extend_from_slice(&self.addralign.to_le_bytes());
        out.extend_from_slice(&self.entsize.to_le_bytes());
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    name: u32,
    info: u8,
    shndx: u16,
}

impl Symbol {
    fn binding(self) -> u8 {
        self.info >> 4
    }
}

/// One `Elf64_Rela` entry, kept as its raw bytes so surviving entries are copied unchanged.
#[derive(Debug, Clone, Copy)]
struct Rela {
    raw: [u8; RELA_SIZE],
    symbol: usize,
}

/// A parsed view of a relocatable ELF64 file; every offset it hands out has been bounds-checked.
#[derive(Debug)]
struct Elf<'a> {
    data: &'a [u8],
    sections: Vec<SectionHeader>,
    shstrndx: usize,
    symtab_index: usize,
    symbols: Vec<Symbol>,
}

impl<'a> Elf<'a> {
    fn parse(data: &'a [u8]) -> Result<Elf<'a>> {
        let ident = data
            .get(..16)
            .ok_or_else(|| malformed("shorter than an ELF identification"))?;
        if ident.get(..4) != Some(b"\x7fELF".as_slice()) {
            return Err(malformed("no ELF magic"));
        }
        if ident.get(4..7) != Some([2u8, 1, 1].as_slice()) {
            return Err(KlpElfError::Unsupported {
                problem: "not a version-1 ELF64 little-endian file".into(),
            });
        }
        if data.len() < EHDR_SIZE {
            return Err(malformed("shorter than an ELF64 header"));
        }
        let e_type = u16_at(data, 0x10)?;
        if e_type != ET_REL {
            return Err(KlpElfError::Unsupported {
                problem: format!("ELF type {e_type} is not a relocatable object (a .ko is ET_REL)"),
            });
        }
        let machine = u16_at(data, 0x12)?;
        if machine != EM_X86_64 {
            return Err(KlpElfError::Unsupported {
                problem: format!(
                    "machine {machine} is not x86-64; other architectures are not supported yet"
                ),
            });
        }
        let shoff = to_usize(u64_at(data, E_SHOFF)?, "section header offset")?;
        let shentsize = u16_at(data, 0x3a)?;
        let shnum = usize::from(u16_at(data, E_SHNUM)?);
        let shstrndx = u16_at(data, 0x3e)?;
        if usize::from(shentsize) != SHDR_SIZE {
            return Err(malformed(format!(
                "section header size {shentsize}, expected {SHDR_SIZE}"
            )));
        }
        if shnum == 0 || shstrndx == SHN_XINDEX {
            return Err(KlpElfError::Unsupported {
                problem: "extended section numbering (0 sections in the header)".into(),
            });
        }
        let shstrndx = usize::from(shstrndx);
        if shstrndx >= shnum {
            return Err(malformed(format!(
                "section name table index {shstrndx} ≥ section count {shnum}"
            )));
        }
        let table_end = shnum
            .checked_mul(SHDR_SIZE)
            .and_then(|len| len.checked_add(shoff))
            .filter(|&end| end <= data.len())
            .ok_or_else(|| malformed("the section header table lies beyond the end of the file"))?;
        let mut sections = Vec::with_capacity(shnum);
        for at in (shoff..table_end).step_by(SHDR_SIZE) {
            let header = SectionHeader::parse(data, at)?;
            if header.kind != SHT_NOBITS && header.kind != SHT_NULL {
                let fits = header
                    .offset
                    .checked_add(header.size)
                    .is_some_and(|end| end <= data.len() as u64);
                if !fits {
                    return Err(malformed(format!(
                        "section {} (offset {}, size {}) lies beyond the end of the file",
                        sections.len(),
                        header.offset,
                        header.size
                    )));
                }
            }
            sections.push(header);
        }

        let mut elf = Elf {
            data,
            sections,
            shstrndx,
            symtab_index: 0,
            symbols: Vec::new(),
        };
        let names = elf.header(shstrndx)?;
        if names.kind != SHT_STRTAB {
            return Err(malformed("the section name table is not a string table"));
        }
        if elf.section_data(shstrndx)?.last() != Some(&0) {
            return Err(malformed(
                "the section name table is empty or not NUL-terminated",
            ));
        }

        let symtabs: Vec<usize> = elf
            .sections
            .iter()
            .enumerate()
            .filter(|(_, h)| h.kind == SHT_SYMTAB)
            .map(|(i, _)| i)
            .collect();
        let symtab_index = match symtabs.as_slice() {
            [one] => *one,
            [] => return Err(malformed("no symbol table")),
            _ => return Err(malformed("more than one symbol table")),
        };
        let symtab = elf.header(symtab_index)?;
        if symtab.entsize != SYM_SIZE as u64 || symtab.size % SYM_SIZE as u64 != 0 {
            return Err(malformed(format!(
                "symbol table entry size {} / size {} do not fit {SYM_SIZE}-byte entries",
                symtab.entsize, symtab.size
            )));
        }
        let strtab_index = usize::try_from(symtab.link).unwrap_or(usize::MAX);
        if elf.header(strtab_index)?.kind != SHT_STRTAB || strtab_index == 0 {
            return Err(malformed(
                "the symbol table's string table is not a string table",
            ));
        }
        let symtab_data = elf.section_data(symtab_index)?;
        let mut symbols = Vec::with_capacity(symtab_data.len() / SYM_SIZE);
        for at in (0..symtab_data.len()).step_by(SYM_SIZE) {
            symbols.push(Symbol {
                name: u32_at(symtab_data, at)?,
                info: bytes_at::<1>(symtab_data, at + 4)?[0],
                shndx: u16_at(symtab_data, at + 6)?,
            });
        }
        elf.symtab_index = symtab_index;
        elf.symbols = symbols;
        Ok(elf)
    }

    fn header(&self, index: usize) -> Result<SectionHeader> {
        self.sections
            .get(index)
            .copied()
            .ok_or_else(|| malformed(format!("section index {index} out of range")))
    }

    fn section_data(&self, index: usize) -> Result<&'a [u8]> {
        let header = self.header(index)?;
        if header.kind == SHT_NOBITS || header.kind == SHT_NULL {
            return Ok(&[]);
        }
        let start = to_usize(header.offset, "section offset")?;
        let end = to_usize(header.size, "section size")?
            .checked_add(start)
            .ok_or_else(|| malformed("section end overflows"))?;
        self.data
            .get(start..end)
            .ok_or_else(|| malformed(format!("section {index} lies beyond the end of the file")))
    }

    fn section_name(&self, index: usize) -> Result<&'a [u8]> {
        let header = self.header(index)?;
        c_string(
            self.section_data(self.shstrndx)?,
            header.name,
            "section name",
        )
    }

    fn strtab_index(&self) -> Result<usize> {
        let link = self.header(self.symtab_index)?.link;
        usize::try_from(link).map_err(|_| malformed("string table index out of range"))
    }

    fn symbol_name(&self, symbol: Symbol) -> Result<&'a [u8]> {
        c_string(
            self.section_data(self.strtab_index()?)?,
            symbol.name,
            "symbol name",
        )
    }

    fn symtab_entry_offset(&self, index: usize) -> Result<usize> {
        let base = to_usize(
            self.header(self.symtab_index)?.offset,
            "symbol table offset",
        )?;
        index
            .checked_mul(SYM_SIZE)
            .and_then(|off| off.checked_add(base))
            .ok_or_else(|| malformed("symbol entry offset overflows"))
    }

    /// The entries of a `SHT_RELA` section, each symbol index checked against the symtab.
    fn relas(&self, index: usize) -> Result<Vec<Rela>> {
        let header = self.header(index)?;
        if header.entsize != RELA_SIZE as u64 || header.size % RELA_SIZE as u64 != 0 {
            return Err(malformed(format!(
                "relocation section `{}` has entry size {} and size {}, expected {RELA_SIZE}-byte entries",
                lossy(self.section_name(index)?),
                header.entsize,
                header.size
            )));
        }
        let data = self.section_data(index)?;
        let mut relas = Vec::with_capacity(data.len() / RELA_SIZE);
        for at in (0..data.len()).step_by(RELA_SIZE) {
            let raw = bytes_at::<RELA_SIZE>(data, at)?;
            let symbol = (u64_at(&raw, 8)? >> 32) as usize;
            if symbol >= self.symbols.len() {
                return Err(malformed(format!(
                    "relocation section `{}` refers to symbol {symbol}, beyond the symbol table",
                    lossy(self.section_name(index)?)
                )));
            }
            relas.push(Rela { raw, symbol });
        }
        Ok(relas)
    }

    /// Symbol indices an `SHT_REL` section refers to (x86-64 uses RELA; REL is only checked).
    fn rel_symbols(&self, index: usize) -> Result<Vec<usize>> {
        let data = self.section_data(index)?;
        if data.len() % REL_SIZE != 0 {
            return Err(malformed(
                "a SHT_REL section is not a whole number of entries",
            ));
        }
        (0..data.len())
            .step_by(REL_SIZE)
            .map(|at| u64_at(data, at + 8).map(|info| (info >> 32) as usize))
            .collect()
    }

    fn has_livepatch_content(&self) -> bool {
        self.sections
            .iter()
            .any(|h| h.flags & SHF_RELA_LIVEPATCH != 0)
            || self.symbols.iter().any(|s| s.shndx == SHN_LIVEPATCH)
    }
}

/// A [`KlpTarget`] whose names the kernel's `sscanf` formats will read back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ValidTarget {
    /// The object whose relocation sections carry the references.
    object: String,
    symbol_name: String,
}

impl ValidTarget {
    fn parse(key: &str, target: &KlpTarget) -> Result<ValidTarget> {
        let invalid = |problem: String| KlpElfError::InvalidTarget {
            symbol: key.to_owned(),
            problem,
        };
        validate_object_name(&target.object).map_err(invalid)?;
        validate_symbol_name(&target.symbol).map_err(invalid)?;
        let section_object = match &target.relocated_in {
            None => target.object.clone(),
            Some(other) => {
                validate_object_name(other).map_err(invalid)?;
                // The kernel refuses vmlinux symbols in a module's sections, and a module's
                // symbols cannot be resolved when vmlinux's sections are written.
                if other == VMLINUX || target.object == VMLINUX {
                    return Err(invalid(format!(
                        "a reference to `{}` of `{}` cannot be relocated with `{other}`; only \
                         one module's symbols in another module's sections",
                        target.symbol, target.object
                    )));
                }
                other.clone()
            }
        };
        Ok(ValidTarget {
            object: section_object,
            symbol_name: format!(
                "{KLP_SYM_PREFIX}{}.{},{}",
                target.object, target.symbol, target.sympos
            ),
        })
    }

    fn is_vmlinux(&self) -> bool {
        self.object == VMLINUX
    }
}

fn validate_object_name(object: &str) -> std::result::Result<(), String> {
    if object.is_empty()
        || object.len() > MAX_OBJECT_NAME
        || !object
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!(
            "object `{object}` must be `vmlinux` or a module name as the kernel spells it \
             (letters, digits and `_`, at most {MAX_OBJECT_NAME} bytes; the kernel turns `-` into `_`)"
        ));
    }
    Ok(())
}

fn validate_symbol_name(symbol: &str) -> std::result::Result<(), String> {
    if symbol.is_empty()
        || symbol.len() > MAX_SYMBOL_NAME
        || !symbol.bytes().all(|b| b.is_ascii_graphic() && b != b',')
    {
        return Err(format!(
            "symbol name `{symbol}` must be 1 to {MAX_SYMBOL_NAME} printable ASCII characters \
             without `,` or spaces (livepatch reads it back up to the first `,`)"
        ));
    }
    Ok(())
}

fn reject_signed(ko: &[u8]) -> Result<()> {
    if ko.ends_with(MODULE_SIGNATURE_MAGIC) {
        return Err(KlpElfError::Signed);
    }
    Ok(())
}

/// Names of the undefined global (or weak) symbols of a linked module, in symbol table order,
/// each once. These are the names [`rewrite`] accepts as keys.
pub fn undefined_symbols(ko: &[u8]) -> Result<Vec<String>, KlpElfError> {
    let elf = Elf::parse(ko)?;
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for symbol in elf.symbols.iter().skip(1) {
        if symbol.shndx != SHN_UNDEF || symbol.binding() == STB_LOCAL {
            continue;
        }
        let name = elf.symbol_name(*symbol)?;
        if name.is_empty() {
            continue;
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| {
            malformed(format!(
                "undefined symbol name `{}` is not UTF-8",
                lossy(name)
            ))
        })?;
        if seen.insert(name.clone()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Symbol table indices of the undefined non-local symbols named `key`.
fn undefined_symbol_indices(elf: &Elf<'_>, key: &str) -> Result<Vec<usize>> {
    let mut undefined = Vec::new();
    let mut defined: Option<String> = None;
    for (index, symbol) in elf.symbols.iter().enumerate().skip(1) {
        if elf.symbol_name(*symbol)? != key.as_bytes() {
            continue;
        }
        if symbol.binding() == STB_LOCAL {
            defined.get_or_insert_with(|| "a local symbol".into());
        } else if symbol.shndx == SHN_UNDEF {
            undefined.push(index);
        } else {
            defined = Some(format!("defined (section index {:#x})", symbol.shndx));
        }
    }
    match (undefined.is_empty(), defined) {
        (false, None) => Ok(undefined),
        (_, Some(detail)) => Err(KlpElfError::NotUndefined {
            symbol: key.to_owned(),
            detail,
        }),
        (true, None) => Err(KlpElfError::UnknownSymbol {
            symbol: key.to_owned(),
        }),
    }
}

/// Rewrites a linked module so that each undefined symbol named by a key of `targets` becomes
/// a livepatch symbol and every relocation against it moves into a livepatch relocation
/// section. Returns the new file contents (the caller writes them atomically); the input is
/// never modified. An empty mapping returns the input unchanged.
///
/// Relocations in sections that are never loaded (debug info) stay where they are: the module
/// loader skips those, and livepatch would write into freed memory if they were moved.
pub fn rewrite(ko: &[u8], targets: &BTreeMap<String, KlpTarget>) -> Result<Vec<u8>, KlpElfError> {
    let elf = Elf::parse(ko)?;
    reject_signed(ko)?;
    if targets.is_empty() {
        return Ok(ko.to_vec());
    }
    if elf.has_livepatch_content() {
        return Err(KlpElfError::AlreadyRewritten);
    }

    // Symbol index → (its key, where it resolves).
    let mut mapped: BTreeMap<usize, (&str, ValidTarget)> = BTreeMap::new();
    for (key, target) in targets {
        let valid = ValidTarget::parse(key, target)?;
        for index in undefined_symbol_indices(&elf, key)? {
            mapped.insert(index, (key.as_str(), valid.clone()));
        }
    }

    // Split each relocation section into what stays and what moves to livepatch.
    let mut shrunk: Vec<(usize, Vec<Rela>)> = Vec::new();
    let mut moved: BTreeMap<(String, usize), Vec<Rela>> = BTreeMap::new();
    for (index, header) in elf.sections.iter().enumerate() {
        if header.kind == SHT_REL {
            if let Some((key, _)) = elf
                .rel_symbols(index)?
                .iter()
                .find_map(|symbol| mapped.get(symbol))
            {
                return Err(KlpElfError::Unsupported {
                    problem: format!(
                        "`{key}` is referenced from the SHT_REL section `{}`; livepatch needs RELA relocations",
                        lossy(elf.section_name(index)?)
                    ),
                });
            }
            continue;
        }
        if header.kind != SHT_RELA {
            continue;
        }
        if usize::try_from(header.link).ok() != Some(elf.symtab_index) {
            return Err(malformed(format!(
                "relocation section `{}` does not use the symbol table",
                lossy(elf.section_name(index)?)
            )));
        }
        let relas = elf.relas(index)?;
        if !relas.iter().any(|r| mapped.contains_key(&r.symbol)) {
            continue;
        }
        let target_index = usize::try_from(header.info).unwrap_or(usize::MAX);
        let target = elf.header(target_index)?;
        if target_index == 0 {
            return Err(malformed(format!(
                "relocation section `{}` does not say which section it applies to",
                lossy(elf.section_name(index)?)
            )));
        }
        if target.flags & SHF_ALLOC == 0 {
            // Never loaded: the loader skips it and the renamed symbol is harmless there.
            continue;
        }
        let target_name = elf.section_name(target_index)?;
        let mut kept = Vec::with_capacity(relas.len());
        for rela in relas {
            let Some((key, valid)) = mapped.get(&rela.symbol) else {
                kept.push(rela);
                continue;
            };
            let refuse = |reason: String| KlpElfError::SpecialSectionReference {
                symbol: (*key).to_owned(),
                relocation_section: elf.section_name(index).map(lossy).unwrap_or_default(),
                target_section: lossy(target_name),
                reason,
            };
            // Since Linux 5.8 the module loader applies `.klp.rela.vmlinux.*` sections itself,
            // in `apply_relocations()`, before it processes any of these sections (jump labels
            // at MODULE_STATE_COMING, alternatives in module_finalize). Relocations for a
            // module object are written only when that module loads, which can be long after.
            if let (false, Some(why)) = (valid.is_vmlinux(), loader_consumes(target_name)) {
                return Err(refuse(format!(
                    "the module loader processes that section itself at load time ({why}), \
                     not when module `{}` loads and livepatch resolves its symbols",
                    valid.object
                )));
            }
            if !valid.is_vmlinux() && target_name.starts_with(b".init") {
                return Err(refuse(format!(
                    "relocations for module `{}` are written when that module loads, after the \
                     patch module's init sections are freed",
                    valid.object
                )));
            }
            moved
                .entry((valid.object.clone(), target_index))
                .or_default()
                .push(rela);
        }
        shrunk.push((index, kept));
    }

    let mut sections = elf.sections.clone();
    let mut out = ko.to_vec();

    // Shrink the ordinary relocation sections in place; zero what they no longer cover.
    for (index, kept) in &shrunk {
        let header = sections
            .get_mut(*index)
            .ok_or_else(|| malformed("relocation section vanished"))?;
        let start = to_usize(header.offset, "section offset")?;
        let old_len = to_usize(header.size, "section size")?;
        let mut bytes: Vec<u8> = kept.iter().flat_map(|r| r.raw).collect();
        let new_len = bytes.len();
        bytes.resize(old_len, 0);
        write_at(&mut out, start, &bytes)?;
        header.size = new_len as u64;
    }

    // Rename the symbols: new names go into a copy of the string table.
    let strtab_index = elf.strtab_index()?;
    if strtab_index == elf.shstrndx {
        return Err(KlpElfError::Unsupported {
            problem: "symbol names and section names share one string table".into(),
        });
    }
    let mut strtab = elf.section_data(strtab_index)?.to_vec();
    let mut name_offsets: BTreeMap<&str, u32> = BTreeMap::new();
    for (index, (_, valid)) in &mapped {
        let name_offset = match name_offsets.get(valid.symbol_name.as_str()) {
            Some(offset) => *offset,
            None => {
                let offset = append_string(&mut strtab, &valid.symbol_name)?;
                name_offsets.insert(valid.symbol_name.as_str(), offset);
                offset
            }
        };
        let entry = elf.symtab_entry_offset(*index)?;
        write_at(&mut out, entry, &name_offset.to_le_bytes())?;
        write_at(&mut out, entry + 6, &SHN_LIVEPATCH.to_le_bytes())?;
    }

    // New section names, then the livepatch relocation sections.
    let mut shstrtab = elf.section_data(elf.shstrndx)?.to_vec();
    let symtab_link = u32::try_from(elf.symtab_index).map_err(|_| malformed("symtab index"))?;
    for ((object, target_index), relas) in &moved {
        let target_name = lossy(elf.section_name(*target_index)?);
        let name = append_string(
            &mut shstrtab,
            &format!("{KLP_RELA_PREFIX}{object}.{target_name}"),
        )?;
        pad_to(&mut out, 8);
        let offset = out.len() as u64;
        out.extend(relas.iter().flat_map(|r| r.raw));
        sections.push(SectionHeader {
            name,
            kind: SHT_RELA,
            flags: SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH,
            addr: 0,
            offset,
            size: (relas.len() * RELA_SIZE) as u64,
            link: symtab_link,
            info: u32::try_from(*target_index).map_err(|_| malformed("section index"))?,
            addralign: 8,
            entsize: RELA_SIZE as u64,
        });
    }
    if sections.len() >= usize::from(SHN_LORESERVE) {
        return Err(KlpElfError::Unsupported {
            problem: format!(
                "{} sections would need extended section numbering",
                sections.len()
            ),
        });
    }

    for (index, table) in [(strtab_index, strtab), (elf.shstrndx, shstrtab)] {
        let header = sections
            .get_mut(index)
            .ok_or_else(|| malformed("string table vanished"))?;
        header.offset = out.len() as u64;
        header.size = table.len() as u64;
        out.extend_from_slice(&table);
    }

    pad_to(&mut out, 8);
    let shoff = out.len() as u64;
    for header in &sections {
        out.extend_from_slice(&header.to_bytes());
    }
    write_at(&mut out, E_SHOFF, &shoff.to_le_bytes())?;
    let shnum = u16::try_from(sections.len()).map_err(|_| malformed("section count"))?;
    write_at(&mut out, E_SHNUM, &shnum.to_le_bytes())?;
    Ok(out)
}

fn append_string(table: &mut Vec<u8>, name: &str) -> Result<u32> {
    let offset =
        u32::try_from(table.len()).map_err(|_| malformed("a string table would exceed 4 GiB"))?;
    table.extend_from_slice(name.as_bytes());
    table.push(0);
    Ok(offset)
}

fn pad_to(out: &mut Vec<u8>, align: usize) {
    out.resize(out.len().next_multiple_of(align), 0);
}

/// `.klp.sym.<object>.<symbol>,<sympos>` → (object, symbol, sympos), read like the kernel's
/// `sscanf(".klp.sym.%55[^.].%511[^,],%lu")` but strictly (digits only, nothing after them).
fn parse_klp_symbol_name(name: &str) -> Option<(&str, &str, u64)> {
    let rest = name.strip_prefix(KLP_SYM_PREFIX)?;
    let (object, rest) = rest.split_once('.')?;
    let (symbol, position) = rest.split_once(',')?;
    let valid = validate_object_name(object).is_ok()
        && validate_symbol_name(symbol).is_ok()
        && !position.is_empty()
        && position.bytes().all(|b| b.is_ascii_digit());
    valid.then_some(())?;
    Some((object, symbol, position.parse().ok()?))
}

/// Lists the livepatch relocation sections of a module and checks them the way livepatch and
/// the module loader will use them: flags, `sh_link`/`sh_info`, a name matching the section
/// relocated, and every referenced symbol an `SHN_LIVEPATCH` symbol named
/// `.klp.sym.<same object>.<symbol>,<sympos>`. Also refuses ordinary relocations of loaded
/// sections against livepatch symbols (the loader would relocate them against address 0).
pub fn inspect(ko: &[u8]) -> Result<Vec<KlpRelaSection>, KlpElfError> {
    let elf = Elf::parse(ko)?;
    let mut found = Vec::new();
    for (index, header) in elf.sections.iter().enumerate() {
        let raw_name = elf.section_name(index)?;
        let is_klp = header.flags & SHF_RELA_LIVEPATCH != 0
            || raw_name.starts_with(KLP_RELA_PREFIX.as_bytes());
        if !is_klp {
            if header.kind == SHT_RELA {
                check_ordinary_relocations(&elf, index)?;
            }
            continue;
        }
        found.push(inspect_klp_section(&elf, index)?);
    }
    Ok(found)
}

fn check_ordinary_relocations(elf: &Elf<'_>, index: usize) -> Result<()> {
    let header = elf.header(index)?;
    let target = usize::try_from(header.info)
        .ok()
        .and_then(|t| elf.sections.get(t));
    match target {
        Some(target) if target.flags & SHF_ALLOC != 0 => {}
        _ => return Ok(()), // the loader skips it
    }
    for rela in elf.relas(index)? {
        let symbol = *elf
            .symbols
            .get(rela.symbol)
            .ok_or_else(|| malformed("symbol index"))?;
        if symbol.shndx == SHN_LIVEPATCH {
            return Err(KlpElfError::InvalidLivepatchSection {
                section: lossy(elf.section_name(index)?),
                problem: format!(
                    "this ordinary relocation section references the livepatch symbol `{}`, \
                     which the module loader would relocate against address 0",
                    lossy(elf.symbol_name(symbol)?)
                ),
            });
        }
    }
    Ok(())
}

fn inspect_klp_section(elf: &Elf<'_>, index: usize) -> Result<KlpRelaSection> {
    let header = elf.header(index)?;
    let name = String::from_utf8(elf.section_name(index)?.to_vec())
        .map_err(|_| malformed("a livepatch relocation section name is not UTF-8"))?;
    let bad = |problem: String| KlpElfError::InvalidLivepatchSection {
        section: name.clone(),
        problem,
    };
    let (object, target_section) = name
        .strip_prefix(KLP_RELA_PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .filter(|(object, _)| validate_object_name(object).is_ok())
        .ok_or_else(|| {
            bad(format!(
                "the name is not `{KLP_RELA_PREFIX}<object>.<section>`"
            ))
        })?;
    if header.kind != SHT_RELA {
        return Err(bad(format!("section type {} is not SHT_RELA", header.kind)));
    }
    let required = SHF_ALLOC | SHF_RELA_LIVEPATCH;
    if header.flags & required != required {
        return Err(bad(format!(
            "flags {:#x} lack SHF_ALLOC and/or SHF_RELA_LIVEPATCH ({required:#x})",
            header.flags
        )));
    }
    if usize::try_from(header.link).ok() != Some(elf.symtab_index) {
        return Err(bad(format!(
            "sh_link {} is not the symbol table (section {})",
            header.link, elf.symtab_index
        )));
    }
    let target_index = usize::try_from(header.info).unwrap_or(usize::MAX);
    let target = elf
        .sections
        .get(target_index)
        .filter(|_| target_index != 0)
        .ok_or_else(|| bad(format!("sh_info {} is not a section", header.info)))?;
    let actual_target = elf.section_name(target_index)?;
    if actual_target != target_section.as_bytes() {
        return Err(bad(format!(
            "the name says it relocates `{target_section}` but sh_info points at `{}`",
            lossy(actual_target)
        )));
    }
    if target.flags & SHF_ALLOC == 0 {
        return Err(bad(format!(
            "it relocates `{target_section}`, which is not loaded"
        )));
    }
    // vmlinux's are written by the loader before it processes these sections (see `rewrite`).
    if let (false, Some(why)) = (object == VMLINUX, loader_consumes(actual_target)) {
        return Err(bad(format!(
            "it relocates `{target_section}`, which the module loader processes itself ({why})"
        )));
    }

    let mut symbols: Vec<String> = Vec::new();
    let relas = elf.relas(index).map_err(|e| bad(e.to_string()))?;
    for rela in &relas {
        let symbol = *elf
            .symbols
            .get(rela.symbol)
            .ok_or_else(|| malformed("symbol index"))?;
        let symbol_name = lossy(elf.symbol_name(symbol)?);
        if symbol.shndx != SHN_LIVEPATCH {
            return Err(bad(format!(
                "symbol `{symbol_name}` has section index {:#x}, not SHN_LIVEPATCH",
                symbol.shndx
            )));
        }
        match parse_klp_symbol_name(&symbol_name) {
            Some((symbol_object, _, _)) if symbol_object == object => {}
            // Another module's symbol in a module's section: resolved when that module loads
            // (after its dependencies); what the kernel refuses is vmlinux in a module's.
            Some((symbol_object, _, _)) if symbol_object != VMLINUX && object != VMLINUX => {}
            Some((symbol_object, _, _)) => {
                return Err(bad(format!(
                    "symbol `{symbol_name}` belongs to `{symbol_object}`, not `{object}`"
                )))
            }
            None => {
                return Err(bad(format!(
                "symbol `{symbol_name}` is not named `{KLP_SYM_PREFIX}<object>.<symbol>,<sympos>`"
            )))
            }
        }
        if !symbols.contains(&symbol_name) {
            symbols.push(symbol_name);
        }
    }
    Ok(KlpRelaSection {
        object: object.to_owned(),
        target_section: target_section.to_owned(),
        relocations: relas.len(),
        symbols,
        name,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn klp_symbol_names_parse_like_the_kernel() {
        assert_eq!(
            parse_klp_symbol_name(".klp.sym.vmlinux.saved_command_line,0"),
            Some(("vmlinux", "saved_command_line", 0))
        );
        assert_eq!(
            parse_klp_symbol_name(".klp.sym.ext4.foo.isra.0,2"),
            Some(("ext4", "foo.isra.0", 2))
        );
        for bad in [
            ".klp.sym.vmlinux.foo",
            ".klp.sym.vmlinux.foo,",
            ".klp.sym.vmlinux.foo,1x",
            ".klp.sym.vmlinux.,0",
            ".klp.sym..foo,0",
            ".klp.sym.vm-linux.foo,0",
            ".klp.rela.vmlinux.foo,0",
        ] {
            assert_eq!(parse_klp_symbol_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn target_names_are_checked() {
        let target = |object: &str, symbol: &str| KlpTarget {
            relocated_in: None,
            object: object.into(),
            symbol: symbol.into(),
            sympos: 0,
        };
        assert!(ValidTarget::parse("k", &target("vmlinux", "foo.isra.0")).is_ok());
        for (object, symbol) in [
            ("", "foo"),
            ("nf-tables", "foo"),
            ("a.b", "foo"),
            (&"m".repeat(56), "foo"),
            ("vmlinux", ""),
            ("vmlinux", "a,b"),
            ("vmlinux", "a b"),
            ("vmlinux", &"s".repeat(512)),
        ] {
            assert!(
                matches!(
                    ValidTarget::parse("k", &target(object, symbol)),
                    Err(KlpElfError::InvalidTarget { .. })
                ),
                "{object:?} {symbol:?}"
            );
        }
    }

    #[test]
    fn loader_sections_match_by_name_or_prefix() {
        assert!(loader_consumes(b"__jump_table").is_some());
        assert!(loader_consumes(b".orc_unwind_ip").is_some());
        assert!(loader_consumes(b"__ksymtab_gpl").is_some());
        assert!(loader_consumes(b".text").is_none());
        assert!(loader_consumes(b".data").is_none());
        assert!(loader_consumes(b"__jump_table_x").is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &b""[..],
            b"\x7fELF",
            &[0u8; 64],
            b"not an elf file at all, clearly",
        ] {
            assert!(undefined_symbols(input).is_err());
            assert!(inspect(input).is_err());
            assert!(rewrite(input, &BTreeMap::new()).is_err());
        }
    }

    #[test]
    fn section_header_round_trips() {
        let header = SectionHeader {
            name: 1,
            kind: 2,
            flags: 3,
            addr: 4,
            offset: 5,
            size: 6,
            link: 7,
            info: 8,
            addralign: 9,
            entsize: 10,
        };
        let bytes = header.to_bytes();
        let back = SectionHeader::parse(&bytes, 0).unwrap();
        assert_eq!(format!("{header:?}"), format!("{back:?}"));
    }
}
