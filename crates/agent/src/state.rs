//! `state.json`: what the agent did (history), the last error, and a marker for an operation
//! that is under way. It is never the authority on which level is active — the kernel's sysfs
//! is — so losing or corrupting it loses history, never safety.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use patchbay_core::clock::unix_seconds_unsigned;
use patchbay_core::fsutil::write_private;
use patchbay_core::{BuildId, ModuleName, PatchLevel};

/// The state file format this code writes and reads.
pub const STATE_FORMAT: u32 = 1;
/// History entries kept; older ones are dropped.
pub const HISTORY_MAX: usize = 500;
/// How long a changing operation waits for the lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// Largest state file we read.
const STATE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The operations that change the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `patchbay apply` (also used by `update` and `boot`): make a level active.
    Apply,
    /// `patchbay rollback`: make the level below the active one active.
    Rollback,
    /// `patchbay unload`: disable and remove every Patchbay livepatch.
    Unload,
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpKind::Apply => "apply",
            OpKind::Rollback => "rollback",
            OpKind::Unload => "unload",
        })
    }
}

/// Written before the agent touches the kernel, cleared once the outcome is recorded. If it is
/// still there when the next agent starts (and holds the lock), that operation was interrupted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOp {
    /// Which operation was under way.
    pub op: OpKind,
    /// The running kernel's build-id when it started.
    pub build_id: BuildId,
    /// The level being activated (apply/rollback) or removed (unload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<PatchLevel>,
    /// The kernel module of `level`, loaded (apply/rollback) or removed (unload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleName>,
    /// The level that was active when the operation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_level: Option<PatchLevel>,
    /// Unix time (seconds) the operation started.
    pub started_unix: u64,
    /// Process id of the agent that ran it.
    pub pid: u32,
}

/// What happened, for the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A level became active through `apply`.
    Applied,
    /// A level became active through `rollback`.
    RolledBack,
    /// A level was removed through `unload`.
    Unloaded,
    /// A transition was blocked and reversed; nothing changed.
    Reverted,
    /// A transition was completed with `force`.
    Forced,
    /// An earlier operation was found interrupted; `detail` says what the kernel showed.
    Interrupted,
}

/// One line of the history in `state.json`: an operation's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix time (seconds) the outcome was recorded.
    pub at_unix: u64,
    /// What happened.
    pub event: Event,
    /// The running kernel's build-id.
    pub build_id: BuildId,
    /// The level that became active or was removed; `None` when no level was involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<PatchLevel>,
    /// The level that was active before; `None`: no Patchbay level was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_level: Option<PatchLevel>,
    /// The kernel module of `level`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleName>,
    /// Free-form explanation (e.g. what the kernel showed after an interruption); may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The last failed command, kept in `state.json` and shown by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// Unix time (seconds) of the failure.
    pub at_unix: u64,
    /// The exit code the command ended with (see [`crate::exit`]).
    pub exit_code: i32,
    /// The error message as printed.
    pub message: String,
}

/// Contents of `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// Always [`STATE_FORMAT`] for a state this code reads.
    pub format: u32,
    /// Oldest first; at most [`HISTORY_MAX`] entries.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// The most recent failure of a changing command; `None` if none was recorded.
    #[serde(default)]
    pub last_error: Option<ErrorRecord>,
    /// Set while an operation is under way; still set at start means it was interrupted.
    #[serde(default)]
    pub pending: Option<PendingOp>,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            format: STATE_FORMAT,
            history: Vec::new(),
            last_error: None,
            pending: None,
        }
    }
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or locking a file of the state directory failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase that takes the path, e.g. `read state file`.
        what: &'static str,
        /// The state or lock file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The state file exists but is not JSON of a supported format.
    #[error(
        "state file {path} is not readable as format {STATE_FORMAT}: {reason}. It only holds \
         history; move it away to start a new one"
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// Why it could not be read.
        reason: String,
    },
    /// Another agent process holds the lock (waited [`LOCK_WAIT`] for it).
    #[error(
        "another patchbay process is changing livepatches right now (it holds {path}); wait for \
         it to finish and retry"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

impl AgentState {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<AgentState, StateError> {
        let bytes = match read_limited(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AgentState::default()),
            Err(source) => {
                return Err(StateError::Io {
                    what: "read state file",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Self::parse(&bytes).map_err(|reason| StateError::Corrupt {
            path: path.to_owned(),
            reason,
        })
    }

    fn parse(bytes: &[u8]) -> Result<AgentState, String> {
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let probe: FormatOnly = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if probe.format != STATE_FORMAT {
            return Err(format!(
                "format {} is not supported (this patchbay reads format {STATE_FORMAT})",
                probe.format
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Writes the state file crash-safely.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            what: "write state file",
            path: path.to_owned(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| io(io::Error::other(e)))?;
        bytes.push(b'\n');
        write_private(path, &bytes).map_err(io)
    }

    /// Appends to the history, dropping the oldest entries beyond [`HISTORY_MAX`].
    pub fn record(&mut self, entry: HistoryEntry) {
        self.history.push(entry);
        let excess = self.history.len().saturating_sub(HISTORY_MAX);
        if excess > 0 {
            self.history.drain(..excess);
        }
    }
}

fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)?
        .take(STATE_MAX_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// An exclusive `flock` on `<state-dir>/lock`, released when dropped (or when the process
/// dies, so a crash never leaves a stale lock).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock, waiting up to [`LOCK_WAIT`] (a concurrent `status` probes it for an
    /// instant; a real operation holds it far longer).
    pub fn acquire(path: &Path) -> Result<StateLock, StateError> {
        let start = std::time::Instant::now();
        loop {
            match Self::try_acquire(path) {
                Err(StateError::Locked { .. }) if start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn try_acquire(path: &Path) -> Result<StateLock, StateError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| StateError::Io {
                what: "open lock file",
                path: path.to_owned(),
                source,
            })?;
        // SAFETY: flock on a descriptor we own and keep open for the lock's lifetime.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StateError::Locked {
                    path: path.to_owned(),
                });
            }
            return Err(StateError::Io {
                what: "lock",
                path: path.to_owned(),
                source: err,
            });
        }
        Ok(StateLock { _file: file })
    }

    /// Whether another process holds the lock right now (for read-only `status`). A missing
    /// lock file means nobody does.
    pub fn is_held_elsewhere(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        // SAFETY: flock on a descriptor we own; a shared probe released when `file` closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
    }
}

/// Moves a corrupt state file aside so a new one can be started; returns where it went.
pub fn quarantine(path: &Path) -> io::Result<PathBuf> {
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".corrupt-{}", unix_seconds_unsigned()));
    let target = PathBuf::from(target);
    fs::rename(path, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(AgentState::load(&p).unwrap(), AgentState::default());
        let s = AgentState {
            pending: Some(PendingOp {
                op: OpKind::Apply,
                build_id: "0123456789abcdef0123456789abcdef01234567".parse().unwrap(),
                level: Some(2.try_into().unwrap()),
                module: Some("pb_x_l2".parse().unwrap()),
                from_level: None,
                started_unix: 1,
                pid: 2,
            }),
            ..AgentState::default()
        };
        s.save(&p).unwrap();
        assert_eq!(AgentState::load(&p).unwrap(), s);
    }

    #[test]
    fn other_format_and_garbage_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        fs::write(&p, br#"{"format": 9}"#).unwrap();
        let err = AgentState::load(&p).unwrap_err();
        assert!(err.to_string().contains("format 9"), "{err}");
        fs::write(&p, b"\0\0garbage").unwrap();
        assert!(matches!(
            AgentState::load(&p),
            Err(StateError::Corrupt { .. })
        ));
        let moved = quarantine(&p).unwrap();
        assert!(moved.exists() && !p.exists());
    }

    #[test]
    fn history_is_bounded() {
        let mut s = AgentState::default();
        for i in 0..(HISTORY_MAX + 10) {
            s.record(HistoryEntry {
                at_unix: i as u64,
                event: Event::Applied,
                build_id: "0123456789abcdef".parse().unwrap(),
                level: None,
                previous_level: None,
                module: None,
                detail: String::new(),
            });
        }
        assert_eq!(s.history.len(), HISTORY_MAX);
        assert_eq!(s.history[0].at_unix, 10);
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        assert!(!StateLock::is_held_elsewhere(&p));
        let held = StateLock::acquire(&p).unwrap();
        // flock locks belong to the open file description, so a second open conflicts even
        // within one process.
        assert!(matches!(
            StateLock::acquire(&p),
            Err(StateError::Locked { .. })
        ));
        assert!(StateLock::is_held_elsewhere(&p));
        drop(held);
        assert!(StateLock::acquire(&p).is_ok());
    }
}
