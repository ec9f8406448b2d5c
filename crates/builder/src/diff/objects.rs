//! Stage 3 of diff mode: compile the original and the patched object of each changed `.c` file
//! in the kernel's prepared source tree, with the distro's flags plus `-ffunction-sections
//! -fdata-sections` (one section per function and datum, so the diff engine can compare and
//! extract them one by one), and find which binary each object lands in.
//!
//! The source tree is shared by every build of that kernel: the patch is reversed and the
//! compiled objects removed afterwards, on errors too ([`PatchedTree`] does it on drop).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSymbol, SymbolKind};
use patchbay_core::ObjectName;
use patchbay_kernels::{Kernel, SourceTree, SymbolTable};

use super::kbuild_home::{Binary, KbuildHome, KbuildIndex};
use super::preflight::KernelConfig;

/// Flags added to the distro's own for every object we compile.
pub const EXTRA_CFLAGS: &str = "-ffunction-sections -fdata-sections";

/// Why an object could not be compiled, placed, or the tree patched or restored.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// kbuild (or objcopy renaming symbols) failed on one object.
    #[error("compiling {object} failed (make exit {status}): {first_error}\n{output}")]
    Compile {
        /// The object, relative to the tree (`fs/proc/cmdline.o`).
        object: String,
        /// The exit status, as text.
        status: String,
        /// The first diagnostic that stopped the build (kbuild prints progress lines first).
        first_error: String,
        /// The last 40 lines of stdout and stderr.
        output: String,
    },
    /// A tool could not be started (usually: not installed).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// `make` or `objcopy`.
        program: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `patch` refused the diff (it does not apply to this kernel's source); its output.
    #[error("applying the diff to the source tree failed:\n{0}")]
    Apply(String),
    /// `patch -R` failed: the shared source tree is left changed and must be fetched again.
    #[error("reversing the diff in the source tree at {tree} failed; delete {tree} so it is fetched again:\n{output}")]
    Reverse {
        /// The source tree's directory.
        tree: String,
        /// The last 40 lines of patch's output.
        output: String,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`create`, `copy`, `read`, ...).
        action: &'static str,
        /// The file or directory it was done to.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The compiled object has no function, so no livepatch can replace anything in it.
    #[error("{object} defines no functions; nothing in it can be live-patched")]
    NoFunctions {
        /// The object, relative to the tree.
        object: String,
    },
    /// Neither vmlinux nor a single module has the object's functions.
    #[error("cannot tell which binary {object} is part of: none of its functions ({sample}) is in vmlinux or in one module; {hint}")]
    UnknownOwner {
        /// The object, relative to the tree.
        object: String,
        /// Up to three of its functions, comma-separated.
        sample: String,
        /// What the author can do about it.
        hint: &'static str,
    },
    /// The kernel's Makefiles and config show the object is not compiled into this kernel.
    #[error("{object} is not built in this kernel's configuration: {proof}")]
    NotBuilt {
        /// The object, relative to the tree.
        object: String,
        /// The Makefile mentions and unset config options that show it.
        proof: String,
    },
    /// The kernel's files (symbols, module list) could not be had.
    #[error(transparent)]
    Kernel(#[from] patchbay_kernels::KernelError),
    /// A compiled object or a module file is not ELF the `object` crate can read.
    #[error("{path} is not a readable object: {reason}")]
    Elf {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// The module's name is not one a patch's manifest can hold (see `ObjectName`).
    #[error("module {module} cannot be named in a live patch: {source}")]
    ModuleName {
        /// The module name as found (`kvm-intel`).
        module: String,
        /// Why it is not a valid object name.
        source: patchbay_core::IdError,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ObjectsError {
    let path = path.display().to_string();
    move |source| ObjectsError::Io {
        action,
        path,
        source,
    }
}

/// Where an object's code runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The core kernel image.
    Vmlinux,
    /// A loadable module, named as the kernel and the patch's markers name it.
    Module(ObjectName),
}

impl Owner {
    /// The livepatch object the code belongs to (`vmlinux` or the module).
    pub fn object(&self) -> ObjectName {
        match self {
            Owner::Vmlinux => ObjectName::vmlinux(),
            Owner::Module(module) => module.clone(),
        }
    }
}

/// The owner for the module kbuild names `name` (`-` and `_` alike, as the kernel has it).
fn module_owner(name: &str) -> Result<Owner, ObjectsError> {
    name.parse()
        .map(Owner::Module)
        .map_err(|source| ObjectsError::ModuleName {
            module: name.to_owned(),
            source,
        })
}

/// Where `patchbay-diff.h` is installed for compiles in `tree` (outside the kernel's files).
pub fn diff_include_dir(tree: &SourceTree) -> PathBuf {
    tree.dir()
        .parent()
        .unwrap_or(tree.dir())
        .join("patchbay-include")
}

/// Compiles `source` (a `.c` path relative to the tree) and copies the object to `out`.
/// `patchbay-diff.h` is on the include path (the same for original and patched compiles).
pub fn compile_object(tree: &SourceTree, source: &str, out: &Path) -> Result<(), ObjectsError> {
    let include = diff_include_dir(tree);
    fs::create_dir_all(&include).map_err(io("create", &include))?;
    let header = include.join("patchbay-diff.h");
    if fs::read_to_string(&header).ok().as_deref() != Some(crate::PATCHBAY_DIFF_H) {
        fs::write(&header, crate::PATCHBAY_DIFF_H).map_err(io("write", &header))?;
    }
    let object = object_path(source);
    let built = tree.dir().join(&object);
    let _ = fs::remove_file(&built);
    let make = |target: &str| {
        tree.make()
            .arg(format!("KCFLAGS={EXTRA_CFLAGS} -I{}", include.display()))
            .arg(target)
            .output()
            .map_err(|source| ObjectsError::Spawn {
                program: "make",
                source,
            })
    };
    let output = make(&object)?;
    if !output.status.success() {
        let first = first_error(&output.stdout, &output.stderr);
        // A part of a composite object listed by a Makefile in another directory
        // (`amdgpu-y += ../display/dc/core/dc.o`) gets its include paths from that Makefile:
        // built on its own it misses headers. Asked for through that directory, kbuild
        // compiles it exactly as the kernel's build did.
        let mut compiled = false;
        if first.contains("No such file or directory") {
            for target in composite_targets(tree.dir(), &object) {
                let _ = fs::remove_file(&built);
                if make(&target)?.status.success() && built.is_file() {
                    compiled = true;
                    break;
                }
            }
        }
        if !compiled {
            return Err(ObjectsError::Compile {
                object,
                status: output.status.to_string(),
                first_error: first,
                output: tail(&output.stdout, &output.stderr),
            });
        }
    }
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    fs::copy(&built, out).map_err(io("copy", &built))?;
    remove_build_products(tree, &object);
    Ok(())
}

/// The files a diff changed in the tree, by content hash: with the kernel build, all that can
/// make one compile of a unit differ from another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TreeState {
    changed: std::collections::BTreeMap<String, String>,
    /// For changed headers: the translation units that include them (the include index).
    /// A header without an entry is taken to reach every unit.
    header_units: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl TreeState {
    /// The pristine tree.
    pub fn pristine() -> TreeState {
        TreeState::default()
    }

    /// The tree with `files` (relative paths) as they are now.
    pub fn of_files<'f>(
        tree: &SourceTree,
        files: impl IntoIterator<Item = &'f str>,
    ) -> Result<TreeState, ObjectsError> {
        use sha2::Digest as _;
        let mut changed = std::collections::BTreeMap::new();
        for file in files {
            let path = tree.dir().join(file);
            let hash = match fs::read(&path) {
                Ok(bytes) => hex::encode(sha2::Sha256::digest(&bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "absent".to_owned(),
                Err(e) => {
                    return Err(ObjectsError::Io {
                        action: "read",
                        path: path.display().to_string(),
                        source: e,
                    })
                }
            };
            changed.insert(file.to_owned(), hash);
        }
        Ok(TreeState {
            changed,
            header_units: Default::default(),
        })
    }

    /// Narrows which units each changed header reaches (from the include index), so that a
    /// unit's cached object stays valid when an unrelated header changes.
    pub fn with_header_units(
        mut self,
        units_of: impl Fn(&str) -> std::collections::BTreeSet<String>,
    ) -> TreeState {
        for path in self.changed.keys() {
            if !path.ends_with(".c") {
                self.header_units.insert(path.clone(), units_of(path));
            }
        }
        self
    }
}

/// Objects compiled before, beside the kernel (`<kernel>/object-cache/<key>.o`). The key is the
/// unit, the builder's flags and header, and the changed files that can reach the unit: its own
/// text, every changed header that includes it (per the include index; every changed header
/// when the index is not at hand), and a changed `.c` file the unit names (an
/// `#include "x.c"`). Entries are written whole (temp file, rename); a failed compile is
/// never cached. An upgrade builds each group and then all of them together: the second
/// build's objects come from here.
#[derive(Debug, Clone)]
pub(crate) struct ObjectCache {
    dir: PathBuf,
}

impl ObjectCache {
    pub fn new(dir: PathBuf) -> ObjectCache {
        ObjectCache { dir }
    }

    fn key(&self, tree: &SourceTree, source: &str, state: &TreeState) -> String {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        let text = fs::read(tree.dir().join(source)).unwrap_or_default();
        // "v1" versions the key's recipe (bump it when the recipe changes, so old entries stop
        // matching); the 0 byte after each part keeps two different splits from hashing alike.
        for part in ["v1", source, EXTRA_CFLAGS, crate::PATCHBAY_DIFF_H] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let text = String::from_utf8_lossy(&text);
        for (path, content) in &state.changed {
            let base = path.rsplit('/').next().unwrap_or(path);
            let header_reaches = !path.ends_with(".c")
                && state
                    .header_units
                    .get(path)
                    .is_none_or(|units| units.contains(source));
            let reaches = path == source
                || header_reaches
                || text.contains(&format!("/{base}\""))
                || text.contains(&format!("\"{base}\""));
            if reaches {
                hash.update(path.as_bytes());
                hash.update([0]);
                hash.update(content.as_bytes());
                hash.update([0]);
            }
        }
        hex::encode(hash.finalize())
    }

    /// [`compile_object`], or the cached object of an identical compile.
    pub fn compile(
        &self,
        tree: &SourceTree,
        source: &str,
        out: &Path,
        state: &TreeState,
    ) -> Result<(), ObjectsError> {
        let key = self.key(tree, source, state);
        let cached = self.dir.join(format!("{key}.o"));
        if cached.is_file() {
            if let Some(parent) = out.parent() {
                fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            if fs::copy(&cached, out).is_ok() {
                return Ok(());
            }
        }
        compile_object(tree, source, out)?;
        // A cache that cannot be written only costs time.
        if fs::create_dir_all(&self.dir).is_ok() {
            // Named after the key too: builds of two groups may fill the cache at once.
            let temp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
            if fs::copy(out, &temp).is_ok() && fs::rename(&temp, &cached).is_err() {
                let _ = fs::remove_file(&temp);
            }
        }
        Ok(())
    }
}

/// Renames undefined symbols of an object in place (`objcopy --redefine-sym`).
pub fn redefine_symbols(
    object: &Path,
    renames: &std::collections::BTreeMap<String, (String, String)>,
) -> Result<(), ObjectsError> {
    let mut command = Command::new("objcopy");
    for (name, (alias, _)) in renames {
        command.arg(format!("--redefine-sym={name}={alias}"));
    }
    let output = command
        .arg(object)
        .output()
        .map_err(|source| ObjectsError::Spawn {
            program: "objcopy",
            source,
        })?;
    if !output.status.success() {
        return Err(ObjectsError::Compile {
            object: object.display().to_string(),
            status: output.status.to_string(),
            first_error: first_error(&output.stdout, &output.stderr),
            output: tail(&output.stdout, &output.stderr),
        });
    }
    Ok(())
}

/// `fs/proc/cmdline.c` → `fs/proc/cmdline.o`.
pub fn object_path(source: &str) -> String {
    match source.strip_suffix(".c") {
        Some(stem) => format!("{stem}.o"),
        None => format!("{source}.o"),
    }
}

/// Removes what compiling one object left in the tree (the object and kbuild's `.cmd` file).
/// Make targets that reach `object` through the Makefile of a sibling directory of one of its
/// ancestors that names the directory it lives in (`drivers/gpu/drm/amd/amdgpu/Makefile`
/// names `display`: `drivers/gpu/drm/amd/amdgpu/../display/dc/core/dc.o`), nearest first.
/// Candidates only: the compile decides.
fn composite_targets(tree: &Path, object: &str) -> Vec<String> {
    let parts: Vec<&str> = object.split('/').collect();
    let mut targets = Vec::new();
    // parts = [a, b, …, file]; an ancestor keeps `keep` leading directories.
    for keep in (1..parts.len().saturating_sub(1)).rev().take(4) {
        let (Some(ancestor), Some(child), Some(rest)) =
            (parts.get(..keep), parts.get(keep), parts.get(keep..))
        else {
            continue;
        };
        let ancestor = ancestor.join("/");
        let Ok(entries) = fs::read_dir(tree.join(&ancestor)) else {
            continue;
        };
        let mut siblings: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != child)
            .collect();
        siblings.sort();
        for sibling in siblings {
            let makefile = tree.join(&ancestor).join(&sibling).join("Makefile");
            let Ok(text) = fs::read_to_string(&makefile) else {
                continue;
            };
            if names_word(&text, child) {
                targets.push(format!("{ancestor}/{sibling}/../{}", rest.join("/")));
            }
        }
        if targets.len() >= 3 {
            break;
        }
    }
    targets.truncate(3);
    targets
}

/// Whether `word` occurs in `text` as a whole word (Makefile names: letters, digits, `_`, `-`).
fn names_word(text: &str, word: &str) -> bool {
    contains_word(text, word, |c| {
        c.is_ascii_alphanumeric() || c == '_' || c == '-'
    })
}

/// Whether `word` occurs in `text` with no `is_name` character right before or after it.
pub(crate) fn contains_word(text: &str, word: &str, is_name: impl Fn(char) -> bool) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text.get(..at).and_then(|t| t.chars().next_back());
        let after = text.get(at + word.len()..).and_then(|t| t.chars().next());
        !before.is_some_and(&is_name) && !after.is_some_and(&is_name)
    })
}

fn remove_build_products(tree: &SourceTree, object: &str) {
    let built = tree.dir().join(object);
    let _ = fs::remove_file(&built);
    if let (Some(dir), Some(name)) = (built.parent(), built.file_name()) {
        let _ = fs::remove_file(dir.join(format!(".{}.cmd", name.to_string_lossy())));
    }
}

/// The source tree with a diff applied; reversed when dropped (or by [`PatchedTree::restore`],
/// which reports failure).
#[derive(Debug)]
pub struct PatchedTree<'a> {
    tree: &'a SourceTree,
    diff: PathBuf,
    applied: bool,
}

impl<'a> PatchedTree<'a> {
    /// Applies `diff` (`patch -p1`) to `tree`; [`ObjectsError::Apply`] when it does not apply.
    /// The diff is recorded beside the tree first, so that a build stopped before it is
    /// reversed leaves the next one a tree to repair ([`SourceTree::lock`]).
    pub fn apply(tree: &'a SourceTree, diff: &Path) -> Result<Self, ObjectsError> {
        tree.record_applied(diff)?;
        if let Err(output) = run_patch(tree.dir(), diff, false) {
            // `--batch --forward` after a successful dry run: nothing applied to reverse.
            tree.clear_applied()?;
            return Err(ObjectsError::Apply(output));
        }
        Ok(PatchedTree {
            tree,
            diff: diff.to_path_buf(),
            applied: true,
        })
    }

    /// Reverses the diff now, reporting a failure ([`ObjectsError::Reverse`]) that dropping
    /// would only ignore.
    pub fn restore(mut self) -> Result<(), ObjectsError> {
        self.applied = false;
        run_patch(self.tree.dir(), &self.diff, true).map_err(|output| ObjectsError::Reverse {
            tree: self.tree.dir().display().to_string(),
            output,
        })?;
        Ok(self.tree.clear_applied()?)
    }
}

impl Drop for PatchedTree<'_> {
    fn drop(&mut self) {
        // A failed reversal keeps the record: the next lock of the tree tries again.
        if self.applied && run_patch(self.tree.dir(), &self.diff, true).is_ok() {
            let _ = self.tree.clear_applied();
        }
    }
}

fn run_patch(dir: &Path, diff: &Path, reverse: bool) -> Result<(), String> {
    let mut command = Command::new("patch");
    command
        .current_dir(dir)
        .args([
            "-p1",
            "--batch",
            "--forward",
            "--silent",
            "--no-backup-if-mismatch",
            "-i",
        ])
        .arg(diff)
        .env("LC_ALL", "C");
    if reverse {
        command.arg("-R");
    }
    let out = command
        .output()
        .map_err(|e| format!("cannot run patch: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(tail(&out.stdout, &out.stderr))
    }
}

/// The compiler's (or linker's, or make's) first error line in a failed build's output.
fn first_error(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let is_error = |l: &&str| {
        l.contains(": error:")
            || l.contains("fatal error:")
            || l.contains("undefined reference")
            || l.contains("No rule to make target")
    };
    let line = text
        .lines()
        .find(is_error)
        .or_else(|| text.lines().find(|l| l.contains("Error ")))
        .unwrap_or("the build printed no error line");
    line.trim().chars().take(300).collect()
}

fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(40)..)
        .unwrap_or_default()
        .join("\n")
}

/// Names of the functions an object defines (static ones included).
pub fn defined_functions(object: &[u8], path: &Path) -> Result<Vec<String>, ObjectsError> {
    let file = object::File::parse(object).map_err(|e| ObjectsError::Elf {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut names: Vec<String> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .filter(|n| !n.is_empty() && !n.contains('.') && !super::elf::is_prefix_symbol(n))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Which binary the original object `compiled` (of `source`) is part of: vmlinux when its
/// functions are in the kernel's full symbol map; else the module kbuild's Makefiles link it
/// into (`kbuild_home`, which also proves "not built in this configuration"), else a module
/// under the same directory; in each case only if that binary's symbol table has the object's
/// functions.
pub fn owner(
    kernel: &Kernel,
    tree_dir: &Path,
    config: &KernelConfig,
    source: &str,
    compiled: &Path,
) -> Result<Owner, ObjectsError> {
    let bytes = fs::read(compiled).map_err(io("read", compiled))?;
    let functions = defined_functions(&bytes, compiled)?;
    if functions.is_empty() {
        return Err(ObjectsError::NoFunctions {
            object: object_path(source),
        });
    }
    let vmlinux = SymbolTable::load(&kernel.system_map()?)?;
    // A module's own symtab has no `[module]` names, so `lookup` covers it too.
    let all_in = |table: &SymbolTable| functions.iter().all(|f| !table.lookup(f).is_empty());
    if all_in(&vmlinux) {
        return Ok(Owner::Vmlinux);
    }
    let module_has_them = |name: &str| -> Result<bool, ObjectsError> {
        let Some(path) = kernel.find_module(name)? else {
            return Ok(false);
        };
        let ko = patchbay_kernels::read_module(&path)?;
        Ok(all_in(&SymbolTable::from_module_ko(&ko)?))
    };
    let index = KbuildIndex::scan(tree_dir).map_err(io("read the Makefiles of", tree_dir))?;
    match index.home(&object_path(source), config) {
        KbuildHome::Built(binaries) => {
            for binary in binaries {
                let Binary::Module(stem) = binary else {
                    continue;
                };
                let name = stem.rsplit('/').next().unwrap_or(&stem);
                if module_has_them(name)? {
                    return module_owner(name);
                }
            }
        }
        KbuildHome::NotBuilt(proof) => {
            return Err(ObjectsError::NotBuilt {
                object: object_path(source),
                proof: proof.join("; "),
            })
        }
        KbuildHome::Unknown => {}
    }
    // Modules built from this directory or a parent of it, nearest first.
    let order = fs::read_to_string(kernel.modules_dir().join("modules.order"))
        .map_err(io("read", &kernel.modules_dir().join("modules.order")))?;
    let source_dir = source.rsplit_once('/').map_or("", |(d, _)| d);
    let within = |dir: &str, ancestor: &str| {
        dir == ancestor || ancestor.is_empty() || dir.starts_with(&format!("{ancestor}/"))
    };
    // Modules of this directory or a parent, nearest first; then modules of a sibling of a
    // parent (a composite built by another directory's Makefile: amdgpu.ko links
    // `../display/…`), by how much of the path they share.
    let mut candidates: Vec<(bool, usize, &str)> = order
        .lines()
        .filter_map(|line| {
            let rel = line.trim().strip_prefix("kernel/")?;
            let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
            if within(source_dir, dir) {
                return Some((true, dir.len(), line.trim()));
            }
            let parent = dir.rsplit_once('/').map_or("", |(p, _)| p);
            (parent.matches('/').count() >= 2 && within(source_dir, parent)).then_some((
                false,
                parent.len(),
                line.trim(),
            ))
        })
        .collect();
    candidates.sort_by_key(|c| (std::cmp::Reverse(c.0), std::cmp::Reverse(c.1)));
    let siblings_tried = 8;
    let mut seen_siblings = 0;
    let candidates: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter(|(own, _, _)| {
            if *own {
                return true;
            }
            seen_siblings += 1;
            seen_siblings <= siblings_tried
        })
        .map(|(_, len, line)| (len, line))
        .collect();
    for (_, relative) in candidates {
        let name = relative
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".ko"))
            .unwrap_or(relative);
        if module_has_them(name)? {
            return module_owner(name);
        }
    }
    Err(ObjectsError::UnknownOwner {
        object: object_path(source),
        sample: functions
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        hint: "the object may be built only for another config, or its functions were all \
               inlined; patch the callers instead",
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn parts_of_composites_are_reached_through_the_makefile_that_names_their_directory() {
        let tree = tempfile::tempdir().unwrap();
        for (path, text) in [
            (
                "drivers/amd/amdgpu/Makefile",
                "DISPLAY_FOLDER_NAME=display\n",
            ),
            ("drivers/amd/pm/Makefile", "obj-y += pm.o # displayport\n"),
            ("drivers/amd/display/dc/core/Makefile", "\n"),
        ] {
            let file = tree.path().join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, text).unwrap();
        }
        assert_eq!(
            composite_targets(tree.path(), "drivers/amd/display/dc/core/dc.o"),
            vec!["drivers/amd/amdgpu/../display/dc/core/dc.o".to_owned()]
        );
        assert!(composite_targets(tree.path(), "fs/x.o").is_empty());
        assert!(names_word("a display b", "display"));
        assert!(!names_word("displayport", "display"));
        assert!(!names_word("DISPLAY_FOLDER", "display"));
    }

    #[test]
    fn the_first_error_of_a_kbuild_run() {
        let out = b"  DESCEND objtool\n  CALL scripts/checksyscalls.sh\n  CC [M]  net/bluetooth/hci_sync.o\n";
        let err = b"net/bluetooth/hci_sync.c: In function 'x':\n\
net/bluetooth/hci_sync.c:180:14: error: 'HCI_REQ_DONE' undeclared\n\
net/bluetooth/hci_sync.c:190:1: error: second\n\
make[1]: *** [scripts/Makefile.build:250: net/bluetooth/hci_sync.o] Error 1\n";
        assert_eq!(
            first_error(out, err),
            "net/bluetooth/hci_sync.c:180:14: error: 'HCI_REQ_DONE' undeclared"
        );
        assert_eq!(
            first_error(b"", b"make: *** [Makefile:1: x.o] Error 2\n"),
            "make: *** [Makefile:1: x.o] Error 2"
        );
        assert_eq!(first_error(b"", b""), "the build printed no error line");
    }
}
