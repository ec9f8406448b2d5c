//! A bundle is one file that carries a livepatch module and its manifest: an uncompressed POSIX
//! tar with exactly two regular files, `manifest.json` then `module.ko` (see
//! `docs/bundle-format.md`). Reading a bundle verifies the module against the manifest, so a
//! [`Bundle`] value always holds a module whose hash and size match.

use std::io::Read;
use std::path::Path;

use crate::fsutil::write_atomic;
use crate::ids::Sha256;
use crate::manifest::{Manifest, ManifestError, MANIFEST_MAX_BYTES};

/// Largest module we accept in a bundle. Livepatch modules are tens to hundreds of KiB.
pub const MODULE_MAX_BYTES: u64 = 64 * 1024 * 1024;

const MANIFEST_ENTRY: &str = "manifest.json";
const MODULE_ENTRY: &str = "module.ko";

/// Why a bundle was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle file could not be opened, read or (by [`Bundle::write`]) written.
    #[error("cannot read bundle {path}: {source}")]
    Io {
        /// The bundle file (or the `origin` given to [`Bundle::from_reader`]).
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a bundle: not a tar, wrong or extra entries, or an entry too large.
    #[error("bundle {path} is not a Patchbay bundle: {reason}")]
    Malformed {
        /// The bundle file (or the `origin` given to [`Bundle::from_reader`]).
        path: String,
        /// What is wrong with the archive's structure.
        reason: String,
    },
    /// `manifest.json` is present but does not parse or fails its consistency checks.
    #[error("bundle {path} has a bad manifest: {source}")]
    Manifest {
        /// The bundle file (or the `origin` given to [`Bundle::from_reader`]).
        path: String,
        /// Why the manifest was rejected.
        source: ManifestError,
    },
    /// `module.ko` does not have the size or SHA-256 the manifest declares, or is not ELF.
    #[error(
        "bundle {path}: the module does not match its manifest ({what}); the bundle is corrupted or \
         was tampered with: fetch or rebuild it"
    )]
    ModuleMismatch {
        /// The bundle file (or the `origin` given to [`Bundle::from_reader`]).
        path: String,
        /// What differs: size or sha256 (with both values), or a missing ELF magic.
        what: String,
    },
}

/// A verified bundle: the manifest and the module bytes it describes.
///
/// The fields are private and every constructor verifies, so a `Bundle` value is proof that
/// the module's size and sha256 match the manifest: code handed one need not hash it again.
#[derive(Debug, Clone)]
pub struct Bundle {
    manifest: Manifest,
    module: Vec<u8>,
}

impl Bundle {
    /// Pairs a manifest with module bytes, checking that they match.
    pub fn new(manifest: Manifest, module: Vec<u8>) -> Result<Bundle, BundleError> {
        verify_module(&manifest, &module, "<in memory>")?;
        Ok(Bundle { manifest, module })
    }

    /// The manifest, which describes [`Bundle::module`] exactly.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The module bytes, verified against the manifest.
    pub fn module(&self) -> &[u8] {
        &self.module
    }

    /// Reads and verifies a bundle file.
    pub fn read(path: &Path) -> Result<Bundle, BundleError> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| BundleError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_reader(std::io::BufReader::new(file), &shown)
    }

    /// Parses and verifies a bundle from any reader; `origin` names it in errors.
    pub fn from_reader(reader: impl Read, origin: &str) -> Result<Bundle, BundleError> {
        let malformed = |reason: String| BundleError::Malformed {
            path: origin.to_owned(),
            reason,
        };
        let io = |source| BundleError::Io {
            path: origin.to_owned(),
            source,
        };
        let mut archive = tar::Archive::new(reader);
        let mut manifest_bytes: Option<Vec<u8>> = None;
        let mut module_bytes: Option<Vec<u8>> = None;
        for entry in archive.entries().map_err(io)? {
            let entry = entry.map_err(io)?;
            if !entry.header().entry_type().is_file() {
                return Err(malformed(
                    "it contains an entry that is not a regular file".into(),
                ));
            }
            let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
            let (slot, limit) = match name.as_str() {
                MANIFEST_ENTRY => (&mut manifest_bytes, MANIFEST_MAX_BYTES),
                MODULE_ENTRY => (&mut module_bytes, MODULE_MAX_BYTES),
                other => return Err(malformed(format!("unexpected entry {other:?}"))),
            };
            if slot.is_some() {
                return Err(malformed(format!("entry {name:?} appears twice")));
            }
            let declared = entry.header().size().map_err(io)?;
            if declared > limit {
                return Err(malformed(format!(
                    "entry {name:?} is {declared} bytes, more than the {limit} allowed"
                )));
            }
            let mut data = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
            entry.take(limit + 1).read_to_end(&mut data).map_err(io)?;
            *slot = Some(data);
        }
        let manifest_bytes =
            manifest_bytes.ok_or_else(|| malformed(format!("no {MANIFEST_ENTRY}")))?;
        let module = module_bytes.ok_or_else(|| malformed(format!("no {MODULE_ENTRY}")))?;
        let manifest =
            Manifest::parse(&manifest_bytes).map_err(|source| BundleError::Manifest {
                path: origin.to_owned(),
                source,
            })?;
        verify_module(&manifest, &module, origin)?;
        Ok(Bundle { manifest, module })
    }

    /// Writes the bundle atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<(), BundleError> {
        let shown = path.display().to_string();
        let bytes = self.encode(&shown)?;
        write_atomic(path, &bytes).map_err(|source| BundleError::Io {
            path: shown,
            source,
        })
    }

    /// The bundle file's bytes, exactly as [`Bundle::write`] lays them out. The layout is
    /// fixed (entry order, mode, a zero mtime), so the same bundle always gives the same
    /// bytes: a copy on disk equal to them is this verified bundle, with no need to hash it.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        self.encode("<in memory>")
    }

    /// The tar bytes; `shown` names the destination in errors.
    fn encode(&self, shown: &str) -> Result<Vec<u8>, BundleError> {
        let manifest = self
            .manifest
            .to_json()
            .map_err(|source| BundleError::Manifest {
                path: shown.to_owned(),
                source,
            })?;
        let mut builder = tar::Builder::new(Vec::new());
        let io = |source| BundleError::Io {
            path: shown.to_owned(),
            source,
        };
        for (name, data) in [(MANIFEST_ENTRY, &manifest), (MODULE_ENTRY, &self.module)] {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, name, data.as_slice())
                .map_err(io)?;
        }
        builder.into_inner().map_err(io)
    }
}

fn verify_module(manifest: &Manifest, module: &[u8], origin: &str) -> Result<(), BundleError> {
    let mismatch = |what: String| BundleError::ModuleMismatch {
        path: origin.to_owned(),
        what,
    };
    if module.len() as u64 != manifest.module.size {
        return Err(mismatch(format!(
            "size {} but the manifest says {}",
            module.len(),
            manifest.module.size
        )));
    }
    let actual = Sha256::of(module);
    if actual != manifest.module.sha256 {
        return Err(mismatch(format!(
            "sha256 {actual} but the manifest says {}",
            manifest.module.sha256
        )));
    }
    if !module.starts_with(b"\x7fELF") {
        return Err(mismatch("the module is not an ELF file".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::manifest::tests::sample;

    const MODULE: &[u8] = b"\x7fELF pretend module";

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.pbb");
        let b = Bundle::new(sample(MODULE), MODULE.to_vec()).unwrap();
        b.write(&p).unwrap();
        let back = Bundle::read(&p).unwrap();
        assert_eq!(back.manifest(), b.manifest());
        assert_eq!(back.module(), MODULE);
        // The same bundle always gives the same bytes (the agent's cache compares them).
        assert_eq!(std::fs::read(&p).unwrap(), b.to_bytes().unwrap());
        assert_eq!(back.to_bytes().unwrap(), b.to_bytes().unwrap());
    }

    #[test]
    fn corrupted_module_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.pbb");
        Bundle::new(sample(MODULE), MODULE.to_vec())
            .unwrap()
            .write(&p)
            .unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes
            .windows(MODULE.len())
            .position(|w| w == MODULE)
            .unwrap();
        bytes[at + 6] ^= 0x01;
        std::fs::write(&p, &bytes).unwrap();
        let err = Bundle::read(&p).unwrap_err();
        assert!(matches!(err, BundleError::ModuleMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains("sha256"),
            "{:?} does not contain {:?}",
            err.to_string(),
            "sha256"
        );
    }

    #[test]
    fn mismatch_in_memory_is_refused() {
        assert!(Bundle::new(sample(MODULE), b"\x7fELF other".to_vec()).is_err());
    }

    #[test]
    fn garbage_and_extra_entries_are_refused() {
        assert!(Bundle::from_reader(&b"not a tar at all"[..], "x").is_err());
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "evil.sh", &b"x"[..])
            .unwrap();
        let bytes = builder.into_inner().unwrap();
        let err = Bundle::from_reader(bytes.as_slice(), "x").unwrap_err();
        assert!(err.to_string().contains("evil.sh"), "{err}");
    }
}
