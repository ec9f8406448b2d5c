//! Reading a unified diff the way `patch -pN` does: which files it touches, at which strip
//! level, and whether the builder can handle them.
//!
//! People write patches with different path prefixes: git's `a/`/`b/`, quilt's `dir.orig/` and
//! `dir/`, `diff -Nupr src.orig/ src/`, or none. The strip level is never guessed from the
//! prefix's spelling: a level is accepted only when, for every file the diff modifies, the
//! stripped path names a file of the kernel tree ([`resolve`]). The diff is then rewritten with
//! canonical `a/`/`b/` headers ([`ResolvedDiff::normalized`]), so every later step applies it
//! with `patch -p1`.
//!
//! Only `.c` files of the kernel can become a live patch by object diffing. Everything else is
//! refused here, before anything is compiled, with what to do instead.

use std::collections::BTreeSet;

use super::refusal::{Category, Refusal};

/// A file a diff changes, relative to the top of the kernel tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangedFile {
    /// The path with the strip level applied (`fs/proc/cmdline.c`).
    pub path: String,
    /// What the diff does to it.
    pub change: FileChange,
}

/// What a diff does to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileChange {
    /// Changes an existing file.
    Modified,
    /// Creates the file (`--- /dev/null`, or an empty old side).
    Added,
    /// Removes the file (`+++ /dev/null`, or an empty new side).
    Deleted,
}

/// The deepest strip level tried when none is given (`patch` itself has no limit, but real
/// prefixes are one or two directories: `a/`, `linux-6.1.orig/`, `src/linux/`).
const MAX_AUTO_STRIP: usize = 4;

/// One file's section of a diff: its header lines and what its hunks say.
#[derive(Debug, Clone)]
struct FileSection {
    /// The `---` path as written (timestamp removed).
    old: String,
    /// The `+++` path as written.
    new: String,
    /// Index of the `---` line in the diff's lines (the `+++` line follows it).
    header_line: usize,
    /// Every hunk has an old range of `0,0`: the file did not exist (`diff -N` writes the old
    /// name with an epoch timestamp instead of `/dev/null`).
    old_is_empty: bool,
    /// Every hunk has a new range of `0,0`: the file is deleted.
    new_is_empty: bool,
    /// `(old start, old count, new start, new count)` of each hunk.
    hunks: Vec<(u64, u64, u64, u64)>,
}

/// A unified diff split into its lines and file sections, before the strip level is known.
#[derive(Debug, Clone)]
pub struct ParsedDiff {
    lines: Vec<String>,
    files: Vec<FileSection>,
    /// Lines of git's extended headers (`diff --git`, `index`, modes) and quilt's `Index:`,
    /// which name paths with their own prefixes; dropped from the normalized diff.
    metadata_lines: BTreeSet<usize>,
    binary: bool,
}

/// `@@ -12,7 +12,9 @@` → `((12, 7), (12, 9))`; a missing count means 1.
fn hunk_ranges(line: &str) -> Option<((u64, u64), (u64, u64))> {
    let rest = line.strip_prefix("@@ -")?;
    let (old, rest) = rest.split_once(" +")?;
    let (new, _) = rest.split_once(" @@")?;
    let range = |text: &str| -> Option<(u64, u64)> {
        match text.split_once(',') {
            Some((start, count)) => Some((start.parse().ok()?, count.parse().ok()?)),
            None => Some((text.parse().ok()?, 1)),
        }
    };
    Some((range(old)?, range(new)?))
}

/// Splits `diff` into file sections. Lines inside a hunk are counted against the hunk's ranges,
/// so a removed line that starts with `-- ` is never mistaken for a file header.
pub fn parse(diff: &str) -> Result<ParsedDiff, Refusal> {
    let lines: Vec<String> = diff.lines().map(str::to_owned).collect();
    let mut files: Vec<FileSection> = Vec::new();
    let mut metadata_lines = BTreeSet::new();
    let mut binary = false;
    let mut index = 0;
    while let Some(line) = lines.get(index) {
        let next = lines.get(index + 1);
        if let (Some(old), Some(new)) = (
            line.strip_prefix("--- "),
            next.and_then(|n| n.strip_prefix("+++ ")),
        ) {
            files.push(FileSection {
                old: header_path(old),
                new: header_path(new),
                header_line: index,
                old_is_empty: true,
                new_is_empty: true,
                hunks: Vec::new(),
            });
            index += 2;
            continue;
        }
        if let Some(((old_start, old_count), (new_start, new_count))) = hunk_ranges(line) {
            if let Some(file) = files.last_mut() {
                file.old_is_empty &= old_count == 0;
                file.new_is_empty &= new_count == 0;
                file.hunks
                    .push((old_start, old_count, new_start, new_count));
            }
            // Skip the hunk's body: context lines count on both sides.
            let (mut old_left, mut new_left) = (old_count, new_count);
            index += 1;
            while old_left > 0 || new_left > 0 {
                let Some(body) = lines.get(index) else { break };
                match body.as_bytes().first() {
                    Some(b'-') => old_left = old_left.saturating_sub(1),
                    Some(b'+') => new_left = new_left.saturating_sub(1),
                    Some(b'\\') => {} // "\ No newline at end of file"
                    _ => {
                        old_left = old_left.saturating_sub(1);
                        new_left = new_left.saturating_sub(1);
                    }
                }
                index += 1;
            }
            continue;
        }
        if line.starts_with("diff --git ")
            || line.starts_with("Index: ")
            || line.starts_with("index ")
            || line.starts_with("old mode ")
            || line.starts_with("new mode ")
            || line.starts_with("new file mode ")
            || line.starts_with("deleted file mode ")
            || line.starts_with("similarity index ")
            || line.starts_with("rename from ")
            || line.starts_with("rename to ")
            || (line.len() > 10 && line.bytes().all(|b| b == b'='))
            || (line.starts_with("diff ") && line.contains(" -"))
        {
            metadata_lines.insert(index);
        }
        if line.starts_with("GIT binary patch") || line.starts_with("Binary files ") {
            binary = true;
        }
        index += 1;
    }
    if files.is_empty() && !binary {
        return Err(Refusal::new(
            Category::NotADiff,
            "no file changes found: pass a unified diff (`diff -u`, `git diff`, \
             `git format-patch`, quilt)",
        ));
    }
    Ok(ParsedDiff {
        lines,
        files,
        metadata_lines,
        binary,
    })
}

fn header_path(rest: &str) -> String {
    // `+++ b/path\t2024-01-01 ...`: the timestamp follows a tab (or, from some tools, two
    // spaces before a date).
    let path = rest.split('\t').next().unwrap_or("");
    let path = path.split("  ").next().unwrap_or(path);
    path.trim().to_owned()
}

/// `path` without its first `level` directory components (as `patch -p<level>`), or `None`
/// when it has no more than that.
pub fn strip_components(path: &str, level: usize) -> Option<String> {
    if level == 0 {
        return Some(path.to_owned());
    }
    let mut rest = path;
    for _ in 0..level {
        let (_, after) = rest.split_once('/')?;
        rest = after.trim_start_matches('/');
    }
    (!rest.is_empty()).then(|| rest.to_owned())
}

const DEV_NULL: &str = "/dev/null";

/// A diff whose strip level is proven against the tree.
#[derive(Debug, Clone)]
pub struct ResolvedDiff {
    parsed: ParsedDiff,
    /// The `patch -pN` level that names the tree's files (0: paths are already tree-relative).
    pub strip_level: usize,
    /// Every file the diff touches, each once, sorted by path.
    pub files: Vec<ChangedFile>,
}

impl ParsedDiff {
    fn change_of(&self, file: &FileSection) -> FileChange {
        if file.old == DEV_NULL || file.old_is_empty {
            FileChange::Added
        } else if file.new == DEV_NULL || file.new_is_empty {
            FileChange::Deleted
        } else {
            FileChange::Modified
        }
    }

    /// The tree path a section names at `level`, if the level leaves one.
    fn path_at(&self, file: &FileSection, level: usize) -> Option<String> {
        match self.change_of(file) {
            FileChange::Deleted => strip_components(&file.old, level),
            _ => strip_components(&file.new, level),
        }
    }

    /// Whether `level` names existing files for every modified or deleted file (and the same
    /// file on both sides of a modification).
    fn level_holds(&self, level: usize, exists: &dyn Fn(&str) -> bool) -> bool {
        let mut checked = 0;
        for file in &self.files {
            let change = self.change_of(file);
            if change == FileChange::Added {
                continue;
            }
            let old = strip_components(&file.old, level);
            let Some(old) = old else { return false };
            if !exists(&old) {
                return false;
            }
            if change == FileChange::Modified {
                // `a/x` and `b/x` at -p0 name two paths: the new one must exist too.
                let new = strip_components(&file.new, level);
                if new.as_deref() != Some(old.as_str()) && !new.is_some_and(|new| exists(&new)) {
                    return false;
                }
            }
            checked += 1;
        }
        checked > 0
    }
}

/// Decides the strip level: `requested` (`-p N`) when given, which must then hold; otherwise
/// the one level in `0..=MAX_AUTO_STRIP` under which every modified or deleted file exists in
/// the tree (`exists` answers for a tree-relative path). Then lists the files and refuses what
/// cannot be live-patched.
pub fn resolve(
    parsed: ParsedDiff,
    requested: Option<usize>,
    exists: &dyn Fn(&str) -> bool,
) -> Result<ResolvedDiff, Vec<Refusal>> {
    if parsed.binary {
        return Err(vec![Refusal::new(
            Category::NotKernelC,
            "the diff contains a binary patch; only text changes to kernel .c files can be \
             live-patched",
        )]);
    }
    let only_added = parsed
        .files
        .iter()
        .all(|f| parsed.change_of(f) == FileChange::Added);
    let level = match requested {
        Some(level) => {
            if !only_added && !parsed.level_holds(level, exists) {
                return Err(vec![paths_not_in_tree(&parsed, level, Some(level))]);
            }
            level
        }
        None if only_added => 1,
        None => {
            let holding: Vec<usize> = (0..=MAX_AUTO_STRIP)
                .filter(|level| parsed.level_holds(*level, exists))
                .collect();
            match holding.as_slice() {
                [level] => *level,
                [] => return Err(vec![paths_not_in_tree(&parsed, 1, None)]),
                several => {
                    return Err(vec![Refusal::new(
                        Category::AmbiguousStripLevel,
                        format!(
                            "the diff's paths name existing files of the kernel tree at strip \
                             levels {}; pass -p N to say which one is meant",
                            several
                                .iter()
                                .map(|l| format!("-p{l}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )]);
                }
            }
        }
    };
    let mut files = BTreeSet::new();
    let mut refusals = Vec::new();
    for section in &parsed.files {
        let change = parsed.change_of(section);
        let Some(path) = parsed.path_at(section, level) else {
            refusals.push(Refusal::in_file(
                Category::UnsafePath,
                &section.new,
                format!("the path has no more than {level} components to strip"),
            ));
            continue;
        };
        if change == FileChange::Modified
            && strip_components(&section.old, level).as_deref() != Some(path.as_str())
        {
            refusals.push(Refusal::in_file(
                Category::RenamedFile,
                &path,
                format!(
                    "the diff renames {} to {path}; a renamed file cannot be mapped to the \
                     running kernel's object",
                    strip_components(&section.old, level).unwrap_or_default()
                ),
            ));
            continue;
        }
        files.insert(ChangedFile { path, change });
    }
    refusals.extend(files.iter().filter_map(refusal_for));
    if !refusals.is_empty() {
        return Err(refusals);
    }
    Ok(ResolvedDiff {
        parsed,
        strip_level: level,
        files: files.into_iter().collect(),
    })
}

fn paths_not_in_tree(parsed: &ParsedDiff, level: usize, requested: Option<usize>) -> Refusal {
    let missing: Vec<String> = parsed
        .files
        .iter()
        .filter(|f| parsed.change_of(f) != FileChange::Added)
        .map(|f| f.old.clone())
        .collect();
    let how = match requested {
        Some(_) => format!("with -p{level}"),
        None => format!("at any strip level from -p0 to -p{MAX_AUTO_STRIP}"),
    };
    Refusal::new(
        Category::PathNotInTree,
        format!(
            "the diff's paths ({}) do not name files of this kernel's source tree {how}; \
             make the diff against the kernel's own tree (or pass the right -p N)",
            missing.join(", ")
        ),
    )
}

impl ResolvedDiff {
    /// How the diff moves the lines of each file it modifies (by tree path), hunks in order.
    pub(crate) fn line_maps(&self) -> std::collections::BTreeMap<String, super::engine::LineMap> {
        let mut maps = std::collections::BTreeMap::new();
        for section in &self.parsed.files {
            if let Some(path) = self.parsed.path_at(section, self.strip_level) {
                let map: &mut super::engine::LineMap = maps.entry(path).or_default();
                map.hunks.extend(section.hunks.iter().copied());
                map.hunks.sort_unstable();
            }
        }
        maps
    }

    /// The diff with canonical `--- a/<path>` / `+++ b/<path>` headers and the prefixed
    /// metadata lines dropped: what `patch -p1` applies in the tree.
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        let mut headers = std::collections::BTreeMap::new();
        for section in &self.parsed.files {
            let change = self.parsed.change_of(section);
            let path = self
                .parsed
                .path_at(section, self.strip_level)
                .unwrap_or_default();
            let old = if change == FileChange::Added {
                DEV_NULL.to_owned()
            } else {
                format!("a/{path}")
            };
            let new = if change == FileChange::Deleted {
                DEV_NULL.to_owned()
            } else {
                format!("b/{path}")
            };
            headers.insert(section.header_line, (old, new));
        }
        let mut index = 0;
        while let Some(line) = self.parsed.lines.get(index) {
            if let Some((old, new)) = headers.get(&index) {
                out.push_str(&format!("--- {old}\n+++ {new}\n"));
                index += 2;
                continue;
            }
            if !self.parsed.metadata_lines.contains(&index) {
                out.push_str(line);
                out.push('\n');
            }
            index += 1;
        }
        out
    }
}

fn refusal_for(file: &ChangedFile) -> Option<Refusal> {
    let p = file.path.as_str();
    let name = p.rsplit('/').next().unwrap_or(p);
    let refuse = |category, reason: &str| Some(Refusal::in_file(category, p, reason));
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == ".." || c.is_empty()) {
        return refuse(
            Category::UnsafePath,
            "paths must be relative to the kernel tree, without `..`",
        );
    }
    // A new header adds no object: only the files the diff changes can include it.
    let new_header = file.change == FileChange::Added && name.ends_with(".h");
    if file.change != FileChange::Modified && !new_header {
        return refuse(
            Category::NewOrDeletedFile,
            "a diff that adds or deletes a file cannot be mapped to an existing object; put new \
             code into an existing .c file (a new header is allowed)",
        );
    }
    if name.starts_with("Kconfig")
        || name == "Makefile"
        || name == "Kbuild"
        || name.ends_with(".mk")
    {
        return refuse(
            Category::BuildSystem,
            "Kconfig/Makefile changes change how the kernel is built, not a function; they \
             cannot be applied to a running kernel",
        );
    }
    // Headers are allowed here; the pipeline proves that no other object changes with them.
    if name.ends_with(".h") {
        return None;
    }
    if name.ends_with(".S") || name.ends_with(".s") {
        return refuse(
            Category::Assembly,
            "assembly cannot be live-patched by object diffing; write the fix in C with \
             `patchbay-build module` if the function can be replaced",
        );
    }
    let outside_kernel = ["Documentation/", "tools/", "scripts/", "samples/", "usr/"]
        .iter()
        .any(|prefix| p.starts_with(prefix));
    if !name.ends_with(".c") || outside_kernel {
        return refuse(
            Category::NotKernelC,
            "only kernel .c files can be patched (documentation, tools and scripts do not run \
             in the kernel; drop them from the diff)",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    /// A tree holding only these files.
    fn tree(files: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |path| files.contains(&path)
    }

    const KERNEL: &[&str] = &[
        "fs/proc/cmdline.c",
        "net/core/sock.c",
        "include/linux/sched.h",
    ];

    const GIT_DIFF: &str = "diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c
index 1..2 100644
--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -1,3 +1,3 @@
 keep
-old
+new
 keep
diff --git a/net/core/sock.c b/net/core/sock.c
--- a/net/core/sock.c\t2024-01-01 00:00:00
+++ b/net/core/sock.c\t2024-01-01 00:00:01
@@ -1 +1 @@
-x
+y
";

    fn files(diff: &str, requested: Option<usize>) -> Result<ResolvedDiff, Vec<Refusal>> {
        resolve(parse(diff).map_err(|r| vec![r])?, requested, &tree(KERNEL))
    }

    #[test]
    fn git_diffs_strip_one_level_proven_by_the_tree() {
        let resolved = files(GIT_DIFF, None).unwrap();
        assert_eq!(resolved.strip_level, 1);
        let paths: Vec<&str> = resolved.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["fs/proc/cmdline.c", "net/core/sock.c"]);
        assert!(resolved
            .files
            .iter()
            .all(|f| f.change == FileChange::Modified));
        let normalized = resolved.normalized();
        assert!(
            normalized.contains("--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n"),
            "{:?} does not contain {:?}",
            normalized,
            "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n"
        );
        assert!(!normalized.contains("diff --git"), "{normalized}");
        assert!(!normalized.contains("2024-01-01"), "{normalized}");
    }

    #[test]
    fn kpatch_quilt_and_bare_prefixes_resolve_to_the_same_files() {
        let kpatch = "diff -Nupr src.orig/fs/proc/cmdline.c src/fs/proc/cmdline.c\n\
                      --- src.orig/fs/proc/cmdline.c\t2024-01-01 00:00:00.000000000 +0000\n\
                      +++ src/fs/proc/cmdline.c\t2024-01-01 00:00:00.000000000 +0000\n\
                      @@ -1 +1 @@\n-old\n+new\n";
        let quilt = "Index: linux-6.1/fs/proc/cmdline.c\n\
                     ===================================================================\n\
                     --- linux-6.1.orig/fs/proc/cmdline.c\n+++ linux-6.1/fs/proc/cmdline.c\n\
                     @@ -1 +1 @@\n-old\n+new\n";
        let bare = "--- fs/proc/cmdline.c\n+++ fs/proc/cmdline.c\n@@ -1 +1 @@\n-old\n+new\n";
        let deep =
            "--- x/y/fs/proc/cmdline.c\n+++ x/y/fs/proc/cmdline.c\n@@ -1 +1 @@\n-old\n+new\n";
        for (diff, level) in [(kpatch, 1), (quilt, 1), (bare, 0), (deep, 2)] {
            let resolved = files(diff, None).unwrap();
            assert_eq!(resolved.strip_level, level, "{diff}");
            assert_eq!(resolved.files[0].path, "fs/proc/cmdline.c");
            let normalized = resolved.normalized();
            assert!(
                normalized.starts_with("--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n"),
                "{normalized}"
            );
            assert!(!normalized.contains("Index:"), "{normalized}");
        }
    }

    #[test]
    fn a_requested_level_must_name_existing_files() {
        let err = files(GIT_DIFF, Some(2)).unwrap_err();
        assert_eq!(err[0].category, Category::PathNotInTree);
        assert!(err[0].reason.contains("-p2"), "{}", err[0]);
        assert_eq!(files(GIT_DIFF, Some(1)).unwrap().strip_level, 1);
    }

    #[test]
    fn paths_that_exist_at_no_level_or_several_are_refused() {
        let foreign = "--- a/drivers/not/here.c\n+++ b/drivers/not/here.c\n@@ -1 +1 @@\n-a\n+b\n";
        let err = files(foreign, None).unwrap_err();
        assert_eq!(err[0].category, Category::PathNotInTree);
        assert!(err[0].reason.contains("drivers/not/here.c"), "{}", err[0]);

        // A tree with both `a/b.c` and `b.c`: -p0 and -p1 both hold; never guessed.
        let both = |p: &str| p == "a/b.c" || p == "b.c";
        let diff = "--- a/b.c\n+++ a/b.c\n@@ -1 +1 @@\n-a\n+b\n";
        let err = resolve(parse(diff).unwrap(), None, &both).unwrap_err();
        assert_eq!(err[0].category, Category::AmbiguousStripLevel);
        assert_eq!(
            resolve(parse(diff).unwrap(), Some(0), &both).unwrap().files[0].path,
            "a/b.c"
        );
    }

    #[test]
    fn removed_lines_that_look_like_headers_stay_in_their_hunk() {
        // A removed SQL-style comment line `-- x` appears as `--- x` inside the hunk.
        let diff = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1,2 +1,1 @@\n\
                    --- not a header\n+++ not a header either\n";
        // Counted against the hunk's ranges, `--- not…` is its removed line and `+++ not…`
        // its added one, not a second file's headers.
        let parsed = parse(diff).unwrap();
        assert_eq!(parsed.files.len(), 1);
    }

    #[test]
    fn diff_n_new_files_without_dev_null_are_added() {
        let diff = "--- src.orig/fs/proc/new.c\t1970-01-01 00:00:00.000000000 +0000\n\
                    +++ src/fs/proc/new.c\t2024-01-01 00:00:00.000000000 +0000\n\
                    @@ -0,0 +1 @@\n+int x;\n\
                    --- src.orig/fs/proc/cmdline.c\n+++ src/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n";
        let err = files(diff, None).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].category, Category::NewOrDeletedFile);
        assert_eq!(err[0].file.as_deref(), Some("fs/proc/new.c"));
    }

    #[test]
    fn every_unsupported_file_is_refused_with_its_category() {
        let diff =
            "--- a/include/linux/sched.h\n+++ b/include/linux/sched.h\n@@ -1 +1 @@\n-a\n+b\n\
                    --- /dev/null\n+++ b/fs/new.c\n@@ -0,0 +1 @@\n+a\n\
                    --- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n";
        let refusals = files(diff, None).unwrap_err();
        let categories: Vec<(Category, Option<&str>)> = refusals
            .iter()
            .map(|r| (r.category, r.file.as_deref()))
            .collect();
        assert_eq!(categories, [(Category::NewOrDeletedFile, Some("fs/new.c"))]);
        for (path, category) in [
            ("arch/x86/entry/entry_64.S", Category::Assembly),
            ("net/Kconfig", Category::BuildSystem),
            ("tools/perf/builtin.c", Category::NotKernelC),
        ] {
            let file = ChangedFile {
                path: path.into(),
                change: FileChange::Modified,
            };
            assert_eq!(refusal_for(&file).map(|r| r.category), Some(category));
        }
    }

    #[test]
    fn text_without_file_headers_is_not_a_diff() {
        assert_eq!(
            parse("hello\nworld\n").unwrap_err().category,
            Category::NotADiff
        );
    }

    #[test]
    fn strip_components_works_like_patch() {
        assert_eq!(strip_components("a/b/c.c", 0).as_deref(), Some("a/b/c.c"));
        assert_eq!(strip_components("a/b/c.c", 1).as_deref(), Some("b/c.c"));
        assert_eq!(strip_components("a//b/c.c", 1).as_deref(), Some("b/c.c"));
        assert_eq!(strip_components("a/b/c.c", 3), None);
    }
}
