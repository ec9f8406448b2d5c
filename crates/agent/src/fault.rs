//! Crash points for the fault-injection suite (`crates/e2e/tests/faults.rs`).
//!
//! Built only with the `fault-injection` feature: the shipped agent has none of this. With it,
//! `PATCHBAY_FAULT=<point>` makes the agent die at that point exactly as `kill -9` would (no
//! destructor, no unwinding, no flush), or, with `PATCHBAY_FAULT_ACTION=poweroff`, powers the
//! machine off at once (a power cut: whatever the page cache held is lost).

/// A step of apply/update where a crash must leave a state the next run recovers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// `update` holds the verified download, not yet applied.
    AfterDownload,
    /// The bundle is in the cache and the pending operation is recorded.
    AfterCacheWrite,
    /// `finit_module` returned; the transition has just begun.
    AfterFinitModule,
    /// The patch is in sysfs; its transition may still run.
    MidTransition,
    /// The transition finished; the agent has not written it down yet.
    BeforeRecord,
}

impl FaultPoint {
    /// The name `PATCHBAY_FAULT` takes.
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::AfterDownload => "after-download",
            FaultPoint::AfterCacheWrite => "after-cache-write",
            FaultPoint::AfterFinitModule => "after-finit-module",
            FaultPoint::MidTransition => "mid-transition",
            FaultPoint::BeforeRecord => "before-record",
        }
    }
}

/// Dies here if `PATCHBAY_FAULT` names `point` (feature `fault-injection` only).
#[cfg(feature = "fault-injection")]
pub fn crash_point(point: FaultPoint) {
    if std::env::var("PATCHBAY_FAULT").ok().as_deref() != Some(point.name()) {
        return;
    }
    eprintln!("patchbay: fault injection: dying at {}", point.name());
    if std::env::var("PATCHBAY_FAULT_ACTION").ok().as_deref() == Some("poweroff") {
        // SAFETY: reboot(2) with the power-off command; it does not return on success.
        unsafe {
            libc::reboot(libc::RB_POWER_OFF);
        }
    }
    // SAFETY: sends SIGKILL to this process; it does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

/// Without the `fault-injection` feature: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_point: FaultPoint) {}
