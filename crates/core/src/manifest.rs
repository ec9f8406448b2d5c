//! The bundle manifest: what a livepatch module is for and what it does. Format documented in
//! `docs/bundle-format.md`; bump [`MANIFEST_FORMAT`] on any incompatible change.

use serde::{Deserialize, Serialize};

use crate::ids::{BuildId, CveId, KernelRelease, ModuleName, ObjectName, PatchLevel, Sha256};
use crate::version::UpstreamVersion;

/// The manifest format this code writes and the only one it reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// Largest manifest we parse; real ones are a few KiB.
pub const MANIFEST_MAX_BYTES: u64 = 1024 * 1024;

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not JSON of the manifest's shape (unknown fields included).
    #[error("manifest is not valid JSON for format {MANIFEST_FORMAT}: {0}")]
    Json(#[from] serde_json::Error),
    /// The manifest declares a format other than [`MANIFEST_FORMAT`].
    #[error(
        "manifest format {found} is not supported (this Patchbay reads format {MANIFEST_FORMAT}); \
         upgrade Patchbay or rebuild the bundle"
    )]
    UnsupportedFormat {
        /// The format the manifest declares.
        found: u32,
    },
    /// The manifest parses but breaks a rule: no replaced functions, a function name that is
    /// not a C identifier, or the same function replaced twice (the text says which).
    #[error("manifest is inconsistent: {0}")]
    Inconsistent(String),
}

/// The kernel build a bundle targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelTarget {
    /// `uname -r` of the target kernel.
    pub release: KernelRelease,
    /// GNU build-id of the target vmlinux: the identity the agent checks.
    pub build_id: BuildId,
    /// Upstream version the distro kernel is based on, e.g. `6.1.192`.
    pub upstream_version: UpstreamVersion,
    /// Distro package version, e.g. `6.1.192-2`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
}

/// The livepatch module inside the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleInfo {
    /// Name the module gets in the kernel; unique per kernel build and level.
    pub name: ModuleName,
    /// SHA-256 of the `.ko` file.
    pub sha256: Sha256,
    /// Size of the `.ko` file in bytes.
    pub size: u64,
}

/// One function the patch replaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplacedFunction {
    /// `vmlinux` or the module that holds the function.
    pub object: ObjectName,
    /// The kernel's function being replaced.
    pub function: String,
    /// Position among local symbols of the same name (0: the name is unique).
    #[serde(default)]
    pub sympos: u32,
    /// The replacement function in the patch module.
    pub replacement: String,
}

/// Which tool built the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderInfo {
    /// The builder's name, e.g. `patchbay-build`.
    pub name: String,
    /// The builder's version, e.g. `0.1.0`.
    pub version: String,
}

/// The manifest of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`] for manifests this code accepts.
    pub format: u32,
    /// The one kernel build the module may be loaded into.
    pub kernel: KernelTarget,
    /// Cumulative patch level: level N contains every fix of levels below it.
    pub level: PatchLevel,
    /// The `.ko` this manifest vouches for (name, size, hash).
    pub module: ModuleInfo,
    /// Every function the module replaces; never empty, no function listed twice.
    pub replaced_functions: Vec<ReplacedFunction>,
    /// CVEs this level fixes (cumulative).
    #[serde(default)]
    pub fixes: Vec<CveId>,
    /// The tool that built the bundle.
    pub builder: BuilderInfo,
    /// RFC 3339 UTC time of the build.
    pub created: String,
}

impl Manifest {
    /// The loadable modules whose functions the bundle replaces (not `vmlinux`), sorted.
    pub fn patched_modules(&self) -> Vec<String> {
        let mut modules: Vec<String> = self
            .replaced_functions
            .iter()
            .map(|f| f.object.to_string())
            .filter(|o| o != "vmlinux")
            .collect();
        modules.sort();
        modules.dedup();
        modules
    }

    /// Parses and checks a manifest. Unknown fields are refused so that a signed manifest
    /// cannot carry data this version would silently ignore.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        // Read the format alone first: a newer format would otherwise fail the strict parse
        // (unknown fields) with a JSON error instead of the actionable "upgrade Patchbay".
        let probe: FormatOnly = serde_json::from_slice(bytes)?;
        if probe.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat {
                found: probe.format,
            });
        }
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Serialises the manifest as pretty JSON (what goes into a bundle).
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        self.check()?;
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }

    fn check(&self) -> Result<(), ManifestError> {
        if self.replaced_functions.is_empty() {
            return Err(ManifestError::Inconsistent(
                "a patch must replace at least one function".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.replaced_functions {
            if !is_kernel_function_name(&f.function) || !is_c_identifier(&f.replacement) {
                return Err(ManifestError::Inconsistent(format!(
                    "function names must be C identifiers: {:?} -> {:?}",
                    f.function, f.replacement
                )));
            }
            if !seen.insert((&f.object, &f.function, f.sympos)) {
                return Err(ManifestError::Inconsistent(format!(
                    "{}:{} is replaced twice",
                    f.object, f.function
                )));
            }
        }
        Ok(())
    }
}

/// Whether `s` is a kernel function's symbol name: a C identifier, optionally with the
/// suffixes GCC gives clones and split parts (`foo.isra.0`, `foo.constprop.1`, `foo.part.0`).
/// At most 128 bytes.
pub fn is_kernel_function_name(s: &str) -> bool {
    let mut parts = s.split('.');
    parts.next().is_some_and(is_c_identifier)
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        && s.len() <= 128
}

/// Whether `s` is a valid C identifier (what kernel symbol names are): ASCII letters, digits
/// and `_`, not starting with a digit, at most 128 bytes.
pub fn is_c_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.len() <= 128
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    pub(crate) fn sample(module: &[u8]) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            kernel: KernelTarget {
                release: "6.1.0-56-amd64".parse().unwrap(),
                build_id: "0123456789abcdef0123456789abcdef01234567".parse().unwrap(),
                upstream_version: UpstreamVersion::new(6, 1, 192),
                package_version: Some("6.1.192-2".into()),
            },
            level: 1.try_into().unwrap(),
            module: ModuleInfo {
                name: "pb_0123456789ab_l1".parse().unwrap(),
                sha256: Sha256::of(module),
                size: module.len() as u64,
            },
            replaced_functions: vec![ReplacedFunction {
                object: ObjectName::vmlinux(),
                function: "cmdline_proc_show".into(),
                sympos: 0,
                replacement: "pb_cmdline_proc_show".into(),
            }],
            fixes: vec!["CVE-2024-1086".parse().unwrap()],
            builder: BuilderInfo {
                name: "patchbay-build".into(),
                version: "0.1.0".into(),
            },
            created: "2026-11-22T08:00:00Z".into(),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample(b"module");
        let json = m.to_json().unwrap();
        assert_eq!(Manifest::parse(&json).unwrap(), m);
    }

    #[test]
    fn refuses_other_formats_and_unknown_fields() {
        let m = sample(b"module");
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json().unwrap()).unwrap();
        v["format"] = 2.into();
        let err = Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedFormat { found: 2 }));
        v["format"] = 1.into();
        v["extra"] = "x".into();
        assert!(Manifest::parse(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn refuses_bad_values() {
        let m = sample(b"module");
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json().unwrap()).unwrap();
        v["kernel"]["build_id"] = "nothex".into();
        assert!(Manifest::parse(&serde_json::to_vec(&v).unwrap()).is_err());

        let mut dup = sample(b"module");
        dup.replaced_functions
            .push(dup.replaced_functions[0].clone());
        assert!(dup.to_json().is_err());

        let mut bad_name = sample(b"module");
        bad_name.replaced_functions[0].function = "rm -rf".into();
        assert!(bad_name.to_json().is_err());
    }

    #[test]
    fn c_identifiers() {
        assert!(is_c_identifier("cmdline_proc_show"));
        assert!(is_c_identifier("_x1"));
        assert!(!is_c_identifier("1x"));
        assert!(!is_c_identifier(""));
        assert!(!is_c_identifier("a.b"));
    }

    #[test]
    fn kernel_function_names_allow_gcc_clone_suffixes() {
        assert!(is_kernel_function_name("cmdline_proc_show"));
        assert!(is_kernel_function_name("__set_oom_adj.isra.0"));
        assert!(is_kernel_function_name("link_path_walk.part.0.constprop.0"));
        assert!(!is_kernel_function_name("a..b"));
        assert!(!is_kernel_function_name(".isra.0"));
        assert!(!is_kernel_function_name("a.b-c"));
        assert!(!is_kernel_function_name("rm -rf"));
    }
}
