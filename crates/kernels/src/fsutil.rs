//! Crash-safe file writes and inter-process locks for the kernel cache.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::KernelError;

/// Writes `bytes` to `path` so that readers see either the old file or the complete new one
/// (core's one atomic write, with the cache's error type).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    patchbay_core::fsutil::write_atomic(path, bytes)
        .map_err(|e| KernelError::io("write atomically", path, e))
}

/// `<dir>/.<name>.tmp-<pid>`: unique per process, next to the final file so rename is atomic.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Renames a finished temp file or directory into place and makes the rename durable.
pub(crate) fn publish(temp: &Path, final_path: &Path) -> Result<(), KernelError> {
    fs::rename(temp, final_path)
        .map_err(|e| KernelError::io("rename into place", final_path, e))?;
    if let Some(parent) = final_path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), KernelError> {
    patchbay_core::fsutil::sync_dir(dir).map_err(|e| KernelError::io("fsync directory", dir, e))
}

/// Flushes everything written to the filesystem holding `dir`: one call instead of an fsync
/// per file for a freshly unpacked tree of thousands of files.
pub(crate) fn sync_filesystem(dir: &Path) -> Result<(), KernelError> {
    let handle = File::open(dir).map_err(|e| KernelError::io("open", dir, e))?;
    // SAFETY: syncfs only reads the file descriptor, which `handle` keeps open for the call.
    let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if rc != 0 {
        return Err(KernelError::io(
            "sync filesystem of",
            dir,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

pub(crate) fn remove_dir_if_present(dir: &Path) -> Result<(), KernelError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(KernelError::io("remove stale directory", dir, e)),
    }
}

/// An exclusive lock between processes, held until drop; the kernel releases it if the
/// process dies, so a crashed fetch never blocks the next one.
pub(crate) type FileLock = patchbay_core::fsutil::FileLock;

/// Takes the lock on `path` (created if missing), waiting for another holder.
pub(crate) fn lock(path: &Path) -> Result<FileLock, KernelError> {
    FileLock::acquire(path).map_err(|e| KernelError::io("lock", path, e))
}
