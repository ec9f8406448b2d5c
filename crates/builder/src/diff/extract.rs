//! Stage 4b of diff mode: a new relocatable object holding only what the live patch needs from
//! the patched object — the changed and new functions, new data, the strings and constants they
//! use, and the entries of the special sections (bug table, exception table, jump labels,
//! alternatives, static calls, return/retpoline sites, ORC, SMP locks) that describe them.
//!
//! Everything else the kept code references stays in the running kernel: it becomes an undefined
//! symbol named as in the ORIGINAL object (GCC numbers clones and static locals per compile), which
//! the symbol stage resolves to an export or a livepatch relocation.

use std::collections::{BTreeMap, BTreeSet};

use object::write::{self, SectionId, StandardSegment, SymbolId};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionFlags, SectionKind,
    SymbolFlags, SymbolKind, SymbolScope,
};

use super::clones::cold_parent;
use super::elf::{correlation_name, is_dynamic_debug_section, ElfView, Reloc, Section, Target};
use super::engine::DiffReport;
use super::preflight::KernelLayout;

/// Prefix of the symbol a changed function gets in the extracted object; the generated
/// `klp_func` table points `new_func` at it.
pub const NEW_FUNCTION_PREFIX: &str = "__patchbay_new__";

/// A special section as a table of fixed-size entries; an entry is kept when the relocation at
/// `key_offset` inside it points into a kept function.
struct Table<'n> {
    name: &'n str,
    entry_size: u64,
    key_offset: u64,
    /// A section with one entry per entry of this one, without relocations (`.orc_unwind`).
    parallel: Option<(&'static str, u64)>,
}

/// x86-64 layouts in Linux 6.1 (`struct bug_entry` with relative pointers, `struct
/// exception_table_entry`, `struct jump_entry`, `struct alt_instr`, `struct static_call_site`,
/// `struct paravirt_patch_site`, `s32` site lists, `struct orc_entry`).
const TABLES: &[Table<'static>] = &[
    Table {
        name: "__bug_table",
        entry_size: 12,
        key_offset: 0,
        parallel: None,
    },
    Table {
        name: "__ex_table",
        entry_size: 12,
        key_offset: 0,
        parallel: None,
    },
    Table {
        name: "__jump_table",
        entry_size: 16,
        key_offset: 0,
        parallel: None,
    },
    Table {
        name: ".altinstructions",
        entry_size: 12,
        key_offset: 0,
        parallel: None,
    },
    Table {
        name: ".static_call_sites",
        entry_size: 8,
        key_offset: 0,
        parallel: None,
    },
    Table {
        name: ".parainstructions",
        entry_size: 16,
        key_offset: 0,
        parallel: None,
    },
    Table {
        name: ".retpoline_sites",
        entry_size: 4,
        key_offset: 0,
        parallel: None,
    },
    Table {
        name: ".return_sites",
        entry_size: 4,
        key_offset: 0,
        parallel: None,
    },
    Table {
        name: ".smp_locks",
        entry_size: 4,
        key_offset: 0,
        parallel: None,
    },
    Table {
        name: ".orc_unwind_ip",
        entry_size: 4,
        key_offset: 0,
        parallel: Some((".orc_unwind", 6)),
    },
];

/// Sections copied whole when kept code or a kept table entry references them.
fn copied_whole(section: &Section) -> bool {
    section.is_strings()
        || section.name.starts_with(".rodata.cst")
        || section.name == ".altinstr_replacement"
        || section.name == ".altinstr_aux"
        || section.name.starts_with(".rodata.str")
}

/// Sections that never go into a live patch: tracing and build metadata the patch does not need.
fn ignored_section(name: &str) -> bool {
    name.starts_with(".discard")
        || name.starts_with(".note")
        || name == ".comment"
        || name == "__mcount_loc"
        || name.starts_with(".debug")
        || name == ".modinfo"
        // Exports (`___ksymtab+foo`, `___ksymtab_gpl+foo`, `__ksymtab_strings`, CRCs): the
        // export stays with the running kernel's function, and ftrace sends its callers to the
        // replacement; a patch module exporting the same name again would clash.
        || name.starts_with("__ksymtab")
        || name.starts_with("___ksymtab")
        || name.starts_with("__kcrctab")
        || name.starts_with("___kcrctab")
        // 6.12's `EXPORT_SYMBOL` record for modpost (`include/linux/export.h`).
        || name == ".export_symbol"
        || name == ".gnu.linkonce.this_module"
        || name.starts_with(".patchbay.")
        // Boot-time initcall tables (`.initcall6.init`, `.initcall4s.init`, `.con_initcall.init`):
        // the running kernel called them once at boot and nothing reads them again; a patch
        // module never runs them (its own init is `init_module`). A kept function an initcall
        // points at is patched for its other callers. 6.12 names the entries
        // `__initcall__kmod_<module>__<counter>_<line>_<function><level>`, so any fix that moves
        // lines changes them without changing what they call.
        || is_initcall_table(name)
}

/// Data the kernel reads only while it boots or a module initialises, then frees: initcall
/// tables, `__initdata` (`.init.data`, e.g. an ops template copied into place at init) and
/// `__initconst` (`.init.rodata`). A changed function they point at is patched through ftrace
/// for whoever copied the pointer; a new function they point at would never be installed:
/// [`new_functions_in_init_time_data`] finds those.
fn is_init_time_data(name: &str) -> bool {
    name == ".init.data" || name == ".init.rodata" || is_initcall_table(name)
}

/// `(section, function)` for every new function of the diff that init-time data of the
/// patched object points at: the running kernel consumed that data before the patch existed,
/// so the fix's new entry would never be reached there.
pub fn new_functions_in_init_time_data(
    patched: &ElfView,
    report: &DiffReport,
) -> Vec<(String, String)> {
    let new: BTreeMap<usize, &str> = function_sections(patched, &report.new_functions)
        .into_iter()
        .collect();
    let mut found = BTreeSet::new();
    for section in patched.sections.values() {
        if !is_init_time_data(&section.name) {
            continue;
        }
        for reloc in &section.relocs {
            if let Some(function) = target_section(patched, reloc).and_then(|t| new.get(&t)) {
                found.insert((section.name.clone(), (*function).to_string()));
            }
        }
    }
    found.into_iter().collect()
}

/// `(section, name)` of each of `names` that is a function of `view`.
fn function_sections<'n>(
    view: &ElfView,
    names: impl IntoIterator<Item = &'n String>,
) -> Vec<(usize, &'n str)> {
    names
        .into_iter()
        .filter_map(|n| {
            view.symbols
                .iter()
                .find(|s| &s.name == n && s.is_function())
                .and_then(|s| Some((s.section?, n.as_str())))
        })
        .collect()
}

/// The section a relocation of `view` points into (its own, or its symbol's).
fn target_section(view: &ElfView, reloc: &Reloc) -> Option<usize> {
    match &reloc.target {
        Target::Section(s) => Some(*s),
        Target::Symbol(i) => view.symbol(*i).and_then(|s| s.section),
    }
}

/// `.initcall<level>[s].init`, `.initcallearly.init` and `.con_initcall.init`.
fn is_initcall_table(name: &str) -> bool {
    name == ".con_initcall.init"
        || name
            .strip_prefix(".initcall")
            .and_then(|rest| rest.strip_suffix(".init"))
            .is_some_and(|level| {
                level == "early"
                    || level
                        .strip_suffix('s')
                        .unwrap_or(level)
                        .parse::<u8>()
                        .is_ok_and(|n| n <= 7)
            })
}

/// Why the replacement code could not be cut out of the patched object.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The diff report names a function the patched object does not define.
    #[error("{function} is in the diff but not in the patched object")]
    Missing {
        /// The function's name.
        function: String,
    },
    /// A special section (`.return_sites`, `.orc_unwind_ip`, ...) is not whole entries.
    #[error("{section}: its size {size} is not a multiple of the {entry} bytes of one entry; the kernel's layout differs from what this builder knows (report this)")]
    TableLayout {
        /// The table section.
        section: String,
        /// Its size in bytes.
        size: u64,
        /// The entry size in bytes this builder expects.
        entry: u64,
    },
    /// Kept code references something a patch cannot have its own copy of (anonymous
    /// writable data would be state split in two).
    #[error("kept code refers to {what} in section {section}, which a live patch cannot carry; patch a different function or report this")]
    Unsupported {
        /// What is referenced (`anonymous writable data at offset 16`).
        what: String,
        /// The section it is in.
        section: String,
    },
    /// Building the output object failed (an internal inconsistency, or the ELF writer).
    #[error("writing the extracted object failed: {0}")]
    Write(String),
}

/// What the extractor produced.
#[derive(Debug)]
pub struct Extracted {
    /// The relocatable object (ELF64 x86-64).
    pub object: Vec<u8>,
    /// `(function name in the running kernel, symbol of the replacement)` for each changed
    /// function.
    pub replaced: Vec<(String, String)>,
    /// Undefined symbols the kept code needs from the running kernel.
    pub external: BTreeSet<String>,
    /// Those of `external` that are local (static) symbols of the changed file: their names may
    /// repeat elsewhere in the kernel, so their position must come from the file.
    pub local_external: BTreeSet<String>,
    /// Keys (tracepoints, static calls) whose sites in kept code of a module patch were left
    /// out of the special sections.
    pub inert_tracepoints: BTreeSet<String>,
    /// Static call keys (`__SCK__x`) kept as undefined symbols because kept code calls their
    /// trampolines, for the patch module's objtool run to name in `.static_call_sites`
    /// (objtool on the linked module only; empty otherwise).
    pub static_call_keys: BTreeSet<String>,
}

struct Builder<'a> {
    patched: &'a ElfView,
    out: write::Object<'static>,
    /// patched section index → output section.
    sections: BTreeMap<usize, SectionId>,
    /// patched symbol index → output symbol.
    symbols: BTreeMap<usize, SymbolId>,
    externals: BTreeMap<String, SymbolId>,
    /// Function sections (patched index) whose code is kept.
    kept_functions: BTreeSet<usize>,
    /// Name in the running kernel of each patched symbol that correlates with the original.
    original_names: BTreeMap<String, String>,
    /// Sections whose relocations are already copied.
    relocated: BTreeSet<usize>,
    /// Data only the patched object has (from the diff report).
    new_data: BTreeSet<String>,
    local_externals: BTreeSet<String>,
    /// The patched object is part of a module (not vmlinux).
    module_target: bool,
    inert_tracepoints: BTreeSet<String>,
    static_call_keys: BTreeSet<String>,
    /// objtool runs on the linked module only: a module's tracepoint sites keep their
    /// `__jump_table` entries, keyed on [`INERT_KEY`] (see [`Builder::inert_key`]).
    linked_objtool: bool,
    inert_key: Option<SymbolId>,
}

/// Builds the object for the changed and new functions and new data of `report`.
///
/// New functions named in `export_as` get that global name (callbacks the generated tables
/// refer to). `module_target`: the object is part of a module, not vmlinux.
pub fn extract(
    original: &ElfView,
    patched: &ElfView,
    report: &DiffReport,
    export_as: &BTreeMap<String, String>,
    module_target: bool,
) -> Result<Extracted, ExtractError> {
    extract_for(
        original,
        patched,
        report,
        export_as,
        module_target,
        KernelLayout::per_object_objtool(),
    )
}

/// [`extract`] for a kernel of the given layout. When objtool runs on the linked module only
/// (IBT, 6.12), the views must come without objtool outputs
/// ([`ElfView::without_objtool_outputs`]); the special-section layouts are the object's own
/// (`.altinstructions` entries by their relocations' stride), and every static call key the
/// kept code calls through stays as an undefined symbol ([`Extracted::static_call_keys`]).
pub fn extract_for(
    original: &ElfView,
    patched: &ElfView,
    report: &DiffReport,
    export_as: &BTreeMap<String, String>,
    module_target: bool,
    layout: KernelLayout,
) -> Result<Extracted, ExtractError> {
    let original_names: BTreeMap<String, String> = original
        .symbols
        .iter()
        .filter(|s| !s.name.is_empty())
        .map(|s| (correlation_name(&s.name), s.name.clone()))
        .collect();
    let mut builder = Builder {
        patched,
        out: write::Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little),
        sections: BTreeMap::new(),
        symbols: BTreeMap::new(),
        externals: BTreeMap::new(),
        kept_functions: BTreeSet::new(),
        original_names,
        relocated: BTreeSet::new(),
        new_data: report.new_data.iter().cloned().collect(),
        local_externals: BTreeSet::new(),
        module_target,
        inert_tracepoints: BTreeSet::new(),
        static_call_keys: BTreeSet::new(),
        linked_objtool: layout.objtool_on_linked_module,
        inert_key: None,
    };
    let mut replaced = Vec::new();
    let changed: BTreeSet<&String> = report.changed_functions.iter().collect();
    let wanted: Vec<&String> = report
        .changed_functions
        .iter()
        .chain(&report.new_functions)
        .collect();
    // The output name of each kept function that is renamed: a replacement, a callback.
    let renamed: BTreeMap<&str, String> = wanted
        .iter()
        .filter_map(|name| {
            let out = if changed.contains(*name) {
                format!(
                    "{NEW_FUNCTION_PREFIX}{}",
                    sanitize(&builder.running_name(name))
                )
            } else {
                export_as.get(*name)?.clone()
            };
            Some((name.as_str(), out))
        })
        .collect();
    // Pass 1: the kept functions' sections and symbols, so references between them resolve.
    for name in &wanted {
        let symbol = patched
            .symbols
            .iter()
            .find(|s| &&s.name == name && s.is_function())
            .ok_or_else(|| ExtractError::Missing {
                function: (*name).clone(),
            })?;
        let Some(section) = symbol.section else {
            continue;
        };
        builder.kept_functions.insert(section);
        let out_section = builder.copy_section(section)?;
        let (out_name, scope) = if changed.contains(*name) {
            let running = builder.running_name(&symbol.name);
            let new_name = format!("{NEW_FUNCTION_PREFIX}{}", sanitize(&running));
            replaced.push((running, new_name.clone()));
            (new_name, SymbolScope::Linkage)
        } else if let Some(global) = export_as.get(*name) {
            (global.clone(), SymbolScope::Linkage)
        } else if let (true, Some(part)) = (
            layout.objtool_on_linked_module,
            cold_part_name(&symbol.name, &renamed),
        ) {
            // objtool (on the linked module) finds a `.cold` part's parent by the part's
            // name up to `.cold`: the part follows its renamed parent.
            (part, scope_of(symbol.global))
        } else {
            (symbol.name.clone(), scope_of(symbol.global))
        };
        let id = builder.out.add_symbol(write::Symbol {
            name: out_name.into_bytes(),
            value: symbol.value,
            size: symbol.size,
            kind: SymbolKind::Text,
            scope,
            weak: false,
            section: write::SymbolSection::Section(out_section),
            flags: SymbolFlags::None,
        });
        builder.symbols.insert(symbol.index, id);
    }
    for name in &report.new_data {
        if let Some(symbol) = patched
            .symbols
            .iter()
            .find(|s| &s.name == name && s.is_data())
        {
            builder.define_copy(symbol.index)?;
        }
    }
    // Pass 2: relocations of the kept functions (this may copy strings and constants).
    let kept: Vec<usize> = builder.kept_functions.iter().copied().collect();
    for section in kept {
        builder.copy_relocations(section)?;
    }
    // Pass 3: special-section entries that describe kept code.
    for table in TABLES {
        if layout.objtool_on_linked_module && !LINKED_OBJTOOL_TABLES.contains(&table.name) {
            continue;
        }
        let entry_size = if layout.objtool_on_linked_module && table.name == ".altinstructions" {
            match builder.patched.section_by_name(table.name) {
                Some(section) => relocation_stride(section, 2)?,
                None => continue,
            }
        } else {
            table.entry_size
        };
        builder.copy_table(table, entry_size)?;
    }
    // objtool's annotations (`ANNOTATE_REACHABLE` after a `WARN`'s `ud2`, retpoline-safe
    // indirect calls, `instrumentation_begin()`, unwind hints, ...) of the kept code, for the
    // patch module's objtool run to read as it read the kernel's.
    if layout.objtool_on_linked_module {
        let annotations: Vec<String> = builder
            .patched
            .sections
            .values()
            .filter(|s| OBJTOOL_ANNOTATIONS.contains(&s.name.as_str()) && !s.relocs.is_empty())
            .map(|s| s.name.clone())
            .collect();
        for name in annotations {
            let Some(section) = builder.patched.section_by_name(&name) else {
                continue;
            };
            let entry_size = relocation_stride(section, 1)?;
            builder.copy_table(
                &Table {
                    name: &name,
                    entry_size,
                    key_offset: 0,
                    parallel: None,
                },
                entry_size,
            )?;
        }
    }
    // objtool makes the static call site of a kept `call __SCT__x` with the key `__SCK__x`
    // only if the object has that symbol (the compile had it only from `.discard.addressable`,
    // which is not carried); without it a module's site names the trampoline, which the
    // loader refuses unless the trampoline is exported as a key.
    if layout.objtool_on_linked_module {
        let trampolines: Vec<String> = builder
            .externals
            .keys()
            .filter(|name| name.starts_with(STATIC_CALL_TRAMP_PREFIX))
            .cloned()
            .collect();
        for trampoline in trampolines {
            let Some(call) = trampoline.strip_prefix(STATIC_CALL_TRAMP_PREFIX) else {
                continue;
            };
            let key = format!("{STATIC_CALL_KEY_PREFIX}{call}");
            // Only a key the compile named: `static_call_mod()` in a module names none, and
            // its site keys on the trampoline exported with EXPORT_STATIC_CALL_TRAMP
            // (`preempt_schedule_notrace`), which the loader maps to the key itself.
            if patched.symbols.iter().any(|s| s.name == key) {
                builder.external(key.clone());
                builder.static_call_keys.insert(key);
            }
        }
    }
    let external = builder.externals.keys().cloned().collect();
    let local_external = builder.local_externals.clone();
    let inert_tracepoints = builder.inert_tracepoints.clone();
    let static_call_keys = builder.static_call_keys.clone();
    let object = builder
        .out
        .write()
        .map_err(|e| ExtractError::Write(e.to_string()))?;
    Ok(Extracted {
        object,
        replaced,
        external,
        local_external,
        inert_tracepoints,
        static_call_keys,
    })
}

/// The patch's own never-enabled static key for a module's tracepoint sites
/// ([`Builder::inert_key`]), and its section.
pub const INERT_KEY: &str = "__patchbay_inert_tracepoint_key";
const INERT_KEY_SECTION: &str = ".data..patchbay_inert_key";

/// Offset of `long key` in `struct jump_entry { s32 code; s32 target; long key; }`.
const JUMP_ENTRY_KEY: u64 = 8;

/// `__SCT__x`: a static call's trampoline; `__SCK__x`: its key.
const STATIC_CALL_TRAMP_PREFIX: &str = "__SCT__";
const STATIC_CALL_KEY_PREFIX: &str = "__SCK__";

/// objtool's annotation sections (`include/linux/objtool.h` and the x86 headers of 6.12): one
/// relocation per entry pointing at the annotated instruction (or function).
const OBJTOOL_ANNOTATIONS: &[&str] = &[
    ".discard.reachable",
    ".discard.unwind_hints",
    ".discard.func_stack_frame_non_standard",
    ".discard.noendbr",
    ".discard.retpoline_safe",
    ".discard.instr_begin",
    ".discard.instr_end",
    ".discard.validate_unret",
    ".discard.intra_function_calls",
    ".discard.ignore_alts",
    ".discard.ibt_endbr_noseal",
];

/// The tables carried when objtool runs on the linked module: the compiler's and the kernel
/// macros' own (objtool's are regenerated, and 6.12 has no `.parainstructions`).
const LINKED_OBJTOOL_TABLES: &[&str] = &[
    "__bug_table",
    "__ex_table",
    "__jump_table",
    ".altinstructions",
    ".smp_locks",
];

/// The entry size of a table whose entries each have `per_entry` relocations at the same
/// offsets (`struct alt_instr`: `instr_offset`, `repl_offset`): the distance between the first
/// relocations of two entries, or the whole section for one entry. 12 bytes in Linux 6.1, 14
/// in 6.12 (`ft_flags`); read from the object, so no kernel version is assumed.
fn relocation_stride(section: &Section, per_entry: usize) -> Result<u64, ExtractError> {
    let layout_error = |entry| ExtractError::TableLayout {
        section: section.name.clone(),
        size: section.size,
        entry,
    };
    let entries = section.relocs.len() / per_entry;
    if entries == 0 || !section.relocs.len().is_multiple_of(per_entry) {
        return Err(layout_error(0));
    }
    let stride = match section.relocs.get(per_entry) {
        Some(second) => second
            .offset
            .saturating_sub(section.relocs.first().map_or(0, |r| r.offset)),
        None => section.size,
    };
    let whole = stride > 0 && section.size == stride.saturating_mul(entries as u64);
    let regular = section.relocs.iter().enumerate().all(|(i, r)| {
        let entry = (i / per_entry) as u64;
        section
            .relocs
            .get(i % per_entry)
            .is_some_and(|first| r.offset == first.offset + entry * stride)
    });
    if whole && regular {
        Ok(stride)
    } else {
        Err(layout_error(stride))
    }
}

fn scope_of(global: bool) -> SymbolScope {
    if global {
        SymbolScope::Linkage
    } else {
        SymbolScope::Compilation
    }
}

/// The output name of the `.cold` part `name` (`foo.cold`, `foo.isra.0.cold.3`) of a parent
/// `renamed` gives a new name: that name with the part's suffix (`__patchbay_new__foo.cold`).
/// `None` when `name` is no `.cold` part or its parent keeps its name.
fn cold_part_name(name: &str, renamed: &BTreeMap<&str, String>) -> Option<String> {
    let parent = cold_parent(name)?;
    let suffix = name.get(parent.len()..)?;
    renamed
        .get(parent)
        .map(|new_parent| format!("{new_parent}{suffix}"))
}

/// Symbol names may contain `.` (clones); keep the generated name a C identifier.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn section_kind(section: &Section) -> SectionKind {
    if section.is_text() {
        SectionKind::Text
    } else if section.sh_type == object::elf::SHT_NOBITS {
        SectionKind::UninitializedData
    } else if section.is_strings() {
        SectionKind::ReadOnlyString
    } else {
        SectionKind::Data
    }
}

impl Builder<'_> {
    /// The name the running kernel knows a patched symbol by.
    fn running_name(&self, patched_name: &str) -> String {
        self.original_names
            .get(&correlation_name(patched_name))
            .cloned()
            .unwrap_or_else(|| patched_name.to_owned())
    }

    /// Copies a patched section (bytes, flags, alignment) into the output once.
    fn copy_section(&mut self, index: usize) -> Result<SectionId, ExtractError> {
        if let Some(id) = self.sections.get(&index) {
            return Ok(*id);
        }
        let section = self
            .patched
            .section(index)
            .ok_or_else(|| ExtractError::Write(format!("no section {index}")))?;
        let segment = self.out.segment_name(StandardSegment::Text).to_vec();
        let id = self.out.add_section(
            segment,
            section.name.clone().into_bytes(),
            section_kind(section),
        );
        self.out.section_mut(id).flags = SectionFlags::Elf {
            sh_flags: section.flags,
        };
        let align = section.align.max(1);
        if section.sh_type == object::elf::SHT_NOBITS {
            self.out.append_section_bss(id, section.size, align);
        } else {
            self.out.set_section_data(id, section.data.clone(), align);
        }
        self.sections.insert(index, id);
        Ok(id)
    }

    /// Copies the section of a new data symbol and defines the symbol in the output.
    fn define_copy(&mut self, symbol_index: usize) -> Result<SymbolId, ExtractError> {
        if let Some(id) = self.symbols.get(&symbol_index) {
            return Ok(*id);
        }
        let symbol = self
            .patched
            .symbol(symbol_index)
            .cloned()
            .ok_or_else(|| ExtractError::Write(format!("no symbol {symbol_index}")))?;
        let section = symbol
            .section
            .ok_or_else(|| ExtractError::Write(format!("{} has no section", symbol.name)))?;
        let out_section = self.copy_section(section)?;
        self.copy_relocations(section)?;
        let id = self.out.add_symbol(write::Symbol {
            name: symbol.name.clone().into_bytes(),
            value: symbol.value,
            size: symbol.size,
            kind: symbol.kind,
            scope: scope_of(symbol.global),
            weak: false,
            section: write::SymbolSection::Section(out_section),
            flags: SymbolFlags::None,
        });
        self.symbols.insert(symbol_index, id);
        Ok(id)
    }

    /// An undefined symbol for something that stays in the running kernel.
    fn external(&mut self, running_name: String) -> SymbolId {
        if let Some(id) = self.externals.get(&running_name) {
            return *id;
        }
        let id = self.out.add_symbol(write::Symbol {
            name: running_name.clone().into_bytes(),
            value: 0,
            size: 0,
            kind: SymbolKind::Unknown,
            scope: SymbolScope::Linkage,
            weak: false,
            section: write::SymbolSection::Undefined,
            flags: SymbolFlags::None,
        });
        self.externals.insert(running_name, id);
        id
    }

    fn is_read_only(&self, section: Option<usize>) -> bool {
        section
            .and_then(|s| self.patched.section(s))
            .is_some_and(|s| !s.is_writable() && !s.is_text())
    }

    fn is_new_data(&self, symbol_name: &str) -> bool {
        self.new_data.contains(symbol_name)
    }

    /// The output symbol and addend a relocation of kept code must use.
    fn map_target(&mut self, reloc: &Reloc) -> Result<(SymbolId, i64), ExtractError> {
        match &reloc.target {
            Target::Symbol(index) => {
                if let Some(id) = self.symbols.get(index) {
                    return Ok((*id, reloc.addend));
                }
                let symbol = self
                    .patched
                    .symbol(*index)
                    .cloned()
                    .ok_or_else(|| ExtractError::Write(format!("no symbol {index}")))?;
                // Special statics (`__already_done.N`, `__warned`, dynamic debug descriptors,
                // `_rs`, …): never looked up in the running kernel, where their names repeat;
                // the patch carries its own copy.
                if self.patched.is_special_static(&symbol) {
                    let id = self.define_copy(*index)?;
                    return Ok((id, reloc.addend));
                }
                if symbol.section.is_some() && symbol.is_data() && self.is_new_data(&symbol.name) {
                    let id = self.define_copy(*index)?;
                    return Ok((id, reloc.addend));
                }
                // Local constants (`__func__.12`, const tables): a copy behaves the same and
                // needs no symbol lookup in the running kernel, where such names repeat.
                if symbol.is_data() && !symbol.global && self.is_read_only(symbol.section) {
                    let id = self.define_copy(*index)?;
                    return Ok((id, reloc.addend));
                }
                // Assembler-local labels (`.LC2`, kept as symbols when inline asm such as the
                // bug table refers to them): the same as their section at that offset.
                if let (Some(section), false, false) =
                    (symbol.section, symbol.is_function(), symbol.is_data())
                {
                    let value = i64::try_from(symbol.value).unwrap_or(i64::MAX);
                    let as_section = Reloc {
                        target: Target::Section(section),
                        addend: reloc.addend.saturating_add(value),
                        ..reloc.clone()
                    };
                    return self.map_target(&as_section);
                }
                let name = self.running_name(&symbol.name);
                if !symbol.global {
                    self.local_externals.insert(name.clone());
                }
                Ok((self.external(name), reloc.addend))
            }
            Target::Section(index) => {
                let section = self
                    .patched
                    .section(*index)
                    .cloned()
                    .ok_or_else(|| ExtractError::Write(format!("no section {index}")))?;
                let special = is_dynamic_debug_section(&section.name)
                    || self
                        .patched
                        .symbol_of_section(*index)
                        .is_some_and(|owner| self.patched.is_special_static(owner));
                if self.kept_functions.contains(index) || copied_whole(&section) || special {
                    let id = self.copy_section(*index)?;
                    if !self.kept_functions.contains(index) {
                        self.copy_relocations(*index)?;
                    }
                    return Ok((self.out.section_symbol(id), reloc.addend));
                }
                // A named function or datum that stays in the kernel, addressed through its
                // section symbol: address it through its name instead.
                if let Some(owner) = self.patched.symbol_of_section(*index).cloned() {
                    let local_constant = owner.is_data() && !owner.global && !section.is_writable();
                    if owner.is_data() && (self.is_new_data(&owner.name) || local_constant) {
                        let id = self.define_copy(owner.index)?;
                        return Ok((id, reloc.addend));
                    }
                    let name = self.running_name(&owner.name);
                    if !owner.global {
                        self.local_externals.insert(name.clone());
                    }
                    // The section may start with padding before the symbol (6.12).
                    let value = i64::try_from(owner.value).unwrap_or(0);
                    return Ok((self.external(name), reloc.addend.saturating_sub(value)));
                }
                // Anonymous constants (literals GCC did not put in a string section): a copy
                // behaves the same. Anonymous writable data would be state split in two.
                if !section.is_writable() && !section.is_text() {
                    let id = self.copy_section(*index)?;
                    self.copy_relocations(*index)?;
                    return Ok((self.out.section_symbol(id), reloc.addend));
                }
                Err(ExtractError::Unsupported {
                    what: format!(
                        "anonymous writable data at offset {}",
                        reloc.target_offset()
                    ),
                    section: section.name,
                })
            }
        }
    }

    /// Copies the relocations of a copied section, retargeted into the output.
    fn copy_relocations(&mut self, index: usize) -> Result<(), ExtractError> {
        let Some(section) = self.patched.section(index).cloned() else {
            return Ok(());
        };
        let Some(out_section) = self.sections.get(&index).copied() else {
            return Ok(());
        };
        // Copy each section's relocations once.
        if !self.relocated.insert(index) {
            return Ok(());
        }
        for reloc in &section.relocs {
            let (symbol, addend) = self.map_target(reloc)?;
            self.add_reloc(out_section, reloc.offset, symbol, addend, reloc.r_type)?;
        }
        Ok(())
    }

    fn add_reloc(
        &mut self,
        section: SectionId,
        offset: u64,
        symbol: SymbolId,
        addend: i64,
        r_type: u32,
    ) -> Result<(), ExtractError> {
        self.out
            .add_relocation(
                section,
                write::Relocation {
                    offset,
                    symbol,
                    addend,
                    flags: RelocationFlags::Elf { r_type },
                },
            )
            .map_err(|e| ExtractError::Write(e.to_string()))
    }

    /// The key of entry `index` of `table` when a patch for a module leaves that site out: the
    /// key may be the module's, whose relocation could be written only when the module loads,
    /// after the loader used the entry. A tracepoint's jump label then stays inert in the
    /// replacement (harmless, as kpatch and klp-build also decide); a static call site keeps
    /// calling through its trampoline, which follows the key all the same, only not inlined.
    fn module_site_key(&self, table: &Table<'_>, section: &Section, index: u64) -> Option<String> {
        // `struct jump_entry { s32 code; s32 target; long key; }`,
        // `struct static_call_site { s32 addr; s32 key; }`.
        let (key_field, prefix) = match table.name {
            "__jump_table" => (8, "__tracepoint_"),
            ".static_call_sites" => (4, "__SCK__"),
            _ => return None,
        };
        let key_offset = index * table.entry_size + key_field;
        let reloc = section.relocs.iter().find(|r| r.offset == key_offset)?;
        let Target::Symbol(symbol) = &reloc.target else {
            return None;
        };
        let name = &self.patched.symbol(*symbol)?.name;
        name.starts_with(prefix).then(|| name.clone())
    }

    /// The patch's own static key, never enabled, that a module's tracepoint sites in kept
    /// code are keyed on when objtool runs on the linked module only. The compiler left each
    /// site a `jmp` to the tracepoint path for objtool's jump_label hack to turn into a NOP
    /// (the entry's key addend has bit 1 set); that objtool run sees only the entries the
    /// patch carries. Left out, the site would stay a `jmp` (always tracing) and the code after
    /// it unreachable; NOPed here, the tracepoint path would be unreachable to objtool. Kept
    /// with this key (the branch bits of the addend kept too), objtool NOPs the site and
    /// the module loader finds the key in the patch itself: the tracepoint is inert.
    fn inert_key(&mut self) -> SymbolId {
        if let Some(id) = self.inert_key {
            return id;
        }
        let segment = self.out.segment_name(StandardSegment::Data).to_vec();
        let section = self.out.add_section(
            segment,
            INERT_KEY_SECTION.as_bytes().to_vec(),
            SectionKind::Data,
        );
        // `struct static_key` (`atomic_t enabled`, a pointer-sized union): all zero is
        // `STATIC_KEY_INIT_FALSE`.
        self.out.set_section_data(section, vec![0; 16], 8);
        let id = self.out.add_symbol(write::Symbol {
            name: INERT_KEY.as_bytes().to_vec(),
            value: 0,
            size: 16,
            kind: SymbolKind::Data,
            scope: SymbolScope::Compilation,
            weak: false,
            section: write::SymbolSection::Section(section),
            flags: SymbolFlags::None,
        });
        self.inert_key = Some(id);
        id
    }

    /// Whether a relocation points into `.altinstr_replacement` the output already has (copied
    /// whole).
    fn points_into_copied_replacement(&self, reloc: &Reloc) -> bool {
        target_section(self.patched, reloc).is_some_and(|s| {
            self.sections.contains_key(&s)
                && self
                    .patched
                    .section(s)
                    .is_some_and(|s| s.name == ".altinstr_replacement")
        })
    }

    /// Whether a relocation points into kept code.
    fn points_into_kept(&self, reloc: &Reloc) -> bool {
        match &reloc.target {
            Target::Section(s) => self.kept_functions.contains(s),
            Target::Symbol(i) => self
                .patched
                .symbol(*i)
                .and_then(|s| s.section)
                .is_some_and(|s| self.kept_functions.contains(&s) && self.symbols.contains_key(i)),
        }
    }

    fn copy_table(&mut self, table: &Table<'_>, entry_size: u64) -> Result<(), ExtractError> {
        let Some(section) = self.patched.section_by_name(table.name).cloned() else {
            return Ok(());
        };
        let table = &Table {
            name: table.name,
            entry_size,
            key_offset: table.key_offset,
            parallel: table.parallel,
        };
        if section.size % table.entry_size != 0 {
            return Err(ExtractError::TableLayout {
                section: section.name,
                size: section.size,
                entry: table.entry_size,
            });
        }
        let annotation = table.name.starts_with(".discard.");
        let mut kept_entries: Vec<u64> = (0..section.size / table.entry_size)
            .filter(|i| {
                let key = i * table.entry_size + table.key_offset;
                section.relocs.iter().any(|r| {
                    r.offset == key
                        && (self.points_into_kept(r)
                            || (annotation && self.points_into_copied_replacement(r)))
                })
            })
            .collect();
        // Entries (by index) of a module's tracepoint sites kept with the inert key.
        let mut inert_entries = BTreeSet::new();
        if self.module_target {
            let rekey = self.linked_objtool && table.name == "__jump_table";
            kept_entries.retain(|i| match self.module_site_key(table, &section, *i) {
                Some(key) => {
                    self.inert_tracepoints.insert(key);
                    if rekey {
                        inert_entries.insert(*i);
                    }
                    rekey
                }
                None => true,
            });
        }
        if kept_entries.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        let mut relocs = Vec::new();
        // `(offset, addend, type)` of the key fields that name the inert key instead.
        let mut inert_keys = Vec::new();
        for (new_index, old_index) in kept_entries.iter().enumerate() {
            let start = old_index * table.entry_size;
            let end = start + table.entry_size;
            let bytes = section
                .data
                .get(
                    usize::try_from(start).unwrap_or(usize::MAX)
                        ..usize::try_from(end).unwrap_or(usize::MAX),
                )
                .ok_or_else(|| {
                    ExtractError::Write(format!("{} entry {old_index}", section.name))
                })?;
            data.extend_from_slice(bytes);
            let new_start = new_index as u64 * table.entry_size;
            for r in section
                .relocs
                .iter()
                .filter(|r| r.offset >= start && r.offset < end)
            {
                let offset = r.offset - start + new_start;
                if inert_entries.contains(old_index) && r.offset == start + JUMP_ENTRY_KEY {
                    inert_keys.push((offset, r.addend & 3, r.r_type));
                    continue;
                }
                relocs.push(Reloc {
                    offset,
                    ..r.clone()
                });
            }
        }
        let segment = self.out.segment_name(StandardSegment::Data).to_vec();
        let id = self.out.add_section(
            segment,
            section.name.clone().into_bytes(),
            SectionKind::Data,
        );
        self.out.section_mut(id).flags = SectionFlags::Elf {
            sh_flags: section.flags,
        };
        self.out.set_section_data(id, data, section.align.max(1));
        for reloc in relocs {
            let (symbol, addend) = self.map_target(&reloc)?;
            self.add_reloc(id, reloc.offset, symbol, addend, reloc.r_type)?;
        }
        for (offset, addend, r_type) in inert_keys {
            let key = self.inert_key();
            self.add_reloc(id, offset, key, addend, r_type)?;
        }
        if let Some((parallel_name, size)) = table.parallel {
            if let Some(parallel) = self.patched.section_by_name(parallel_name).cloned() {
                let mut bytes = Vec::new();
                for old_index in &kept_entries {
                    let start = usize::try_from(old_index * size).unwrap_or(usize::MAX);
                    let end = start.saturating_add(usize::try_from(size).unwrap_or(0));
                    bytes.extend_from_slice(parallel.data.get(start..end).ok_or_else(|| {
                        ExtractError::Write(format!("{parallel_name} entry {old_index}"))
                    })?);
                }
                let segment = self.out.segment_name(StandardSegment::Data).to_vec();
                let pid = self.out.add_section(
                    segment,
                    parallel_name.as_bytes().to_vec(),
                    SectionKind::Data,
                );
                self.out.section_mut(pid).flags = SectionFlags::Elf {
                    sh_flags: parallel.flags,
                };
                self.out.set_section_data(pid, bytes, parallel.align.max(1));
            }
        }
        Ok(())
    }
}

/// Sections of the patched object that hold code or data the extractor does not know how to
/// carry, referenced from kept functions: reported before anything is built.
pub fn unknown_special_sections(patched: &ElfView, report: &DiffReport) -> Vec<String> {
    let kept: BTreeSet<usize> = function_sections(
        patched,
        report.changed_functions.iter().chain(&report.new_functions),
    )
    .into_iter()
    .map(|(section, _)| section)
    .collect();
    let known: BTreeSet<&str> = TABLES
        .iter()
        .flat_map(|t| std::iter::once(t.name).chain(t.parallel.map(|p| p.0)))
        .collect();
    let mut unknown = BTreeSet::new();
    for section in patched.sections.values() {
        if !section.is_alloc()
            || ignored_section(&section.name)
            || is_init_time_data(&section.name)
            || known.contains(section.name.as_str())
            || section.is_text()
            || section.name.starts_with(".data")
            || section.name.starts_with(".bss")
            || section.name.starts_with(".rodata")
            || section.name == ".altinstr_replacement"
            || section.name == ".altinstr_aux"
        {
            continue;
        }
        let refers_to_kept = section
            .relocs
            .iter()
            .any(|r| target_section(patched, r).is_some_and(|s| kept.contains(&s)));
        if refers_to_kept {
            unknown.insert(section.name.clone());
        }
    }
    unknown.into_iter().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn alt_section(size: u64, offsets: &[u64]) -> Section {
        Section {
            index: 1,
            name: ".altinstructions".into(),
            data: vec![0; usize::try_from(size).unwrap()],
            size,
            align: 1,
            flags: 0,
            sh_type: object::elf::SHT_PROGBITS,
            relocs: offsets
                .iter()
                .map(|offset| Reloc {
                    offset: *offset,
                    r_type: object::elf::R_X86_64_PC32,
                    target: Target::Section(2),
                    addend: 0,
                })
                .collect(),
        }
    }

    /// A `.cold` part is named after its parent's output name, keeping GCC's suffix; a part
    /// whose parent keeps its name keeps its own.
    #[test]
    fn initcall_tables_are_ignored_and_nothing_else_that_looks_like_them() {
        for name in [
            ".initcall6.init",
            ".initcall4s.init",
            ".initcall0.init",
            ".initcallearly.init",
            ".con_initcall.init",
        ] {
            assert!(ignored_section(name), "{name}");
        }
        for name in [
            ".initcall8.init",
            ".initcall.init",
            ".init.text",
            ".init.data",
            ".initcall6x.init",
        ] {
            assert!(!ignored_section(name), "{name}");
        }
    }

    #[test]
    fn cold_parts_follow_their_renamed_parent() {
        let renamed: BTreeMap<&str, String> = [
            ("foo.isra.0", "__patchbay_new__foo_isra_0".to_owned()),
            ("bar", "__patchbay_new__bar".to_owned()),
            ("baz.part.0", "__patchbay_new__baz_part_0".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            cold_part_name("foo.isra.0.cold", &renamed).as_deref(),
            Some("__patchbay_new__foo_isra_0.cold")
        );
        assert_eq!(
            cold_part_name("bar.cold.3", &renamed).as_deref(),
            Some("__patchbay_new__bar.cold.3")
        );
        assert_eq!(
            cold_part_name("baz.part.0.cold", &renamed).as_deref(),
            Some("__patchbay_new__baz_part_0.cold")
        );
        // The parent is another function (`foo`, not `foo.isra.0`), or keeps its name.
        assert_eq!(cold_part_name("foo.cold", &renamed), None);
        assert_eq!(cold_part_name("qux.cold", &renamed), None);
        assert_eq!(cold_part_name("bar", &renamed), None);
        assert_eq!(cold_part_name("bar.colder", &renamed), None);
    }

    /// `struct alt_instr` is 12 bytes in 6.1 and 14 in 6.12: the relocations tell which.
    #[test]
    fn alternative_entry_size_comes_from_the_relocations() {
        assert_eq!(
            relocation_stride(&alt_section(0x2a, &[0, 4, 0xe, 0x12, 0x1c, 0x20]), 2).unwrap(),
            14
        );
        assert_eq!(
            relocation_stride(&alt_section(24, &[0, 4, 12, 16]), 2).unwrap(),
            12
        );
        assert_eq!(relocation_stride(&alt_section(14, &[0, 4]), 2).unwrap(), 14);
        // Not whole entries, an odd relocation, no relocations: the layout is unknown.
        assert!(relocation_stride(&alt_section(30, &[0, 4, 14, 18]), 2).is_err());
        assert!(relocation_stride(&alt_section(28, &[0, 4, 14]), 2).is_err());
        assert!(relocation_stride(&alt_section(28, &[0, 4, 14, 20]), 2).is_err());
        assert!(relocation_stride(&alt_section(28, &[]), 2).is_err());
        // Annotations: one relocation per 4-byte entry.
        assert_eq!(relocation_stride(&alt_section(8, &[0, 4]), 1).unwrap(), 4);
    }
}
