//! Real fetch of the newest Debian 6.1 kernel apt offers (about 85 MB the first time, then
//! served from the cache in milliseconds), and the checks the builder and VM harness rely on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection};
use patchbay_kernels::{fetch_selector, Kernel, KernelSelector, SymbolTable};

fn newest() -> Kernel {
    let start = Instant::now();
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    eprintln!(
        "fetch newest ({} {}): {:.2?} -> {}",
        kernel.release(),
        kernel.package_version(),
        start.elapsed(),
        kernel.dir().display()
    );
    kernel
}

/// Xen's PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18), what QEMU `-kernel` boots through.
fn has_pvh_note(vmlinux: &[u8]) -> bool {
    let file = ElfFile64::<Endianness>::parse(vmlinux).unwrap();
    let endian = file.endian();
    for segment in file.elf_program_headers() {
        if segment.p_type(endian) != elf::PT_NOTE {
            continue;
        }
        if let Some(mut notes) = segment.notes(endian, vmlinux).unwrap() {
            while let Some(note) = notes.next().unwrap() {
                if note.name() == b"Xen" && note.n_type(endian) == 18 {
                    return true;
                }
            }
        }
    }
    false
}

fn modinfo_vermagic(ko: &[u8]) -> String {
    let file = object::File::parse(ko).unwrap();
    let data = file.section_by_name(".modinfo").unwrap().data().unwrap();
    data.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"vermagic="))
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .unwrap()
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn newest_kernel_is_fetched_and_usable() {
    let kernel = newest();
    let start = Instant::now();
    let again = newest();
    let warm = start.elapsed();
    assert_eq!(again.dir(), kernel.dir());
    assert!(warm.as_millis() < 2000, "warm fetch took {warm:?}");

    // Cache layout and metadata.
    let abi = kernel.release().as_str();
    assert!(kernel
        .dir()
        .ends_with(Path::new(abi).join(kernel.package_version())));
    assert!(kernel
        .package_version()
        .starts_with(&kernel.upstream_version().to_string()));
    let reopened = Kernel::open(kernel.dir()).unwrap();
    assert_eq!(reopened.build_id(), kernel.build_id());
    let abi_dir = kernel.dir().parent().unwrap();
    for leftover in ["tmp", "download"] {
        let path = abi_dir.join(format!("{}.{leftover}", kernel.package_version()));
        assert!(!path.exists(), "{} left behind", path.display());
    }

    // vmlinux: an x86-64 ELF with a 20-byte GNU build-id and the PVH entry note.
    let vmlinux = fs::read(kernel.vmlinux()).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    let file = object::File::parse(&*vmlinux).unwrap();
    assert_eq!(file.architecture(), object::Architecture::X86_64);
    let id = file.build_id().unwrap().unwrap();
    assert_eq!(id.len(), 20);
    assert_eq!(kernel.build_id().as_str().len(), 40);
    assert_eq!(
        kernel.build_id().as_str(),
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    assert!(has_pvh_note(&vmlinux), "vmlinux lacks the PVH entry note");
    let file_header = ElfFile64::<Endianness>::parse(&*vmlinux).unwrap();
    assert_eq!(
        file_header.elf_header().e_type(file_header.endian()),
        elf::ET_EXEC
    );

    // Modules and vermagic.
    let vermagic = kernel.vermagic().unwrap();
    eprintln!("vermagic: {vermagic:?}");
    assert!(vermagic.starts_with(&format!("{abi} ")), "{vermagic}");
    assert!(kernel
        .modules_dir()
        .ends_with(Path::new("lib/modules").join(abi)));
    let virtio_pci = kernel.find_module("virtio-pci").unwrap().unwrap();
    assert_eq!(
        kernel.find_module("virtio_pci").unwrap().unwrap(),
        virtio_pci
    );
    assert!(kernel.find_module("no_such_module_here").unwrap().is_none());
    assert!(kernel.find_module("../evil").is_err());
    let nine_p = kernel.find_module("9p").unwrap().unwrap();
    let symbols = SymbolTable::from_module_ko(&fs::read(&nine_p).unwrap()).unwrap();
    assert!(symbols.len() > 50, "9p symbols: {}", symbols.len());
    assert!(symbols
        .iter()
        .any(|s| s.name.starts_with("v9fs_") && s.entry.kind.eq_ignore_ascii_case(&'t')));
    assert!(kernel.module_symvers().is_file());
    assert!(kernel.config().is_file());
    // The build link points into the unpacked tree, not at /usr/src on the host.
    let build_link = fs::read_link(kernel.modules_dir().join("build")).unwrap();
    assert!(build_link.is_relative(), "{build_link:?}");
    assert!(kernel.modules_dir().join("build/Makefile").is_file());

    // The headers build a trivial module whose vermagic matches the distribution's.
    let work = tempfile::tempdir().unwrap();
    fs::write(
        work.path().join("hello.c"),
        "#include <linux/module.h>\n#include <linux/init.h>\n\
         static int __init hello_init(void) { pr_info(\"hello\\n\"); return 0; }\n\
         static void __exit hello_exit(void) {}\n\
         module_init(hello_init);\nmodule_exit(hello_exit);\nMODULE_LICENSE(\"GPL\");\n",
    )
    .unwrap();
    fs::write(work.path().join("Kbuild"), "obj-m := hello.o\n").unwrap();
    let start = Instant::now();
    let output = Command::new("make")
        .arg("-C")
        .arg(kernel.headers_dir())
        .arg(format!("M={}", work.path().display()))
        .arg("modules")
        .output()
        .unwrap();
    eprintln!("hello module build: {:.2?}", start.elapsed());
    assert!(
        output.status.success(),
        "make failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let hello = fs::read(work.path().join("hello.ko")).unwrap();
    assert_eq!(modinfo_vermagic(&hello), vermagic);
}

/// Downloads the ~860 MB -dbg package once per kernel; later runs hit the cached map.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn newest_kernel_full_system_map() {
    let kernel = newest();
    let start = Instant::now();
    let map = kernel.system_map().unwrap();
    let size = fs::metadata(&map).unwrap().len();
    eprintln!(
        "system_map: {:.2?}, {} bytes at {}",
        start.elapsed(),
        size,
        map.display()
    );
    assert!(!kernel.dir().join(".dbg-download").exists());
    let table = SymbolTable::load(&map).unwrap();
    eprintln!("System.map symbols: {}", table.len());
    assert!(table.len() > 50_000, "{}", table.len());
    let cmdline = table.lookup("cmdline_proc_show");
    assert_eq!(cmdline.len(), 1);
    assert!(matches!(cmdline[0].kind, 't' | 'T'));
    assert!(cmdline[0].address >= 0xffff_ffff_8000_0000);
    // A second call is served from the cache.
    let start = Instant::now();
    assert_eq!(kernel.system_map().unwrap(), map);
    assert!(start.elapsed().as_millis() < 500);
}

/// `--kernel <headers tree>`: the tree inside a cache entry, a tree elsewhere that matches
/// Debian's (resolved through apt and the cache), and one that does not match.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn headers_tree_names_its_kernel() {
    let kernel = newest();

    let inside = Kernel::from_headers_tree(kernel.headers_dir()).unwrap();
    assert_eq!(inside.build_id(), kernel.build_id());
    assert_eq!(inside.headers_dir(), kernel.headers_dir());

    // A tree outside the cache: links to the real files plus its own Module.symvers.
    let outside = tempfile::tempdir().unwrap();
    let tree = outside.path();
    for name in ["Makefile", "include", "scripts", "arch"] {
        std::os::unix::fs::symlink(kernel.headers_dir().join(name), tree.join(name)).unwrap();
    }
    fs::copy(kernel.module_symvers(), tree.join("Module.symvers")).unwrap();
    let resolved = Kernel::from_headers_tree(tree).unwrap();
    assert_eq!(resolved.release(), kernel.release());
    assert_eq!(resolved.build_id(), kernel.build_id());
    assert_eq!(resolved.headers_dir(), tree.canonicalize().unwrap());

    let mut symvers = fs::read_to_string(tree.join("Module.symvers")).unwrap();
    symvers.push_str("0x12345678\tpatchbay_not_in_debian\tvmlinux\tEXPORT_SYMBOL\t\n");
    fs::write(tree.join("Module.symvers"), symvers).unwrap();
    let err = Kernel::from_headers_tree(tree).unwrap_err().to_string();
    assert!(err.contains("Module.symvers differs"), "{err}");

    let not_a_tree = tempfile::tempdir().unwrap();
    let err = Kernel::from_headers_tree(not_a_tree.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a kernel headers tree"), "{err}");
}

/// Every 6.12 line (Debian 12's and 13's, amd64 and cloud): the newest build is fetched, its
/// ZSTD-compressed image gives a bootable vmlinux with the kernel's build-id, its modules are
/// `.ko.xz` and readable, and its vermagic and config name the release and an IBT kernel.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn newest_6_12_kernels_of_every_line_are_usable() {
    use patchbay_kernels::{Flavour, KernelLine};
    for (debian, flavour) in [
        (12, Flavour::Amd64),
        (13, Flavour::Amd64),
        (12, Flavour::CloudAmd64),
        (13, Flavour::CloudAmd64),
    ] {
        let line = KernelLine::choose(
            Some("6.12".parse().unwrap()),
            Some(debian.to_string().parse().unwrap()),
            Some(flavour),
        )
        .unwrap();
        let kernel = fetch_selector(&KernelSelector::Newest(line)).unwrap();
        let release = kernel.debian_release();
        assert!(line.contains(release), "{release} is not of {line}");
        assert_eq!(release.named_version(), Some(kernel.upstream_version()));
        let vmlinux = fs::read(kernel.vmlinux()).unwrap();
        assert!(has_pvh_note(&vmlinux), "{release}: no PVH note");
        let id = object::File::parse(&*vmlinux)
            .unwrap()
            .build_id()
            .unwrap()
            .unwrap();
        assert_eq!(hex::encode(id), kernel.build_id().as_str());
        let vermagic = kernel.vermagic().unwrap();
        assert!(
            vermagic.starts_with(&format!("{} SMP", release)),
            "{vermagic}"
        );
        // nf_tables is a module in every flavour (cloud builds ext4 in).
        let nf_tables = kernel.find_module("nf_tables").unwrap().unwrap();
        assert!(
            nf_tables.to_string_lossy().ends_with(".ko.xz"),
            "{}",
            nf_tables.display()
        );
        let ko = patchbay_kernels::read_module(&nf_tables).unwrap();
        assert_eq!(modinfo_vermagic(&ko), vermagic);
        let config = fs::read_to_string(kernel.config()).unwrap();
        assert!(config.contains("CONFIG_X86_KERNEL_IBT=y"));
        assert!(config.contains("CONFIG_LIVEPATCH=y"));
        let compiler = kernel.compiler_version_text().unwrap();
        let gcc = if debian == 13 { "gcc-14" } else { "gcc-12" };
        assert!(compiler.contains(gcc), "{compiler}");
    }
}
