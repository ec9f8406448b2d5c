//! Header changes: a fix may change a header (a new helper, a macro, a new inline function).
//! Which translation units include the header comes from the kernel's include index; those
//! kbuild builds in this configuration are recompiled before and after the diff and compared.
//! A unit whose object differs is patched too, as klp-build patches every changed function of
//! every object (the pipeline's stage 4 rules decide for it: a struct layout change or changed
//! data refuses it, naming the struct or symbol); a unit that no longer compiles refuses the
//! diff. Nothing is silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use super::c_items;

use super::include_index::IncludeIndex;
use super::kbuild_home::{KbuildHome, KbuildIndex};
use super::objects::object_path;
use super::preflight::KernelConfig;
use super::refusal::{Category, Refusal};

/// More translation units than this to recompile (twice each) and the header change is refused
/// as too wide to prove harmless in a reasonable time. The object cache keeps every compile, so
/// the price is paid once per kernel and header state: the limit is set by the cold run.
pub const RECOMPILE_LIMIT: usize = 64;

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
///
/// A header in `reached_by_name` changes only whole top-level items that reach a unit through
/// their names alone (see [`names_reaching_units`]): of its units, only those that include one
/// of the listed files (the files of the running kernel's tree naming one of those names) can
/// compile differently, and only those are compared.
pub(crate) fn units_to_compare(
    includes: &IncludeIndex,
    kbuild: &KbuildIndex,
    config: &KernelConfig,
    headers: &[String],
    changed_sources: &BTreeSet<String>,
    reached_by_name: &BTreeMap<String, Result<BTreeSet<String>, String>>,
    limit: usize,
) -> Result<Vec<String>, Refusal> {
    let mut units = BTreeSet::new();
    for header in headers {
        let by_name = reached_by_name.get(header);
        let naming: Option<BTreeSet<String>> = by_name.and_then(|r| r.as_ref().ok()).map(|files| {
            files
                .iter()
                .filter(|f| *f != header)
                .flat_map(|f| {
                    let mut units = includes.translation_units(f);
                    if f.ends_with(".c") {
                        units.insert(f.clone());
                    }
                    units
                })
                .collect()
        });
        let built: Vec<String> = built_units(includes, kbuild, config, header)
            .into_iter()
            .filter(|unit| !changed_sources.contains(unit))
            .filter(|unit| naming.as_ref().is_none_or(|n| n.contains(unit)))
            .collect();
        if built.len() > limit {
            let sample: Vec<&str> = built.iter().take(8).map(String::as_str).collect();
            return Err(Refusal::in_file(
                Category::HeaderChange,
                header,
                format!(
                    "the changed header {header} is included by {} objects this kernel builds \
                     ({}, …){}; proving the change leaves each of them unchanged needs more than \
                     {limit} recompiles: move the fix into the .c files that need it, or allow \
                     more with --header-recompile-limit",
                    built.len(),
                    sample.join(", "),
                    match by_name {
                        Some(Err(why)) => format!(
                            " and its change is not only of items a unit sees by name ({why})"
                        ),
                        Some(Ok(_)) => " that name what it changes".to_owned(),
                        None => String::new(),
                    },
                ),
            ));
        }
        units.extend(built);
    }
    Ok(units.into_iter().collect())
}

/// The refusal for a header change that other units no longer compile with: `(unit, why)`.
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
                "the change to {} breaks objects the diff does not patch: {}; a live patch \
                 cannot replace what no longer compiles: keep the header change out of the fix \
                 or change those files too",
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

/// The names through which a header's change can reach a translation unit, when every changed
/// region (widened to whole top-level items) is made only of items that a unit sees by naming
/// them: macros, prototypes, `static` or `static inline` definitions, types, `extern`
/// declarations; and the rest of the header names none of them. Otherwise why not (the
/// header then gets the full proof: every unit including it).
///
/// A unit that never names such an item compiles to the same object with or without it: an
/// unused macro, prototype, type or static inline function emits nothing.
pub(crate) fn names_reaching_units(
    work: &Path,
    header: &str,
    old_text: &str,
    new_text: &str,
) -> Result<BTreeSet<String>, String> {
    let old_lines: Vec<&str> = old_text.lines().collect();
    let new_lines: Vec<&str> = new_text.lines().collect();
    let stem = header.replace('/', "_");
    let (old_path, new_path) = (
        work.join(format!("{stem}.old")),
        work.join(format!("{stem}.new")),
    );
    let written = std::fs::write(&old_path, old_text).and(std::fs::write(&new_path, new_text));
    written.map_err(|e| format!("write {}: {e}", old_path.display()))?;
    let regions = c_items::regions(&old_path, &new_path, &old_lines, &new_lines);
    let _ = std::fs::remove_file(&old_path);
    let _ = std::fs::remove_file(&new_path);
    let regions = regions.map_err(|e| e.to_string())?;
    let mut names = BTreeSet::new();
    let mut unchanged = vec![true; old_lines.len()];
    for region in &regions {
        if !region.whole(&old_lines, &new_lines) {
            return Err(format!(
                "the change at line {} is not made of whole top-level items",
                region.old.start + 1
            ));
        }
        let (removed, added) = region.items(&old_lines, &new_lines);
        for side in [&removed, &added] {
            if let Some(why) = &side.reaches_other_units {
                return Err(format!("line {}: {why}", region.old.start + 1));
            }
            names.extend(side.names.iter().cloned());
        }
        for flag in unchanged.get_mut(region.old.clone()).into_iter().flatten() {
            *flag = false;
        }
        if removed.names.is_empty() && added.names.is_empty() {
            return Err(format!(
                "the change at line {} declares nothing",
                region.old.start + 1
            ));
        }
    }
    let rest: String = old_lines
        .iter()
        .zip(&unchanged)
        .filter(|(_, keep)| **keep)
        .map(|(line, _)| format!("{line}\n"))
        .collect();
    let used_elsewhere = c_items::identifiers(&rest);
    if let Some(used) = names.iter().find(|n| used_elsewhere.contains(*n)) {
        return Err(format!("the header itself uses `{used}` elsewhere"));
    }
    Ok(names)
}

/// The files (`.c` and `.h`, relative to `tree`; x86 only under `arch/`) that name one of
/// `names` as a word.
pub(crate) fn files_naming(tree: &Path, names: &BTreeSet<String>) -> std::io::Result<Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(tree)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() && !super::kbuild_home::skipped_dir(&name) {
            dirs.push(if name == "arch" {
                "arch/x86".to_owned()
            } else {
                name
            });
        }
    }
    dirs.sort();
    let mut command = Command::new("grep");
    command
        .current_dir(tree)
        .args(["-rlw", "--include=*.c", "--include=*.h"]);
    for name in names {
        command.arg("-e").arg(name);
    }
    let output = command.arg("--").args(&dirs).output()?;
    if !matches!(output.status.code(), Some(0 | 1)) {
        return Err(std::io::Error::other(format!(
            "grep failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// include/linux/namei.h of 6.12.95, around where 6.12.107 declares `kern_path_parent`.
    const NAMEI: &str = "\
extern int kern_path(const char *, unsigned, struct path *);

extern struct dentry *kern_path_create(int, const char *, struct path *, unsigned int);
extern struct dentry *user_path_create(int, const char __user *, struct path *, unsigned int);
";

    #[test]
    fn a_new_prototype_reaches_units_only_by_its_name() {
        let work = tempfile::tempdir().unwrap();
        let new = NAMEI.replace(
            "struct path *);\n\n",
            "struct path *);\nstruct dentry *kern_path_parent(const char *name, struct path *parent);\n\n",
        );
        let names =
            names_reaching_units(work.path(), "include/linux/namei.h", NAMEI, &new).unwrap();
        assert_eq!(names, BTreeSet::from(["kern_path_parent".to_owned()]));
        // A comment naming it is not a use.
        let commented = format!("/* kern_path_parent() takes the parent */\n{NAMEI}");
        let new_commented = format!("/* kern_path_parent() takes the parent */\n{new}");
        assert!(names_reaching_units(work.path(), "x.h", &commented, &new_commented).is_ok());
        // The tree's files naming it: only those units can compile differently.
        let tree = tempfile::tempdir().unwrap();
        for (path, text) in [
            (
                "fs/namei.c",
                "struct dentry *kern_path_parent(const char *n, struct path *p);\n",
            ),
            ("fs/other.c", "int kern_path_parent_x;\n"),
            ("Documentation/x.c", "kern_path_parent\n"),
        ] {
            let path = tree.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        assert_eq!(
            files_naming(tree.path(), &names).unwrap(),
            vec!["fs/namei.c".to_owned()]
        );
        // A change that every unit including the header would compile (a non-static
        // definition), or one the rest of the header uses, gets the full proof.
        let defined = NAMEI.replace(
            "struct path *);\n\n",
            "struct path *);\nint kp_count = 0;\n\n",
        );
        assert!(names_reaching_units(work.path(), "x.h", NAMEI, &defined).is_err());
        let used = NAMEI.replace("extern int kern_path(", "extern int kern_path_y(");
        let used = format!("{used}#define kern_path_z kern_path_y\n");
        let old_with_use = format!("{NAMEI}#define kern_path_z kern_path_y\n");
        assert!(names_reaching_units(work.path(), "x.h", &old_with_use, &used).is_err());
    }
}
