//! A kernel unpacked in the cache: fetching it, opening it, and reading its artifacts.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use object::Object;
use patchbay_core::{BuildId, KernelRelease, UpstreamVersion};
use serde::{Deserialize, Serialize};

use patchbay_core::DebianRelease;

use crate::fsutil;
use crate::release::{parse_release, upstream_version_of, validate_package_version, Packages};
use crate::{apt, bzimage, AvailableKernel, KernelError, SymbolTable};

/// Written last into a cache entry; its presence marks the entry complete.
pub(crate) const KERNEL_JSON: &str = "kernel.json";
const RECORD_FORMAT: u32 = 1;
const SYSTEM_MAP: &str = "System.map";

/// The contents of kernel.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KernelRecord {
    format: u32,
    /// Named `abi` in the file since format 1, when every release had an ABI number.
    #[serde(rename = "abi")]
    release: DebianRelease,
    package_version: String,
    upstream_version: UpstreamVersion,
    kbuild_package: String,
    kbuild_version: String,
    build_id: BuildId,
}

/// A complete kernel cache entry: unpacked image, headers, kbuild and modules, plus the
/// vmlinux extracted from the bzImage.
#[derive(Debug, Clone)]
pub struct Kernel {
    dir: PathBuf,
    record: KernelRecord,
    /// What `uname -r` prints: the ABI as core's release type, parsed once at open.
    release: KernelRelease,
    headers_dir: PathBuf,
    vmlinux: PathBuf,
    modules_dir: PathBuf,
}

impl Kernel {
    /// Opens a completed cache entry directory (one with kernel.json).
    pub fn open(dir: &Path) -> Result<Kernel, KernelError> {
        let unusable = |reason: String| KernelError::CacheEntry {
            dir: dir.to_path_buf(),
            reason,
        };
        let dir = dir
            .canonicalize()
            .map_err(|e| unusable(format!("cannot resolve the directory: {e}")))?;
        let record_path = dir.join(KERNEL_JSON);
        let text = fs::read_to_string(&record_path).map_err(|e| {
            unusable(format!(
                "cannot read {KERNEL_JSON} ({e}); the fetch did not finish"
            ))
        })?;
        let record: KernelRecord = serde_json::from_str(&text)
            .map_err(|e| unusable(format!("{KERNEL_JSON} is malformed: {e}")))?;
        if record.format != RECORD_FORMAT {
            return Err(unusable(format!(
                "{KERNEL_JSON} has format {} but this version reads format {RECORD_FORMAT}",
                record.format
            )));
        }
        validate_package_version(&record.package_version)?;
        validate_package_version(&record.kbuild_version)?;
        if upstream_version_of(&record.package_version)? != record.upstream_version {
            return Err(unusable(
                "upstream_version does not match package_version".into(),
            ));
        }
        let release: KernelRelease = record.release.kernel_release().clone();
        let root = dir.join("root");
        let name = record.release.as_str();
        let headers_dir = root.join("usr/src").join(format!("linux-headers-{name}"));
        if !headers_dir.join("Makefile").is_file() {
            return Err(unusable(format!(
                "{} has no Makefile",
                headers_dir.display()
            )));
        }
        let vmlinux = dir.join("vmlinux");
        if !vmlinux.is_file() {
            return Err(unusable("vmlinux is missing".into()));
        }
        let modules_dir = find_modules_dir(&root, &record.release)
            .ok_or_else(|| unusable(format!("no lib/modules/{name} under {}", root.display())))?;
        Ok(Kernel {
            dir,
            record,
            release,
            headers_dir,
            vmlinux,
            modules_dir,
        })
    }

    /// A kernel named by an unpacked headers tree (e.g. `/usr/src/linux-headers-6.1.0-56-amd64`),
    /// built against that tree. The headers alone lack the build-id and symbol map, so the tree
    /// must belong to a cache entry or to a Debian kernel apt offers (fetched into the cache);
    /// its `Module.symvers` must equal Debian's, which proves it is the same kernel build.
    pub fn from_headers_tree(path: &Path) -> Result<Kernel, KernelError> {
        let not_headers = |reason: String| KernelError::NotHeadersTree {
            path: path.to_path_buf(),
            reason,
        };
        let tree = path
            .canonicalize()
            .map_err(|e| not_headers(format!("cannot resolve it: {e}")))?;
        for required in ["Makefile", "Module.symvers"] {
            if !tree.join(required).is_file() {
                return Err(not_headers(format!("it has no {required}")));
            }
        }
        // Debian's include/config/kernel.release holds the upstream version; the ABI (what
        // `uname -r` prints) is UTS_RELEASE.
        let uts = fs::read_to_string(tree.join("include/generated/utsrelease.h"))
            .map_err(|e| not_headers(format!("cannot read include/generated/utsrelease.h: {e}")))?;
        let release = uts
            .lines()
            .find_map(|line| line.strip_prefix("#define UTS_RELEASE "))
            .map(|quoted| quoted.trim().trim_matches('"'))
            .ok_or_else(|| not_headers("utsrelease.h defines no UTS_RELEASE".into()))?;
        let release = parse_release(release).map_err(|e| {
            not_headers(format!("its kernel release is not a Debian kernel's: {e}"))
        })?;
        let mut kernel = match tree.ancestors().find(|dir| dir.join(KERNEL_JSON).is_file()) {
            Some(entry) => Kernel::open(entry)?,
            None => crate::fetch_selector(&crate::KernelSelector::Exact(release.clone()))?,
        };
        let mismatch = |reason: String| KernelError::HeadersMismatch {
            path: tree.clone(),
            release: kernel.release().to_string(),
            reason,
        };
        if kernel.debian_release() != &release {
            return Err(mismatch(format!("its kernel release is {release}")));
        }
        let ours = fs::read(tree.join("Module.symvers"))
            .map_err(|e| KernelError::io("read", tree.join("Module.symvers"), e))?;
        let debians = fs::read(kernel.module_symvers())
            .map_err(|e| KernelError::io("read", kernel.module_symvers(), e))?;
        if ours != debians {
            return Err(mismatch(
                "Module.symvers differs: other exported symbol CRCs".into(),
            ));
        }
        kernel.headers_dir = tree;
        Ok(kernel)
    }

    /// The release parsed as a Debian kernel's (series, Debian release, flavour).
    pub fn debian_release(&self) -> &DebianRelease {
        &self.record.release
    }

    /// The Debian package version of the image, e.g. `6.1.192-2`; names the cache entry.
    pub fn package_version(&self) -> &str {
        &self.record.package_version
    }

    /// The upstream version this Debian kernel is built from (`6.1.170`).
    pub fn upstream_version(&self) -> UpstreamVersion {
        self.record.upstream_version
    }

    /// The kernel release as `uname -r` prints it on a host running this kernel.
    pub fn release(&self) -> &KernelRelease {
        &self.release
    }

    /// The linux-kbuild package version unpacked with the headers (may be newer than the
    /// kernel's own when apt no longer has the exact one).
    pub fn kbuild_version(&self) -> &str {
        &self.record.kbuild_version
    }

    /// The cache entry directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unpacked package contents (`boot/`, `lib/`, `usr/`).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// `make -C <headers_dir> M=<module dir> modules` builds out-of-tree modules for this kernel.
    pub fn headers_dir(&self) -> &Path {
        &self.headers_dir
    }

    /// Uncompressed ELF vmlinux (no debug info, but with the PVH note QEMU `-kernel` needs).
    pub fn vmlinux(&self) -> &Path {
        &self.vmlinux
    }

    /// The compressed kernel as Debian ships it.
    pub fn bzimage(&self) -> PathBuf {
        self.root()
            .join("boot")
            .join(format!("vmlinuz-{}", self.release()))
    }

    /// The kernel's build configuration.
    pub fn config(&self) -> PathBuf {
        self.root()
            .join("boot")
            .join(format!("config-{}", self.release()))
    }

    /// The distribution's modules, `<root>/lib/modules/<abi>` (or `usr/lib/modules/<abi>`).
    pub fn modules_dir(&self) -> &Path {
        &self.modules_dir
    }

    /// GNU build-id of vmlinux.
    pub fn build_id(&self) -> &BuildId {
        &self.record.build_id
    }

    /// `Module.symvers` of the headers tree: the exported symbols and their CRCs.
    pub fn module_symvers(&self) -> PathBuf {
        self.headers_dir.join("Module.symvers")
    }

    /// The vermagic string of the distribution's own modules, e.g.
    /// `"6.1.0-56-amd64 SMP preempt mod_unload modversions "`.
    pub fn vermagic(&self) -> Result<String, KernelError> {
        let mut first_module = None;
        walk_modules(&self.modules_dir, &mut |path| {
            first_module = Some(path.to_path_buf());
            true
        })?;
        let path = first_module.ok_or_else(|| KernelError::NoModules {
            dir: self.modules_dir.clone(),
        })?;
        let bytes = read_module(&path)?;
        let info = match patchbay_core::modinfo::Modinfo::of_module(&bytes) {
            Ok(info) => info,
            Err(patchbay_core::modinfo::ModinfoError::Missing) => Default::default(),
            Err(e) => {
                return Err(KernelError::Elf {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        info.value("vermagic")
            .map(str::to_owned)
            .ok_or(KernelError::NoVermagic { path })
    }

    /// The `.ko` (possibly compressed: `.ko.xz`, …) of a distribution module; `-` and `_` in
    /// names are equivalent, as for modprobe.
    pub fn find_module(&self, name: &str) -> Result<Option<PathBuf>, KernelError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(KernelError::InvalidModuleName {
                name: name.to_string(),
            });
        }
        let wanted = normalize_module_name(name);
        let mut found = None;
        walk_modules(&self.modules_dir, &mut |path| {
            let matches = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(module_name_of_file)
                .is_some_and(|module| normalize_module_name(module) == wanted);
            if matches {
                found = Some(path.to_path_buf());
            }
            matches
        })?;
        Ok(found)
    }

    /// The full System.map, from the linux-image-<abi>-dbg package (about 860 MB to download;
    /// done once, on first call, keeping only the map).
    pub fn system_map(&self) -> Result<PathBuf, KernelError> {
        let final_path = self.dir.join(SYSTEM_MAP);
        if final_path.is_file() {
            return Ok(final_path);
        }
        let _lock = fsutil::lock(&self.dir.join(".system-map.lock"))?;
        if final_path.is_file() {
            return Ok(final_path); // another process finished it while we waited
        }
        // Leftovers of a crashed attempt: the lock guarantees nobody is using them.
        let downloads = self.dir.join(".dbg-download");
        fsutil::remove_dir_if_present(&downloads)?;
        remove_stale_temps(&self.dir, &format!(".{SYSTEM_MAP}.tmp-"))?;
        fs::create_dir(&downloads).map_err(|e| KernelError::io("create", &downloads, e))?;
        let temp = fsutil::temp_sibling(&final_path);
        let result = self.fetch_system_map(&downloads, &temp, &final_path);
        let cleanup = fsutil::remove_dir_if_present(&downloads);
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result?;
        cleanup?;
        Ok(final_path)
    }

    fn fetch_system_map(
        &self,
        downloads: &Path,
        temp: &Path,
        final_path: &Path,
    ) -> Result<(), KernelError> {
        let release = self.debian_release();
        let package = release.dbg_package();
        let spec = format!("{package}={}", self.package_version());
        apt::download(downloads, std::slice::from_ref(&spec), release)?;
        let deb = single_deb(downloads, &package)?;
        let member = format!("usr/lib/debug/boot/System.map-{release}");
        extract_deb_member(&deb, &member, temp)?;
        let table = SymbolTable::load(temp).map_err(|e| KernelError::BadSystemMap {
            path: temp.to_path_buf(),
            package: spec.clone(),
            reason: e.to_string(),
        })?;
        if table.len() < 1000 || table.lookup("_stext").is_empty() {
            return Err(KernelError::BadSystemMap {
                path: temp.to_path_buf(),
                package: spec,
                reason: format!("only {} symbols and no _stext", table.len()),
            });
        }
        fsutil::publish(temp, final_path)
    }
}

fn remove_stale_temps(dir: &Path, prefix: &str) -> Result<(), KernelError> {
    for entry in fs::read_dir(dir).map_err(|e| KernelError::io("list", dir, e))? {
        let entry = entry.map_err(|e| KernelError::io("list", dir, e))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix))
        {
            let path = entry.path();
            fs::remove_file(&path)
                .map_err(|e| KernelError::io("remove stale temp file", &path, e))?;
        }
    }
    Ok(())
}

fn find_modules_dir(root: &Path, release: &DebianRelease) -> Option<PathBuf> {
    // Bookworm ships /lib/modules; merged-/usr layouts ship /usr/lib/modules.
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|base| root.join(base).join(release.as_str()))
        .find(|dir| dir.is_dir())
}

fn normalize_module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// `foo-bar.ko.xz` → `foo-bar`; `None` for files that are not modules.
fn module_name_of_file(file_name: &str) -> Option<&str> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file_name.strip_suffix(suffix))
        .filter(|name| !name.is_empty())
}

/// Visits module files under `dir` in sorted order (deterministic), not following symlinks
/// (`build` and `source` point into the headers). `visit` returns true to stop.
fn walk_modules(dir: &Path, visit: &mut dyn FnMut(&Path) -> bool) -> Result<bool, KernelError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| KernelError::io("list", dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| KernelError::io("list", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let file_type = entry
            .file_type()
            .map_err(|e| KernelError::io("inspect", entry.path(), e))?;
        let path = entry.path();
        if file_type.is_dir() {
            if walk_modules(&path, visit)? {
                return Ok(true);
            }
        } else if file_type.is_file()
            && entry
                .file_name()
                .to_str()
                .and_then(module_name_of_file)
                .is_some()
            && visit(&path)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The ELF bytes of a module file, decompressing `.ko.xz` / `.ko.zst` / `.ko.gz`.
/// A module file's bytes, decompressed if Debian compressed it (`.ko.xz`, …).
pub fn read_module(path: &Path) -> Result<Vec<u8>, KernelError> {
    let name = path.to_string_lossy();
    let decompressor = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    match decompressor {
        None => fs::read(path).map_err(|e| KernelError::io("read module", path, e)),
        Some(program) => {
            let mut command = Command::new(program);
            command.arg("-dc").arg(path);
            Ok(crate::process::run(&mut command, "the module file is damaged")?.stdout)
        }
    }
}

/// GNU build-id of an ELF file.
pub(crate) fn read_build_id(path: &Path) -> Result<BuildId, KernelError> {
    let elf_error = |reason: String| KernelError::Elf {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = fs::read(path).map_err(|e| KernelError::io("read", path, e))?;
    let file = object::File::parse(&*bytes).map_err(|e| elf_error(e.to_string()))?;
    let id = file
        .build_id()
        .map_err(|e| elf_error(e.to_string()))?
        .ok_or_else(|| elf_error("no NT_GNU_BUILD_ID note".into()))?;
    hex::encode(id)
        .parse()
        .map_err(|e| elf_error(format!("unusable build-id: {e}")))
}

/// The one `<package>_*.deb` in `dir`.
pub(crate) fn single_deb(dir: &Path, package: &str) -> Result<PathBuf, KernelError> {
    let prefix = format!("{package}_");
    let found: Vec<PathBuf> = list_debs(dir)?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(KernelError::CommandFailed {
            command: format!("apt-get download {package}"),
            status: format!(
                "left {} matching .deb files in {}",
                found.len(),
                dir.display()
            ),
            stderr: String::new(),
            hint: "; expected exactly one, try again".into(),
        }),
    }
}

fn list_debs(dir: &Path) -> Result<Vec<PathBuf>, KernelError> {
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| KernelError::io("list", dir, e))? {
        let path = entry.map_err(|e| KernelError::io("list", dir, e))?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            debs.push(path);
        }
    }
    debs.sort();
    Ok(debs)
}

/// Streams `dpkg-deb --fsys-tarfile` and copies one member out, stopping as soon as it has
/// been read (the rest of a large -dbg package is never decompressed).
pub(crate) fn extract_deb_member(
    deb: &Path,
    member: &str,
    output: &Path,
) -> Result<(), KernelError> {
    let mut command = Command::new("dpkg-deb");
    command
        .arg("--fsys-tarfile")
        .arg(deb)
        .env("LC_ALL", "C")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| crate::process::spawn_error(&command, e))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(KernelError::io(
            "read the data of",
            deb,
            io::Error::other("dpkg-deb has no stdout pipe"),
        ));
    };
    let copied =
        copy_tar_member(stdout, member, output).map_err(|e| KernelError::io("unpack from", deb, e));
    // Done reading: stop dpkg-deb (it would otherwise decompress the rest of the package).
    let _ = child.kill();
    let finished = child
        .wait_with_output()
        .map_err(|e| KernelError::io("wait for dpkg-deb reading", deb, e))?;
    match copied? {
        true => Ok(()),
        false if !finished.status.success() => Err(crate::process::failure(
            &command,
            finished.status,
            &finished.stderr,
            "the downloaded package is damaged; try again",
        )),
        false => Err(KernelError::io(
            "find",
            deb,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("the package has no {member}"),
            ),
        )),
    }
}

/// Copies tar member `member` (compared without a leading `./`) to `output`, fsynced.
/// Returns whether it was found.
fn copy_tar_member(stream: impl io::Read, member: &str, output: &Path) -> io::Result<bool> {
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let path = path.strip_prefix(".").unwrap_or(&path);
        if path == Path::new(member) {
            let mut file = File::create(output)?;
            io::copy(&mut entry, &mut file)?;
            file.sync_all()?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The staging steps of a fetch, run while holding the entry's lock.
pub(crate) fn build_entry(
    kernel: &AvailableKernel,
    staging: &Path,
    downloads: &Path,
) -> Result<(), KernelError> {
    let release = &kernel.release;
    let packages = apt::kernel_packages(kernel)?;
    apt::download(downloads, &packages.specs, release)?;
    let debs = list_debs(downloads)?;
    if debs.len() != packages.specs.len() {
        return Err(KernelError::CommandFailed {
            command: format!("apt-get download {}", packages.specs.join(" ")),
            status: format!(
                "left {} .deb files, expected {}",
                debs.len(),
                packages.specs.len()
            ),
            stderr: String::new(),
            hint: "; try again".into(),
        });
    }
    let root = staging.join("root");
    fs::create_dir(&root).map_err(|e| KernelError::io("create", &root, e))?;
    for deb in &debs {
        let mut command = Command::new("dpkg");
        command.arg("-x").arg(deb).arg(&root);
        crate::process::run(
            &mut command,
            "the download may be damaged or the disk full; fetch again",
        )?;
    }
    make_headers_relocatable(&root, release)?;
    relink_module_build_links(&root, release)?;
    let vmlinux = staging.join("vmlinux");
    bzimage::extract_vmlinux(
        &root.join("boot").join(format!("vmlinuz-{release}")),
        &vmlinux,
    )?;
    let record = KernelRecord {
        format: RECORD_FORMAT,
        release: release.clone(),
        package_version: kernel.package_version.clone(),
        upstream_version: upstream_version_of(&kernel.package_version)?,
        kbuild_package: packages.kbuild_package,
        kbuild_version: packages.kbuild_version,
        build_id: read_build_id(&vmlinux)?,
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| KernelError::CacheEntry {
        dir: staging.to_path_buf(),
        reason: format!("cannot serialize {KERNEL_JSON}: {e}"),
    })?;
    // One filesystem sync makes the whole unpacked tree durable before it is published.
    fsutil::sync_filesystem(staging)?;
    fsutil::write_atomically(&staging.join(KERNEL_JSON), &json)
}

const MAKEFILE_DIR_VARIABLE: &str = "patchbay_headers_dir";

/// Debian's per-flavour headers Makefile includes the common headers by absolute path
/// (`include /usr/src/linux-headers-<base>-common/Makefile`). Point it at the sibling
/// directory relative to the Makefile's own location instead, so the unpacked tree works
/// wherever the cache lives (and survives being moved).
pub(crate) fn rewrite_headers_makefile(text: &str) -> Option<String> {
    let mut changed = false;
    let mut lines = vec![format!(
        "# Rewritten by patchbay: includes relative to this directory, not absolute.\n\
         {MAKEFILE_DIR_VARIABLE} := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))"
    )];
    for line in text.lines() {
        let rewritten = line
            .trim_start()
            .strip_prefix("include")
            .map(str::trim_start)
            .and_then(|path| path.strip_prefix("/usr/src/"))
            .filter(|rest| !rest.is_empty() && !rest.contains(".."));
        match rewritten {
            Some(rest) => {
                lines.push(format!("include $({MAKEFILE_DIR_VARIABLE})/../{rest}"));
                changed = true;
            }
            None => lines.push(line.to_string()),
        }
    }
    changed.then(|| lines.join("\n") + "\n")
}

fn make_headers_relocatable(root: &Path, release: &DebianRelease) -> Result<(), KernelError> {
    let headers = root
        .join("usr/src")
        .join(format!("linux-headers-{release}"));
    let makefile = headers.join("Makefile");
    let text = fs::read_to_string(&makefile).map_err(|e| KernelError::io("read", &makefile, e))?;
    if let Some(rewritten) = rewrite_headers_makefile(&text) {
        fs::write(&makefile, rewritten).map_err(|e| KernelError::io("rewrite", &makefile, e))?;
    }
    let common = root
        .join("usr/src")
        .join(format!("linux-headers-{}-common", release.base()))
        .join("Makefile");
    if !common.is_file() {
        return Err(KernelError::CacheEntry {
            dir: root.to_path_buf(),
            reason: format!(
                "the common headers Makefile {} is missing",
                common.display()
            ),
        });
    }
    Ok(())
}

/// `lib/modules/<abi>/{build,source}` are absolute links to /usr/src; make them relative so
/// they point into the unpacked tree, never to headers installed on the host.
fn relink_module_build_links(root: &Path, release: &DebianRelease) -> Result<(), KernelError> {
    let Some(modules_dir) = find_modules_dir(root, release) else {
        return Err(KernelError::NoModules {
            dir: root.join("lib/modules").join(release.as_str()),
        });
    };
    let depth = modules_dir
        .strip_prefix(root)
        .map_or(0, |p| p.components().count());
    for name in ["build", "source"] {
        let link = modules_dir.join(name);
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        let Ok(inside_root) = target.strip_prefix("/") else {
            continue;
        };
        let relative = PathBuf::from("../".repeat(depth)).join(inside_root);
        fs::remove_file(&link).map_err(|e| KernelError::io("replace link", &link, e))?;
        std::os::unix::fs::symlink(&relative, &link)
            .map_err(|e| KernelError::io("create link", &link, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn headers_makefile_include_becomes_relative() {
        let rewritten =
            rewrite_headers_makefile("include /usr/src/linux-headers-6.1.0-56-common/Makefile\n")
                .unwrap();
        assert!(
            rewritten
                .contains("patchbay_headers_dir := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))"),
            "{:?} does not contain {:?}",
            rewritten,
            "patchbay_headers_dir := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))"
        );
        assert!(
            rewritten.contains(
                "include $(patchbay_headers_dir)/../linux-headers-6.1.0-56-common/Makefile"
            ),
            "{:?} does not contain {:?}",
            rewritten,
            "include $(patchbay_headers_dir)/../linux-headers-6.1.0-56-common/Makefile"
        );
        assert!(
            !rewritten.contains("/usr/src"),
            "{:?} unexpectedly contains {:?}",
            rewritten,
            "/usr/src"
        );
        // Nothing to do: None, so an already fixed file is left alone.
        assert_eq!(rewrite_headers_makefile(&rewritten), None);
        assert_eq!(
            rewrite_headers_makefile("include /usr/src/../etc/x\n"),
            None
        );
    }

    #[test]
    fn module_file_names() {
        assert_eq!(module_name_of_file("af_key.ko"), Some("af_key"));
        assert_eq!(
            module_name_of_file("9pnet_virtio.ko.xz"),
            Some("9pnet_virtio")
        );
        assert_eq!(module_name_of_file("modules.order"), None);
        assert_eq!(module_name_of_file(".ko"), None);
        assert_eq!(normalize_module_name("virtio-pci"), "virtio_pci");
    }

    #[test]
    fn tar_member_is_copied_and_missing_member_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        for (path, body) in [
            ("./usr/share/doc/x", b"doc".as_slice()),
            ("./usr/lib/debug/boot/System.map-6.1.0-1-amd64", b"map"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, body).unwrap();
        }
        let archive = builder.into_inner().unwrap();
        let out = dir.path().join("map");
        assert!(copy_tar_member(
            archive.as_slice(),
            "usr/lib/debug/boot/System.map-6.1.0-1-amd64",
            &out
        )
        .unwrap());
        assert_eq!(fs::read(&out).unwrap(), b"map");
        assert!(!copy_tar_member(archive.as_slice(), "usr/lib/debug/boot/vmlinux", &out).unwrap());
    }
}
