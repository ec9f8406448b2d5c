//! What `patchbay-server doctor` reports: one finding per precondition, each `ok`, `WARN`
//! (the operator should act) or `FAIL` (something the server reports is wrong until they do).
//! The checks live beside what they check ([`crate::Service::cve_data_findings`]; the TUF keys
//! here, [`key_findings`]); the CLI prints them and exits 1 when any is not `ok`.

use std::fmt;
use std::path::PathBuf;

use crate::config::TufConfig;
use crate::tuf::{KeysOnDisk, RoleName};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Nothing to do.
    Ok,
    /// The operator should act soon (e.g. CVE data older than `cve.max_age_days`).
    Warn,
    /// What the server reports is wrong or unknown until the operator acts (e.g. no CVE data).
    Fail,
}

impl Verdict {
    /// The label `doctor` prints, padded to one width: `ok   `, `WARN `, `FAIL `.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok   ",
            Verdict::Warn => "WARN ",
            Verdict::Fail => "FAIL ",
        }
    }
}

/// One line of `doctor`'s report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How the check came out.
    pub verdict: Verdict,
    /// What was found and, when not ok, what to do.
    pub text: String,
}

impl Finding {
    /// A finding with `verdict` saying `text`.
    pub fn new(verdict: Verdict, text: impl Into<String>) -> Finding {
        Finding {
            verdict,
            text: text.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verdict.label(), self.text)
    }
}

/// One line per TUF role: which of its keys sit in the keys directory and what a thief of
/// them (whoever copies this machine's disk) could do. A root key here is a `WARN`: it signs
/// any root, so everything. The freeze bounds are the lifetimes this server signs with
/// (`[tuf]` of `config.toml`).
pub fn key_findings(keys: &[KeysOnDisk], config: &TufConfig) -> Vec<Finding> {
    let days = |role: RoleName| role.lifetime_secs(config) / 86_400;
    let (snapshot_days, targets_days) = (days(RoleName::Snapshot), days(RoleName::Targets));
    keys.iter()
        .map(|k| {
            let role = k.role;
            if k.files.is_empty() {
                let why = match role {
                    RoleName::Root => "a copy of this machine cannot sign a new root",
                    RoleName::Targets => {
                        "a copy of this machine cannot sign a module; changes are signed \
                         offline (export-unsigned, sign-targets, import-signed)"
                    }
                    RoleName::Snapshot | RoleName::Timestamp => {
                        "this server cannot renew it: hosts refuse updates once it expires"
                    }
                };
                return Finding::new(
                    Verdict::Ok,
                    format!("{role} key offline (none of its keys in the keys directory): {why}"),
                );
            }
            let files = describe_files(&k.files);
            let share = if k.can_sign() {
                String::new()
            } else {
                format!(
                    " ({} of the {} needed: a thief needs the rest)",
                    k.files.len(),
                    k.threshold
                )
            };
            let (verdict, thief) = match role {
                RoleName::Root => (
                    Verdict::Warn,
                    "a thief can sign any root, so new keys for every role and any module for \
                     every host: everything. Move it offline: root rotate --role root \
                     --new-root-key-out FILE (docs/server.md, \"Offline keys\")"
                        .to_owned(),
                ),
                RoleName::Targets => (
                    Verdict::Ok,
                    "a thief can sign any module for every host and set every channel's level \
                     (keep it offline to prevent that: docs/server.md, \"Offline keys\")"
                        .to_owned(),
                ),
                RoleName::Snapshot => (
                    Verdict::Ok,
                    format!(
                        "a thief holding the timestamp key too can freeze hosts on what they \
                         last fetched, or mix-and-match the signed targets versions newer than \
                         theirs, until targets.json expires (up to {targets_days} days); no \
                         module of its own"
                    ),
                ),
                RoleName::Timestamp => (
                    Verdict::Ok,
                    format!(
                        "a thief can freeze hosts on what they last fetched until snapshot.json \
                         expires (up to {snapshot_days} days; with the snapshot key too, until \
                         targets.json expires, up to {targets_days} days); no module of its own"
                    ),
                ),
            };
            Finding::new(
                verdict,
                format!("{role} key online: {files}{share}: {thief}"),
            )
        })
        .collect()
}

fn describe_files(files: &[PathBuf]) -> String {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn on_disk(role: RoleName, files: &[&str], threshold: u64) -> KeysOnDisk {
        KeysOnDisk {
            role,
            files: files.iter().map(PathBuf::from).collect(),
            threshold,
        }
    }

    #[test]
    fn a_root_key_online_warns_and_every_line_says_what_a_thief_could_do() {
        let config = TufConfig {
            targets_expires_days: 60,
            snapshot_expires_days: 5,
            ..TufConfig::default()
        };
        let keys = [
            on_disk(RoleName::Root, &["/d/keys/root-1.pk8"], 2),
            on_disk(RoleName::Targets, &[], 1),
            on_disk(RoleName::Snapshot, &["/d/keys/snapshot.pk8"], 1),
            on_disk(RoleName::Timestamp, &["/d/keys/timestamp.pk8"], 1),
        ];
        let found = key_findings(&keys, &config);
        let verdicts: Vec<Verdict> = found.iter().map(|f| f.verdict).collect();
        assert_eq!(
            verdicts,
            [Verdict::Warn, Verdict::Ok, Verdict::Ok, Verdict::Ok],
            "{found:?}"
        );
        let root = &found[0].text;
        assert!(
            root.contains("/d/keys/root-1.pk8")
                && root.contains("1 of the 2 needed")
                && root.contains("sign any root"),
            "{root}"
        );
        assert!(
            found[1].text.starts_with("targets key offline"),
            "{found:?}"
        );
        // The freeze bounds are the configured lifetimes, not fixed text.
        assert!(found[2].text.contains("up to 60 days"), "{}", found[2].text);
        assert!(
            found[3].text.contains("up to 5 days") && found[3].text.contains("up to 60 days"),
            "{}",
            found[3].text
        );
        let offline_root = key_findings(&[on_disk(RoleName::Root, &[], 1)], &config);
        assert_eq!(offline_root[0].verdict, Verdict::Ok, "{offline_root:?}");
        let online_targets = key_findings(&[on_disk(RoleName::Targets, &["/t.pk8"], 1)], &config);
        assert!(
            online_targets[0].text.contains("any module for every host"),
            "{online_targets:?}"
        );
    }
}
