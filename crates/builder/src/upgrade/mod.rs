//! `patchbay-build upgrade`: bring a running kernel up to a newer Debian kernel's security
//! level in one cumulative live patch.
//!
//! Stages: `select` (the CVEs of the window, from the CVE database) → `fixes` (each CVE's
//! candidate fix cut from the two source trees, or the operator's patch; CVEs sharing files
//! grouped) → one diff-mode build per group (its outcome is each of its CVEs' outcome) → one
//! cumulative build of every group that built → `verify` (QEMU: the bundle applied by the
//! agent under a smoke workload; a group that breaks it is dropped and the bundle rebuilt) →
//! the report (`patchbay_core::UpgradeReport`).

mod blockers;
pub mod fixes;
mod prerequisites;
pub mod render;
mod rounds;
pub mod select;
pub mod verify;
pub mod watch;

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use patchbay_core::protocol::KernelsReply;
use patchbay_core::report::{DroppedGroup, ReportModule};
use patchbay_core::UpstreamVersion;
use patchbay_core::{BuildId, CveId, CveOutcome, CveStatus, PatchLevel, UpgradeReport};
use patchbay_exposure::CveDatabase;
use patchbay_kernels::Kernel;

use crate::diff::objects::Owner;
use crate::diff::pipeline::{self, DiffBuild, DiffBuildError};
use crate::diff::refusal::Category;
use fixes::{FileDiff, Group};
use select::{SelectedCve, Selection};
use verify::{Verdict, VerifyOptions, VerifyRun};

/// Where the fixes come from: an operator's patch for a CVE wins over the source diff.
#[derive(Debug, Clone, Default)]
pub struct FixSource {
    /// The diff of each CVE's files between the running kernel's own source and a newer
    /// Debian source tree (`linux-source-6.1` of `package_version`, unpacked at `tree`).
    pub newer: Option<NewerSource>,
    /// One patch per CVE, named by its id, in this directory (real stable commits). Its CVEs
    /// are built even when they are not in the window (the operator chose them).
    pub patches: Option<PathBuf>,
}

/// A newer Debian source tree.
#[derive(Debug, Clone)]
pub struct NewerSource {
    /// The Debian package version of `linux-source-6.1` the tree comes from (`6.1.176-1`).
    pub package_version: String,
    /// Where that source is unpacked (the directory holding the kernel's `Makefile`).
    pub tree: PathBuf,
}

/// An upgrade request.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The patch level the cumulative bundle carries (usually [`next_level`] on the server).
    pub level: PatchLevel,
    /// The upstream release whose fixes to bring.
    pub to: UpstreamVersion,
    /// CVEs scored below this CVSS base score (0.0–10.0) are left out, as are unscored ones
    /// unless named in `only`.
    pub min_cvss: f64,
    /// Only these CVEs (empty: every CVE of the window).
    pub only: Vec<CveId>,
    /// Where each CVE's fix comes from.
    pub fixes: FixSource,
    /// Where the bundle is written (only when one was built and, if asked, verified).
    pub output: PathBuf,
    /// `None`: not verified (`--no-verify`).
    pub verify: Option<VerifyOptions>,
    /// Keep per-group patches, bundles and logs here.
    pub work_dir: Option<PathBuf>,
    /// See [`DiffBuild::header_recompile_limit`].
    pub header_recompile_limit: usize,
}

/// Why an upgrade produced no bundle. Per-CVE failures are not errors: they are outcomes in
/// the report, and only [`UpgradeError::NothingBuilt`] says every CVE failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// CVEs named in [`Upgrade::only`] are not in the window (unknown, not affecting the
    /// running kernel, or fixed after `to`).
    #[error("CVEs named with --cves are not in the window:\n{}", list(.0))]
    NotInWindow(Vec<select::NotInWindow>),
    /// No group built, so there is no bundle; the report says why for each CVE.
    #[error(
        "none of the {selected} selected CVEs could be built into a live patch (see the report \
         above); nothing to publish"
    )]
    NothingBuilt {
        /// How many CVEs were selected.
        selected: usize,
        /// The full report (every CVE's outcome), for the caller to show or keep.
        report: Box<UpgradeReport>,
    },
    /// `diff -u` could not be run on a CVE's file between the two trees.
    #[error(transparent)]
    Cut(#[from] fixes::CutError),
    /// The cumulative build of the groups that built alone failed, and no group is to blame.
    #[error(transparent)]
    Build(#[from] DiffBuildError),
    /// The running kernel's files (source, headers, symbols) could not be had.
    #[error(transparent)]
    Kernel(#[from] patchbay_kernels::KernelError),
    /// The QEMU verification could not run (not: it ran and a group failed).
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    /// A file operation of the upgrade failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`read`, `write`, `create`, ...).
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn list(items: &[select::NotInWindow]) -> String {
    items
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let path = path.to_path_buf();
    move |source| UpgradeError::Io {
        action,
        path,
        source,
    }
}

/// Progress on stderr: one rewritten line on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
    started: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    fn step(&self, done: usize, total: usize, what: &str) {
        let elapsed = self.started.elapsed().as_secs();
        let line = format!(
            "[{done}/{total}, {}m{:02}s] {what}",
            elapsed / 60,
            elapsed % 60
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let shown: String = line.chars().take(110).collect();
            let _ = write!(err, "\r\x1b[2K{shown}");
        } else {
            let _ = writeln!(err, "upgrade: {line}");
        }
    }

    fn say(&self, what: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "upgrade: {what}");
    }
}

/// What became of one group.
#[derive(Debug, Clone)]
enum GroupOutcome {
    Built {
        /// `object:function` replaced or added.
        functions: Vec<String>,
        /// Module `__init`/`__exit` parts not applied (`module:function`).
        module_init: Vec<String>,
        /// Files dropped because this kernel's configuration does not build them.
        not_built: Vec<String>,
        /// Loadable modules the group patches.
        modules: Vec<String>,
        /// Sources beyond the CVEs' files, patched because the fix's header change alters
        /// them (and the newer source changed them too), or because they add a function the
        /// fix calls.
        pulled_in: Vec<String>,
    },
    NotApplicable {
        category: String,
        reason: String,
    },
    NotPatchable {
        category: String,
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct GroupBuild {
    group: Group,
    outcome: GroupOutcome,
    seconds: f64,
    /// The files whose diffs were cut from the newer tree (the fix's files, maybe headers).
    paths: BTreeSet<String>,
    /// The operator's patches the group used.
    given: Vec<PathBuf>,
    /// The group's own bundle (for isolating a verification failure).
    bundle: Option<PathBuf>,
    /// Regions of other files carried from the newer source because the fix needs them.
    prerequisites: prerequisites::Prerequisites,
}

/// Runs the upgrade: builds (and verifies) the cumulative bundle at `request.output`, returns
/// the report. Nothing is written at `output` unless a bundle was built (and passed).
pub fn run(
    kernel: &Kernel,
    db: &CveDatabase,
    request: &Upgrade,
) -> Result<UpgradeReport, UpgradeError> {
    let started_at = patchbay_core::clock::now_rfc3339();
    let progress = Progress::new();
    let from = kernel.upstream_version();
    let (_temp, work) = work_dir(request)?;
    // An agent the guest cannot run would fail every group's verification: said before any
    // build, as the harness's problem.
    if let Some(options) = &request.verify {
        verify::check_agent(&options.agent)?;
    }
    // Which CVEs, and where their fixes come from.
    let cves = select_cves(kernel, db, request)?;
    let notices = data_notices(db, from, request.to);
    for notice in &notices {
        progress.say(notice);
    }
    let groups = fixes::group(&fixes::files_of(&cves));
    progress.say(&format!(
        "{} CVEs ({} → {}, CVSS ≥ {}) in {} groups of shared files",
        cves.len(),
        from,
        request.to,
        request.min_cvss,
        groups.len()
    ));

    // One build per group, two at a time (see `build_groups`).
    let builds = build_groups(kernel, request, &cves, &groups, &work, &progress)?;

    // The cumulative bundle, verified; groups that break it are dropped and it is rebuilt.
    let rounds::Cumulative {
        module,
        mut verification,
        final_functions,
        dropped,
    } = rounds::Rounds {
        kernel,
        request,
        cves: &cves,
        builds: &builds,
        work: &work,
        progress: &progress,
    }
    .run()?;

    let mut outcomes = Vec::new();
    for c in &cves {
        outcomes.push(outcome(
            &builds,
            &dropped,
            &final_functions,
            c,
            module.is_some(),
        ));
    }
    if let Some(v) = &mut verification {
        v.dropped_groups = dropped.clone();
        if module.is_none() {
            v.passed = false;
        }
    }
    let report = UpgradeReport {
        kernel: kernel.release().clone(),
        build_id: kernel.build_id().clone(),
        from_version: from.to_string(),
        to_version: request.to.to_string(),
        fixes_from: fixes_from(kernel, request)?,
        level: request.level,
        min_cvss: request.min_cvss,
        started: started_at,
        elapsed_seconds: progress.started.elapsed().as_secs_f64(),
        module,
        verification,
        cves: outcomes,
        notices,
    };
    if report.module.is_none() {
        return Err(UpgradeError::NothingBuilt {
            selected: cves.len(),
            report: Box::new(report),
        });
    }
    Ok(report)
}

/// The directory for per-group patches, bundles and logs: the one asked for, or a temporary
/// one (removed when the guard is dropped).
fn work_dir(request: &Upgrade) -> Result<(Option<tempfile::TempDir>, PathBuf), UpgradeError> {
    if let Some(dir) = &request.work_dir {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        return Ok((None, dir.clone()));
    }
    let temp = tempfile::Builder::new()
        .prefix("patchbay-upgrade-")
        .tempdir()
        .map_err(io("create a temporary directory in", &std::env::temp_dir()))?;
    let path = temp.path().to_path_buf();
    Ok((Some(temp), path))
}

/// The CVEs of the window (or those named) with their files, and the operator's patches; files
/// mainline renamed resolved to their names in the running kernel's tree.
fn select_cves(
    kernel: &Kernel,
    db: &CveDatabase,
    request: &Upgrade,
) -> Result<Vec<SelectedCve>, UpgradeError> {
    let from = kernel.upstream_version();
    let mut cves: Vec<SelectedCve> = Vec::new();
    if request.fixes.newer.is_some() {
        let only: Vec<CveId> = match &request.fixes.patches {
            // CVEs named only because the operator has their patch are not looked up in the
            // window.
            Some(dir) if !request.only.is_empty() => request
                .only
                .iter()
                .filter(|c| fixes::operator_patch(dir, c.as_str()).is_none())
                .cloned()
                .collect(),
            _ => request.only.clone(),
        };
        if request.only.is_empty() || !only.is_empty() {
            cves = select::select(
                db,
                &Selection {
                    from,
                    to: request.to,
                    min_cvss: request.min_cvss,
                    only: &only,
                },
            )
            .map_err(UpgradeError::NotInWindow)?;
        }
    }
    if let Some(dir) = &request.fixes.patches {
        for given in patches_selection(db, dir, &request.only)? {
            match cves.iter_mut().find(|c| c.id == given.id) {
                Some(c) => {
                    c.files = given.files;
                    c.patch = given.patch;
                }
                None => cves.push(given),
            }
        }
    }
    cves.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(newer) = &request.fixes.newer {
        let (old, _pristine) = pristine_tree(kernel)?;
        let window = select::window_files(db, &from, &request.to);
        fixes::resolve_missing_files(&old, &newer.tree, &window, &mut cves);
    }
    Ok(cves)
}

/// Where the report says the fixes came from.
fn fixes_from(kernel: &Kernel, request: &Upgrade) -> Result<String, UpgradeError> {
    let source_package = patchbay_kernels::source_package_of(kernel.debian_release())?;
    Ok(match (&request.fixes.newer, &request.fixes.patches) {
        (Some(n), None) => format!("{source_package} {}", n.package_version),
        (Some(n), Some(dir)) => format!(
            "{source_package} {} and patches in {}",
            n.package_version,
            dir.display()
        ),
        (None, Some(dir)) => format!("patches in {}", dir.display()),
        (None, None) => "nothing".to_owned(),
    })
}

/// What the report must say about the CVE data itself: when the data names no fix of the
/// kernel's series after some release below `to`, the CVEs fixed in the rest of the window are
/// unknown (not absent), so the window is not shown as complete.
fn data_notices(db: &CveDatabase, from: UpstreamVersion, to: UpstreamVersion) -> Vec<String> {
    let series = patchbay_core::KernelSeries::from(from.series());
    if !db.covers(series) {
        return vec![format!(
            "the CVE database has no data for the {series} series (it covers {}): no CVE of \
             this window is known",
            db.covered_text()
        )];
    }
    match db.data_through(series) {
        Some(through) if through < to => vec![format!(
            "CVE data covers {series} releases up to {through}; CVEs fixed in {} … {to} are \
             not known to it and not in this report (the fixes of the newer source may still \
             close some)",
            next_release(through)
        )],
        _ => Vec::new(),
    }
}

fn next_release(v: UpstreamVersion) -> UpstreamVersion {
    UpstreamVersion::new(v.major, v.minor, v.patch.saturating_add(1))
}

/// The groups that replace any of `names` (functions tasks were seen sleeping in), each with
/// the names it replaces.
fn groups_replacing<'a, 'n>(
    keep: &[&'a GroupBuild],
    names: &'n [String],
) -> Vec<(&'a GroupBuild, Vec<&'n str>)> {
    keep.iter()
        .filter_map(|b| {
            let GroupOutcome::Built { functions, .. } = &b.outcome else {
                return None;
            };
            let hit: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|name| functions.iter().any(|f| replaces(f, name)))
                .collect();
            (!hit.is_empty()).then_some((*b, hit))
        })
        .collect()
}

/// Whether a group's `object:function` entry is the function a stack frame names (the frame
/// may name a GCC clone of it, or the group may patch the clone).
fn replaces(entry: &str, frame_function: &str) -> bool {
    let function = entry.split_once(':').map_or(entry, |(_, f)| f);
    let base = |name: &str| name.split_once('.').map_or(name, |(b, _)| b).to_owned();
    base(function) == base(frame_function)
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.ends_with(':'))
        .unwrap_or(text)
        .chars()
        .take(400)
        .collect()
}

fn group_ids(cves: &[SelectedCve], group: &Group) -> Vec<CveId> {
    group
        .cves
        .iter()
        .filter_map(|&c| cves.get(c).map(|c| c.id.clone()))
        .collect()
}

fn module_of(manifest: &patchbay_core::Manifest) -> ReportModule {
    ReportModule {
        name: manifest.module.name.to_string(),
        size: manifest.module.size,
        sha256: manifest.module.sha256.clone(),
    }
}

/// Moves the verified bundle to where the operator asked (atomically).
fn install(bundle: &Path, output: &Path) -> Result<(), UpgradeError> {
    let bytes = std::fs::read(bundle).map_err(io("read", bundle))?;
    patchbay_core::fsutil::write_atomic(output, &bytes).map_err(io("write", output))
}

/// Whether `path` is one of the operator's patches (not a cut one).
fn cves_patch(cves: &[SelectedCve], path: &Path) -> bool {
    cves.iter().any(|c| c.patch.as_deref() == Some(path))
}

/// CVE selection from an operator's patch directory: each patch file names its CVE.
fn patches_selection(
    db: &CveDatabase,
    dir: &Path,
    only: &[CveId],
) -> Result<Vec<SelectedCve>, UpgradeError> {
    let ids = fixes::operator_patch_ids(dir).map_err(io("list", dir))?;
    let mut chosen = Vec::new();
    for id in ids {
        let Ok(cve) = id.parse::<CveId>() else {
            continue;
        };
        if !only.is_empty() && !only.contains(&cve) {
            continue;
        }
        let Some(path) = fixes::operator_patch(dir, &id) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        let record = db.records.get(&id);
        chosen.push(SelectedCve {
            id: cve,
            title: record.map(|r| r.title.clone()).unwrap_or_default(),
            score: record.and_then(|r| r.score.value()),
            files: fixes::patch_files(&text),
            fixed_in: None,
            patch: Some(path),
            notes: Vec::new(),
        });
    }
    Ok(chosen)
}

/// The running kernel's source tree, for reading as it is (no build's diff applied) while the
/// guard is held: group builds patch that tree in place, one at a time, under its lock.
fn pristine_tree(kernel: &Kernel) -> Result<(PathBuf, patchbay_kernels::TreeLock), UpgradeError> {
    let tree = kernel.source_tree()?;
    let lock = tree.lock()?;
    Ok((tree.dir().to_path_buf(), lock))
}

/// The patches of a group, cut from the trees: the `.c` files, plus (`with_headers`) the
/// changed headers beside them.
fn cut_group(
    kernel: &Kernel,
    newer: &Path,
    files: &BTreeSet<String>,
    out: &Path,
) -> Result<Result<PathBuf, (CveStatus, String, String)>, UpgradeError> {
    let (old, _pristine) = pristine_tree(kernel)?;
    let mut text = String::new();
    for file in files {
        match fixes::file_diff(&old, newer, file)? {
            FileDiff::Same => {}
            FileDiff::Changed(diff) => text.push_str(&diff),
            // A header the fix includes that the newer tree added: carried as a new file.
            FileDiff::OnlyInNew if file.ends_with(".h") => {
                text.push_str(&fixes::new_file_diff(newer, file)?)
            }
            FileDiff::OnlyInNew => {
                return Ok(Err((
                    CveStatus::NotPatchable,
                    "new-file".into(),
                    format!(
                        "{file} is new in the newer source; a live patch cannot add a \
                         translation unit"
                    ),
                )))
            }
            FileDiff::OnlyInOld => {
                return Ok(Err((
                    CveStatus::NotPatchable,
                    "file-removed".into(),
                    format!("{file} is gone from the newer source"),
                )))
            }
            FileDiff::Missing => {
                return Ok(Err((
                    CveStatus::NotApplicable,
                    "not-in-source".into(),
                    format!("{file} is in neither source tree (another architecture's code?)"),
                )))
            }
        }
    }
    if text.is_empty() {
        return Ok(Err((
            CveStatus::NotApplicable,
            "already-in-source".into(),
            "the files the fix touches are the same in both sources (Debian already carries \
             the fix in the running kernel)"
                .into(),
        )));
    }
    std::fs::write(out, text).map_err(io("write", out))?;
    Ok(Ok(out.to_path_buf()))
}

/// How many groups build at once. A group build holds the source tree only while it patches
/// and compiles (about half of it); the other half (extracting, the module's kbuild run, the
/// klp rewrite) works on its own copies. Two builders keep both halves busy; more would only
/// queue for the tree.
const GROUP_BUILDERS: usize = 2;

/// Every group's build, in the groups' order; the first error (not a refusal: refusals are
/// outcomes) stops the builders that are still picking groups.
fn build_groups(
    kernel: &Kernel,
    request: &Upgrade,
    cves: &[SelectedCve],
    groups: &[Group],
    work: &Path,
    progress: &Progress,
) -> Result<Vec<GroupBuild>, UpgradeError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: std::sync::Mutex<Vec<Option<Result<GroupBuild, UpgradeError>>>> =
        std::sync::Mutex::new(groups.iter().map(|_| None).collect());
    let builder = || loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(group) = groups.get(i) else { break };
        if failed.load(Ordering::SeqCst) {
            break;
        }
        let names: Vec<&str> = group
            .cves
            .iter()
            .filter_map(|&c| cves.get(c).map(|c| c.id.as_str()))
            .collect();
        progress.step(
            i,
            groups.len(),
            &format!("group {} ({})", group.number, names.join(", ")),
        );
        let build = build_group(kernel, request, cves, group, work);
        match &build {
            Ok(build) => {
                let verdict = match &build.outcome {
                    GroupOutcome::Built { .. } => "built",
                    GroupOutcome::NotApplicable { category, .. }
                    | GroupOutcome::NotPatchable { category, .. } => category.as_str(),
                };
                progress.say(&format!(
                    "group {} ({}): {verdict} in {:.0} s",
                    group.number,
                    names.join(", "),
                    build.seconds
                ));
            }
            Err(_) => failed.store(true, Ordering::SeqCst),
        }
        // A builder that panicked cannot have left a slot half-written: slots are replaced whole.
        let mut slots = results.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(build);
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..GROUP_BUILDERS.min(groups.len()) {
            scope.spawn(builder);
        }
    });
    let slots = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut builds = Vec::with_capacity(groups.len());
    for slot in slots {
        match slot {
            Some(Ok(build)) => builds.push(build),
            Some(Err(e)) => return Err(e),
            // Not started because an earlier group failed: that failure is returned above.
            None => {}
        }
    }
    Ok(builds)
}

fn build_group(
    kernel: &Kernel,
    request: &Upgrade,
    cves: &[SelectedCve],
    group: &Group,
    work: &Path,
) -> Result<GroupBuild, UpgradeError> {
    let started = Instant::now();
    let done = |outcome, patches: Vec<PathBuf>, bundle, paths| GroupBuild {
        group: group.clone(),
        outcome,
        seconds: started.elapsed().as_secs_f64(),
        given: patches
            .iter()
            .filter(|p| cves_patch(cves, p))
            .cloned()
            .collect(),
        bundle,
        paths,
        prerequisites: Default::default(),
    };
    if group.files.is_empty() {
        return Ok(done(
            GroupOutcome::NotPatchable {
                category: "no-file-list".into(),
                reason: "the CVE record names no source files, so its fix cannot be cut; give \
                         its patch with --patches"
                    .into(),
            },
            Vec::new(),
            None,
            BTreeSet::new(),
        ));
    }
    let bundle = work.join(format!("group-{}.pbb", group.number));
    let mut files = group.files.clone();
    let mut not_built = Vec::new();
    let mut with_headers = false;
    // Sources added because the group's header change alters them (and the newer kernel
    // changed them too).
    let mut pulled_in: Vec<String> = Vec::new();
    // What the fix needs from other files of the newer source (found from compile errors).
    let mut carried = prerequisites::Prerequisites::default();
    for _attempt in 0..10 {
        let mut cut_paths = BTreeSet::new();
        // Operator patches first; the files they do not cover are cut from the newer tree.
        let given: Vec<PathBuf> = group
            .cves
            .iter()
            .filter_map(|&c| cves.get(c))
            .filter_map(|c| c.patch.clone())
            .collect();
        let mut covered = BTreeSet::new();
        for patch in &given {
            let text = std::fs::read_to_string(patch).map_err(io("read", patch))?;
            covered.extend(fixes::patch_files(&text));
        }
        let mut patches = given.clone();
        let rest: BTreeSet<String> = files.difference(&covered).cloned().collect();
        if !rest.is_empty() {
            let Some(newer) = &request.fixes.newer else {
                return Ok(done(
                    GroupOutcome::NotPatchable {
                        category: "no-patch-given".into(),
                        reason: format!(
                            "no patch in the --patches directory covers {} and no newer source \
                             was given to cut it from",
                            rest.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    },
                    Vec::new(),
                    None,
                    BTreeSet::new(),
                ));
            };
            let mut cut = rest.clone();
            if with_headers {
                let (old, _pristine) = pristine_tree(kernel)?;
                cut.extend(fixes::changed_headers_beside(&old, &newer.tree, &rest));
            }
            let out = work.join(format!("group-{}.patch", group.number));
            cut_paths.clone_from(&cut);
            match cut_group(kernel, &newer.tree, &cut, &out)? {
                Ok(path) => patches.push(path),
                Err((status, category, reason)) => {
                    let outcome = if status == CveStatus::NotApplicable {
                        GroupOutcome::NotApplicable { category, reason }
                    } else {
                        GroupOutcome::NotPatchable { category, reason }
                    };
                    return Ok(done(outcome, Vec::new(), None, BTreeSet::new()));
                }
            }
        }
        if let Some(newer) = &request.fixes.newer {
            let out = work.join(format!("group-{}.prerequisites.patch", group.number));
            patches.extend(prerequisites::write_partial(
                kernel,
                &newer.tree,
                &carried,
                &cut_paths,
                &out,
            )?);
        }
        let result = pipeline::build(
            kernel,
            &DiffBuild {
                level: request.level,
                fixes: Vec::new(),
                patches: patches.clone(),
                output: bundle.clone(),
                keep_work_dir: None,
                strip_level: Some(1),
                header_recompile_limit: request.header_recompile_limit,
            },
        );
        match result {
            Ok(report) => {
                // Objects the group's header change altered, patched as compiled: when the
                // newer source changed such a file too, its newer version belongs to the fix.
                if let Some(newer) = &request.fixes.newer {
                    let (old, _pristine) = pristine_tree(kernel)?;
                    let mut pulled = Vec::new();
                    for f in report.files.iter().filter(|f| f.altered_by.is_some()) {
                        if !files.contains(&f.source)
                            && matches!(
                                fixes::file_diff(&old, &newer.tree, &f.source)?,
                                FileDiff::Changed(_)
                            )
                        {
                            pulled.push(f.source.clone());
                        }
                    }
                    if !pulled.is_empty() {
                        pulled_in.extend(pulled.iter().cloned());
                        files.extend(pulled);
                        continue;
                    }
                }
                let mut functions = Vec::new();
                let mut module_init = Vec::new();
                let mut modules = BTreeSet::new();
                for f in &report.files {
                    let object = f.owner.object();
                    if let Owner::Module(m) = &f.owner {
                        modules.insert(m.to_string());
                        for name in &f.diff.changed_init {
                            module_init.push(format!("{m}:{name}"));
                        }
                    }
                    for name in f.diff.changed_functions.iter().chain(&f.diff.new_functions) {
                        functions.push(format!("{object}:{name}"));
                    }
                }
                pulled_in.extend(carried.describe());
                return Ok(GroupBuild {
                    prerequisites: carried,
                    ..done(
                        GroupOutcome::Built {
                            functions,
                            module_init,
                            not_built,
                            modules: modules.into_iter().collect(),
                            pulled_in,
                        },
                        patches,
                        Some(bundle),
                        cut_paths,
                    )
                });
            }
            // The machine's failure (a full disk) stops the run: no group is blamed for it.
            Err(err) if !rounds::a_group_can_be_blamed(&err) => return Err(err.into()),
            Err(err) => {
                let refusals = err.refusals();
                let unbuilt: Vec<String> = refusals
                    .iter()
                    .filter(|r| r.category == Category::NotBuiltInConfig)
                    .filter_map(|r| r.file.clone())
                    .collect();
                let tree_mode = request.fixes.newer.is_some();
                if !unbuilt.is_empty() && unbuilt.len() == refusals.len() {
                    let remaining: BTreeSet<String> = files
                        .iter()
                        .filter(|f| !unbuilt.contains(f) && f.ends_with(".c"))
                        .cloned()
                        .collect();
                    if remaining.is_empty() || !tree_mode {
                        let reasons: Vec<String> =
                            refusals.iter().map(|r| r.reason.clone()).collect();
                        return Ok(done(
                            GroupOutcome::NotApplicable {
                                category: Category::NotBuiltInConfig.as_str().into(),
                                reason: reasons.join("; "),
                            },
                            Vec::new(),
                            None,
                            BTreeSet::new(),
                        ));
                    }
                    // Code this configuration does not build needs no patch: build the rest.
                    not_built.extend(unbuilt.iter().cloned());
                    files.retain(|f| !unbuilt.contains(f));
                    continue;
                }
                if let Some(newer) = request
                    .fixes
                    .newer
                    .as_ref()
                    .filter(|_| err.category() == "compile-failed")
                {
                    let errors = err.to_string();
                    match prerequisites::after_compile_failure(
                        kernel,
                        &newer.tree,
                        &errors,
                        &carried,
                    )? {
                        prerequisites::Stage::Carry(found) => {
                            files.extend(found.whole.iter().cloned());
                            pulled_in.extend(found.whole.iter().cloned());
                            carried.extend(found);
                            continue;
                        }
                        prerequisites::Stage::Refuse(members) => {
                            return Ok(done(
                                GroupOutcome::NotPatchable {
                                    category: "new-struct-member".into(),
                                    reason: members.reason(),
                                },
                                Vec::new(),
                                None,
                                BTreeSet::new(),
                            ));
                        }
                        prerequisites::Stage::Nothing => {}
                    }
                }
                if err.category() == "compile-failed" && tree_mode && !with_headers {
                    with_headers = true;
                    continue;
                }
                // The header change alters other objects whose own source the newer kernel
                // changed too (often to match the header: they no longer compile without it):
                // their newer version belongs to the fix; patch them as well.
                if let Some(newer) = request.fixes.newer.as_ref().filter(|_| tree_mode) {
                    let (old, _pristine) = pristine_tree(kernel)?;
                    let mut pulled = Vec::new();
                    for unit in refusals
                        .iter()
                        .filter(|r| r.category == Category::HeaderChange)
                        .flat_map(|r| r.other_sources.iter())
                    {
                        if files.contains(unit) {
                            continue;
                        }
                        if let FileDiff::Changed(_) = fixes::file_diff(&old, &newer.tree, unit)? {
                            pulled.push(unit.clone());
                        }
                    }
                    // A function the fix calls that the running kernel never had: the newer
                    // source added it in another file of the fix's directories.
                    let dirs: BTreeSet<String> = files
                        .iter()
                        .map(|f| f.rsplit_once('/').map_or("", |(d, _)| d).to_owned())
                        .collect();
                    for symbol in refusals
                        .iter()
                        .filter(|r| r.category == Category::ModuleUsesUnexported)
                        .filter_map(|r| r.function.as_deref())
                    {
                        for file in fixes::files_introducing(&old, &newer.tree, &dirs, symbol) {
                            if !files.contains(&file) && !pulled.contains(&file) {
                                pulled.push(file);
                            }
                        }
                    }
                    if !pulled.is_empty() {
                        pulled_in.extend(pulled.iter().cloned());
                        files.extend(pulled);
                        continue;
                    }
                }
                // The fix compiles to the same objects in this configuration (code under an
                // option it does not set, a zero-initialisation the kernel's own
                // auto-var-init already does): the running kernel has nothing to change.
                if !refusals.is_empty()
                    && refusals
                        .iter()
                        .all(|r| r.category == Category::NoFunctionalChange)
                {
                    return Ok(done(
                        GroupOutcome::NotApplicable {
                            category: "same-code-in-this-build".into(),
                            reason: "compiled with this kernel's configuration and compiler, the \
                                     fixed source gives the same objects as the running one: \
                                     this build has nothing to patch"
                                .into(),
                        },
                        Vec::new(),
                        None,
                        BTreeSet::new(),
                    ));
                }
                let reason = match refusals.first() {
                    Some(r) => {
                        let place = match (&r.file, &r.function) {
                            (Some(f), Some(func)) => format!("{f}: {func}: "),
                            (Some(f), None) => format!("{f}: "),
                            _ => String::new(),
                        };
                        format!("{place}{}", r.reason)
                    }
                    None => first_line(&err.to_string()),
                };
                return Ok(done(
                    GroupOutcome::NotPatchable {
                        category: err.category().to_owned(),
                        reason,
                    },
                    Vec::new(),
                    None,
                    BTreeSet::new(),
                ));
            }
        }
    }
    Ok(done(
        GroupOutcome::NotPatchable {
            category: "too-many-attempts".into(),
            reason: "the group's files kept changing between attempts".into(),
        },
        Vec::new(),
        None,
        BTreeSet::new(),
    ))
}

/// The patches of every kept group as the cumulative build's input. In tree mode one patch
/// cut afresh over the union of the groups' files (groups that needed the same header share
/// its diff).
fn combined_patches(
    kernel: &Kernel,
    request: &Upgrade,
    keep: &[&GroupBuild],
    work: &Path,
) -> Result<Vec<PathBuf>, UpgradeError> {
    let mut patches: Vec<PathBuf> = keep.iter().flat_map(|b| b.given.iter().cloned()).collect();
    let paths: BTreeSet<String> = keep.iter().flat_map(|b| b.paths.clone()).collect();
    if let Some(newer) = &request.fixes.newer {
        let mut carried = prerequisites::Prerequisites::default();
        for b in keep {
            carried.extend(b.prerequisites.clone());
        }
        let out = work.join("cumulative.prerequisites.patch");
        patches.extend(prerequisites::write_partial(
            kernel,
            &newer.tree,
            &carried,
            &paths,
            &out,
        )?);
    }
    if let (Some(newer), false) = (&request.fixes.newer, paths.is_empty()) {
        let out = work.join("cumulative.patch");
        match cut_group(kernel, &newer.tree, &paths, &out)? {
            Ok(path) => patches.push(path),
            Err((_, _, reason)) => {
                return Err(UpgradeError::Io {
                    action: "cut the cumulative patch",
                    path: out,
                    source: std::io::Error::other(reason),
                })
            }
        }
    }
    Ok(patches)
}

/// A CVE's status from its group's build alone (before the cumulative build and verification).
fn cve_status(builds: &[GroupBuild], cve: &SelectedCve) -> CveStatus {
    let Some(build) = builds.iter().find(|b| {
        b.group.files.iter().any(|f| cve.files.contains(f))
            || (cve.files.is_empty() && b.group.files.is_empty())
    }) else {
        return CveStatus::NotPatchable;
    };
    match &build.outcome {
        GroupOutcome::Built { module_init, .. } if module_init.is_empty() => CveStatus::Patched,
        GroupOutcome::Built { .. } => CveStatus::Partial,
        GroupOutcome::NotApplicable { .. } => CveStatus::NotApplicable,
        GroupOutcome::NotPatchable { .. } => CveStatus::NotPatchable,
    }
}

fn outcome(
    builds: &[GroupBuild],
    dropped: &[DroppedGroup],
    final_functions: &[String],
    cve: &SelectedCve,
    bundle_built: bool,
) -> CveOutcome {
    let build = builds.iter().find(|b| {
        b.group.files.iter().any(|f| cve.files.contains(f))
            || (cve.files.is_empty() && b.group.files.is_empty())
    });
    let mut result = CveOutcome {
        cve: cve.id.clone(),
        score: cve.score,
        title: cve.title.clone(),
        status: CveStatus::NotPatchable,
        group: build.map_or(0, |b| b.group.number),
        files: cve.files.clone(),
        functions: Vec::new(),
        category: None,
        reason: None,
        seconds: build.map_or(0.0, |b| b.seconds),
    };
    let Some(build) = build else {
        result.category = Some("no-group".into());
        return result;
    };
    match &build.outcome {
        GroupOutcome::NotApplicable { category, reason } => {
            result.status = CveStatus::NotApplicable;
            result.category = Some(category.clone());
            result.reason = Some(reason.clone());
        }
        GroupOutcome::NotPatchable { category, reason } => {
            result.category = Some(category.clone());
            result.reason = Some(reason.clone());
        }
        GroupOutcome::Built {
            functions,
            module_init,
            not_built,
            pulled_in,
            ..
        } => {
            if let Some(d) = dropped.iter().find(|d| d.group == build.group.number) {
                result.category = Some(d.category.as_str().into());
                result.reason = Some(d.reason.clone());
            } else if !bundle_built {
                result.category = Some("cumulative-build-failed".into());
                result.reason = Some("no cumulative bundle could be built and verified".into());
            } else {
                // The group's functions, as far as the cumulative module replaces them.
                result.functions = functions
                    .iter()
                    .filter(|f| final_functions.is_empty() || final_functions.contains(f))
                    .cloned()
                    .collect();
                if module_init.is_empty() {
                    result.status = CveStatus::Patched;
                    let mut notes = Vec::new();
                    if !not_built.is_empty() {
                        notes.push(format!(
                            "not built in this configuration, so not patched: {}",
                            not_built.join(", ")
                        ));
                    }
                    if !pulled_in.is_empty() {
                        notes.push(format!(
                            "also patched, from the newer source, because the fix's header change \
                             alters them or the fix needs what they add (a helper, macro, \
                             constant, prototype): {}",
                            pulled_in.join(", ")
                        ));
                    }
                    if !notes.is_empty() {
                        result.reason = Some(notes.join("; "));
                    }
                } else {
                    result.status = CveStatus::Partial;
                    result.category = Some("module-init-not-applied".into());
                    result.reason = Some(format!(
                        "the fix's __init/__exit part of a loadable module ({}) is not applied: \
                         it runs again when the module is reloaded; reload it or reboot",
                        module_init.join(", ")
                    ));
                }
            }
        }
    }
    if !cve.notes.is_empty() {
        let notes = cve.notes.join("; ");
        result.reason = Some(match result.reason.take() {
            Some(reason) => format!("{reason}; {notes}"),
            None => notes,
        });
    }
    result
}

/// The first failure a verification run reported, if any.
fn failure_of(run: &VerifyRun) -> Option<String> {
    run.verdicts.iter().find_map(|(_, v)| match v {
        Verdict::Failed(why) => Some(why.clone()),
        Verdict::Passed => None,
    })
}

/// The level after the newest one `server` has for `build_id` (1 when it has none).
pub async fn next_level(
    server: &crate::publish::ServerAccess,
    build_id: &BuildId,
) -> Result<PatchLevel, String> {
    let url = &server.url;
    let base = url::Url::parse(url).map_err(|e| format!("server URL {url}: {e}"))?;
    let endpoint = base
        .join("api/v1/kernels")
        .map_err(|e| format!("server URL {url}: {e}"))?;
    let client = server.client(std::time::Duration::from_secs(60))?;
    let response = client
        .get(endpoint.clone())
        .bearer_auth(&server.token)
        .send()
        .await
        .map_err(|e| {
            format!(
                "GET {endpoint}: {}",
                crate::publish::ServerAccess::describe(&e)
            )
        })?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("GET {endpoint}: {status}: {body}"));
    }
    let reply: KernelsReply = response
        .json()
        .await
        .map_err(|e| format!("GET {endpoint}: {status}: {e}"))?;
    let newest = reply
        .kernels
        .iter()
        .filter(|k| k.build_id == *build_id)
        .flat_map(|k| &k.levels)
        .map(|l| l.level.get())
        .max()
        .unwrap_or(0);
    PatchLevel::try_from(newest.saturating_add(1)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a_stack_frame_names_the_function_a_group_replaces() {
        assert!(replaces("nfsd:nfsd_svc", "nfsd_svc"));
        assert!(replaces("vmlinux:worker_thread", "worker_thread.isra.0"));
        assert!(replaces("vmlinux:tcp_sendmsg.cold", "tcp_sendmsg"));
        assert!(!replaces("vmlinux:worker_thread", "worker"));
        assert!(!replaces("vmlinux:kthread", "kthread_worker_fn"));
    }

    fn built(number: u32, functions: &[&str]) -> GroupBuild {
        GroupBuild {
            group: Group {
                number,
                cves: vec![],
                files: BTreeSet::new(),
            },
            outcome: GroupOutcome::Built {
                functions: functions.iter().map(|f| (*f).to_owned()).collect(),
                module_init: vec![],
                not_built: vec![],
                modules: vec![],
                pulled_in: vec![],
            },
            seconds: 0.0,
            paths: BTreeSet::new(),
            given: vec![],
            prerequisites: Default::default(),
            bundle: None,
        }
    }

    #[test]
    fn the_groups_replacing_a_blocking_function_are_found_by_name() {
        let rfcomm = built(185, &["rfcomm:rfcomm_run", "rfcomm:rfcomm_dlc_open"]);
        let tcp = built(7, &["vmlinux:tcp_sendmsg"]);
        let workers = built(9, &["vmlinux:worker_thread", "vmlinux:rescuer_thread"]);
        let keep = [&rfcomm, &tcp, &workers];
        let names = ["rfcomm_run".to_owned(), "rescuer_thread.isra.0".to_owned()];
        let hits: Vec<(u32, Vec<&str>)> = groups_replacing(&keep, &names)
            .into_iter()
            .map(|(b, hit)| (b.group.number, hit))
            .collect();
        assert_eq!(
            hits,
            vec![
                (185, vec!["rfcomm_run"]),
                (9, vec!["rescuer_thread.isra.0"])
            ]
        );
        assert!(groups_replacing(&keep, &[]).is_empty());
    }

    /// The bundled data ends at 6.12.104: a 6.12 window past it says so; a 6.1 window inside
    /// its data does not; a series without data says that no CVE is known.
    #[test]
    fn windows_past_the_cve_data_carry_a_notice() {
        let db = patchbay_exposure::snapshot::embedded().unwrap();
        let v = |s: &str| s.parse::<UpstreamVersion>().unwrap();
        let notices = data_notices(&db, v("6.12.95"), v("6.12.107"));
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(
            notices[0].contains("up to 6.12.104") && notices[0].contains("6.12.105 … 6.12.107"),
            "{notices:?}"
        );
        assert!(data_notices(&db, v("6.12.95"), v("6.12.104")).is_empty());
        assert!(data_notices(&db, v("6.1.170"), v("6.1.176")).is_empty());
        let none = data_notices(&db, v("5.10.200"), v("5.10.210"));
        assert!(none[0].contains("no data for the 5.10 series"), "{none:?}");
    }
}
