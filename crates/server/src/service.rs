//! What the server does, independent of HTTP: publish levels, run channels, register hosts, and
//! keep the signed TUF view equal to the database after every change.
//!
//! Invariant: every mutation runs under one lock and ends with [`Service::resign`], which
//! rebuilds the whole targets role from the database; when signing fails the mutation is undone,
//! so the database never says something the signed metadata does not.
//!
//! Layering: handlers (`api`, `ui`, `main.rs`) → [`Service`] → `store`, `tuf`, `blobs`.
//! `Service`'s fields for those three are private, so only this module and its child
//! [`archive`] (air-gapped export/import, which writes served metadata itself) can reach them,
//! and the invariant above has one place to hold.

pub mod archive;
pub mod users;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object::Object;
use patchbay_core::clock::{now_rfc3339, unix_seconds};
use patchbay_core::protocol::{
    CheckInReply, CheckInRequest, ClockWarning, HostState, KernelSummary, LevelSummary,
    PublishReceipt, RegisterReply, RegisterRequest,
};
use patchbay_core::{
    bundle_target_name, BuildId, Bundle, ChannelDoc, ChannelName, CveStatus, HostSeed,
    KernelRollout, PatchLevel, UpgradeReport, Wave,
};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::auth::{Caller, Role};
use crate::blobs::Blobs;
use crate::config::{HostsCheckCertificate, ServedProtocol, ServerConfig};
use crate::error::ServerError;
use crate::store::{
    AuditEntry, ChannelRecord, CheckIn, ExposureSnapshot, HostFilter, HostRecord, LevelRecord,
    RegistrationKeyRecord, SessionRecord, SqliteStore, Store, TokenRecord, UserRecord,
};
use crate::tuf::{KeyPlace, RefreshReport, RoleExpiry, RoleName, TargetEntry, TufRepo};
use patchbay_core::registration::{RegistrationKey, RegistrationPins, RegistrationSecret};

/// `<prefix>_<64 hex>`: the secret is shown once and stored only as its sha256.
pub fn random_secret(prefix: &str) -> Result<String, ServerError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ServerError::Tuf(format!("random: {e}")))?;
    Ok(format!("{prefix}_{}", hex::encode(bytes)))
}

/// The hex sha256 of a secret (token, registration key, cookie): what the database stores
/// and looks secrets up by.
pub fn secret_hash(secret: &str) -> String {
    patchbay_core::Sha256::of(secret.as_bytes())
        .as_str()
        .to_owned()
}

/// The first 12 hex digits of an id, for logs and pages.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn random_registration_secret() -> Result<RegistrationSecret, ServerError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ServerError::Tuf(format!("random: {e}")))?;
    Ok(RegistrationSecret::from_bytes(&bytes))
}

fn random_hex(n: usize) -> Result<String, ServerError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| ServerError::Tuf(format!("random: {e}")))?;
    Ok(hex::encode(bytes))
}

/// What `init` prints once.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// An admin API token (`pbadm_<64 hex>`), shown only this once.
    pub admin_token: String,
    /// The dashboard password of user `admin`.
    pub admin_password: String,
    /// A registration key for the `production` channel, whole (format 2, with the root's and,
    /// when hosts pin it, the certificate's SHA-256).
    pub registration_key: String,
    /// The key ids of the root keys, as listed in `root.json`.
    pub root_key_ids: Vec<String>,
    /// Where the root keys were written (move them offline from there).
    pub root_key_dir: PathBuf,
}

/// One wave of a staged rollout, as a promotion asks for it (`"waves"` in the request).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveRequest {
    /// Seconds after the promotion takes effect when the wave starts (at most one year).
    pub after_secs: u64,
    /// The share of the channel's hosts served from then on, 1 to 100; each wave's must be
    /// higher than the one before.
    pub percent: u8,
}

/// A dashboard session [`Service::login`] opened.
#[derive(Debug, Clone)]
pub struct OpenedSession {
    /// The session cookie's secret: given to the browser once, stored only as its sha256.
    pub cookie: String,
    /// How long the session lasts, in seconds (`ui.session_hours`).
    pub max_age_secs: i64,
}

/// What `/metrics` reports, gathered from the database, the CVE data and the signed metadata.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Registered hosts by last reported state (states no host is in are absent).
    pub hosts_by_state: BTreeMap<HostState, u64>,
    /// Today's fleet exposure: distinct open CVEs by severity, hosts breaching the window,
    /// hosts whose exposure is unknown.
    pub exposure: crate::cve::FleetExposure,
    /// What the CVE data is and how old.
    pub cve_data: crate::cve::CveDataStatus,
    /// Per series the bundled data knows or a host runs: whether the CVE data lacks it.
    pub cve_series_missing: BTreeMap<patchbay_core::KernelSeries, bool>,
    /// Hosts per kernel series and CVE data state ([`crate::cve::hosts_by_series`]).
    pub hosts_by_series: BTreeMap<(String, &'static str), u64>,
    /// Check-ins received (a counter: pruning the history does not lower it).
    pub checkins: u64,
    /// When each served role expires, and who can renew it.
    pub expiries: Vec<RoleExpiry>,
}

/// The server's one way to its state. The database, the blob store and the TUF repository
/// are private fields: handlers (`api`, `ui`, the CLI) reach them only through these methods,
/// which keep the database and the signed metadata equal (see the module's invariant).
#[derive(Debug)]
pub struct Service {
    /// The data directory (`config.toml`, the database, `objects/`, `tuf/`, `keys/`).
    pub data_dir: PathBuf,
    /// `config.toml` as loaded at start.
    pub config: ServerConfig,
    store: Arc<dyn Store>,
    blobs: Blobs,
    tuf: TufRepo,
    /// Set by `serve` ([`Service::set_served_certificate`]); `None`: the one config.toml names.
    served_certificate: std::sync::RwLock<Option<Option<patchbay_core::Sha256>>>,
    lock: Mutex<()>,
    /// Failed dashboard logins per user and address (see [`crate::throttle`]).
    login_throttle: crate::throttle::LoginThrottle,
    /// The CVE database (`init`, `cve sync`) with the file's modification time, read at first
    /// use and swapped whole when the file changes (or goes).
    cve: std::sync::RwLock<Option<(Option<std::time::SystemTime>, Arc<crate::cve::StoredDb>)>>,
}

fn bad(what: &str, value: &str, expected: &str) -> ServerError {
    ServerError::BadRequest(format!("{what} {value:?} is not valid: {expected}"))
}

fn text_field(what: &str, value: &str, max: usize) -> Result<(), ServerError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(bad(
            what,
            value,
            &format!("1 to {max} characters, no control characters"),
        ));
    }
    Ok(())
}

/// Checks that a bundle's module is a livepatch for the kernel its manifest names.
fn check_livepatch_module(bundle: &Bundle) -> Result<(), ServerError> {
    let refuse = |reason: String| {
        ServerError::Unprocessable(format!(
            "the bundle's module is not a livepatch for kernel {} ({}): {reason}",
            bundle.manifest().kernel.release,
            bundle.manifest().kernel.build_id
        ))
    };
    let file = object::File::parse(bundle.module())
        .map_err(|e| refuse(format!("not an ELF module ({e})")))?;
    let info = patchbay_core::modinfo::Modinfo::of_module(bundle.module())
        .map_err(|e| refuse(e.to_string()))?;
    let vermagic = info.value("vermagic");
    let name = info.value("name");
    if info.value("livepatch") != Some("Y") {
        return Err(refuse(
            "modinfo has no livepatch=Y (build it with patchbay-build)".into(),
        ));
    }
    let release = bundle.manifest().kernel.release.as_str();
    match vermagic {
        Some(v) if v.split_whitespace().next() == Some(release) => {}
        Some(v) => return Err(refuse(format!("its vermagic is {v:?}"))),
        None => return Err(refuse("modinfo has no vermagic".into())),
    }
    if name != Some(bundle.manifest().module.name.as_str()) {
        return Err(refuse(format!(
            "modinfo name {:?} differs from the manifest's {}",
            name,
            bundle.manifest().module.name
        )));
    }
    if file.section_by_name(".gnu.linkonce.this_module").is_none() {
        return Err(refuse(
            "it is not a kernel module (no .gnu.linkonce.this_module)".into(),
        ));
    }
    Ok(())
}

/// What differs between the targets the server holds (`wanted`) and a signed role's
/// (`listed`), target by target: missing, unexpected, or with other hashes, length or custom
/// data.
fn describe_difference(
    wanted: &BTreeMap<String, TargetEntry>,
    listed: &BTreeMap<String, TargetEntry>,
) -> String {
    let mut parts = Vec::new();
    for (name, entry) in wanted {
        match listed.get(name) {
            None => parts.push(format!("missing {name}")),
            Some(other) if other.sha256 != entry.sha256 || other.length != entry.length => parts
                .push(format!(
                    "{name} has sha256 {} and length {} instead of {} and {}",
                    other.sha256, other.length, entry.sha256, entry.length
                )),
            Some(other) if other.custom != entry.custom => {
                parts.push(format!("{name} has other custom data"))
            }
            Some(_) => {}
        }
    }
    for name in listed.keys().filter(|n| !wanted.contains_key(*n)) {
        parts.push(format!("unexpected {name}"));
    }
    parts.join("; ")
}

/// The rollout of a re-promotion of the level `current` already rolls out, on a new schedule
/// (`effective_at`, `planned` waves): the share of hosts that have the level `at` now keeps it
/// from now on, and the new schedule only ever adds hosts. Host buckets depend on the build
/// and the level only, so the same hosts stay in.
fn keep_served_hosts(
    current: &KernelRollout,
    at: i64,
    effective_at: i64,
    planned: Vec<Wave>,
) -> KernelRollout {
    let served = current.percent_at(at);
    if served == 0 {
        return KernelRollout {
            effective_at,
            waves: planned,
            pinned: false,
            ..current.clone()
        };
    }
    if served >= 100 {
        // Every host has it already; a new schedule cannot add anyone.
        return KernelRollout {
            pinned: false,
            ..current.clone()
        };
    }
    let mut waves = vec![Wave {
        at,
        percent: served,
    }];
    if planned.is_empty() {
        waves.push(Wave {
            at: effective_at.max(at),
            percent: 100,
        });
    } else {
        waves.extend(planned.into_iter().filter(|w| w.percent > served));
    }
    KernelRollout {
        effective_at: at,
        waves,
        pinned: false,
        ..current.clone()
    }
}

/// Held while a mutation runs (see [`Service::lock_mutations`]).
pub(crate) struct MutationGuard<'a> {
    _in_process: tokio::sync::MutexGuard<'a, ()>,
    _between_processes: patchbay_core::fsutil::FileLock,
}

impl Service {
    /// Creates a new data dir: config, database, TUF keys and metadata, the `production`
    /// channel, an admin token and a registration key for `production`.
    pub async fn init(
        data_dir: &Path,
        offline_root: Option<&Path>,
        config: ServerConfig,
    ) -> Result<InitReport, ServerError> {
        let io = |path: &Path, source| ServerError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
        let config_path = data_dir.join("config.toml");
        if config_path.exists() {
            return Err(ServerError::Conflict(format!(
                "{} already exists: {} is an initialised server (use another --data)",
                config_path.display(),
                data_dir.display()
            )));
        }
        let tuf = TufRepo::new(data_dir, config.tuf.clone());
        let root_key_dir = offline_root
            .map(Path::to_path_buf)
            .unwrap_or_else(|| tuf.keys_dir.clone());
        let root_key_ids = tuf.init(&root_key_dir).await?;
        patchbay_core::fsutil::write_atomic(&config_path, config.commented().as_bytes())
            .map_err(|e| io(&config_path, e))?;
        // The CVE data shipped with this binary: a new server never shows "no exposure" for want
        // of data (`cve sync` replaces it with current data).
        crate::cve::sync(data_dir, &crate::cve::CveSource::Bundled)?;
        let service = Service::open(data_dir).await?;
        let production = ChannelName::default_channel();
        service
            .store
            .add_channel(&production, &now_rfc3339(), unix_seconds())
            .await?;
        let admin_token = service.insert_token("pbadm", "init", Role::Admin).await?;
        let admin_password = random_secret("pw")?;
        service
            .insert_user("admin", Role::Admin, &admin_password)
            .await?;
        let secret = random_registration_secret()?;
        service
            .store
            .add_registration_key(&secret_hash(secret.expose()), &production, unix_seconds())
            .await?;
        let _guard = service.lock_mutations().await?;
        service
            .resign("init", "init", "created the production channel")
            .await?;
        Ok(InitReport {
            admin_token,
            admin_password,
            // After the first signing: the key carries the hash of the root just served.
            registration_key: service.full_registration_key(secret)?.to_string(),
            root_key_ids,
            root_key_dir,
        })
    }

    /// Opens an initialised data dir: reads `config.toml`, opens the database (only
    /// `sqlite://` URLs) and loads the CVE database. [`ServerError::Config`] when there is no
    /// `config.toml` (run `init`) or it is invalid.
    pub async fn open(data_dir: &Path) -> Result<Service, ServerError> {
        let config = ServerConfig::load(data_dir)?;
        let db_path = match config.database.strip_prefix("sqlite://") {
            Some(p) if Path::new(p).is_absolute() => PathBuf::from(p),
            Some(p) => data_dir.join(p),
            None => {
                return Err(ServerError::Config {
                    path: data_dir.join("config.toml").display().to_string(),
                    reason: format!(
                        "database {:?}: this build supports sqlite:// URLs only",
                        config.database
                    ),
                })
            }
        };
        let store = SqliteStore::open(&db_path).await?;
        Ok(Service {
            cve: std::sync::RwLock::new(None),
            data_dir: data_dir.to_path_buf(),
            tuf: TufRepo::new(data_dir, config.tuf.clone()),
            blobs: Blobs::local(&data_dir.join("objects"))?,
            login_throttle: crate::throttle::LoginThrottle::new(crate::throttle::LoginLimits {
                failures_per_user: config.ui.login_failures_per_user,
                failures_per_address: config.ui.login_failures_per_address,
                lockout: std::time::Duration::from_secs(u64::from(config.ui.login_lockout_secs)),
            }),
            config,
            store: Arc::new(store),
            served_certificate: std::sync::RwLock::new(None),
            lock: Mutex::new(()),
        })
    }

    /// The current CVE database (empty when there is none: every exposure is then unknown).
    pub fn cve_db(&self) -> Arc<patchbay_exposure::CveDatabase> {
        Arc::clone(&self.stored_cve().db)
    }

    /// The CVE database as read from `cve/db.json`, re-read when the file changed since (a
    /// `cve sync`, or the file removed): one `stat` per call, so every answer is about the data
    /// on disk now.
    fn stored_cve(&self) -> Arc<crate::cve::StoredDb> {
        let _ = self.reload_cve_if_changed();
        let current = match self.cve.read() {
            Ok(guard) => guard.as_ref().map(|(_, stored)| Arc::clone(stored)),
            Err(poisoned) => poisoned
                .into_inner()
                .as_ref()
                .map(|(_, stored)| Arc::clone(stored)),
        };
        current.unwrap_or_else(|| Arc::new(crate::cve::read_stored(&self.data_dir)))
    }

    /// Reads the CVE database again if it was not read yet or its file changed (a `cve sync`
    /// replaced it, or it was removed). Returns whether it did. A missing or unreadable file
    /// is not an error: it is reported by [`Service::cve_data_status`].
    pub fn reload_cve_if_changed(&self) -> Result<bool, ServerError> {
        let path = crate::cve::db_path(&self.data_dir);
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let current = match self.cve.read() {
            Ok(guard) => guard.as_ref().map(|(m, _)| *m),
            Err(poisoned) => poisoned.into_inner().as_ref().map(|(m, _)| *m),
        };
        if current == Some(mtime) {
            return Ok(false);
        }
        let stored = Some((mtime, Arc::new(crate::cve::read_stored(&self.data_dir))));
        match self.cve.write() {
            Ok(mut guard) => *guard = stored,
            Err(poisoned) => *poisoned.into_inner() = stored,
        }
        Ok(true)
    }

    /// What the CVE data is and how old, against `cve.max_age_days`.
    pub fn cve_data_status(&self) -> crate::cve::CveDataStatus {
        crate::cve::data_status(
            &self.stored_cve(),
            self.config.cve.max_age_days,
            unix_seconds(),
        )
    }

    /// `doctor`'s findings about the CVE data: there is some (FAIL without: every exposure
    /// is unknown), it is not older than `cve.max_age_days` (WARN), and it covers the series
    /// the hosts run (WARN for each that it does not).
    pub async fn cve_data_findings(&self) -> Result<Vec<crate::doctor::Finding>, ServerError> {
        use crate::doctor::{Finding, Verdict};
        let status = self.cve_data_status();
        let mut findings = vec![match (status.state, &status.warning) {
            (crate::cve::Freshness::Current, _) | (_, None) => {
                Finding::new(Verdict::Ok, status.describe())
            }
            (crate::cve::Freshness::Outdated, Some(w)) => Finding::new(Verdict::Warn, w.clone()),
            (crate::cve::Freshness::Missing, Some(w)) => Finding::new(Verdict::Fail, w.clone()),
        }];
        if status.state == crate::cve::Freshness::Missing {
            return Ok(findings);
        }
        let hosts = self.store.hosts(&HostFilter::default()).await?;
        let levels = self.store.levels().await?;
        let db = self.cve_db();
        let mut uncovered: BTreeMap<patchbay_core::KernelSeries, u64> = BTreeMap::new();
        for v in hosts
            .iter()
            .filter_map(|h| crate::cve::host_upstream(h, &levels))
        {
            let series = patchbay_core::KernelSeries::of(&v);
            if !db.covers(series) {
                *uncovered.entry(series).or_default() += 1;
            }
        }
        for (series, n) in uncovered {
            findings.push(Finding::new(
                Verdict::Warn,
                format!(
                    "{n} host(s) run {series}.y, which the CVE data does not cover (it covers \
                     {}): their exposure is unknown",
                    db.covered_text()
                ),
            ));
        }
        Ok(findings)
    }

    /// Today's fleet exposure of `hosts` (distinct open CVEs by severity, hosts breaching,
    /// hosts whose exposure is unknown).
    pub async fn fleet_exposure(
        &self,
        hosts: &[HostRecord],
    ) -> Result<crate::cve::FleetExposure, ServerError> {
        let levels = self.store.levels().await?;
        Ok(crate::cve::fleet_snapshot(
            &self.cve_db(),
            hosts,
            &levels,
            crate::cve::today(),
        ))
    }

    /// Per kernel series of `hosts`: hosts by CVE data state, and the data's notices for the
    /// series it cannot fully answer for (the fleet page).
    pub async fn fleet_series(
        &self,
        hosts: &[HostRecord],
    ) -> Result<(BTreeMap<(String, &'static str), u64>, Vec<String>), ServerError> {
        let levels = self.store.levels().await?;
        let db = self.cve_db();
        Ok((
            crate::cve::hosts_by_series(&db, hosts, &levels),
            crate::cve::fleet_notices(&db, hosts, &levels),
        ))
    }

    /// Computes today's fleet exposure and keeps it as the day's snapshot — unless no host's
    /// exposure is known (no CVE data): a day of zeros in the trend would read "no exposure".
    pub async fn record_exposure_snapshot(&self) -> Result<crate::cve::FleetExposure, ServerError> {
        let hosts = self.store.hosts(&HostFilter::default()).await?;
        let fleet = self.fleet_exposure(&hosts).await?;
        if !fleet.all_unknown() {
            self.store.record_snapshot(&fleet.snapshot).await?;
        }
        Ok(fleet)
    }

    /// The compliance report of every host on day `at`.
    pub async fn compliance(
        &self,
        at: patchbay_exposure::Day,
        policy: patchbay_exposure::Policy,
    ) -> Result<Vec<crate::cve::ComplianceRow>, ServerError> {
        let hosts = self.store.hosts(&HostFilter::default()).await?;
        let levels = self.store.levels().await?;
        Ok(crate::cve::compliance(
            &self.cve_db(),
            &hosts,
            &levels,
            at,
            policy,
        ))
    }

    /// A registered host by id.
    pub async fn host(&self, id: &str) -> Result<HostRecord, ServerError> {
        self.store.host(id).await?.ok_or_else(|| {
            ServerError::NotFound(format!("no host {id:?}; GET /api/v1/hosts lists them"))
        })
    }

    /// How many hosts `filter` matches, whatever its page (`limit`, `offset`).
    pub async fn count_hosts(&self, filter: &HostFilter) -> Result<u64, ServerError> {
        self.store.count_hosts(filter).await
    }

    /// The newest `limit` daily exposure snapshots, oldest first (the dashboard's trend).
    pub async fn exposure_history(&self, limit: u32) -> Result<Vec<ExposureSnapshot>, ServerError> {
        self.store.snapshots(limit).await
    }

    /// The channels, with their serials.
    pub async fn channels(&self) -> Result<Vec<ChannelRecord>, ServerError> {
        self.store.channels().await
    }

    /// The API tokens (their ids are the tokens' SHA-256; the tokens are not stored).
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, ServerError> {
        self.store.tokens().await
    }

    /// The registration keys (their ids are the keys' SHA-256; the keys are not stored).
    pub async fn registration_keys(&self) -> Result<Vec<RegistrationKeyRecord>, ServerError> {
        self.store.registration_keys().await
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, ServerError> {
        self.store.audit_log(limit).await
    }

    /// What `/metrics` reports: hosts by state, today's fleet exposure, check-ins received
    /// and the served roles' expiry.
    pub async fn metrics(&self) -> Result<Metrics, ServerError> {
        let hosts = self.hosts(&HostFilter::default()).await?;
        let levels = self.store.levels().await?;
        let mut hosts_by_state = BTreeMap::new();
        for host in &hosts {
            *hosts_by_state.entry(host.state).or_default() += 1;
        }
        Ok(Metrics {
            hosts_by_state,
            // Exposure once per distinct (release, fixes) pair, as for the dashboard.
            exposure: self.fleet_exposure(&hosts).await?,
            hosts_by_series: crate::cve::hosts_by_series(&self.cve_db(), &hosts, &levels),
            cve_data: self.cve_data_status(),
            cve_series_missing: crate::cve::series_missing(&self.cve_db(), &hosts, &levels),
            checkins: self.store.checkin_count().await?,
            expiries: self.metadata_expiry().await?,
        })
    }

    /// A served TUF metadata file by the name clients ask for (`root.json`,
    /// `timestamp.json`, `<n>.<role>.json`); `None` for any other name or a missing file.
    pub async fn served_metadata(&self, file: &str) -> Result<Option<Vec<u8>>, ServerError> {
        self.tuf.served_metadata(file).await
    }

    /// A TUF target's blob by its sha256, as a stream of chunks with its length.
    pub async fn served_target(
        &self,
        sha256: &str,
    ) -> Result<Option<(u64, axum::body::Body)>, ServerError> {
        self.blobs.stream(sha256).await
    }

    /// The host's CSAF VEX document as of now.
    pub async fn host_vex(&self, host: &HostRecord) -> Result<serde_json::Value, ServerError> {
        let exposure = self.host_exposure(host).await?;
        Ok(crate::cve::csaf_vex(
            host,
            &exposure,
            &self.cve_db(),
            &self.cve_data_status(),
            &now_rfc3339(),
        ))
    }

    /// A host's exposure today under the default policy.
    pub async fn host_exposure(
        &self,
        host: &HostRecord,
    ) -> Result<crate::cve::HostExposure, ServerError> {
        let levels = self.store.levels().await?;
        Ok(crate::cve::host_exposure(
            &self.cve_db(),
            host,
            &levels,
            crate::cve::today(),
            patchbay_exposure::Policy::default(),
        ))
    }

    /// Serialises every change of the database and the signed metadata: within this process
    /// (the mutex) and with the CLI commands that change them while `serve` runs (`root
    /// rotate`, `import-signed`, … take the same `flock` on `<data>/mutation.lock`).
    pub(crate) async fn lock_mutations(&self) -> Result<MutationGuard<'_>, ServerError> {
        let in_process = self.lock.lock().await;
        let path = self.data_dir.join("mutation.lock");
        let lock_path = path.clone();
        let between_processes = tokio::task::spawn_blocking(move || {
            patchbay_core::fsutil::FileLock::acquire(&lock_path)
        })
        .await
        .map_err(|e| ServerError::Tuf(format!("lock task: {e}")))?
        .map_err(|source| ServerError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(MutationGuard {
            _in_process: in_process,
            _between_processes: between_processes,
        })
    }

    fn is_mirror(&self) -> bool {
        self.data_dir.join("tuf/mirror").exists()
    }

    fn refuse_if_mirror(&self) -> Result<(), ServerError> {
        if self.is_mirror() {
            return Err(ServerError::Conflict(
                "this server serves an imported archive (air-gapped mirror); publish and change \
                 channels on the outer server, then export and import again"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Builds the targets role from the database (bundles and channel documents), signs the
    /// next version and records the change in the audit log. Caller holds the lock.
    ///
    /// With the targets key offline the change stays in the database, unsigned, until the
    /// administrator signs it (`export-unsigned`, `sign-targets`, `import-signed`); hosts see it
    /// only then.
    async fn resign(
        &self,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<Option<u64>, ServerError> {
        if !self.tuf.has_targets_key() {
            self.store
                .audit(
                    unix_seconds(),
                    actor,
                    action,
                    &format!("{detail} (awaiting offline signature)"),
                    None,
                )
                .await?;
            return Ok(None);
        }
        let targets = self.targets_from_db().await?;
        let version = self.tuf.publish(&targets).await?;
        // Signed and served: the change has happened. A failing audit write must not make the
        // caller undo the database change under metadata that already lists it.
        if let Err(e) = self
            .store
            .audit(unix_seconds(), actor, action, detail, Some(version))
            .await
        {
            eprintln!(
                "patchbay-server: WARNING: signed targets version {version} ({action}: \
                 {detail}) but could not write its audit entry: {e}"
            );
        }
        Ok(Some(version))
    }

    /// Signs what the database holds when the served targets role says otherwise: a crash
    /// between a mutation's database change and its signature leaves that (`serve` calls this
    /// at start). With the targets key offline unsigned changes are normal and wait for the
    /// administrator; a mirror signs nothing. Returns the new targets version, if it signed.
    pub async fn reconcile(&self) -> Result<Option<u64>, ServerError> {
        let _guard = self.lock_mutations().await?;
        if self.is_mirror() || !self.tuf.has_targets_key() {
            return Ok(None);
        }
        let wanted = self.targets_from_db().await?;
        let served = self
            .tuf
            .current_targets()?
            .map(|t| crate::tuf::target_entries(&t.signed))
            .unwrap_or_default();
        if wanted == served {
            return Ok(None);
        }
        let detail = format!(
            "signed the database's state that a crash left unsigned ({})",
            describe_difference(&wanted, &served)
        );
        self.resign("serve", "reconcile", &detail).await
    }

    /// Whether the served targets role lists target `name` with this sha256.
    fn served_target_is(&self, name: &str, sha256: &str) -> Result<bool, ServerError> {
        Ok(self.tuf.current_targets()?.is_some_and(|t| {
            crate::tuf::target_entries(&t.signed)
                .get(name)
                .is_some_and(|e| e.sha256 == sha256)
        }))
    }

    /// The next targets role, unsigned, for signing with an offline targets key.
    pub async fn unsigned_targets(&self) -> Result<Vec<u8>, ServerError> {
        self.refuse_if_mirror()?;
        let _guard = self.lock_mutations().await?;
        let targets = self.targets_from_db().await?;
        let role = self.tuf.next_targets(&targets)?;
        serde_json::to_vec_pretty(&role).map_err(|e| ServerError::Tuf(e.to_string()))
    }

    /// The channel documents `sign-targets` shows beside the unsigned role `role`
    /// ([`Service::unsigned_targets`]): every `channels/*.json` target it lists and the last
    /// signed role lists, as the object store holds them.
    pub async fn channel_documents(&self, role: &[u8]) -> Result<Vec<Vec<u8>>, ServerError> {
        let role: tough::schema::Targets = serde_json::from_slice(role)
            .map_err(|e| ServerError::Tuf(format!("the unsigned targets role: {e}")))?;
        let mut wanted = crate::tuf::target_entries(&role);
        if let Some(signed) = self.tuf.current_targets()? {
            wanted.extend(
                crate::tuf::target_entries(&signed.signed)
                    .into_iter()
                    .map(|(name, entry)| (format!("{name} (signed)"), entry)),
            );
        }
        let mut documents = Vec::new();
        for (name, entry) in wanted {
            if name.starts_with("channels/") {
                if let Some(bytes) = self.blobs.get(&entry.sha256).await? {
                    documents.push(bytes.to_vec());
                }
            }
        }
        Ok(documents)
    }

    /// Installs a targets role signed offline, if it lists exactly what the database holds.
    pub async fn install_signed_targets(&self, signed: &[u8]) -> Result<u64, ServerError> {
        self.refuse_if_mirror()?;
        let _guard = self.lock_mutations().await?;
        let parsed: tough::schema::Signed<tough::schema::Targets> = serde_json::from_slice(signed)
            .map_err(|e| ServerError::BadRequest(format!("not a signed targets role: {e}")))?;
        let expected = self.targets_from_db().await?;
        let listed = crate::tuf::target_entries(&parsed.signed);
        if listed != expected {
            return Err(ServerError::Conflict(format!(
                "the signed targets role does not list what the server holds now (it changed \
                 since export-unsigned: {}); export, sign and import again",
                describe_difference(&expected, &listed)
            )));
        }
        let version = self.tuf.install_targets(signed).await?;
        self.store
            .audit(
                unix_seconds(),
                "cli",
                "import-signed",
                "installed offline-signed targets",
                Some(version),
            )
            .await?;
        Ok(version)
    }

    async fn targets_from_db(&self) -> Result<BTreeMap<String, TargetEntry>, ServerError> {
        let mut targets = BTreeMap::new();
        for level in self.store.levels().await? {
            let mut custom = serde_json::Map::new();
            let manifest = serde_json::to_value(&level.manifest)
                .map_err(|e| ServerError::Tuf(format!("manifest of {}: {e}", level.build_id)))?;
            custom.insert("manifest".into(), manifest);
            targets.insert(
                bundle_target_name(&level.build_id, level.level),
                TargetEntry {
                    sha256: level.sha256.as_str().to_owned(),
                    length: level.length,
                    custom,
                },
            );
        }
        for channel in self.store.channels().await? {
            let doc = self.channel_doc(&channel.name).await?;
            let bytes = doc.to_bytes();
            let length = bytes.len() as u64;
            let (sha256, _) = self.blobs.put(Bytes::from(bytes)).await?;
            targets.insert(
                channel.name.target_name(),
                TargetEntry {
                    sha256: sha256.as_str().to_owned(),
                    length,
                    custom: serde_json::Map::new(),
                },
            );
        }
        Ok(targets)
    }

    /// The channel's current document as the database has it (serial, time of change, a
    /// rollout per kernel); [`ServerError::NotFound`] when there is no such channel.
    pub async fn channel_doc(&self, name: &ChannelName) -> Result<ChannelDoc, ServerError> {
        let record = self
            .store
            .channels()
            .await?
            .into_iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| {
                ServerError::NotFound(format!(
                    "no channel {name}; create it with POST /api/v1/channels"
                ))
            })?;
        let mut doc = ChannelDoc::new(name.clone(), record.updated);
        doc.serial = record.serial;
        doc.kernels = self.store.rollouts(name).await?;
        Ok(doc)
    }

    /// [`Service::publish_upload`] of a bundle in memory (in-process callers, tests).
    pub async fn publish_bundle(
        &self,
        actor: &str,
        bytes: Bytes,
    ) -> Result<PublishReceipt, ServerError> {
        let body = axum::body::Body::from(bytes);
        let upload =
            crate::blobs::Upload::receive(body, &self.data_dir, u64::MAX, "no limit").await?;
        self.publish_upload(actor, upload).await
    }

    /// `POST /bundles`: verifies and stores level N+1 of a kernel, then re-signs.
    pub async fn publish_upload(
        &self,
        actor: &str,
        upload: crate::blobs::Upload,
    ) -> Result<PublishReceipt, ServerError> {
        self.refuse_if_mirror()?;
        let bundle = upload.bundle().await?;
        check_livepatch_module(&bundle)?;
        let manifest = bundle.manifest();
        let build_id = manifest.kernel.build_id.clone();
        let level = manifest.level;
        let _guard = self.lock_mutations().await?;
        let existing = self.store.levels_of(&build_id).await?;
        if let Some(first) = existing.first() {
            if first.kernel_release != manifest.kernel.release {
                return Err(ServerError::Unprocessable(format!(
                    "build-id {build_id} was published for kernel {}, this bundle says {}",
                    first.kernel_release, manifest.kernel.release
                )));
            }
        }
        let newest = existing.iter().map(|l| l.level.get()).max().unwrap_or(0);
        if let Some(same) = existing
            .iter()
            .find(|l| l.level == level && &l.sha256 == upload.sha256())
        {
            // The same bundle again. Once signed, there is nothing to do; before (a crash or
            // a failed signature after the database took it) it is a retry: sign it now.
            let target = bundle_target_name(&build_id, level);
            if self.served_target_is(&target, same.sha256.as_str())? {
                return Err(ServerError::Conflict(format!(
                    "level {level} of kernel {build_id} is already published and signed with \
                     these exact bytes (sha256 {}); nothing to do",
                    same.sha256
                )));
            }
            let detail = format!(
                "published level {level} of {} ({build_id}), sha256 {} (retry: signed now)",
                same.kernel_release, same.sha256
            );
            self.resign(actor, "publish", &detail).await?;
            return Ok(PublishReceipt {
                build_id,
                level,
                target,
            });
        }
        if level.get() != newest + 1 {
            return Err(ServerError::Conflict(format!(
                "kernel {build_id} has levels up to {newest}; the next publish must be level {}, \
                 this bundle is level {level} (rebuild it with --level {})",
                newest + 1,
                newest + 1
            )));
        }
        let length = upload.len();
        let (sha256, new_object) = self.blobs.put_upload(&upload).await?;
        let record = LevelRecord {
            build_id: build_id.clone(),
            level,
            kernel_release: manifest.kernel.release.clone(),
            upstream_version: manifest.kernel.upstream_version,
            sha256: sha256.clone(),
            length,
            manifest: manifest.clone(),
            published_at: unix_seconds(),
        };
        self.store.add_level(&record).await?;
        let detail = format!(
            "published level {level} of {} ({build_id}), sha256 {sha256}, fixes [{}]",
            manifest.kernel.release,
            manifest
                .fixes
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Err(e) = self.resign(actor, "publish", &detail).await {
            self.store.remove_level(&build_id, level).await?;
            if new_object {
                self.blobs.delete(sha256.as_str()).await?;
            }
            return Err(e);
        }
        Ok(PublishReceipt {
            target: bundle_target_name(&build_id, level),
            build_id,
            level,
        })
    }

    /// Every kernel build with published levels, by build id, each with its levels in order.
    pub async fn kernels(&self) -> Result<Vec<KernelSummary>, ServerError> {
        let reported: std::collections::BTreeSet<(BuildId, PatchLevel)> =
            self.store.reported_levels().await?.into_iter().collect();
        let mut kernels: BTreeMap<BuildId, KernelSummary> = BTreeMap::new();
        for level in self.store.levels().await? {
            let entry = kernels
                .entry(level.build_id.clone())
                .or_insert_with(|| KernelSummary {
                    build_id: level.build_id.clone(),
                    kernel_release: level.kernel_release.clone(),
                    upstream_version: level.upstream_version,
                    levels: Vec::new(),
                });
            entry.levels.push(LevelSummary {
                level: level.level,
                sha256: level.sha256.clone(),
                length: level.length,
                fixes: level.manifest.fixes.clone(),
                published_at: level.published_at,
                report: reported.contains(&(level.build_id.clone(), level.level)),
            });
        }
        Ok(kernels.into_values().collect())
    }

    /// The published level `level` of `build_id`, if there is one.
    pub async fn find_level(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<Option<LevelRecord>, ServerError> {
        Ok(self
            .store
            .levels_of(build_id)
            .await?
            .into_iter()
            .find(|l| l.level == level))
    }

    /// Whether an upgrade report is attached to level `level` of `build_id`.
    pub async fn has_report(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<bool, ServerError> {
        Ok(self
            .store
            .reported_levels()
            .await?
            .iter()
            .any(|(b, l)| b == build_id && *l == level))
    }

    /// The published level `level` of `build_id`, or a 404 that says how to find them.
    pub async fn level(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<LevelRecord, ServerError> {
        self.find_level(build_id, level).await?.ok_or_else(|| {
            ServerError::NotFound(format!(
                "kernel {build_id} has no published level {level}; GET /api/v1/kernels \
                     lists the levels (publish the bundle first, then attach its report)"
            ))
        })
    }

    /// `POST …/levels/{level}/report`: attaches the upgrade report `patchbay-build upgrade`
    /// wrote for a published level, replacing an earlier one. The report is not signed
    /// content (hosts never see it), so the targets role is not signed again; the change runs
    /// under the mutation lock like every other and is audited.
    pub async fn attach_report(
        &self,
        actor: &str,
        build_id: &BuildId,
        level: PatchLevel,
        bytes: &[u8],
    ) -> Result<(), ServerError> {
        self.refuse_if_mirror()?;
        if bytes.len() > patchbay_core::report::REPORT_MAX_BYTES {
            return Err(ServerError::TooLarge(format!(
                "the upgrade report is {} bytes, more than the {} a server accepts",
                bytes.len(),
                patchbay_core::report::REPORT_MAX_BYTES
            )));
        }
        let report = UpgradeReport::parse(bytes).map_err(|e| {
            ServerError::BadRequest(format!(
                "the body is not an upgrade report: {e} (send the JSON report \
                 `patchbay-build upgrade` wrote, unchanged)"
            ))
        })?;
        if report.build_id != *build_id || report.level != level {
            return Err(ServerError::Unprocessable(format!(
                "the report is for level {} of kernel {}, the path names level {level} of {build_id}; \
                 post it to /api/v1/kernels/{}/levels/{}/report",
                report.level, report.build_id, report.build_id, report.level
            )));
        }
        let _guard = self.lock_mutations().await?;
        let record = self.level(build_id, level).await?;
        if record.kernel_release != report.kernel {
            return Err(ServerError::Unprocessable(format!(
                "the report names kernel {}, level {level} of {build_id} was published for {}",
                report.kernel, record.kernel_release
            )));
        }
        let published = &record.manifest.module.sha256;
        if let Some(module) = &report.module {
            if module.sha256 != *published {
                return Err(ServerError::Unprocessable(format!(
                    "the report describes module {} with sha256 {}, level {level} of {build_id} \
                     holds a module with sha256 {published}: it is the report of another build",
                    module.name, module.sha256
                )));
            }
        }
        let replaced = self
            .store
            .put_report(build_id, level, &report, unix_seconds())
            .await?;
        let count = |status| report.with_status(status).count();
        let detail = format!(
            "attached the upgrade report of level {level} of {} ({build_id}): {} patched, {} \
             partial, {} not patchable, {} not applicable{}",
            record.kernel_release,
            count(CveStatus::Patched),
            count(CveStatus::Partial),
            count(CveStatus::NotPatchable),
            count(CveStatus::NotApplicable),
            if replaced {
                " (replaced an earlier one)"
            } else {
                ""
            }
        );
        self.store
            .audit(unix_seconds(), actor, "report", &detail, None)
            .await
    }

    /// The upgrade report attached to a level, or a 404 that says what is missing.
    pub async fn report(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<UpgradeReport, ServerError> {
        if let Some(report) = self.store.report(build_id, level).await? {
            return Ok(report);
        }
        self.level(build_id, level).await?;
        Err(ServerError::NotFound(format!(
            "level {level} of kernel {build_id} has no upgrade report; POST the one \
             `patchbay-build upgrade` wrote to /api/v1/kernels/{build_id}/levels/{level}/report"
        )))
    }

    /// Creates an empty channel and signs it into the targets; returns its document.
    /// [`ServerError::BadRequest`] for an invalid name, [`ServerError::Conflict`] when it
    /// exists; refused on a mirror.
    pub async fn create_channel(&self, actor: &str, name: &str) -> Result<ChannelDoc, ServerError> {
        self.refuse_if_mirror()?;
        let name: ChannelName = name
            .parse()
            .map_err(|e: patchbay_core::IdError| ServerError::BadRequest(e.to_string()))?;
        let _guard = self.lock_mutations().await?;
        self.store
            .add_channel(&name, &now_rfc3339(), unix_seconds())
            .await?;
        if let Err(e) = self
            .resign(actor, "channel-create", &format!("created channel {name}"))
            .await
        {
            self.store.remove_channel(&name).await?;
            return Err(e);
        }
        self.channel_doc(&name).await
    }

    async fn published_level(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<(), ServerError> {
        if self.find_level(build_id, level).await?.is_none() {
            return Err(ServerError::NotFound(format!(
                "level {level} of kernel {build_id} is not published; publish it first \
                 (GET /api/v1/kernels lists what is)"
            )));
        }
        Ok(())
    }

    /// Applies `change` to one kernel's rollout in a channel, then re-signs; undone if signing
    /// fails.
    async fn change_rollout(
        &self,
        actor: &str,
        action: &str,
        channel: &ChannelName,
        build_id: &BuildId,
        change: impl FnOnce(Option<&KernelRollout>) -> Result<KernelRollout, ServerError>,
    ) -> Result<ChannelDoc, ServerError> {
        self.refuse_if_mirror()?;
        let _guard = self.lock_mutations().await?;
        let before = self.channel_doc(channel).await?;
        let record = self
            .store
            .channels()
            .await?
            .into_iter()
            .find(|c| &c.name == channel)
            .ok_or_else(|| {
                ServerError::NotFound(format!(
                    "no channel {channel}; create it with POST /api/v1/channels"
                ))
            })?;
        let current = before.kernels.get(build_id);
        let next = change(current)?;
        self.store.set_rollout(channel, build_id, &next).await?;
        self.store.bump_channel(channel, &now_rfc3339()).await?;
        let detail = format!(
            "{action} {channel}: kernel {build_id} {} -> level {}{}{}",
            current.map_or("none".to_owned(), |c| format!("level {}", c.level)),
            next.level,
            if next.pinned { " (pinned)" } else { "" },
            if next.waves.is_empty() {
                String::new()
            } else {
                format!(" waves {:?}", next.waves)
            }
        );
        if let Err(e) = self.resign(actor, action, &detail).await {
            match current {
                Some(old) => self.store.set_rollout(channel, build_id, old).await?,
                None => self.store.remove_rollout(channel, build_id).await?,
            }
            self.store.restore_channel(&record).await?;
            return Err(e);
        }
        self.channel_doc(channel).await
    }

    /// Moves a channel's kernel up to the published `level`: served from `deploy_after_secs`
    /// on (at most one year), to everyone or in `waves`. Promoting the level already served
    /// re-plans its waves without taking it from hosts that have it. [`ServerError::Conflict`]
    /// when the rollout is pinned or `level` is below the served one (use `rollback`).
    pub async fn promote(
        &self,
        actor: &str,
        channel: &ChannelName,
        build_id: &BuildId,
        level: PatchLevel,
        deploy_after_secs: u64,
        waves: &[WaveRequest],
    ) -> Result<ChannelDoc, ServerError> {
        self.published_level(build_id, level).await?;
        let delay = i64::try_from(deploy_after_secs)
            .ok()
            .filter(|d| *d <= 366 * 86_400)
            .ok_or_else(|| {
                ServerError::BadRequest("deploy_after_secs must be at most one year".into())
            })?;
        let mut last_percent = 0;
        let effective_at = unix_seconds() + delay;
        let mut planned = Vec::new();
        for wave in waves {
            if wave.percent == 0 || wave.percent > 100 || wave.percent <= last_percent {
                return Err(ServerError::BadRequest(
                    "waves must have growing percentages between 1 and 100".into(),
                ));
            }
            let after = i64::try_from(wave.after_secs)
                .ok()
                .filter(|a| *a <= 366 * 86_400)
                .ok_or_else(|| {
                    ServerError::BadRequest("a wave's after_secs must be at most one year".into())
                })?;
            last_percent = wave.percent;
            planned.push(Wave {
                at: effective_at + after,
                percent: wave.percent,
            });
        }
        self.change_rollout(actor, "promote", channel, build_id, |current| {
            if let Some(c) = current {
                if c.pinned {
                    return Err(ServerError::Conflict(format!(
                        "channel {channel} is pinned at level {} for kernel {build_id}; unpin it \
                         first",
                        c.level
                    )));
                }
                if level < c.level {
                    return Err(ServerError::Conflict(format!(
                        "level {level} is below the channel's level {}; use rollback to go down",
                        c.level
                    )));
                }
            }
            let next = match current {
                Some(c) if c.level == level => {
                    return Ok(keep_served_hosts(c, unix_seconds(), effective_at, planned))
                }
                Some(c) => KernelRollout {
                    level,
                    previous: Some(c.level),
                    effective_at,
                    waves: planned,
                    pinned: false,
                },
                None => KernelRollout {
                    level,
                    previous: None,
                    effective_at,
                    waves: planned,
                    pinned: false,
                },
            };
            Ok(next)
        })
        .await
    }

    /// Pins a channel's kernel at `level` (the served level when `None`), at once and to
    /// every host; promotions are refused until [`Service::unpin`].
    pub async fn pin(
        &self,
        actor: &str,
        channel: &ChannelName,
        build_id: &BuildId,
        level: Option<PatchLevel>,
    ) -> Result<ChannelDoc, ServerError> {
        if let Some(level) = level {
            self.published_level(build_id, level).await?;
        }
        self.change_rollout(actor, "pin", channel, build_id, |current| {
            let level = match (level, current) {
                (Some(l), _) => l,
                (None, Some(c)) => c.level,
                (None, None) => {
                    return Err(ServerError::BadRequest(format!(
                        "channel {channel} serves no level of kernel {build_id}; give the level \
                         to pin"
                    )))
                }
            };
            Ok(KernelRollout {
                level,
                previous: None,
                effective_at: unix_seconds(),
                waves: Vec::new(),
                pinned: true,
            })
        })
        .await
    }

    /// Lifts a pin, keeping the level served; [`ServerError::NotFound`] without a rollout.
    pub async fn unpin(
        &self,
        actor: &str,
        channel: &ChannelName,
        build_id: &BuildId,
    ) -> Result<ChannelDoc, ServerError> {
        self.change_rollout(actor, "unpin", channel, build_id, |current| {
            let current = current.ok_or_else(|| {
                ServerError::NotFound(format!(
                    "channel {channel} has no rollout for kernel {build_id}"
                ))
            })?;
            Ok(KernelRollout {
                pinned: false,
                ..current.clone()
            })
        })
        .await
    }

    /// Serves a lower published `level` of a channel's kernel at once, to every host (a pin
    /// stays). [`ServerError::Conflict`] unless `level` is below the served one.
    pub async fn rollback(
        &self,
        actor: &str,
        channel: &ChannelName,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<ChannelDoc, ServerError> {
        self.published_level(build_id, level).await?;
        self.change_rollout(actor, "rollback", channel, build_id, |current| {
            let current = current.ok_or_else(|| {
                ServerError::NotFound(format!(
                    "channel {channel} serves no level of kernel {build_id}; nothing to roll back"
                ))
            })?;
            if level >= current.level {
                return Err(ServerError::Conflict(format!(
                    "rollback needs a level below the channel's level {}; use promote to go up",
                    current.level
                )));
            }
            Ok(KernelRollout {
                level,
                previous: None,
                effective_at: unix_seconds(),
                waves: Vec::new(),
                pinned: current.pinned,
            })
        })
        .await
    }

    /// The fingerprints a registration key carries: the served `root.json`'s SHA-256 and, when
    /// hosts pin the certificate (`tls.hosts_check = "pin"` over HTTPS), the certificate's.
    pub fn registration_pins(&self) -> Result<RegistrationPins, ServerError> {
        let root_sha256 = patchbay_core::Sha256::of(&self.tuf.root_bytes()?);
        let cert_sha256 = match &*self
            .served_certificate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(served) => served.clone(),
            None => {
                let tls = &self.config.tls;
                match (tls.protocol, tls.hosts_check) {
                    (ServedProtocol::Https, HostsCheckCertificate::Pin) => {
                        Some(tls.files(&self.data_dir).sha256()?)
                    }
                    _ => None,
                }
            }
        };
        Ok(RegistrationPins {
            root_sha256,
            cert_sha256,
        })
    }

    /// Tells the service which certificate `serve` answers with (`None`: none hosts pin, for
    /// plain HTTP or a CA-checked certificate), when it is not the one `config.toml` names.
    pub fn set_served_certificate(&self, pin: Option<patchbay_core::Sha256>) {
        *self
            .served_certificate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pin);
    }

    fn full_registration_key(
        &self,
        secret: RegistrationSecret,
    ) -> Result<RegistrationKey, ServerError> {
        Ok(RegistrationKey::Pinned {
            secret,
            pins: self.registration_pins()?,
        })
    }

    /// A new registration key for `channel`, stored only as the hash of its secret; returned
    /// whole (`pbreg2.<secret>.root-sha256=…[.cert-sha256=…]`, see
    /// [`patchbay_core::registration`]).
    pub async fn create_registration_key(
        &self,
        actor: &str,
        channel: &str,
    ) -> Result<String, ServerError> {
        let channel: ChannelName = channel
            .parse()
            .map_err(|e: patchbay_core::IdError| ServerError::BadRequest(e.to_string()))?;
        if !self
            .store
            .channels()
            .await?
            .iter()
            .any(|c| c.name == channel)
        {
            return Err(ServerError::NotFound(format!(
                "no channel {channel}; create it first"
            )));
        }
        let secret = random_registration_secret()?;
        // Made before storing: a key whose certificate cannot be read is never stored unseen.
        let key = self.full_registration_key(secret.clone())?.to_string();
        self.store
            .add_registration_key(&secret_hash(secret.expose()), &channel, unix_seconds())
            .await?;
        self.store
            .audit(
                unix_seconds(),
                actor,
                "registration-key",
                &format!("new registration key for channel {channel}"),
                None,
            )
            .await?;
        Ok(key)
    }

    /// Makes an API token with `role`, audited as `actor`'s `token-create`. Returns the token,
    /// shown once: the database keeps only its sha256.
    pub async fn create_token(
        &self,
        actor: &str,
        name: &str,
        role: Role,
    ) -> Result<String, ServerError> {
        let token = self.insert_token("pbtok", name, role).await?;
        self.store
            .audit(
                unix_seconds(),
                actor,
                "token-create",
                &format!("{role} token {name}"),
                None,
            )
            .await?;
        Ok(token)
    }

    /// A new token `<prefix>_…` stored as its sha256; not audited (`init` records itself).
    async fn insert_token(
        &self,
        prefix: &str,
        name: &str,
        role: Role,
    ) -> Result<String, ServerError> {
        let token = random_secret(prefix)?;
        self.store
            .add_token(&secret_hash(&token), name, role, unix_seconds())
            .await?;
        Ok(token)
    }

    /// Adds a dashboard user with `role` (the password kept as its Argon2id hash), audited as
    /// `actor`'s `user-add`.
    pub async fn add_user(
        &self,
        actor: &str,
        name: &str,
        role: Role,
        password: &str,
    ) -> Result<(), ServerError> {
        crate::auth::check_username(name)?;
        self.insert_user(name, role, password).await?;
        self.store
            .audit(
                unix_seconds(),
                actor,
                "user-add",
                &format!("{role} user {name}"),
                None,
            )
            .await
    }

    /// Stores a user; not audited (`init` records itself).
    async fn insert_user(&self, name: &str, role: Role, password: &str) -> Result<(), ServerError> {
        let user = UserRecord {
            name: name.to_owned(),
            password_hash: crate::auth::hash_password(password)?,
            role,
            state: crate::store::UserState::Enabled,
        };
        self.store.add_user(&user, unix_seconds()).await
    }

    /// The API caller a bearer token belongs to: `token:<name>` (the audit actor) and its
    /// role; 401 for a token the server did not make.
    pub async fn caller_for_token(&self, token: &str) -> Result<Caller, ServerError> {
        match self.store.token(&secret_hash(token)).await? {
            Some((name, role)) => Ok(Caller {
                actor: format!("token:{name}"),
                role,
            }),
            None => Err(ServerError::Unauthorized(
                "unknown API token (patchbay-server token create makes one)".into(),
            )),
        }
    }

    /// Checks a dashboard login and opens a session, audited as `user:<name>` `login`.
    /// Guessing is bounded by the login throttle (429 while the user from this address, or
    /// the address, is locked out; too long a name or password is 400, not counted); `None`
    /// is an unknown user or a wrong password, counted as a failure.
    pub async fn login(
        &self,
        name: &str,
        password: String,
        address: Option<std::net::IpAddr>,
    ) -> Result<Option<OpenedSession>, ServerError> {
        crate::auth::check_login_fields(name, &password)?;
        let attempt = self.login_throttle.admit(name, address)?;
        let user = self.store.user(name).await?;
        let valid = self
            .login_throttle
            .verify(
                &attempt,
                password,
                user.as_ref().map(|u| u.password_hash.clone()),
            )
            .await?;
        let Some(user) = user.filter(|_| valid) else {
            self.login_throttle.failed(&attempt);
            return Ok(None);
        };
        if user.state == crate::store::UserState::Disabled {
            // Answered as a wrong password, so the form does not tell which names exist.
            // Logged and audited for the operator; an audit failure changes no answer.
            let from = address.map_or("an unknown address".to_owned(), |a| a.to_string());
            let detail = format!(
                "refused the dashboard login of disabled user {} from {from}",
                user.name
            );
            eprintln!("patchbay-server: {detail}");
            let _ = self
                .store
                .audit(
                    unix_seconds(),
                    &format!("user:{}", user.name),
                    "login-refused",
                    &detail,
                    None,
                )
                .await;
            self.login_throttle.failed(&attempt);
            return Ok(None);
        }
        self.login_throttle.succeeded(&attempt);
        let cookie = random_secret("s")?;
        let max_age_secs = i64::from(self.config.ui.session_hours) * 3600;
        let session = SessionRecord {
            id_hash: secret_hash(&cookie),
            user: user.name.clone(),
            role: user.role,
            csrf: random_secret("c")?,
            expires_at: unix_seconds() + max_age_secs,
        };
        self.store.add_session(&session).await?;
        // The session exists already: a login that worked is not turned away because its
        // audit entry could not be written.
        let _ = self
            .store
            .audit(
                unix_seconds(),
                &format!("user:{}", user.name),
                "login",
                "dashboard login",
                None,
            )
            .await;
        Ok(Some(OpenedSession {
            cookie,
            max_age_secs,
        }))
    }

    /// The live dashboard session a session cookie belongs to; `None` for an unknown or
    /// expired one.
    pub async fn session(&self, cookie: &str) -> Result<Option<SessionRecord>, ServerError> {
        Ok(self
            .store
            .session(&secret_hash(cookie))
            .await?
            .filter(|session| session.expires_at > unix_seconds()))
    }

    /// Ends a dashboard session (logout).
    pub async fn end_session(&self, session: &SessionRecord) -> Result<(), ServerError> {
        self.store.delete_session(&session.id_hash).await
    }

    /// Revokes a host: it and its check-in history are deleted, its token stops working at
    /// once (it must register again with a registration key). Audited.
    pub async fn revoke_host(&self, actor: &str, id: &str) -> Result<(), ServerError> {
        let host = self.host(id).await?;
        if !self.store.remove_host(&host.id).await? {
            return Err(ServerError::NotFound(format!(
                "no host {id:?}; GET /api/v1/hosts lists them"
            )));
        }
        self.store
            .audit(
                unix_seconds(),
                actor,
                "host-revoke",
                &format!(
                    "revoked host {} ({}, channel {})",
                    host.id, host.hostname, host.channel
                ),
                None,
            )
            .await
    }

    /// An API token by id (the SHA-256 of the token, as `GET /api/v1/tokens` lists).
    pub async fn token_by_id(&self, id: &str) -> Result<TokenRecord, ServerError> {
        self.tokens()
            .await?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| {
                ServerError::NotFound(format!(
                    "no API token {id:?}; GET /api/v1/tokens lists them"
                ))
            })
    }

    /// A registration key by id (its SHA-256, as `GET /api/v1/registration-keys` lists).
    pub async fn registration_key_by_id(
        &self,
        id: &str,
    ) -> Result<RegistrationKeyRecord, ServerError> {
        self.registration_keys()
            .await?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| {
                ServerError::NotFound(format!(
                    "no registration key {id:?}; GET /api/v1/registration-keys lists them"
                ))
            })
    }

    /// Revokes an API token by id (the SHA-256 of the token, as `GET /api/v1/tokens` lists).
    pub async fn revoke_token(&self, actor: &str, id: &str) -> Result<(), ServerError> {
        let token = self.token_by_id(id).await?;
        self.store.remove_token(&token.id).await?;
        self.store
            .audit(
                unix_seconds(),
                actor,
                "token-revoke",
                &format!("revoked {} token {}", token.role, token.name),
                None,
            )
            .await
    }

    /// Revokes a registration key by id (its SHA-256, as `GET /api/v1/registration-keys`
    /// lists); hosts registered with it stay registered.
    pub async fn revoke_registration_key(&self, actor: &str, id: &str) -> Result<(), ServerError> {
        let key = self.registration_key_by_id(id).await?;
        self.store.remove_registration_key(&key.id).await?;
        self.store
            .audit(
                unix_seconds(),
                actor,
                "registration-key-revoke",
                &format!(
                    "revoked registration key {} for channel {}",
                    short_id(&key.id),
                    key.channel
                ),
                None,
            )
            .await
    }

    /// Registers a host with a registration key: returns its id, its API token (shown once),
    /// its channel and seed, and the trusted root. [`ServerError::Unauthorized`] for an
    /// unknown key.
    pub async fn register(&self, request: RegisterRequest) -> Result<RegisterReply, ServerError> {
        // The secret is what agents send; a whole key (format 2) is taken for its secret.
        let secret = request
            .key
            .parse::<RegistrationKey>()
            .map(|key| key.secret().expose().to_owned())
            .unwrap_or_else(|_| request.key.clone());
        let channel = self
            .store
            .registration_key_channel(&secret_hash(&secret))
            .await?
            .ok_or_else(|| {
                ServerError::Unauthorized(
                    "unknown registration key; ask the server administrator for a key \
                     (POST /api/v1/registration-keys)"
                        .into(),
                )
            })?;
        text_field("hostname", &request.hostname, 253)?;
        text_field("agent_version", &request.agent_version, 64)?;
        let host_token = random_secret("pbhost")?;
        let seed: HostSeed = random_hex(16)?
            .parse()
            .map_err(|e: patchbay_core::IdError| ServerError::Tuf(e.to_string()))?;
        let host = HostRecord {
            id: random_hex(8)?,
            token_hash: secret_hash(&host_token),
            hostname: request.hostname,
            channel: channel.clone(),
            seed: seed.clone(),
            kernel_release: request.kernel_release,
            upstream_version: request.upstream_version,
            build_id: request.build_id,
            active_level: None,
            state: HostState::Unpatched,
            last_error: None,
            agent_version: request.agent_version,
            registered_at: unix_seconds(),
            last_checkin: unix_seconds(),
            clock_warning: None,
        };
        self.store.add_host(&host).await?;
        let root = serde_json::from_slice(&self.tuf.root_bytes()?)
            .map_err(|e| ServerError::Tuf(format!("root.json: {e}")))?;
        Ok(RegisterReply {
            host_id: host.id,
            host_token,
            channel,
            seed,
            root,
        })
    }

    /// The host a host API token belongs to; [`ServerError::Unauthorized`] for an unknown one.
    pub(crate) async fn host_for_token(&self, token: &str) -> Result<HostRecord, ServerError> {
        self.store
            .host_by_token(&secret_hash(token))
            .await?
            .ok_or_else(|| {
                ServerError::Unauthorized(
                    "unknown host token; register the host again (patchbay register)".into(),
                )
            })
    }

    /// Records a check-in; replies with the host's channel and, when the CVE data knows its
    /// release, its effective release (`patchbay uname`).
    pub async fn checkin(
        &self,
        host: &HostRecord,
        request: CheckInRequest,
    ) -> Result<CheckInReply, ServerError> {
        // Release, build-id, level, state and upstream version were parsed with the request.
        if let Some(error) = &request.last_error {
            if error.len() > 4096 {
                return Err(ServerError::BadRequest(
                    "last_error is longer than 4096 bytes".into(),
                ));
            }
        }
        text_field("agent_version", &request.agent_version, 64)?;
        if let Some(clock) = &request.clock_warning {
            text_field(
                "clock_warning.detail",
                &clock.detail,
                ClockWarning::DETAIL_MAX,
            )?;
        }
        let effective_version = if request.active_level.is_some() {
            let levels = self.store.levels_of(&request.build_id).await?;
            let mut now = host.clone();
            now.active_level = request.active_level;
            now.build_id = request.build_id.clone();
            now.upstream_version = request.upstream_version.or(now.upstream_version);
            crate::cve::effective_version(&self.cve_db(), &now, &levels)
        } else {
            request.upstream_version.or(host.upstream_version)
        };
        self.store
            .record_checkin(
                &host.id,
                &CheckIn {
                    report: request,
                    at: unix_seconds(),
                },
            )
            .await?;
        Ok(CheckInReply {
            channel: host.channel.clone(),
            effective_version,
        })
    }

    /// Deletes check-in history older than `retention.checkin_days` (`serve` runs this with
    /// its periodic tasks); hosts keep their last reported state. Returns how many went.
    pub async fn prune_history(&self) -> Result<u64, ServerError> {
        let keep = i64::from(self.config.retention.checkin_days) * 86_400;
        self.store.prune_checkins(unix_seconds() - keep).await
    }

    /// The hosts matching `filter`, by hostname then id.
    pub async fn hosts(&self, filter: &HostFilter) -> Result<Vec<HostRecord>, ServerError> {
        self.store.hosts(filter).await
    }

    /// Signs every online role again before half of its lifetime is gone and reports the
    /// offline ones that expire soon (runs every minute while serving, and at start). A mirror
    /// signs nothing: its metadata comes from the next `import`.
    pub async fn refresh_metadata(&self) -> Result<RefreshReport, ServerError> {
        let _guard = self.lock_mutations().await?;
        if self.is_mirror() {
            return Ok(RefreshReport {
                resigned: Vec::new(),
                warnings: self.metadata_warnings().await?,
            });
        }
        self.tuf.refresh().await
    }

    /// Root keys stored beside the data ([`TufRepo::online_root_keys`]).
    pub fn online_root_keys(&self) -> Vec<std::path::PathBuf> {
        self.tuf.online_root_keys()
    }

    /// Which keys of each role sit in the keys directory ([`crate::tuf::TufRepo::keys_on_disk`]).
    pub async fn keys_on_disk(&self) -> Result<Vec<crate::tuf::KeysOnDisk>, ServerError> {
        self.tuf.keys_on_disk().await
    }

    /// When each served role expires, and whether this server can renew it alone.
    pub async fn metadata_expiry(&self) -> Result<Vec<RoleExpiry>, ServerError> {
        let mut expiries = self.tuf.expiries().await?;
        if self.is_mirror() {
            // A mirror renews nothing itself: every role is as good as offline.
            for e in &mut expiries {
                e.keys = KeyPlace::Mirror;
            }
        }
        Ok(expiries)
    }

    /// The warnings for roles that expire soon and that this server cannot renew alone.
    pub async fn metadata_warnings(&self) -> Result<Vec<String>, ServerError> {
        let now = jiff::Timestamp::now();
        Ok(self
            .metadata_expiry()
            .await?
            .iter()
            .filter_map(|e| e.warning(now))
            .collect())
    }

    /// The versions of the served chain (`None` before `init` signed one).
    pub fn metadata_versions(&self) -> Result<Option<crate::tuf::ChainVersions>, ServerError> {
        self.tuf.versions()
    }

    /// Test support, for fault injection only: signs a new `timestamp.json` that expires
    /// `lifetime_secs` from now (negative: already expired), which no real path does. The
    /// agent's tests need a validly signed but expired timestamp to show that a frozen
    /// repository is refused; nothing else can make one without the timestamp key.
    #[doc(hidden)]
    pub async fn resign_timestamp_for_tests(&self, lifetime_secs: i64) -> Result<(), ServerError> {
        let _guard = self.lock_mutations().await?;
        self.tuf.resign_timestamp_with_lifetime(lifetime_secs).await
    }

    /// Signs a new root (fresh expiry; with `rotate`, a new key for that role) with the root
    /// keys on this server and `root_keys`. Audited.
    pub async fn resign_root(
        &self,
        root_keys: &[PathBuf],
        rotate: Option<RoleName>,
    ) -> Result<u64, ServerError> {
        self.refuse_if_mirror()?;
        let _guard = self.lock_mutations().await?;
        if rotate == Some(RoleName::Targets) && !self.tuf.has_targets_key() {
            return Err(ServerError::BadRequest(
                "the targets key is kept offline; rotating it here would put a new targets key \
                 on this server. Rotate it on the offline machine's copy of the keys instead"
                    .into(),
            ));
        }
        let version = self.tuf.resign_root(root_keys, rotate).await?;
        let detail = match rotate {
            Some(role) => format!("root version {version}: new {role} key"),
            None => format!("root version {version}: re-signed with a new expiry"),
        };
        self.store
            .audit(unix_seconds(), "cli", "root", &detail, None)
            .await?;
        Ok(version)
    }

    /// Replaces the root keys ([`crate::tuf::TufRepo::rotate_root_keys`]): root N+1 signed by
    /// the old root keys (here and `old_root_keys`) and the new ones. Audited.
    pub async fn rotate_root_keys(
        &self,
        old_root_keys: &[PathBuf],
        new: &crate::tuf::NewRootKeys,
    ) -> Result<crate::tuf::RootRotation, ServerError> {
        self.refuse_if_mirror()?;
        let _guard = self.lock_mutations().await?;
        let rotation = self.tuf.rotate_root_keys(old_root_keys, new).await?;
        let detail = format!(
            "root version {}: new root keys {} (threshold {})",
            rotation.version,
            rotation.key_ids.join(", "),
            new.threshold()
        );
        self.store
            .audit(unix_seconds(), "cli", "root", &detail, None)
            .await?;
        Ok(rotation)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn check_in_history_older_than_the_retention_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut config = ServerConfig::default();
        config.retention.checkin_days = 30;
        // No certificate needed for this (registration keys then carry the root's hash only).
        config.tls.protocol = crate::config::ServedProtocol::InsecureHttp;
        let report = Service::init(&data, None, config).await.unwrap();
        let service = Service::open(&data).await.unwrap();
        let reply = service
            .register(RegisterRequest {
                key: report.registration_key,
                hostname: "web-1".into(),
                kernel_release: "6.1.0-56-amd64".parse().unwrap(),
                upstream_version: None,
                build_id: "0123456789abcdef0123456789abcdef01234567".parse().unwrap(),
                agent_version: "0.1.0".into(),
            })
            .await
            .unwrap();
        let host = service.host(&reply.host_id).await.unwrap();
        for days_ago in [400, 31, 29, 0] {
            let checkin = CheckIn {
                report: CheckInRequest {
                    kernel_release: host.kernel_release.clone(),
                    upstream_version: None,
                    build_id: host.build_id.clone(),
                    active_level: None,
                    state: HostState::Unpatched,
                    last_error: None,
                    agent_version: "0.1.0".into(),
                    clock_warning: None,
                },
                at: unix_seconds() - days_ago * 86_400,
            };
            service
                .store
                .record_checkin(&host.id, &checkin)
                .await
                .unwrap();
        }
        assert_eq!(service.store.checkin_count().await.unwrap(), 4);
        assert_eq!(service.prune_history().await.unwrap(), 2);
        // The history is shorter; the count of check-ins received (a Prometheus counter)
        // does not go down.
        assert_eq!(service.store.checkin_count().await.unwrap(), 4);
        // The host itself and its last state stay.
        assert_eq!(service.host(&host.id).await.unwrap().hostname, "web-1");
    }
}
