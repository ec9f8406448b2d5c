//! Diff mode end to end: diff file → preflight → original and patched objects → object diff →
//! extracted object → typed markers for the changed functions and callbacks → the module
//! builder both modes share (`module_build::build_from_markers`, the extracted object linked
//! in) → bundle.

use std::path::{Path, PathBuf};

use patchbay_core::{CveId, PatchLevel};
use patchbay_kernels::Kernel;

use super::clones;
use super::elf::ElfView;
use super::engine::{self, DiffReport};
use super::extract;
use super::headers;
use super::include_index::IncludeIndex;
use super::kbuild_home::{KbuildHome, KbuildIndex};
use super::layouts;
use super::objects::{self, Owner, PatchedTree};
use super::patch_file::{self, ChangedFile};
use super::preflight::{self, KernelConfig, KernelLayout, PreflightProblem};
use super::refusal::{Category, Refusal, Refusals};
use crate::markers::{CallbackKind, CallbackMarker, Definition, Marker};
use crate::module_build::{self, BuildReport, ModuleBuild, ModuleParts};

/// A diff-mode build request.
#[derive(Debug, Clone)]
pub struct DiffBuild {
    /// The patch level the module carries.
    pub level: PatchLevel,
    /// The CVEs the level fixes, as the manifest records them (may be empty).
    pub fixes: Vec<CveId>,
    /// Unified diffs against the kernel's source (applied in order, as one change).
    pub patches: Vec<PathBuf>,
    /// Where the bundle is written (only when every stage succeeded).
    pub output: PathBuf,
    /// Keep the objects and the module's kbuild directory here (for debugging) instead of a
    /// temporary directory.
    pub keep_work_dir: Option<PathBuf>,
    /// `patch -p N`: how many leading path components to strip; `None` finds the one level at
    /// which the diff's paths name files of the kernel tree.
    pub strip_level: Option<usize>,
    /// Most translation units recompiled to prove a changed header alters nothing else (per
    /// header; more is refused as too wide). [`headers::RECOMPILE_LIMIT`] by default.
    pub header_recompile_limit: usize,
}

/// The change found in one translation unit.
#[derive(Debug, Clone)]
pub struct FileChangeReport {
    /// The `.c` file, relative to the kernel tree (`fs/proc/cmdline.c`).
    pub source: String,
    /// The binary of the running kernel its object is part of.
    pub owner: Owner,
    /// What changed in its object, function by function.
    pub diff: DiffReport,
    /// The callbacks declared with `patchbay-diff.h`: when each runs, and its function.
    pub callbacks: Vec<(CallbackKind, String)>,
    /// `Some(headers)` when the diff does not change this file itself but the change to these
    /// headers alters its object, which is patched too.
    pub altered_by: Option<String>,
}

/// What `patchbay-diff.h` macros declared in a patched object.
#[derive(Debug, Default)]
struct Annotations {
    callbacks: Vec<(CallbackKind, String)>,
    /// `(section suffix, function)` of callback sections livepatch has no field for.
    unknown_callbacks: Vec<(String, String)>,
    ignored: Vec<String>,
}

/// Reads the `.patchbay.*` sections: each entry is a relocation to a function.
fn annotations(patched: &ElfView) -> Annotations {
    let mut found = Annotations::default();
    for section in patched.sections.values() {
        let kind = if let Some(field) = section.name.strip_prefix(".patchbay.callbacks.") {
            Some(field.to_owned())
        } else if section.name == ".patchbay.ignore.functions" {
            None
        } else {
            continue;
        };
        for reloc in &section.relocs {
            let function = match &reloc.target {
                super::elf::Target::Symbol(i) => patched.symbol(*i).map(|s| s.name.clone()),
                super::elf::Target::Section(s) => {
                    patched.symbol_of_section(*s).map(|s| s.name.clone())
                }
            };
            let Some(function) = function else { continue };
            match &kind {
                Some(field) => match CallbackKind::from_field(field) {
                    Some(kind) => found.callbacks.push((kind, function)),
                    None => found.unknown_callbacks.push((field.clone(), function)),
                },
                None => found.ignored.push(function),
            }
        }
    }
    found
}

/// What a diff-mode build produced.
#[derive(Debug)]
pub struct DiffBuildReport {
    /// One report per changed `.c` file, sorted by path.
    pub files: Vec<FileChangeReport>,
    /// The module builder's report (manifest, livepatch relocations).
    pub module: BuildReport,
}

/// Why a diff did not become a bundle: refused (the diff is the problem, see
/// [`DiffBuildError::refusals`]) or failed (a tool, the kernel's data, the builder).
#[derive(Debug, thiserror::Error)]
pub enum DiffBuildError {
    /// The diff cannot be live-patched; each refusal says where and what to do instead.
    #[error("the diff cannot become a live patch:\n{0}")]
    Refused(Refusals),
    /// Compiling the objects, placing them, or patching the source tree failed.
    #[error(transparent)]
    Objects(#[from] objects::ObjectsError),
    /// A compiled object could not be read.
    #[error(transparent)]
    Elf(#[from] super::elf::ElfViewError),
    /// The changed code could not be cut out of the patched object.
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    /// The kernel's files (source, config, symbols) could not be had.
    #[error(transparent)]
    Kernel(#[from] patchbay_kernels::KernelError),
    /// vmlinux's IBT data (seal list, code) could not be read.
    #[error(transparent)]
    Ibt(#[from] super::ibt::IbtError),
    /// The module builder failed on the extracted code.
    #[error(transparent)]
    Module(#[from] module_build::BuildError),
    /// The struct layouts of an object could not be read.
    #[error(transparent)]
    Layouts(#[from] super::layouts::LayoutError),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`read`, `write`, `create`, ...).
        action: &'static str,
        /// The file or directory it was done to.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DiffBuildError {
    let path = path.display().to_string();
    move |source| DiffBuildError::Io {
        action,
        path,
        source,
    }
}

impl DiffBuildError {
    fn refused(refusals: Vec<Refusal>) -> Self {
        DiffBuildError::Refused(Refusals(refusals))
    }

    /// The refusals, when the build was refused (rather than failing).
    pub fn refusals(&self) -> &[Refusal] {
        match self {
            DiffBuildError::Refused(refusals) => &refusals.0,
            _ => &[],
        }
    }

    /// A stable name for what failed, for scripts that count failures (`--json`): a refusal's
    /// category, or what kind of step failed.
    pub fn category(&self) -> &'static str {
        match self {
            DiffBuildError::Refused(refusals) => refusals
                .0
                .first()
                .map_or("refused", |r| r.category.as_str()),
            DiffBuildError::Objects(objects::ObjectsError::Compile { .. }) => "compile-failed",
            DiffBuildError::Objects(_) => "objects",
            DiffBuildError::Elf(_) => "unreadable-object",
            DiffBuildError::Extract(_) => "extract",
            DiffBuildError::Kernel(_) | DiffBuildError::Ibt(_) => "kernel-data",
            DiffBuildError::Module(module_build::BuildError::Symbols(_)) => "unresolved-symbol",
            DiffBuildError::Module(module_build::BuildError::KlpElf(
                crate::klp_elf::KlpElfError::SpecialSectionReference { .. },
            )) => "loader-section-reference",
            DiffBuildError::Module(_) => "module-build",
            DiffBuildError::Layouts(_) => "layouts",
            DiffBuildError::Io { .. } => "io",
        }
    }
}

/// For each changed header whose change reaches other units only through the names of its
/// items ([`headers::names_reaching_units`]), the files of the running kernel's tree that name
/// one of them: only the units including those can compile differently.
fn headers_reached_by_name(
    tree: &patchbay_kernels::SourceTree,
    patch: &Path,
    headers: &[String],
    work: &Path,
) -> Result<
    std::collections::BTreeMap<String, Result<std::collections::BTreeSet<String>, String>>,
    DiffBuildError,
> {
    let read = |h: &String| std::fs::read_to_string(tree.dir().join(h)).unwrap_or_default();
    let old: Vec<String> = headers.iter().map(read).collect();
    let applied = PatchedTree::apply(tree, patch)?;
    let new: Vec<String> = headers.iter().map(read).collect();
    applied.restore()?;
    let mut reached = std::collections::BTreeMap::new();
    for ((header, old), new) in headers.iter().zip(&old).zip(&new) {
        let files = match headers::names_reaching_units(work, header, old, new) {
            Ok(names) => Ok(headers::files_naming(tree.dir(), &names)
                .map_err(io_err(
                    "search the names of the change to",
                    &tree.dir().join(header),
                ))?
                .into_iter()
                .collect()),
            Err(why) => Err(why),
        };
        reached.insert(header.clone(), files);
    }
    Ok(reached)
}

/// Builds a bundle from unified diffs of `kernel`'s source.
pub fn build(kernel: &Kernel, request: &DiffBuild) -> Result<DiffBuildReport, DiffBuildError> {
    // The diffs, as one combined patch file.
    let mut combined = String::new();
    for path in &request.patches {
        combined.push_str(&std::fs::read_to_string(path).map_err(io_err("read", path))?);
        if !combined.ends_with('\n') {
            combined.push('\n');
        }
    }
    let parsed = patch_file::parse(&combined).map_err(|r| DiffBuildError::refused(vec![r]))?;

    // Stage 1: preflight.
    let config_text =
        std::fs::read_to_string(kernel.config()).map_err(io_err("read", &kernel.config()))?;
    let config = KernelConfig::parse(&config_text);
    let layout = KernelLayout::from_config(&config);
    // What objtool added to a translation unit (a single-object module's) is regenerated by
    // the patch module's own objtool run when the kernel delays objtool to the linked module.
    let prepare = |view: ElfView| {
        if layout.objtool_on_linked_module {
            view.without_objtool_outputs()
        } else {
            view
        }
    };
    let mut problems = preflight::check_config(&config);
    problems.extend(preflight::check_compiler(&config));
    if !problems.is_empty() {
        return Err(DiffBuildError::refused(
            problems.iter().map(PreflightProblem::to_refusal).collect(),
        ));
    }

    let temp;
    let work: &Path = match &request.keep_work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
            dir
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("patchbay-diff-")
                .tempdir()
                .map_err(io_err(
                    "create a temporary directory in",
                    &std::env::temp_dir(),
                ))?;
            temp.path()
        }
    };

    // Stages 2 and 3: the source tree (which proves the diff's strip level), original and
    // patched objects.
    let tree = kernel.source_tree()?;
    // Held until stage 4 has read what it needs of the pristine tree: the later stages work
    // only on copies in `work` and on the kernel's headers, so another build (upgrade's next
    // group) can patch and compile in the tree while this one extracts and links its module.
    let exclusive = tree.lock()?;
    let exists = |path: &str| tree.dir().join(path).is_file();
    let resolved = patch_file::resolve(parsed, request.strip_level, &exists)
        .map_err(DiffBuildError::refused)?;
    let files = resolved.files.clone();
    let changed_paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let cache = objects::ObjectCache::new(kernel.dir().join("object-cache"));
    let pristine = objects::TreeState::pristine();
    let line_maps = resolved.line_maps();
    let patch_path = work.join("combined.patch");
    std::fs::write(&patch_path, resolved.normalized()).map_err(io_err("write", &patch_path))?;
    let problems = preflight::check_patch_applies(tree.dir(), &patch_path);
    if !problems.is_empty() {
        return Err(DiffBuildError::refused(
            problems.iter().map(PreflightProblem::to_refusal).collect(),
        ));
    }
    // Headers are compiled into the changed .c files; the other translation units that include
    // them are compiled too, to prove they do not change. A .c file kbuild does not build on its
    // own (`#include "rtmutex.c"` in rtmutex_api.c) is patched through the units including it.
    let (headers, files): (Vec<ChangedFile>, Vec<ChangedFile>) =
        files.into_iter().partition(|f| f.path.ends_with(".h"));
    let headers: Vec<String> = headers.into_iter().map(|h| h.path).collect();
    let kbuild =
        KbuildIndex::scan(tree.dir()).map_err(io_err("read the Makefiles of", tree.dir()))?;
    let included_only: Vec<&ChangedFile> = files
        .iter()
        .filter(|f| kbuild.home(&objects::object_path(&f.path), &config) == KbuildHome::Unknown)
        .collect();
    let includes = if headers.is_empty() && included_only.is_empty() {
        None
    } else {
        let cache = headers::include_index_cache(kernel.dir());
        Some(
            IncludeIndex::load_or_build(tree.dir(), &cache)
                .map_err(io_err("index the includes of", tree.dir()))?,
        )
    };
    let mut sources: std::collections::BTreeSet<String> =
        files.iter().map(|f| f.path.clone()).collect();
    if let Some(includes) = &includes {
        for file in &included_only {
            let units = headers::built_units(includes, &kbuild, &config, &file.path);
            if !units.is_empty() {
                sources.remove(&file.path);
                sources.extend(units);
            }
        }
    }
    let files: Vec<ChangedFile> = sources
        .iter()
        .map(|path| ChangedFile {
            path: path.clone(),
            change: patch_file::FileChange::Modified,
        })
        .collect();
    let reached_by_name = if headers.is_empty() {
        Default::default()
    } else {
        headers_reached_by_name(&tree, &patch_path, &headers, work)?
    };
    let header_units = match &includes {
        Some(includes) if !headers.is_empty() => headers::units_to_compare(
            includes,
            &kbuild,
            &config,
            &headers,
            &sources,
            &reached_by_name,
            request.header_recompile_limit,
        )
        .map_err(|r| DiffBuildError::refused(vec![r]))?,
        _ => Vec::new(),
    };
    // Code this configuration does not build is refused with kbuild's proof before anything is
    // compiled: compiling it fails for reasons that say nothing (another architecture's
    // headers, flags only its own build sets).
    let unbuilt: Vec<Refusal> = files
        .iter()
        .filter_map(|f| {
            let object = objects::object_path(&f.path);
            match kbuild.home(&object, &config) {
                KbuildHome::NotBuilt(proof) => Some(Refusal::in_file(
                    Category::NotBuiltInConfig,
                    &f.path,
                    format!(
                        "{object} is not built in this kernel's configuration, so the running \
                         kernel has none of its code to patch ({})",
                        proof.join("; ")
                    ),
                )),
                _ => None,
            }
        })
        .collect();
    if !unbuilt.is_empty() {
        return Err(DiffBuildError::refused(unbuilt));
    }
    let original_object = |source: &str| work.join("original").join(objects::object_path(source));
    let patched_object = |source: &str| work.join("patched").join(objects::object_path(source));
    let sources: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for unit in &sources {
        cache.compile(&tree, unit, &original_object(unit), &pristine)?;
    }
    // A unit that does not compile before the diff is not built in this configuration (the
    // include index and Makefiles can name too many); one that no longer compiles after it is
    // changed by the header as surely as one whose code differs.
    let mut header_units_built = Vec::new();
    for unit in &header_units {
        if cache
            .compile(&tree, unit, &original_object(unit), &pristine)
            .is_ok()
        {
            header_units_built.push(unit.as_str());
        }
    }
    let mut affected = Vec::new();
    let mut header_units_compiled = Vec::new();
    let applied = PatchedTree::apply(&tree, &patch_path)?;
    let mut patched_state =
        objects::TreeState::of_files(&tree, changed_paths.iter().map(String::as_str))?;
    if let Some(includes) = &includes {
        patched_state = patched_state.with_header_units(|h| includes.translation_units(h));
    }
    let compiled: Result<(), DiffBuildError> = sources.iter().try_for_each(|unit| {
        cache
            .compile(&tree, unit, &patched_object(unit), &patched_state)
            .map_err(DiffBuildError::from)
    });
    if compiled.is_ok() {
        for unit in &header_units_built {
            match cache.compile(&tree, unit, &patched_object(unit), &patched_state) {
                Ok(()) => header_units_compiled.push(*unit),
                Err(_) => affected.push((
                    (*unit).to_owned(),
                    "no longer compiles with the changed header".to_owned(),
                )),
            }
        }
    }
    applied.restore()?;
    compiled?;
    // Units whose objects the header change alters are patched too, as klp-build patches every
    // changed function of every object: stage 4's rules (the layout rule first, changed data)
    // decide for them as for the diff's own files.
    let mut altered: Vec<String> = Vec::new();
    // A unit the diff does not change sees its lines move only through the header: with one
    // changed header, its line map tells a moved `__LINE__` from a change.
    let header_lines = match headers.as_slice() {
        [header] => line_maps.get(header).cloned().unwrap_or_default(),
        _ => engine::LineMap::default(),
    };
    for unit in header_units_compiled {
        let read = |p: PathBuf| -> Result<ElfView, DiffBuildError> {
            let bytes = std::fs::read(&p).map_err(io_err("read", &p))?;
            Ok(prepare(ElfView::parse(unit, &bytes)?))
        };
        let diff = engine::compare_with_lines(
            &read(original_object(unit))?,
            &read(patched_object(unit))?,
            &header_lines,
        );
        if !diff.is_empty() || !diff.changed_init.is_empty() {
            altered.push(unit.to_owned());
        }
    }
    if !affected.is_empty() {
        return Err(DiffBuildError::refused(vec![
            headers::affected_objects_refusal(&headers, &affected),
        ]));
    }
    let altered_by = headers.join(", ");
    let files: Vec<ChangedFile> = files
        .into_iter()
        .chain(altered.iter().map(|unit| ChangedFile {
            path: unit.clone(),
            change: patch_file::FileChange::Modified,
        }))
        .collect();

    // Stage 4: what changed, and the refusals that depend on it.
    let mut reports = Vec::new();
    let mut refusals = Vec::new();
    // A changed layout is the cause of whatever else the code diff shows: these come first,
    // one per struct (every unit including its header shows the same change).
    let mut layout_changes: Vec<Refusal> = Vec::new();
    let mut views = Vec::new();
    for file in &files {
        let read = |p: PathBuf| -> Result<ElfView, DiffBuildError> {
            let bytes = std::fs::read(&p).map_err(io_err("read", &p))?;
            Ok(prepare(ElfView::parse(&file.path, &bytes)?))
        };
        let original = read(original_object(&file.path))?;
        let patched = read(patched_object(&file.path))?;
        let lines = match line_maps.get(&file.path) {
            Some(lines) => lines.clone(),
            None if altered.contains(&file.path) => header_lines.clone(),
            None => engine::LineMap::default(),
        };
        let (diff, callbacks, file_refusals) = analyse(&file.path, &original, &patched, &lines);
        if !diff.is_empty() {
            for refusal in layout_refusals(
                &file.path,
                &original_object(&file.path),
                &patched_object(&file.path),
            )? {
                if !layout_changes.iter().any(|r| r.reason == refusal.reason) {
                    layout_changes.push(refusal);
                }
            }
        }
        refusals.extend(file_refusals);
        let owner = match objects::owner(
            kernel,
            tree.dir(),
            &config,
            &file.path,
            &original_object(&file.path),
        ) {
            Ok(owner) => owner,
            Err(objects::ObjectsError::NotBuilt { object, proof }) => {
                refusals.push(Refusal::in_file(
                    Category::NotBuiltInConfig,
                    &file.path,
                    format!(
                        "{object} is not built in this kernel's configuration, so the running \
                         kernel has none of its code to patch ({proof})"
                    ),
                ));
                continue;
            }
            Err(e @ objects::ObjectsError::UnknownOwner { .. }) => {
                refusals.push(Refusal::in_file(
                    Category::UnknownOwner,
                    &file.path,
                    e.to_string(),
                ));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        reports.push(FileChangeReport {
            source: file.path.clone(),
            owner,
            diff,
            callbacks,
            altered_by: altered.contains(&file.path).then(|| altered_by.clone()),
        });
        views.push((original, patched));
    }
    if refusals.is_empty() && reports.iter().all(|r| r.diff.is_empty()) {
        let init_only: Vec<&FileChangeReport> = reports
            .iter()
            .filter(|r| !r.diff.changed_init.is_empty())
            .collect();
        if init_only.is_empty() {
            refusals.push(Refusal::new(
                Category::NoFunctionalChange,
                "the diff makes no functional change to any object (comments or formatting \
                 only?); there is nothing to live-patch",
            ));
        }
        for report in init_only {
            for name in &report.diff.changed_init {
                refusals.push(Refusal::in_function(
                    Category::InitOnly,
                    &report.source,
                    name,
                    "the fix changes only __init/__exit code, which already ran (or runs only \
                     at unload); a live patch cannot apply it: there is nothing left to patch",
                ));
            }
        }
    }
    drop(exclusive);
    layout_changes.append(&mut refusals);
    let refusals = layout_changes;
    if !refusals.is_empty() {
        return Err(DiffBuildError::refused(refusals));
    }

    // Stage 4b: extracted objects; stage 5/6: markers for the module build, as data.
    let mut linked_objects = Vec::new();
    let vmlinux_table = patchbay_kernels::SymbolTable::load(&kernel.system_map()?)?;
    let mut symbol_files: Option<patchbay_kernels::SymbolFiles> = None;
    let mut branch_targets: Option<super::ibt::BranchTargets> = None;
    // Refusals found while extracting: ambiguous names, IBT targets, static call keys.
    let mut ambiguous = Vec::new();
    let mut hints = crate::symbols::ResolutionHints::default();
    let exports = {
        let symvers = kernel.module_symvers();
        crate::symbols::Exports::parse(
            &std::fs::read_to_string(&symvers).map_err(io_err("read", &symvers))?,
        )
    };
    let mut markers = Vec::new();
    let mut callbacks = Vec::new();
    // Functions the patch adds in one changed file that another one calls (a helper the fix
    // added beside its users): the patch module defines them, nothing to look up.
    let patch_defines: std::collections::BTreeSet<String> = reports
        .iter()
        .flat_map(|r| r.diff.new_functions.iter().cloned())
        .collect();
    let mut replacement_symbols = std::collections::BTreeSet::new();
    for (index, (report, (original, patched))) in reports.iter().zip(&views).enumerate() {
        if report.diff.is_empty() {
            continue;
        }
        let export_as: std::collections::BTreeMap<String, String> = report
            .callbacks
            .iter()
            .map(|(_, function)| (function.clone(), callback_symbol(function)))
            .collect();
        let module_target = matches!(report.owner, Owner::Module(_));
        // The file name the compiler records in FILE symbols: the source's base name.
        let file_name = report
            .source
            .rsplit('/')
            .next()
            .unwrap_or(&report.source)
            .to_owned();
        let module_table = match &report.owner {
            Owner::Module(module) => match kernel.find_module(module.as_str())? {
                Some(path) => Some(patchbay_kernels::SymbolTable::from_module_ko(
                    &patchbay_kernels::read_module(&path)?,
                )?),
                None => None,
            },
            Owner::Vmlinux => None,
        };
        // The original object's functions: which copy of a name the module repeats is this
        // object's (`symbols::module_sympos`).
        let object_functions: std::collections::BTreeSet<String> = original
            .symbols
            .iter()
            .filter(|s| s.is_function())
            .map(|s| s.name.clone())
            .collect();
        let mut diff = report.diff.clone();
        let mut extracted =
            extract::extract_for(original, patched, &diff, &export_as, module_target, layout)?;
        // A local function the kept code only calls, whose name repeats in the running binary
        // (a header's static inline emitted out of line in several files) so that a reference
        // cannot say which one is meant: the patch carries its own copy instead. Code without
        // state behaves the same wherever it lives; its address is never taken.
        loop {
            let mut copies = Vec::new();
            for name in &extracted.local_external {
                let repeats = match &module_table {
                    Some(table) => table.lookup(name).len() > 1,
                    None => {
                        vmlinux_table.lookup(name).len() > 1 && {
                            if symbol_files.is_none() {
                                symbol_files = Some(kernel.symbol_files()?);
                            }
                            symbol_files
                                .as_ref()
                                .and_then(|f| f.sympos(&vmlinux_table, name, &file_name))
                                .is_none()
                        }
                    }
                };
                if !repeats {
                    continue;
                }
                if let Some(local) = engine::only_called_local_function(patched, &diff, name) {
                    if !diff.new_functions.contains(&local) {
                        copies.push(local);
                    }
                }
            }
            if copies.is_empty() {
                break;
            }
            diff.new_functions.extend(copies);
            extracted =
                extract::extract_for(original, patched, &diff, &export_as, module_target, layout)?;
        }
        if layout.ibt {
            let mut module_targets: Option<super::ibt::ModuleBranchTargets> = None;
            let view = ElfView::parse(&report.source, &extracted.object)?;
            for name in super::ibt::address_taking_references(&view) {
                if patch_defines.contains(&name) {
                    continue;
                }
                let functions: Vec<u64> = vmlinux_table
                    .lookup(&name)
                    .iter()
                    .filter(|e| matches!(e.kind, 't' | 'T' | 'w' | 'W'))
                    .map(|e| e.address)
                    .collect();
                if let (Owner::Module(module), true) = (&report.owner, functions.is_empty()) {
                    // The patched module's own function, sealed by objtool when it was built.
                    if module_targets.is_none() {
                        if let Some(path) = kernel.find_module(module.as_str())? {
                            module_targets = Some(super::ibt::ModuleBranchTargets::from_module(
                                &patchbay_kernels::read_module(&path)?,
                            )?);
                        }
                    }
                    let problem = module_targets.as_ref().and_then(|t| t.problem(&name));
                    if let Some(problem) = problem {
                        ambiguous.push(sealed_address_refusal(
                            &report.source,
                            &name,
                            &format!("`{name}` of module {module}"),
                            problem.describe(),
                            "the module",
                        ));
                    }
                    continue;
                }
                if functions.is_empty() {
                    continue;
                }
                if branch_targets.is_none() {
                    let path = kernel.vmlinux();
                    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
                    branch_targets = Some(super::ibt::BranchTargets::from_vmlinux(&bytes)?);
                }
                let problem = functions
                    .iter()
                    .find_map(|address| branch_targets.as_ref().and_then(|t| t.problem(*address)));
                if let Some(problem) = problem {
                    ambiguous.push(sealed_address_refusal(
                        &report.source,
                        &name,
                        &format!("vmlinux's `{name}`"),
                        problem.describe(),
                        "the kernel",
                    ));
                }
            }
        }
        if let Owner::Module(module) = &report.owner {
            refuse_unexported_vmlinux_symbols(
                kernel,
                module.as_str(),
                &report.source,
                &extracted,
                &patch_defines,
            )?;
        }
        let path = work.join(format!("extracted{index}.o"));
        std::fs::write(&path, &extracted.object).map_err(io_err("write", &path))?;
        qualify_repeated_replacements(
            &path,
            &mut extracted.replaced,
            &mut replacement_symbols,
            index,
        )?;
        if let Owner::Module(module) = &report.owner {
            // Another module's exports used here are reached through livepatch symbols
            // relocated with this module (so the patch loads before either module is), under
            // names of their own: two patched modules may use the same export.
            let mut renames =
                foreign_export_renames(&exports, module.as_str(), &extracted.external);
            // The module's own symbols the kept code uses, when the module has one of that
            // name, are named per module too: in a cumulative patch another patched object may
            // have one of the same name (a header's static inline emitted out of line, or
            // cifs's and ksmbd's `id_to_sid`).
            if let Some(table) = &module_table {
                // Locals, and globals the kernel does not export (a module's code can reach
                // no other object's): the module's own.
                let unexported = extracted
                    .external
                    .iter()
                    .filter(|name| !exports.contains(name));
                for name in extracted.local_external.iter().chain(unexported) {
                    if table.lookup(name).len() == 1 {
                        renames.insert(
                            name.clone(),
                            (
                                module_local_symbol(&module.to_string(), name),
                                module.to_string(),
                            ),
                        );
                    }
                }
            }
            // A static call site objtool makes for the module names its key; a key that is not
            // vmlinux's could be reached only through a livepatch relocation written after the
            // loader used the site. A trampoline renamed above is no static call to objtool:
            // the kept code calls through it, and it follows its key all the same.
            for key in &extracted.static_call_keys {
                let trampoline = key.replacen("__SCK__", "__SCT__", 1);
                if vmlinux_table.lookup(key).is_empty() && !renames.contains_key(&trampoline) {
                    ambiguous.push(Refusal::in_function(
                        Category::StaticCallModuleKey,
                        &report.source,
                        key,
                        format!(
                            "the fixed code of module {module} calls the static call \
                             `{trampoline}`, whose key is not vmlinux's; the patch's static call \
                             site would name the key through a livepatch relocation that is \
                             written only after the module loader used the site: call the \
                             function behind it another way"
                        ),
                    ));
                }
            }
            if !renames.is_empty() {
                objects::redefine_symbols(&path, &renames)?;
                for (name, (alias, owner)) in renames {
                    let relocated_in = (owner != module.as_str()).then(|| module.to_string());
                    hints.renamed_references.insert(
                        alias,
                        crate::klp_elf::KlpTarget {
                            object: owner,
                            symbol: name,
                            sympos: 0,
                            relocated_in,
                        },
                    );
                }
            }
        }
        linked_objects.push(path);
        let object = report.owner.object();
        match &report.owner {
            Owner::Vmlinux => {
                for name in &extracted.local_external {
                    hints.file_hints.insert(name.clone(), file_name.clone());
                }
            }
            Owner::Module(module) => {
                for name in &extracted.local_external {
                    let renamed = hints
                        .renamed_references
                        .values()
                        .any(|t| t.symbol == *name && t.object == module.as_str());
                    if !renamed {
                        hints.module_locals.insert(name.clone(), module.clone());
                        if let Some(position) = module_table
                            .as_ref()
                            .filter(|t| t.lookup(name).len() > 1)
                            .and_then(|t| crate::symbols::module_sympos(t, name, &object_functions))
                        {
                            hints.module_local_positions.insert(name.clone(), position);
                        }
                    }
                }
            }
        }
        for (old, new) in &extracted.replaced {
            // The kernel's name, whatever it is (a GCC clone's `foo.isra.0` too): a typed
            // marker is never spelled in C.
            let marker = |sympos: u32| Marker {
                object: object.clone(),
                old_function: old.clone(),
                new_function: new.clone(),
                sympos,
                defined: Definition::Linked,
            };
            let repeats = report.owner == Owner::Vmlinux && vmlinux_table.lookup(old).len() > 1;
            let module_copies = module_table.as_ref().map_or(0, |t| {
                t.lookup(old)
                    .iter()
                    .filter(|e| matches!(e.kind, 't' | 'T' | 'w' | 'W'))
                    .count()
            });
            // The position among same-named functions, or why it cannot be told.
            let (position, ambiguity) = match &module_table {
                // Two `static` functions of one name in two files of the module: the copy in
                // this object's block of the module's addresses.
                Some(table) if module_copies > 1 => (
                    crate::symbols::module_sympos(table, old, &object_functions),
                    format!(
                        "defined {module_copies} times in {object} and the module's layout does \
                         not tell which copy {file_name} compiled to; name it with \
                         PATCHBAY_REPLACE_SYMPOS"
                    ),
                ),
                _ if !repeats => (Some(0), String::new()),
                _ => {
                    if symbol_files.is_none() {
                        symbol_files = Some(kernel.symbol_files()?);
                    }
                    (
                        symbol_files
                            .as_ref()
                            .and_then(|f| f.sympos(&vmlinux_table, old, &file_name)),
                        format!(
                            "defined several times in vmlinux and none (or more than one) comes \
                             from {file_name}; cannot tell which one to replace"
                        ),
                    )
                }
            };
            match position {
                Some(position) => markers.push(marker(position)),
                None => ambiguous.push(Refusal::in_function(
                    Category::AmbiguousSymbol,
                    &report.source,
                    old,
                    ambiguity,
                )),
            }
        }
        for (kind, function) in &report.callbacks {
            callbacks.push(CallbackMarker {
                object: object.clone(),
                kind: *kind,
                function: callback_symbol(function),
                defined: Definition::Linked,
            });
        }
    }
    if !ambiguous.is_empty() {
        return Err(DiffBuildError::refused(ambiguous));
    }
    // In the order source mode's markers come in (by object, then function), so that the two
    // modes' tables and manifests list them alike.
    markers.sort();
    callbacks.sort();
    let module = module_build::build_from_markers(
        kernel,
        &ModuleBuild {
            level: request.level,
            fixes: request.fixes.clone(),
            extra_objects: Vec::new(),
            symbols_override: None,
            output: request.output.clone(),
            keep_work_dir: request.keep_work_dir.as_ref().map(|d| d.join("module")),
        },
        &ModuleParts {
            markers,
            callbacks,
            c_sources: Vec::new(),
            linked_objects,
            hints,
        },
    )?;
    Ok(DiffBuildReport {
        files: reports,
        module,
    })
}

/// Renames each replacement symbol of the extracted object at `path` that an earlier object
/// of the patch already defines (`__patchbay_new__foo` → `__patchbay_new__foo__3`, its
/// `.cold` parts with it), and adds the object's replacement symbols to `taken`. They are
/// global in the patch module, and two objects may replace functions of one name: statics of
/// two files, or of two modules.
fn qualify_repeated_replacements(
    path: &Path,
    replaced: &mut [(String, String)],
    taken: &mut std::collections::BTreeSet<String>,
    index: usize,
) -> Result<(), DiffBuildError> {
    let mut renames = std::collections::BTreeMap::new();
    for (_, new) in replaced.iter_mut() {
        if taken.contains(new.as_str()) {
            let qualified = format!("{new}__{index}");
            renames.insert(new.clone(), (qualified.clone(), String::new()));
            *new = qualified;
        }
        taken.insert(new.clone());
    }
    if renames.is_empty() {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    let view = ElfView::parse(&path.display().to_string(), &bytes)?;
    let parts: Vec<(String, String)> = view
        .symbols
        .iter()
        .filter_map(|symbol| {
            let (parent, rest) = symbol.name.split_once('.')?;
            let (qualified, _) = renames.get(parent)?;
            Some((symbol.name.clone(), format!("{qualified}.{rest}")))
        })
        .collect();
    for (part, qualified) in parts {
        renames.insert(part, (qualified, String::new()));
    }
    objects::redefine_symbols(path, &renames)?;
    Ok(())
}

/// The name the patch for `module` gives a symbol it reaches through a livepatch relocation
/// (the module's own local, or another module's export) in the extracted object, so that the
/// module loader never resolves it by name.
fn module_local_symbol(module: &str, name: &str) -> String {
    format!("__patchbay_{module}__{name}")
}

/// The global name a `patchbay-diff.h` callback gets in the extracted object, for the
/// generated tables to reach it (it is `static` in the fixed source).
fn callback_symbol(function: &str) -> String {
    format!("__patchbay_cb__{function}")
}

/// For code patching `module`: each external name exported by a module other than `module`
/// itself → (the name it gets in the extracted object, the exporting module).
fn foreign_export_renames(
    exports: &crate::symbols::Exports,
    module: &str,
    external: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeMap<String, (String, String)> {
    external
        .iter()
        .filter_map(|name| {
            let exporter = exports.exporter(name)?;
            (exporter != "vmlinux" && exporter != module).then(|| {
                (
                    name.clone(),
                    (module_local_symbol(module, name), exporter.to_owned()),
                )
            })
        })
        .collect()
}

/// A module's replacement code may use vmlinux only through exports: livepatch relocations
/// against vmlinux from module code are resolved when the patch loads, independently of the
/// module's own special sections, and kpatch-style tools refuse them for that reason.
fn refuse_unexported_vmlinux_symbols(
    kernel: &Kernel,
    module: &str,
    source: &str,
    extracted: &extract::Extracted,
    patch_defines: &std::collections::BTreeSet<String>,
) -> Result<(), DiffBuildError> {
    let symvers = kernel.module_symvers();
    let exports = crate::symbols::Exports::parse(
        &std::fs::read_to_string(&symvers).map_err(io_err("read", &symvers))?,
    );
    let module_symbols = match kernel.find_module(module)? {
        Some(path) => {
            patchbay_kernels::SymbolTable::from_module_ko(&patchbay_kernels::read_module(&path)?)?
        }
        None => patchbay_kernels::SymbolTable::parse("")?,
    };
    let offending: Vec<&String> = extracted
        .external
        .iter()
        .filter(|name| {
            !exports.contains(name)
                && module_symbols.lookup(name).is_empty()
                && !patch_defines.contains(*name)
        })
        .collect();
    if offending.is_empty() {
        return Ok(());
    }
    Err(DiffBuildError::refused(
        offending
            .into_iter()
            .map(|name| {
                Refusal::in_function(
                    Category::ModuleUsesUnexported,
                    source,
                    name,
                    format!(
                        "the fix makes module {module} use this symbol, which vmlinux does not \
                         export; a module's live patch may only use exported vmlinux symbols: \
                         reach it through an exported function instead"
                    ),
                )
            })
            .collect(),
    ))
}

/// Stage 4's layout rule (`layouts`): one refusal per struct or union of the unit that exists
/// before the diff and is laid out differently after it.
fn layout_refusals(
    source: &str,
    original: &Path,
    patched: &Path,
) -> Result<Vec<Refusal>, DiffBuildError> {
    let before = layouts::of_object(original)?;
    let after = layouts::of_object(patched)?;
    Ok(layouts::changes(&before, &after)
        .into_iter()
        .map(|change| {
            let consequence = match change.kind {
                layouts::ChangeKind::Layout => {
                    "objects allocated before the patch keep the old layout, so the replaced \
                     code would read and write the wrong bytes"
                }
                layouts::ChangeKind::MemberType => {
                    "the code the patch does not replace, and the values already stored, keep \
                     the old type"
                }
            };
            Refusal::in_file(
                Category::ChangedStructLayout,
                source,
                format!(
                    "`{}` {}: {consequence}; keep the struct as it is (a shadow variable, \
                     `klp_shadow_*`, for a new member) or apply this fix with a reboot",
                    change.aggregate, change.what
                ),
            )
        })
        .collect())
}

/// Stage 4 for one translation unit: what changed between the original and the patched object
/// after the author's annotations, with the callbacks declared and every refusal that depends
/// only on this object.
pub(crate) fn analyse(
    source: &str,
    original: &ElfView,
    patched: &ElfView,
    lines: &engine::LineMap,
) -> (DiffReport, Vec<(CallbackKind, String)>, Vec<Refusal>) {
    let mut refusals = Vec::new();
    let mut diff = engine::compare_with_lines(original, patched, lines);
    let annotations = annotations(patched);
    diff.changed_functions
        .retain(|f| !annotations.ignored.contains(f));
    for (field, function) in &annotations.unknown_callbacks {
        refusals.push(Refusal::in_function(
            Category::UnknownCallback,
            source,
            function,
            format!(
                "declared as a `{field}` callback, which livepatch does not have (use the \
                 PATCHBAY_DIFF_* macros of patchbay-diff.h)"
            ),
        ));
    }
    // A callback is the patch's own code, never a replacement of the running kernel's.
    let callback_functions = annotations
        .callbacks
        .iter()
        .map(|(_, function)| function)
        .chain(
            annotations
                .unknown_callbacks
                .iter()
                .map(|(_, function)| function),
        );
    for function in callback_functions {
        diff.changed_functions.retain(|f| f != function);
        if !diff.new_functions.contains(function) {
            diff.new_functions.push(function.clone());
        }
    }
    let clone_plan = clones::plan(original, &mut diff);
    if let Err(function) =
        engine::route_around(original, patched, &mut diff, &clone_plan.via_callers)
    {
        let (category, why) = if clones::is_clone(&function) {
            (
                Category::ClonedFunction,
                "a GCC clone whose calling convention may have changed, and no caller in this \
                 file that could be replaced instead",
            )
        } else {
            (
                Category::UntraceableFunction,
                "no ftrace entry (notrace or inline) and no caller in this file that could be \
                 replaced instead; move the fix into a traceable function",
            )
        };
        refusals.push(Refusal::in_function(category, source, &function, why));
    }
    clones::carry_cold_parts(patched, &mut diff);
    for name in &diff.changed_data {
        refusals.push(Refusal::in_function(
            Category::ChangedData,
            source,
            name,
            "the fix changes existing data; a live patch cannot change data the running kernel \
             already holds: use a shadow variable or a callback instead",
        ));
    }
    for (function, target) in engine::init_references(patched, &diff) {
        refusals.push(Refusal::in_function(
            Category::InitReference,
            source,
            &function,
            format!(
                "the fixed code refers to `{target}`, __init/__exit code or data the running \
                 kernel has freed (or never loads); keep runtime code off init sections"
            ),
        ));
    }
    for (section, function) in extract::new_functions_in_init_time_data(patched, &diff) {
        refusals.push(Refusal::in_function(
            Category::InitOnly,
            source,
            &function,
            format!(
                "the fix puts this new function into {section}, data the running kernel read \
                 once at boot or module load and freed: a live patch cannot install it there"
            ),
        ));
    }
    for section in extract::unknown_special_sections(patched, &diff) {
        refusals.push(Refusal::in_file(
            Category::UnknownSpecialSection,
            source,
            format!(
                "changed code is described by section {section}, which this builder does not \
                 know how to carry"
            ),
        ));
    }
    (diff, annotations.callbacks, refusals)
}

/// The refusal of kept code that takes the address of `what` (a running-kernel function that
/// is sealed or lacks `ENDBR64`: `why`), whose `owner` takes other functions' addresses.
fn sealed_address_refusal(source: &str, name: &str, what: &str, why: &str, owner: &str) -> Refusal {
    Refusal::in_function(
        Category::SealedFunctionAddress,
        source,
        name,
        format!(
            "the fix takes the address of {what}, but {why}; under IBT an indirect call through \
             that pointer stops the kernel (\"Missing ENDBR\"): call it directly, or use a \
             function whose address {owner} already takes"
        ),
    )
}
