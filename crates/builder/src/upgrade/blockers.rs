//! Functions that blocked a live patch's transition on one kernel build, remembered across runs.
//!
//! A kernel thread that never leaves a function (Bluetooth's `rfcomm_run`) blocks every patch of
//! that function, on every verification of that build. Learning it again costs a whole QEMU
//! round; remembered beside the kernel's cache entry, the next upgrade of the same build drops
//! the groups that replace it before the first boot, and says where the knowledge came from.
//! Deleting the file makes the next verification learn again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file, in the kernel's cache entry (one kernel build).
const FILE_NAME: &str = "transition-blockers.json";
const FORMAT: u32 = 1;

/// When a verification saw a transition blocked in a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observed {
    /// RFC 3339 UTC time of the verification run that saw it.
    pub seen: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockersFile {
    format: u32,
    functions: BTreeMap<String, Observed>,
}

/// The functions known to block transitions on one kernel build.
#[derive(Debug)]
pub struct KnownBlockers {
    path: PathBuf,
    functions: BTreeMap<String, Observed>,
}

impl KnownBlockers {
    /// Reads what earlier runs learned about the kernel whose cache entry is `kernel_dir`; none
    /// when no run learned anything yet. A file this version cannot read is an error that names
    /// it (the caller goes on without it).
    pub fn load(kernel_dir: &Path) -> Result<KnownBlockers, String> {
        let path = kernel_dir.join(FILE_NAME);
        let functions = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: BlockersFile = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "{} is not readable ({e}); delete it to start over",
                        path.display()
                    )
                })?;
                if file.format != FORMAT {
                    return Err(format!(
                        "{} has format {}, this version reads {FORMAT}; delete it to start over",
                        path.display(),
                        file.format
                    ));
                }
                file.functions
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(KnownBlockers { path, functions })
    }

    /// Where the knowledge is kept (for reports).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The functions, with when each was seen blocking.
    pub fn functions(&self) -> impl Iterator<Item = (&str, &Observed)> {
        self.functions.iter().map(|(f, o)| (f.as_str(), o))
    }

    /// Remembers that a verification at `seen` saw transitions blocked in `functions`, and
    /// writes the file (atomically: a crash leaves the old or the new file, never half). Text
    /// that is not a kernel function name (a console line cut short) is not remembered.
    pub fn record(&mut self, functions: &[String], seen: &str) -> std::io::Result<()> {
        let names = functions
            .iter()
            .filter(|f| patchbay_core::manifest::is_kernel_function_name(f));
        for function in names {
            self.functions.insert(
                function.clone(),
                Observed {
                    seen: seen.to_owned(),
                },
            );
        }
        let file = BlockersFile {
            format: FORMAT,
            functions: self.functions.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        json.push(b'\n');
        patchbay_core::fsutil::write_atomic(&self.path, &json)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn what_a_run_learns_the_next_run_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut known = KnownBlockers::load(dir.path()).unwrap();
        assert_eq!(known.functions().count(), 0);
        known
            .record(&["rfcomm_run".to_owned()], "2026-11-30T12:52:00Z")
            .unwrap();
        known
            .record(
                &["kauditd_thread".to_owned(), "cut [<0>".to_owned()],
                "2026-11-30T13:00:00Z",
            )
            .unwrap();
        let again = KnownBlockers::load(dir.path()).unwrap();
        let functions: Vec<(&str, &str)> = again
            .functions()
            .map(|(f, o)| (f, o.seen.as_str()))
            .collect();
        assert_eq!(
            functions,
            vec![
                ("kauditd_thread", "2026-11-30T13:00:00Z"),
                ("rfcomm_run", "2026-11-30T12:52:00Z")
            ]
        );
        assert_eq!(again.path(), dir.path().join(FILE_NAME));
    }

    #[test]
    fn an_unreadable_file_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"{\"format\": 1, \"functions\": ").unwrap();
        let err = KnownBlockers::load(dir.path()).unwrap_err();
        assert!(
            err.contains(FILE_NAME) && err.contains("delete it"),
            "{err}"
        );
        std::fs::write(&path, b"{\"format\": 9, \"functions\": {}}").unwrap();
        let err = KnownBlockers::load(dir.path()).unwrap_err();
        assert!(err.contains("format 9"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"format\": 9, \"functions\": {}}"
        );
    }
}
