//! Each CVE's candidate fix: the diff of the files it touches between the running kernel's
//! source and the newer one (or an operator's patch), and the groups of CVEs that share files
//! and are therefore built together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::select::SelectedCve;

/// CVEs built together (they touch common files), numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// The group's number, from 1, as the report and work directory name it.
    pub number: u32,
    /// Indices into the selected CVEs.
    pub cves: Vec<usize>,
    /// Every file the group's fixes touch.
    pub files: BTreeSet<String>,
}

/// Groups CVEs whose fixes share a file (transitively), in order of their first CVE.
pub(crate) fn group(files_of: &[Vec<String>]) -> Vec<Group> {
    // Union-find over CVE indices, joined through the files they name.
    let mut parent: Vec<usize> = (0..files_of.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while let Some(&p) = parent.get(i) {
            if p == i {
                break;
            }
            let grand = parent.get(p).copied().unwrap_or(p);
            if let Some(slot) = parent.get_mut(i) {
                *slot = grand;
            }
            i = p;
        }
        i
    }
    let mut first_owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, files) in files_of.iter().enumerate() {
        for file in files {
            match first_owner.get(file.as_str()) {
                Some(&owner) => {
                    let (a, b) = (root(&mut parent, owner), root(&mut parent, i));
                    if a != b {
                        let (low, high) = (a.min(b), a.max(b));
                        if let Some(slot) = parent.get_mut(high) {
                            *slot = low;
                        }
                    }
                }
                None => {
                    first_owner.insert(file, i);
                }
            }
        }
    }
    let mut by_root: BTreeMap<usize, Group> = BTreeMap::new();
    for (i, files) in files_of.iter().enumerate() {
        let r = root(&mut parent, i);
        let entry = by_root.entry(r).or_insert_with(|| Group {
            number: 0,
            cves: Vec::new(),
            files: BTreeSet::new(),
        });
        entry.cves.push(i);
        entry.files.extend(files.iter().cloned());
    }
    let mut groups: Vec<Group> = by_root.into_values().collect();
    for (n, g) in groups.iter_mut().enumerate() {
        g.number = u32::try_from(n + 1).unwrap_or(u32::MAX);
    }
    groups
}

/// The files of a selected CVE set, for [`group`].
pub(crate) fn files_of(cves: &[SelectedCve]) -> Vec<Vec<String>> {
    cves.iter().map(|c| c.files.clone()).collect()
}

/// How one file differs between the two source trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileDiff {
    /// Identical in both trees.
    Same,
    /// A unified diff with `a/`/`b/` headers.
    Changed(String),
    /// The file is new in the newer source (a live patch cannot add a translation unit).
    OnlyInNew,
    /// The newer source no longer has it.
    OnlyInOld,
    /// Neither tree has it (a file of another architecture's or a renamed path).
    Missing,
}

/// Why a file's diff between the two source trees could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum CutError {
    /// `diff` could not be started (usually: diffutils not installed).
    #[error("run `diff` on {path}: {source}; install diffutils")]
    Spawn {
        /// The file, relative to the trees.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `diff` exited with trouble (status 2: an unreadable file, ...).
    #[error("`diff` failed on {path}: {stderr}")]
    Diff {
        /// The file, relative to the trees.
        path: String,
        /// diff's stderr, trimmed.
        stderr: String,
    },
}

/// The diff of `path` (relative to the trees) between `old` and `new`.
pub(crate) fn file_diff(old: &Path, new: &Path, path: &str) -> Result<FileDiff, CutError> {
    let (in_old, in_new) = (old.join(path).is_file(), new.join(path).is_file());
    match (in_old, in_new) {
        (false, false) => return Ok(FileDiff::Missing),
        (false, true) => return Ok(FileDiff::OnlyInNew),
        (true, false) => return Ok(FileDiff::OnlyInOld),
        (true, true) => {}
    }
    let label = format!("a/{path}");
    Ok(
        match unified_diff(path, (&label, &old.join(path)), &new.join(path))? {
            None => FileDiff::Same,
            Some(diff) => FileDiff::Changed(diff),
        },
    )
}

/// The diff that creates `path` (a file only the newer tree `new` has).
pub(crate) fn new_file_diff(new: &Path, path: &str) -> Result<String, CutError> {
    let empty = Path::new("/dev/null");
    Ok(unified_diff(path, ("/dev/null", empty), &new.join(path))?.unwrap_or_default())
}

/// `diff -u` of `old` (with its label) and `new` (labelled `b/<path>`); `None` when equal.
fn unified_diff(path: &str, old: (&str, &Path), new: &Path) -> Result<Option<String>, CutError> {
    let output = Command::new("diff")
        .arg("-u")
        .arg("--label")
        .arg(old.0)
        .arg("--label")
        .arg(format!("b/{path}"))
        .arg(old.1)
        .arg(new)
        .output()
        .map_err(|source| CutError::Spawn {
            path: path.to_owned(),
            source,
        })?;
    match output.status.code() {
        Some(0) => Ok(None),
        Some(1) => Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned())),
        _ => Err(CutError::Diff {
            path: path.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }),
    }
}

/// Headers in the directories of `files` that differ between the trees: a `.c` change often
/// needs the helpers its own directory's header gained in the same release.
pub fn changed_headers_beside(old: &Path, new: &Path, files: &BTreeSet<String>) -> Vec<String> {
    let dirs: BTreeSet<&str> = files
        .iter()
        .map(|f| f.rsplit_once('/').map_or("", |(dir, _)| dir))
        .collect();
    dirs.into_iter()
        .flat_map(|dir| changed_code_files_in(old, new, dir))
        .filter(|path| path.ends_with(".h") && !files.contains(path))
        .collect()
}

/// The patch an operator gave for `cve` in `dir`: `<CVE>.patch`, `<CVE>.diff` or `<CVE>`.
pub fn operator_patch(dir: &Path, cve: &str) -> Option<PathBuf> {
    [
        format!("{cve}.patch"),
        format!("{cve}.diff"),
        cve.to_owned(),
    ]
    .into_iter()
    .map(|name| dir.join(name))
    .find(|p| p.is_file())
}

/// The CVE ids of the patches in `dir` (files named `CVE-…[.patch|.diff]`), sorted.
pub fn operator_patch_ids(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let id = name
            .strip_suffix(".patch")
            .or_else(|| name.strip_suffix(".diff"))
            .unwrap_or(&name);
        if id.parse::<patchbay_core::CveId>().is_ok() {
            ids.push(id.to_owned());
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The files a unified diff changes, as `patch -p1` names them (for grouping only; the diff
/// pipeline parses the patch properly).
pub fn patch_files(text: &str) -> Vec<String> {
    let mut files: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("+++ "))
        .map(|l| l.split('\t').next().unwrap_or(l).trim())
        .filter(|p| *p != "/dev/null")
        .filter_map(|p| p.split_once('/').map(|(_, rest)| rest.to_owned()))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Code files of `dir` (not recursive) that both trees have and that differ between them.
pub(super) fn changed_code_files_in(old: &Path, new: &Path, dir: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(new.join(dir)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_code(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            }
        })
        .filter(
            |path| match (std::fs::read(old.join(path)), std::fs::read(new.join(path))) {
                (Ok(a), Ok(b)) => a != b,
                _ => false,
            },
        )
        .collect()
}

/// The `.c` files of `dirs` that the newer source changed to mention `symbol` where the
/// running kernel's source never did: where a function a fix calls was added.
pub fn files_introducing(
    old: &Path,
    new: &Path,
    dirs: &BTreeSet<String>,
    symbol: &str,
) -> Vec<String> {
    let is_c_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mentions = |tree: &Path, path: &str| {
        std::fs::read_to_string(tree.join(path))
            .is_ok_and(|text| crate::diff::objects::contains_word(&text, symbol, is_c_name))
    };
    dirs.iter()
        .flat_map(|dir| changed_code_files_in(old, new, dir))
        .filter(|f| f.ends_with(".c") && mentions(new, f) && !mentions(old, f))
        .collect()
}

/// Whether a path names code a live patch could carry (C, headers, assembly).
fn is_code(path: &str) -> bool {
    [".c", ".h", ".S"].iter().any(|ext| path.ends_with(ext))
}

/// The files CVE records name that neither source tree has, resolved to what the running
/// kernel's tree has.
///
/// The kernel CNA records mainline's paths; an older series may have the code under an older name
/// (batman-adv's `mesh-interface.c` was `soft-interface.c`), or not at all (added later).
/// Left as they are, one such name made the whole group of CVEs sharing files "not in
/// source". Per missing file, in the CVE's notes:
/// - not code (documentation, Kconfig): ignored;
/// - its directory is in neither tree: the code came after the running
///   kernel's series, nothing to patch there;
/// - code files of its directory changed between the sources and no CVE of the window
///   (`window_files`, any score) names them: the backport's file(s), taken in its place
///   (the note names them);
/// - nothing else there changed: the fix for the running kernel needed no change there.
///
/// A CVE left with no file at all keeps its names, so it is reported as not in the source.
/// CVEs with an operator's patch are not touched (the patch names the running kernel's files).
pub fn resolve_missing_files(
    old: &Path,
    new: &Path,
    window_files: &BTreeSet<String>,
    cves: &mut [super::select::SelectedCve],
) {
    let exists = |f: &str| old.join(f).is_file() || new.join(f).is_file();
    let claimed: BTreeSet<String> = cves
        .iter()
        .flat_map(|c| c.files.iter())
        .chain(window_files)
        .cloned()
        .collect();
    for cve in cves.iter_mut().filter(|c| c.patch.is_none()) {
        if cve.files.iter().all(|f| exists(f)) {
            continue;
        }
        let mut files: Vec<String> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        for file in &cve.files {
            if exists(file) {
                if !files.contains(file) {
                    files.push(file.clone());
                }
                continue;
            }
            let dir = file.rsplit_once('/').map_or("", |(dir, _)| dir);
            if !is_code(file) {
                notes.push(format!(
                    "{file} is not in the running kernel's tree and is not code: ignored"
                ));
            } else if !old.join(dir).is_dir() && !new.join(dir).is_dir() {
                notes.push(format!(
                    "{file}: the running kernel's tree has no {dir}/ (the code came later): nothing \
                     to patch there"
                ));
            } else {
                let instead: Vec<String> = changed_code_files_in(old, new, dir)
                    .into_iter()
                    .filter(|f| !claimed.contains(f))
                    .collect();
                if instead.is_empty() {
                    notes.push(format!(
                        "{file} is not in the running kernel's tree and no other file of {dir}/ \
                         changed between the sources: its fix needed no change there"
                    ));
                } else {
                    notes.push(format!(
                        "{file} is not in the running kernel's tree (mainline renamed or added it): \
                         took the file(s) \
                         of {dir}/ that changed between the sources and no other CVE names: {}",
                        instead.join(", ")
                    ));
                    for f in instead {
                        if !files.contains(&f) {
                            files.push(f);
                        }
                    }
                }
            }
        }
        if files.is_empty() {
            continue;
        }
        cve.files = files;
        cve.notes.extend(notes);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::super::select::SelectedCve;
    use super::*;

    fn files(list: &[&[&str]]) -> Vec<Vec<String>> {
        list.iter()
            .map(|l| l.iter().map(|s| (*s).to_owned()).collect())
            .collect()
    }

    #[test]
    fn cves_sharing_files_are_grouped_transitively() {
        let groups = group(&files(&[
            &["fs/a.c"],
            &["net/b.c"],
            &["fs/a.c", "fs/c.c"],
            &["fs/c.c", "fs/d.c"],
            &[],
            &["net/b.c"],
        ]));
        let shape: Vec<(u32, Vec<usize>)> =
            groups.iter().map(|g| (g.number, g.cves.clone())).collect();
        assert_eq!(
            shape,
            vec![(1, vec![0, 2, 3]), (2, vec![1, 5]), (3, vec![4])],
            "{groups:?}"
        );
        assert_eq!(groups[0].files.len(), 3);
    }

    #[test]
    fn file_diffs_and_headers_beside_changed_files() {
        let old = tempfile::tempdir().unwrap();
        let new = tempfile::tempdir().unwrap();
        for (tree, body) in [(&old, "int x;\n"), (&new, "int x = 1;\n")] {
            std::fs::create_dir_all(tree.path().join("fs/x")).unwrap();
            std::fs::write(tree.path().join("fs/x/a.c"), body).unwrap();
            std::fs::write(tree.path().join("fs/x/same.c"), "same\n").unwrap();
            std::fs::write(tree.path().join("fs/x/a.h"), body).unwrap();
            std::fs::write(tree.path().join("fs/x/b.h"), "same\n").unwrap();
        }
        std::fs::write(new.path().join("fs/x/new.c"), "new\n").unwrap();
        let d = |p| file_diff(old.path(), new.path(), p).unwrap();
        let FileDiff::Changed(text) = d("fs/x/a.c") else {
            panic!("a.c changed: {:?}", d("fs/x/a.c"));
        };
        assert!(
            text.starts_with("--- a/fs/x/a.c\n+++ b/fs/x/a.c\n"),
            "{text}"
        );
        assert_eq!(patch_files(&text), vec!["fs/x/a.c".to_owned()]);
        assert_eq!(d("fs/x/same.c"), FileDiff::Same);
        assert_eq!(d("fs/x/new.c"), FileDiff::OnlyInNew);
        assert_eq!(d("fs/x/none.c"), FileDiff::Missing);
        let changed: BTreeSet<String> = ["fs/x/a.c".to_owned()].into();
        assert_eq!(
            changed_headers_beside(old.path(), new.path(), &changed),
            vec!["fs/x/a.h".to_owned()]
        );
    }

    #[test]
    fn files_mainline_renamed_are_found_in_the_6_1_trees() {
        let old = tempfile::tempdir().unwrap();
        let new = tempfile::tempdir().unwrap();
        for (tree, body) in [(&old, "int x;\n"), (&new, "int x = 1;\n")] {
            std::fs::create_dir_all(tree.path().join("net/bat")).unwrap();
            std::fs::create_dir_all(tree.path().join("net/quiet")).unwrap();
            for f in ["bla.c", "soft-interface.c", "types.h", "low.c"] {
                std::fs::write(tree.path().join("net/bat").join(f), body).unwrap();
            }
            std::fs::write(tree.path().join("net/bat/same.c"), "same\n").unwrap();
            std::fs::write(tree.path().join("net/quiet/a.c"), body).unwrap();
        }
        let cve = |id: &str, files: &[&str]| SelectedCve {
            id: id.parse().unwrap(),
            title: String::new(),
            score: Some(7.0),
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            fixed_in: None,
            patch: None,
            notes: Vec::new(),
        };
        let mut cves = vec![
            cve(
                "CVE-2026-1001",
                &[
                    "net/bat/bla.c",
                    "net/bat/mesh-interface.c",
                    "Documentation/x.rst",
                ],
            ),
            cve("CVE-2026-1002", &["net/bat/types.h"]),
            cve(
                "CVE-2026-1003",
                &["net/quiet/a.c", "net/quiet/later.c", "drivers/new/x.c"],
            ),
            cve("CVE-2026-1004", &["drivers/new/y.c"]),
        ];
        // low.c changed too, but for a CVE of the window below the score threshold.
        let window: BTreeSet<String> = ["net/bat/low.c".to_owned()].into();
        resolve_missing_files(old.path(), new.path(), &window, &mut cves);
        // The renamed file: the one changed file of the directory no CVE names.
        assert_eq!(
            cves[0].files,
            vec!["net/bat/bla.c", "net/bat/soft-interface.c"],
            "{:?}",
            cves[0].notes
        );
        assert!(
            cves[0]
                .notes
                .iter()
                .any(|n| n.contains("took the file(s)") && n.contains("net/bat/soft-interface.c")),
            "{:?}",
            cves[0].notes
        );
        assert_eq!(cves[1].files, vec!["net/bat/types.h"]);
        // Nothing else changed there, and a directory 6.1 does not have: nothing to patch.
        assert_eq!(cves[2].files, vec!["net/quiet/a.c"], "{:?}", cves[2].notes);
        assert_eq!(cves[2].notes.len(), 2, "{:?}", cves[2].notes);
        // Nothing left: the names stay, so the CVE is reported as not in the source.
        assert_eq!(cves[3].files, vec!["drivers/new/y.c"]);
    }

    #[test]
    fn the_file_that_added_a_function_is_found() {
        let old = tempfile::tempdir().unwrap();
        let new = tempfile::tempdir().unwrap();
        for tree in [&old, &new] {
            std::fs::create_dir_all(tree.path().join("net/tls")).unwrap();
            std::fs::write(tree.path().join("net/tls/other.c"), "int x;\n").unwrap();
        }
        std::fs::write(
            old.path().join("net/tls/strp.c"),
            "void tls_strp_done(void) {}\n",
        )
        .unwrap();
        std::fs::write(
            new.path().join("net/tls/strp.c"),
            "void tls_strp_done(void) {}\nvoid __tls_strp_done(void) {}\n",
        )
        .unwrap();
        std::fs::write(new.path().join("net/tls/other.c"), "int x = 1;\n").unwrap();
        let dirs: BTreeSet<String> = ["net/tls".to_owned()].into();
        assert_eq!(
            files_introducing(old.path(), new.path(), &dirs, "__tls_strp_done"),
            vec!["net/tls/strp.c".to_owned()]
        );
        // A name the old source already had (as a whole word) is not new.
        assert!(files_introducing(old.path(), new.path(), &dirs, "tls_strp_done").is_empty());
    }

    #[test]
    fn operator_patches_are_found_by_cve_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("CVE-2024-1234.patch"), "x").unwrap();
        std::fs::write(dir.path().join("CVE-2024-9999.diff"), "x").unwrap();
        std::fs::write(dir.path().join("README"), "x").unwrap();
        assert_eq!(
            operator_patch_ids(dir.path()).unwrap(),
            vec!["CVE-2024-1234".to_owned(), "CVE-2024-9999".to_owned()]
        );
        assert!(operator_patch(dir.path(), "CVE-2024-9999").is_some());
        assert!(operator_patch(dir.path(), "CVE-2024-0000").is_none());
        let git = "diff --git a/fs/x.c b/fs/x.c\n--- a/fs/x.c\n+++ b/fs/x.c\n@@ -1 +1 @@\n";
        assert_eq!(patch_files(git), vec!["fs/x.c".to_owned()]);
    }
}
