//! Debian kernel artifacts for Patchbay.
//!
//! Resolves which kernels of each supported line (`lines`: series × Debian release × flavour)
//! Debian's archive offers (never a hard-coded release: Debian publishes new ones and drops old
//! ones), through Patchbay's own apt configuration (`archive`), fetches image + headers +
//! kbuild into a cache once, and reads
//! what the builder and the VM harness need: a relocatable headers tree for out-of-tree
//! modules, the uncompressed vmlinux for QEMU's PVH boot, its build-id, vermagic, modules,
//! and the full System.map (lazily, from the -dbg package).
//!
//! Cache layout: `<cache_root>/<release>/<package_version>/` holding `root/` (the unpacked
//! packages), `vmlinux`, `kernel.json` (written last: its presence marks the entry complete)
//! and, once asked for, `System.map`.
#![warn(missing_docs)]

mod apt;
mod archive;
pub mod buildroot;
mod bzimage;
mod debversion;
mod error;
mod fsutil;
mod kernel;
mod lines;
mod process;
mod release;
mod source;
mod symbol_files;
mod symbols;
mod toolchain;

use std::fs;
use std::path::PathBuf;

use patchbay_core::DebianRelease;
use serde::{Deserialize, Serialize};

pub use error::KernelError;
pub use kernel::{read_module, Kernel};
pub use lines::{source_package_of, Flavour, KernelLine};
pub use release::{upstream_version_of, KernelSelector};
pub use source::{resolve_source_version, source_versions, unpacked_source, SourceTree, TreeLock};
pub use symbol_files::SymbolFiles;
pub use symbols::{Symbol, SymbolEntry, SymbolTable};
pub use toolchain::Toolchain;

/// A kernel apt can download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailableKernel {
    /// The release, e.g. `6.1.0-56-amd64` or `6.12.117+deb13-amd64`.
    pub release: DebianRelease,
    /// Debian package version, e.g. `6.1.192-2`.
    pub package_version: String,
    /// Upstream kernel version, e.g. `6.1.192`.
    pub upstream_version: patchbay_core::UpstreamVersion,
}

/// The kernels of every supported line Debian's archive offers, grouped by line (series,
/// Debian release, flavour), older before newer within a line.
pub fn available_kernels() -> Result<Vec<AvailableKernel>, KernelError> {
    apt::available_kernels()
}

/// Refreshes Patchbay's own package lists of Debian's archive now (they are otherwise
/// refreshed when a day old).
pub fn refresh_archive() -> Result<(), KernelError> {
    archive::refresh()
}

/// Picks a kernel among those apt offers now.
pub fn resolve(selector: &KernelSelector) -> Result<AvailableKernel, KernelError> {
    pick(&available_kernels()?, selector)
}

fn pick(
    kernels: &[AvailableKernel],
    selector: &KernelSelector,
) -> Result<AvailableKernel, KernelError> {
    let line = selector.line()?;
    let kernels: Vec<&AvailableKernel> = kernels
        .iter()
        .filter(|k| line.contains(&k.release))
        .collect();
    let listing = || {
        kernels
            .iter()
            .map(|k| format!("{} ({})", k.release, k.package_version))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match selector {
        KernelSelector::Newest(_) => kernels.last(),
        KernelSelector::Older(_) => match kernels.len() {
            0 | 1 => {
                return Err(KernelError::NoOlderKernel {
                    line: line.to_string(),
                    available: listing(),
                })
            }
            n => kernels.get(n - 2),
        },
        KernelSelector::Exact(release) => kernels.iter().find(|k| &k.release == release),
    };
    found.map(|k| (*k).clone()).ok_or_else(|| match selector {
        KernelSelector::Exact(release) => KernelError::ReleaseNotAvailable {
            release: release.to_string(),
            available: listing(),
        },
        _ => KernelError::NoKernelsAvailable {
            line: line.to_string(),
            lists: apt::lists_dir(),
        },
    })
}

/// `$PATCHBAY_CACHE/kernels` if set, else `$HOME/.cache/patchbay/kernels`.
pub fn cache_root() -> PathBuf {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(cache) = non_empty("PATCHBAY_CACHE") {
        return PathBuf::from(cache).join("kernels");
    }
    match non_empty("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/patchbay/kernels"),
        None => std::env::temp_dir().join("patchbay-cache/kernels"),
    }
}

/// Downloads and unpacks a kernel into the cache, once; returns at once when it is cached.
/// Concurrent callers (threads or processes) wait for one fetch instead of repeating it.
pub fn fetch(kernel: &AvailableKernel) -> Result<Kernel, KernelError> {
    release::validate_package_version(&kernel.package_version)?;
    let release_dir = cache_root().join(kernel.release.as_str());
    let version = &kernel.package_version;
    let entry = release_dir.join(version);
    if entry.join(kernel::KERNEL_JSON).is_file() {
        return Kernel::open(&entry);
    }
    fs::create_dir_all(&release_dir)
        .map_err(|e| KernelError::io("create cache directory", &release_dir, e))?;
    let _lock = fsutil::lock(&release_dir.join(format!("{version}.lock")))?;
    if entry.join(kernel::KERNEL_JSON).is_file() {
        return Kernel::open(&entry); // fetched by someone else while we waited
    }
    // Leftovers of a crashed fetch: the lock guarantees nobody is using them.
    let staging = release_dir.join(format!("{version}.tmp"));
    let downloads = release_dir.join(format!("{version}.download"));
    fsutil::remove_dir_if_present(&staging)?;
    fsutil::remove_dir_if_present(&downloads)?;
    fsutil::remove_dir_if_present(&entry)?;
    for dir in [&staging, &downloads] {
        fs::create_dir(dir).map_err(|e| KernelError::io("create", dir, e))?;
    }
    let built = kernel::build_entry(kernel, &staging, &downloads);
    // The unpacked tree is the cache; the .debs are not kept.
    let cleaned = fsutil::remove_dir_if_present(&downloads);
    if let Err(error) = built {
        let _ = fsutil::remove_dir_if_present(&staging);
        return Err(error);
    }
    cleaned?;
    fsutil::publish(&staging, &entry)?;
    Kernel::open(&entry)
}

/// Resolves and fetches. For an exact ABI that apt no longer offers, a complete cache entry
/// of that ABI (the highest package version) is used instead of failing.
pub fn fetch_selector(selector: &KernelSelector) -> Result<Kernel, KernelError> {
    match resolve(selector) {
        Ok(kernel) => fetch(&kernel),
        Err(error @ KernelError::ReleaseNotAvailable { .. }) => match selector {
            KernelSelector::Exact(release) => newest_cached(release)?.ok_or(error),
            _ => Err(error),
        },
        Err(error) => Err(error),
    }
}

/// The complete cache entry of `abi` with the highest package version, if any.
fn newest_cached(release: &DebianRelease) -> Result<Option<Kernel>, KernelError> {
    let release_dir = cache_root().join(release.as_str());
    let Ok(entries) = fs::read_dir(&release_dir) else {
        return Ok(None);
    };
    let newest = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(kernel::KERNEL_JSON).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|version| release::validate_package_version(version).is_ok())
        .max_by(|a, b| debversion::compare(a, b));
    newest
        .map(|version| Kernel::open(&release_dir.join(version)))
        .transpose()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn kernel(number: u32, version: &str) -> AvailableKernel {
        AvailableKernel {
            release: format!("6.1.0-{number}-amd64").parse().unwrap(),
            package_version: version.into(),
            upstream_version: upstream_version_of(version).unwrap(),
        }
    }

    #[test]
    fn pick_selects_newest_older_and_exact() {
        let kernels = vec![
            kernel(53, "6.1.187-1"),
            kernel(55, "6.1.192-1"),
            kernel(56, "6.1.192-2"),
        ];
        assert_eq!(
            pick(&kernels, &KernelSelector::newest())
                .unwrap()
                .release
                .abi_number(),
            Some(56)
        );
        assert_eq!(
            pick(&kernels, &KernelSelector::older())
                .unwrap()
                .release
                .abi_number(),
            Some(55)
        );
        let exact = KernelSelector::Exact("6.1.0-53-amd64".parse().unwrap());
        assert_eq!(pick(&kernels, &exact).unwrap().package_version, "6.1.187-1");
        let gone = KernelSelector::Exact("6.1.0-20-amd64".parse().unwrap());
        let message = pick(&kernels, &gone).unwrap_err().to_string();
        assert!(
            message.contains("6.1.0-20-amd64") && message.contains("6.1.0-56-amd64 (6.1.192-2)"),
            "{message}"
        );
        assert!(matches!(
            pick(&kernels[..1], &KernelSelector::older()),
            Err(KernelError::NoOlderKernel { .. })
        ));
        assert!(pick(&[], &KernelSelector::newest()).is_err());
    }

    #[test]
    fn pick_stays_within_the_line() {
        let trixie = |v: u32| AvailableKernel {
            release: format!("6.12.{v}+deb13-amd64").parse().unwrap(),
            package_version: format!("6.12.{v}-1"),
            upstream_version: format!("6.12.{v}").parse().unwrap(),
        };
        let mut kernels = vec![kernel(56, "6.1.192-2"), trixie(107), trixie(117)];
        kernels.push(AvailableKernel {
            release: "6.12.118+deb13-cloud-amd64".parse().unwrap(),
            package_version: "6.12.118-1".into(),
            upstream_version: "6.12.118".parse().unwrap(),
        });
        kernels.sort_by(|a, b| a.release.cmp(&b.release));
        let line = KernelLine::choose(Some("6.12".parse().unwrap()), None, None).unwrap();
        let newest = pick(&kernels, &KernelSelector::Newest(line)).unwrap();
        assert_eq!(newest.release.as_str(), "6.12.117+deb13-amd64");
        let older = pick(&kernels, &KernelSelector::Older(line)).unwrap();
        assert_eq!(older.release.as_str(), "6.12.107+deb13-amd64");
        assert_eq!(
            pick(&kernels, &KernelSelector::newest())
                .unwrap()
                .release
                .as_str(),
            "6.1.0-56-amd64"
        );
        let bookworm = KernelLine::choose(
            Some("6.12".parse().unwrap()),
            Some(patchbay_core::Distribution::DEBIAN_12),
            None,
        )
        .unwrap();
        let message = pick(&kernels, &KernelSelector::Newest(bookworm))
            .unwrap_err()
            .to_string();
        assert!(message.contains("6.12 on Debian 12"), "{message}");
    }

    /// Live archive query (package lists only, no kernel download): every supported line has
    /// kernels today, well-formed and sorted within the line.
    #[test]
    #[ignore = "updates Patchbay's apt lists from Debian's mirror"]
    fn archive_offers_every_line() {
        let kernels = available_kernels().unwrap();
        for line in KernelLine::all() {
            let of_line: Vec<_> = kernels
                .iter()
                .filter(|k| line.contains(&k.release))
                .collect();
            assert!(!of_line.is_empty(), "no kernels of {line}");
            for pair in of_line.windows(2) {
                assert!(pair[0].release < pair[1].release);
            }
            for k in of_line {
                assert!(k
                    .package_version
                    .starts_with(&k.upstream_version.to_string()));
            }
        }
    }
}
