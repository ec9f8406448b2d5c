//! The server's CVE database (`cve/db.json` in the data dir, written by `cve sync`, with the
//! ranges of every stable series it covers: 6.1, 6.12; `init` installs the snapshot compiled
//! into the binary) and what it says about hosts: base exposure of the host's kernel release in
//! its own series, live exposure (minus the fixes of its active level), and the effective
//! release a level brings. A host whose series the data does not cover — or a server without
//! data — has no exposure figures (unknown, never 0); one newer than the data carries the
//! data's notice. How old the data is ([`CveDataStatus`], against `cve.max_age_days`) travels
//! with every answer about exposure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use patchbay_core::protocol::{HostState, LevelOffer};
use patchbay_core::{KernelSeries, UpstreamVersion};
use patchbay_exposure::{
    exposure, CveDatabase, DataCoverage, DataState, Day, Exposure, Policy, Provenance,
};
use serde::Serialize;

use crate::error::ServerError;
use crate::store::{HostRecord, LevelRecord};

/// Where `cve sync` writes the database: `<data_dir>/cve/db.json`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cve/db.json")
}

fn cve_err(e: patchbay_exposure::CveError) -> ServerError {
    ServerError::Unprocessable(e.to_string())
}

/// Loads the stored database; an empty one when `cve sync` never ran.
pub fn load(data_dir: &Path) -> Result<CveDatabase, ServerError> {
    let path = db_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => CveDatabase::from_json(&bytes).map_err(cve_err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CveDatabase::default()),
        Err(source) => Err(ServerError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Where `cve sync` reads from.
#[derive(Debug, Clone)]
pub enum CveSource {
    /// The kernel CNA snapshot compiled into this binary (what `init` installs).
    Bundled,
    /// A checkout of the kernel CNA's vulns repository, optionally with a CISA KEV feed.
    Vulns {
        /// The vulns checkout (or a directory of its records).
        path: PathBuf,
        /// A `known_exploited_vulnerabilities.json` to mark KEV entries from; `None`: no KEV.
        kev: Option<PathBuf>,
    },
    /// A snapshot directory in the bundled format.
    Snapshot(PathBuf),
}

/// What `cve sync` stored, per stable series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedSeries {
    /// The series, e.g. `6.12`.
    pub series: KernelSeries,
    /// How many CVEs affect some release of it.
    pub cves: usize,
    /// The newest release of it the data names as a fix; exposure of newer releases carries a
    /// notice.
    pub data_through: Option<UpstreamVersion>,
}

/// What `cve sync` stored: the number of CVEs and, per series, what the data says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSummary {
    /// CVEs in the database (a CVE of several series counts once).
    pub cves: usize,
    /// The covered series, oldest first.
    pub series: Vec<SyncedSeries>,
}

impl std::fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} CVEs", self.cves)?;
        for s in &self.series {
            write!(
                f,
                "; {}.y: {} CVEs, fixes known up to {}",
                s.series,
                s.cves,
                s.data_through.map_or("none".into(), |v| v.to_string())
            )?;
        }
        Ok(())
    }
}

/// Per covered series of `db`: how many CVEs affect it and how far its fixes reach.
pub fn summary(db: &CveDatabase) -> SyncSummary {
    SyncSummary {
        cves: db.len(),
        series: db
            .covered_series()
            .into_iter()
            .map(|series| SyncedSeries {
                series,
                cves: db
                    .records
                    .values()
                    .filter(|r| r.ranges_in(series).next().is_some())
                    .count(),
                data_through: db.data_through(series),
            })
            .collect(),
    }
}

/// Ingests `source` (every series of the snapshot's table: 6.1 and 6.12) and stores it
/// atomically with where it came from and when; returns what it stored per series.
pub fn sync(data_dir: &Path, source: &CveSource) -> Result<SyncSummary, ServerError> {
    let mut db = match source {
        CveSource::Bundled => patchbay_exposure::snapshot::embedded().map_err(cve_err)?,
        CveSource::Vulns { path, kev } => {
            let series: Vec<KernelSeries> = patchbay_exposure::snapshot::series().collect();
            let mut db = patchbay_exposure::vulns::sync_series(path, &series).map_err(cve_err)?;
            if let Some(kev) = kev {
                let bytes = std::fs::read(kev).map_err(|source| ServerError::Io {
                    path: kev.display().to_string(),
                    source,
                })?;
                patchbay_exposure::snapshot::apply_kev(&mut db, &bytes).map_err(cve_err)?;
            }
            db
        }
        CveSource::Snapshot(dir) => patchbay_exposure::snapshot::load_all(dir).map_err(cve_err)?,
    };
    db.provenance = Some(Provenance {
        source: match source {
            CveSource::Bundled => format!(
                "the kernel CNA snapshot bundled with patchbay-server {}",
                env!("CARGO_PKG_VERSION")
            ),
            CveSource::Vulns { path, .. } => format!("vulns checkout {}", path.display()),
            CveSource::Snapshot(dir) => format!("snapshot directory {}", dir.display()),
        },
        synced_at: patchbay_core::clock::now_rfc3339(),
    });
    let path = db_path(data_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    patchbay_core::fsutil::write_atomic(&path, &db.to_json().map_err(cve_err)?).map_err(
        |source| ServerError::Io {
            path: path.display().to_string(),
            source,
        },
    )?;
    Ok(summary(&db))
}

/// Installs the snapshot compiled into this binary when the data dir has no CVE database (a
/// data dir `init`ialised by an older version, or one whose database was removed); returns
/// what it stored, `None` when there was a database already (it is never replaced: an older
/// synced database is reported as outdated instead).
pub fn install_bundled_if_missing(data_dir: &Path) -> Result<Option<SyncSummary>, ServerError> {
    if db_path(data_dir).exists() {
        return Ok(None);
    }
    sync(data_dir, &CveSource::Bundled).map(Some)
}

/// Whether `cve/db.json` could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbFile {
    /// Read and parsed.
    Present,
    /// There is no file: neither `init` (of this version) nor `cve sync` wrote one.
    Missing,
    /// It exists but cannot be read or parsed (the reason).
    Unreadable(String),
}

/// The CVE database as the server read it, with what is known of its age.
#[derive(Debug, Clone)]
pub struct StoredDb {
    /// The records (empty when the file is missing or unreadable).
    pub db: Arc<CveDatabase>,
    /// Whether the file could be read.
    pub file: DbFile,
    /// The newest CVE publication day per covered series ([`CveDatabase::newest_published_in`]).
    pub dates: BTreeMap<KernelSeries, Day>,
    /// When it was stored: its provenance's time, else the file's modification time.
    pub synced_at: Option<String>,
}

/// Reads `cve/db.json`; a missing or unreadable file is a state of the result, not an error,
/// so the server keeps serving patches and says everywhere that exposure is unknown.
pub fn read_stored(data_dir: &Path) -> StoredDb {
    let path = db_path(data_dir);
    let (db, file) = match std::fs::read(&path) {
        Ok(bytes) => match CveDatabase::from_json(&bytes) {
            Ok(db) => (db, DbFile::Present),
            Err(e) => (
                CveDatabase::default(),
                DbFile::Unreadable(format!("{}: {e}", path.display())),
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (CveDatabase::default(), DbFile::Missing)
        }
        Err(e) => (
            CveDatabase::default(),
            DbFile::Unreadable(format!("{}: {e}", path.display())),
        ),
    };
    let dates = db
        .covered_series()
        .into_iter()
        .filter_map(|s| db.newest_published_in(s).map(|d| (s, d)))
        .collect();
    let synced_at = db
        .provenance
        .as_ref()
        .map(|p| p.synced_at.clone())
        .or_else(|| {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            let secs = modified
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok())?;
            Some(patchbay_core::clock::rfc3339(secs))
        });
    StoredDb {
        db: Arc::new(db),
        file,
        dates,
        synced_at,
    }
}

/// How current the CVE data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    /// Its newest CVE is at most `cve.max_age_days` old.
    Current,
    /// Older than that (or of unknown age): CVEs published since are not counted.
    Outdated,
    /// No data (no file, an unreadable one, or no CVE in it): every exposure is unknown.
    Missing,
}

impl Freshness {
    /// The serialized name: `current`, `outdated`, `missing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Freshness::Current => "current",
            Freshness::Outdated => "outdated",
            Freshness::Missing => "missing",
        }
    }
}

/// How far one covered series' data reaches in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeriesDate {
    /// The series, e.g. `6.1`.
    pub series: String,
    /// The newest publication day of a CVE of the series, `2026-08-21`.
    pub data_date: String,
    /// Seconds from the start of that day (UTC) to now.
    pub age_secs: i64,
}

/// What the server's CVE data is and how old (`cve_data` in the API's exposure answers and
/// the compliance report; the dashboard's banner and date line; `/metrics`; `doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CveDataStatus {
    /// `current`, `outdated` or `missing`.
    pub state: Freshness,
    /// The data's date: the newest CVE publication day of the series whose data is oldest
    /// (`2026-08-21`); `None` without data or without publication days.
    pub data_date: Option<String>,
    /// Whole days from `data_date` to today.
    pub age_days: Option<i64>,
    /// The configured limit (`cve.max_age_days`).
    pub max_age_days: u32,
    /// When the data was stored (RFC 3339 UTC).
    pub synced_at: Option<String>,
    /// What it was read from, e.g. `the kernel CNA snapshot bundled with patchbay-server 0.1.0`.
    pub source: Option<String>,
    /// Per covered series, its date.
    pub series: Vec<SeriesDate>,
    /// For people, when the state is not `current`: what is wrong and what to run.
    pub warning: Option<String>,
}

/// The start of `day` (UTC) in Unix seconds.
fn day_start(day: Day) -> i64 {
    day.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_second())
        .unwrap_or(0)
}

/// How current `stored` is at Unix time `now` under a limit of `max_age_days`.
pub fn data_status(stored: &StoredDb, max_age_days: u32, now: i64) -> CveDataStatus {
    const SYNC: &str = "run `patchbay-server cve sync` with a checkout of the kernel CNA's vulns \
                        repository (docs/exposure.md)";
    let series: Vec<SeriesDate> = stored
        .dates
        .iter()
        .map(|(s, d)| SeriesDate {
            series: s.to_string(),
            data_date: d.to_string(),
            age_secs: now - day_start(*d),
        })
        .collect();
    // The data is as old as its oldest series.
    let oldest = stored.dates.values().min().copied();
    let age_days = oldest.map(|d| (now - day_start(d)).div_euclid(86_400));
    let missing = match &stored.file {
        DbFile::Missing => Some(format!(
            "no CVE data: cve/db.json does not exist, so the exposure of every host is \
             unknown. `serve` installs the snapshot bundled with this version when it starts \
             (`patchbay-server cve sync --bundled` does it now); for current data {SYNC}"
        )),
        DbFile::Unreadable(reason) => Some(format!(
            "the CVE data cannot be read ({reason}), so the exposure of every host is unknown; \
             {SYNC}"
        )),
        DbFile::Present if stored.db.is_empty() => Some(format!(
            "the CVE database holds no CVE, so the exposure of every host is unknown; {SYNC}"
        )),
        DbFile::Present => None,
    };
    let (state, warning) = match (missing, oldest, age_days) {
        (Some(w), _, _) => (Freshness::Missing, Some(w)),
        (None, Some(day), Some(age)) if age > i64::from(max_age_days) => (
            Freshness::Outdated,
            Some(format!(
                "the CVE data is {age} days old (newest CVE published {day}; the limit is \
                 cve.max_age_days = {max_age_days}): CVEs published since are not counted, so \
                 the exposure shown is too low; {SYNC}"
            )),
        ),
        (None, Some(_), Some(_)) => (Freshness::Current, None),
        (None, _, _) => (
            Freshness::Outdated,
            Some(format!(
                "the CVE data names no publication day, so its age is unknown; {SYNC}"
            )),
        ),
    };
    CveDataStatus {
        state,
        data_date: oldest.map(|d| d.to_string()),
        age_days,
        max_age_days,
        synced_at: stored.synced_at.clone(),
        source: stored.db.provenance.as_ref().map(|p| p.source.clone()),
        series,
        warning,
    }
}

impl CveDataStatus {
    /// One line for people: `CVE data of 2026-08-21 (108 days old), synced 2026-12-07T16:10:00Z
    /// from the kernel CNA snapshot bundled with patchbay-server 0.1.0`, or `no CVE data`.
    pub fn describe(&self) -> String {
        let (Some(date), Freshness::Current | Freshness::Outdated) = (&self.data_date, self.state)
        else {
            return match self.state {
                Freshness::Missing => "no CVE data: exposure unknown".to_owned(),
                _ => "CVE data of unknown date".to_owned(),
            };
        };
        let mut text = format!("CVE data of {date}");
        if let Some(age) = self.age_days {
            text.push_str(&format!(" ({age} days old)"));
        }
        if let Some(synced) = &self.synced_at {
            text.push_str(&format!(", synced {synced}"));
        }
        if let Some(source) = &self.source {
            text.push_str(&format!(" from {source}"));
        }
        text
    }
}

/// An answer about exposure with the CVE data's status beside it: the answer's own fields,
/// and `cve_data` (the API's `GET /hosts/{id}/exposure`, `GET /cve/exposure/{version}`).
#[derive(Debug, Clone, Serialize)]
pub struct WithDataStatus<T> {
    /// The answer.
    #[serde(flatten)]
    pub answer: T,
    /// What the CVE data is and how old.
    pub cve_data: CveDataStatus,
}

/// Per series — every series the bundled snapshot knows and every series a host runs —
/// whether the CVE data lacks it (`true`: the exposure of that series' hosts is unknown).
pub fn series_missing(
    db: &CveDatabase,
    hosts: &[HostRecord],
    levels: &[LevelRecord],
) -> BTreeMap<KernelSeries, bool> {
    patchbay_exposure::snapshot::series()
        .chain(
            hosts
                .iter()
                .filter_map(|h| host_upstream(h, levels))
                .map(|v| KernelSeries::of(&v)),
        )
        .map(|s| (s, !db.covers(s)))
        .collect()
}

/// Today's date in UTC: the default evaluation day of exposure.
pub fn today() -> Day {
    jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::UTC)
        .date()
}

/// Parses an upstream release such as `6.1.192` or `6.12.95`; [`ServerError::BadRequest`]
/// otherwise.
pub fn parse_version(text: &str) -> Result<UpstreamVersion, ServerError> {
    text.parse()
        .map_err(|e: patchbay_core::IdError| ServerError::BadRequest(e.to_string()))
}

/// A host's exposure: its kernel's, and what remains with its live patch (the wire type of
/// `GET /api/v1/hosts/{id}/exposure`).
pub type HostExposure = patchbay_core::protocol::HostExposure<Exposure>;

/// The upstream release of a host: what it reported, else what its kernel's published levels
/// say.
pub fn host_upstream(host: &HostRecord, levels: &[LevelRecord]) -> Option<UpstreamVersion> {
    host.upstream_version.or_else(|| {
        levels
            .iter()
            .find(|l| l.build_id == host.build_id)
            .map(|l| l.upstream_version)
    })
}

/// The CVE ids the host's active level fixes; empty without a live patch, or when the level
/// is not among `levels`.
pub(crate) fn level_fixes(host: &HostRecord, levels: &[LevelRecord]) -> Vec<String> {
    let Some(active) = host.active_level else {
        return Vec::new();
    };
    levels
        .iter()
        .find(|l| l.build_id == host.build_id && l.level == active)
        .map(|l| {
            l.manifest
                .fixes
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What the CVE data knows of a host's series (`None`: the host's upstream release is
/// unknown).
pub fn host_coverage(
    db: &CveDatabase,
    host: &HostRecord,
    levels: &[LevelRecord],
) -> Option<DataCoverage> {
    host_upstream(host, levels).map(|v| DataCoverage::of(db, &v))
}

/// A host's base and live exposure on day `at` (in its release's series), its effective
/// release and the CVEs each newer level of its kernel would close. Without a known upstream
/// release, or without CVE data for its series, there is no exposure (`base`, `live` empty:
/// unknown, not 0); when the host's release is newer than the data, both carry the data's
/// notice (`data.notice`).
pub(crate) fn host_exposure(
    db: &CveDatabase,
    host: &HostRecord,
    levels: &[LevelRecord],
    at: Day,
    policy: Policy,
) -> HostExposure {
    let upstream = host_upstream(host, levels);
    let version = upstream.filter(|v| db.covers(KernelSeries::of(v)));
    let fixes = level_fixes(host, levels);
    let fixed: BTreeSet<String> = fixes.iter().cloned().collect();
    let live = version.map(|v| exposure(db, v, at, policy, &fixed));
    let open: BTreeSet<&str> = live
        .iter()
        .flat_map(|l| l.list.iter().map(|c| c.id.as_str()))
        .collect();
    let active = host.active_level.map_or(0, |l| l.get());
    let upgrades = levels
        .iter()
        .filter(|l| l.build_id == host.build_id && l.level.get() > active)
        .map(|l| LevelOffer {
            level: l.level.get(),
            closes: l
                .manifest
                .fixes
                .iter()
                .map(|c| c.as_str())
                .filter(|c| open.contains(c))
                .map(str::to_owned)
                .collect(),
        })
        .collect();
    HostExposure {
        upstream_version: upstream,
        effective_version: version.map(|v| db.effective_version(v, &fixed)),
        base: version.map(|v| exposure(db, v, at, policy, &BTreeSet::new())),
        live,
        fixes,
        upgrades,
    }
}

/// One host's line in the compliance report.
#[derive(Debug, Clone, Serialize)]
pub struct ComplianceRow {
    /// The host id.
    pub host_id: String,
    /// The hostname it registered with.
    pub hostname: String,
    /// The channel it follows.
    pub channel: String,
    /// Its kernel's `uname -r`, e.g. `6.1.0-18-amd64`.
    pub kernel_release: String,
    /// The upstream release it runs (`6.1.76`); `None` when unknown.
    pub upstream_version: Option<String>,
    /// Its stable series (`6.1`, `6.12`); `None` when the release is unknown.
    pub series: Option<String>,
    /// What the CVE data knows of that series: `complete`, `stale` (the release is newer than
    /// the newest fix the data names: counts may be too high), `no_data` (counts unknown);
    /// `None` when the release is unknown.
    pub cve_data: Option<DataState>,
    /// The newest release of the series the data names as a fix.
    pub data_through: Option<String>,
    /// The data's notice for this host, when not complete.
    pub notice: Option<String>,
    /// The release its live patch makes it as fixed as; `None` when unknown.
    pub effective_version: Option<String>,
    /// The loaded patch level; `None`: no live patch.
    pub active_level: Option<u32>,
    /// The state it last reported.
    pub state: HostState,
    /// CVEs of its kernel release without the live patch. `None`: unknown (no release or no CVE data for its series).
    pub base_cves: Option<usize>,
    /// CVEs still open with the live patch. `None`: unknown (no release or no CVE data for its series).
    pub live_cves: Option<usize>,
    /// Of those, how many are high. `None`: unknown (no release or no CVE data for its series).
    pub live_high: Option<usize>,
    /// Of those, how many are high and public longer than the window. `None`: unknown (no release or no CVE data for its series).
    pub live_high_overdue: Option<usize>,
    /// Of the open CVEs, how many are known exploited (CISA KEV). `None`: unknown (no release or no CVE data for its series).
    pub live_kev: Option<usize>,
    /// CVEs of the base exposure that the live patch fixes. `None`: unknown (no release or no CVE data for its series).
    pub fixed_by_patch: Option<usize>,
    /// A CVSS >= 7 CVE public for longer than the window is still open on the host; `None`:
    /// unknown (no release or no CVE data for its series: see `cve_data`).
    pub window_breached: Option<bool>,
    /// The same as a state: `within`, `breached`, or `unknown` (never `within` without data).
    pub window: WindowState,
    /// When it last checked in (unix seconds).
    pub last_checkin: i64,
}

/// Where a host stands against the patch window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowState {
    /// No high CVE open past the window.
    Within,
    /// A high CVE has been open past the window.
    Breached,
    /// Its exposure cannot be computed (no release, or no CVE data for its series).
    Unknown,
}

impl WindowState {
    /// The state of a host whose live exposure is `live` (`None`: unknown).
    pub fn of(live: Option<&Exposure>) -> WindowState {
        match live {
            None => WindowState::Unknown,
            Some(l) if l.high_overdue > 0 => WindowState::Breached,
            Some(_) => WindowState::Within,
        }
    }

    /// The serialized name: `within`, `breached`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowState::Within => "within",
            WindowState::Breached => "breached",
            WindowState::Unknown => "unknown",
        }
    }
}

/// Exposure per host, computed once per distinct (release, fixes) pair: fleets share kernels.
pub fn compliance(
    db: &CveDatabase,
    hosts: &[HostRecord],
    levels: &[LevelRecord],
    at: Day,
    policy: Policy,
) -> Vec<ComplianceRow> {
    let mut cache: std::collections::HashMap<(Option<UpstreamVersion>, Vec<String>), HostExposure> =
        std::collections::HashMap::new();
    hosts
        .iter()
        .map(|h| {
            let key = (host_upstream(h, levels), level_fixes(h, levels));
            let e = cache
                .entry(key)
                .or_insert_with(|| host_exposure(db, h, levels, at, policy));
            let live = e.live.as_ref();
            let coverage = e.upstream_version.map(|v| DataCoverage::of(db, &v));
            ComplianceRow {
                host_id: h.id.clone(),
                hostname: h.hostname.clone(),
                channel: h.channel.to_string(),
                kernel_release: h.kernel_release.to_string(),
                upstream_version: e.upstream_version.map(|v| v.to_string()),
                series: coverage.as_ref().map(|c| c.series.to_string()),
                cve_data: coverage.as_ref().map(|c| c.state),
                data_through: coverage
                    .as_ref()
                    .and_then(|c| c.data_through)
                    .map(|v| v.to_string()),
                notice: coverage.and_then(|c| c.notice),
                effective_version: e.effective_version.map(|v| v.to_string()),
                active_level: h.active_level.map(|l| l.get()),
                state: h.state,
                base_cves: e.base.as_ref().map(|b| b.cves),
                live_cves: live.map(|l| l.cves),
                live_high: live.map(|l| l.high),
                live_high_overdue: live.map(|l| l.high_overdue),
                live_kev: live.map(|l| l.kev),
                fixed_by_patch: live.map(|l| l.fixed_by_patch),
                window_breached: live.map(|l| l.high_overdue > 0),
                window: WindowState::of(live),
                last_checkin: h.last_checkin,
            }
        })
        .collect()
}

/// One CSV cell. A cell a spreadsheet would read as a formula (it starts with `=`, `+`, `-`,
/// `@`, a tab or a carriage return; a hostname is whatever the host sent) gets a leading `'`
/// so it is shown as text, never evaluated.
fn csv_field(text: &str) -> String {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let text = if formula {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if formula || text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The rows of hosts in `series` (`6.12`), for a report read per series.
pub fn rows_of_series(rows: Vec<ComplianceRow>, series: &KernelSeries) -> Vec<ComplianceRow> {
    let name = series.to_string();
    rows.into_iter()
        .filter(|r| r.series.as_deref() == Some(name.as_str()))
        .collect()
}

/// The compliance report as CSV, one header line then one line per row; cells that a
/// spreadsheet would take for a formula are quoted as text. Unknown counts and an unknown
/// `window_breached` (no release, or no CVE data for the host's series: `cve_data` says which)
/// are empty cells, never 0 or `false`; `window` says `unknown`. Columns added later (`series`,
/// `cve_data`, `data_through`; then `window` and the data's date and sync time, the same on
/// every row) come last, so readers by position keep working.
pub(crate) fn compliance_csv(rows: &[ComplianceRow], data: &CveDataStatus) -> String {
    let mut out = String::from(
        "host_id,hostname,channel,kernel_release,upstream_version,effective_version,active_level,\
         state,base_cves,live_cves,live_high,live_high_overdue,live_kev,fixed_by_patch,\
         window_breached,last_checkin,series,cve_data,data_through,window,cve_data_date,\
         cve_synced_at\n",
    );
    let count = |n: Option<usize>| n.map(|n| n.to_string()).unwrap_or_default();
    for r in rows {
        let fields = [
            csv_field(&r.host_id),
            csv_field(&r.hostname),
            csv_field(&r.channel),
            csv_field(&r.kernel_release),
            csv_field(r.upstream_version.as_deref().unwrap_or_default()),
            csv_field(r.effective_version.as_deref().unwrap_or_default()),
            r.active_level.map(|l| l.to_string()).unwrap_or_default(),
            csv_field(r.state.as_str()),
            count(r.base_cves),
            count(r.live_cves),
            count(r.live_high),
            count(r.live_high_overdue),
            count(r.live_kev),
            count(r.fixed_by_patch),
            r.window_breached.map(|b| b.to_string()).unwrap_or_default(),
            r.last_checkin.to_string(),
            csv_field(r.series.as_deref().unwrap_or_default()),
            r.cve_data
                .map(DataState::as_str)
                .unwrap_or_default()
                .to_owned(),
            csv_field(r.data_through.as_deref().unwrap_or_default()),
            r.window.as_str().to_owned(),
            csv_field(data.data_date.as_deref().unwrap_or_default()),
            csv_field(data.synced_at.as_deref().unwrap_or_default()),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// A CSAF 2.0 VEX document for one host: the CVEs its live patch fixes are `fixed`, those it
/// still has are `known_affected`, so scanners stop flagging what the patch fixed.
pub fn csaf_vex(
    host: &HostRecord,
    e: &HostExposure,
    db: &CveDatabase,
    data: &CveDataStatus,
    now: &str,
) -> serde_json::Value {
    let product = format!("host-{}", host.id);
    let name = format!(
        "Linux kernel {} ({}) on {}{}",
        e.upstream_version.map_or("?".into(), |v| v.to_string()),
        host.kernel_release,
        host.hostname,
        host.active_level.map_or(String::new(), |l| format!(
            " with Patchbay live patch level {l}"
        ))
    );
    let mut vulnerabilities = Vec::new();
    let base_ids: BTreeSet<&str> = e
        .base
        .iter()
        .flat_map(|b| b.list.iter().map(|c| c.id.as_str()))
        .collect();
    for id in &e.fixes {
        // Only what affects this kernel: a fix for a CVE the release never had says nothing.
        let affects = db
            .records
            .get(id)
            .is_some_and(|r| e.upstream_version.is_some_and(|v| r.affects(&v)));
        if affects || base_ids.contains(id.as_str()) {
            vulnerabilities.push(serde_json::json!({
                "cve": id,
                "product_status": { "fixed": [product] },
                "remediations": [{
                    "category": "vendor_fix",
                    "details": format!("Fixed in the running kernel by Patchbay live patch level {}", host.active_level.map_or(0, |l| l.get())),
                    "product_ids": [product],
                }],
            }));
        }
    }
    for (live, c) in e
        .live
        .iter()
        .flat_map(|l| l.list.iter().map(move |c| (l, c)))
    {
        vulnerabilities.push(serde_json::json!({
            "cve": c.id,
            "product_status": { "known_affected": [product] },
            "remediations": [{
                "category": if c.fixed_in.is_some() { "vendor_fix" } else { "none_available" },
                "details": c.fixed_in.map_or_else(
                    || format!("Upstream: {}", live.data.no_fix_text()),
                    |v| format!("Fixed upstream in {v}"),
                ),
                "product_ids": [product],
            }],
        }));
    }
    // What the data cannot say (a release newer than the data, a series without data, data
    // older than the limit or none) is a note of the document: an empty or short list must not
    // read as "not affected". The data's date is a note too.
    let notes: Vec<serde_json::Value> = e
        .upstream_version
        .map(|v| DataCoverage::of(db, &v))
        .and_then(|c| c.notice)
        .map(|text| serde_json::json!({ "category": "general", "title": "CVE data coverage", "text": text }))
        .into_iter()
        .chain(std::iter::once(match &data.warning {
            Some(text) => {
                serde_json::json!({ "category": "general", "title": "CVE data age", "text": text })
            }
            None => {
                serde_json::json!({ "category": "general", "title": "CVE data", "text": data.describe() })
            }
        }))
        .collect();
    let mut doc = serde_json::json!({
        "document": {
            "category": "csaf_vex",
            "csaf_version": "2.0",
            "title": format!("Patchbay live-patch status of {}", host.hostname),
            "publisher": { "category": "vendor", "name": "Patchbay", "namespace": "https://example.invalid/patchbay" },
            "tracking": {
                "id": format!("patchbay-{}-{}", host.id, now),
                "status": "final",
                "version": "1",
                "initial_release_date": now,
                "current_release_date": now,
                "revision_history": [{ "number": "1", "date": now, "summary": "generated" }],
            },
        },
        "product_tree": {
            "branches": [{
                "category": "vendor",
                "name": "Linux",
                "branches": [{
                    "category": "product_name",
                    "name": name,
                    "product": { "name": name, "product_id": product },
                }],
            }],
        },
        "vulnerabilities": vulnerabilities,
    });
    if let (false, Some(document)) = (
        notes.is_empty(),
        doc.get_mut("document")
            .and_then(serde_json::Value::as_object_mut),
    ) {
        document.insert("notes".to_owned(), serde_json::Value::Array(notes));
    }
    doc
}

/// The fleet's exposure today: what is known, and how many hosts it does not cover.
#[derive(Debug, Clone)]
pub struct FleetExposure {
    /// Distinct open CVEs by severity and hosts breaching the window, over the hosts whose
    /// exposure is known.
    pub snapshot: crate::store::ExposureSnapshot,
    /// Hosts whose exposure cannot be computed (no release, or no CVE data for its series):
    /// not counted in `snapshot`'s CVEs, never as 0.
    pub hosts_unknown: u64,
}

impl FleetExposure {
    /// Whether no host's exposure is known while there are hosts: every total is unknown.
    pub fn all_unknown(&self) -> bool {
        self.snapshot.hosts > 0 && self.hosts_unknown == self.snapshot.hosts
    }
}

/// Distinct open CVEs across the fleet by severity, hosts breaching the window, and hosts
/// whose exposure is unknown.
pub fn fleet_snapshot(
    db: &CveDatabase,
    hosts: &[HostRecord],
    levels: &[LevelRecord],
    at: Day,
) -> FleetExposure {
    let mut open: std::collections::BTreeMap<String, Option<patchbay_exposure::Severity>> =
        std::collections::BTreeMap::new();
    let mut breached = 0;
    let mut unknown = 0;
    let mut seen: std::collections::HashMap<(Option<UpstreamVersion>, Vec<String>), WindowState> =
        std::collections::HashMap::new();
    for h in hosts {
        let key = (host_upstream(h, levels), level_fixes(h, levels));
        let window = match seen.get(&key) {
            Some(w) => *w,
            None => {
                let e = host_exposure(db, h, levels, at, Policy::default());
                for c in e.live.iter().flat_map(|l| l.list.iter()) {
                    open.insert(c.id.clone(), c.severity);
                }
                let w = WindowState::of(e.live.as_ref());
                seen.insert(key, w);
                w
            }
        };
        match window {
            WindowState::Breached => breached += 1,
            WindowState::Unknown => unknown += 1,
            WindowState::Within => {}
        }
    }
    use patchbay_exposure::Severity as S;
    let count = |want: Option<S>| open.values().filter(|s| **s == want).count() as u64;
    FleetExposure {
        snapshot: crate::store::ExposureSnapshot {
            day: at.to_string(),
            critical: count(Some(S::Critical)),
            high: count(Some(S::High)),
            medium: count(Some(S::Medium)),
            low: count(Some(S::Low)) + count(Some(S::None)),
            unscored: count(None),
            hosts: hosts.len() as u64,
            hosts_breached: breached,
        },
        hosts_unknown: unknown,
    }
}

/// Hosts per kernel series and what the CVE data knows of it (`complete`, `stale`,
/// `no_data`), keyed `(series, state)`; hosts whose release is unknown are under
/// `("unknown", "unknown")`. For `/metrics` and the fleet page: a mixed fleet at a glance.
pub fn hosts_by_series(
    db: &CveDatabase,
    hosts: &[HostRecord],
    levels: &[LevelRecord],
) -> std::collections::BTreeMap<(String, &'static str), u64> {
    let mut counts = std::collections::BTreeMap::new();
    for h in hosts {
        let key = match host_coverage(db, h, levels) {
            Some(c) => (c.series.to_string(), c.state.as_str()),
            None => ("unknown".to_owned(), "unknown"),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// The data's notice per series the fleet runs, for the newest release hosts report in it
/// (a stale series, a series without data); empty when the data covers every host.
pub fn fleet_notices(
    db: &CveDatabase,
    hosts: &[HostRecord],
    levels: &[LevelRecord],
) -> Vec<String> {
    let mut newest: std::collections::BTreeMap<KernelSeries, UpstreamVersion> =
        std::collections::BTreeMap::new();
    for v in hosts.iter().filter_map(|h| host_upstream(h, levels)) {
        let entry = newest.entry(KernelSeries::of(&v)).or_insert(v);
        if v > *entry {
            *entry = v;
        }
    }
    newest
        .values()
        .filter_map(|v| DataCoverage::of(db, v).notice)
        .collect()
}

/// The effective release of a host (cheap: no exposure lists), for check-in replies.
pub fn effective_version(
    db: &CveDatabase,
    host: &HostRecord,
    levels: &[LevelRecord],
) -> Option<UpstreamVersion> {
    let version = host_upstream(host, levels)?;
    let fixes: BTreeSet<String> = level_fixes(host, levels).into_iter().collect();
    if fixes.is_empty() {
        return Some(version);
    }
    Some(db.effective_version(version, &fixes))
}
