//! Indirect Branch Tracking (`CONFIG_X86_KERNEL_IBT`, Debian's 6.12): an indirect call or jump
//! must land on `ENDBR64`, and at boot the kernel overwrites the `ENDBR64` of every function
//! whose address its build never took (the entries of vmlinux's `.ibt_endbr_seal`, made by
//! objtool). A live patch that takes the address of such a function (`.fn = foo`,
//! `lea foo(%rip)`) would hand out a pointer whose first indirect call stops the kernel
//! ("Missing ENDBR"). Direct calls and jumps are not affected, nor are the patch's own
//! functions, whose references objtool sees when it checks the patch module.
//!
//! The on-disk vmlinux does not show the sealing (its bytes still hold `ENDBR64`); the seal
//! list is a section of its own, read here from the kernel's ELF.

use std::collections::BTreeSet;

use object::{Object, ObjectSection, SectionFlags};

use super::elf::{ElfView, Target, OBJTOOL_SECTIONS};
use super::engine::is_branch_target;

/// `endbr64`.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// The running kernel's vmlinux could not be read for its branch targets.
#[derive(Debug, thiserror::Error)]
#[error("cannot read vmlinux's IBT data: {0}")]
pub struct IbtError(String);

/// Why a function's address may not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetProblem {
    /// Listed in `.ibt_endbr_seal`: its `ENDBR64` is overwritten at boot.
    Sealed,
    /// It does not start with `ENDBR64` (a `static` function GCC saw only called directly).
    NoEndbr,
    /// The address is in no executable section of the image.
    NotCode,
}

impl TargetProblem {
    /// The problem in words, for a refusal.
    pub fn describe(self) -> &'static str {
        match self {
            TargetProblem::Sealed => {
                "the running kernel sealed its ENDBR64 at boot (it is in vmlinux's \
                 .ibt_endbr_seal: nothing took its address when the kernel was built)"
            }
            TargetProblem::NoEndbr => "it does not start with ENDBR64",
            TargetProblem::NotCode => "its address is in no code section",
        }
    }
}

/// Which vmlinux addresses an indirect branch may land on.
#[derive(Debug, Default)]
pub struct BranchTargets {
    sealed: BTreeSet<u64>,
    /// Executable sections: (address, bytes).
    code: Vec<(u64, Vec<u8>)>,
}

impl BranchTargets {
    /// Reads vmlinux's executable sections and resolves `.ibt_endbr_seal` (`s32` entries
    /// relative to themselves: the sealed address is entry address + value).
    pub fn from_vmlinux(bytes: &[u8]) -> Result<BranchTargets, IbtError> {
        let file = object::File::parse(bytes).map_err(|e| IbtError(e.to_string()))?;
        let mut targets = BranchTargets::default();
        let seal = file
            .section_by_name(".ibt_endbr_seal")
            .ok_or_else(|| IbtError("vmlinux has no .ibt_endbr_seal section".to_owned()))?;
        let data = seal.data().map_err(|e| IbtError(e.to_string()))?;
        for (index, entry) in data.chunks_exact(4).enumerate() {
            let mut value = [0u8; 4];
            value.copy_from_slice(entry);
            let at = seal.address().wrapping_add(4 * index as u64);
            targets
                .sealed
                .insert(at.wrapping_add_signed(i64::from(i32::from_le_bytes(value))));
        }
        for section in file.sections() {
            let executable = matches!(section.flags(), SectionFlags::Elf { sh_flags }
                if sh_flags & u64::from(object::elf::SHF_EXECINSTR) != 0);
            if executable {
                if let Ok(data) = section.data() {
                    targets.code.push((section.address(), data.to_vec()));
                }
            }
        }
        Ok(targets)
    }

    /// Why an indirect branch may not land on `address`, or `None` when it may.
    pub fn problem(&self, address: u64) -> Option<TargetProblem> {
        if self.sealed.contains(&address) {
            return Some(TargetProblem::Sealed);
        }
        let start = self.code.iter().find_map(|(base, data)| {
            let offset = usize::try_from(address.checked_sub(*base)?).ok()?;
            data.get(offset..offset.checked_add(4)?)
        });
        match start {
            None => Some(TargetProblem::NotCode),
            Some(bytes) if bytes != ENDBR64 => Some(TargetProblem::NoEndbr),
            Some(_) => None,
        }
    }
}

/// Which functions of a module (`.ko`, decompressed) an indirect branch may land on, by name:
/// objtool sealed the module's own unused `ENDBR64`s in its `.ibt_endbr_seal` (relocations to
/// the function's section and offset), applied when the module loads.
#[derive(Debug, Default)]
pub struct ModuleBranchTargets {
    problems: std::collections::BTreeMap<String, Vec<Option<TargetProblem>>>,
}

impl ModuleBranchTargets {
    /// Reads the module's functions and its `.ibt_endbr_seal`.
    pub fn from_module(ko: &[u8]) -> Result<ModuleBranchTargets, IbtError> {
        use object::{ObjectSymbol, RelocationTarget};
        let file = object::File::parse(ko).map_err(|e| IbtError(e.to_string()))?;
        let mut sealed: BTreeSet<(usize, u64)> = BTreeSet::new();
        if let Some(seal) = file.section_by_name(".ibt_endbr_seal") {
            for (_, reloc) in seal.relocations() {
                let RelocationTarget::Symbol(index) = reloc.target() else {
                    continue;
                };
                let Ok(symbol) = file.symbol_by_index(index) else {
                    continue;
                };
                let Some(section) = symbol.section_index() else {
                    continue;
                };
                sealed.insert((
                    section.0,
                    symbol.address().wrapping_add_signed(reloc.addend()),
                ));
            }
        }
        let mut targets = ModuleBranchTargets::default();
        for symbol in file.symbols() {
            if symbol.kind() != object::SymbolKind::Text {
                continue;
            }
            let (Some(section), Ok(name)) = (symbol.section_index(), symbol.name()) else {
                continue;
            };
            let problem = if sealed.contains(&(section.0, symbol.address())) {
                Some(TargetProblem::Sealed)
            } else {
                let bytes = file
                    .section_by_index(section)
                    .ok()
                    .and_then(|s| s.data().ok())
                    .and_then(|data| {
                        let at = usize::try_from(symbol.address()).ok()?;
                        data.get(at..at.checked_add(4)?)
                    });
                match bytes {
                    Some(bytes) if bytes == ENDBR64 => None,
                    Some(_) => Some(TargetProblem::NoEndbr),
                    None => Some(TargetProblem::NotCode),
                }
            };
            targets
                .problems
                .entry(name.to_owned())
                .or_default()
                .push(problem);
        }
        Ok(targets)
    }

    /// Why an indirect branch may not land on the module's function `name` (any of its copies),
    /// or `None` when it may or the module has no function of that name.
    pub fn problem(&self, name: &str) -> Option<TargetProblem> {
        self.problems.get(name)?.iter().find_map(|p| *p)
    }
}

/// Undefined symbols an object uses other than as the target of a direct call or jump: taking
/// their address (`R_X86_64_64` in data, `mov $f`, `lea f(%rip)`). The loader's own tables and
/// what objtool generates are not address-taking. Sorted, each name once.
pub fn address_taking_references(view: &ElfView) -> Vec<String> {
    let mut names = BTreeSet::new();
    for section in view.sections.values() {
        if is_table(&section.name) {
            continue;
        }
        for reloc in &section.relocs {
            let Target::Symbol(index) = &reloc.target else {
                continue;
            };
            let Some(symbol) = view.symbol(*index) else {
                continue;
            };
            if symbol.section.is_some() || symbol.name.is_empty() {
                continue;
            }
            if section.is_text() && is_branch_target(section, reloc) {
                continue;
            }
            names.insert(symbol.name.clone());
        }
    }
    names.into_iter().collect()
}

/// Sections whose references objtool does not count as taking an address (check.c's list).
fn is_table(name: &str) -> bool {
    OBJTOOL_SECTIONS.contains(&name)
        || name.starts_with(".discard")
        || name.starts_with(".debug")
        || [
            ".altinstructions",
            ".parainstructions",
            ".smp_locks",
            "__bug_table",
            "__ex_table",
            "__jump_table",
            "__mcount_loc",
            "__patchable_function_entries",
            "_error_injection_whitelist",
            "_kprobe_blacklist",
            ".kcfi_traps",
        ]
        .contains(&name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn sealed_and_endbr_less_functions_are_no_branch_targets() {
        let mut code = vec![0x90; 0x40];
        code[0x10..0x14].copy_from_slice(&ENDBR64);
        code[0x30..0x34].copy_from_slice(&ENDBR64);
        let targets = BranchTargets {
            sealed: [0x1030].into_iter().collect(),
            code: vec![(0x1000, code)],
        };
        assert_eq!(targets.problem(0x1010), None);
        assert_eq!(targets.problem(0x1030), Some(TargetProblem::Sealed));
        assert_eq!(targets.problem(0x1020), Some(TargetProblem::NoEndbr));
        assert_eq!(targets.problem(0x2000), Some(TargetProblem::NotCode));
        assert_eq!(targets.problem(0x103e), Some(TargetProblem::NotCode));
    }

    /// Calls are not address-taking, a pointer in data and a `lea` are; tables are not.
    #[test]
    fn only_address_taking_references_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let view = crate::diff::gcc12_object(
            dir.path(),
            "t",
            "extern void called(void); extern void pointed(void); extern void leaed(void);\n\
             void (*table[])(void) = { pointed };\n\
             void *f(void) { called(); return (void *)leaed; }\n",
            &["-mcmodel=kernel"],
        );
        assert_eq!(address_taking_references(&view), ["leaed", "pointed"]);
    }

    /// A module as objtool leaves it: `.ibt_endbr_seal` relocations to a function's section at
    /// its offset (`.text.sealed + 0x10`, after the padding).
    #[test]
    fn a_module_s_sealed_and_endbr_less_functions_are_found_by_name() {
        use object::write::{Object as WriteObject, Relocation, Symbol, SymbolSection};
        use object::{
            Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags,
            SymbolKind, SymbolScope,
        };
        let mut obj = WriteObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let mut code = vec![0x90; 16];
        code.extend_from_slice(&ENDBR64);
        code.extend_from_slice(&[0xc3; 12]);
        let function = |obj: &mut WriteObject<'_>, name: &str, body: &[u8]| {
            let section = obj.add_section(
                Vec::new(),
                format!(".text.{name}").into_bytes(),
                SectionKind::Text,
            );
            obj.set_section_data(section, body.to_vec(), 16);
            obj.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: 16,
                size: 16,
                kind: SymbolKind::Text,
                scope: SymbolScope::Linkage,
                weak: false,
                section: SymbolSection::Section(section),
                flags: SymbolFlags::None,
            });
            section
        };
        let sealed = function(&mut obj, "sealed", &code);
        function(&mut obj, "open", &code);
        let mut plain = vec![0x90; 16];
        plain.extend_from_slice(&[0x55; 16]);
        function(&mut obj, "plain", &plain);
        let seal = obj.add_section(
            Vec::new(),
            b".ibt_endbr_seal".to_vec(),
            SectionKind::ReadOnlyData,
        );
        obj.set_section_data(seal, vec![0; 4], 4);
        let sealed_symbol = obj.section_symbol(sealed);
        obj.add_relocation(
            seal,
            Relocation {
                offset: 0,
                symbol: sealed_symbol,
                addend: 16,
                flags: RelocationFlags::Elf {
                    r_type: object::elf::R_X86_64_PC32,
                },
            },
        )
        .unwrap();
        let targets = ModuleBranchTargets::from_module(&obj.write().unwrap()).unwrap();
        assert_eq!(targets.problem("sealed"), Some(TargetProblem::Sealed));
        assert_eq!(targets.problem("open"), None);
        assert_eq!(targets.problem("plain"), Some(TargetProblem::NoEndbr));
        assert_eq!(targets.problem("elsewhere"), None);
    }
}
