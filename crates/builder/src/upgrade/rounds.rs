//! `upgrade`'s last stage: the groups that built, as one cumulative module, verified in QEMU.
//! A round that fails drops the groups it can blame and the next round builds again without
//! them, at most [`MAX_ROUNDS`] times:
//!
//! 1. groups replacing a function a verification of this kernel saw block a transition are
//!    dropped before the first boot (`blockers`);
//! 2. built alone but not together: the groups the refusals (or the error) name are dropped;
//! 3. verification: a stall naming no replaced function is run once more; a transition blocked
//!    by tasks sleeping in replaced functions drops the groups replacing them (and remembers
//!    the functions); any other failure boots each group alone and drops those that fail (or,
//!    when all pass alone, the last one).

use std::path::Path;

use patchbay_core::report::{DropCategory, DroppedGroup, ReportModule, Verification};
use patchbay_core::CveId;
use patchbay_kernels::Kernel;

use super::verify::{self, Candidate, Verdict, VerifyOptions, VerifyRun};
use super::{
    blockers, cve_status, first_line, group_ids, groups_replacing, install, module_of, GroupBuild,
    GroupOutcome, Progress, SelectedCve, Upgrade, UpgradeError,
};
use crate::diff::pipeline::{self, DiffBuild, DiffBuildError, DiffBuildReport};
use patchbay_core::CveStatus;

/// Rounds of build + verification before the upgrade gives up on a bundle.
const MAX_ROUNDS: u32 = 5;

/// What the rounds produced: the bundle installed at the request's output (when `module` is
/// set), the last verification, and the groups dropped on the way.
pub(super) struct Cumulative {
    pub module: Option<ReportModule>,
    pub verification: Option<Verification>,
    /// `object:function` the installed module replaces.
    pub final_functions: Vec<String>,
    pub dropped: Vec<DroppedGroup>,
}

/// Everything a round reads.
pub(super) struct Rounds<'a> {
    pub kernel: &'a Kernel,
    pub request: &'a Upgrade,
    pub cves: &'a [SelectedCve],
    pub builds: &'a [GroupBuild],
    pub work: &'a Path,
    pub progress: &'a Progress,
}

/// How one round ended.
enum Round {
    /// Installed (verified, or `--no-verify`).
    Installed(Option<Verification>),
    /// These groups are dropped; the next round builds without them.
    Drop(Vec<DroppedGroup>, Option<Verification>),
}

impl Rounds<'_> {
    /// The rounds, in order (see the module docs).
    pub fn run(&self) -> Result<Cumulative, UpgradeError> {
        let mut known_blockers = self.known_blockers();
        let mut dropped = known_blockers
            .as_ref()
            .map(|known| self.drop_known_blockers(known))
            .unwrap_or_default();
        let mut cumulative = Cumulative {
            module: None,
            verification: None,
            final_functions: Vec::new(),
            dropped: Vec::new(),
        };
        for round in 1..=MAX_ROUNDS {
            let keep: Vec<&GroupBuild> = self
                .builds
                .iter()
                .filter(|b| matches!(b.outcome, GroupOutcome::Built { .. }))
                .filter(|b| !dropped.iter().any(|d| d.group == b.group.number))
                .collect();
            if keep.is_empty() {
                break;
            }
            self.progress.say(&format!(
                "building the cumulative module from {} groups (round {round})",
                keep.len()
            ));
            let candidate = self.work.join("cumulative.pbb");
            let report = match self.build(&keep, &candidate)? {
                Ok(report) => report,
                Err(culprits) => {
                    dropped.extend(culprits);
                    continue;
                }
            };
            cumulative.final_functions = report
                .module
                .manifest
                .replaced_functions
                .iter()
                .map(|f| format!("{}:{}", f.object, f.function))
                .collect();
            let round = match &self.request.verify {
                None => Round::Installed(None),
                Some(options) => self.verify(
                    options,
                    &keep,
                    &report,
                    &candidate,
                    &dropped,
                    &mut known_blockers,
                )?,
            };
            match round {
                Round::Installed(verification) => {
                    install(&candidate, &self.request.output)?;
                    cumulative.module = Some(module_of(&report.module.manifest));
                    cumulative.verification = verification;
                    break;
                }
                Round::Drop(groups, verification) => {
                    dropped.extend(groups);
                    cumulative.verification = verification.map(|v| Verification {
                        dropped_groups: dropped.clone(),
                        ..v
                    });
                }
            }
        }
        cumulative.dropped = dropped;
        Ok(cumulative)
    }

    /// Functions a verification of this kernel build saw block a transition. Knowledge from
    /// verification is used by verification (`--no-verify` builds everything).
    fn known_blockers(&self) -> Option<blockers::KnownBlockers> {
        self.request.verify.as_ref()?;
        match blockers::KnownBlockers::load(self.kernel.dir()) {
            Ok(known) => Some(known),
            Err(e) => {
                self.progress.say(&format!("warning: {e}"));
                None
            }
        }
    }

    /// Groups that replace a known blocker, dropped before the first boot (a whole QEMU round
    /// saved).
    fn drop_known_blockers(&self, known: &blockers::KnownBlockers) -> Vec<DroppedGroup> {
        let built: Vec<&GroupBuild> = self
            .builds
            .iter()
            .filter(|b| matches!(b.outcome, GroupOutcome::Built { .. }))
            .collect();
        let names: Vec<String> = known.functions().map(|(f, _)| f.to_owned()).collect();
        let mut dropped = Vec::new();
        for (b, hit) in groups_replacing(&built, &names) {
            let seen: Vec<String> = known
                .functions()
                .filter(|(f, _)| hit.contains(f))
                .map(|(f, o)| format!("{f} on {}", o.seen))
                .collect();
            self.progress.say(&format!(
                "group {} replaces {}, which blocked the transition in an earlier verification \
                 of this kernel; dropped before verifying",
                b.group.number,
                hit.join(", ")
            ));
            dropped.push(DroppedGroup {
                group: b.group.number,
                cves: group_ids(self.cves, &b.group),
                category: DropCategory::TransitionBlocked,
                reason: format!(
                    "its live patch cannot take effect while tasks sleep in {}: a verification \
                     of this kernel build saw the transition blocked there ({}; remembered in \
                     {}, delete it to verify again)",
                    hit.join(", "),
                    seen.join(", "),
                    known.path().display()
                ),
            });
        }
        dropped
    }

    /// The cumulative module of `keep` at `candidate`; built alone but failed together: the
    /// groups the refusals (or, failing those, the error text) name, to drop.
    fn build(
        &self,
        keep: &[&GroupBuild],
        candidate: &Path,
    ) -> Result<Result<DiffBuildReport, Vec<DroppedGroup>>, UpgradeError> {
        let fixes: Vec<CveId> = keep
            .iter()
            .flat_map(|b| b.group.cves.iter())
            .filter_map(|&c| self.cves.get(c))
            .filter(|c| cve_status(self.builds, c) == CveStatus::Patched)
            .map(|c| c.id.clone())
            .collect();
        let patches = super::combined_patches(self.kernel, self.request, keep, self.work)?;
        let built = pipeline::build(
            self.kernel,
            &DiffBuild {
                level: self.request.level,
                fixes,
                patches,
                output: candidate.to_path_buf(),
                keep_work_dir: None,
                strip_level: Some(1),
                header_recompile_limit: self.request.header_recompile_limit,
            },
        );
        let err = match built {
            Ok(report) => return Ok(Ok(report)),
            Err(err) => err,
        };
        let text = err.to_string();
        if !a_group_can_be_blamed(&err) {
            return Err(err.into());
        }
        let named: Vec<&str> = err
            .refusals()
            .iter()
            .filter_map(|r| r.file.as_deref())
            .collect();
        let owns =
            |b: &GroupBuild, file: &str| b.group.files.contains(file) || b.paths.contains(file);
        let mut culprits: Vec<&GroupBuild> = keep
            .iter()
            .copied()
            .filter(|b| named.iter().any(|f| owns(b, f)))
            .collect();
        if culprits.is_empty() {
            culprits.extend(
                keep.iter()
                    .copied()
                    .find(|b| b.group.files.iter().any(|f| text.contains(f.as_str()))),
            );
        }
        if culprits.is_empty() {
            return Err(err.into());
        }
        Ok(Err(culprits
            .into_iter()
            .map(|b| DroppedGroup {
                group: b.group.number,
                cves: group_ids(self.cves, &b.group),
                category: DropCategory::CumulativeBuildFailed,
                reason: format!(
                    "builds alone but not with the other groups: {}",
                    first_line(&text)
                ),
            })
            .collect()))
    }

    /// One verification of the cumulative module, and what to drop when it fails.
    fn verify(
        &self,
        options: &VerifyOptions,
        keep: &[&GroupBuild],
        report: &DiffBuildReport,
        candidate: &Path,
        dropped: &[DroppedGroup],
        known_blockers: &mut Option<blockers::KnownBlockers>,
    ) -> Result<Round, UpgradeError> {
        let modules = report.module.manifest.patched_modules();
        self.progress.say(&format!(
            "verifying in QEMU: {} modules, smoke workload {} s",
            modules.len(),
            options.stress_seconds
        ));
        let cumulative = [Candidate {
            label: "cumulative".into(),
            bundle: candidate.to_path_buf(),
            modules,
        }];
        let (run, mut seconds) = self.verify_once_more_after_a_stall(options, &cumulative)?;
        for note in &run.notes {
            self.progress.say(&format!("note: {note}"));
        }
        let verification = |run: &VerifyRun, seconds: f64, passed: bool| Verification {
            passed,
            modules_loaded: run.modules_loaded.clone(),
            workloads: run.workloads.clone(),
            dropped_groups: dropped.to_vec(),
            seconds,
            notes: run.notes.clone(),
            apply_seconds: if passed {
                run.apply_seconds.first().map(|(_, s)| *s)
            } else {
                None
            },
        };
        let Some(failure) = super::failure_of(&run) else {
            return Ok(Round::Installed(Some(verification(&run, seconds, true))));
        };
        let blocked = self.drop_blocking(keep, &failure, known_blockers);
        if !blocked.is_empty() {
            return Ok(Round::Drop(
                blocked,
                Some(verification(&run, seconds, false)),
            ));
        }
        self.progress.say(&format!(
            "the cumulative bundle failed verification ({}); trying each group alone",
            first_line(&failure)
        ));
        let isolated = self.isolate(options, keep)?;
        seconds += isolated.seconds;
        let mut failing = self.failing_alone(keep, &isolated);
        if failing.is_empty() {
            // Each group passes alone but not together: drop the last one (the smallest step)
            // and try again, rather than offering a bundle that failed.
            failing.extend(keep.last().map(|b| DroppedGroup {
                group: b.group.number,
                cves: group_ids(self.cves, &b.group),
                category: DropCategory::VerificationFailed,
                reason: format!(
                    "every group passed alone but the cumulative bundle failed ({failure}); \
                     dropped to narrow it down"
                ),
            }));
        }
        Ok(Round::Drop(
            failing,
            Some(verification(&isolated, seconds, false)),
        ))
    }

    /// A transition that outlived its wait while no task sleeps in a replaced function is the
    /// slow TCG guest, not a group: one more run, before any group is blamed.
    fn verify_once_more_after_a_stall(
        &self,
        options: &VerifyOptions,
        cumulative: &[Candidate],
    ) -> Result<(VerifyRun, f64), UpgradeError> {
        let first = verify::verify(self.kernel, options, cumulative, self.work)?;
        let Some(stall) = super::failure_of(&first).filter(|f| verify::is_unattributed_stall(f))
        else {
            let seconds = first.seconds;
            return Ok((first, seconds));
        };
        self.progress.say(&format!(
            "the cumulative bundle's transition stalled without naming a function the patch \
             replaces ({}); verifying it once more",
            first_line(&stall)
        ));
        let again = verify::verify(self.kernel, options, cumulative, self.work)?;
        let seconds = first.seconds + again.seconds;
        let mut notes = again.notes.clone();
        notes.push(format!(
            "the first verification run stalled without naming a function the patch replaces \
             ({}); the run was repeated",
            first_line(&stall)
        ));
        Ok((VerifyRun { notes, ..again }, seconds))
    }

    /// A transition blocked by tasks sleeping in replaced functions: the agent named the
    /// functions; the groups that replace them (no isolation boot needed), remembered for the
    /// next run of this kernel.
    fn drop_blocking(
        &self,
        keep: &[&GroupBuild],
        failure: &str,
        known_blockers: &mut Option<blockers::KnownBlockers>,
    ) -> Vec<DroppedGroup> {
        let blocking = verify::blocking_functions(failure);
        let blockers = groups_replacing(keep, &blocking);
        if blockers.is_empty() {
            return Vec::new();
        }
        if let Some(known) = known_blockers {
            if let Err(e) = known.record(&blocking, &patchbay_core::clock::now_rfc3339()) {
                self.progress.say(&format!(
                    "warning: cannot remember the blocking functions in {}: {e}",
                    known.path().display()
                ));
            }
        }
        self.progress.say(&format!(
            "the cumulative bundle's transition was blocked by tasks sleeping in {}; dropping \
             the {} group(s) that replace them",
            blocking.join(", "),
            blockers.len()
        ));
        blockers
            .into_iter()
            .map(|(b, hit)| DroppedGroup {
                group: b.group.number,
                cves: group_ids(self.cves, &b.group),
                category: DropCategory::TransitionBlocked,
                reason: format!(
                    "its live patch cannot take effect while tasks sleep in {}: the transition \
                     over the loaded modules was blocked and reverted (a function a kernel \
                     thread never leaves needs a patch of its callers or a different fix)",
                    hit.join(", ")
                ),
            })
            .collect()
    }

    /// One boot that tries each kept group's own bundle.
    fn isolate(
        &self,
        options: &VerifyOptions,
        keep: &[&GroupBuild],
    ) -> Result<VerifyRun, UpgradeError> {
        let candidates: Vec<Candidate> = keep
            .iter()
            .filter_map(|b| {
                let GroupOutcome::Built { modules, .. } = &b.outcome else {
                    return None;
                };
                Some(Candidate {
                    label: candidate_label(b),
                    bundle: b.bundle.clone()?,
                    modules: modules.clone(),
                })
            })
            .collect();
        Ok(verify::verify(
            self.kernel,
            options,
            &candidates,
            self.work,
        )?)
    }

    /// The groups whose own bundle failed in the isolation boot.
    fn failing_alone(&self, keep: &[&GroupBuild], isolated: &VerifyRun) -> Vec<DroppedGroup> {
        isolated
            .verdicts
            .iter()
            .filter_map(|(label, verdict)| {
                let Verdict::Failed(why) = verdict else {
                    return None;
                };
                let b = keep.iter().find(|b| candidate_label(b) == *label)?;
                Some(DroppedGroup {
                    group: b.group.number,
                    cves: group_ids(self.cves, &b.group),
                    category: DropCategory::VerificationFailed,
                    reason: format!("broke the verification run: {}", first_line(why)),
                })
            })
            .collect()
    }
}

fn candidate_label(b: &GroupBuild) -> String {
    format!("group-{}", b.group.number)
}

/// Whether a failed build (a group's or the cumulative one) can be a group's doing. A failure of the machine (a full
/// disk, a file that cannot be written or read) is the run's: dropping the group whose file the
/// message happens to name would blame a fix for the disk.
pub(super) fn a_group_can_be_blamed(err: &DiffBuildError) -> bool {
    !matches!(err, DiffBuildError::Io { .. })
        && !err.to_string().contains("No space left on device")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::diff::refusal::{Category, Refusal, Refusals};

    #[test]
    fn a_full_disk_is_the_runs_failure_not_a_groups() {
        let io = DiffBuildError::Io {
            action: "write",
            path: "net/sctp/associola.o".into(),
            source: std::io::Error::other("No space left on device"),
        };
        assert!(!a_group_can_be_blamed(&io));
        let patch = DiffBuildError::Refused(Refusals(vec![Refusal::new(
            Category::PatchDoesNotApply,
            "the diff does not apply to this kernel's source: patch: **** write error : No \
             space left on device",
        )]));
        assert!(!a_group_can_be_blamed(&patch));
        let refusal = DiffBuildError::Refused(Refusals(vec![Refusal::in_file(
            Category::ChangedData,
            "net/sctp/associola.c",
            "the fix changes existing data",
        )]));
        assert!(a_group_can_be_blamed(&refusal));
    }
}
