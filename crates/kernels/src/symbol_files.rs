//! Which source file each local vmlinux symbol comes from, to tell apart local symbols that
//! share a name (`static` functions called `show` in many files). The image's System.map has
//! no such information; the `-dbg` vmlinux's symbol table has, in its FILE symbols. The
//! extracted index (`symbol-files.tsv`, a few MB) is kept in the kernel's cache entry; the
//! 600 MB debug vmlinux is not.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use object::{Object, ObjectSymbol, SymbolKind, SymbolScope};

use crate::fsutil;
use crate::release::Packages;
use crate::{apt, Kernel, KernelError, SymbolTable};

const INDEX: &str = "symbol-files.tsv";

/// Local vmlinux symbols by name, with their address and source file name (as the compiler
/// recorded it: the file's base name, e.g. `consoles.c`).
#[derive(Debug, Clone, Default)]
pub struct SymbolFiles {
    by_name: BTreeMap<String, Vec<(u64, String)>>,
}

impl SymbolFiles {
    /// Parses `<hex address>\t<name>\t<file>` lines.
    pub fn parse(text: &str) -> Result<SymbolFiles, KernelError> {
        let mut by_name: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let bad = |reason: &str| KernelError::SymbolLine {
                line: index + 1,
                reason: format!("{reason} (symbol file index: \"<address>\\t<name>\\t<file>\")"),
            };
            let mut fields = line.split('\t');
            let (Some(address), Some(name), Some(file), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected three tab-separated fields"));
            };
            let address = u64::from_str_radix(address, 16).map_err(|_| bad("bad address"))?;
            by_name
                .entry(name.to_owned())
                .or_default()
                .push((address, file.to_owned()));
        }
        Ok(SymbolFiles { by_name })
    }

    /// Addresses of the local symbols `name` defined in a file called `file`.
    pub fn addresses(&self, name: &str, file: &str) -> Vec<u64> {
        self.by_name
            .get(name)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|(_, f)| f == file)
                    .map(|(a, _)| *a)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// livepatch's `sympos` of the local symbol `name` from `file`: its 1-based position among
    /// all vmlinux symbols of that name in `table` (kallsyms order). `None` when the file
    /// defines no such symbol, or several.
    pub fn sympos(&self, table: &SymbolTable, name: &str, file: &str) -> Option<u32> {
        let [address] = self.addresses(name, file)[..] else {
            return None;
        };
        table
            .lookup(name)
            .iter()
            .find(|entry| entry.address == address)
            .map(|entry| entry.position)
    }
}

impl Kernel {
    /// The symbol-to-file index of this kernel's vmlinux, extracted from the `-dbg` package on
    /// first use (a download of about 860 MB and half a minute of unpacking, once).
    pub fn symbol_files(&self) -> Result<SymbolFiles, KernelError> {
        let path = self.dir().join(INDEX);
        if !path.is_file() {
            let _lock = fsutil::lock(&self.dir().join(".symbol-files.lock"))?;
            if !path.is_file() {
                let downloads = self.dir().join(".symbol-files-download");
                fsutil::remove_dir_if_present(&downloads)?;
                fs::create_dir(&downloads).map_err(|e| KernelError::io("create", &downloads, e))?;
                let result = self.build_symbol_index(&downloads, &path);
                let cleanup = fsutil::remove_dir_if_present(&downloads);
                result?;
                cleanup?;
            }
        }
        let text = fs::read_to_string(&path).map_err(|e| KernelError::io("read", &path, e))?;
        SymbolFiles::parse(&text)
    }

    fn build_symbol_index(&self, downloads: &Path, index: &Path) -> Result<(), KernelError> {
        let release = self.debian_release();
        let package = release.dbg_package();
        let spec = format!("{package}={}", self.package_version());
        apt::download(downloads, std::slice::from_ref(&spec), release)?;
        let deb = crate::kernel::single_deb(downloads, &package)?;
        let vmlinux = downloads.join("vmlinux.debug");
        crate::kernel::extract_deb_member(
            &deb,
            &format!("usr/lib/debug/boot/vmlinux-{release}"),
            &vmlinux,
        )?;
        let bytes = fs::read(&vmlinux).map_err(|e| KernelError::io("read", &vmlinux, e))?;
        let file = object::File::parse(&*bytes).map_err(|e| KernelError::Elf {
            path: vmlinux.clone(),
            reason: e.to_string(),
        })?;
        let mut out = String::new();
        let mut current_file = String::new();
        for symbol in file.symbols() {
            let name = symbol.name().unwrap_or("");
            if symbol.kind() == SymbolKind::File {
                current_file = name.to_owned();
                continue;
            }
            let wanted = matches!(symbol.kind(), SymbolKind::Text | SymbolKind::Data)
                && symbol.scope() == SymbolScope::Compilation
                && !name.is_empty()
                && !current_file.is_empty()
                && !name.contains('\t');
            if wanted {
                out.push_str(&format!("{:x}\t{name}\t{current_file}\n", symbol.address()));
            }
        }
        if out.lines().count() < 1000 {
            return Err(KernelError::BadSystemMap {
                path: vmlinux,
                package: spec,
                reason: "its symbol table has almost no local symbols with source files".into(),
            });
        }
        fsutil::write_atomically(index, out.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn positions_follow_the_kernels_symbol_order() {
        let files = SymbolFiles::parse(
            "ffffffff81000100\tc_start\tproc.c\nffffffff81000300\tc_start\tconsoles.c\n",
        )
        .unwrap();
        let table = SymbolTable::parse(
            "ffffffff81000100 t c_start\nffffffff81000200 T c_start\nffffffff81000300 t c_start\n",
        )
        .unwrap();
        assert_eq!(files.sympos(&table, "c_start", "consoles.c"), Some(3));
        assert_eq!(files.sympos(&table, "c_start", "proc.c"), Some(1));
        assert_eq!(files.sympos(&table, "c_start", "other.c"), None);
        assert!(SymbolFiles::parse("zz\tname\tfile\n").is_err());
        assert!(SymbolFiles::parse("10\tname\n").is_err());
    }
}
