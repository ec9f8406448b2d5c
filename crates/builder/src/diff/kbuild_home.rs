//! Which binary an object is linked into, read from kbuild's own Makefiles: `obj-y` (vmlinux),
//! `obj-m` / `obj-$(CONFIG_X)` (a module or vmlinux, by the kernel's config), and composite
//! objects (`kvm-y += $(KVM)/eventfd.o`: part of `kvm.o`, whatever directory the part lives in,
//! also through `include`d Makefile fragments such as `virt/kvm/Makefile.kvm`).
//!
//! The answer is a set of candidates that the caller confirms against the kernel's symbol tables
//! (`objects::owner`), or a proof that this kernel's configuration does not build the object:
//! every Makefile line that names it is conditional on a `CONFIG_` option that is not set.
//! Conditionals around lines (`ifdef`, `ifeq`) are not evaluated, so they can only add
//! candidates, never a false "not built".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::preflight::KernelConfig;

/// A binary of the running kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Binary {
    /// The core kernel image.
    Vmlinux,
    /// A module by its kbuild name (`kvm`, `kvm-intel`), relative directory included
    /// (`arch/x86/kvm/kvm`).
    Module(String),
}

/// What kbuild's Makefiles say about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KbuildHome {
    /// Linked into one of these (to be confirmed by symbols).
    Built(BTreeSet<Binary>),
    /// Not built with this configuration; the lines and options that prove it.
    NotBuilt(Vec<String>),
    /// No Makefile names the object.
    Unknown,
}

/// One object-list assignment `<lhs> += <paths>` (the paths are indexed in `by_path`), in a
/// Makefile whose paths are relative to `dir` (the including Makefile's directory for
/// `include`d fragments).
#[derive(Debug, Clone)]
struct Assignment {
    file: String,
    dir: String,
    lhs: String,
}

/// Every object-list assignment of the tree's Makefiles.
#[derive(Debug, Default)]
pub struct KbuildIndex {
    assignments: Vec<Assignment>,
    /// Tree path an assignment names (`fs/proc/cmdline.o`, or `fs/proc/` for a directory) →
    /// the assignments naming it: lookups stay cheap when thousands of units are asked about.
    by_path: BTreeMap<String, Vec<usize>>,
}

/// Directories that hold no kernel objects (or other architectures').
pub fn skipped_dir(relative: &str) -> bool {
    [
        "Documentation",
        "tools",
        "scripts",
        "samples",
        "usr",
        ".git",
    ]
    .contains(&relative)
        || (relative.starts_with("arch/") && !relative.starts_with("arch/x86"))
}

impl KbuildIndex {
    /// Reads every `Makefile` and `Kbuild` file below `tree` (x86 only under `arch/`).
    pub fn scan(tree: &Path) -> std::io::Result<KbuildIndex> {
        let mut index = KbuildIndex::default();
        let mut pending = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            let dir = tree.join(&relative);
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = relative.join(&name);
                let kind = entry.file_type()?;
                if kind.is_dir() && !kind.is_symlink() {
                    if !skipped_dir(&child.to_string_lossy()) {
                        pending.push(child);
                    }
                } else if name == "Makefile" || name == "Kbuild" {
                    files.push(child);
                }
            }
            for file in files {
                let dir = relative.to_string_lossy().into_owned();
                index.read_makefile(tree, &file, &dir, 0);
            }
        }
        Ok(index)
    }

    /// Parses one Makefile (and what it `include`s from the tree) into assignments.
    fn read_makefile(&mut self, tree: &Path, file: &Path, dir: &str, depth: usize) {
        let Ok(text) = std::fs::read_to_string(tree.join(file)) else {
            return;
        };
        let shown = file.to_string_lossy().into_owned();
        let mut variables: BTreeMap<String, String> = BTreeMap::new();
        for line in logical_lines(&text) {
            if let Some(included) = line
                .strip_prefix("include ")
                .or_else(|| line.strip_prefix("-include "))
            {
                let included = included.trim();
                let path = included
                    .strip_prefix("$(srctree)/")
                    .map(str::to_owned)
                    .or_else(|| {
                        included
                            .strip_prefix("$(src)/")
                            .map(|rest| join_path(dir, rest))
                    });
                if let (Some(path), true) = (path, depth < 4) {
                    self.read_makefile(tree, Path::new(&path), dir, depth + 1);
                }
                continue;
            }
            let Some((lhs, op, rhs)) = split_assignment(&line) else {
                continue;
            };
            let rhs_expanded = expand(rhs, &variables);
            if !lhs.contains('$') {
                let value = variables.entry(lhs.to_owned()).or_default();
                match op {
                    "+=" => {
                        value.push(' ');
                        value.push_str(&rhs_expanded);
                    }
                    "?=" if !value.is_empty() => {}
                    _ => *value = rhs_expanded.clone(),
                }
            }
            if is_object_list(lhs) {
                let words: Vec<String> =
                    rhs_expanded.split_whitespace().map(str::to_owned).collect();
                let index = self.assignments.len();
                for word in &words {
                    let mut path = join_path(dir, word);
                    if word.ends_with('/') {
                        path.push('/');
                    }
                    self.by_path.entry(path).or_default().push(index);
                }
                self.assignments.push(Assignment {
                    file: shown.clone(),
                    dir: dir.to_owned(),
                    lhs: lhs.to_owned(),
                });
            }
        }
    }

    /// The assignments that name `path` (an object, or a directory with a trailing `/`).
    fn naming(&self, path: &str) -> Vec<&Assignment> {
        self.by_path
            .get(path)
            .into_iter()
            .flatten()
            .filter_map(|index| self.assignments.get(*index))
            .collect()
    }

    /// Where kbuild links `object` (`virt/kvm/eventfd.o`) under `config`.
    pub fn home(&self, object: &str, config: &KernelConfig) -> KbuildHome {
        if let Some(arch) = object
            .strip_prefix("arch/")
            .and_then(|rest| rest.split_once('/'))
            .map(|(arch, _)| arch)
            .filter(|arch| *arch != "x86")
        {
            return KbuildHome::NotBuilt(vec![format!(
                "arch/{arch}/ is another architecture's code: this kernel is built for x86, \
                 whose build reads only arch/x86/ of arch/"
            )]);
        }
        self.home_at(object, config, 0)
    }

    /// Why `dir` is not descended into with `config`: every line of its parent's Makefile that
    /// names `dir/` is conditional on an option that is not set (checked up to the top).
    fn unreached_dir(&self, dir: &str, config: &KernelConfig) -> Option<String> {
        let mut current = dir;
        while let Some((parent, _)) = current.rsplit_once('/') {
            let lines = self.naming(&format!("{current}/"));
            let unset_option = |a: &Assignment| {
                a.lhs
                    .strip_prefix("obj-$(")
                    .and_then(|o| o.strip_suffix(')'))
                    .filter(|option| matches!(config.get(option), None | Some("n")))
                    .map(str::to_owned)
            };
            if !lines.is_empty() && lines.iter().all(|a| unset_option(a).is_some()) {
                let options: Vec<String> = lines.iter().filter_map(|a| unset_option(a)).collect();
                return Some(format!(
                    "{}: `{current}/` is built only with {}, not set in this kernel's config",
                    lines.first().map(|a| a.file.as_str()).unwrap_or_default(),
                    options.join(" or ")
                ));
            }
            current = parent;
        }
        None
    }

    fn home_at(&self, object: &str, config: &KernelConfig, depth: usize) -> KbuildHome {
        let mut built = BTreeSet::new();
        let mut proofs = Vec::new();
        let mentions = self.naming(object);
        if mentions.is_empty() || depth > 4 {
            return KbuildHome::Unknown;
        }
        let stem = object.strip_suffix(".o").unwrap_or(object);
        for mention in mentions {
            let (kind, selector) = match mention.lhs.rsplit_once('-') {
                Some(parts) => parts,
                None => continue,
            };
            let value = match selector {
                "y" | "objs" => Some("y"),
                "m" => Some("m"),
                option => option
                    .strip_prefix("$(")
                    .and_then(|o| o.strip_suffix(')'))
                    .map(|option| config.get(option).unwrap_or("")),
            };
            let Some(value) = value else { continue };
            if value.is_empty() || value == "n" {
                proofs.push(format!(
                    "{}: `{} += … {} …`, and {} is not set in this kernel's config",
                    mention.file,
                    mention.lhs,
                    object.rsplit('/').next().unwrap_or(object),
                    selector.trim_start_matches("$(").trim_end_matches(')')
                ));
                continue;
            }
            match kind {
                "obj" if value == "m" => {
                    built.insert(Binary::Module(stem.to_owned()));
                }
                "obj" | "lib" => {
                    built.insert(Binary::Vmlinux);
                }
                // A part of a composite object `<kind>.o` of the Makefile's directory.
                composite => match self.home_at(
                    &join_path(&mention.dir, &format!("{composite}.o")),
                    config,
                    depth + 1,
                ) {
                    KbuildHome::Built(binaries) => built.extend(binaries),
                    KbuildHome::NotBuilt(more) => proofs.extend(more),
                    KbuildHome::Unknown => {}
                },
            }
        }
        if !built.is_empty() {
            let dir = object.rsplit_once('/').map_or("", |(d, _)| d);
            if let Some(proof) = self.unreached_dir(dir, config) {
                return KbuildHome::NotBuilt(vec![proof]);
            }
            KbuildHome::Built(built)
        } else if !proofs.is_empty() {
            KbuildHome::NotBuilt(proofs)
        } else {
            KbuildHome::Unknown
        }
    }
}

/// Lines with `\` continuations joined and comments removed.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let without_comment = raw.split('#').next().unwrap_or("");
        if let Some(continued) = without_comment.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(without_comment);
        lines.push(current.trim().to_owned());
        current.clear();
    }
    if !current.is_empty() {
        lines.push(current.trim().to_owned());
    }
    lines
}

/// `lhs op rhs` for `=`, `:=`, `+=`, `?=` assignments.
fn split_assignment(line: &str) -> Option<(&str, &str, &str)> {
    let position = line.find('=')?;
    let (before, after) = line.split_at(position);
    let rhs = after.get(1..)?.trim();
    let (lhs, op) = match before.chars().last() {
        Some(c @ ('+' | ':' | '?')) => (
            before.get(..before.len() - 1)?,
            match c {
                '+' => "+=",
                ':' => ":=",
                _ => "?=",
            },
        ),
        _ => (before, "="),
    };
    let lhs = lhs.trim();
    let valid = !lhs.is_empty()
        && lhs
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.$(){}".contains(c));
    valid.then_some((lhs, op, rhs))
}

/// `obj-y`, `obj-$(CONFIG_X)`, `kvm-y`, `ntfs3-objs`, `lib-y`: lists of objects.
fn is_object_list(lhs: &str) -> bool {
    let Some((kind, selector)) = lhs.rsplit_once('-') else {
        return false;
    };
    let selector_ok = matches!(selector, "y" | "m" | "objs")
        || (selector.starts_with("$(CONFIG_") && selector.ends_with(')'));
    let kind_ok = !kind.is_empty()
        && !kind.contains('$')
        && ![
            "ccflags",
            "asflags",
            "ldflags",
            "subdir",
            "cflags",
            "always",
            "targets",
            "extra",
            "hostprogs",
            "userprogs",
            "CFLAGS",
            "AFLAGS",
        ]
        .iter()
        .any(|k| kind.starts_with(k));
    selector_ok && kind_ok
}

/// Expands `$(VAR)` references to variables of the same Makefile (unknown ones stay).
fn expand(text: &str, variables: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for _ in 0..4 {
        let mut changed = false;
        for (name, value) in variables {
            let reference = format!("$({name})");
            if out.contains(&reference) {
                out = out.replace(&reference, value.trim());
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    out
}

/// `dir` + `relative`, with `.` and `..` resolved (`arch/x86/kvm` + `../../../virt/kvm/x.o`
/// → `virt/kvm/x.o`).
pub fn join_path(dir: &str, relative: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn composite_parts_from_other_directories_and_includes() {
        let dir = tree(&[
            (
                "virt/kvm/Makefile.kvm",
                "KVM ?= ../../../virt/kvm\nkvm-y := $(KVM)/kvm_main.o $(KVM)/eventfd.o\n\
                 kvm-$(CONFIG_KVM_VFIO) += $(KVM)/vfio.o\n",
            ),
            (
                "arch/x86/kvm/Makefile",
                "include $(srctree)/virt/kvm/Makefile.kvm\nkvm-y += x86.o \\\n\t lapic.o\n\
                 obj-$(CONFIG_KVM) += kvm.o\nobj-$(CONFIG_KVM_INTEL) += kvm-intel.o\n\
                 kvm-intel-y += vmx/vmx.o\n",
            ),
            (
                "arch/arm64/kvm/Makefile",
                "obj-y += ../../../virt/kvm/eventfd.o\n",
            ),
            (
                "fs/proc/Makefile",
                "obj-y += proc.o\nproc-y := cmdline.o base.o\n",
            ),
            (
                "fs/Makefile",
                "obj-$(CONFIG_PROC_FS) += proc/\nobj-$(CONFIG_NTFS3_FS) += ntfs3/\n\
                 obj-$(CONFIG_QUOTA) += quota/\n",
            ),
            ("fs/quota/Makefile", "obj-y += dquot.o\n"),
            (
                "fs/ntfs3/Makefile",
                "obj-$(CONFIG_NTFS3_FS) += ntfs3.o\nntfs3-y := attrib.o \\\n\t\txattr.o\n",
            ),
        ]);
        let index = KbuildIndex::scan(dir.path()).unwrap();
        let config = KernelConfig::parse("CONFIG_KVM=m\nCONFIG_KVM_INTEL=m\nCONFIG_PROC_FS=y\n");
        let module = |m: &str| KbuildHome::Built(BTreeSet::from([Binary::Module(m.into())]));
        assert_eq!(
            index.home("virt/kvm/eventfd.o", &config),
            module("arch/x86/kvm/kvm")
        );
        assert_eq!(
            index.home("arch/x86/kvm/lapic.o", &config),
            module("arch/x86/kvm/kvm")
        );
        assert_eq!(
            index.home("arch/x86/kvm/vmx/vmx.o", &config),
            module("arch/x86/kvm/kvm-intel")
        );
        assert_eq!(
            index.home("fs/proc/cmdline.o", &config),
            KbuildHome::Built(BTreeSet::from([Binary::Vmlinux]))
        );
        let KbuildHome::NotBuilt(proof) = index.home("fs/ntfs3/xattr.o", &config) else {
            panic!("ntfs3 is not configured");
        };
        assert!(proof[0].contains("CONFIG_NTFS3_FS"), "{proof:?}");
        let KbuildHome::NotBuilt(proof) = index.home("virt/kvm/vfio.o", &config) else {
            panic!("CONFIG_KVM_VFIO is not set");
        };
        assert!(proof[0].contains("CONFIG_KVM_VFIO"), "{proof:?}");
        assert_eq!(index.home("fs/nowhere.o", &config), KbuildHome::Unknown);
        // Another architecture's code, whatever its Makefile says.
        let KbuildHome::NotBuilt(proof) = index.home("arch/arm64/kvm/vgic.o", &config) else {
            panic!("arch/arm64 is not built for x86");
        };
        assert!(proof[0].contains("arch/arm64/"), "{proof:?}");
        // `obj-y` in a directory its parent builds only with an unset option.
        let KbuildHome::NotBuilt(proof) = index.home("fs/quota/dquot.o", &config) else {
            panic!("fs/quota/ is not descended into");
        };
        assert!(proof[0].contains("CONFIG_QUOTA"), "{proof:?}");
        // Built in: the composite is linked into vmlinux.
        let builtin = KernelConfig::parse("CONFIG_KVM=y\n");
        assert_eq!(
            index.home("virt/kvm/eventfd.o", &builtin),
            KbuildHome::Built(BTreeSet::from([Binary::Vmlinux]))
        );
    }

    #[test]
    fn paths_join_like_make() {
        assert_eq!(
            join_path("arch/x86/kvm", "../../../virt/kvm/x.o"),
            "virt/kvm/x.o"
        );
        assert_eq!(join_path("fs/proc", "./a.o"), "fs/proc/a.o");
        assert_eq!(join_path("", "init/main.o"), "init/main.o");
    }
}
