//! The agent's operations: apply, rollback, unload, status, and the raw-load benchmark.
//!
//! The kernel is the only authority on what is active: every decision starts from sysfs
//! (`/sys/kernel/livepatch/*`), whose patch names are matched against the manifests of the
//! cached bundles. The state file only records history and a pending-operation marker.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use patchbay_core::clock::unix_seconds_unsigned;
use patchbay_core::{BuildId, Bundle, KernelRelease, ModuleName, PatchLevel};

use crate::cache::{CachedLevel, StateDir, StoreOutcome};
use crate::error::{load_hint, AgentError, BlockedReport, KernelMismatch};
use crate::host::{Clock, KernelPaths, KernelSyscalls};
use crate::livepatch::{self, AfterUnpatchTimeout, LivePatch};
use crate::notes::parse_build_id;
use crate::state::{
    quarantine, AgentState, ErrorRecord, Event, HistoryEntry, OpKind, PendingOp, StateError,
    StateLock,
};
use crate::status::{ActiveLevel, StatusReport};

/// Poll interval for `transition` during the first [`FAST_POLL_FOR`]; short so that apply
/// adds almost nothing to the kernel's own transition time.
pub(crate) const FAST_POLL: Duration = Duration::from_millis(2);
/// After this long a transition is slow anyway; poll less often.
pub(crate) const FAST_POLL_FOR: Duration = Duration::from_secs(5);
/// Poll interval for `transition` after [`FAST_POLL_FOR`].
pub(crate) const SLOW_POLL: Duration = Duration::from_millis(20);
/// How long a freshly loaded module may take to show up in sysfs.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a disabled or replaced patch may take to be freed (its sysfs dir to vanish).
const VANISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `delete_module` is retried while the module is still pinned (EAGAIN/EBUSY).
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocking tasks listed in reports.
const BLOCKERS_SHOWN: usize = 8;

/// The running kernel's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelIdentity {
    /// `uname -r`, e.g. `6.1.0-56-amd64` (the release alone does not identify the build).
    pub release: KernelRelease,
    /// GNU build-id of the running vmlinux, from `/sys/kernel/notes`: what bundles must match.
    pub build_id: BuildId,
}

/// How transitions are waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionOptions {
    /// Give up (and revert) after this long.
    pub timeout: Duration,
    /// First delay after which blocking tasks are signalled (if the kernel offers `signal`)
    /// and reported; repeated at this interval.
    pub signal_after: Duration,
    /// On timeout, write `force` instead of reverting. Dangerous; only on explicit request.
    pub force: bool,
}

impl Default for TransitionOptions {
    fn default() -> Self {
        TransitionOptions {
            timeout: Duration::from_secs(60),
            signal_after: Duration::from_secs(5),
            force: false,
        }
    }
}

/// Options of `apply` and `rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyOptions {
    /// How the livepatch transition is waited for.
    pub transition: TransitionOptions,
    /// Allow `apply` of a level below the active one.
    pub allow_downgrade: bool,
    /// Allow atomic replace to remove livepatches that are not Patchbay's.
    pub replace_foreign: bool,
}

/// Points in time of one apply, for `PATCHBAY_TIMING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyTimings {
    /// Bundle read, verified and matched to the kernel.
    pub verified: Duration,
    /// Cached, pending marker written, module in a sealed memfd: about to load.
    pub prepared: Duration,
    /// `finit_module` returned.
    pub loaded: Duration,
    /// `transition` read 0.
    pub transitioned: Duration,
    /// History recorded: the apply is complete from the user's point of view.
    pub recorded: Duration,
    /// Modules of replaced patches removed.
    pub cleaned: Duration,
}

impl ApplyTimings {
    /// One line of phase durations in microseconds.
    pub fn phases(&self) -> String {
        let us = |from: Duration, to: Duration| to.saturating_sub(from).as_micros();
        format!(
            "verify-us={} prepare-us={} load-us={} transition-us={} record-us={} cleanup-us={}",
            self.verified.as_micros(),
            us(self.verified, self.prepared),
            us(self.prepared, self.loaded),
            us(self.loaded, self.transitioned),
            us(self.transitioned, self.recorded),
            us(self.recorded, self.cleaned),
        )
    }
}

/// Result of `apply` / `rollback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The level now active.
    pub level: PatchLevel,
    /// The kernel module of that level, e.g. `pb_0123456789ab_l3`.
    pub module: ModuleName,
    /// The Patchbay level that was active before.
    pub previous: Option<PatchLevel>,
    /// The level was active already; nothing was done.
    pub already_active: bool,
    /// Non-Patchbay livepatches that atomic replace removed.
    pub replaced_foreign: Vec<String>,
    /// The transition was completed with `force`.
    pub forced: bool,
    /// Problems after the level became active (e.g. an old module that could not be removed).
    pub warnings: Vec<String>,
    /// When each phase ended, measured from the start of the apply.
    pub timings: ApplyTimings,
}

impl std::fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.already_active {
            return write!(f, "level {} is already active; nothing to do", self.level);
        }
        write!(f, "level {} active (", self.level)?;
        match self.previous {
            Some(p) => write!(f, "replaced level {p}")?,
            None => write!(f, "no level was active before")?,
        }
        write!(f, ") in {} ms", self.timings.recorded.as_millis())?;
        if self.forced {
            write!(
                f,
                "; FORCED: some tasks may still run old code, and the patch modules stay \
                 loaded until reboot"
            )?;
        }
        if !self.replaced_foreign.is_empty() {
            write!(
                f,
                "\nreplaced other livepatches: {}",
                self.replaced_foreign.join(", ")
            )?;
        }
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        Ok(())
    }
}

/// Result of `unload`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnloadOutcome {
    /// Levels whose patches were disabled and removed.
    pub removed: Vec<PatchLevel>,
    /// Leftover modules (loaded, no longer a livepatch) that were removed.
    pub stale_removed: Vec<ModuleName>,
    /// Problems that did not stop the unload (e.g. a module that could not be removed).
    pub warnings: Vec<String>,
}

impl std::fmt::Display for UnloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.removed.is_empty() {
            write!(f, "no Patchbay livepatch was active; nothing to unload")?;
        } else {
            let levels: Vec<String> = self.removed.iter().map(|l| l.to_string()).collect();
            write!(
                f,
                "level {} unloaded; no Patchbay livepatch is active",
                levels.join(", ")
            )?;
        }
        if !self.stale_removed.is_empty() {
            let names: Vec<&str> = self.stale_removed.iter().map(|m| m.as_str()).collect();
            write!(f, "\nremoved leftover modules: {}", names.join(", "))?;
        }
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        Ok(())
    }
}

/// A Patchbay patch found in sysfs, with the manifest of its cached bundle.
#[derive(Debug, Clone)]
pub(crate) struct OurPatch {
    pub patch: LivePatch,
    pub cached: CachedLevel,
}

impl OurPatch {
    pub fn level(&self) -> PatchLevel {
        self.cached.manifest.level
    }
    pub fn module(&self) -> &ModuleName {
        &self.cached.manifest.module.name
    }
}

/// What the kernel shows right now, matched against the cache.
#[derive(Debug, Clone)]
pub(crate) struct KernelView {
    pub livepatch_supported: bool,
    pub cached: Vec<CachedLevel>,
    pub warnings: Vec<String>,
    pub ours: Vec<OurPatch>,
    pub foreign: Vec<LivePatch>,
    /// Our modules that are loaded but no longer a livepatch (freed patch, module left).
    pub stale: Vec<CachedLevel>,
}

impl KernelView {
    /// The active Patchbay level: enabled and not in transition. With atomic replace there is
    /// at most one; should there be several, the highest level is reported.
    pub fn active(&self) -> Option<&OurPatch> {
        self.ours
            .iter()
            .filter(|p| p.patch.enabled && !p.patch.transition)
            .max_by_key(|p| p.level())
    }

    /// Any livepatch (ours or not) in transition.
    pub fn transitioning(&self) -> Option<(&LivePatch, Option<PatchLevel>)> {
        self.ours
            .iter()
            .map(|p| (&p.patch, Some(p.level())))
            .chain(self.foreign.iter().map(|p| (p, None)))
            .find(|(p, _)| p.transition)
    }

    pub fn newest_cached(&self) -> Option<&CachedLevel> {
        self.cached.last()
    }

    /// A one-line account of the kernel's state, for reports.
    pub fn describe(&self) -> String {
        if let Some((p, level)) = self.transitioning() {
            let what = match level {
                Some(l) => format!("level {l} ({})", p.name),
                None => format!("livepatch {}", p.name),
            };
            let dir = if p.enabled {
                "being applied"
            } else {
                "being removed"
            };
            return format!("{what} is in transition ({dir})");
        }
        match self.active() {
            Some(a) => format!("level {} is active ({})", a.level(), a.module()),
            None => "no Patchbay level is active".to_owned(),
        }
    }
}

/// The lock and the loaded state of a changing operation.
#[derive(Debug)]
struct Session {
    _lock: StateLock,
    state: AgentState,
}

enum TransitionEnd {
    Done,
    Vanished,
    TimedOut(Duration),
}

/// The agent, wired to a kernel, a clock, and a state directory.
pub struct Agent<'a> {
    /// Module syscalls: [`crate::SystemKernel`] in production, a fake in tests.
    pub kernel: &'a dyn KernelSyscalls,
    /// Time and sleeping (a fake clock makes transition waits instant in tests).
    pub clock: &'a dyn Clock,
    /// Where sysfs, procfs and the kernel notes are read from.
    pub paths: KernelPaths,
    /// The agent's own files: state, lock and cached bundles.
    pub state_dir: StateDir,
    /// Progress and warnings (the CLI prints them to stderr).
    pub log: &'a dyn Fn(&str),
}

impl std::fmt::Debug for Agent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("paths", &self.paths)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl Agent<'_> {
    /// Release and GNU build-id of the running kernel.
    pub fn identity(&self) -> Result<KernelIdentity, AgentError> {
        let release = self.kernel.release().map_err(|e| AgentError::Identity {
            what: "read the kernel release (uname)".into(),
            reason: e.to_string(),
        })?;
        let release: KernelRelease = release.parse().map_err(|e| AgentError::Identity {
            what: "use the kernel release".into(),
            reason: format!("{e}"),
        })?;
        let path = &self.paths.notes_path;
        let mut notes = Vec::new();
        File::open(path)
            .and_then(|f| f.take(1024 * 1024).read_to_end(&mut notes))
            .map_err(|e| AgentError::Identity {
                what: format!("read {}", path.display()),
                reason: format!("{e} (is sysfs mounted?)"),
            })?;
        let build_id = parse_build_id(&notes).map_err(|source| AgentError::Notes {
            path: path.clone(),
            source,
        })?;
        Ok(KernelIdentity { release, build_id })
    }

    /// `patchbay apply <bundle>`: reads and verifies the file (anything read from disk is
    /// verified as it is read), then goes on as [`Agent::apply_bundle`].
    pub fn apply(
        &self,
        bundle_path: &Path,
        opts: &ApplyOptions,
    ) -> Result<ApplyOutcome, AgentError> {
        let started = self.clock.now();
        let bundle = Bundle::read(bundle_path).map_err(AgentError::from_bundle)?;
        self.apply_verified(bundle, &bundle_path.display().to_string(), opts, started)
    }

    /// Applies a bundle already in memory (verified when it was constructed: a `Bundle`'s
    /// module always matches its manifest), e.g. straight from the TUF download; `shown`
    /// names where it came from in messages.
    pub fn apply_bundle(
        &self,
        bundle: Bundle,
        shown: &str,
        opts: &ApplyOptions,
    ) -> Result<ApplyOutcome, AgentError> {
        self.apply_verified(bundle, shown, opts, self.clock.now())
    }

    fn apply_verified(
        &self,
        bundle: Bundle,
        shown: &str,
        opts: &ApplyOptions,
        started: Duration,
    ) -> Result<ApplyOutcome, AgentError> {
        let identity = self.identity()?;
        check_target(&bundle, shown, &identity)?;
        let verified = self.clock.now();
        let mut session = self.begin()?;
        let view = self.kernel_view(&identity)?;
        self.reconcile(&mut session, &identity, &view)?;
        self.activate(
            &mut session,
            &identity,
            &view,
            bundle,
            OpKind::Apply,
            opts,
            started,
            verified,
        )
    }

    /// `patchbay rollback`: the newest cached level below the active one.
    pub fn rollback(&self, opts: &ApplyOptions) -> Result<ApplyOutcome, AgentError> {
        let started = self.clock.now();
        let identity = self.identity()?;
        let mut session = self.begin()?;
        let view = self.kernel_view(&identity)?;
        self.reconcile(&mut session, &identity, &view)?;
        if let Some((p, level)) = view.transitioning() {
            return Err(transition_in_progress(p, level));
        }
        let Some(active) = view.active() else {
            return Err(if view.cached.is_empty() {
                unsupported(&identity)
            } else {
                AgentError::NoPatch(
                    "no Patchbay level is active, so there is nothing to roll back; \
                     `patchbay apply <bundle>` applies one"
                        .into(),
                )
            });
        };
        let target = view
            .cached
            .iter()
            .rfind(|c| c.manifest.level < active.level())
            .ok_or(AgentError::NoLowerLevel {
                active: active.level(),
            })?;
        let shown = target.path.display().to_string();
        let bundle =
            crate::cache::read_cached_bundle(&target.path).map_err(AgentError::from_bundle)?;
        check_target(&bundle, &shown, &identity)?;
        let verified = self.clock.now();
        let opts = ApplyOptions {
            allow_downgrade: true,
            ..*opts
        };
        self.activate(
            &mut session,
            &identity,
            &view,
            bundle,
            OpKind::Rollback,
            &opts,
            started,
            verified,
        )
    }

    /// `patchbay unload`: disable and remove every Patchbay livepatch.
    pub fn unload(&self, opts: &TransitionOptions) -> Result<UnloadOutcome, AgentError> {
        let identity = self.identity()?;
        let mut session = self.begin()?;
        let view = self.kernel_view(&identity)?;
        self.reconcile(&mut session, &identity, &view)?;
        if let Some(p) = view.foreign.iter().find(|p| p.transition) {
            return Err(transition_in_progress(p, None));
        }
        let mut outcome = UnloadOutcome::default();
        outcome.stale_removed = self.remove_stale(&view, &mut outcome.warnings);
        // One patch per round: the one in transition first (an interrupted apply), then the
        // active one, then anything of ours that lingers.
        for _round in 0..16 {
            let view = self.kernel_view(&identity)?;
            let Some(target) = view
                .ours
                .iter()
                .find(|p| p.patch.transition)
                .or_else(|| view.active())
                .or_else(|| view.ours.first())
            else {
                break;
            };
            self.unload_one(&mut session, &identity, target, opts, &mut outcome)?;
        }
        if !self.kernel_view(&identity)?.ours.is_empty() {
            outcome
                .warnings
                .push("a Patchbay livepatch is still listed in sysfs; run unload again".into());
        }
        Ok(outcome)
    }

    /// `patchbay bench-raw-load <ko>`: `finit_module` plus the same transition polling as
    /// apply; returns the time from load to transition done.
    pub fn bench_raw_load(
        &self,
        ko: &Path,
        opts: &TransitionOptions,
    ) -> Result<Duration, AgentError> {
        self.kernel
            .check_privileges()
            .map_err(AgentError::Privileges)?;
        let before: BTreeSet<String> = self.list_patches()?.into_iter().map(|p| p.name).collect();
        let file = File::open(ko)
            .map_err(|e| AgentError::Kernel(format!("cannot open module {}: {e}", ko.display())))?;
        let start = self.clock.now();
        self.kernel
            .load_module(&file)
            .map_err(|source| AgentError::Load {
                hint: load_hint(&source),
                module: ko.display().to_string(),
                source,
            })?;
        let name = loop {
            let new = self
                .list_patches()?
                .into_iter()
                .find(|p| !before.contains(&p.name));
            if let Some(p) = new {
                break p.name;
            }
            if self.clock.now().saturating_sub(start) > APPEAR_TIMEOUT {
                return Err(AgentError::Kernel(format!(
                    "{} loaded but no new livepatch appeared in {}",
                    ko.display(),
                    self.paths.livepatch_dir.display()
                )));
            }
            self.clock.sleep(FAST_POLL);
        };
        match self.wait_transition(&name, 1, opts)? {
            TransitionEnd::Done => Ok(self.clock.now().saturating_sub(start)),
            TransitionEnd::Vanished => Err(AgentError::Kernel(format!(
                "livepatch {name} vanished during its transition"
            ))),
            TransitionEnd::TimedOut(waited) => Err(AgentError::Kernel(format!(
                "livepatch {name} still in transition after {:.1} s (left as is)",
                waited.as_secs_f64()
            ))),
        }
    }

    /// `patchbay status`: read-only.
    pub fn status(&self) -> Result<StatusReport, AgentError> {
        let identity = self.identity()?;
        let view = self.kernel_view_lenient(&identity)?;
        let mut warnings = view.warnings.clone();
        let state = match AgentState::load(&self.state_dir.state_file()) {
            Ok(s) => s,
            Err(e) => {
                warnings.push(e.to_string());
                AgentState::default()
            }
        };
        let operation_running = StateLock::is_held_elsewhere(&self.state_dir.lock_file());
        let interrupted = if operation_running {
            None
        } else {
            state.pending.clone()
        };
        let active = view
            .active()
            .map(|a| ActiveLevel::from_manifest(&a.cached.manifest));
        Ok(StatusReport::new(
            &identity,
            &view,
            active,
            interrupted,
            operation_running,
            state.last_error,
            warnings,
        ))
    }

    // ---- internals ----

    fn begin(&self) -> Result<Session, AgentError> {
        self.kernel
            .check_privileges()
            .map_err(AgentError::Privileges)?;
        self.state_dir.ensure_layout().map_err(AgentError::Cache)?;
        let lock = StateLock::acquire(&self.state_dir.lock_file())?;
        let (state, _) = self.load_state_or_quarantine()?;
        Ok(Session { _lock: lock, state })
    }

    /// Loads the state file. A corrupt one is moved aside (kept for inspection) and a new
    /// history started rather than block patching: the state file is history only, the
    /// kernel is the truth. Returns where the corrupt file went, if it was.
    pub(crate) fn load_state_or_quarantine(
        &self,
    ) -> Result<(AgentState, Option<PathBuf>), AgentError> {
        let path = self.state_dir.state_file();
        match AgentState::load(&path) {
            Ok(s) => Ok((s, None)),
            Err(e @ StateError::Corrupt { .. }) => {
                let moved = quarantine(&path).map_err(|source| StateError::Io {
                    what: "move aside corrupt state file",
                    path: path.clone(),
                    source,
                })?;
                (self.log)(&format!(
                    "warning: {e}; moved it to {} and started a new one",
                    moved.display()
                ));
                Ok((AgentState::default(), Some(moved)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an apply, rollback or unload was started and never recorded as finished (and
    /// is not running now).
    pub fn has_pending_operation(&self) -> Result<bool, AgentError> {
        if StateLock::is_held_elsewhere(&self.state_dir.lock_file()) {
            return Ok(false);
        }
        let (state, _) = self.load_state_or_quarantine()?;
        Ok(state.pending.is_some())
    }

    fn list_patches(&self) -> Result<Vec<LivePatch>, AgentError> {
        livepatch::list_patches(&self.paths.livepatch_dir).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                AgentError::Unsupported(format!(
                    "this kernel cannot be livepatched: {} is missing (kernel built without \
                     CONFIG_LIVEPATCH, or sysfs not mounted)",
                    self.paths.livepatch_dir.display()
                ))
            } else {
                AgentError::Sysfs {
                    what: "read livepatches in",
                    path: self.paths.livepatch_dir.clone(),
                    source: e,
                }
            }
        })
    }

    /// The kernel view for commands that change things: a kernel without livepatch support
    /// is an error.
    fn kernel_view(&self, identity: &KernelIdentity) -> Result<KernelView, AgentError> {
        let patches = self.list_patches()?;
        self.build_view(identity, Some(patches))
    }

    /// The kernel view for `status`: a kernel without livepatch support is reported.
    fn kernel_view_lenient(&self, identity: &KernelIdentity) -> Result<KernelView, AgentError> {
        match self.list_patches() {
            Ok(p) => self.build_view(identity, Some(p)),
            Err(AgentError::Unsupported(_)) => self.build_view(identity, None),
            Err(e) => Err(e),
        }
    }

    fn build_view(
        &self,
        identity: &KernelIdentity,
        patches: Option<Vec<LivePatch>>,
    ) -> Result<KernelView, AgentError> {
        let (cached, warnings) = self
            .state_dir
            .cached_levels(&identity.build_id)
            .map_err(AgentError::Cache)?;
        let livepatch_supported = patches.is_some();
        let mut ours = Vec::new();
        let mut foreign = Vec::new();
        for patch in patches.unwrap_or_default() {
            match cached
                .iter()
                .find(|c| c.manifest.module.name.as_str() == patch.name)
            {
                Some(c) => ours.push(OurPatch {
                    patch,
                    cached: c.clone(),
                }),
                None => foreign.push(patch),
            }
        }
        let loaded = livepatch::loaded_modules(&self.paths.proc_dir).unwrap_or_default();
        let stale = cached
            .iter()
            .filter(|c| {
                let name = c.manifest.module.name.as_str();
                loaded.iter().any(|m| m.name == name && m.state == "Live")
                    && !ours.iter().any(|o| o.patch.name == name)
            })
            .cloned()
            .collect();
        Ok(KernelView {
            livepatch_supported,
            cached,
            warnings,
            ours,
            foreign,
            stale,
        })
    }

    /// The kernel's state in one line, for error messages.
    fn describe_kernel(&self, identity: &KernelIdentity) -> String {
        match self.kernel_view(identity) {
            Ok(view) => format!("Now {}", view.describe()),
            Err(e) => format!("The kernel's state cannot be read: {e}"),
        }
    }

    /// Turns a pending marker left by an interrupted run into a history entry.
    fn reconcile(
        &self,
        session: &mut Session,
        identity: &KernelIdentity,
        view: &KernelView,
    ) -> Result<(), AgentError> {
        let Some(pending) = session.state.pending.take() else {
            return Ok(());
        };
        let found = view.describe();
        let detail = format!(
            "{} (pid {}, started at unix time {}) was interrupted; the kernel showed: {found}",
            describe_pending(&pending),
            pending.pid,
            pending.started_unix
        );
        (self.log)(&format!("note: the previous {detail}"));
        // The interruption came after the kernel finished the transition but before the
        // agent wrote it down: the level is active, so record it as the operation's success
        // (boot re-applies from the history, and must re-apply this level, not the one before).
        let completed = view.transitioning().is_none()
            && pending.build_id == identity.build_id
            && matches!(pending.op, OpKind::Apply | OpKind::Rollback)
            && pending.level.is_some()
            && view.active().map(|a| a.level()) == pending.level;
        let event = match (completed, pending.op) {
            (true, OpKind::Rollback) => Event::RolledBack,
            (true, _) => Event::Applied,
            (false, _) => Event::Interrupted,
        };
        session.state.record(HistoryEntry {
            at_unix: unix_seconds_unsigned(),
            event,
            build_id: identity.build_id.clone(),
            level: view.active().map(|a| a.level()),
            previous_level: pending.from_level,
            module: pending.module.clone(),
            detail,
        });
        session.state.save(&self.state_dir.state_file())?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn activate(
        &self,
        session: &mut Session,
        identity: &KernelIdentity,
        view: &KernelView,
        bundle: Bundle,
        op: OpKind,
        opts: &ApplyOptions,
        started: Duration,
        verified: Duration,
    ) -> Result<ApplyOutcome, AgentError> {
        let level = bundle.manifest().level;
        let module = bundle.manifest().module.name.clone();
        let mut timings = ApplyTimings {
            verified: verified.saturating_sub(started),
            ..ApplyTimings::default()
        };
        if let Some((p, l)) = view.transitioning() {
            return Err(transition_in_progress(p, l));
        }
        if let Some(cached) = view.cached.iter().find(|c| c.manifest.level == level) {
            if cached.manifest != *bundle.manifest() {
                return Err(AgentError::CacheConflict {
                    level,
                    path: cached.path.clone(),
                    cached: cached.manifest.module.sha256.clone(),
                    offered: bundle.manifest().module.sha256.clone(),
                });
            }
        }
        let active = view.active();
        let previous = active.map(|a| a.level());
        if let Some(a) = active {
            if a.level() == level && a.module() == &module {
                let mut warnings = Vec::new();
                self.remove_stale(view, &mut warnings);
                return Ok(ApplyOutcome {
                    level,
                    module,
                    previous,
                    already_active: true,
                    replaced_foreign: Vec::new(),
                    forced: false,
                    warnings,
                    timings,
                });
            }
            if level < a.level() && !opts.allow_downgrade {
                return Err(AgentError::Downgrade {
                    requested: level,
                    active: a.level(),
                });
            }
        }
        if !view.foreign.is_empty() && !opts.replace_foreign {
            let names: Vec<&str> = view.foreign.iter().map(|p| p.name.as_str()).collect();
            return Err(AgentError::ForeignPatches {
                names: names.join(", "),
            });
        }

        // From here on things change; every step is recoverable from the kernel's view.
        let mut warnings = Vec::new();
        self.remove_stale(view, &mut warnings);
        match self
            .state_dir
            .store_bundle(&bundle)
            .map_err(AgentError::Cache)?
        {
            StoreOutcome::Stored | StoreOutcome::AlreadyCached => {}
            StoreOutcome::Conflict {
                path,
                cached_sha256,
            } => {
                return Err(AgentError::CacheConflict {
                    level,
                    path,
                    cached: cached_sha256,
                    offered: bundle.manifest().module.sha256.clone(),
                })
            }
        }
        session.state.pending = Some(PendingOp {
            op,
            build_id: identity.build_id.clone(),
            level: Some(level),
            module: Some(module.clone()),
            from_level: previous,
            started_unix: unix_seconds_unsigned(),
            pid: std::process::id(),
        });
        session.state.save(&self.state_dir.state_file())?;
        crate::fault::crash_point(crate::fault::FaultPoint::AfterCacheWrite);
        // The module file stays for `boot`; the kernel reads the verified bytes from a sealed
        // memfd made right before loading.
        let file = match self.state_dir.extract_module(&bundle) {
            Ok(file) => file,
            Err(e) => return Err(self.fail(session, AgentError::Cache(e))),
        };
        timings.prepared = self.clock.now().saturating_sub(started);

        if let Err(source) = self.kernel.load_module(&file) {
            let err = AgentError::Load {
                module: module.to_string(),
                hint: load_hint(&source),
                source,
            };
            // The module file marks the level loaded last (boot's fallback): this one never was.
            self.state_dir.remove_module_file(&module);
            return Err(self.fail(session, err));
        }
        drop(file);
        crate::fault::crash_point(crate::fault::FaultPoint::AfterFinitModule);
        timings.loaded = self.clock.now().saturating_sub(started);
        if let Err(err) = self.wait_appear(&module) {
            if self.delete_module_retry(&module).is_ok() {
                self.state_dir.remove_module_file(&module);
            }
            return Err(self.fail(session, err));
        }
        crate::fault::crash_point(crate::fault::FaultPoint::MidTransition);

        let mut forced = false;
        let end = match self.wait_transition_rechecked(module.as_str(), 1, &opts.transition) {
            Ok(end) => end,
            Err(e) => return Err(self.fail(session, e)),
        };
        match end {
            TransitionEnd::Done => {}
            TransitionEnd::Vanished => {
                let _ = self.delete_module_retry(&module);
                self.state_dir.remove_module_file(&module);
                let err = AgentError::Kernel(format!(
                    "livepatch {module} (level {level}) vanished during its transition: \
                     something else disabled it. {}",
                    self.describe_kernel(identity)
                ));
                return Err(self.fail(session, err));
            }
            TransitionEnd::TimedOut(waited) => {
                let (blockers, total) = livepatch::blocking_tasks(
                    &self.paths.proc_dir,
                    1,
                    BLOCKERS_SHOWN,
                    &livepatch::ReplacedNames::from_manifest(bundle.manifest()),
                );
                if opts.transition.force {
                    self.force_transition(session, module.as_str())?;
                    forced = true;
                    (self.log)(&format!(
                        "warning: transition to level {level} forced after {:.1} s; {total} \
                         task(s) had not switched",
                        waited.as_secs_f64()
                    ));
                } else {
                    let report = BlockedReport {
                        action: format!("transition to level {level}"),
                        blockers,
                        total_blockers: total,
                        waited,
                        outcome: String::new(),
                    };
                    return Err(self.revert_apply(session, identity, &module, report, opts));
                }
            }
        }
        timings.transitioned = self.clock.now().saturating_sub(started);
        match livepatch::read_patch(&self.paths.livepatch_dir, module.as_str()) {
            Ok(Some(p)) if p.enabled => {}
            _ => {
                let _ = self.wait_vanish(module.as_str());
                let _ = self.delete_module_retry(&module);
                let err = AgentError::Kernel(format!(
                    "livepatch {module} (level {level}) was reversed by someone else during \
                     its transition; {}",
                    self.describe_kernel(identity)
                ));
                return Err(self.fail(session, err));
            }
        }

        crate::fault::crash_point(crate::fault::FaultPoint::BeforeRecord);
        session.state.pending = None;
        session.state.record(HistoryEntry {
            at_unix: unix_seconds_unsigned(),
            event: match (forced, op) {
                (true, _) => Event::Forced,
                (false, OpKind::Rollback) => Event::RolledBack,
                (false, _) => Event::Applied,
            },
            build_id: identity.build_id.clone(),
            level: Some(level),
            previous_level: previous,
            module: Some(module.clone()),
            detail: String::new(),
        });
        if let Err(e) = session.state.save(&self.state_dir.state_file()) {
            // The level is active (the kernel says so); only the history entry is lost.
            warnings.push(format!("level {level} is active, but {e}"));
        }
        timings.recorded = self.clock.now().saturating_sub(started);

        // Atomic replace removed every other patch; remove our modules of those.
        for replaced in view.ours.iter().filter(|p| p.module() != &module) {
            let name = replaced.module();
            if let Err(e) = self.wait_vanish(name.as_str()) {
                warnings.push(e.to_string());
                continue;
            }
            if forced {
                // Forced patches keep their module reference for good (kernel rule).
                if self.kernel.delete_module(name).is_err() {
                    warnings.push(format!(
                        "module {name} of level {} stays loaded until reboot because the \
                         transition was forced",
                        replaced.level()
                    ));
                }
                continue;
            }
            match self.delete_module_retry(name) {
                Ok(()) => self.state_dir.remove_module_file(name),
                Err(e) => warnings.push(e.to_string()),
            }
        }
        // Foreign patches were replaced too; wait until the kernel has freed them so the
        // report is true (their modules belong to someone else and stay loaded).
        for replaced in &view.foreign {
            if let Err(e) = self.wait_vanish(&replaced.name) {
                warnings.push(e.to_string());
            }
        }
        timings.cleaned = self.clock.now().saturating_sub(started);
        for w in &warnings {
            (self.log)(&format!("warning: {w}"));
        }
        Ok(ApplyOutcome {
            level,
            module,
            previous,
            already_active: false,
            replaced_foreign: view.foreign.iter().map(|p| p.name.clone()).collect(),
            forced,
            warnings,
            timings,
        })
    }

    /// A blocked apply: reverse the transition, wait for the new patch to be freed, remove its
    /// module, and report the blockers.
    fn revert_apply(
        &self,
        session: &mut Session,
        identity: &KernelIdentity,
        module: &ModuleName,
        mut report: BlockedReport,
        opts: &ApplyOptions,
    ) -> AgentError {
        let dir = livepatch::patch_dir(&self.paths.livepatch_dir, module.as_str());
        (self.log)(&format!(
            "transition to {module} blocked after {:.1} s; reversing it",
            report.waited.as_secs_f64()
        ));
        let reversed = livepatch::write_attr(&dir.join("enabled"), "0");
        let reverse_opts = TransitionOptions {
            force: false,
            ..opts.transition
        };
        let outcome = match reversed {
            Err(e) if !livepatch::is_gone(&e) => Err(format!(
                "reversing failed: cannot write 0 to {}: {e}",
                dir.join("enabled").display()
            )),
            _ => match self.wait_transition(module.as_str(), 0, &reverse_opts) {
                Ok(TransitionEnd::TimedOut(_)) => Err(format!(
                    "reversing stalled as well: {module} is still in transition back to \
                     unpatched; the kernel keeps retrying, check `patchbay status` later and \
                     run `patchbay unload` once it settles"
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
        };
        let outcome = outcome.and_then(|()| {
            self.wait_vanish(module.as_str())
                .and_then(|()| self.delete_module_retry(module))
                .map_err(|e| e.to_string())
        });
        let now = self
            .kernel_view(identity)
            .ok()
            .and_then(|v| v.active().map(|a| a.level()));
        report.outcome = match (&outcome, now) {
            (Ok(()), Some(l)) => format!("reverted; level {l} stays active"),
            (Ok(()), None) => "reverted; no Patchbay level is active".to_owned(),
            (Err(e), _) => e.clone(),
        };
        if outcome.is_ok() {
            self.state_dir.remove_module_file(module);
        }
        session.state.record(HistoryEntry {
            at_unix: unix_seconds_unsigned(),
            event: Event::Reverted,
            build_id: identity.build_id.clone(),
            level: session.state.pending.as_ref().and_then(|p| p.level),
            previous_level: now,
            module: Some(module.clone()),
            detail: report.outcome.clone(),
        });
        self.fail(session, AgentError::Blocked(Box::new(report)))
    }

    fn force_transition(&self, session: &mut Session, name: &str) -> Result<(), AgentError> {
        self.write_force(session, name)?;
        let opts = TransitionOptions {
            timeout: Duration::from_secs(10),
            signal_after: Duration::from_secs(10),
            force: false,
        };
        match self.wait_transition(name, 1, &opts)? {
            TransitionEnd::Done => Ok(()),
            _ => {
                let err = AgentError::Kernel(format!(
                    "forcing the transition of {name} did not complete it; check `patchbay status`"
                ));
                Err(self.fail(session, err))
            }
        }
    }

    fn unload_one(
        &self,
        session: &mut Session,
        identity: &KernelIdentity,
        target: &OurPatch,
        opts: &TransitionOptions,
        outcome: &mut UnloadOutcome,
    ) -> Result<(), AgentError> {
        let level = target.level();
        let module = target.module().clone();
        let dir = livepatch::patch_dir(&self.paths.livepatch_dir, module.as_str());
        session.state.pending = Some(PendingOp {
            op: OpKind::Unload,
            build_id: identity.build_id.clone(),
            level: Some(level),
            module: Some(module.clone()),
            from_level: Some(level),
            started_unix: unix_seconds_unsigned(),
            pid: std::process::id(),
        });
        session.state.save(&self.state_dir.state_file())?;
        if target.patch.enabled {
            match livepatch::write_attr(&dir.join("enabled"), "0") {
                Ok(()) => {}
                Err(e) if livepatch::is_gone(&e) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let err = AgentError::TransitionInProgress {
                        patch: "another livepatch".into(),
                        hint: "",
                    };
                    return Err(self.fail(session, err));
                }
                Err(source) => {
                    let err = AgentError::Sysfs {
                        what: "disable the livepatch by writing 0 to",
                        path: dir.join("enabled"),
                        source,
                    };
                    return Err(self.fail(session, err));
                }
            }
        }
        let mut forced = false;
        let end = match self.wait_transition_rechecked(module.as_str(), 0, opts) {
            Ok(end) => end,
            Err(e) => return Err(self.fail(session, e)),
        };
        match end {
            TransitionEnd::Done | TransitionEnd::Vanished => {}
            TransitionEnd::TimedOut(waited) => {
                // The level's functions, from its cached bundle (best effort: the stacks are
                // shown either way).
                let replaced = crate::cache::read_manifest_only(
                    &self.state_dir.bundle_path(&identity.build_id, level),
                )
                .map(|m| livepatch::ReplacedNames::from_manifest(&m))
                .unwrap_or_default();
                let (blockers, total) =
                    livepatch::blocking_tasks(&self.paths.proc_dir, 0, BLOCKERS_SHOWN, &replaced);
                if opts.force {
                    self.write_force(session, module.as_str())?;
                    forced = true;
                    outcome.warnings.push(format!(
                        "unload of level {level} was forced: some tasks may still run its code, \
                         so its module {module} stays loaded until reboot"
                    ));
                } else {
                    let mut report = BlockedReport {
                        action: format!("unload of level {level}"),
                        blockers,
                        total_blockers: total,
                        waited,
                        outcome: String::new(),
                    };
                    // Writing 1 during the transition reverses it: back to patched.
                    let written = livepatch::write_attr(&dir.join("enabled"), "1");
                    let back = livepatch::after_unpatch_timeout(
                        written,
                        self.read_patch_after_write(module.as_str()),
                    )
                    .and_then(|after| match after {
                        AfterUnpatchTimeout::FinishedLate => Ok(after),
                        AfterUnpatchTimeout::Reversing => {
                            match self.wait_transition(module.as_str(), 1, opts) {
                                Ok(TransitionEnd::Done) => Ok(after),
                                Ok(_) => Err("returning to patched stalled as well".to_owned()),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                    });
                    if let Ok(AfterUnpatchTimeout::FinishedLate) = back {
                        outcome.warnings.push(format!(
                            "the unload of level {level} finished just after the {:.0} s wait \
                             ran out",
                            waited.as_secs_f64()
                        ));
                    } else {
                        report.outcome = match back {
                            Ok(_) => format!("reverted; level {level} stays active"),
                            Err(e) => format!(
                                "reverting failed ({e}); level {level} is in transition, check \
                                 `patchbay status`"
                            ),
                        };
                        session.state.record(HistoryEntry {
                            at_unix: unix_seconds_unsigned(),
                            event: Event::Reverted,
                            build_id: identity.build_id.clone(),
                            level: Some(level),
                            previous_level: Some(level),
                            module: Some(module.clone()),
                            detail: report.outcome.clone(),
                        });
                        return Err(self.fail(session, AgentError::Blocked(Box::new(report))));
                    }
                }
            }
        }
        let removed = self
            .wait_vanish(module.as_str())
            .and_then(|()| {
                if forced {
                    // A forced patch keeps its module reference for good (kernel rule).
                    Ok(())
                } else {
                    self.delete_module_retry(&module)
                }
            })
            .map(|()| self.state_dir.remove_module_file(&module));
        if let Err(e) = removed {
            return Err(self.fail(session, e));
        }
        session.state.pending = None;
        session.state.record(HistoryEntry {
            at_unix: unix_seconds_unsigned(),
            event: Event::Unloaded,
            build_id: identity.build_id.clone(),
            level: Some(level),
            previous_level: Some(level),
            module: Some(module),
            detail: String::new(),
        });
        if let Err(e) = session.state.save(&self.state_dir.state_file()) {
            outcome
                .warnings
                .push(format!("level {level} was unloaded, but {e}"));
        }
        outcome.removed.push(level);
        Ok(())
    }

    fn write_force(&self, session: &mut Session, name: &str) -> Result<(), AgentError> {
        let path = livepatch::patch_dir(&self.paths.livepatch_dir, name).join("force");
        (self.log)(&format!(
            "warning: writing 1 to {} as --force asked: tasks that have not switched keep \
             running the old code",
            path.display()
        ));
        if let Err(source) = livepatch::write_attr(&path, "1") {
            let err = AgentError::Sysfs {
                what: "force the transition by writing",
                path,
                source,
            };
            return Err(self.fail(session, err));
        }
        Ok(())
    }

    /// Records `err` as the last error, clears the pending marker, and returns `err`. A
    /// failure to save is logged: the kernel state is what counts.
    fn fail(&self, session: &mut Session, err: AgentError) -> AgentError {
        session.state.pending = None;
        session.state.last_error = Some(ErrorRecord {
            at_unix: unix_seconds_unsigned(),
            exit_code: err.exit_code(),
            message: err.to_string(),
        });
        if let Err(e) = session.state.save(&self.state_dir.state_file()) {
            (self.log)(&format!("warning: {e}"));
        }
        err
    }

    /// Removes our modules that are loaded but no longer a livepatch.
    fn remove_stale(&self, view: &KernelView, warnings: &mut Vec<String>) -> Vec<ModuleName> {
        let mut removed = Vec::new();
        for stale in &view.stale {
            let name = &stale.manifest.module.name;
            (self.log)(&format!(
                "removing leftover module {name} (level {}): loaded but no longer a livepatch",
                stale.manifest.level
            ));
            match self.delete_module_retry(name) {
                Ok(()) => {
                    self.state_dir.remove_module_file(name);
                    removed.push(name.clone());
                }
                Err(e) => warnings.push(e.to_string()),
            }
        }
        removed
    }

    /// Polls `transition` until it reads 0, the patch vanishes, or the timeout passes.
    /// `target` is the state tasks switch to (1 patched, 0 unpatched), for reporting.
    fn wait_transition(
        &self,
        name: &str,
        target: u8,
        opts: &TransitionOptions,
    ) -> Result<TransitionEnd, AgentError> {
        let start = self.clock.now();
        let path = livepatch::patch_dir(&self.paths.livepatch_dir, name).join("transition");
        let signal_every = opts.signal_after.max(Duration::from_millis(100));
        let mut next_nudge = opts.signal_after;
        let mut told_kernel_signals = false;
        loop {
            match livepatch::read_flag(&path) {
                Ok(false) => return Ok(TransitionEnd::Done),
                Ok(true) => {}
                Err(e) if livepatch::is_gone(&e) => return Ok(TransitionEnd::Vanished),
                Err(source) => {
                    return Err(AgentError::Sysfs {
                        what: "read",
                        path,
                        source,
                    })
                }
            }
            let elapsed = self.clock.now().saturating_sub(start);
            if elapsed >= opts.timeout {
                return Ok(TransitionEnd::TimedOut(elapsed));
            }
            if elapsed >= next_nudge {
                self.nudge(name, target, elapsed, &mut told_kernel_signals);
                next_nudge = elapsed.saturating_add(signal_every);
            }
            self.clock.sleep(if elapsed < FAST_POLL_FOR {
                FAST_POLL
            } else {
                SLOW_POLL
            });
        }
    }

    /// [`Self::wait_transition`], but a timeout is confirmed by one more read: the kernel may
    /// have finished in the meantime, and reversing a finished transition would instead
    /// start the opposite one (e.g. disable the patch that just replaced the previous level).
    fn wait_transition_rechecked(
        &self,
        name: &str,
        target: u8,
        opts: &TransitionOptions,
    ) -> Result<TransitionEnd, AgentError> {
        let end = self.wait_transition(name, target, opts)?;
        if !matches!(end, TransitionEnd::TimedOut(_)) {
            return Ok(end);
        }
        let path = livepatch::patch_dir(&self.paths.livepatch_dir, name).join("transition");
        Ok(match livepatch::read_flag(&path) {
            Ok(false) => TransitionEnd::Done,
            Err(e) if livepatch::is_gone(&e) => TransitionEnd::Vanished,
            _ => end,
        })
    }

    /// The patch as the kernel shows it right after a write to one of its attributes. The
    /// clock is read first: the kernel acts on the write synchronously, and the test kernel
    /// acts on writes when the clock is read.
    fn read_patch_after_write(&self, name: &str) -> std::io::Result<Option<LivePatch>> {
        let _ = self.clock.now();
        livepatch::read_patch(&self.paths.livepatch_dir, name)
    }

    /// A transition is slow: report who blocks it and signal them if the kernel lets us.
    fn nudge(&self, name: &str, target: u8, elapsed: Duration, told: &mut bool) {
        let (blockers, total) = livepatch::blocking_tasks(
            &self.paths.proc_dir,
            target,
            3,
            &livepatch::ReplacedNames::default(),
        );
        let who: Vec<String> = blockers
            .iter()
            .map(|t| format!("{} {}", t.tid, t.comm))
            .collect();
        let who = if who.is_empty() {
            String::new()
        } else {
            format!(" ({total} task(s) not switched yet: {})", who.join(", "))
        };
        let secs = elapsed.as_secs_f64();
        if livepatch::has_signal_attr(&self.paths.livepatch_dir, name) {
            let path = livepatch::patch_dir(&self.paths.livepatch_dir, name).join("signal");
            match livepatch::write_attr(&path, "1") {
                Ok(()) => (self.log)(&format!(
                    "transition of {name} still running after {secs:.1} s{who}; signalled the \
                     blocking tasks"
                )),
                Err(e) => (self.log)(&format!(
                    "transition of {name} still running after {secs:.1} s{who}; could not \
                     signal blocking tasks: {e}"
                )),
            }
        } else if !*told {
            *told = true;
            (self.log)(&format!(
                "transition of {name} still running after {secs:.1} s{who}; this kernel has no \
                 `signal` attribute and sends blocking tasks a fake signal itself about every \
                 15 s"
            ));
        }
    }

    fn wait_appear(&self, module: &ModuleName) -> Result<(), AgentError> {
        let path =
            livepatch::patch_dir(&self.paths.livepatch_dir, module.as_str()).join("transition");
        let start = self.clock.now();
        while !path.exists() {
            if self.clock.now().saturating_sub(start) > APPEAR_TIMEOUT {
                return Err(AgentError::Kernel(format!(
                    "module {module} loaded but no livepatch of that name appeared in {}; it is \
                     not a livepatch module (or failed to enable: see `dmesg`). The module was \
                     removed again",
                    self.paths.livepatch_dir.display()
                )));
            }
            self.clock.sleep(FAST_POLL);
        }
        Ok(())
    }

    /// Waits for a disabled or replaced patch to be freed by the kernel.
    fn wait_vanish(&self, name: &str) -> Result<(), AgentError> {
        let dir = livepatch::patch_dir(&self.paths.livepatch_dir, name);
        let start = self.clock.now();
        while dir.exists() {
            if self.clock.now().saturating_sub(start) > VANISH_TIMEOUT {
                return Err(AgentError::Cleanup(format!(
                    "livepatch {name} was disabled or replaced, but the kernel has not freed \
                     it after {} s, so its module cannot be removed yet; `patchbay status` \
                     shows it, and the next apply or unload removes it",
                    VANISH_TIMEOUT.as_secs()
                )));
            }
            self.clock.sleep(FAST_POLL);
        }
        Ok(())
    }

    /// `delete_module` with retries while the kernel still holds the module (the patch is
    /// freed asynchronously). A module that is already gone counts as removed.
    fn delete_module_retry(&self, module: &ModuleName) -> Result<(), AgentError> {
        let start = self.clock.now();
        let mut delay = Duration::from_millis(2);
        loop {
            match self.kernel.delete_module(module) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY))
                        && self.clock.now().saturating_sub(start) < DELETE_TIMEOUT =>
                {
                    self.clock.sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(AgentError::Cleanup(format!(
                        "cannot remove module {module}: {e}; it is no longer a livepatch but \
                         still loaded. Retry with `patchbay unload` or `rmmod {module}`"
                    )))
                }
            }
        }
    }
}

fn describe_pending(p: &PendingOp) -> String {
    match (p.op, p.level) {
        (OpKind::Unload, Some(l)) => format!("unload of level {l}"),
        (op, Some(l)) => format!("{op} of level {l}"),
        (op, None) => op.to_string(),
    }
}

fn transition_in_progress(p: &LivePatch, level: Option<PatchLevel>) -> AgentError {
    match level {
        Some(l) => AgentError::TransitionInProgress {
            patch: format!("Patchbay level {l}, {}", p.name),
            hint: "; if an interrupted patchbay left it stuck, `patchbay unload` reverses it",
        },
        None => AgentError::TransitionInProgress {
            patch: p.name.clone(),
            hint: "",
        },
    }
}

fn unsupported(identity: &KernelIdentity) -> AgentError {
    AgentError::Unsupported(format!(
        "no bundle is known for this kernel ({}, build-id {}); apply a bundle built for it first",
        identity.release, identity.build_id
    ))
}

/// Refuses a bundle built for another kernel.
fn check_target(bundle: &Bundle, shown: &str, identity: &KernelIdentity) -> Result<(), AgentError> {
    let target = &bundle.manifest().kernel;
    if target.build_id == identity.build_id && target.release == identity.release {
        return Ok(());
    }
    let note = if target.release == identity.release {
        " — the same release but a different build, and a patch for one build can crash another"
    } else if target.build_id == identity.build_id {
        " — the same build-id under another release name, which should never happen"
    } else {
        ""
    };
    Err(AgentError::WrongKernel(Box::new(KernelMismatch {
        path: shown.to_owned(),
        bundle_release: target.release.clone(),
        bundle_build_id: target.build_id.clone(),
        running_release: identity.release.clone(),
        running_build_id: identity.build_id.clone(),
        note,
    })))
}
