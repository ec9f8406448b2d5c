//! The server's TUF repository: keys, root, and the signed targets/snapshot/timestamp chain.
//!
//! Files (under the data dir): `keys/<role>.pk8` (Ed25519 PKCS#8 DER, mode 0600; root keys may
//! live elsewhere, see `init --offline-root`), `tuf/metadata/{root.json, N.root.json,
//! N.targets.json, N.snapshot.json, timestamp.json}`. The metadata files are the truth for the
//! current versions; every write is atomic (temp file, fsync, rename) and `timestamp.json`, the
//! file clients start from, is written last, so a crash never serves a torn chain.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde_json::Value;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, KeyHolder, Metafile, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Targets,
    Timestamp,
};
use tough::TargetName;

use crate::config::TufConfig;
use crate::error::ServerError;

const SPEC_VERSION: &str = "1.0.0";

/// One TUF target as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEntry {
    pub sha256: String,
    pub length: u64,
    /// The target's signed `custom` metadata.
    pub custom: serde_json::Map<String, Value>,
}

/// The versions of the current metadata chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainVersions {
    pub root: u64,
    pub targets: u64,
    pub snapshot: u64,
    pub timestamp: u64,
}

/// The repository on disk.
#[derive(Debug, Clone)]
pub struct TufRepo {
    pub metadata_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub config: TufConfig,
}

fn tuf_err(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tuf(format!("{what}: {e}"))
}

fn io_err(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

fn expires_in(seconds: i64) -> Result<jiff::Timestamp, ServerError> {
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .map_err(|e| tuf_err("expiry out of range", e))
}

fn version(n: u64) -> Result<NonZeroU64, ServerError> {
    NonZeroU64::new(n).ok_or_else(|| ServerError::Tuf("metadata version 0".into()))
}

fn generate_key(path: &Path) -> Result<(), ServerError> {
    let rng = SystemRandom::new();
    let document =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| tuf_err("generate an Ed25519 key", e))?;
    write_private(path, document.as_ref())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(dir, e))?;
    }
    patchbay_core::fsutil::write_private(path, bytes).map_err(|e| io_err(path, e))
}

fn key_source(path: &Path) -> Box<dyn KeySource> {
    Box::new(LocalKeySource {
        path: path.to_path_buf(),
    })
}

async fn public_key(path: &Path) -> Result<(Decoded<Hex>, tough::schema::key::Key), ServerError> {
    let signer = key_source(path)
        .as_sign()
        .await
        .map_err(|e| tuf_err(&format!("read key {}", path.display()), e))?;
    let key = signer.tuf_key();
    let id = key.key_id().map_err(|e| tuf_err("key id", e))?;
    Ok((id, key))
}

fn hashes(sha256_hex: &str) -> Result<Hashes, ServerError> {
    let bytes = hex::decode(sha256_hex).map_err(|e| tuf_err("sha256 hex", e))?;
    Ok(Hashes {
        sha256: Decoded::from(bytes),
        _extra: HashMap::new(),
    })
}

fn sha256_hex(data: &[u8]) -> String {
    patchbay_core::Sha256::of(data).as_str().to_owned()
}

impl TufRepo {
    pub fn new(data_dir: &Path, config: TufConfig) -> TufRepo {
        TufRepo {
            metadata_dir: data_dir.join("tuf/metadata"),
            keys_dir: data_dir.join("keys"),
            config,
        }
    }

    fn role_key(&self, role: &str) -> PathBuf {
        self.keys_dir.join(format!("{role}.pk8"))
    }

    /// Creates keys and the first root, targets, snapshot and timestamp (empty targets).
    /// Root keys go to `root_key_dir` (the keys dir unless the administrator moves them away).
    /// Returns the key ids of the root keys.
    pub async fn init(&self, root_key_dir: &Path) -> Result<Vec<String>, ServerError> {
        if self.metadata_dir.join("root.json").exists() {
            return Err(ServerError::Conflict(format!(
                "{} already holds a TUF repository; use a new --data directory",
                self.metadata_dir.display()
            )));
        }
        let root_count = self.config.root_keys.max(self.config.root_threshold).max(1);
        let mut root_paths = Vec::new();
        for i in 1..=root_count {
            let path = root_key_dir.join(format!("root-{i}.pk8"));
            generate_key(&path)?;
            root_paths.push(path);
        }
        for role in ["targets", "snapshot", "timestamp"] {
            generate_key(&self.role_key(role))?;
        }
        let mut keys = HashMap::new();
        let mut root_ids = Vec::new();
        for path in &root_paths {
            let (id, key) = public_key(path).await?;
            root_ids.push(id.clone());
            keys.insert(id, key);
        }
        let mut roles = HashMap::new();
        roles.insert(
            RoleType::Root,
            RoleKeys {
                keyids: root_ids.clone(),
                threshold: version(u64::from(self.config.root_threshold.max(1)))?,
                _extra: HashMap::new(),
            },
        );
        for (role, name) in [
            (RoleType::Targets, "targets"),
            (RoleType::Snapshot, "snapshot"),
            (RoleType::Timestamp, "timestamp"),
        ] {
            let (id, key) = public_key(&self.role_key(name)).await?;
            keys.insert(id.clone(), key);
            roles.insert(
                role,
                RoleKeys {
                    keyids: vec![id],
                    threshold: version(1)?,
                    _extra: HashMap::new(),
                },
            );
        }
        let root = Root {
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: true,
            version: version(1)?,
            expires: expires_in(i64::from(self.config.root_expires_days) * 86_400)?,
            keys,
            roles,
            _extra: HashMap::new(),
        };
        let sources: Vec<Box<dyn KeySource>> = root_paths.iter().map(|p| key_source(p)).collect();
        let signed = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root),
            &sources,
            &SystemRandom::new(),
        )
        .await
        .map_err(|e| tuf_err("sign root.json", e))?;
        std::fs::create_dir_all(&self.metadata_dir).map_err(|e| io_err(&self.metadata_dir, e))?;
        self.write_meta("1.root.json", signed.buffer())?;
        self.write_meta("root.json", signed.buffer())?;
        self.publish(&BTreeMap::new()).await?;
        Ok(root_ids
            .iter()
            .map(|id| hex::encode(id.as_ref() as &[u8]))
            .collect())
    }

    fn write_meta(&self, name: &str, bytes: &[u8]) -> Result<(), ServerError> {
        let path = self.metadata_dir.join(name);
        patchbay_core::fsutil::write_atomic(&path, bytes).map_err(|e| io_err(&path, e))
    }

    fn read_meta(&self, name: &str) -> Result<Vec<u8>, ServerError> {
        let path = self.metadata_dir.join(name);
        std::fs::read(&path).map_err(|e| io_err(&path, e))
    }

    /// The trusted root (newest version), as served.
    pub fn root_bytes(&self) -> Result<Vec<u8>, ServerError> {
        self.read_meta("root.json")
    }

    fn root(&self) -> Result<Root, ServerError> {
        let signed: Signed<Root> = serde_json::from_slice(&self.root_bytes()?)
            .map_err(|e| tuf_err("parse root.json", e))?;
        Ok(signed.signed)
    }

    /// The versions of the chain currently served.
    pub fn versions(&self) -> Result<Option<ChainVersions>, ServerError> {
        if !self.metadata_dir.join("timestamp.json").exists() {
            return Ok(None);
        }
        let timestamp: Signed<Timestamp> =
            serde_json::from_slice(&self.read_meta("timestamp.json")?)
                .map_err(|e| tuf_err("parse timestamp.json", e))?;
        let snapshot_version = timestamp
            .signed
            .meta
            .get("snapshot.json")
            .map(|m| m.version.get())
            .ok_or_else(|| ServerError::Tuf("timestamp.json lists no snapshot.json".into()))?;
        let snapshot: Signed<Snapshot> =
            serde_json::from_slice(&self.read_meta(&format!("{snapshot_version}.snapshot.json"))?)
                .map_err(|e| tuf_err("parse snapshot", e))?;
        let targets = snapshot
            .signed
            .meta
            .get("targets.json")
            .map(|m| m.version.get())
            .ok_or_else(|| ServerError::Tuf("snapshot lists no targets.json".into()))?;
        Ok(Some(ChainVersions {
            root: self.root()?.version.get(),
            targets,
            snapshot: snapshot_version,
            timestamp: timestamp.signed.version.get(),
        }))
    }

    /// The signed targets role currently served.
    pub fn current_targets(&self) -> Result<Option<Signed<Targets>>, ServerError> {
        let Some(v) = self.versions()? else {
            return Ok(None);
        };
        let targets =
            serde_json::from_slice(&self.read_meta(&format!("{}.targets.json", v.targets))?)
                .map_err(|e| tuf_err("parse targets", e))?;
        Ok(Some(targets))
    }

    /// Whether the targets key is on this server (it may be kept offline).
    pub fn has_targets_key(&self) -> bool {
        self.role_key("targets").exists()
    }

    fn online_keys(&self, roles: &[&str]) -> Result<Vec<Box<dyn KeySource>>, ServerError> {
        roles
            .iter()
            .map(|role| {
                let path = self.role_key(role);
                if path.exists() {
                    Ok(key_source(&path))
                } else {
                    Err(ServerError::OfflineKey(format!(
                        "the {role} key ({}) is not on this server; sign with it on the offline \
                         machine (see docs/server.md, \"Offline keys\")",
                        path.display()
                    )))
                }
            })
            .collect()
    }

    /// The unsigned targets role for `targets` at the next version (for offline signing).
    pub fn next_targets(
        &self,
        targets: &BTreeMap<String, TargetEntry>,
    ) -> Result<Targets, ServerError> {
        let next = self.versions()?.map_or(1, |v| v.targets + 1);
        let mut role = Targets::new(
            SPEC_VERSION.into(),
            version(next)?,
            expires_in(i64::from(self.config.targets_expires_days) * 86_400)?,
        );
        for (name, entry) in targets {
            let name = TargetName::new(name.as_str()).map_err(|e| tuf_err("target name", e))?;
            role.targets.insert(
                name,
                Target {
                    length: entry.length,
                    hashes: hashes(&entry.sha256)?,
                    custom: entry.custom.clone().into_iter().collect(),
                    _extra: HashMap::new(),
                },
            );
        }
        Ok(role)
    }

    /// Signs `targets` as the next targets version (online targets key), then snapshot and
    /// timestamp. Returns the new targets version.
    pub async fn publish(
        &self,
        targets: &BTreeMap<String, TargetEntry>,
    ) -> Result<u64, ServerError> {
        let role = self.next_targets(targets)?;
        let keys = self.online_keys(&["targets"])?;
        let root = self.root()?;
        let signed = SignedRole::new(role, &KeyHolder::Root(root), &keys, &SystemRandom::new())
            .await
            .map_err(|e| tuf_err("sign targets", e))?;
        self.install_targets(signed.buffer()).await
    }

    /// Installs a signed targets role (from `publish` or signed offline): verifies it against
    /// root and the current version, then writes it with a new snapshot and timestamp.
    pub async fn install_targets(&self, signed_bytes: &[u8]) -> Result<u64, ServerError> {
        let root = self.root()?;
        let signed: Signed<Targets> = serde_json::from_slice(signed_bytes)
            .map_err(|e| ServerError::BadRequest(format!("not a signed targets role: {e}")))?;
        root.verify_role(&signed)
            .map_err(|e| ServerError::BadRequest(format!("targets signature refused: {e}")))?;
        let current = self.versions()?;
        let new_version = signed.signed.version.get();
        if let Some(v) = current {
            if new_version <= v.targets {
                return Err(ServerError::Conflict(format!(
                    "targets version {new_version} is not newer than the served {}",
                    v.targets
                )));
            }
        }
        self.write_meta(&format!("{new_version}.targets.json"), signed_bytes)?;
        let snapshot_version = current.map_or(1, |v| v.snapshot + 1);
        let mut snapshot = Snapshot::new(
            SPEC_VERSION.into(),
            version(snapshot_version)?,
            expires_in(i64::from(self.config.snapshot_expires_days) * 86_400)?,
        );
        snapshot.meta.insert(
            "targets.json".into(),
            Metafile {
                length: Some(signed_bytes.len() as u64),
                hashes: Some(hashes(&sha256_hex(signed_bytes))?),
                version: version(new_version)?,
                _extra: HashMap::new(),
            },
        );
        let keys = self.online_keys(&["snapshot"])?;
        let signed_snapshot = SignedRole::new(
            snapshot,
            &KeyHolder::Root(root),
            &keys,
            &SystemRandom::new(),
        )
        .await
        .map_err(|e| tuf_err("sign snapshot", e))?;
        self.write_meta(
            &format!("{snapshot_version}.snapshot.json"),
            signed_snapshot.buffer(),
        )?;
        self.write_timestamp(snapshot_version, signed_snapshot.buffer())
            .await?;
        Ok(new_version)
    }

    async fn write_timestamp(
        &self,
        snapshot_version: u64,
        snapshot_bytes: &[u8],
    ) -> Result<(), ServerError> {
        let lifetime = i64::from(self.config.timestamp_expires_hours) * 3_600;
        self.write_timestamp_for(snapshot_version, snapshot_bytes, lifetime)
            .await
    }

    /// Re-signs the timestamp (next version) with a lifetime of `seconds`, negative meaning
    /// already expired. For client tests (freeze attacks) and to cut a timestamp's lifetime.
    pub async fn resign_timestamp_with_lifetime(&self, seconds: i64) -> Result<(), ServerError> {
        let v = self
            .versions()?
            .ok_or_else(|| ServerError::Tuf("no repository yet".into()))?;
        let snapshot = self.read_meta(&format!("{}.snapshot.json", v.snapshot))?;
        self.write_timestamp_for(v.snapshot, &snapshot, seconds)
            .await
    }

    async fn write_timestamp_for(
        &self,
        snapshot_version: u64,
        snapshot_bytes: &[u8],
        lifetime_secs: i64,
    ) -> Result<(), ServerError> {
        let next = self.versions()?.map_or(1, |v| v.timestamp + 1);
        let mut timestamp = Timestamp::new(
            SPEC_VERSION.into(),
            version(next)?,
            expires_in(lifetime_secs)?,
        );
        timestamp.meta.insert(
            "snapshot.json".into(),
            Metafile {
                length: Some(snapshot_bytes.len() as u64),
                hashes: Some(hashes(&sha256_hex(snapshot_bytes))?),
                version: version(snapshot_version)?,
                _extra: HashMap::new(),
            },
        );
        let keys = self.online_keys(&["timestamp"])?;
        let signed = SignedRole::new(
            timestamp,
            &KeyHolder::Root(self.root()?),
            &keys,
            &SystemRandom::new(),
        )
        .await
        .map_err(|e| tuf_err("sign timestamp", e))?;
        self.write_meta("timestamp.json", signed.buffer())
    }

    /// Re-signs the timestamp when less than half of its lifetime remains. Returns whether it did.
    pub async fn refresh_timestamp(&self) -> Result<bool, ServerError> {
        let Some(v) = self.versions()? else {
            return Ok(false);
        };
        let timestamp: Signed<Timestamp> =
            serde_json::from_slice(&self.read_meta("timestamp.json")?)
                .map_err(|e| tuf_err("parse timestamp.json", e))?;
        let lifetime = i64::from(self.config.timestamp_expires_hours) * 3_600;
        let remaining = timestamp.signed.expires.as_second() - jiff::Timestamp::now().as_second();
        if remaining > lifetime / 2 {
            return Ok(false);
        }
        let snapshot = self.read_meta(&format!("{}.snapshot.json", v.snapshot))?;
        self.write_timestamp(v.snapshot, &snapshot).await?;
        Ok(true)
    }

    /// Every metadata file name currently on disk (for export).
    pub fn metadata_files(&self) -> Result<Vec<PathBuf>, ServerError> {
        let mut files = Vec::new();
        let entries =
            std::fs::read_dir(&self.metadata_dir).map_err(|e| io_err(&self.metadata_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&self.metadata_dir, e))?;
            if entry.file_name().to_string_lossy().ends_with(".json") {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Signs an unsigned targets role (JSON of `Targets`) with a targets key file: the offline half
/// of the targets-key procedure. `root` is the repository's `root.json`.
pub async fn sign_targets_offline(
    unsigned: &[u8],
    root_json: &[u8],
    key: &Path,
) -> Result<Vec<u8>, ServerError> {
    let role: Targets = serde_json::from_slice(unsigned)
        .map_err(|e| ServerError::BadRequest(format!("not an unsigned targets role: {e}")))?;
    let root: Signed<Root> = serde_json::from_slice(root_json)
        .map_err(|e| ServerError::BadRequest(format!("not a root.json: {e}")))?;
    let keys = vec![key_source(key)];
    let signed = SignedRole::new(
        role,
        &KeyHolder::Root(root.signed),
        &keys,
        &SystemRandom::new(),
    )
    .await
    .map_err(|e| tuf_err(&format!("sign with {}", key.display()), e))?;
    Ok(signed.buffer().clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn timestamp_is_re_signed_when_half_its_lifetime_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let repo = TufRepo::new(dir.path(), TufConfig::default());
        repo.init(&dir.path().join("keys")).await.unwrap();
        let v1 = repo.versions().unwrap().unwrap();
        // Fresh: nothing to do.
        assert!(!repo.refresh_timestamp().await.unwrap());
        // A timestamp with one minute left is re-signed with the full lifetime.
        repo.resign_timestamp_with_lifetime(60).await.unwrap();
        assert!(repo.refresh_timestamp().await.unwrap());
        let v2 = repo.versions().unwrap().unwrap();
        assert_eq!(v2.timestamp, v1.timestamp + 2);
        assert_eq!((v2.snapshot, v2.targets), (v1.snapshot, v1.targets));
        let ts: Signed<Timestamp> =
            serde_json::from_slice(&repo.read_meta("timestamp.json").unwrap()).unwrap();
        let left = ts.signed.expires.as_second() - jiff::Timestamp::now().as_second();
        assert!(left > 23 * 3600, "{left}");
        assert!(!repo.refresh_timestamp().await.unwrap());
    }
}
