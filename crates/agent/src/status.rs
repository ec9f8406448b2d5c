//! The `status` report: what the kernel runs, matched against the cache, plus what the state
//! file says about history and interrupted operations.

use serde::Serialize;

use patchbay_core::{BuildId, CveId, KernelRelease, Manifest, ModuleName, PatchLevel};

use crate::agent::{KernelIdentity, KernelView};
use crate::error::exit;
use crate::livepatch::LivePatch;
use crate::state::{ErrorRecord, PendingOp};

/// Overall state of Patchbay's livepatches on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchState {
    /// A Patchbay level is active and no transition runs.
    Patched,
    /// A livepatch transition is running.
    Transition,
    /// No Patchbay level is active.
    Unpatched,
    /// An earlier operation did not finish; the other fields show what the kernel has now.
    Interrupted,
}

impl PatchState {
    fn as_str(self) -> &'static str {
        match self {
            PatchState::Patched => "patched",
            PatchState::Transition => "transition in progress",
            PatchState::Unpatched => "unpatched",
            PatchState::Interrupted => "interrupted operation",
        }
    }
}

/// The verdict that `status` turns into its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The newest cached level is active (exit 0).
    UpToDate,
    /// Levels are cached for this kernel but none is active (exit 3).
    NoPatchApplied,
    /// A level is active but a higher one is cached (exit 4).
    NewerLevelAvailable,
    /// The kernel has no livepatch support, or no level is cached for this build (exit 5).
    KernelUnsupported,
}

impl Verdict {
    /// The exit code of `patchbay status` for this verdict (see [`crate::exit`]).
    pub(crate) fn exit_code(self) -> i32 {
        match self {
            Verdict::UpToDate => exit::OK,
            Verdict::NoPatchApplied => exit::NO_PATCH,
            Verdict::NewerLevelAvailable => exit::NEWER_AVAILABLE,
            Verdict::KernelUnsupported => exit::UNSUPPORTED,
        }
    }
}

/// The active level and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveLevel {
    /// The active level.
    pub level: PatchLevel,
    /// Its kernel module, e.g. `pb_0123456789ab_l3`.
    pub module: ModuleName,
    /// `object:function` (with `,sympos` when not 0).
    pub functions: Vec<String>,
    /// The CVEs the level fixes (cumulative), from its manifest.
    pub fixes: Vec<CveId>,
}

impl ActiveLevel {
    /// The summary of the level `m` describes.
    pub(crate) fn from_manifest(m: &Manifest) -> Self {
        ActiveLevel {
            level: m.level,
            module: m.module.name.clone(),
            functions: m
                .replaced_functions
                .iter()
                .map(|f| {
                    if f.sympos == 0 {
                        format!("{}:{}", f.object, f.function)
                    } else {
                        format!("{}:{},{}", f.object, f.function, f.sympos)
                    }
                })
                .collect(),
            fixes: m.fixes.clone(),
        }
    }
}

/// A livepatch in transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionInfo {
    /// The patch's directory name under `/sys/kernel/livepatch` (its module's name).
    pub patch: String,
    /// The Patchbay level, if it is one of ours.
    pub level: Option<PatchLevel>,
    /// `patching` (being applied) or `unpatching` (being removed or reversed).
    pub direction: &'static str,
}

/// Everything `patchbay status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// `uname -r` of the running kernel.
    pub kernel_release: KernelRelease,
    /// GNU build-id of the running kernel.
    pub build_id: BuildId,
    /// Whether the kernel has livepatch support (`/sys/kernel/livepatch` exists).
    pub livepatch_supported: bool,
    /// Patched, in transition, unpatched, or interrupted.
    pub state: PatchState,
    /// The active Patchbay level; `None`: none is active.
    pub active: Option<ActiveLevel>,
    /// A livepatch currently in transition; `None`: none is.
    pub transition: Option<TransitionInfo>,
    /// The highest level cached for this kernel; `None`: nothing is cached.
    pub newest_cached_level: Option<PatchLevel>,
    /// Every level cached for this kernel, ascending.
    pub cached_levels: Vec<PatchLevel>,
    /// Livepatches in sysfs that are not Patchbay bundles cached for this kernel.
    pub foreign_patches: Vec<LivePatch>,
    /// Patchbay modules loaded but no longer a livepatch (removed by the next change).
    pub leftover_modules: Vec<ModuleName>,
    /// A pending-operation marker with no process running it.
    pub interrupted_operation: Option<PendingOp>,
    /// Another patchbay process holds the lock right now.
    pub operation_running: bool,
    /// The last recorded failure of a changing command.
    pub last_error: Option<ErrorRecord>,
    /// Problems found while gathering the report (e.g. unreadable cache entries).
    pub warnings: Vec<String>,
    /// The overall verdict.
    pub verdict: Verdict,
    /// The exit code `status` ends with, from `verdict`.
    pub exit_code: i32,
}

impl StatusReport {
    pub(crate) fn new(
        identity: &KernelIdentity,
        view: &KernelView,
        active: Option<ActiveLevel>,
        interrupted: Option<PendingOp>,
        operation_running: bool,
        last_error: Option<ErrorRecord>,
        warnings: Vec<String>,
    ) -> Self {
        let transition = view.transitioning().map(|(p, level)| TransitionInfo {
            patch: p.name.clone(),
            level,
            direction: if p.enabled { "patching" } else { "unpatching" },
        });
        let newest = view.newest_cached().map(|c| c.manifest.level);
        let verdict = match (&active, newest) {
            _ if !view.livepatch_supported => Verdict::KernelUnsupported,
            (_, None) => Verdict::KernelUnsupported,
            (None, Some(_)) => Verdict::NoPatchApplied,
            (Some(a), Some(n)) if a.level < n => Verdict::NewerLevelAvailable,
            (Some(_), Some(_)) => Verdict::UpToDate,
        };
        let state = if interrupted.is_some() {
            PatchState::Interrupted
        } else if transition.is_some() {
            PatchState::Transition
        } else if active.is_some() {
            PatchState::Patched
        } else {
            PatchState::Unpatched
        };
        StatusReport {
            kernel_release: identity.release.clone(),
            build_id: identity.build_id.clone(),
            livepatch_supported: view.livepatch_supported,
            state,
            active,
            transition,
            newest_cached_level: newest,
            cached_levels: view.cached.iter().map(|c| c.manifest.level).collect(),
            foreign_patches: view.foreign.clone(),
            leftover_modules: view
                .stale
                .iter()
                .map(|c| c.manifest.module.name.clone())
                .collect(),
            interrupted_operation: interrupted,
            operation_running,
            last_error,
            warnings,
            verdict,
            exit_code: verdict.exit_code(),
        }
    }

    /// Human-readable text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<15} {v}\n"));
        line("kernel", self.kernel_release.to_string());
        line("build-id", self.build_id.to_string());
        if !self.livepatch_supported {
            line(
                "livepatch",
                "not supported by this kernel (no /sys/kernel/livepatch)".into(),
            );
        }
        line("state", self.state.as_str().into());
        match &self.active {
            Some(a) => {
                line("active level", format!("{} (module {})", a.level, a.module));
                line("functions", a.functions.join(", "));
                let fixes: Vec<&str> = a.fixes.iter().map(|c| c.as_str()).collect();
                line(
                    "fixes",
                    if fixes.is_empty() {
                        "none listed".into()
                    } else {
                        fixes.join(", ")
                    },
                );
            }
            None => line("active level", "none".into()),
        }
        if let Some(t) = &self.transition {
            let what = match t.level {
                Some(l) => format!("level {l} ({})", t.patch),
                None => t.patch.clone(),
            };
            line("transition", format!("{what}, {}", t.direction));
        }
        line(
            "newest cached",
            match self.newest_cached_level {
                Some(l) => format!("level {l}"),
                None => "none for this build-id".into(),
            },
        );
        let foreign: Vec<String> = self
            .foreign_patches
            .iter()
            .map(|p| {
                let mut s = p.name.clone();
                if !p.enabled {
                    s.push_str(" (disabled)");
                }
                if p.transition {
                    s.push_str(" (in transition)");
                }
                s
            })
            .collect();
        line(
            "other patches",
            if foreign.is_empty() {
                "none".into()
            } else {
                foreign.join(", ")
            },
        );
        if !self.leftover_modules.is_empty() {
            let names: Vec<&str> = self.leftover_modules.iter().map(|m| m.as_str()).collect();
            line(
                "leftover",
                format!(
                    "{} (loaded, no longer a livepatch; the next apply/unload removes them)",
                    names.join(", ")
                ),
            );
        }
        if let Some(p) = &self.interrupted_operation {
            let level = p
                .level
                .map(|l| format!(" of level {l}"))
                .unwrap_or_default();
            line(
                "interrupted",
                format!(
                    "{}{level} by pid {} at unix time {} did not finish; the lines above are \
                     what the kernel has now",
                    p.op, p.pid, p.started_unix
                ),
            );
        }
        if self.operation_running {
            line(
                "running",
                "another patchbay operation is in progress".into(),
            );
        }
        if let Some(e) = &self.last_error {
            let first = e.message.lines().next().unwrap_or_default();
            line("last error", format!("(unix time {}) {first}", e.at_unix));
        }
        for w in &self.warnings {
            line("warning", w.clone());
        }
        let verdict = match self.verdict {
            Verdict::UpToDate => "up to date: the newest known level is active".to_owned(),
            Verdict::NoPatchApplied => {
                "no patch applied: bundles are known for this kernel, none is active".to_owned()
            }
            Verdict::NewerLevelAvailable => format!(
                "newer level available: level {} is cached",
                self.newest_cached_level
                    .map(|l| l.to_string())
                    .unwrap_or_default()
            ),
            Verdict::KernelUnsupported => {
                "kernel unsupported: no bundle is known for this build-id".to_owned()
            }
        };
        line("verdict", verdict);
        out
    }
}
