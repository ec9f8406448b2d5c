//! CVE intelligence for Patchbay: which kernel CVEs affect a stable release (`6.1.N`,
//! `6.12.N`), how severe they are, since when they are public, and which of them a live patch
//! level fixes.
//!
//! Sources: the kernel CNA's records ([`vulns`], the `vulns.git` layout with `.dyad`
//! vulnerable:fixed pairs) for production, and the bundled snapshot ([`snapshot`], one file per
//! stable [`KernelSeries`]) for tests and the demo. Both end in a [`CveDatabase`] holding the ranges of
//! every series it covers; [`exposure`] evaluates it.
//!
//! Rules (see [`dyad`] for how pairs become ranges): a release `X.Y.N` is exposed to a CVE when
//! one of its ranges in series `X.Y` has `introduced <= X.Y.N < fixed` (`fixed = None`: no fix in
//! that series). A release of a series the database does not cover has no data — a state of its
//! own ([`exposure::DataState::NoData`]), never "no exposure"; a release newer than the newest
//! fix the data names is evaluated with a notice ([`exposure::DataState::Stale`]). CVSS is
//! computed from the vector with the RustSec `cvss` crate where there is one; a CVE without a
//! score is [`Score::Unscored`], never 0. "High" means a score of at least 7.0; a high CVE is
//! overdue when it was published more than the window (default 30 days) before the evaluation
//! day, or when its publication day is unknown (older records from other CNAs: conservative).
//! A CVE counts from its publication day on; a KEV mark counts from the day CISA added it.
#![warn(missing_docs)]

pub mod dyad;
pub mod exposure;
pub mod snapshot;
pub mod vulns;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

pub use exposure::{exposure, try_exposure, DataCoverage, DataState, ExposedCve, Exposure, Policy};
use patchbay_core::KernelSeries;
use patchbay_core::UpstreamVersion;

/// A civil date (UTC day).
pub type Day = jiff::civil::Date;

/// Why CVE data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CveError {
    /// A data file could not be read (or decompressed).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's (or gzip's) error.
        source: std::io::Error,
    },
    /// A record, file or value does not parse.
    #[error("{what}: {reason}")]
    Malformed {
        /// What was being read, e.g. `CVE id "CVE-x"` or `CVE-2024-0001.dyad line 3`.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database holds no CVE data for a release's stable series: its exposure is unknown.
    #[error(
        "no CVE data for the {series} series (release {version}); the database covers {covered}: \
         sync data for {series}.y before reading its exposure"
    )]
    NoSeriesData {
        /// The release asked about, e.g. `5.10.200`.
        version: UpstreamVersion,
        /// Its series, e.g. `5.10`.
        series: KernelSeries,
        /// The series the database covers, e.g. `6.1, 6.12` (or `no series`).
        covered: String,
    },
}

impl From<patchbay_core::IdError> for CveError {
    fn from(e: patchbay_core::IdError) -> Self {
        CveError::malformed("value", e)
    }
}

impl CveError {
    /// A [`CveError::Malformed`] for `what`, with `reason` rendered as text.
    pub fn malformed(what: impl Into<String>, reason: impl fmt::Display) -> Self {
        CveError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Parses `2025-03-27` or the day of an RFC 3339 time (`2025-03-27T16:37:42Z`).
pub fn parse_day(text: &str) -> Result<Day, CveError> {
    let day = text.get(..10).unwrap_or(text);
    day.parse()
        .map_err(|e| CveError::malformed(format!("date {text:?}"), e))
}

/// Severity bands of CVSS v3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Score 0.0.
    None,
    /// Score 0.1 to 3.9.
    Low,
    /// Score 4.0 to 6.9.
    Medium,
    /// Score 7.0 to 8.9.
    High,
    /// Score 9.0 to 10.0.
    Critical,
}

impl Severity {
    /// The band a base score falls in (0.0 to 10.0; anything at or below 0 is `None`).
    pub fn of(score: f64) -> Severity {
        match score {
            s if s >= 9.0 => Severity::Critical,
            s if s >= 7.0 => Severity::High,
            s if s >= 4.0 => Severity::Medium,
            s if s > 0.0 => Severity::Low,
            _ => Severity::None,
        }
    }

    /// The lowercase name, as serialized: `none`, `low`, `medium`, `high`, `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::None => "none",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// A CVE's base score, or the fact that nobody scored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Score {
    /// A base score is known.
    Scored {
        /// Base score, 0.0 to 10.0.
        score: f64,
        /// The band of `score` ([`Severity::of`]).
        severity: Severity,
        /// The vector it was computed from (None: a published score without a vector).
        vector: Option<String>,
        /// Who scored it, e.g. `kernel.org CNA (vulns repo)`; `unknown` when the data did not say.
        source: String,
    },
    /// No score and no vector were published; never counted as high, never as 0.
    Unscored,
}

impl Score {
    /// A base score from `source`, with the vector it came from if known.
    pub fn scored(score: f64, vector: Option<&str>, source: &str) -> Score {
        Score::Scored {
            score,
            severity: Severity::of(score),
            vector: vector.map(str::to_owned),
            source: source.to_owned(),
        }
    }

    /// Scores a CVSS v3.x vector with the `cvss` crate.
    pub fn from_v3_vector(vector: &str, source: &str) -> Result<Score, CveError> {
        let parsed: cvss::v3::Vector = vector
            .parse()
            .map_err(|e| CveError::malformed(format!("CVSS vector {vector:?}"), e))?;
        Ok(Score::scored(parsed.score().value(), Some(vector), source))
    }

    /// Scores a CVSS v2 vector (`AV:N/AC:L/Au:N/C:P/I:P/A:P`).
    pub fn from_v2_vector(vector: &str, source: &str) -> Result<Score, CveError> {
        let parsed: cvss::v2::Vector = vector
            .parse()
            .map_err(|e| CveError::malformed(format!("CVSS v2 vector {vector:?}"), e))?;
        Ok(Score::scored(parsed.score().value(), Some(vector), source))
    }

    /// The base score, `None` when unscored.
    pub fn value(&self) -> Option<f64> {
        match self {
            Score::Scored { score, .. } => Some(*score),
            Score::Unscored => None,
        }
    }

    /// The severity band, `None` when unscored.
    pub fn severity(&self) -> Option<Severity> {
        match self {
            Score::Scored { severity, .. } => Some(*severity),
            Score::Unscored => None,
        }
    }
}

/// One affected range inside one stable series (the series of `introduced`):
/// `introduced <= R < fixed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The first affected release, e.g. `6.1.0` or `6.1.52` (a bug a backport brought in).
    pub introduced: UpstreamVersion,
    /// The first release of the same series with the fix; `None`: no release of the series
    /// fixes it (as far as the data knows).
    pub fixed: Option<UpstreamVersion>,
}

impl Range {
    /// The stable series the range lies in.
    pub fn series(&self) -> KernelSeries {
        KernelSeries::of(&self.introduced)
    }

    /// Whether release `v` is affected: `v` is of the range's series and
    /// `introduced <= v < fixed`.
    pub fn contains(&self, v: &UpstreamVersion) -> bool {
        self.series().contains(v)
            && &self.introduced <= v
            && self.fixed.as_ref().is_none_or(|f| v < f)
    }
}

/// A CISA Known Exploited Vulnerabilities entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kev {
    /// The day CISA added the CVE to the catalog; it counts as exploited from then on.
    pub date_added: Day,
}

/// What Patchbay knows of one CVE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CveRecord {
    /// The CVE id, e.g. `CVE-2024-26581`.
    pub id: String,
    /// A one-line summary; may be empty (some older records have none).
    pub title: String,
    /// Publication day (None: unknown; such high CVEs count as past the window).
    pub published: Option<Day>,
    /// The base score, or [`Score::Unscored`].
    pub score: Score,
    /// The affected ranges, each inside one stable series ([`Range::series`]), of every series
    /// the database covers; none in a covered series means no release of it is affected.
    pub ranges: Vec<Range>,
    /// The CISA KEV entry; `None`: not known to be exploited.
    pub kev: Option<Kev>,
    /// Kernel source files the fix touches (the CNA record's `programFiles`); empty when the
    /// source did not say. `upgrade` cuts each CVE's fix from these.
    #[serde(default)]
    pub files: Vec<String>,
}

impl CveRecord {
    /// Whether release `v` lies in one of the record's ranges.
    pub fn affects(&self, v: &UpstreamVersion) -> bool {
        self.ranges.iter().any(|r| r.contains(v))
    }

    /// The record's ranges in `series`.
    pub fn ranges_in(&self, series: KernelSeries) -> impl Iterator<Item = &Range> {
        self.ranges.iter().filter(move |r| r.series() == series)
    }
}

/// All known CVEs by id, for the stable series the data covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CveDatabase {
    /// The records, keyed by CVE id (`CVE-2024-26581`).
    pub records: BTreeMap<String, CveRecord>,
    /// The stable series whose data the database holds (a release of another series has no
    /// data, which is not "no exposure"). Empty in databases written before series existed
    /// (6.1 only) and in hand-made ones: then the series its ranges lie in
    /// ([`CveDatabase::covered_series`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub series: BTreeSet<KernelSeries>,
    /// Where the data was read from and when it was stored; `None` in databases written before
    /// it was recorded and in ones built in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// Where a stored CVE database came from and when it was stored (the server's `init` and
/// `cve sync` write it). How new the data is comes from the records themselves
/// ([`CveDatabase::newest_published`]): a sync from an old checkout is old data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// What it was read from, for people: e.g. `the kernel CNA snapshot bundled with
    /// patchbay-server 0.1.0`, `vulns checkout /srv/vulns`.
    pub source: String,
    /// When it was stored, RFC 3339 UTC (`2026-12-07T16:10:00Z`).
    pub synced_at: String,
}

impl CveDatabase {
    /// The normalized form a server stores (`cve sync`) and loads.
    pub fn to_json(&self) -> Result<Vec<u8>, CveError> {
        serde_json::to_vec(self).map_err(|e| CveError::malformed("CVE database", e))
    }

    /// Reads the form [`CveDatabase::to_json`] writes; errors name `cve sync` as the fix.
    pub fn from_json(bytes: &[u8]) -> Result<CveDatabase, CveError> {
        serde_json::from_slice(bytes).map_err(|e| {
            CveError::malformed(
                "CVE database",
                format!("{e}; run `patchbay-server cve sync` again"),
            )
        })
    }

    /// The stable series the database covers: [`CveDatabase::series`], or, when that is empty
    /// (an older or hand-made database), every series one of its ranges lies in.
    pub fn covered_series(&self) -> BTreeSet<KernelSeries> {
        if !self.series.is_empty() {
            return self.series.clone();
        }
        self.records
            .values()
            .flat_map(|r| r.ranges.iter().map(Range::series))
            .collect()
    }

    /// Whether the database holds data for `series`.
    pub fn covers(&self, series: KernelSeries) -> bool {
        if self.series.is_empty() {
            self.records
                .values()
                .any(|r| r.ranges.iter().any(|x| x.series() == series))
        } else {
            self.series.contains(&series)
        }
    }

    /// The newest release of `series` the data names as a fix (the highest `fixed` of the
    /// series' ranges): fixes released after it are not in the data. `None` when no range of
    /// the series has a fix.
    pub fn data_through(&self, series: KernelSeries) -> Option<UpstreamVersion> {
        self.records
            .values()
            .flat_map(|r| r.ranges_in(series).filter_map(|x| x.fixed))
            .filter(|f| series.contains(f))
            .max()
    }

    /// The newest publication day of a CVE affecting some release of `series`: how far the
    /// data reaches in time for it (CVEs published later are not in it). `None` when no
    /// record of the series has a publication day.
    pub fn newest_published_in(&self, series: KernelSeries) -> Option<Day> {
        self.records
            .values()
            .filter(|r| r.ranges_in(series).next().is_some())
            .filter_map(|r| r.published)
            .max()
    }

    /// The newest publication day of any record: the data's date.
    pub fn newest_published(&self) -> Option<Day> {
        self.records.values().filter_map(|r| r.published).max()
    }

    /// The covered series as text, `6.1, 6.12` (`no series` when empty), for messages.
    pub fn covered_text(&self) -> String {
        let covered: Vec<String> = self
            .covered_series()
            .iter()
            .map(KernelSeries::to_string)
            .collect();
        if covered.is_empty() {
            "no series".to_owned()
        } else {
            covered.join(", ")
        }
    }

    /// The first release of `from`'s series at or after `from` that fixes every CVE in
    /// `fixed_set` that affects `from` and has a fix — i.e. the release whose fixes a patch
    /// level brings.
    pub fn effective_version(
        &self,
        from: UpstreamVersion,
        fixed_set: &std::collections::BTreeSet<String>,
    ) -> UpstreamVersion {
        // The effective release is the newest N such that every CVE fixed in (from, N] is in
        // the patch's fixes: a host with the patch is then no worse than N.
        let mut fixed_at: BTreeMap<UpstreamVersion, Vec<&str>> = BTreeMap::new();
        for r in self.records.values() {
            for range in &r.ranges {
                if let Some(f) = range.fixed {
                    if range.contains(&from) && f.series() == from.series() {
                        fixed_at.entry(f).or_default().push(r.id.as_str());
                    }
                }
            }
        }
        let mut effective = from;
        for (release, ids) in fixed_at {
            if ids.iter().all(|id| fixed_set.contains(*id)) {
                effective = release;
            } else {
                break;
            }
        }
        effective
    }

    /// Adds another source's records: for a CVE both hold, `other`'s record wins, except that
    /// the ranges of series `other` does not cover are kept (so merging the 6.12 data into the
    /// 6.1 data keeps each CVE's 6.1 ranges). The covered series are the union.
    pub fn merge(&mut self, other: CveDatabase) {
        let theirs = other.covered_series();
        let mut ours = self.covered_series();
        for (id, mut record) in other.records {
            if let Some(old) = self.records.remove(&id) {
                let kept = old
                    .ranges
                    .into_iter()
                    .filter(|r| !theirs.contains(&r.series()));
                record.ranges = kept.chain(record.ranges).collect();
            }
            self.records.insert(id, record);
        }
        ours.extend(theirs);
        self.series = ours;
    }

    /// How many CVEs the database holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds no CVE at all (e.g. `cve sync` was never run).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Checks a CVE id (`CVE-YYYY-NNNN…`).
pub fn check_cve_id(id: &str) -> Result<(), CveError> {
    id.parse::<patchbay_core::CveId>()
        .map(drop)
        .map_err(|e| CveError::malformed(format!("CVE id {id:?}"), e))
}
