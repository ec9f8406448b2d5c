//! Picking kernel modules (with their dependencies) out of an unpacked `lib/modules/<release>`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::error::VmError;

/// The modules to copy into the guest and the `modules.dep` lines describing them.
#[derive(Debug)]
pub(crate) struct ResolvedModules {
    pub release: String,
    /// Path relative to the release directory in the guest (always a plain `.ko`) → host
    /// file (a `.ko`, or Debian's `.ko.xz`/`.ko.zst`, decompressed when copied).
    pub files: BTreeMap<String, PathBuf>,
    /// Path relative to the release directory → every dependency it needs, in `modules.dep`
    /// order (the module to load first is listed last, as depmod writes it).
    pub dependencies: BTreeMap<String, Vec<String>>,
}

/// Kernel-side module name: the file name without `.ko*`, with `-` spelled `_`.
pub(crate) fn normalize_module_name(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name_of_file(file_name: &str) -> Option<(String, bool)> {
    for (suffix, compressed) in [
        (".ko", false),
        (".ko.xz", true),
        (".ko.zst", true),
        (".ko.gz", true),
    ] {
        if let Some(stem) = file_name.strip_suffix(suffix) {
            return Some((normalize_module_name(stem), compressed));
        }
    }
    None
}

/// Module name → path relative to `release_dir`, for every module file below it.
/// Symlinks (such as `build` and `source`, which point outside the tree) are not followed.
fn index_modules(release_dir: &Path) -> Result<HashMap<String, String>, VmError> {
    let mut index = HashMap::new();
    let mut pending = vec![(release_dir.to_path_buf(), String::new())];
    while let Some((dir, relative)) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|cause| VmError::ModulesDir {
            path: dir.clone(),
            cause,
        })?;
        for entry in entries {
            let entry = entry.map_err(|cause| VmError::ModulesDir {
                path: dir.clone(),
                cause,
            })?;
            let file_type = entry.file_type().map_err(|cause| VmError::ModulesDir {
                path: entry.path(),
                cause,
            })?;
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            let child_relative = if relative.is_empty() {
                file_name.clone()
            } else {
                format!("{relative}/{file_name}")
            };
            if file_type.is_dir() {
                pending.push((entry.path(), child_relative));
            } else if file_type.is_file() {
                if let Some((name, _)) = module_name_of_file(&file_name) {
                    // Same name twice should not happen in a kernel tree; keep the first seen.
                    index.entry(name).or_insert(child_relative);
                }
            }
        }
    }
    Ok(index)
}

/// The `depends=` list from a module's `.modinfo` section.
/// A module file's ELF bytes, decompressed when Debian compressed it (6.12 ships `.ko.xz`):
/// busybox's `insmod` loads plain modules only.
pub(crate) fn module_bytes(path: &Path) -> Result<Vec<u8>, VmError> {
    patchbay_kernels::read_module(path).map_err(|e| VmError::ModuleInfo {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The guest's name for a module file: `kernel/fs/9p/9p.ko.xz` → `kernel/fs/9p/9p.ko`.
fn guest_relative(relative: &str) -> String {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|suffix| relative.strip_suffix(suffix))
        .unwrap_or(relative)
        .to_owned()
}

fn module_dependencies(path: &Path) -> Result<Vec<String>, VmError> {
    let data = module_bytes(path)?;
    let info_error = |reason: String| VmError::ModuleInfo {
        path: path.to_path_buf(),
        reason,
    };
    let info =
        patchbay_core::modinfo::Modinfo::of_module(&data).map_err(|e| info_error(e.to_string()))?;
    Ok(info
        .depends()
        .into_iter()
        .map(normalize_module_name)
        .collect())
}

/// The modules built into the kernel (`modules.builtin`: `kernel/drivers/virtio/virtio_pci.ko`
/// per line), by name: asked for, they are already there (6.12 builds `virtio_pci` in).
fn builtin_modules(modules_dir: &Path) -> std::collections::HashSet<String> {
    std::fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.rsplit('/').next())
        .filter_map(module_name_of_file)
        .map(|(name, _)| name)
        .collect()
}

pub(crate) fn resolve(modules_dir: &Path, names: &[&str]) -> Result<ResolvedModules, VmError> {
    let release = modules_dir
        .file_name()
        .and_then(|name| name.to_str())
        .filter(|name| !name.is_empty() && !name.starts_with('.'))
        .ok_or_else(|| VmError::ModulesRelease {
            path: modules_dir.to_path_buf(),
        })?
        .to_owned();
    let index = index_modules(modules_dir)?;
    let builtin = builtin_modules(modules_dir);

    // Depth-first walk; `load_order` ends up with every module after its dependencies.
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut load_order: Vec<String> = Vec::new();
    for requested in names {
        let mut stack: Vec<(String, bool)> = vec![(normalize_module_name(requested), false)];
        while let Some((name, dependencies_done)) = stack.pop() {
            if dependencies_done {
                if !load_order.contains(&name) {
                    load_order.push(name);
                }
                continue;
            }
            if direct.contains_key(&name) {
                continue;
            }
            if !index.contains_key(&name) && builtin.contains(&name) {
                continue; // built into the kernel: nothing to load
            }
            let relative = index.get(&name).ok_or_else(|| VmError::ModuleNotFound {
                name: name.clone(),
                dir: modules_dir.to_path_buf(),
            })?;
            let host_path = modules_dir.join(relative);
            let dependencies = module_dependencies(&host_path)?;
            stack.push((name.clone(), true));
            for dependency in dependencies.iter().rev() {
                if !direct.contains_key(dependency) {
                    stack.push((dependency.clone(), false));
                }
            }
            direct.insert(name, dependencies);
        }
    }

    let relative_of = |name: &String| -> Result<String, VmError> {
        index
            .get(name)
            .cloned()
            .ok_or_else(|| VmError::ModuleNotFound {
                name: name.clone(),
                dir: modules_dir.to_path_buf(),
            })
    };
    let position: HashMap<&String, usize> = load_order
        .iter()
        .enumerate()
        .map(|(index, name)| (name, index))
        .collect();

    let mut files = BTreeMap::new();
    let mut dependencies = BTreeMap::new();
    for name in &load_order {
        let relative = relative_of(name)?;
        // All transitive dependencies, the one to load first listed last.
        let mut transitive: Vec<&String> = Vec::new();
        let mut pending: Vec<&String> = direct
            .get(name)
            .map(|d| d.iter().collect())
            .unwrap_or_default();
        while let Some(dependency) = pending.pop() {
            if !transitive.contains(&dependency) {
                transitive.push(dependency);
                if let Some(more) = direct.get(dependency) {
                    pending.extend(more.iter());
                }
            }
        }
        transitive.sort_by_key(|dependency| std::cmp::Reverse(position.get(dependency).copied()));
        let transitive = transitive
            .into_iter()
            .map(|d| relative_of(d).map(|r| guest_relative(&r)))
            .collect::<Result<Vec<_>, _>>()?;
        files.insert(guest_relative(&relative), modules_dir.join(&relative));
        dependencies.insert(guest_relative(&relative), transitive);
    }
    Ok(ResolvedModules {
        release,
        files,
        dependencies,
    })
}

/// `modules.dep` text in the format depmod writes and busybox modprobe reads.
pub(crate) fn render_modules_dep(dependencies: &BTreeMap<String, Vec<String>>) -> String {
    let mut text = String::new();
    for (module, needs) in dependencies {
        text.push_str(module);
        text.push(':');
        for need in needs {
            text.push(' ');
            text.push_str(need);
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn module_file_names() {
        assert_eq!(
            module_name_of_file("9pnet-virtio.ko"),
            Some(("9pnet_virtio".to_owned(), false))
        );
        assert_eq!(
            module_name_of_file("foo.ko.xz"),
            Some(("foo".to_owned(), true))
        );
        assert_eq!(module_name_of_file("modules.dep"), None);
    }

    #[test]
    fn built_in_modules_need_nothing_copied() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("6.12.95+deb12-amd64");
        std::fs::create_dir_all(release.join("kernel")).unwrap();
        std::fs::write(
            release.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/ext4/ext4.ko\n",
        )
        .unwrap();
        let resolved = resolve(&release, &["virtio_pci", "virtio-pci"]).unwrap();
        assert!(resolved.files.is_empty() && resolved.dependencies.is_empty());
        assert!(matches!(
            resolve(&release, &["virtio_net"]),
            Err(VmError::ModuleNotFound { .. })
        ));
    }

    #[test]
    fn compressed_modules_get_plain_names_in_the_guest() {
        assert_eq!(
            guest_relative("kernel/fs/9p/9p.ko.xz"),
            "kernel/fs/9p/9p.ko"
        );
        assert_eq!(guest_relative("kernel/fs/9p/9p.ko"), "kernel/fs/9p/9p.ko");
        assert_eq!(guest_relative("extra/x.ko.zst"), "extra/x.ko");
    }

    #[test]
    fn modules_dep_rendering() {
        let mut deps = BTreeMap::new();
        deps.insert(
            "kernel/fs/9p/9p.ko".to_owned(),
            vec!["kernel/net/9p/9pnet.ko".to_owned()],
        );
        deps.insert("kernel/net/9p/9pnet.ko".to_owned(), vec![]);
        assert_eq!(
            render_modules_dep(&deps),
            "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko\nkernel/net/9p/9pnet.ko:\n"
        );
    }
}
