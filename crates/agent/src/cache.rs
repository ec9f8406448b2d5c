//! The state directory: verified bundles cached per kernel build, extracted modules, the state
//! file and the lock.
//!
//! ```text
//! <state-dir>/                     (0700)
//!   lock                           flock(2) held by a running apply/rollback/unload
//!   state.json                     history, last error, pending operation (see state.rs)
//!   bundles/<build-id>/level-<N>.pbb
//!   modules/<module-name>.ko
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use patchbay_core::fsutil::{sync_dir, write_private};
use patchbay_core::{BuildId, Bundle, Manifest, ModuleName, PatchLevel, Sha256};

/// Why a cache entry or the module file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file system operation on the state directory failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase that takes the path, e.g. `write module file`.
        what: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The bundle could not be encoded for the cache.
    #[error("cannot cache the bundle as {path}: {source}")]
    Write {
        /// Where the bundle was to be cached (`bundles/<build-id>/level-<N>.pbb`).
        path: PathBuf,
        /// Why encoding it failed.
        source: patchbay_core::BundleError,
    },
    /// A cached bundle cannot be read back or no longer verifies.
    #[error("cached bundle {path} is unreadable ({reason}); delete it and apply the bundle again")]
    BadEntry {
        /// The cached bundle file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The state directory (or a directory in it) could be written by someone other than its
    /// owner, so nothing is loaded from it.
    #[error(
        "refusing to use the state directory {path}: {problem}. It holds code that is loaded \
         into the kernel, so only its owner (the agent's user, root) may write to it; fix it \
         (e.g. `chown root: {path} && chmod 0700 {path}`) or point --state-dir elsewhere"
    )]
    Unsafe {
        /// The directory that was refused.
        path: PathBuf,
        /// What makes it unsafe: a symlink, another owner, or group/world write permission.
        problem: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The layout of the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The layout under `root` (e.g. `/var/lib/patchbay`); nothing is created or checked yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The state directory itself.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/state.json`: history, last error and the pending-operation marker.
    pub(crate) fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// `<root>/lock`: held with flock(2) while an apply, rollback or unload runs.
    pub(crate) fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// `<root>/bundles/<build-id>`: the cached bundles for one kernel build.
    pub(crate) fn bundles_dir(&self, build_id: &BuildId) -> PathBuf {
        self.root.join("bundles").join(build_id.as_str())
    }

    /// `<root>/bundles/<build-id>/level-<N>.pbb`: where one level's bundle is cached.
    pub(crate) fn bundle_path(&self, build_id: &BuildId, level: PatchLevel) -> PathBuf {
        self.bundles_dir(build_id)
            .join(format!("level-{level}.pbb"))
    }

    /// `<root>/modules`: modules extracted from applied bundles.
    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.root.join("modules")
    }

    /// `<root>/modules/<name>.ko`: the extracted module; its presence marks the level loaded
    /// last (see [`StateDir::extract_module`]).
    pub(crate) fn module_path(&self, name: &ModuleName) -> PathBuf {
        self.modules_dir().join(format!("{name}.ko"))
    }

    /// Creates the root (mode 0700: it holds code that will run in the kernel) and `modules/`.
    pub fn ensure_layout(&self) -> Result<(), CacheError> {
        create_private_dir(&self.root)?;
        self.check_private()?;
        create_private_dir(&self.modules_dir())
    }

    /// Refuses a state directory that someone else could write to: a symlink, not owned by
    /// this user, or group- or world-writable (checked at every start). A missing one is fine:
    /// it is created 0700 when first needed.
    pub fn check_private(&self) -> Result<(), CacheError> {
        use std::os::unix::fs::MetadataExt;
        let meta = match fs::symlink_metadata(&self.root) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("inspect", &self.root)(e)),
        };
        let unsafe_because = |problem: String| CacheError::Unsafe {
            path: self.root.clone(),
            problem,
        };
        if meta.file_type().is_symlink() {
            return Err(unsafe_because("it is a symbolic link".into()));
        }
        if !meta.is_dir() {
            return Err(unsafe_because("it is not a directory".into()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(unsafe_because(format!(
                "it belongs to uid {}, not to this user (uid {me})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(unsafe_because(format!(
                "its mode {:04o} lets others write to it",
                meta.mode() & 0o7777
            )));
        }
        Ok(())
    }

    /// The bundles cached for `build_id`, sorted by level. Entries that cannot be read are
    /// reported in the second list instead of failing the whole listing.
    pub fn cached_levels(
        &self,
        build_id: &BuildId,
    ) -> Result<(Vec<CachedLevel>, Vec<String>), CacheError> {
        let dir = self.bundles_dir(build_id);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(io_err("list cached bundles in", &dir)(e)),
        };
        let mut levels = Vec::new();
        let mut warnings = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list cached bundles in", &dir))?;
            let name = entry.file_name();
            let Some(level) = name.to_str().and_then(parse_level_file_name) else {
                continue; // temp files of interrupted writes, foreign files
            };
            let path = entry.path();
            match read_manifest_only(&path) {
                Ok(manifest)
                    if manifest.level == level && manifest.kernel.build_id == *build_id =>
                {
                    levels.push(CachedLevel { path, manifest })
                }
                Ok(_) => warnings.push(format!(
                    "ignoring cached bundle {}: its manifest is for another level or kernel",
                    path.display()
                )),
                Err(e) => warnings.push(format!("ignoring {e}")),
            }
        }
        levels.sort_by_key(|c| c.manifest.level);
        Ok((levels, warnings))
    }

    /// Caches a verified bundle unless an identical one is cached already. Refuses to
    /// overwrite a different bundle of the same level: levels are immutable.
    pub fn store_bundle(&self, bundle: &Bundle) -> Result<StoreOutcome, CacheError> {
        let m = bundle.manifest();
        let path = self.bundle_path(&m.kernel.build_id, m.level);
        // An entry that is missing or unreadable (e.g. truncated by a disk error) is no
        // conflict: it is replaced below.
        if let Ok(existing) = read_manifest_only(&path) {
            if existing != *m {
                return Ok(StoreOutcome::Conflict {
                    path,
                    cached_sha256: existing.module.sha256,
                });
            }
        }
        let bytes = bundle.to_bytes().map_err(|source| CacheError::Write {
            path: path.clone(),
            source,
        })?;
        // Only an entry that is byte for byte this verified bundle counts as cached (one whose
        // module was damaged by a disk error or a stray write is replaced by this good copy).
        // Comparing the bytes checks the copy on disk fully without hashing the module again.
        if read_no_follow(&path, bytes.len()).ok().as_deref() == Some(bytes.as_slice()) {
            return Ok(StoreOutcome::AlreadyCached);
        }
        let bundles_root = self.root.join("bundles");
        create_private_dir(&bundles_root)?;
        create_private_dir(&self.bundles_dir(&m.kernel.build_id))?;
        write_private(&path, &bytes).map_err(io_err("write cached bundle", &path))?;
        Ok(StoreOutcome::Stored)
    }

    /// Keeps the module file (0600; it marks the level loaded last, for `boot` and `status`)
    /// and returns the module to load: the bundle's verified bytes in a sealed memfd, so what
    /// the kernel reads is exactly what was verified — no writer, not even root through the
    /// file, can change it between the check and `finit_module`, and it needs no re-hash.
    pub fn extract_module(&self, bundle: &Bundle) -> Result<File, CacheError> {
        let path = self.module_path(&bundle.manifest().module.name);
        let on_disk = read_no_follow(&path, bundle.module().len());
        if on_disk.ok().as_deref() != Some(bundle.module()) {
            write_private(&path, bundle.module()).map_err(io_err("write module file", &path))?;
        }
        sealed_memfd(&bundle.manifest().module.name, bundle.module())
    }

    /// Removes what an agent that was killed left behind: scratch directories
    /// (`.tuf-<pid>-…`) and the temp files of atomic writes (`.<name>.tmp.<pid>`) whose
    /// process is gone. Those of a running agent stay. Best effort: what cannot be removed now
    /// is tried again at the next start.
    pub fn remove_stale_leftovers(&self) {
        let mut dirs = vec![
            self.root.clone(),
            self.modules_dir(),
            self.root.join("tuf"),
            self.root.join("tuf/datastore"),
        ];
        if let Ok(kernels) = fs::read_dir(self.root.join("bundles")) {
            dirs.extend(kernels.flatten().map(|e| e.path()));
        }
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let scratch_pid = name
                    .strip_prefix(SCRATCH_PREFIX)
                    .and_then(|rest| rest.split_once('-'))
                    .map(|(pid, _)| pid);
                let temp_pid = name
                    .starts_with('.')
                    .then(|| name.rsplit_once(".tmp."))
                    .flatten()
                    .map(|(_, pid)| pid);
                let Some(pid) = scratch_pid
                    .or(temp_pid)
                    .and_then(|p| p.parse::<libc::pid_t>().ok())
                else {
                    continue;
                };
                if process_alive(pid) {
                    continue;
                }
                let path = entry.path();
                let _ = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        }
    }

    /// The highest cached level of `build_id` whose module file is still extracted: the
    /// level that was loaded last (replaced levels' module files are removed).
    pub fn level_with_module_file(&self, build_id: &BuildId) -> Option<PathBuf> {
        let (levels, _) = self.cached_levels(build_id).ok()?;
        levels
            .into_iter()
            .rev()
            .find(|c| self.module_path(&c.manifest.module.name).exists())
            .map(|c| c.path)
    }

    /// Removes an extracted module file once the kernel no longer uses it.
    pub fn remove_module_file(&self, name: &ModuleName) {
        let _ = fs::remove_file(self.module_path(name));
    }
}

/// Result of [`StateDir::store_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The bundle was written to the cache (new, or replacing a damaged copy).
    Stored,
    /// An identical bundle was cached already; nothing was written.
    AlreadyCached,
    /// A different bundle of the same level is cached; levels are immutable, so nothing was
    /// written and the caller must refuse the new one.
    Conflict {
        /// The cached bundle.
        path: PathBuf,
        /// The module hash in the cached bundle's manifest, to show in the refusal.
        cached_sha256: Sha256,
    },
}

/// A cached bundle; its manifest was verified against the module when it was cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLevel {
    /// The cached bundle file.
    pub path: PathBuf,
    /// Its manifest; level and build-id match the file's place in the cache.
    pub manifest: Manifest,
}

/// Name prefix of the agent's scratch directories in the state dir, followed by `<pid>-`.
pub const SCRATCH_PREFIX: &str = ".tuf-";

fn process_alive(pid: libc::pid_t) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Opens a file of the state directory, refusing a symlink in its place (the directory is
/// private, but a planted link must never redirect what is read).
fn open_no_follow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Reads a file of the state directory (no symlink followed) to compare it with `expected_len`
/// bytes: at most one byte more is read, so a file grown huge is not buffered whole.
fn read_no_follow(path: &Path, expected_len: usize) -> io::Result<Vec<u8>> {
    let limit = u64::try_from(expected_len)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut bytes = Vec::with_capacity(expected_len);
    open_no_follow(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads and verifies a bundle of the cache (no symlinks followed).
pub fn read_cached_bundle(path: &Path) -> Result<Bundle, patchbay_core::BundleError> {
    let file = open_no_follow(path).map_err(|source| patchbay_core::BundleError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Bundle::from_reader(file, &path.display().to_string())
}

/// `module` in an anonymous memory file sealed against every change, positioned at 0.
fn sealed_memfd(name: &ModuleName, module: &[u8]) -> Result<File, CacheError> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let shown = PathBuf::from(format!("memfd:{name}"));
    let c_name = std::ffi::CString::new(name.as_str()).map_err(|e| CacheError::Io {
        what: "name memfd",
        path: shown.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: memfd_create takes a NUL-terminated name (c_name lives across the call) and
    // flags; it returns a new descriptor or -1.
    let fd =
        unsafe { libc::memfd_create(c_name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io_err("create memfd for", &shown)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns; File takes ownership.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(module)
        .map_err(io_err("write module into", &shown))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl(F_ADD_SEALS) on a descriptor `file` owns and keeps open.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if rc != 0 {
        return Err(io_err("seal", &shown)(io::Error::last_os_error()));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("rewind", &shown))?;
    Ok(file)
}

/// `level-<N>.pbb` → N.
fn parse_level_file_name(name: &str) -> Option<PatchLevel> {
    name.strip_prefix("level-")?
        .strip_suffix(".pbb")?
        .parse()
        .ok()
}

/// Reads only the manifest of a bundle we cached ourselves (the first tar entry, as
/// `Bundle::write` lays it out). Used to identify loaded patches cheaply; anything that is
/// loaded goes through the full `Bundle::read` verification instead.
pub fn read_manifest_only(path: &Path) -> Result<Manifest, CacheError> {
    const HEADER: usize = 512;
    const MANIFEST_MAX: u64 = 1024 * 1024;
    let bad = |reason: String| CacheError::BadEntry {
        path: path.to_owned(),
        reason,
    };
    let mut file = open_no_follow(path).map_err(io_err("open cached bundle", path))?;
    let mut header = [0u8; HEADER];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read the tar header: {e}")))?;
    let name = header.get(..100).unwrap_or_default();
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    if name != b"manifest.json" {
        return Err(bad("the first entry is not manifest.json".into()));
    }
    let size_field = header.get(124..136).unwrap_or_default();
    let size_text: String = size_field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| char::from(b))
        .collect();
    let size = u64::from_str_radix(size_text.trim_start_matches(' '), 8)
        .map_err(|_| bad("the manifest entry has a bad size field".into()))?;
    if size > MANIFEST_MAX {
        return Err(bad(format!("the manifest entry is {size} bytes")));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read the manifest: {e}")))?;
    if bytes.len() as u64 != size {
        return Err(bad("the manifest entry is truncated".into()));
    }
    Manifest::parse(&bytes).map_err(|e| bad(e.to_string()))
}

/// Creates a directory with mode 0700 if missing, and makes its entry durable.
fn create_private_dir(dir: &Path) -> Result<(), CacheError> {
    if dir.is_dir() {
        return Ok(());
    }
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create directory", dir)(e)),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent).map_err(io_err("sync directory", parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::testutil::{bundle_for, bundle_with, BUILD_ID, RELEASE};

    /// A fresh state directory (`<tmp>/state`, laid out) and the temp dir that holds it.
    fn state_dir() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("state"));
        sd.ensure_layout().unwrap();
        (dir, sd)
    }

    #[test]
    fn level_file_names() {
        assert_eq!(parse_level_file_name("level-3.pbb").unwrap().get(), 3);
        assert!(parse_level_file_name("level-0.pbb").is_none());
        assert!(parse_level_file_name(".level-3.pbb.tmp.12").is_none());
        assert!(parse_level_file_name("level-3.pbb.bak").is_none());
    }

    #[test]
    fn store_list_and_conflict() {
        let (_dir, sd) = state_dir();
        let b1 = bundle_for(BUILD_ID, 1);
        let b2 = bundle_for(BUILD_ID, 2);
        assert_eq!(sd.store_bundle(&b2).unwrap(), StoreOutcome::Stored);
        assert_eq!(sd.store_bundle(&b1).unwrap(), StoreOutcome::Stored);
        assert_eq!(sd.store_bundle(&b1).unwrap(), StoreOutcome::AlreadyCached);
        let id: BuildId = BUILD_ID.parse().unwrap();
        let (levels, warnings) = sd.cached_levels(&id).unwrap();
        assert!(warnings.is_empty());
        let got: Vec<u32> = levels.iter().map(|l| l.manifest.level.get()).collect();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(levels[0].manifest, *b1.manifest());

        let other = bundle_with(BUILD_ID, RELEASE, 1, " rebuilt");
        assert_ne!(other.manifest(), b1.manifest());
        assert!(matches!(
            sd.store_bundle(&other).unwrap(),
            StoreOutcome::Conflict { .. }
        ));

        // Junk in the cache is reported, not fatal.
        fs::write(sd.bundles_dir(&id).join("level-7.pbb"), b"junk").unwrap();
        let (levels, warnings) = sd.cached_levels(&id).unwrap();
        assert_eq!(levels.len(), 2);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn a_damaged_cached_copy_is_replaced_and_a_good_one_kept() {
        let (_dir, sd) = state_dir();
        let b = bundle_for(BUILD_ID, 1);
        assert_eq!(sd.store_bundle(&b).unwrap(), StoreOutcome::Stored);
        let path = sd.bundle_path(&b.manifest().kernel.build_id, b.manifest().level);
        let good = fs::read(&path).unwrap();

        // A flipped bit in the module (the manifest still reads the same) is found by the
        // byte comparison, and the entry is rewritten from the verified bundle.
        let mut damaged = good.clone();
        let last = damaged.iter().rposition(|&byte| byte != 0).unwrap();
        damaged[last] ^= 1;
        fs::write(&path, &damaged).unwrap();
        assert_eq!(read_manifest_only(&path).unwrap(), *b.manifest());
        assert!(read_cached_bundle(&path).is_err());
        assert_eq!(sd.store_bundle(&b).unwrap(), StoreOutcome::Stored);
        assert_eq!(fs::read(&path).unwrap(), good);

        // A truncated entry too; an intact one is left alone.
        fs::write(&path, &good[..100]).unwrap();
        assert_eq!(sd.store_bundle(&b).unwrap(), StoreOutcome::Stored);
        assert_eq!(fs::read(&path).unwrap(), good);
        assert_eq!(sd.store_bundle(&b).unwrap(), StoreOutcome::AlreadyCached);
        assert!(read_cached_bundle(&path).is_ok());
    }

    #[test]
    fn extracted_module_is_verified_through_the_fd() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        sd.ensure_layout().unwrap();
        let b = bundle_for(BUILD_ID, 1);
        let mut f = sd.extract_module(&b).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, b.module());
        // Nobody can change what is loaded: the memfd is sealed.
        {
            use std::io::Write;
            let err = f.write_all(b"x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
            assert!(f.set_len(1).is_err(), "shrinking a sealed memfd must fail");
        }
        // Tampering with the file on disk does not reach the kernel: extract_module loads
        // from the verified bytes and repairs the file.
        let path = sd.module_path(&b.manifest().module.name);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let mut f = sd.extract_module(&b).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, b.module());
        assert_eq!(fs::read(&path).unwrap(), b.module());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_state_dir_others_can_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let sd = StateDir::new(&root);
        sd.check_private().unwrap(); // missing: created later
        sd.ensure_layout().unwrap();
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for mode in [0o777, 0o775, 0o757] {
            fs::set_permissions(&root, fs::Permissions::from_mode(mode)).unwrap();
            let err = sd.check_private().unwrap_err().to_string();
            assert!(
                err.contains("lets others write") && err.contains("chmod 0700"),
                "{err}"
            );
            assert!(sd.ensure_layout().is_err());
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        sd.check_private().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let err = StateDir::new(&link)
            .check_private()
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_symlink_in_place_of_a_module_file_is_not_followed() {
        let (dir, sd) = state_dir();
        let b = bundle_for(BUILD_ID, 1);
        let elsewhere = dir.path().join("elsewhere.ko");
        fs::write(&elsewhere, b"someone else's file").unwrap();
        let path = sd.module_path(&b.manifest().module.name);
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        // The link is neither read nor written through: it is replaced by the module file.
        let mut f = sd.extract_module(&b).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, b.module());
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&path).unwrap(), b.module());
        assert_eq!(fs::read(&elsewhere).unwrap(), b"someone else's file");
    }
}
