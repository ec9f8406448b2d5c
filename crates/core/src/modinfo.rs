//! A kernel module's `.modinfo` section: `key=value` strings separated by NUL bytes. The one
//! reader for the builder (vermagic, livepatch), the server (checks a published module), the
//! kernel cache (vermagic of Debian's modules) and the QEMU harness (`depends=`).

use object::{Object, ObjectSection};

/// Why a module's metadata could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModinfoError {
    /// The bytes are not an ELF file the `object` crate can read (its message).
    #[error("not a readable ELF module: {0}")]
    Elf(String),
    /// The ELF file has no `.modinfo` section, so it is not a kernel module.
    #[error("the module has no .modinfo section")]
    Missing,
}

/// The entries of one module's `.modinfo`, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modinfo(Vec<(String, String)>);

impl Modinfo {
    /// Reads the `.modinfo` section of the ELF module `ko`.
    pub fn of_module(ko: &[u8]) -> Result<Modinfo, ModinfoError> {
        let file = object::File::parse(ko).map_err(|e| ModinfoError::Elf(e.to_string()))?;
        let section = file
            .section_by_name(".modinfo")
            .ok_or(ModinfoError::Missing)?;
        let data = section
            .data()
            .map_err(|e| ModinfoError::Elf(e.to_string()))?;
        Ok(Modinfo::parse(data))
    }

    /// Parses the section's bytes; entries without `=` are skipped.
    pub fn parse(section: &[u8]) -> Modinfo {
        Modinfo(
            section
                .split(|&b| b == 0)
                .filter(|entry| !entry.is_empty())
                .filter_map(|entry| {
                    let text = String::from_utf8_lossy(entry);
                    text.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect(),
        )
    }

    /// The first value of `key`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The modules named by `depends=` (comma-separated, possibly empty).
    pub fn depends(&self) -> Vec<&str> {
        self.value("depends")
            .map(|d| d.split(',').filter(|n| !n.is_empty()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn entries_parse_in_order() {
        let info = Modinfo::parse(
            b"license=GPL\0\0depends=jbd2,mbcache\0vermagic=6.1.0-47-amd64 SMP\0junk\0name=ext4\0",
        );
        assert_eq!(info.value("vermagic"), Some("6.1.0-47-amd64 SMP"));
        assert_eq!(info.depends(), vec!["jbd2", "mbcache"]);
        assert_eq!(info.value("junk"), None);
        assert!(Modinfo::parse(b"depends=\0").depends().is_empty());
        assert!(matches!(
            Modinfo::of_module(b"not elf"),
            Err(ModinfoError::Elf(_))
        ));
    }
}
