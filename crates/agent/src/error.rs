//! Errors of the agent and the exit codes they map to (documented in `docs/agent.md`).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use patchbay_core::{BuildId, BundleError, KernelRelease, PatchLevel, Sha256};

use crate::cache::CacheError;
use crate::livepatch::BlockingTask;
use crate::notes::NotesError;
use crate::state::StateError;

/// Process exit codes. `status` also uses 0, 3, 4 and 5 for its verdict.
pub mod exit {
    /// Success; for `status`: the newest known level is active.
    pub const OK: i32 = 0;
    /// Any error not listed below.
    pub const ERROR: i32 = 1;
    /// The command line is wrong.
    pub const USAGE: i32 = 2;
    /// Bundles are known for this kernel but no level is active.
    pub const NO_PATCH: i32 = 3;
    /// A newer cached level than the active one exists.
    pub const NEWER_AVAILABLE: i32 = 4;
    /// No bundle is known for this kernel build (or the kernel cannot be livepatched).
    pub const UNSUPPORTED: i32 = 5;
    /// A transition was blocked by tasks and reverted.
    pub const BLOCKED: i32 = 6;
    /// A bundle was refused: verification failed or it is for another kernel.
    pub const REFUSED: i32 = 7;
}

/// What a blocked transition looked like and what the agent did about it.
#[derive(Debug, Clone)]
pub struct BlockedReport {
    /// "transition to level 2", "unload of level 2".
    pub action: String,
    /// The blocking tasks shown, at most a handful (with stacks where readable).
    pub blockers: Vec<BlockingTask>,
    /// How many tasks were blocking in all; more than `blockers.len()` when some are not shown.
    pub total_blockers: usize,
    /// How long the transition was waited for before giving up.
    pub waited: Duration,
    /// "reverted; level 1 stays active".
    pub outcome: String,
}

impl std::fmt::Display for BlockedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} blocked by ", self.action)?;
        if self.blockers.is_empty() {
            write!(f, "tasks that could not be identified in /proc")?;
        } else {
            let names: Vec<String> = self
                .blockers
                .iter()
                .map(|t| {
                    if t.pid == t.tid {
                        format!("task {} {}", t.pid, t.comm)
                    } else {
                        format!("task {} {} (thread {})", t.pid, t.comm, t.tid)
                    }
                })
                .collect();
            write!(f, "{}", names.join(", "))?;
            let more = self.total_blockers.saturating_sub(self.blockers.len());
            if more > 0 {
                write!(f, " and {more} more")?;
            }
        }
        write!(
            f,
            " (waited {:.1} s); {}",
            self.waited.as_secs_f64(),
            self.outcome
        )?;
        for task in &self.blockers {
            if task.stack.is_empty() {
                continue;
            }
            write!(f, "\n  task {} {} sleeps in:", task.tid, task.comm)?;
            for line in &task.stack {
                write!(f, "\n    {line}")?;
            }
            if !task.in_replaced.is_empty() {
                write!(
                    f,
                    "\n    in functions the patch replaces: {}",
                    task.in_replaced.join(", ")
                )?;
            }
        }
        write!(
            f,
            "\nThese tasks sleep inside a function the patch replaces. Retry when they are idle \
             (or stop them), or allow a longer --transition-timeout. --force completes the \
             transition anyway but can leave these tasks running old code and pins the modules \
             in the kernel until reboot; use it only if you understand the patch."
        )
    }
}

/// A bundle built for another kernel than the running one.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "refused: bundle {path} is for kernel {bundle_release} (build-id {bundle_build_id}), but the \
     running kernel is {running_release} (build-id {running_build_id}){note}; nothing was \
     loaded. Use the bundle built for this exact kernel build"
)]
pub struct KernelMismatch {
    /// The bundle, as named to the user.
    pub path: String,
    /// The kernel release the bundle was built for.
    pub bundle_release: KernelRelease,
    /// The kernel build-id the bundle was built for.
    pub bundle_build_id: BuildId,
    /// `uname -r` of the running kernel.
    pub running_release: KernelRelease,
    /// Build-id of the running kernel.
    pub running_build_id: BuildId,
    /// Extra explanation when only one of release and build-id differs (starts with ` — `);
    /// empty otherwise.
    pub note: &'static str,
}

/// Everything that can go wrong in the agent. Each message says what failed, why, and what to
/// do; nothing was changed unless the message says so.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The kernel release could not be read or parsed.
    #[error("cannot identify the running kernel: cannot {what}: {reason}")]
    Identity {
        /// What was attempted, e.g. `read the kernel release (uname)`.
        what: String,
        /// Why it failed.
        reason: String,
    },

    /// The kernel notes could not be read or hold no usable build-id.
    #[error("cannot identify the running kernel from {path}: {source}")]
    Notes {
        /// The notes file, normally `/sys/kernel/notes`.
        path: PathBuf,
        /// What is wrong with its contents.
        source: NotesError,
    },

    /// The bundle file could not be read (I/O); nothing was changed.
    #[error("{0}; nothing was changed")]
    BundleUnreadable(BundleError),

    /// The bundle was read but is malformed or does not verify (exit 7).
    #[error("refused: {0}; nothing was loaded")]
    BundleRefused(BundleError),

    /// The bundle is for another kernel build than the running one (exit 7).
    #[error("{0}")]
    WrongKernel(Box<KernelMismatch>),

    /// A different bundle of the same level is cached already (exit 7): levels are immutable.

    #[error(
        "refused: a different bundle for level {level} is already cached at {path} (its module \
         has sha256 {cached}, this one {offered}); a level's content must never change. If the \
         cached one is wrong, delete that file and apply again; otherwise build the new one as \
         a new level"
    )]
    CacheConflict {
        /// The level both bundles claim.
        level: PatchLevel,
        /// The cached bundle.
        path: PathBuf,
        /// Module hash in the cached bundle's manifest.
        cached: Sha256,
        /// Module hash in the offered bundle's manifest.
        offered: Sha256,
    },

    /// Tasks kept the transition from finishing; it was reverted (exit 6).
    #[error("{0}")]
    Blocked(Box<BlockedReport>),

    /// This kernel cannot be livepatched or no bundle is known for it (exit 5).
    #[error("{0}")]
    Unsupported(String),

    /// No Patchbay level is active, so the operation has nothing to act on (exit 3).
    #[error("{0}")]
    NoPatch(String),

    /// The kernel is already in a livepatch transition; only one can run at a time.

    #[error(
        "a livepatch transition is already in progress ({patch}); the kernel allows one at a \
         time. Wait for it to finish (`patchbay status`) and retry{hint}"
    )]
    TransitionInProgress {
        /// The patch in transition, e.g. `Patchbay level 2, pb_0123456789ab_l2`.
        patch: String,
        /// Extra advice starting with `; `, or empty.
        hint: &'static str,
    },

    /// Non-Patchbay livepatches are loaded and `--replace-foreign` was not given.

    #[error(
        "other livepatches are loaded ({names}); Patchbay patches use atomic replace, which \
         would remove them. Remove them first, or pass --replace-foreign to replace them; \
         nothing was changed"
    )]
    ForeignPatches {
        /// Their names, comma-separated.
        names: String,
    },

    /// The bundle's level is below the active one and `--allow-downgrade` was not given.

    #[error(
        "level {requested} is older than the active level {active}: applying it would drop fixes. \
         Use `patchbay rollback` or pass --allow-downgrade; nothing was changed"
    )]
    Downgrade {
        /// The level of the bundle offered.
        requested: PatchLevel,
        /// The level active now.
        active: PatchLevel,
    },

    /// `rollback` found no cached level below the active one.

    #[error(
        "no cached level below the active level {active} for this kernel; nothing to roll back \
         to. Use `patchbay unload` to remove the livepatch entirely"
    )]
    NoLowerLevel {
        /// The level active now.
        active: PatchLevel,
    },

    /// The process may not load or remove kernel modules (it is not root).
    #[error("{0}; nothing was changed")]
    Privileges(String),

    /// The state file could not be read, written or locked.
    #[error("{0}")]
    State(#[from] StateError),

    /// The bundle cache or an extracted module file could not be used.
    #[error("{0}")]
    Cache(CacheError),

    /// `finit_module` failed; the hint explains the errno.
    #[error("the kernel refused to load module {module}: {source}. {hint}")]
    Load {
        /// The module's name (for the raw-load benchmark: its file).
        module: String,
        /// The errno the kernel returned.
        source: io::Error,
        /// What that errno usually means here, from [`load_hint`].
        hint: &'static str,
    },

    /// Reading or writing a livepatch sysfs attribute or `/proc` file failed.
    #[error("cannot {what} {path}: {source}")]
    Sysfs {
        /// What was being done, e.g. `read livepatches in`.
        what: &'static str,
        /// The sysfs or procfs path.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// The raw-load benchmark failed: the module could not be opened, its patch never appeared
    /// in sysfs, or its transition vanished or did not finish.
    #[error("{0}")]
    Kernel(String),

    /// The new state is in place but leftovers (an old patch or module) could not be removed.
    #[error("{0}")]
    Cleanup(String),
}

impl AgentError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::BundleRefused(_)
            | AgentError::WrongKernel(_)
            | AgentError::CacheConflict { .. } => exit::REFUSED,
            AgentError::Blocked(_) => exit::BLOCKED,
            AgentError::Unsupported(_) => exit::UNSUPPORTED,
            AgentError::NoPatch(_) => exit::NO_PATCH,
            _ => exit::ERROR,
        }
    }

    /// Sorts bundle errors: unreadable files are plain errors, everything about content is a
    /// refusal.
    pub fn from_bundle(err: BundleError) -> Self {
        match err {
            BundleError::Io { .. } => AgentError::BundleUnreadable(err),
            _ => AgentError::BundleRefused(err),
        }
    }
}

/// What to tell the user for an errno from `finit_module`.
pub fn load_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EEXIST) => {
            "A module of that name is already loaded but is not an active livepatch; run \
             `patchbay unload` (or rmmod it) and retry"
        }
        Some(libc::EPERM) => {
            "Module loading is not allowed: not root, kernel lockdown, or \
             /proc/sys/kernel/modules_disabled is 1"
        }
        Some(libc::EKEYREJECTED) | Some(libc::EBADMSG) => {
            "The kernel enforces module signatures and this module is not signed with a key it \
             trusts"
        }
        Some(libc::ENOEXEC) => {
            "The module does not fit this kernel (vermagic, symbol versions or format); see \
             `dmesg`"
        }
        Some(libc::ENOENT) => "The module needs a symbol this kernel lacks; see `dmesg`",
        Some(libc::EBUSY) => "Another livepatch transition is in progress; wait and retry",
        Some(libc::EINVAL) => {
            "The kernel rejected the livepatch (a patched function or object is missing, or it \
             conflicts with a loaded livepatch); see `dmesg`"
        }
        Some(libc::ENODEV) => "This kernel's livepatch core is not available",
        _ => "See `dmesg` for the kernel's reason",
    }
}
