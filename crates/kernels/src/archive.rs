//! Patchbay's own view of Debian's archive: a private apt configuration under the cache.
//!
//! The kernels of every supported line come from suites the host's apt sources may not have
//! (a Debian 12 host has no `trixie`, usually no `bookworm-backports`). The host's `/etc/apt`
//! is never touched: apt runs with its own sources list, package lists, cache and an empty
//! dpkg status under `<cache>/apt/`, the suites taken from the table in `lines`. The lists are
//! refreshed when older than a day (under a lock, once for concurrent callers).
//!
//! Mirrors: `PATCHBAY_DEBIAN_MIRROR` (default `http://deb.debian.org/debian`) and
//! `PATCHBAY_DEBIAN_SECURITY_MIRROR` (default `http://deb.debian.org/debian-security`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::lines::{self, Archive};
use crate::{fsutil, KernelError};

/// The keyring apt checks the archive's signatures with (package debian-archive-keyring).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const MAX_LIST_AGE: Duration = Duration::from_secs(24 * 3600);
/// Touched after a successful `apt-get update`; its age is the lists' age.
const UPDATED_STAMP: &str = "updated";

fn mirror(variable: &str, default: &str) -> String {
    std::env::var(variable)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map_or_else(
            || default.to_string(),
            |v| v.trim().trim_end_matches('/').to_string(),
        )
}

/// The sources list for every suite of the table.
pub(crate) fn sources_list() -> String {
    let main = mirror("PATCHBAY_DEBIAN_MIRROR", "http://deb.debian.org/debian");
    let security = mirror(
        "PATCHBAY_DEBIAN_SECURITY_MIRROR",
        "http://deb.debian.org/debian-security",
    );
    lines::all_suites()
        .iter()
        .map(|suite| {
            let uri = match suite.archive {
                Archive::Main => &main,
                Archive::Security => &security,
            };
            format!("deb [signed-by={KEYRING}] {uri} {} main\n", suite.name)
        })
        .collect()
}

fn dir() -> PathBuf {
    crate::cache_root().join("apt")
}

/// An apt program (`apt-get`, `apt-cache`) configured for the private archive view.
pub(crate) fn command(program: &str) -> Command {
    let dir = dir();
    let mut command = Command::new(program);
    let options = [
        format!(
            "Dir::Etc::SourceList={}",
            dir.join("sources.list").display()
        ),
        format!(
            "Dir::Etc::SourceParts={}",
            dir.join("sources.list.d").display()
        ),
        format!(
            "Dir::Etc::Preferences={}",
            dir.join("preferences").display()
        ),
        format!(
            "Dir::Etc::PreferencesParts={}",
            dir.join("preferences.d").display()
        ),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        format!("Dir::State::status={}", dir.join("status").display()),
        format!("Dir::Cache={}", dir.join("cache").display()),
        format!(
            "Dir::Cache::pkgcache={}",
            dir.join("cache/pkgcache.bin").display()
        ),
        "Dir::Cache::srcpkgcache=".to_string(),
        "APT::Architecture=amd64".to_string(),
        "Acquire::Languages=none".to_string(),
        // The lists live under the user's cache, which apt's sandbox user cannot enter.
        "APT::Sandbox::User=root".to_string(),
    ];
    for option in options {
        command.arg("-o").arg(option);
    }
    command.env("LC_ALL", "C");
    command
}

/// Lays out the private configuration and refreshes the package lists when they are missing,
/// older than a day, or were made for another sources list (a changed mirror).
pub(crate) fn ensure_fresh() -> Result<(), KernelError> {
    update(false)
}

/// `apt-get update` of the private lists when they are not fresh, or always with `force`. When
/// the archive cannot be reached but lists of these sources exist (older than a day), those are
/// used: kernels already in the cache stay usable offline.
fn update(force: bool) -> Result<(), KernelError> {
    let dir = dir();
    let sources = sources_list();
    if !force && is_fresh(&dir, &sources) {
        return Ok(());
    }
    for sub in [
        "sources.list.d",
        "preferences.d",
        "lists/partial",
        "cache/archives/partial",
    ] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(|e| KernelError::io("create", &path, e))?;
    }
    let _lock = fsutil::lock(&dir.join("update.lock"))?;
    if !force && is_fresh(&dir, &sources) {
        return Ok(()); // refreshed by someone else while we waited
    }
    let status = dir.join("status");
    if !status.is_file() {
        fs::write(&status, b"").map_err(|e| KernelError::io("create", &status, e))?;
    }
    let list = dir.join("sources.list");
    patchbay_core::fsutil::write_atomic(&list, sources.as_bytes())
        .map_err(|e| KernelError::io("write", &list, e))?;
    let stamp = dir.join(UPDATED_STAMP);
    let had_lists = fs::read_to_string(&stamp).is_ok_and(|s| s == sources);
    match crate::process::run(
        command("apt-get").args(["update", "-q"]),
        "check the network and the mirror (PATCHBAY_DEBIAN_MIRROR)",
    ) {
        Ok(_) => {
            fs::write(&stamp, sources.as_bytes()).map_err(|e| KernelError::io("write", &stamp, e))
        }
        Err(_) if had_lists && !force => Ok(()),
        Err(error) => Err(error),
    }
}

/// Refreshes the package lists now, whatever their age (a watcher's round wants what Debian
/// published in the last hours).
pub(crate) fn refresh() -> Result<(), KernelError> {
    update(true)
}

/// Fresh: updated less than a day ago, for exactly these sources.
fn is_fresh(dir: &Path, sources: &str) -> bool {
    let stamp = dir.join(UPDATED_STAMP);
    let young = fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < MAX_LIST_AGE);
    young && fs::read_to_string(&stamp).is_ok_and(|s| s == sources)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn sources_cover_every_suite_of_the_table_once() {
        let list = sources_list();
        for suite in [
            "bookworm",
            "bookworm-security",
            "bookworm-backports",
            "trixie",
            "trixie-security",
        ] {
            let line_ends = format!(" {suite} main");
            assert_eq!(
                list.lines().filter(|l| l.ends_with(&line_ends)).count(),
                1,
                "{list}"
            );
        }
        assert!(list.lines().all(|l| l.starts_with("deb [signed-by=")));
        assert!(list.contains("debian-security trixie-security"));
    }
}
