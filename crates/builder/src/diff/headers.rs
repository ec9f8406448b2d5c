//! Header changes: a fix may change a header (a new helper, a macro, a new inline function) as
//! long as no object the running kernel runs changes except the patched `.c` files. Which
//! translation units include the header comes from the kernel's include index; those kbuild
//! builds in this configuration are recompiled before and after the diff and compared. Any
//! difference refuses the diff, listing the objects that changed (a struct layout change, a
//! changed inline used elsewhere): it is never silently ignored.

use std::collections::BTreeSet;
use std::path::Path;

use super::include_index::IncludeIndex;
use super::kbuild_home::{KbuildHome, KbuildIndex};
use super::objects::object_path;
use super::preflight::KernelConfig;
use super::refusal::{Category, Refusal};

/// More translation units than this to recompile (twice each) and the header change is refused
/// as too wide to prove harmless in a reasonable time.
pub const RECOMPILE_LIMIT: usize = 24;

/// The translation units kbuild builds in `config` that include `file` (a header, or a `.c` file
/// included by another).
pub(crate) fn built_units(
    includes: &IncludeIndex,
    kbuild: &KbuildIndex,
    config: &KernelConfig,
    file: &str,
) -> Vec<String> {
    includes
        .translation_units(file)
        .into_iter()
        .filter(|unit| {
            matches!(
                kbuild.home(&object_path(unit), config),
                KbuildHome::Built(_)
            )
        })
        .collect()
}

/// The translation units other than `changed_sources` that include one of `headers` and that
/// kbuild builds in `config`; or a refusal when one header is included by more than
/// [`RECOMPILE_LIMIT`] (the limit is per header: a cumulative patch of many fixes, each with a
/// narrow header change, compares the union).
pub(crate) fn units_to_compare(
    includes: &IncludeIndex,
    kbuild: &KbuildIndex,
    config: &KernelConfig,
    headers: &[String],
    changed_sources: &BTreeSet<String>,
    limit: usize,
) -> Result<Vec<String>, Refusal> {
    let mut units = BTreeSet::new();
    for header in headers {
        let built: Vec<String> = built_units(includes, kbuild, config, header)
            .into_iter()
            .filter(|unit| !changed_sources.contains(unit))
            .collect();
        if built.len() > limit {
            let sample: Vec<&str> = built.iter().take(8).map(String::as_str).collect();
            return Err(Refusal::in_file(
                Category::HeaderChange,
                header,
                format!(
                    "the changed header {header} is included by {} objects this kernel builds \
                     ({}, …); proving the change leaves each of them unchanged needs more than \
                     {limit} recompiles: move the fix into the .c files that need it, or allow \
                     more with --header-recompile-limit",
                    built.len(),
                    sample.join(", "),
                ),
            ));
        }
        units.extend(built);
    }
    Ok(units.into_iter().collect())
}

/// The refusal for header changes that altered other objects: `(unit, what changed)`.
pub fn affected_objects_refusal(headers: &[String], affected: &[(String, String)]) -> Refusal {
    let list: Vec<String> = affected
        .iter()
        .map(|(unit, what)| format!("{} ({what})", object_path(unit)))
        .collect();
    Refusal {
        other_sources: affected.iter().map(|(unit, _)| unit.clone()).collect(),
        ..Refusal::in_file(
            Category::HeaderChange,
            headers.first().map(String::as_str).unwrap_or_default(),
            format!(
                "the change to {} alters objects the diff does not patch: {}; a live patch \
                 would leave them running the old definitions (a struct layout or an inline \
                 function used there changed): keep the header change out of the fix or patch \
                 those objects too",
                headers.join(", "),
                list.join("; ")
            ),
        )
    }
}

/// Where the include index of a kernel is cached (beside the kernel's other derived data).
pub fn include_index_cache(kernel_dir: &Path) -> std::path::PathBuf {
    kernel_dir.join("include-index.tsv")
}
