//! What `sign-targets` shows of the channel documents an unsigned targets role adds or changes.
//!
//! A channel document decides which level every host of the channel loads (a signed rollback
//! goes down at once, a removed kernel leaves its hosts on what they run), so its size and hash
//! are not enough for the signer: each one is shown kernel by kernel, compared with the last
//! signed one. The documents come from the server that exported the role, so each is taken only
//! when its SHA-256 and length are what the role lists (and, for the last signed one, what the
//! verified previous role lists); a role whose changed document is not given is not signed.

use std::collections::BTreeMap;
use std::path::Path;

use patchbay_core::channel::{ChannelDoc, ChannelName, KernelRollout, CHANNEL_MAX_BYTES};
use patchbay_core::BuildId;

use crate::error::ServerError;
use crate::tuf::{TargetChange, TargetEntry};

/// Channel documents as `export-unsigned` writes them beside the role (`<sha256>.json`), keyed
/// by the SHA-256 of their bytes (never by their file names).
#[derive(Debug, Clone, Default)]
pub struct ChannelDocuments(BTreeMap<String, Vec<u8>>);

impl ChannelDocuments {
    /// The documents, keyed by their own hashes.
    pub fn new(documents: impl IntoIterator<Item = Vec<u8>>) -> Self {
        ChannelDocuments(
            documents
                .into_iter()
                .map(|bytes| (patchbay_core::Sha256::of(&bytes).as_str().to_owned(), bytes))
                .collect(),
        )
    }

    /// Every `*.json` file of `dir`; a missing directory holds none. A file larger than a
    /// channel document may be is refused.
    pub fn read_dir(dir: &Path) -> Result<Self, ServerError> {
        let io = |path: &Path, source: std::io::Error| ServerError::Io {
            path: path.display().to_string(),
            source,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io(dir, e)),
        };
        let mut documents = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| io(dir, e))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let length = std::fs::metadata(&path).map_err(|e| io(&path, e))?.len();
            if length > CHANNEL_MAX_BYTES {
                return Err(ServerError::BadRequest(format!(
                    "{}: {length} bytes, larger than a channel document may be \
                     ({CHANNEL_MAX_BYTES}); not a document export-unsigned wrote",
                    path.display()
                )));
            }
            documents.push(std::fs::read(&path).map_err(|e| io(&path, e))?);
        }
        Ok(Self::new(documents))
    }

    /// The document `entry` names (its SHA-256 and length), if given.
    fn named_by(&self, entry: &TargetEntry) -> Option<&[u8]> {
        self.0
            .get(&entry.sha256)
            .filter(|bytes| bytes.len() as u64 == entry.length)
            .map(Vec::as_slice)
    }
}

/// A channel document the role adds or changes: what it says, and what the last signed one
/// said (`None`: the channel is new, or its last signed document was not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelChange {
    /// The target name, `channels/<name>.json`.
    pub name: String,
    /// The last signed document, when known.
    pub before: Option<ChannelDoc>,
    /// Whether the channel was listed in the last signed role.
    pub existed: bool,
    /// The document the role signs.
    pub after: ChannelDoc,
}

impl ChannelChange {
    /// What the change takes from hosts: a kernel the channel no longer lists, or a level
    /// lower than the one it served. Never signed without `--allow-removals`.
    pub fn removals(&self) -> Vec<String> {
        let Some(before) = &self.before else {
            return Vec::new();
        };
        let mut removals = Vec::new();
        for (build_id, old) in &before.kernels {
            match self.after.kernels.get(build_id) {
                None => removals.push(format!(
                    "{}: kernel {build_id} removed (its hosts were served level {})",
                    self.name, old.level
                )),
                Some(new) if new.level < old.level => removals.push(format!(
                    "{}: kernel {build_id} lowered from level {} to level {}",
                    self.name, old.level, new.level
                )),
                Some(_) => {}
            }
        }
        removals
    }

    /// The change as the signer reads it: one line per kernel added, changed or removed.
    pub fn render(&self) -> String {
        let after = &self.after;
        let mut out = format!(
            "  channel {} ({}): serial {}, updated {}\n",
            after.channel, self.name, after.serial, after.updated
        );
        let Some(before) = &self.before else {
            if self.existed {
                out.push_str(
                    "    the last signed document was not given: every kernel shown as it will \
                     be\n",
                );
            }
            for (build_id, rollout) in &after.kernels {
                out.push_str(&format!("    + kernel {build_id}: {}\n", describe(rollout)));
            }
            if after.kernels.is_empty() {
                out.push_str("    no kernel listed\n");
            }
            return out;
        };
        let mut unchanged = 0;
        let ids: std::collections::BTreeSet<&BuildId> =
            before.kernels.keys().chain(after.kernels.keys()).collect();
        for build_id in ids {
            match (before.kernels.get(build_id), after.kernels.get(build_id)) {
                (None, Some(new)) => {
                    out.push_str(&format!("    + kernel {build_id}: {}\n", describe(new)));
                }
                (Some(old), None) => out.push_str(&format!(
                    "    - kernel {build_id}: REMOVED (was {})\n",
                    describe(old)
                )),
                (Some(old), Some(new)) if old == new => unchanged += 1,
                (Some(old), Some(new)) => {
                    let lower = if new.level < old.level {
                        "  LOWER: its hosts go down, losing the fixes of the levels above"
                    } else {
                        ""
                    };
                    out.push_str(&format!(
                        "    ~ kernel {build_id}:{lower}\n        was: {}\n        now: {}\n",
                        describe(old),
                        describe(new)
                    ));
                }
                (None, None) => {}
            }
        }
        out.push_str(&format!(
            "    {unchanged} kernel(s) unchanged (serial {} before)\n",
            before.serial
        ));
        out
    }
}

/// One kernel's rollout in words: level, what hosts outside the rollout get, from when, waves.
fn describe(rollout: &KernelRollout) -> String {
    let mut text = format!("level {}", rollout.level);
    match rollout.previous {
        Some(previous) => text.push_str(&format!(", previous level {previous}")),
        None => text.push_str(", previous none"),
    }
    text.push_str(&format!(
        ", from {}",
        patchbay_core::clock::rfc3339(rollout.effective_at)
    ));
    if !rollout.waves.is_empty() {
        let waves: Vec<String> = rollout
            .waves
            .iter()
            .map(|w| format!("{}% at {}", w.percent, patchbay_core::clock::rfc3339(w.at)))
            .collect();
        text.push_str(&format!(", waves {}", waves.join(", ")));
    }
    if rollout.pinned {
        text.push_str(", pinned");
    }
    text
}

/// The channel documents among `changes` (added or changed `channels/*.json` targets), each
/// read from `documents` and checked against the entry the role lists; `previous` is the last
/// signed role's targets, whose entry names the document to compare with. A changed document
/// that was not given, or that is not a channel document for its name, is refused.
pub fn channel_changes(
    changes: &[TargetChange],
    previous: &BTreeMap<String, TargetEntry>,
    documents: &ChannelDocuments,
) -> Result<Vec<ChannelChange>, ServerError> {
    let mut reviewed = Vec::new();
    for change in changes {
        let (name, entry) = match change {
            TargetChange::Added { name, entry } => (name, entry),
            TargetChange::Changed { name, after, .. } => (name, after),
            TargetChange::Removed { .. } => continue,
        };
        let Some(channel) = name
            .strip_prefix("channels/")
            .and_then(|rest| rest.strip_suffix(".json"))
        else {
            continue;
        };
        let channel: ChannelName = channel.parse().map_err(|e| {
            ServerError::BadRequest(format!("{name}: not a channel Patchbay names: {e}"))
        })?;
        let bytes = documents.named_by(entry).ok_or_else(|| {
            ServerError::BadRequest(format!(
                "{name} is signed by this role, but its document (sha256 {}, {} bytes) was not \
                 given: sign-targets shows what a channel serves before signing it. Bring the \
                 directory export-unsigned wrote beside the role (<output>.documents) and pass \
                 it with --documents",
                entry.sha256, entry.length
            ))
        })?;
        let parse = |bytes: &[u8]| {
            ChannelDoc::parse(bytes, &channel).map_err(|e| {
                ServerError::BadRequest(format!(
                    "{name}: the document the role lists is not a channel document hosts \
                     accept ({e}); do not sign it, and find out who made it"
                ))
            })
        };
        let after = parse(bytes)?;
        let before = match previous.get(name) {
            Some(old) => documents.named_by(old).map(parse).transpose()?,
            None => None,
        };
        reviewed.push(ChannelChange {
            name: name.clone(),
            before,
            existed: previous.contains_key(name),
            after,
        });
    }
    Ok(reviewed)
}
