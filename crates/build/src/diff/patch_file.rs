//! Reading a unified diff: which files it touches and whether the builder can handle them.
//!
//! Only `.c` files of the kernel can become a live patch by object diffing. Everything else is
//! refused here, before anything is compiled, with what to do instead.

use std::collections::BTreeSet;
use std::fmt;

/// A file a diff changes, relative to the top of the kernel tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangedFile {
    pub path: String,
    pub change: FileChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileChange {
    Modified,
    Added,
    Deleted,
}

/// Why a diff cannot become a live patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotADiff,
    UnsafePath(String),
    Header(String),
    Assembly(String),
    BuildSystem(String),
    NewOrDeletedFile(String),
    NotKernelC(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotADiff => f.write_str(
                "no file changes found: pass a unified diff (`diff -u`, `git diff`, `git format-patch`)",
            ),
            Refusal::UnsafePath(p) => write!(
                f,
                "{p}: paths must be relative to the kernel tree, without `..` (use `git diff` output)"
            ),
            Refusal::Header(p) => write!(
                f,
                "{p}: header changes are refused (every object including it would change); move \
                 the fix into the .c files that need it"
            ),
            Refusal::Assembly(p) => write!(
                f,
                "{p}: assembly cannot be live-patched by object diffing; write the fix in C with \
                 `patchbay-build module` if the function can be replaced"
            ),
            Refusal::BuildSystem(p) => write!(
                f,
                "{p}: Kconfig/Makefile changes change how the kernel is built, not a function; \
                 they cannot be applied to a running kernel"
            ),
            Refusal::NewOrDeletedFile(p) => write!(
                f,
                "{p}: a diff that adds or deletes a file cannot be mapped to an existing object; \
                 put new code into an existing .c file"
            ),
            Refusal::NotKernelC(p) => write!(
                f,
                "{p}: only kernel .c files can be patched (documentation, tools and scripts do not \
                 run in the kernel; drop them from the diff)"
            ),
        }
    }
}

/// The files `diff` changes (git `a/`/`b/` prefixes removed), or every reason it is refused.
pub fn changed_files(diff: &str) -> Result<Vec<ChangedFile>, Vec<Refusal>> {
    let mut files = BTreeSet::new();
    let mut old: Option<String> = None;
    for line in diff.lines() {
        if let Some(rest) = line.strip_prefix("--- ") {
            old = Some(header_path(rest));
        } else if let Some(rest) = line.strip_prefix("+++ ") {
            let new = header_path(rest);
            let old_path = old.take().unwrap_or_default();
            let (path, change) = match (old_path.as_str(), new.as_str()) {
                ("/dev/null", n) => (strip_git_prefix(n), FileChange::Added),
                (o, "/dev/null") => (strip_git_prefix(o), FileChange::Deleted),
                (_, n) => (strip_git_prefix(n), FileChange::Modified),
            };
            files.insert(ChangedFile { path, change });
        }
    }
    if files.is_empty() {
        return Err(vec![Refusal::NotADiff]);
    }
    let refusals: Vec<Refusal> = files.iter().filter_map(refusal_for).collect();
    if refusals.is_empty() {
        Ok(files.into_iter().collect())
    } else {
        Err(refusals)
    }
}

fn header_path(rest: &str) -> String {
    // `+++ b/path\t2024-01-01 ...`: the timestamp follows a tab.
    rest.split('\t').next().unwrap_or("").trim().to_owned()
}

fn strip_git_prefix(path: &str) -> String {
    path.strip_prefix("a/")
        .or_else(|| path.strip_prefix("b/"))
        .unwrap_or(path)
        .to_owned()
}

fn refusal_for(file: &ChangedFile) -> Option<Refusal> {
    let p = file.path.as_str();
    let name = p.rsplit('/').next().unwrap_or(p);
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == ".." || c.is_empty()) {
        return Some(Refusal::UnsafePath(p.to_owned()));
    }
    if file.change != FileChange::Modified {
        return Some(Refusal::NewOrDeletedFile(p.to_owned()));
    }
    if name.starts_with("Kconfig")
        || name == "Makefile"
        || name == "Kbuild"
        || name.ends_with(".mk")
    {
        return Some(Refusal::BuildSystem(p.to_owned()));
    }
    if name.ends_with(".h") {
        return Some(Refusal::Header(p.to_owned()));
    }
    if name.ends_with(".S") || name.ends_with(".s") {
        return Some(Refusal::Assembly(p.to_owned()));
    }
    let outside_kernel = ["Documentation/", "tools/", "scripts/", "samples/", "usr/"]
        .iter()
        .any(|prefix| p.starts_with(prefix));
    if !name.ends_with(".c") || outside_kernel {
        return Some(Refusal::NotKernelC(p.to_owned()));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    const GIT_DIFF: &str = "diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c
index 1..2 100644
--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -1,3 +1,3 @@
-old
+new
diff --git a/net/core/sock.c b/net/core/sock.c
--- a/net/core/sock.c\t2024-01-01 00:00:00
+++ b/net/core/sock.c\t2024-01-01 00:00:01
@@ -1 +1 @@
-x
+y
";

    #[test]
    fn git_and_plain_diffs_name_their_files() {
        let files = changed_files(GIT_DIFF).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["fs/proc/cmdline.c", "net/core/sock.c"]);
        assert!(files.iter().all(|f| f.change == FileChange::Modified));
    }

    #[test]
    fn every_unsupported_file_is_refused_with_its_reason() {
        let diff = "--- a/include/linux/sched.h\n+++ b/include/linux/sched.h\n\
                    --- a/arch/x86/entry/entry_64.S\n+++ b/arch/x86/entry/entry_64.S\n\
                    --- a/net/Kconfig\n+++ b/net/Kconfig\n\
                    --- /dev/null\n+++ b/fs/new.c\n\
                    --- a/tools/perf/builtin.c\n+++ b/tools/perf/builtin.c\n\
                    --- a/../etc/passwd.c\n+++ b/../etc/passwd.c\n\
                    --- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n";
        let refusals = changed_files(diff).unwrap_err();
        assert_eq!(refusals.len(), 6, "{refusals:?}");
        assert!(refusals.contains(&Refusal::Header("include/linux/sched.h".into())));
        assert!(refusals.contains(&Refusal::Assembly("arch/x86/entry/entry_64.S".into())));
        assert!(refusals.contains(&Refusal::BuildSystem("net/Kconfig".into())));
        assert!(refusals.contains(&Refusal::NewOrDeletedFile("fs/new.c".into())));
        assert!(refusals.contains(&Refusal::NotKernelC("tools/perf/builtin.c".into())));
        assert!(refusals.contains(&Refusal::UnsafePath("../etc/passwd.c".into())));
        for r in &refusals {
            assert!(!r.to_string().is_empty());
        }
    }

    #[test]
    fn text_without_file_headers_is_not_a_diff() {
        assert_eq!(
            changed_files("hello\nworld\n").unwrap_err(),
            vec![Refusal::NotADiff]
        );
    }
}
