//! The Patchbay agent: identifies the running kernel, applies, rolls back and unloads livepatch
//! bundles, and reports status. The CLI (`src/main.rs`) is a thin layer over [`Agent`].
//!
//! Kernel access goes through [`host::KernelSyscalls`] (module syscalls), [`host::Clock`] (time) and
//! [`host::KernelPaths`] (sysfs/proc roots), so the state machine is tested against a fake
//! kernel. See `docs/agent.md` for behaviour, exit codes and the crash-safety argument.
#![warn(missing_docs)]

pub mod agent;
pub mod cache;
pub mod clock_trust;
pub mod error;
pub mod fault;
pub mod host;
pub mod livepatch;
pub mod notes;
pub mod remote;
pub mod state;
pub mod status;

#[cfg(test)]
mod agent_tests;
#[cfg(test)]
mod remote_tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use agent::{
    Agent, ApplyOptions, ApplyOutcome, ApplyTimings, KernelIdentity, TransitionOptions,
    UnloadOutcome,
};
pub use cache::StateDir;
pub use error::{exit, AgentError, BlockedReport};
pub use host::{Clock, KernelPaths, KernelSyscalls, SystemClock, SystemKernel};
pub use status::{StatusReport, Verdict};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/patchbay";
/// Environment variable overriding the state directory.
pub const STATE_DIR_ENV: &str = "PATCHBAY_STATE_DIR";
