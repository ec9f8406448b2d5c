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
    /// The target's sha256 (hex).
    pub sha256: String,
    /// Its size in bytes.
    pub length: u64,
    /// The target's signed `custom` metadata.
    pub custom: serde_json::Map<String, Value>,
}

/// A targets role's targets as the server lists them (name, sha256, length, custom).
pub fn target_entries(role: &Targets) -> BTreeMap<String, TargetEntry> {
    role.targets
        .iter()
        .map(|(name, target)| {
            (
                name.raw().to_owned(),
                TargetEntry {
                    sha256: hex::encode(target.hashes.sha256.as_ref() as &[u8]),
                    length: target.length,
                    custom: target.custom.clone().into_iter().collect(),
                },
            )
        })
        .collect()
}

/// The versions of the current metadata chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainVersions {
    /// The newest `root.json` version.
    pub root: u64,
    /// The served `targets.json` version; it goes up with every publication or channel change.
    pub targets: u64,
    /// The served `snapshot.json` version.
    pub snapshot: u64,
    /// The served `timestamp.json` version.
    pub timestamp: u64,
}

/// The four top-level roles the server signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleName {
    /// `root.json`: the keys of every role; signed by the root keys.
    Root,
    /// `targets.json`: the bundles and channel documents, with their hashes.
    Targets,
    /// `snapshot.json`: the version of `targets.json` that goes with it.
    Snapshot,
    /// `timestamp.json`: the current snapshot; short-lived, so a frozen mirror is noticed.
    Timestamp,
}

impl RoleName {
    /// Every role, in the order a refresh looks at them (a new targets role implies a new
    /// snapshot and timestamp, so those come after it).
    pub const ALL: [RoleName; 4] = [
        RoleName::Root,
        RoleName::Targets,
        RoleName::Snapshot,
        RoleName::Timestamp,
    ];

    /// The role's name in TUF and its metadata file stem: `root`, `targets`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Root => "root",
            RoleName::Targets => "targets",
            RoleName::Snapshot => "snapshot",
            RoleName::Timestamp => "timestamp",
        }
    }

    fn role_type(self) -> RoleType {
        match self {
            RoleName::Root => RoleType::Root,
            RoleName::Targets => RoleType::Targets,
            RoleName::Snapshot => RoleType::Snapshot,
            RoleName::Timestamp => RoleType::Timestamp,
        }
    }

    /// The lifetime a fresh signature of this role gets, in seconds.
    pub fn lifetime_secs(self, config: &TufConfig) -> i64 {
        match self {
            RoleName::Root => i64::from(config.root_expires_days) * 86_400,
            RoleName::Targets => i64::from(config.targets_expires_days) * 86_400,
            RoleName::Snapshot => i64::from(config.snapshot_expires_days) * 86_400,
            RoleName::Timestamp => i64::from(config.timestamp_expires_hours) * 3_600,
        }
    }
}

impl std::fmt::Display for RoleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RoleName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RoleName::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a TUF role (root, targets, snapshot, timestamp)"))
    }
}

/// Whether the server can sign a role by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPlace {
    /// Enough of the role's keys are in the server's keys directory.
    Online,
    /// The keys are elsewhere: an administrator must sign (root: `root resign` with the keys;
    /// targets: `export-unsigned`, `sign-targets`, `import-signed`).
    Offline,
    /// An air-gapped mirror: the outer server signed it; the next `import` renews it.
    Mirror,
}

/// How long before a mirror's metadata expires the server warns (its timestamp lives as long
/// as the outer server's, often a day, so a 30-day horizon would always warn).
pub const MIRROR_WARNING_HOURS: i64 = 6;

/// How long before an offline-signed role expires the server starts warning.
pub const OFFLINE_WARNING_DAYS: i64 = 30;

/// When one served role expires and who can renew it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleExpiry {
    /// Which role this is (one entry per served role).
    pub role: RoleName,
    /// The version served.
    pub version: u64,
    /// When the served version expires.
    pub expires: jiff::Timestamp,
    /// Whether the server can sign it again by itself.
    pub keys: KeyPlace,
}

impl RoleExpiry {
    /// Seconds from `now` until it expires; negative once it has.
    pub fn seconds_left(&self, now: jiff::Timestamp) -> i64 {
        self.expires.as_second() - now.as_second()
    }

    /// Whether a server holding the key should sign this role again now: less than half of
    /// its lifetime is left, or it was written by an older server with fractional seconds
    /// (which conforming TUF clients refuse).
    fn due(&self, now: jiff::Timestamp, config: &TufConfig) -> bool {
        self.seconds_left(now) < self.role.lifetime_secs(config) / 2
            || self.expires.subsec_nanosecond() != 0
    }

    /// The warning an operator must see: the role's keys are offline and it expires within
    /// [`OFFLINE_WARNING_DAYS`] (or already has).
    pub fn warning(&self, now: jiff::Timestamp) -> Option<String> {
        let left = self.seconds_left(now);
        let horizon = match self.keys {
            KeyPlace::Online => return None,
            KeyPlace::Offline => OFFLINE_WARNING_DAYS * 86_400,
            KeyPlace::Mirror => MIRROR_WARNING_HOURS * 3_600,
        };
        if left > horizon {
            return None;
        }
        let how = match (self.keys, self.role) {
            (KeyPlace::Mirror, _) => "import a newer archive from the outer server (patchbay-server export there, import here)",
            (_, RoleName::Root) => "sign a new root with the root keys: patchbay-server root resign --data DIR --root-key FILE …",
            _ => "sign the targets role offline: patchbay-server export-unsigned, sign-targets, import-signed",
        };
        Some(if left <= 0 {
            format!(
                "{}.json (version {}) EXPIRED at {}: hosts refuse every update until you {how}",
                self.role, self.version, self.expires
            )
        } else {
            let in_time = if left >= 2 * 86_400 {
                format!("{} days", left / 86_400)
            } else {
                format!("{} h", left / 3_600)
            };
            format!(
                "{}.json (version {}) expires at {} (in {in_time}) and this server cannot renew \
                 it: {how}",
                self.role, self.version, self.expires
            )
        })
    }
}

/// Which of a role's keys sit in the server's keys directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysOnDisk {
    /// The role.
    pub role: RoleName,
    /// The key files in the keys directory that hold one of the role's current keys.
    pub files: Vec<PathBuf>,
    /// How many keys must sign the role.
    pub threshold: u64,
}

impl KeysOnDisk {
    /// Whether the files here are enough to sign the role.
    pub fn can_sign(&self) -> bool {
        self.files.len() as u64 >= self.threshold
    }
}

/// What one [`TufRepo::refresh`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshReport {
    /// The roles signed again, in order.
    pub resigned: Vec<RoleName>,
    /// Roles with offline keys that expire soon (see [`RoleExpiry::warning`]).
    pub warnings: Vec<String>,
}

/// The new root keys of a root key rotation: one file per key, none of which exists yet, and
/// how many of them must sign the next root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRootKeys {
    files: Vec<PathBuf>,
    threshold: NonZeroU64,
}

impl NewRootKeys {
    /// `files` (one per new key, in a directory that exists, none there yet, no name twice)
    /// and `threshold` (1 to the number of files).
    pub fn new(files: Vec<PathBuf>, threshold: u64) -> Result<NewRootKeys, ServerError> {
        if files.is_empty() {
            return Err(ServerError::BadRequest(
                "a root key rotation needs a file for each new root key: --new-root-key-out FILE \
                 (repeat it for more than one key)"
                    .into(),
            ));
        }
        let count = files.len() as u64;
        let threshold = NonZeroU64::new(threshold)
            .filter(|t| t.get() <= count)
            .ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "--root-threshold {threshold} must be between 1 and the number of new root \
                     keys ({count})"
                ))
            })?;
        let mut seen = std::collections::HashSet::new();
        for file in &files {
            if !seen.insert(file) {
                return Err(ServerError::BadRequest(format!(
                    "--new-root-key-out {} is given twice; give one file per new key",
                    file.display()
                )));
            }
        }
        let keys = NewRootKeys { files, threshold };
        keys.check_free()?;
        Ok(keys)
    }

    /// The files the new keys are written to.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// How many of the new keys must sign a root.
    pub fn threshold(&self) -> u64 {
        self.threshold.get()
    }

    /// Every file is still free and its directory exists.
    fn check_free(&self) -> Result<(), ServerError> {
        for file in &self.files {
            if file.symlink_metadata().is_ok() {
                return Err(NewRootKeys::exists_error(file));
            }
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                return Err(ServerError::BadRequest(format!(
                    "--new-root-key-out {}: the directory {} does not exist (mount the offline \
                     medium the new root key goes to, or create the directory)",
                    file.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    fn exists_error(file: &Path) -> ServerError {
        ServerError::Conflict(format!(
            "--new-root-key-out {} already exists; a key file is never overwritten. Give another \
             name (if an earlier rotation stopped before it wrote a new root, root.json does not \
             name that key: delete the file)",
            file.display()
        ))
    }
}

/// What a root key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRotation {
    /// The new root version.
    pub version: u64,
    /// The new root keys' ids (hex).
    pub key_ids: Vec<String>,
    /// Where the new root keys were written: to be moved offline.
    pub key_files: Vec<PathBuf>,
    /// Old root key files that sat in the keys directory, deleted.
    pub retired_online_keys: Vec<PathBuf>,
    /// Old root key files in the keys directory that could not be deleted, and why: the
    /// operator must delete them.
    pub not_retired: Vec<String>,
}

/// The repository on disk.
#[derive(Debug, Clone)]
pub struct TufRepo {
    /// Where the signed metadata is served from (`<data>/tuf/metadata`).
    pub metadata_dir: PathBuf,
    /// The online signing keys, `<role>.pk8` (`<data>/keys`).
    pub keys_dir: PathBuf,
    /// Key count, threshold and lifetimes (`[tuf]` of `config.toml`).
    pub config: TufConfig,
}

fn tuf_err(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tuf(format!("{what}: {e}"))
}

/// `root.json`, `timestamp.json`, `<n>.root.json`, `<n>.snapshot.json`, `<n>.targets.json`.
fn metadata_name_ok(file: &str) -> bool {
    if file == "root.json" || file == "timestamp.json" {
        return true;
    }
    let Some((number, role)) = file.split_once('.') else {
        return false;
    };
    !number.is_empty()
        && number.len() <= 20
        && number.bytes().all(|b| b.is_ascii_digit())
        && matches!(role, "root.json" | "snapshot.json" | "targets.json")
}

fn io_err(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// `now + seconds`, in whole seconds: the TUF specification writes `expires` as
/// `YYYY-MM-DDTHH:MM:SSZ`, and conforming clients (python-tuf) refuse fractional seconds.
fn expires_in(seconds: i64) -> Result<jiff::Timestamp, ServerError> {
    let at = jiff::Timestamp::now()
        .as_second()
        .checked_add(seconds)
        .ok_or_else(|| ServerError::Tuf(format!("expiry {seconds} s from now is out of range")))?;
    jiff::Timestamp::from_second(at).map_err(|e| tuf_err("expiry out of range", e))
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

/// Makes a new Ed25519 key in `path`, which must not exist: written to a temporary file in
/// the same directory, synced, then linked to `path` (which fails if something took the name
/// meanwhile), so `path` is either absent or a whole key.
fn generate_key_new_file(path: &Path) -> Result<(), ServerError> {
    let rng = SystemRandom::new();
    let document =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| tuf_err("generate an Ed25519 key", e))?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ServerError::BadRequest(format!(
            "{}: not a file path",
            path.display()
        )));
    };
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".new.{}", std::process::id()));
    let staging = dir.join(staging_name);
    patchbay_core::fsutil::write_private(&staging, document.as_ref())
        .map_err(|e| io_err(&staging, e))?;
    let linked = std::fs::hard_link(&staging, path);
    let _ = std::fs::remove_file(&staging);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(NewRootKeys::exists_error(path));
        }
        Err(e) => return Err(io_err(path, e)),
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    patchbay_core::fsutil::sync_dir(dir).map_err(|e| io_err(dir, e))
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
    /// The repository of a data directory; nothing is read or created until used
    /// ([`TufRepo::init`] makes the keys and first metadata).
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

    /// Root keys that sit beside the data (`keys/root-<n>.pk8`): whoever copies this
    /// machine's disk can sign a new root and so take over every host. `init --offline-root`
    /// writes them elsewhere; `serve` warns at every start while they are here.
    pub fn online_root_keys(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.keys_dir) else {
            return Vec::new();
        };
        let mut keys: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("root-") && n.ends_with(".pk8"))
            })
            .collect();
        keys.sort();
        keys
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

    /// A served metadata file by the name clients ask for; `None` for any other name or a
    /// missing file. The name is checked before a path is made of it, so no request reaches
    /// outside the metadata directory.
    pub async fn served_metadata(&self, file: &str) -> Result<Option<Vec<u8>>, ServerError> {
        if !metadata_name_ok(file) {
            return Ok(None);
        }
        let path = self.metadata_dir.join(file);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
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
        let targets_meta = Metafile {
            length: Some(signed_bytes.len() as u64),
            hashes: Some(hashes(&sha256_hex(signed_bytes))?),
            version: version(new_version)?,
            _extra: HashMap::new(),
        };
        self.sign_snapshot(targets_meta).await?;
        Ok(new_version)
    }

    /// Signs the next snapshot (listing `targets_meta`), then the timestamp for it.
    async fn sign_snapshot(&self, targets_meta: Metafile) -> Result<(), ServerError> {
        let root = self.root()?;
        let snapshot_version = self.versions()?.map_or(1, |v| v.snapshot + 1);
        let mut snapshot = Snapshot::new(
            SPEC_VERSION.into(),
            version(snapshot_version)?,
            expires_in(RoleName::Snapshot.lifetime_secs(&self.config))?,
        );
        snapshot.meta.insert("targets.json".into(), targets_meta);
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
            .await
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

    fn current_snapshot(&self) -> Result<Option<Signed<Snapshot>>, ServerError> {
        let Some(v) = self.versions()? else {
            return Ok(None);
        };
        let snapshot =
            serde_json::from_slice(&self.read_meta(&format!("{}.snapshot.json", v.snapshot))?)
                .map_err(|e| tuf_err("parse snapshot", e))?;
        Ok(Some(snapshot))
    }

    fn current_timestamp(&self) -> Result<Signed<Timestamp>, ServerError> {
        serde_json::from_slice(&self.read_meta("timestamp.json")?)
            .map_err(|e| tuf_err("parse timestamp.json", e))
    }

    /// Key files in the keys directory (and `extra`) that hold one of `role`'s keys in the
    /// current root, one per key id.
    async fn role_signers(
        &self,
        role: RoleName,
        extra: &[PathBuf],
    ) -> Result<Vec<PathBuf>, ServerError> {
        let root = self.root()?;
        let Some(role_keys) = root.roles.get(&role.role_type()) else {
            return Err(ServerError::Tuf(format!("root.json has no {role} role")));
        };
        let mut candidates: Vec<PathBuf> = extra.to_vec();
        if let Ok(entries) = std::fs::read_dir(&self.keys_dir) {
            let prefix = format!("{role}");
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    name.is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".pk8"))
                })
                .collect();
            found.sort();
            candidates.extend(found);
        }
        let mut seen = std::collections::HashSet::new();
        let mut signers = Vec::new();
        for path in candidates {
            // One unreadable file in the keys directory must not stop every renewal: skip it
            // (a key the role needs and cannot read shows as an offline key in the warnings).
            let Ok((id, _)) = public_key(&path).await else {
                continue;
            };
            if role_keys.keyids.contains(&id) && seen.insert(id) {
                signers.push(path);
            }
        }
        Ok(signers)
    }

    /// For each role, the key files in the keys directory that hold one of its current keys:
    /// what a copy of this machine's disk gives away (`doctor`).
    pub async fn keys_on_disk(&self) -> Result<Vec<KeysOnDisk>, ServerError> {
        let root = self.root()?;
        let mut out = Vec::new();
        for role in RoleName::ALL {
            let threshold = root
                .roles
                .get(&role.role_type())
                .map_or(1, |k| k.threshold.get());
            out.push(KeysOnDisk {
                role,
                files: self.role_signers(role, &[]).await?,
                threshold,
            });
        }
        Ok(out)
    }

    /// Whether the server holds enough keys to sign `role` alone.
    async fn key_place(&self, role: RoleName) -> Result<KeyPlace, ServerError> {
        let root = self.root()?;
        let threshold = root
            .roles
            .get(&role.role_type())
            .map_or(1, |k| k.threshold.get());
        let have = self.role_signers(role, &[]).await?.len() as u64;
        Ok(if have >= threshold {
            KeyPlace::Online
        } else {
            KeyPlace::Offline
        })
    }

    /// When each served role expires, and whether the server can renew it alone.
    pub async fn expiries(&self) -> Result<Vec<RoleExpiry>, ServerError> {
        let (Some(v), Some(targets), Some(snapshot)) = (
            self.versions()?,
            self.current_targets()?,
            self.current_snapshot()?,
        ) else {
            return Ok(Vec::new());
        };
        let root = self.root()?;
        let timestamp = self.current_timestamp()?;
        let mut out = Vec::new();
        for (role, version, expires) in [
            (RoleName::Root, v.root, root.expires),
            (RoleName::Targets, v.targets, targets.signed.expires),
            (RoleName::Snapshot, v.snapshot, snapshot.signed.expires),
            (RoleName::Timestamp, v.timestamp, timestamp.signed.expires),
        ] {
            out.push(RoleExpiry {
                role,
                version,
                expires,
                keys: self.key_place(role).await?,
            });
        }
        Ok(out)
    }

    /// Signs every role whose key is online again before half of its lifetime is gone, so a
    /// repository nobody publishes to stays valid for its hosts; reports the roles with
    /// offline keys that expire within [`OFFLINE_WARNING_DAYS`]. Caller holds the service lock.
    pub async fn refresh(&self) -> Result<RefreshReport, ServerError> {
        let mut report = RefreshReport::default();
        if self.versions()?.is_none() {
            return Ok(report);
        }
        self.promote_newest_root()?;
        self.finish_rotations().await?;
        let unsigned = self.roles_not_signed_by_current_keys()?;
        let now = jiff::Timestamp::now();
        for expiry in self.expiries().await? {
            // A role still signed by a key the root no longer names (a rotation cut short
            // between the new root and the new signature) is renewed now, whatever its expiry.
            let due = expiry.due(now, &self.config) || unsigned.contains(&expiry.role);
            if let Some(warning) = expiry.warning(now) {
                report.warnings.push(warning);
            }
            if !due || expiry.keys == KeyPlace::Offline {
                continue;
            }
            // A new targets role brings a new snapshot and timestamp; a new snapshot a new
            // timestamp.
            let covered =
                |r: &RefreshReport, by: &[RoleName]| by.iter().any(|b| r.resigned.contains(b));
            match expiry.role {
                RoleName::Root => {
                    self.resign_root(&[], None).await?;
                }
                RoleName::Targets => self.resign_current_targets().await?,
                RoleName::Snapshot => {
                    if covered(&report, &[RoleName::Targets]) {
                        continue;
                    }
                    self.resign_current_snapshot().await?;
                }
                RoleName::Timestamp => {
                    if covered(&report, &[RoleName::Targets, RoleName::Snapshot]) {
                        continue;
                    }
                    self.resign_current_timestamp().await?;
                }
            }
            report.resigned.push(expiry.role);
        }
        Ok(report)
    }

    /// Signs the served targets role again, unchanged but for version and expiry (never the
    /// database's newer state: that goes through a mutation and its audit entry).
    async fn resign_current_targets(&self) -> Result<(), ServerError> {
        let current = self
            .current_targets()?
            .ok_or_else(|| ServerError::Tuf("no targets role yet".into()))?;
        self.publish(&target_entries(&current.signed))
            .await
            .map(|_| ())
    }

    /// Signs a new timestamp for the served snapshot, with the configured lifetime.
    async fn resign_current_timestamp(&self) -> Result<(), ServerError> {
        let v = self
            .versions()?
            .ok_or_else(|| ServerError::Tuf("no repository yet".into()))?;
        let snapshot = self.read_meta(&format!("{}.snapshot.json", v.snapshot))?;
        self.write_timestamp(v.snapshot, &snapshot).await
    }

    async fn resign_current_snapshot(&self) -> Result<(), ServerError> {
        let current = self
            .current_snapshot()?
            .ok_or_else(|| ServerError::Tuf("no snapshot yet".into()))?;
        let targets_meta = current
            .signed
            .meta
            .get("targets.json")
            .cloned()
            .ok_or_else(|| ServerError::Tuf("snapshot lists no targets.json".into()))?;
        self.sign_snapshot(targets_meta).await
    }

    fn next_key_path(&self, role: RoleName) -> PathBuf {
        self.keys_dir.join(format!("{role}.pk8.next"))
    }

    /// Serves the newest `N.root.json` as `root.json`: a crash between writing the two (in
    /// `resign_root`) must not leave hosts that already fetched N with a chain the server
    /// then abandons.
    fn promote_newest_root(&self) -> Result<(), ServerError> {
        let current = self.root()?.version.get();
        let mut newest = current;
        let entries =
            std::fs::read_dir(&self.metadata_dir).map_err(|e| io_err(&self.metadata_dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let version = name
                .to_str()
                .and_then(|n| n.strip_suffix(".root.json"))
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(v) = version {
                newest = newest.max(v);
            }
        }
        if newest > current {
            let bytes = self.read_meta(&format!("{newest}.root.json"))?;
            let parsed: Signed<Root> = serde_json::from_slice(&bytes)
                .map_err(|e| tuf_err(&format!("parse {newest}.root.json"), e))?;
            // Only a root that the current one's keys signed and that its own keys signed
            // (as clients check it) is taken up.
            self.root()?
                .verify_role(&parsed)
                .map_err(|e| tuf_err(&format!("{newest}.root.json does not verify"), e))?;
            parsed.signed.verify_role(&parsed).map_err(|e| {
                tuf_err(
                    &format!("{newest}.root.json is not signed by its own root keys"),
                    e,
                )
            })?;
            self.write_meta("root.json", &bytes)?;
        }
        Ok(())
    }

    /// Online roles whose served signature does not verify under the current root.
    fn roles_not_signed_by_current_keys(&self) -> Result<Vec<RoleName>, ServerError> {
        let root = self.root()?;
        let mut out = Vec::new();
        if let Some(targets) = self.current_targets()? {
            if root.verify_role(&targets).is_err() {
                out.push(RoleName::Targets);
            }
        }
        if let Some(snapshot) = self.current_snapshot()? {
            if root.verify_role(&snapshot).is_err() {
                out.push(RoleName::Snapshot);
            }
        }
        if self.versions()?.is_some() && root.verify_role(&self.current_timestamp()?).is_err() {
            out.push(RoleName::Timestamp);
        }
        Ok(out)
    }

    /// Finishes a key rotation a crash interrupted: the new root names the key in
    /// `<role>.pk8.next`, so it becomes the role's key.
    async fn finish_rotations(&self) -> Result<(), ServerError> {
        for role in [RoleName::Targets, RoleName::Snapshot, RoleName::Timestamp] {
            let next = self.next_key_path(role);
            if !next.exists() {
                continue;
            }
            let (id, _) = public_key(&next).await?;
            let root = self.root()?;
            let named = root
                .roles
                .get(&role.role_type())
                .is_some_and(|k| k.keyids.contains(&id));
            if named {
                let current = self.role_key(role.as_str());
                std::fs::rename(&next, &current).map_err(|e| io_err(&current, e))?;
            } else {
                // The crash came before the new root was written: the rotation never happened.
                std::fs::remove_file(&next).map_err(|e| io_err(&next, e))?;
            }
        }
        Ok(())
    }

    /// Signs root version N+1 with a fresh expiry, and with `rotate` a new key for that
    /// online role (the role is then signed again with it). The root keys are taken from the
    /// keys directory and `root_keys` (offline keys brought in for this); the threshold of
    /// the current root must sign. Returns the new root version.
    pub async fn resign_root(
        &self,
        root_keys: &[PathBuf],
        rotate: Option<RoleName>,
    ) -> Result<u64, ServerError> {
        let current = self.root()?;
        let signers = self.current_root_signers(root_keys).await?;
        let mut next = self.next_root(&current)?;
        if let Some(role) = rotate {
            if role == RoleName::Root {
                return Err(ServerError::BadRequest(
                    "rotating the root keys needs somewhere to write the new ones: \
                     patchbay-server root rotate --role root --new-root-key-out FILE"
                        .into(),
                ));
            }
            let path = self.next_key_path(role);
            generate_key(&path)?;
            let (id, key) = public_key(&path).await?;
            let old_ids = next
                .roles
                .get(&role.role_type())
                .map(|k| k.keyids.clone())
                .unwrap_or_default();
            if let Some(keys) = next.roles.get_mut(&role.role_type()) {
                keys.keyids = vec![id.clone()];
                keys.threshold = version(1)?;
            }
            next.keys.insert(id, key);
            // A key no role names any more leaves root.
            for old in old_ids {
                if !next.roles.values().any(|k| k.keyids.contains(&old)) {
                    next.keys.remove(&old);
                }
            }
        }
        let sources: Vec<Box<dyn KeySource>> = signers.iter().map(|p| key_source(p)).collect();
        let signed = SignedRole::new(
            next.clone(),
            &KeyHolder::Root(next.clone()),
            &sources,
            &SystemRandom::new(),
        )
        .await
        .map_err(|e| tuf_err("sign root.json", e))?;
        let new_version = next.version.get();
        self.write_meta(&format!("{new_version}.root.json"), signed.buffer())?;
        self.write_meta("root.json", signed.buffer())?;
        if let Some(role) = rotate {
            self.finish_rotations().await?;
            // Clients drop their trusted copy of a role whose key rotated; serve a new one.
            match role {
                RoleName::Targets => self.resign_current_targets().await?,
                RoleName::Snapshot => self.resign_current_snapshot().await?,
                RoleName::Timestamp | RoleName::Root => {
                    self.resign_current_timestamp().await?;
                }
            }
        }
        Ok(new_version)
    }

    /// The root key files (keys directory and `extra`) that make the current root's
    /// threshold; an error naming the threshold when they do not.
    async fn current_root_signers(&self, extra: &[PathBuf]) -> Result<Vec<PathBuf>, ServerError> {
        let threshold = self
            .root()?
            .roles
            .get(&RoleType::Root)
            .map_or(1, |k| k.threshold.get());
        let signers = self.role_signers(RoleName::Root, extra).await?;
        if (signers.len() as u64) < threshold {
            return Err(ServerError::OfflineKey(format!(
                "signing a new root needs {threshold} of the root keys, {} found (in {} and the \
                 --root-key files given); bring the offline root keys with --root-key FILE",
                signers.len(),
                self.keys_dir.display()
            )));
        }
        Ok(signers)
    }

    /// `current` as version N+1 with a fresh expiry.
    fn next_root(&self, current: &Root) -> Result<Root, ServerError> {
        let mut next = current.clone();
        let n = current.version.get().checked_add(1);
        next.version = version(n.unwrap_or(0))?;
        next.expires = expires_in(RoleName::Root.lifetime_secs(&self.config))?;
        Ok(next)
    }

    /// Replaces the root keys: root version N+1 names the new keys (made in `new`'s files)
    /// and `new`'s threshold, and carries the signatures of a threshold of the old root keys
    /// (the keys directory and `old_root_keys`) and of the new ones, because a TUF client
    /// checks N+1 against version N's root keys and against its own (TUF 5.3.4, 5.3.5). The
    /// new key files are written (durably, never over an existing file) before the root that
    /// names them; any failure before the root is written removes them again and changes
    /// nothing else. Old root key files in the keys directory are deleted afterwards: they
    /// sign nothing a host at N+1 accepts, but could forge an N+1 for a host not there yet.
    pub async fn rotate_root_keys(
        &self,
        old_root_keys: &[PathBuf],
        new: &NewRootKeys,
    ) -> Result<RootRotation, ServerError> {
        let current = self.root()?;
        let old_signers = self.current_root_signers(old_root_keys).await?;
        new.check_free()?;
        let mut made = Vec::new();
        let signed = match self
            .sign_rotated_root(&current, &old_signers, new, &mut made)
            .await
        {
            Ok(signed) => signed,
            Err(e) => {
                for path in &made {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        let new_version = signed.signed.version.get();
        let mut bytes = serde_json::to_vec_pretty(&signed)
            .map_err(|e| tuf_err("serialise the new root.json", e))?;
        bytes.push(b'\n');
        if let Err(e) = self.write_meta(&format!("{new_version}.root.json"), &bytes) {
            for path in &made {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        // From here the new root exists: a crash before the next write is finished by
        // `promote_newest_root`, and the new key files must stay.
        self.write_meta("root.json", &bytes)?;
        // The rotation is done: a key file that cannot be deleted is reported, not an error.
        let (mut retired, mut not_retired) = (Vec::new(), Vec::new());
        let keys_dir = self.keys_dir.canonicalize().ok();
        for path in &old_signers {
            let file = path.canonicalize().ok();
            if keys_dir.is_none() || file.as_deref().and_then(Path::parent) != keys_dir.as_deref() {
                continue;
            }
            match std::fs::remove_file(path) {
                Ok(()) => retired.push(path.clone()),
                Err(e) => not_retired.push(format!("{}: {e}", path.display())),
            }
        }
        if !retired.is_empty() {
            if let Err(e) = patchbay_core::fsutil::sync_dir(&self.keys_dir) {
                not_retired.push(format!("{}: sync: {e}", self.keys_dir.display()));
            }
        }
        let key_ids = signed
            .signed
            .roles
            .get(&RoleType::Root)
            .map(|k| {
                k.keyids
                    .iter()
                    .map(|id| hex::encode(id.as_ref() as &[u8]))
                    .collect()
            })
            .unwrap_or_default();
        Ok(RootRotation {
            version: new_version,
            key_ids,
            key_files: made,
            retired_online_keys: retired,
            not_retired,
        })
    }

    /// Makes `new`'s key files (recorded in `made` as they appear) and signs root N+1 naming
    /// them with the old signers and the new keys; checked as a client checks it before it
    /// is returned.
    async fn sign_rotated_root(
        &self,
        current: &Root,
        old_signers: &[PathBuf],
        new: &NewRootKeys,
        made: &mut Vec<PathBuf>,
    ) -> Result<Signed<Root>, ServerError> {
        for path in &new.files {
            generate_key_new_file(path)?;
            made.push(path.clone());
        }
        let mut next = self.next_root(current)?;
        let old_ids = current
            .roles
            .get(&RoleType::Root)
            .map(|k| k.keyids.clone())
            .unwrap_or_default();
        let mut new_ids = Vec::new();
        for path in &new.files {
            let (id, key) = public_key(path).await?;
            if old_ids.contains(&id) || new_ids.contains(&id) {
                return Err(ServerError::BadRequest(format!(
                    "{} holds a key the root already names; a rotation needs new keys",
                    path.display()
                )));
            }
            next.keys.insert(id.clone(), key);
            new_ids.push(id);
        }
        next.roles.insert(
            RoleType::Root,
            RoleKeys {
                keyids: new_ids,
                threshold: new.threshold,
                _extra: HashMap::new(),
            },
        );
        // An old root key no role names any more leaves root.
        for old in &old_ids {
            if !next.roles.values().any(|k| k.keyids.contains(old)) {
                next.keys.remove(old);
            }
        }
        let rng = SystemRandom::new();
        let by_old: Vec<Box<dyn KeySource>> = old_signers.iter().map(|p| key_source(p)).collect();
        let by_new: Vec<Box<dyn KeySource>> = new.files.iter().map(|p| key_source(p)).collect();
        let signed_old = SignedRole::new(
            next.clone(),
            &KeyHolder::Root(current.clone()),
            &by_old,
            &rng,
        )
        .await
        .map_err(|e| tuf_err("sign the new root with the old root keys", e))?;
        let signed_new =
            SignedRole::new(next.clone(), &KeyHolder::Root(next.clone()), &by_new, &rng)
                .await
                .map_err(|e| tuf_err("sign the new root with the new root keys", e))?;
        let mut signatures = signed_old.signed().signatures.clone();
        signatures.extend(signed_new.signed().signatures.iter().cloned());
        let signed = Signed {
            signed: next,
            signatures,
        };
        current
            .verify_role(&signed)
            .map_err(|e| tuf_err("the new root does not verify with the old root keys", e))?;
        signed
            .signed
            .verify_role(&signed)
            .map_err(|e| tuf_err("the new root does not verify with its own keys", e))?;
        Ok(signed)
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

/// One target a targets role adds, changes or removes against the last signed role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetChange {
    /// Listed now, not before.
    Added {
        /// The target's name (`bundles/<build-id>/<level>.pbb`, `channels/<name>.json`).
        name: String,
        /// What the role lists.
        entry: TargetEntry,
    },
    /// Listed before and now, with other hashes, length or custom data.
    Changed {
        /// The target's name.
        name: String,
        /// What the last signed role listed.
        before: TargetEntry,
        /// What the role lists now.
        after: TargetEntry,
    },
    /// Listed before, not now.
    Removed {
        /// The target's name.
        name: String,
        /// What the last signed role listed.
        entry: TargetEntry,
    },
}

/// Whether removals may be signed: a removal is never signed unless the signer said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removals {
    /// Refuse a role that removes any target.
    Refuse,
    /// The signer allows removals (`sign-targets --allow-removals`).
    Allow,
}

/// What an unsigned targets role changes against the last signed one: what the offline signer
/// reads before signing (`sign-targets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetsReview {
    /// The version of the last signed role (verified against root).
    pub previous_version: u64,
    /// The version the unsigned role will have.
    pub version: u64,
    /// When the unsigned role expires (RFC 3339).
    pub expires: String,
    /// Every target added, changed or removed, by name.
    pub changes: Vec<TargetChange>,
    /// How many targets are listed unchanged.
    pub unchanged: usize,
    /// The channel documents added or changed, with what they say.
    pub channels: Vec<crate::channel_review::ChannelChange>,
}

impl TargetsReview {
    /// The names of the targets the role removes.
    pub fn removed(&self) -> Vec<&str> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                TargetChange::Removed { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Why the role must not be signed as it is: removals the signer did not allow.
    pub fn refusal(&self, removals: Removals) -> Option<String> {
        let mut removed: Vec<String> = self.removed().into_iter().map(str::to_owned).collect();
        removed.extend(self.channels.iter().flat_map(|c| c.removals()));
        if removed.is_empty() || removals == Removals::Allow {
            return None;
        }
        Some(format!(
            "the role removes {} target(s) or channel entries the last signed role (version \
             {}) lists: {}; a removal is never signed silently: find out why with whoever \
             exported the role, and pass --allow-removals if it is meant",
            removed.len(),
            self.previous_version,
            removed.join("; ")
        ))
    }

    /// The review as the signer reads it: one block per added, changed or removed target
    /// (kernel, level, CVEs, size, hash).
    pub fn render(&self) -> String {
        let mut out = format!(
            "targets version {} (expires {}) against the last signed version {}:\n",
            self.version, self.expires, self.previous_version
        );
        if self.changes.is_empty() {
            out.push_str("  no target added, changed or removed (signing renews the expiry)\n");
        }
        for change in &self.changes {
            match change {
                TargetChange::Added { name, entry } => {
                    out.push_str(&format!(
                        "  + added    {name}\n             {}\n",
                        describe_target(name, entry)
                    ));
                }
                TargetChange::Removed { name, entry } => {
                    out.push_str(&format!(
                        "  - removed  {name}\n             {}\n",
                        describe_target(name, entry)
                    ));
                }
                TargetChange::Changed {
                    name,
                    before,
                    after,
                } => {
                    out.push_str(&format!(
                        "  ~ changed  {name}\n             was: {}\n             now: {}\n",
                        describe_target(name, before),
                        describe_target(name, after)
                    ));
                }
            }
        }
        out.push_str(&format!("  {} target(s) unchanged\n", self.unchanged));
        if !self.channels.is_empty() {
            out.push_str("channel documents added or changed (what hosts will be served):\n");
        }
        for channel in &self.channels {
            out.push_str(&channel.render());
        }
        out
    }
}

/// One line about a target: for a bundle its signed manifest's kernel, level and CVEs, then
/// for every target its size and sha256.
fn describe_target(name: &str, entry: &TargetEntry) -> String {
    let size = format!("{} bytes, sha256 {}", entry.length, entry.sha256);
    let Some(manifest) = entry.custom.get("manifest") else {
        if name.starts_with("bundles/") {
            return format!("NO MANIFEST in its signed data (hosts refuse it), {size}");
        }
        return size;
    };
    let parsed = serde_json::to_vec(manifest)
        .map_err(|e| e.to_string())
        .and_then(|bytes| patchbay_core::Manifest::parse(&bytes).map_err(|e| e.to_string()));
    match parsed {
        Ok(m) => {
            let fixes: Vec<&str> = m.fixes.iter().map(|c| c.as_str()).collect();
            format!(
                "kernel {} (build-id {}), level {}, fixes {}, {size}",
                m.kernel.release,
                m.kernel.build_id,
                m.level,
                if fixes.is_empty() {
                    "no CVE".to_owned()
                } else {
                    fixes.join(" ")
                }
            )
        }
        Err(e) => format!("UNREADABLE MANIFEST ({e}; hosts refuse it), {size}"),
    }
}

/// Compares the unsigned targets role `unsigned` (from `export-unsigned`) with `previous`, the
/// last signed targets role, which must verify against `root_json`'s targets keys and be the
/// version just below. A role that delegates (Patchbay never does) or carries fields Patchbay
/// never writes is refused. Every channel document the role adds or changes must be among
/// `documents` and is shown with what it says (`crate::channel_review`).
pub fn review_targets(
    unsigned: &[u8],
    previous: &[u8],
    root_json: &[u8],
    documents: &crate::channel_review::ChannelDocuments,
) -> Result<TargetsReview, ServerError> {
    let role: Targets = serde_json::from_slice(unsigned)
        .map_err(|e| ServerError::BadRequest(format!("not an unsigned targets role: {e}")))?;
    let root: Signed<Root> = serde_json::from_slice(root_json)
        .map_err(|e| ServerError::BadRequest(format!("not a root.json: {e}")))?;
    let previous: Signed<Targets> = serde_json::from_slice(previous).map_err(|e| {
        ServerError::BadRequest(format!(
            "--previous is not a signed targets role ({e}); give the last sign-targets output \
             or the server's served <N>.targets.json"
        ))
    })?;
    root.signed.verify_role(&previous).map_err(|e| {
        ServerError::BadRequest(format!(
            "--previous is not signed by the targets key(s) of this root.json ({e}); give a \
             targets role this repository signed"
        ))
    })?;
    let delegates = role
        .delegations
        .as_ref()
        .is_some_and(|d| !d.keys.is_empty() || !d.roles.is_empty());
    if delegates || !role._extra.is_empty() {
        let mut extra: Vec<&str> = role._extra.keys().map(String::as_str).collect();
        if delegates {
            extra.push("delegations");
        }
        extra.sort_unstable();
        return Err(ServerError::BadRequest(format!(
            "the unsigned role carries fields Patchbay never writes ({}); refused: do not sign \
             it, and find out who made it",
            extra.join(", ")
        )));
    }
    let (previous_version, version) = (previous.signed.version.get(), role.version.get());
    if previous_version.checked_add(1) != Some(version) {
        return Err(ServerError::BadRequest(format!(
            "--previous is targets version {previous_version}, the unsigned role is version \
             {version}: give version {} (the server serves it as tuf/metadata/{}.targets.json), \
             so that every change since is shown",
            version.saturating_sub(1),
            version.saturating_sub(1)
        )));
    }
    let before = target_entries(&previous.signed);
    let after = target_entries(&role);
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for (name, entry) in &after {
        match before.get(name) {
            None => changes.push(TargetChange::Added {
                name: name.clone(),
                entry: entry.clone(),
            }),
            Some(old) if old == entry => unchanged += 1,
            Some(old) => changes.push(TargetChange::Changed {
                name: name.clone(),
                before: old.clone(),
                after: entry.clone(),
            }),
        }
    }
    for (name, entry) in &before {
        if !after.contains_key(name) {
            changes.push(TargetChange::Removed {
                name: name.clone(),
                entry: entry.clone(),
            });
        }
    }
    let channels = crate::channel_review::channel_changes(&changes, &before, documents)?;
    Ok(TargetsReview {
        previous_version,
        version,
        expires: patchbay_core::clock::rfc3339(role.expires.as_second()),
        changes,
        unchanged,
        channels,
    })
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
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    async fn repo_with(
        config: TufConfig,
        root_keys: Option<&Path>,
    ) -> (tempfile::TempDir, TufRepo) {
        let dir = tempfile::tempdir().unwrap();
        let repo = TufRepo::new(dir.path(), config);
        let keys = root_keys.map_or_else(|| dir.path().join("keys"), Path::to_path_buf);
        repo.init(&keys).await.unwrap();
        (dir, repo)
    }

    #[tokio::test]
    async fn root_keys_beside_the_data_are_online_and_offline_ones_are_not() {
        let (_dir, repo) = repo_with(TufConfig::default(), None).await;
        let online = repo.online_root_keys();
        assert_eq!(online.len(), 1, "{online:?}");
        assert!(online[0].ends_with("keys/root-1.pk8"), "{online:?}");
        let usb = tempfile::tempdir().unwrap();
        let (_dir, repo) = repo_with(TufConfig::default(), Some(usb.path())).await;
        assert!(repo.online_root_keys().is_empty());
        // The online role keys are not root keys.
        assert!(repo.keys_dir.join("targets.pk8").exists());
    }

    /// What a client that trusts `1.root.json` makes of the repository now (tough, as the
    /// agent uses it).
    async fn client_load(repo: &TufRepo) -> Result<(), String> {
        let trusted = repo.read_meta("1.root.json").unwrap();
        let store = tempfile::tempdir().unwrap();
        let tuf_dir = repo.metadata_dir.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(tuf_dir.join("targets")).unwrap();
        patchbay_updates::SignedRepo::load(
            &trusted,
            &patchbay_updates::Source::Directory(tuf_dir),
            store.path(),
            patchbay_updates::Limits::default(),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    fn expires_text(repo: &TufRepo, file: &str) -> String {
        let v: Value = serde_json::from_slice(&repo.read_meta(file).unwrap()).unwrap();
        v["signed"]["expires"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn every_expires_is_written_in_whole_seconds_as_the_spec_requires() {
        let (_dir, repo) = repo_with(TufConfig::default(), None).await;
        repo.resign_root(&[], Some(RoleName::Snapshot))
            .await
            .unwrap();
        for file in repo.metadata_files().unwrap() {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let text = expires_text(&repo, &name);
            // YYYY-MM-DDTHH:MM:SSZ and nothing else.
            let shape_ok = text.len() == 20
                && text.chars().enumerate().all(|(i, c)| match i {
                    4 | 7 => c == '-',
                    10 => c == 'T',
                    13 | 16 => c == ':',
                    19 => c == 'Z',
                    _ => c.is_ascii_digit(),
                });
            assert!(
                shape_ok,
                "{name}: expires {text:?} is not YYYY-MM-DDTHH:MM:SSZ"
            );
        }
    }

    #[tokio::test]
    async fn timestamp_is_re_signed_when_half_its_lifetime_is_gone() {
        let (_dir, repo) = repo_with(TufConfig::default(), None).await;
        let v1 = repo.versions().unwrap().unwrap();
        // Fresh: nothing to do, nothing to warn about.
        assert_eq!(repo.refresh().await.unwrap(), RefreshReport::default());
        // A timestamp with one minute left is re-signed with the full lifetime, alone.
        repo.resign_timestamp_with_lifetime(60).await.unwrap();
        let report = repo.refresh().await.unwrap();
        assert_eq!(report.resigned, vec![RoleName::Timestamp], "{report:?}");
        let v2 = repo.versions().unwrap().unwrap();
        assert_eq!(v2.timestamp, v1.timestamp + 2);
        assert_eq!((v2.snapshot, v2.targets), (v1.snapshot, v1.targets));
        let ts = repo.current_timestamp().unwrap();
        let left = ts.signed.expires.as_second() - jiff::Timestamp::now().as_second();
        assert!(left > 23 * 3600, "{left}");
        assert_eq!(repo.refresh().await.unwrap(), RefreshReport::default());
        client_load(&repo).await.unwrap();
    }

    #[tokio::test]
    async fn an_offline_root_near_expiry_warns_and_is_renewed_with_the_offline_key() {
        let offline = tempfile::tempdir().unwrap();
        let config = TufConfig {
            root_expires_days: 20,
            ..TufConfig::default()
        };
        let (_dir, repo) = repo_with(config, Some(offline.path())).await;
        let report = repo.refresh().await.unwrap();
        assert!(report.resigned.is_empty(), "{report:?}");
        assert_eq!(report.warnings.len(), 1, "{report:?}");
        assert!(
            report.warnings[0].contains("root.json") && report.warnings[0].contains("root resign"),
            "{report:?}"
        );
        // Without the key: refused, nothing written.
        let err = repo.resign_root(&[], None).await.unwrap_err().to_string();
        assert!(err.contains("--root-key"), "{err}");
        assert_eq!(repo.versions().unwrap().unwrap().root, 1);
        // With it: version 2, trusted by a client that starts from version 1.
        let key = offline.path().join("root-1.pk8");
        assert_eq!(repo.resign_root(&[key], None).await.unwrap(), 2);
        assert_eq!(repo.versions().unwrap().unwrap().root, 2);
        client_load(&repo).await.unwrap();
    }

    #[tokio::test]
    async fn an_offline_targets_key_near_expiry_warns_and_is_not_re_signed() {
        let config = TufConfig {
            targets_expires_days: 10,
            ..TufConfig::default()
        };
        let (dir, repo) = repo_with(config, None).await;
        let key = repo.role_key("targets");
        std::fs::rename(&key, dir.path().join("targets-offline.pk8")).unwrap();
        let before = repo.versions().unwrap().unwrap();
        let report = repo.refresh().await.unwrap();
        assert!(report.resigned.is_empty(), "{report:?}");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("targets.json") && w.contains("sign-targets")),
            "{report:?}"
        );
        assert_eq!(repo.versions().unwrap().unwrap(), before);
    }

    #[tokio::test]
    async fn rotating_the_timestamp_key_keeps_clients_verifying() {
        let (_dir, repo) = repo_with(TufConfig::default(), None).await;
        let (old_id, _) = public_key(&repo.role_key("timestamp")).await.unwrap();
        assert_eq!(
            repo.resign_root(&[], Some(RoleName::Timestamp))
                .await
                .unwrap(),
            2
        );
        let (new_id, _) = public_key(&repo.role_key("timestamp")).await.unwrap();
        assert_ne!(old_id, new_id);
        let root = repo.root().unwrap();
        assert_eq!(root.roles[&RoleType::Timestamp].keyids, vec![new_id]);
        assert!(!root.keys.contains_key(&old_id), "the old key leaves root");
        assert!(!repo.next_key_path(RoleName::Timestamp).exists());
        client_load(&repo).await.unwrap();
        // Rotating the root keys themselves is refused.
        assert!(repo.resign_root(&[], Some(RoleName::Root)).await.is_err());
    }

    #[tokio::test]
    async fn root_keys_rotate_to_new_offline_keys_signed_by_old_and_new() {
        let (_dir, repo) = repo_with(TufConfig::default(), None).await;
        let old_key = repo.keys_dir.join("root-1.pk8");
        let (old_id, _) = public_key(&old_key).await.unwrap();
        let usb = tempfile::tempdir().unwrap();
        let files = vec![usb.path().join("root-a.pk8"), usb.path().join("root-b.pk8")];
        let new = NewRootKeys::new(files.clone(), 2).unwrap();
        let rotation = repo.rotate_root_keys(&[], &new).await.unwrap();
        assert_eq!(rotation.version, 2);
        assert_eq!(rotation.key_files, files);
        assert_eq!(rotation.retired_online_keys, vec![old_key.clone()]);
        assert!(rotation.not_retired.is_empty(), "{rotation:?}");
        assert!(
            !old_key.exists(),
            "the old root key left the keys directory"
        );
        assert!(repo.online_root_keys().is_empty());
        let root = repo.root().unwrap();
        let root_keys = &root.roles[&RoleType::Root];
        assert_eq!(root_keys.threshold.get(), 2);
        assert_eq!(root_keys.keyids.len(), 2);
        assert!(!root_keys.keyids.contains(&old_id));
        assert!(
            !root.keys.contains_key(&old_id),
            "the old root key leaves root"
        );
        // Signed by the old key and both new ones; a client trusting version 1 follows.
        let signed: Signed<Root> = serde_json::from_slice(&repo.root_bytes().unwrap()).unwrap();
        assert_eq!(signed.signatures.len(), 3);
        assert_eq!(
            repo.read_meta("2.root.json").unwrap(),
            repo.root_bytes().unwrap()
        );
        client_load(&repo).await.unwrap();
        // From now on the new keys sign roots; one of them is not the threshold.
        let err = repo
            .resign_root(&files[..1], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 2 of the root keys"), "{err}");
        assert_eq!(repo.resign_root(&files, None).await.unwrap(), 3);
        client_load(&repo).await.unwrap();
    }

    #[tokio::test]
    async fn a_next_root_without_its_own_keys_signatures_is_not_served() {
        let (dir, repo) = repo_with(TufConfig::default(), None).await;
        let current = repo.root().unwrap();
        let stranger = dir.path().join("stranger.pk8");
        generate_key(&stranger).unwrap();
        let (id, key) = public_key(&stranger).await.unwrap();
        let mut next = repo.next_root(&current).unwrap();
        next.keys.insert(id.clone(), key);
        next.roles.get_mut(&RoleType::Root).unwrap().keyids = vec![id];
        // Signed by the old root key only: N's check passes, N+1's own does not.
        let old_key = vec![key_source(&repo.keys_dir.join("root-1.pk8"))];
        let signed = SignedRole::new(
            next,
            &KeyHolder::Root(current),
            &old_key,
            &SystemRandom::new(),
        )
        .await
        .unwrap();
        repo.write_meta("2.root.json", signed.buffer()).unwrap();
        let err = repo.refresh().await.unwrap_err().to_string();
        assert!(err.contains("not signed by its own root keys"), "{err}");
        assert_eq!(repo.root().unwrap().version.get(), 1);
    }

    #[tokio::test]
    async fn a_root_key_rotation_that_cannot_finish_changes_nothing() {
        let offline = tempfile::tempdir().unwrap();
        let (_dir, repo) = repo_with(TufConfig::default(), Some(offline.path())).await;
        let before = repo.root_bytes().unwrap();
        let keys_before = std::fs::read_dir(&repo.keys_dir).unwrap().count();
        let usb = tempfile::tempdir().unwrap();
        let out = usb.path().join("root-new.pk8");
        // Without the old root key: refused, and no new key file is left behind.
        let new = NewRootKeys::new(vec![out.clone()], 1).unwrap();
        let err = repo.rotate_root_keys(&[], &new).await.unwrap_err();
        assert!(err.to_string().contains("--root-key"), "{err}");
        assert!(!out.exists());
        // A file in the way is never overwritten.
        std::fs::write(&out, b"someone's file").unwrap();
        let err = NewRootKeys::new(vec![out.clone()], 1).unwrap_err();
        assert!(err.to_string().contains("never overwritten"), "{err}");
        let err = repo
            .rotate_root_keys(&[offline.path().join("root-1.pk8")], &new)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"someone's file");
        // A threshold above the number of new keys, or no key at all.
        assert!(NewRootKeys::new(vec![usb.path().join("x.pk8")], 2).is_err());
        assert!(NewRootKeys::new(Vec::new(), 1).is_err());
        assert!(NewRootKeys::new(vec![usb.path().join("no-dir/x.pk8")], 1).is_err());
        assert_eq!(repo.root_bytes().unwrap(), before);
        assert!(!repo.metadata_dir.join("2.root.json").exists());
        assert_eq!(
            std::fs::read_dir(&repo.keys_dir).unwrap().count(),
            keys_before
        );
        assert_eq!(
            std::fs::read_dir(usb.path()).unwrap().count(),
            1,
            "no temporary file left beside the new key's place"
        );
        client_load(&repo).await.unwrap();
    }

    #[tokio::test]
    async fn keys_on_disk_name_each_roles_files() {
        let offline = tempfile::tempdir().unwrap();
        let (_dir, repo) = repo_with(TufConfig::default(), Some(offline.path())).await;
        let on_disk = repo.keys_on_disk().await.unwrap();
        let roles: Vec<RoleName> = on_disk.iter().map(|k| k.role).collect();
        assert_eq!(roles, RoleName::ALL);
        assert!(on_disk[0].files.is_empty() && !on_disk[0].can_sign());
        for k in &on_disk[1..] {
            assert_eq!(k.files, vec![repo.role_key(k.role.as_str())], "{k:?}");
            assert!(k.can_sign());
        }
    }

    #[tokio::test]
    async fn a_rotation_cut_before_the_new_root_is_undone_at_the_next_refresh() {
        let (_dir, repo) = repo_with(TufConfig::default(), None).await;
        let next = repo.next_key_path(RoleName::Snapshot);
        generate_key(&next).unwrap();
        repo.refresh().await.unwrap();
        assert!(!next.exists());
        assert_eq!(repo.versions().unwrap().unwrap().root, 1);
        client_load(&repo).await.unwrap();
    }

    #[test]
    fn warnings_depend_on_who_renews_the_role() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let at = |hours: i64| jiff::Timestamp::from_second(1_800_000_000 + hours * 3_600).unwrap();
        let expiry = |keys, hours| RoleExpiry {
            role: RoleName::Timestamp,
            version: 7,
            expires: at(hours),
            keys,
        };
        assert_eq!(expiry(KeyPlace::Online, 1).warning(now), None);
        // Offline: from 30 days before.
        assert!(expiry(KeyPlace::Offline, 29 * 24).warning(now).is_some());
        assert_eq!(expiry(KeyPlace::Offline, 31 * 24).warning(now), None);
        // A mirror's day-long timestamp does not warn all day, only near its end.
        assert_eq!(expiry(KeyPlace::Mirror, 20).warning(now), None);
        let near = expiry(KeyPlace::Mirror, 5).warning(now).unwrap();
        assert!(near.contains("import a newer archive"), "{near}");
        let gone = expiry(KeyPlace::Mirror, -1).warning(now).unwrap();
        assert!(gone.contains("EXPIRED"), "{gone}");
    }

    #[tokio::test]
    async fn a_rotation_cut_after_the_new_root_is_finished_at_the_next_refresh() {
        let (dir, repo) = repo_with(TufConfig::default(), None).await;
        // Do what `resign_root(rotate snapshot)` does up to the new root, then "crash":
        // root N+1 names a new snapshot key, the served snapshot is signed by the old one.
        let copy = dir.path().join("copy");
        std::fs::create_dir_all(&copy).unwrap();
        repo.resign_root(&[], Some(RoleName::Snapshot))
            .await
            .unwrap();
        let v = repo.versions().unwrap().unwrap();
        // Put back a snapshot (and timestamp) signed by the old key: sign with a key file the
        // root no longer names.
        let old_key = copy.join("snapshot-old.pk8");
        generate_key(&old_key).unwrap();
        let snapshot = repo.current_snapshot().unwrap().unwrap();
        let keys = vec![key_source(&old_key)];
        let mut root_with_old = repo.root().unwrap();
        let (old_id, old_pub) = public_key(&old_key).await.unwrap();
        root_with_old.keys.insert(old_id.clone(), old_pub);
        root_with_old
            .roles
            .get_mut(&RoleType::Snapshot)
            .unwrap()
            .keyids = vec![old_id];
        let resigned = SignedRole::new(
            snapshot.signed.clone(),
            &KeyHolder::Root(root_with_old),
            &keys,
            &SystemRandom::new(),
        )
        .await
        .unwrap();
        repo.write_meta(&format!("{}.snapshot.json", v.snapshot), resigned.buffer())
            .unwrap();
        assert_eq!(
            repo.roles_not_signed_by_current_keys().unwrap(),
            vec![RoleName::Snapshot]
        );
        assert!(client_load(&repo).await.is_err(), "hosts would refuse it");
        let report = repo.refresh().await.unwrap();
        assert!(report.resigned.contains(&RoleName::Snapshot), "{report:?}");
        assert!(repo.roles_not_signed_by_current_keys().unwrap().is_empty());
        client_load(&repo).await.unwrap();
    }

    #[tokio::test]
    async fn a_crash_between_the_two_root_writes_serves_the_newer_root() {
        let (_dir, repo) = repo_with(TufConfig::default(), None).await;
        let one = repo.read_meta("root.json").unwrap();
        repo.resign_root(&[], None).await.unwrap();
        // As if root.json had not been replaced yet.
        repo.write_meta("root.json", &one).unwrap();
        assert_eq!(repo.root().unwrap().version.get(), 1);
        repo.refresh().await.unwrap();
        assert_eq!(repo.root().unwrap().version.get(), 2);
        client_load(&repo).await.unwrap();
    }
}
