//! Which translation units include a header: the `#include` graph of a kernel source tree, made
//! once per kernel and cached beside it (`include-index.tsv`: one `file<TAB>included file` edge
//! per line, paths relative to the tree).
//!
//! The graph is textual: every `#include` counts, whatever `#if` surrounds it, and `<…>` names
//! resolve against the x86 include directories kbuild passes to every compile. It can only name
//! too many translation units, never too few, so the builder can prove a header change invisible
//! by recompiling every unit it names (`pipeline`), and those that kbuild does not build are
//! skipped with `kbuild_home`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::kbuild_home::{join_path, skipped_dir};

/// `-I` directories of every kernel compile on x86, in kbuild's order (`<…>` includes).
const SYSTEM_INCLUDE_DIRS: &[&str] = &[
    "arch/x86/include",
    "arch/x86/include/generated",
    "include",
    "arch/x86/include/uapi",
    "arch/x86/include/generated/uapi",
    "include/uapi",
    "include/generated/uapi",
];

/// The include graph: for each file, the files that include it directly.
#[derive(Debug, Default)]
pub struct IncludeIndex {
    included_by: BTreeMap<String, BTreeSet<String>>,
}

/// The name inside `#include <name>` or `#include "name"`, and whether it was quoted.
fn include_target(line: &str) -> Option<(&str, bool)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("include")?.trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        return Some((quoted.split('"').next()?, true));
    }
    let angled = rest.strip_prefix('<')?;
    Some((angled.split('>').next()?, false))
}

impl IncludeIndex {
    /// Reads the cached index of `tree` at `cache`, or scans the tree and writes it there.
    pub fn load_or_build(tree: &Path, cache: &Path) -> std::io::Result<IncludeIndex> {
        if let Ok(text) = std::fs::read_to_string(cache) {
            return Ok(IncludeIndex::parse(&text));
        }
        let index = IncludeIndex::scan(tree)?;
        let mut text = String::new();
        for (included, by) in &index.included_by {
            for file in by {
                text.push_str(file);
                text.push('\t');
                text.push_str(included);
                text.push('\n');
            }
        }
        // Written whole, then renamed: a reader never sees half an index.
        let partial = cache.with_extension("tsv.partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, cache)?;
        Ok(index)
    }

    fn parse(text: &str) -> IncludeIndex {
        let mut index = IncludeIndex::default();
        for line in text.lines() {
            if let Some((file, included)) = line.split_once('\t') {
                index
                    .included_by
                    .entry(included.to_owned())
                    .or_default()
                    .insert(file.to_owned());
            }
        }
        index
    }

    /// Scans every `.c` and `.h` file of the tree (x86 only under `arch/`).
    pub fn scan(tree: &Path) -> std::io::Result<IncludeIndex> {
        let mut index = IncludeIndex::default();
        let mut pending = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            for entry in std::fs::read_dir(tree.join(&relative))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = relative.join(&name);
                let child_text = child.to_string_lossy().into_owned();
                let kind = entry.file_type()?;
                if kind.is_dir() && !kind.is_symlink() {
                    if !skipped_dir(&child_text) {
                        pending.push(child);
                    }
                    continue;
                }
                if !(name.ends_with(".c") || name.ends_with(".h")) {
                    continue;
                }
                let Ok(bytes) = std::fs::read(tree.join(&child)) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&bytes);
                let dir = relative.to_string_lossy().into_owned();
                for line in text.lines().filter(|l| l.contains("include")) {
                    let Some((target, quoted)) = include_target(line) else {
                        continue;
                    };
                    if let Some(resolved) = resolve(tree, &dir, target, quoted) {
                        index
                            .included_by
                            .entry(resolved)
                            .or_default()
                            .insert(child_text.clone());
                    }
                }
            }
        }
        Ok(index)
    }

    /// The `.c` files that include `header` directly or through other headers (or a `.c` file
    /// that includes another `.c` file).
    pub fn translation_units(&self, header: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::from([header.to_owned()]);
        let mut pending = vec![header.to_owned()];
        let mut units = BTreeSet::new();
        while let Some(file) = pending.pop() {
            for includer in self.included_by.get(&file).into_iter().flatten() {
                if seen.insert(includer.clone()) {
                    if includer.ends_with(".c") {
                        units.insert(includer.clone());
                    }
                    pending.push(includer.clone());
                }
            }
        }
        units
    }
}

/// The tree path `#include` names from a file in `dir`, if it exists in the tree.
fn resolve(tree: &Path, dir: &str, target: &str, quoted: bool) -> Option<String> {
    let local = quoted.then(|| join_path(dir, target));
    local
        .into_iter()
        .chain(SYSTEM_INCLUDE_DIRS.iter().map(|d| join_path(d, target)))
        .find(|candidate| tree.join(candidate).is_file())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn transitive_includers_through_local_and_system_paths() {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in [
            ("include/linux/a.h", "#include <linux/b.h>\n"),
            ("include/linux/b.h", "struct b { int x; };\n"),
            ("net/x/types.h", "#include <linux/a.h>\n"),
            ("net/x/one.c", "#include \"types.h\"\n"),
            ("net/x/two.c", "  #  include <linux/b.h>\n"),
            ("net/x/three.c", "#include \"other.c\"\n"),
            ("net/x/other.c", "#include \"types.h\"\n"),
            ("net/y/unrelated.c", "#include <linux/kernel.h>\n"),
            ("arch/arm64/foo.c", "#include <linux/b.h>\n"),
        ] {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let cache = dir.path().join("include-index.tsv");
        let index = IncludeIndex::load_or_build(dir.path(), &cache).unwrap();
        let units: Vec<String> = index
            .translation_units("include/linux/b.h")
            .into_iter()
            .collect();
        assert_eq!(
            units,
            [
                "net/x/one.c",
                "net/x/other.c",
                "net/x/three.c",
                "net/x/two.c"
            ]
        );
        assert!(index.translation_units("net/y/unrelated.c").is_empty());
        // The cached index answers the same.
        let cached = IncludeIndex::load_or_build(dir.path(), &cache).unwrap();
        assert_eq!(
            cached.translation_units("include/linux/b.h"),
            index.translation_units("include/linux/b.h")
        );
    }
}
