//! Rewrites objects that gcc really compiled (kernel code model) and checks the result with
//! `inspect`, with the `object` crate, and with `readelf`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::elf;
use object::read::elf::{FileHeader, Rela as _, SectionHeader as _, Sym as _};
use object::LittleEndian as LE;
use patchbay_build::klp_elf::{inspect, rewrite, undefined_symbols, KlpElfError, KlpTarget};

const SHN_LIVEPATCH: u16 = 0xff20;
const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;

/// References extern symbols from `.text`, `.text.unlikely`, `.data` and from a section that is
/// never loaded (like debug info), plus one symbol the kernel would export (`printk_like`).
const PATCH_SOURCE: &str = r#"
extern char *saved_command_line;
extern int foo_helper(int);
extern int printk_like(const char *, ...);

int patched_show(int x)
{
	return foo_helper(x) + saved_command_line[0] + printk_like("%d", x);
}

__attribute__((cold, noinline)) int patched_cold(int x)
{
	return foo_helper(x * 3) + (saved_command_line ? 1 : 0);
}

int (*helper_ptr)(int) = foo_helper;
char **cmdline_ptr = &saved_command_line;

asm(".pushsection .patchbay_unloaded, \"\", @progbits\n"
    ".quad saved_command_line\n"
    ".popsection\n");
"#;

/// A jump label whose key is not exported: the `__jump_table` entry refers to the key.
const JUMP_LABEL_SOURCE: &str = r#"
extern int some_key;

int uses_key(void)
{
	asm goto("1: jmp %l[l_yes]\n"
		 ".pushsection __jump_table, \"aw\"\n"
		 ".balign 8\n"
		 ".long 1b - ., %l[l_yes] - .\n"
		 ".quad some_key - .\n"
		 ".popsection\n" : : : : l_yes);
	return some_key;
l_yes:
	return 1;
}
"#;

fn compile(dir: &Path, name: &str, source: &str, extra: &[&str]) -> Vec<u8> {
    let c = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, source).unwrap();
    let output = Command::new("gcc")
        .args([
            "-c",
            "-O2",
            "-mcmodel=kernel",
            "-fno-pic",
            "-fno-stack-protector",
        ])
        .args(extra)
        .arg(&c)
        .arg("-o")
        .arg(&o)
        .output()
        .expect("run gcc");
    assert!(
        output.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&o).unwrap()
}

fn vmlinux(symbol: &str) -> KlpTarget {
    KlpTarget {
        object: "vmlinux".into(),
        symbol: symbol.into(),
        sympos: 0,
        relocated_in: None,
    }
}

fn patch_targets() -> BTreeMap<String, KlpTarget> {
    BTreeMap::from([
        (
            "saved_command_line".to_owned(),
            vmlinux("saved_command_line"),
        ),
        (
            "foo_helper".to_owned(),
            KlpTarget {
                object: "vmlinux".into(),
                symbol: "foo_helper.isra.0".into(),
                sympos: 2,
                relocated_in: None,
            },
        ),
    ])
}

/// One relocation, described independently of where it is stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reloc {
    applies_to: String,
    offset: u64,
    kind: u32,
    addend: i64,
    symbol: String,
}

#[derive(Debug)]
struct Parsed {
    sections: Vec<(String, elf::SectionHeader64<LE>)>,
    /// (name, st_shndx, st_info)
    symbols: Vec<(String, u16, u8)>,
    /// (relocation section name, relocation)
    relocs: Vec<(String, Reloc)>,
}

fn parse(data: &[u8]) -> Parsed {
    let header = elf::FileHeader64::<LE>::parse(data).unwrap();
    let endian = header.endian().unwrap();
    let table = header.sections(endian, data).unwrap();
    let sections: Vec<(String, elf::SectionHeader64<LE>)> = table
        .iter()
        .map(|s| {
            let name = String::from_utf8(table.section_name(endian, s).unwrap().to_vec()).unwrap();
            (name, *s)
        })
        .collect();
    let symtab = table.symbols(endian, data, elf::SHT_SYMTAB).unwrap();
    let symbols: Vec<(String, u16, u8)> = symtab
        .iter()
        .map(|sym| {
            let mut name =
                String::from_utf8(symtab.symbol_name(endian, sym).unwrap().to_vec()).unwrap();
            if sym.st_type() == elf::STT_SECTION {
                name = sections[usize::from(sym.st_shndx(endian))].0.clone();
            }
            (name, sym.st_shndx(endian), sym.st_info())
        })
        .collect();
    let mut relocs = Vec::new();
    for (name, section) in &sections {
        let Some((entries, target)) = section.rela(endian, data).unwrap() else {
            continue;
        };
        for rela in entries {
            let symbol = rela.r_sym(endian, false) as usize;
            relocs.push((
                name.clone(),
                Reloc {
                    applies_to: sections[target.0].0.clone(),
                    offset: rela.r_offset(endian),
                    kind: rela.r_type(endian, false),
                    addend: rela.r_addend(endian),
                    symbol: symbols[symbol].0.clone(),
                },
            ));
        }
    }
    Parsed {
        sections,
        symbols,
        relocs,
    }
}

fn section_bytes<'d>(data: &'d [u8], header: &elf::SectionHeader64<LE>) -> &'d [u8] {
    header.data(LE, data).unwrap()
}

fn readelf_is_clean(path: &Path) {
    let output = Command::new("readelf")
        .args(["-W", "-a"])
        .arg(path)
        .output()
        .expect("run readelf");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "readelf failed: {stderr}");
    assert!(stderr.trim().is_empty(), "readelf complained: {stderr}");
    for word in ["Warning", "warning:", "Error", "corrupt"] {
        assert!(
            !stdout.contains(word),
            "readelf output mentions {word}:\n{stdout}"
        );
    }
}

fn rewritten_patch() -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let original = compile(dir.path(), "patch", PATCH_SOURCE, &["-g"]);
    let rewritten = rewrite(&original, &patch_targets()).unwrap();
    (dir, original, rewritten)
}

#[test]
fn lists_undefined_symbols() {
    let dir = tempfile::tempdir().unwrap();
    let original = compile(dir.path(), "patch", PATCH_SOURCE, &[]);
    let mut names = undefined_symbols(&original).unwrap();
    names.sort();
    assert_eq!(names, ["foo_helper", "printk_like", "saved_command_line"]);
    assert!(inspect(&original).unwrap().is_empty());
}

#[test]
fn rewrites_symbols_and_moves_relocations() {
    let (dir, original, rewritten) = rewritten_patch();
    let before = parse(&original);
    let after = parse(&rewritten);

    // Symbols: renamed in place, SHN_LIVEPATCH, binding and type kept; nothing else changed.
    assert_eq!(before.symbols.len(), after.symbols.len());
    for ((old_name, old_shndx, old_info), (new_name, new_shndx, new_info)) in
        before.symbols.iter().zip(&after.symbols)
    {
        assert_eq!(old_info, new_info, "{old_name}");
        match old_name.as_str() {
            "saved_command_line" => {
                assert_eq!(new_name, ".klp.sym.vmlinux.saved_command_line,0");
                assert_eq!(*new_shndx, SHN_LIVEPATCH);
            }
            "foo_helper" => {
                assert_eq!(new_name, ".klp.sym.vmlinux.foo_helper.isra.0,2");
                assert_eq!(*new_shndx, SHN_LIVEPATCH);
            }
            _ => assert_eq!((old_name, old_shndx), (new_name, new_shndx)),
        }
    }
    assert_eq!(undefined_symbols(&rewritten).unwrap(), ["printk_like"]);

    // Relocations: the same multiset, only the mapped symbols renamed; the mapped ones in
    // loaded sections now all live in klp sections, the unloaded one stayed put.
    let rename = |name: &str| match name {
        "saved_command_line" => ".klp.sym.vmlinux.saved_command_line,0".to_owned(),
        "foo_helper" => ".klp.sym.vmlinux.foo_helper.isra.0,2".to_owned(),
        other => other.to_owned(),
    };
    let mut expected: Vec<Reloc> = before
        .relocs
        .iter()
        .map(|(_, r)| Reloc {
            symbol: rename(&r.symbol),
            ..r.clone()
        })
        .collect();
    let mut actual: Vec<Reloc> = after.relocs.iter().map(|(_, r)| r.clone()).collect();
    expected.sort();
    actual.sort();
    assert_eq!(expected, actual);
    let moved = after
        .relocs
        .iter()
        .filter(|(section, _)| section.starts_with(".klp.rela."))
        .count();
    let kept = after.relocs.len() - moved;
    assert_eq!(moved + kept, before.relocs.len());
    assert_eq!(moved, 6, "2 each in .text, .text.unlikely and .data");
    for (section, reloc) in &after.relocs {
        let livepatch = reloc.symbol.starts_with(".klp.sym.");
        if section.starts_with(".klp.rela.") {
            assert!(livepatch, "{reloc:?} in {section}");
        } else if livepatch {
            assert_eq!(section, ".rela.patchbay_unloaded", "{reloc:?}");
        }
    }

    // The klp sections, as inspect and the raw headers see them.
    let sections = inspect(&rewritten).unwrap();
    let summary: Vec<(&str, &str, &str, usize)> = sections
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.object.as_str(),
                s.target_section.as_str(),
                s.relocations,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (".klp.rela.vmlinux..text", "vmlinux", ".text", 2),
            (".klp.rela.vmlinux..data", "vmlinux", ".data", 2),
            (
                ".klp.rela.vmlinux..text.unlikely",
                "vmlinux",
                ".text.unlikely",
                2
            ),
        ]
    );
    for s in &sections {
        let mut symbols = s.symbols.clone();
        symbols.sort();
        assert_eq!(
            symbols,
            [
                ".klp.sym.vmlinux.foo_helper.isra.0,2",
                ".klp.sym.vmlinux.saved_command_line,0"
            ]
        );
    }
    let symtab_index = after
        .sections
        .iter()
        .position(|(n, _)| n == ".symtab")
        .unwrap() as u32;
    for (name, header) in &after.sections {
        if !name.starts_with(".klp.rela.") {
            continue;
        }
        assert_eq!(header.sh_type.get(LE), elf::SHT_RELA);
        assert_eq!(
            header.sh_flags.get(LE),
            u64::from(elf::SHF_ALLOC | elf::SHF_INFO_LINK) | SHF_RELA_LIVEPATCH
        );
        assert_eq!(header.sh_link.get(LE), symtab_index);
        assert_eq!(header.sh_entsize.get(LE), 24);
        assert_eq!(header.sh_addralign.get(LE), 8);
        assert_eq!(header.sh_offset.get(LE) % 8, 0);
        let target = &after.sections[header.sh_info.get(LE) as usize].0;
        assert!(name.ends_with(&format!(".{target}")), "{name} → {target}");
    }

    // Every section that was not rewritten keeps its bytes; existing indices stay valid.
    assert!(after.sections.len() > before.sections.len());
    for (index, (name, old)) in before.sections.iter().enumerate() {
        let (new_name, new) = &after.sections[index];
        assert_eq!(name, new_name);
        let changed = matches!(
            name.as_str(),
            ".symtab"
                | ".strtab"
                | ".shstrtab"
                | ".rela.text"
                | ".rela.text.unlikely"
                | ".rela.data"
        );
        if !changed {
            assert_eq!(
                section_bytes(&original, old),
                section_bytes(&rewritten, new),
                "{name}"
            );
            assert_eq!(old.sh_offset.get(LE), new.sh_offset.get(LE), "{name}");
        }
    }
    let header = elf::FileHeader64::<LE>::parse(rewritten.as_slice()).unwrap();
    assert_eq!(header.e_shoff.get(LE) % 8, 0);

    let path = dir.path().join("patch.klp.o");
    std::fs::write(&path, &rewritten).unwrap();
    readelf_is_clean(&path);

    // Deterministic, and idempotent as far as it can be: a second pass refuses.
    assert_eq!(rewrite(&original, &patch_targets()).unwrap(), rewritten);
    assert!(matches!(
        rewrite(&rewritten, &patch_targets()),
        Err(KlpElfError::AlreadyRewritten)
    ));
    assert_eq!(rewrite(&rewritten, &BTreeMap::new()).unwrap(), rewritten);
}

#[test]
fn another_modules_export_is_relocated_with_the_patched_module() {
    let dir = tempfile::tempdir().unwrap();
    let original = compile(dir.path(), "patch", PATCH_SOURCE, &[]);
    let jbd2 = |relocated_in: &str| {
        BTreeMap::from([
            (
                "saved_command_line".to_owned(),
                vmlinux("saved_command_line"),
            ),
            (
                "foo_helper".to_owned(),
                KlpTarget {
                    object: "jbd2".into(),
                    symbol: "foo_helper".into(),
                    sympos: 0,
                    relocated_in: Some(relocated_in.into()),
                },
            ),
        ])
    };
    let rewritten = rewrite(&original, &jbd2("ext4")).unwrap();
    let sections = inspect(&rewritten).unwrap();
    let text = sections
        .iter()
        .find(|s| s.name == ".klp.rela.ext4..text")
        .unwrap_or_else(|| panic!("ext4's section carries jbd2's symbol: {sections:?}"));
    assert_eq!(text.symbols, vec![".klp.sym.jbd2.foo_helper,0".to_owned()]);
    assert!(
        !sections
            .iter()
            .any(|s| s.name.starts_with(".klp.rela.jbd2.")),
        "{sections:?}"
    );
    let err = rewrite(&original, &jbd2("vmlinux"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be relocated with `vmlinux`"), "{err}");
}

#[test]
fn module_object_targets_get_their_own_sections() {
    let dir = tempfile::tempdir().unwrap();
    let original = compile(dir.path(), "patch", PATCH_SOURCE, &[]);
    let targets = BTreeMap::from([
        (
            "saved_command_line".to_owned(),
            vmlinux("saved_command_line"),
        ),
        (
            "foo_helper".to_owned(),
            KlpTarget {
                object: "ext4".into(),
                symbol: "foo_helper".into(),
                sympos: 0,
                relocated_in: None,
            },
        ),
    ]);
    let rewritten = rewrite(&original, &targets).unwrap();
    let sections = inspect(&rewritten).unwrap();
    let names: Vec<(&str, Vec<String>)> = sections
        .iter()
        .map(|s| (s.name.as_str(), s.symbols.clone()))
        .collect();
    assert_eq!(
        names,
        [
            (
                ".klp.rela.ext4..text",
                vec![".klp.sym.ext4.foo_helper,0".to_owned()]
            ),
            (
                ".klp.rela.ext4..data",
                vec![".klp.sym.ext4.foo_helper,0".to_owned()]
            ),
            (
                ".klp.rela.ext4..text.unlikely",
                vec![".klp.sym.ext4.foo_helper,0".to_owned()]
            ),
            (
                ".klp.rela.vmlinux..text",
                vec![".klp.sym.vmlinux.saved_command_line,0".to_owned()]
            ),
            (
                ".klp.rela.vmlinux..data",
                vec![".klp.sym.vmlinux.saved_command_line,0".to_owned()]
            ),
            (
                ".klp.rela.vmlinux..text.unlikely",
                vec![".klp.sym.vmlinux.saved_command_line,0".to_owned()]
            ),
        ]
    );
    let path = dir.path().join("patch.klp.o");
    std::fs::write(&path, &rewritten).unwrap();
    readelf_is_clean(&path);
}

#[test]
fn refuses_unknown_and_defined_symbols() {
    let dir = tempfile::tempdir().unwrap();
    let original = compile(dir.path(), "patch", PATCH_SOURCE, &[]);
    let unknown = BTreeMap::from([("no_such_symbol".to_owned(), vmlinux("no_such_symbol"))]);
    let err = rewrite(&original, &unknown).unwrap_err();
    assert!(matches!(err, KlpElfError::UnknownSymbol { .. }), "{err}");
    assert!(
        err.to_string().contains("no_such_symbol"),
        "{:?} does not contain {:?}",
        err.to_string(),
        "no_such_symbol"
    );

    let defined = BTreeMap::from([("patched_show".to_owned(), vmlinux("patched_show"))]);
    let err = rewrite(&original, &defined).unwrap_err();
    assert!(matches!(err, KlpElfError::NotUndefined { .. }), "{err}");
    assert!(
        err.to_string().contains("patched_show"),
        "{:?} does not contain {:?}",
        err.to_string(),
        "patched_show"
    );

    for object in ["nf-tables", "", "a.b"] {
        let bad = BTreeMap::from([(
            "foo_helper".to_owned(),
            KlpTarget {
                object: object.into(),
                symbol: "foo_helper".into(),
                sympos: 0,
                relocated_in: None,
            },
        )]);
        let err = rewrite(&original, &bad).unwrap_err();
        assert!(
            matches!(err, KlpElfError::InvalidTarget { .. }),
            "{object}: {err}"
        );
    }
}

/// A jump label keyed on an unexported vmlinux static key is fine (the loader writes
/// `.klp.rela.vmlinux.*` before it registers jump labels); one keyed on a module's is refused
/// (written only when that module loads).
#[test]
fn jump_table_references_only_to_vmlinux() {
    let dir = tempfile::tempdir().unwrap();
    let original = compile(dir.path(), "jump", JUMP_LABEL_SOURCE, &[]);
    assert!(parse(&original)
        .relocs
        .iter()
        .any(|(s, r)| s == ".rela__jump_table" && r.symbol == "some_key"));
    let targets = BTreeMap::from([("some_key".to_owned(), vmlinux("some_key"))]);
    let rewritten = rewrite(&original, &targets).unwrap();
    assert!(parse(&rewritten)
        .relocs
        .iter()
        .any(|(s, r)| s == ".klp.rela.vmlinux.__jump_table"
            && r.symbol == ".klp.sym.vmlinux.some_key,0"));
    let in_module = BTreeMap::from([(
        "some_key".to_owned(),
        KlpTarget {
            object: "nf_tables".into(),
            symbol: "some_key".into(),
            sympos: 0,
            relocated_in: None,
        },
    )]);
    let err = rewrite(&original, &in_module).unwrap_err();
    assert!(
        matches!(err, KlpElfError::SpecialSectionReference { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("__jump_table") && message.contains("some_key"),
        "{message}"
    );
}

#[test]
fn refuses_signed_modules() {
    let dir = tempfile::tempdir().unwrap();
    let mut original = compile(dir.path(), "patch", PATCH_SOURCE, &[]);
    original.extend_from_slice(&[0u8; 12]);
    original.extend_from_slice(b"~Module signature appended~\n");
    let err = rewrite(&original, &patch_targets()).unwrap_err();
    assert!(matches!(err, KlpElfError::Signed), "{err}");
}

/// Offset of the section header named `name` (a tiny reader, independent of the crate).
fn header_offset(data: &[u8], name: &str) -> usize {
    let parsed = parse(data);
    let index = parsed.sections.iter().position(|(n, _)| n == name).unwrap();
    let shoff = u64::from_le_bytes(data[0x28..0x30].try_into().unwrap()) as usize;
    shoff + index * 64
}

#[test]
fn inspect_refuses_broken_livepatch_sections() {
    let (_dir, _original, rewritten) = rewritten_patch();

    // Without SHF_RELA_LIVEPATCH the loader would apply it against unresolved symbols.
    let mut no_flag = rewritten.clone();
    let flags = header_offset(&no_flag, ".klp.rela.vmlinux..text") + 8;
    no_flag[flags..flags + 8].copy_from_slice(&(u64::from(elf::SHF_ALLOC)).to_le_bytes());
    let err = inspect(&no_flag).unwrap_err();
    assert!(
        matches!(err, KlpElfError::InvalidLivepatchSection { .. }),
        "{err}"
    );

    // sh_info pointing at another section than the name says.
    let mut wrong_info = rewritten.clone();
    let info = header_offset(&wrong_info, ".klp.rela.vmlinux..text") + 0x2c;
    let data_index = parse(&rewritten)
        .sections
        .iter()
        .position(|(n, _)| n == ".data")
        .unwrap() as u32;
    wrong_info[info..info + 4].copy_from_slice(&data_index.to_le_bytes());
    assert!(inspect(&wrong_info).is_err());

    // A livepatch symbol that lost SHN_LIVEPATCH.
    let mut not_livepatch = rewritten.clone();
    let parsed = parse(&rewritten);
    let symbol = parsed
        .symbols
        .iter()
        .position(|(n, _, _)| n == ".klp.sym.vmlinux.saved_command_line,0")
        .unwrap();
    let symtab = &parsed
        .sections
        .iter()
        .find(|(n, _)| n == ".symtab")
        .unwrap()
        .1;
    let shndx = symtab.sh_offset.get(LE) as usize + symbol * 24 + 6;
    not_livepatch[shndx..shndx + 2].copy_from_slice(&0u16.to_le_bytes());
    assert!(inspect(&not_livepatch).is_err());
}

#[test]
fn inspect_refuses_ordinary_relocations_against_livepatch_symbols() {
    let (_dir, _original, rewritten) = rewritten_patch();
    // Turn a klp section back into an ordinary one: its relocations would hit address 0.
    let mut ordinary = rewritten.clone();
    let flags = header_offset(&ordinary, ".klp.rela.vmlinux..data") + 8;
    ordinary[flags..flags + 8].copy_from_slice(&(u64::from(elf::SHF_INFO_LINK)).to_le_bytes());
    let name = header_offset(&ordinary, ".klp.rela.vmlinux..data");
    let rela_data_name = {
        let rela = header_offset(&ordinary, ".rela.data");
        ordinary[rela..rela + 4].to_vec()
    };
    ordinary[name..name + 4].copy_from_slice(&rela_data_name);
    let err = inspect(&ordinary).unwrap_err();
    assert!(err.to_string().contains("address 0"), "{err}");
}

/// Cut and corrupted files give errors or harmless results, never panics.
#[test]
fn damaged_input_never_panics() {
    let (_dir, original, rewritten) = rewritten_patch();
    let targets = patch_targets();
    for data in [&original, &rewritten] {
        for len in (0..data.len()).step_by(13) {
            let cut = &data[..len];
            let _ = undefined_symbols(cut);
            let _ = inspect(cut);
            let _ = rewrite(cut, &targets);
        }
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let mut damaged = data.clone();
            let at = (state >> 33) as usize % damaged.len();
            damaged[at] ^= (state >> 8) as u8 | 1;
            let _ = undefined_symbols(&damaged);
            let _ = inspect(&damaged);
            let _ = rewrite(&damaged, &targets);
        }
    }
}

/// A Debian 6.1 headers tree another part of the project may have unpacked.
fn debian_headers() -> Option<PathBuf> {
    let root = Path::new("/root/.cache/patchbay/kernels");
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("linux-headers-6.1.0-")
                && name.ends_with("-amd64")
                && path.join("Makefile").is_file()
            {
                return Some(path);
            }
            if depth < 6 && path.is_dir() && !path.is_symlink() {
                stack.push((path, depth + 1));
            }
        }
    }
    None
}

const LIVEPATCH_MODULE: &str = r#"
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

extern char *saved_command_line;

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s patched\n", saved_command_line);
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int livepatch_init(void) { return klp_enable_patch(&patch); }
static void livepatch_exit(void) { }
module_init(livepatch_init);
module_exit(livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"#;

/// End to end with kbuild, when a Debian headers tree is around (skipped otherwise).
#[test]
fn kbuild_module_end_to_end() {
    let Some(headers) = debian_headers() else {
        eprintln!("no Debian 6.1 headers under /root/.cache/patchbay/kernels; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("klp_e2e.c"), LIVEPATCH_MODULE).unwrap();
    std::fs::write(dir.path().join("Makefile"), "obj-m := klp_e2e.o\n").unwrap();
    let output = Command::new("make")
        .arg("-C")
        .arg(&headers)
        .arg(format!("M={}", dir.path().display()))
        .args(["KBUILD_MODPOST_WARN=1", "CC=gcc-12", "modules"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kbuild failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let ko_path = dir.path().join("klp_e2e.ko");
    let ko = std::fs::read(&ko_path).unwrap();
    let undefined = undefined_symbols(&ko).unwrap();
    assert!(
        undefined.iter().any(|s| s == "saved_command_line"),
        "{undefined:?}"
    );
    let targets = BTreeMap::from([(
        "saved_command_line".to_owned(),
        vmlinux("saved_command_line"),
    )]);
    let rewritten = rewrite(&ko, &targets).unwrap();
    let sections = inspect(&rewritten).unwrap();
    assert!(sections.iter().all(|s| s.object == "vmlinux"));
    assert_eq!(
        sections.iter().map(|s| s.relocations).sum::<usize>(),
        parse(&ko)
            .relocs
            .iter()
            .filter(|(_, r)| r.symbol == "saved_command_line")
            .count()
    );
    let out_path = dir.path().join("klp_e2e.klp.ko");
    std::fs::write(&out_path, &rewritten).unwrap();
    readelf_is_clean(&out_path);
    let modinfo = Command::new("modinfo").arg(&out_path).output().unwrap();
    let text = String::from_utf8_lossy(&modinfo.stdout);
    assert!(
        modinfo.status.success(),
        "{}",
        String::from_utf8_lossy(&modinfo.stderr)
    );
    assert!(
        text.contains("livepatch:") && text.contains("vermagic:"),
        "{text}"
    );
}
