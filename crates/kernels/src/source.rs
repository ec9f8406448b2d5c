//! The kernel's own source tree, prepared to compile single objects exactly as Debian did.
//!
//! The line's `linux-source-<series>` of exactly the image's package version, unpacked next to the kernel's
//! cache entry (`<entry>/source/linux`), with Debian's config and `make modules_prepare` run
//! (generated headers, objtool, scripts). Built in a temp dir and renamed, under a lock, so a
//! source tree that exists is complete. Compiling objects must leave it as it was: the tree is
//! shared by every build for this kernel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fsutil::{self, FileLock};
use crate::{apt, Kernel, KernelError, KernelLine};

/// The tarball inside a `linux-source-<series>` package and the directory it unpacks to.
fn tarball_of(source_package: &str) -> (String, String) {
    (
        format!("usr/src/{source_package}.tar.xz"),
        source_package.to_string(),
    )
}

const SOURCE_DIR: &str = "source";
/// Written last; its presence marks a complete, prepared tree.
const PREPARED_MARKER: &str = ".patchbay-prepared";
/// Beside the tree: the diff a build applied, from just before `patch` runs until it is
/// reversed.
const APPLIED_DIFF: &str = ".applied.patch";

/// A prepared source tree of one kernel build.
#[derive(Debug, Clone)]
pub struct SourceTree {
    dir: PathBuf,
    release: String,
    /// Where `make` runs: the host, or the build root with the kernel's compiler.
    toolchain: crate::Toolchain,
    /// The compiler program the kernel's config names (`gcc-12`, `x86_64-linux-gnu-gcc-14`).
    compiler: String,
}

impl SourceTree {
    /// The top of the tree (where `make` runs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `KERNELRELEASE` for every `make` in this tree (Debian's ABI, e.g. `6.1.0-56-amd64`).
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Exclusive use of the tree (one build at a time: compiling regenerates files in it and a
    /// diff is applied to it). Hold it from the first compile until the diff is reversed.
    /// A build stopped while its diff was applied (killed, a power cut) left it recorded
    /// ([`SourceTree::record_applied`]); it is reversed here first, so every holder of the lock
    /// sees the tree as Debian ships it.
    pub fn lock(&self) -> Result<TreeLock, KernelError> {
        let path = self.holder().join(".tree.lock");
        let lock = TreeLock {
            _lock: fsutil::lock(&path)?,
        };
        self.reverse_interrupted()?;
        Ok(lock)
    }

    fn holder(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// Where the diff applied to the tree is recorded while it is applied.
    fn applied_record(&self) -> PathBuf {
        self.holder().join(APPLIED_DIFF)
    }

    /// Records `diff` as applied, before `patch` runs (the caller holds the lock): if the build
    /// is stopped before [`SourceTree::clear_applied`], the next [`SourceTree::lock`] reverses it.
    pub fn record_applied(&self, diff: &Path) -> Result<(), KernelError> {
        let bytes = std::fs::read(diff).map_err(|e| KernelError::io("read", diff, e))?;
        fsutil::write_atomically(&self.applied_record(), &bytes)
    }

    /// The recorded diff was reversed (or never applied): forget it.
    pub fn clear_applied(&self) -> Result<(), KernelError> {
        let record = self.applied_record();
        match std::fs::remove_file(&record) {
            Ok(()) => fsutil::sync_dir(self.holder()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KernelError::io("remove", record, e)),
        }
    }

    fn reverse_interrupted(&self) -> Result<(), KernelError> {
        let record = self.applied_record();
        if !record.is_file() {
            return Ok(());
        }
        let patch = |extra: &[&str]| {
            Command::new("patch")
                .current_dir(&self.dir)
                .args([
                    "-p1",
                    "--batch",
                    "--silent",
                    "--no-backup-if-mismatch",
                    "-i",
                ])
                .arg(&record)
                .args(extra)
                .env("LC_ALL", "C")
                .output()
                .map_err(|e| KernelError::io("run patch on", &self.dir, e))
        };
        // Applied whole: reverse it. Not applied at all (stopped before `patch` ran): nothing
        // to undo. Anything else is a tree no diff can repair.
        let reversible = patch(&["-R", "--dry-run", "--forward"])?;
        if reversible.status.success() {
            let reversed = patch(&["-R", "--forward"])?;
            if !reversed.status.success() {
                return Err(self.interrupted(&record, &reversed));
            }
        } else {
            let applies = patch(&["--dry-run", "--forward"])?;
            if !applies.status.success() {
                return Err(self.interrupted(&record, &reversible));
            }
        }
        self.clear_applied()
    }

    fn interrupted(&self, record: &Path, output: &std::process::Output) -> KernelError {
        KernelError::InterruptedDiff {
            tree: self.dir.clone(),
            tree_root: self.holder().to_path_buf(),
            record: record.to_path_buf(),
            output: String::from_utf8_lossy(&output.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&output.stderr).lines())
                .take(3)
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// The toolchain the tree's commands run with.
    pub fn toolchain(&self) -> &crate::Toolchain {
        &self.toolchain
    }

    /// A `make` command in the tree with Debian's exact compiler (the host's or the build
    /// root's: see [`Kernel::toolchain`]) and release, and a job count. The build root sees
    /// the directory holding the tree (and the builder's include directory beside it).
    pub fn make(&self) -> Command {
        let holder = self.dir.parent().unwrap_or(&self.dir);
        let mut make = self.toolchain.command("make", &[holder]);
        make.current_dir(&self.dir)
            .arg(format!("KERNELRELEASE={}", self.release))
            .arg(format!("CC={}", self.compiler))
            .arg(format!("-j{}", jobs()))
            .env("LC_ALL", "C")
            .env_remove("ARCH")
            .env_remove("CROSS_COMPILE")
            .env_remove("KBUILD_EXTRA_SYMBOLS")
            .env_remove("KCFLAGS");
        make
    }
}

/// Held while a build uses a [`SourceTree`]; released on drop.
#[derive(Debug)]
pub struct TreeLock {
    _lock: FileLock,
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Kernel {
    /// The prepared source tree of this kernel, fetched and prepared on first use (about
    /// 140 MB download, 1.3 GB unpacked, a few minutes of `make modules_prepare`).
    pub fn source_tree(&self) -> Result<SourceTree, KernelError> {
        let root = self.dir().join(SOURCE_DIR);
        let version_text = self.compiler_version_text()?;
        let compiler = crate::buildroot::compiler_program(&version_text)
            .ok_or_else(|| KernelError::CompilerUnavailable {
                kernel: self.release().to_string(),
                compiler: version_text.clone(),
                reason: "the config's CONFIG_CC_VERSION_TEXT names no compiler program".into(),
            })?
            .to_string();
        let tree = SourceTree {
            dir: root.join("linux"),
            release: self.release().to_string(),
            toolchain: self.toolchain()?,
            compiler,
        };
        if root.join(PREPARED_MARKER).is_file() {
            return Ok(tree);
        }
        let _lock = fsutil::lock(&self.dir().join(".source.lock"))?;
        if root.join(PREPARED_MARKER).is_file() {
            return Ok(tree); // prepared by another process while we waited
        }
        let staging = self.dir().join(".source.tmp");
        let downloads = self.dir().join(".source-download");
        fsutil::remove_dir_if_present(&staging)?;
        fsutil::remove_dir_if_present(&downloads)?;
        fsutil::remove_dir_if_present(&root)?;
        for dir in [&staging, &downloads] {
            fs::create_dir(dir).map_err(|e| KernelError::io("create", dir, e))?;
        }
        let result = self.prepare_source(&staging, &downloads, &tree);
        let cleaned = fsutil::remove_dir_if_present(&downloads);
        if let Err(error) = result {
            let _ = fsutil::remove_dir_if_present(&staging);
            return Err(error);
        }
        cleaned?;
        fsutil::write_atomically(
            &staging.join(PREPARED_MARKER),
            self.package_version().as_bytes(),
        )?;
        fsutil::publish(&staging, &root)?;
        Ok(tree)
    }

    fn prepare_source(
        &self,
        staging: &Path,
        downloads: &Path,
        final_tree: &SourceTree,
    ) -> Result<(), KernelError> {
        let release = final_tree.release.as_str();
        let source_package = crate::source_package_of(self.debian_release())?;
        let (tarball, top) = tarball_of(source_package);
        let spec = format!("{source_package}={}", self.package_version());
        apt::download(downloads, &[spec], self.debian_release())?;
        crate::process::run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(single_deb(downloads, source_package)?)
                .arg(downloads.join("unpacked")),
            "the downloaded linux-source package is damaged; try again",
        )?;
        let tarball = downloads.join("unpacked").join(tarball);
        crate::process::run(
            Command::new("tar")
                .arg("-xf")
                .arg(&tarball)
                .arg("-C")
                .arg(staging),
            "the linux-source tarball is damaged; try again",
        )?;
        let unpacked = staging.join(top);
        let linux = staging.join("linux");
        fs::rename(&unpacked, &linux).map_err(|e| KernelError::io("rename", &unpacked, e))?;
        fs::copy(self.config(), linux.join(".config"))
            .map_err(|e| KernelError::io("copy the kernel config to", linux.join(".config"), e))?;
        let tree = SourceTree {
            dir: linux.clone(),
            ..final_tree.clone()
        };
        crate::process::run(
            tree.make().arg("olddefconfig"),
            "Debian's config did not apply to its own source; report this",
        )?;
        crate::process::run(
            tree.make().arg("modules_prepare"),
            "preparing the source tree failed; check that the kernel's compiler, make, bc, flex, \
             bison and libelf-dev are installed (scripts/setup installs them)",
        )?;
        let uts =
            fs::read_to_string(linux.join("include/generated/utsrelease.h")).map_err(|e| {
                KernelError::io("read", linux.join("include/generated/utsrelease.h"), e)
            })?;
        if !uts.contains(&format!("\"{release}\"")) {
            return Err(KernelError::CacheEntry {
                dir: linux,
                reason: format!(
                    "the prepared tree's release is not {release}: {}",
                    uts.trim()
                ),
            });
        }
        Ok(())
    }
}

fn single_deb(dir: &Path, source_package: &str) -> Result<PathBuf, KernelError> {
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| KernelError::io("list", dir, e))? {
        let path = entry.map_err(|e| KernelError::io("list", dir, e))?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            debs.push(path);
        }
    }
    match debs.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(KernelError::CommandFailed {
            command: format!("apt-get download {source_package}"),
            status: format!("left {} .deb files in {}", debs.len(), dir.display()),
            stderr: String::new(),
            hint: "; expected exactly one, try again".into(),
        }),
    }
}

/// The source package versions of a line Debian's archive offers, oldest first (resolved at
/// run time: Debian adds and drops them with its security updates). A Debian release's own
/// builds and its rebuilds for another release share the package name (`6.12.107-1` for
/// Debian 13, `6.12.107-1~deb12u1` and `6.12.95-1~bpo12+1` for Debian 12): only the line's
/// own are listed.
pub fn source_versions(line: &KernelLine) -> Result<Vec<String>, KernelError> {
    crate::archive::ensure_fresh()?;
    let package = line.source_package();
    let output = crate::process::run(
        apt::apt_cache().arg("show").arg(package),
        "check the Debian mirror (PATCHBAY_DEBIAN_MIRROR)",
    )?;
    let mut versions: Vec<String> = apt::parse_stanzas(&String::from_utf8_lossy(&output.stdout))
        .into_iter()
        .filter(|s| s.package == package)
        .map(|s| s.version)
        .filter(|v| crate::upstream_version_of(v).is_ok())
        .filter(|v| {
            crate::lines::distribution_of_package(line.series(), v) == Some(line.distribution())
        })
        .collect();
    versions.sort_by(|a, b| crate::debversion::compare(a, b));
    versions.dedup();
    Ok(versions)
}

/// Picks the source package version for `wanted`: `newest`, an upstream version (`6.1.176`:
/// the highest package of it) or an exact package version (`6.1.176-1`).
pub fn resolve_source_version(wanted: &str, available: &[String]) -> Result<String, KernelError> {
    let not_offered = || KernelError::PackageNotInApt {
        package: format!("linux-source={wanted}"),
        release: format!("any (apt offers {})", available.join(", ")),
    };
    if wanted == "newest" {
        return available.last().cloned().ok_or_else(not_offered);
    }
    if available.iter().any(|v| v == wanted) {
        return Ok(wanted.to_owned());
    }
    available
        .iter()
        .filter(|v| crate::upstream_version_of(v).is_ok_and(|u| wanted.parse() == Ok(u)))
        .max_by(|a, b| crate::debversion::compare(a, b))
        .cloned()
        .ok_or_else(not_offered)
}

/// The unpacked (not configured) source tree of a line's `package_version`, downloaded and
/// unpacked on first use into `<cache_root>/sources/<package>_<version>/linux` (about 140 MB
/// download, 1.3 GB unpacked). Only read: fixes are cut from it, nothing is compiled in it.
pub fn unpacked_source(line: &KernelLine, package_version: &str) -> Result<PathBuf, KernelError> {
    crate::release::validate_package_version(package_version)?;
    let source_package = line.source_package();
    let (tarball, top) = tarball_of(source_package);
    let entry = crate::cache_root()
        .join("sources")
        .join(format!("{source_package}_{package_version}"));
    let tree = entry.join("linux");
    if entry.join(PREPARED_MARKER).is_file() {
        return Ok(tree);
    }
    fs::create_dir_all(&entry).map_err(|e| KernelError::io("create", &entry, e))?;
    let _lock = fsutil::lock(&entry.join(".lock"))?;
    if entry.join(PREPARED_MARKER).is_file() {
        return Ok(tree);
    }
    let staging = entry.join(".tmp");
    fsutil::remove_dir_if_present(&staging)?;
    fsutil::remove_dir_if_present(&tree)?;
    let downloads = staging.join("download");
    fs::create_dir_all(&downloads).map_err(|e| KernelError::io("create", &downloads, e))?;
    crate::process::run(
        apt::apt_get()
            .current_dir(&downloads)
            .arg("download")
            .arg(format!("{source_package}={package_version}")),
        "Debian may have dropped that version: pick one `patchbay-build kernel sources` lists",
    )?;
    crate::process::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(single_deb(&downloads, source_package)?)
            .arg(downloads.join("unpacked")),
        "the downloaded linux-source package is damaged; try again",
    )?;
    crate::process::run(
        Command::new("tar")
            .arg("-xf")
            .arg(downloads.join("unpacked").join(tarball))
            .arg("-C")
            .arg(&staging),
        "the linux-source tarball is damaged; try again",
    )?;
    fsutil::remove_dir_if_present(&downloads)?;
    let unpacked = staging.join(top);
    fs::rename(&unpacked, &tree).map_err(|e| KernelError::io("rename", &unpacked, e))?;
    fsutil::remove_dir_if_present(&staging)?;
    fsutil::write_atomically(&entry.join(PREPARED_MARKER), package_version.as_bytes())?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn source_versions_resolve_by_upstream_or_exact_version() {
        let available: Vec<String> = ["6.1.170-1", "6.1.176-1", "6.1.176-2", "6.1.187-1"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            resolve_source_version("newest", &available).unwrap(),
            "6.1.187-1"
        );
        assert_eq!(
            resolve_source_version("6.1.176", &available).unwrap(),
            "6.1.176-2"
        );
        assert_eq!(
            resolve_source_version("6.1.176-1", &available).unwrap(),
            "6.1.176-1"
        );
        let err = resolve_source_version("6.1.999", &available)
            .unwrap_err()
            .to_string();
        assert!(err.contains("6.1.187-1"), "names what apt offers: {err}");
        assert!(resolve_source_version("newest", &[]).is_err());
    }
}
