//! CVE intelligence for Patchbay: which kernel CVEs affect a 6.1.y release, how severe they
//! are, since when they are public, and which of them a live patch level fixes.
//!
//! Sources: the kernel CNA's records ([`vulns`], the `vulns.git` layout with `.dyad`
//! vulnerable:fixed pairs) for production, and the bundled 6.1 snapshot ([`snapshot`]) for tests
//! and the demo. Both end in a [`CveDatabase`]; [`exposure`] evaluates it.
//!
//! Rules (see [`dyad`] for how pairs become ranges): a release `6.1.N` is exposed to a CVE when
//! one of its ranges has `introduced <= 6.1.N < fixed` (`fixed = None`: no 6.1.y fix). CVSS is
//! computed from the vector with the RustSec `cvss` crate where there is one; a CVE without a
//! score is [`Score::Unscored`], never 0. "High" means a score of at least 7.0; a high CVE is
//! overdue when it was published more than the window (default 30 days) before the evaluation
//! day, or when its publication day is unknown (older records from other CNAs: conservative).
//! A CVE counts from its publication day on; a KEV mark counts from the day CISA added it.
#![warn(missing_docs)]

pub mod dyad;
pub mod exposure;
pub mod snapshot;
pub mod version;
pub mod vulns;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use exposure::{exposure, ExposedCve, Exposure, Policy};
pub use version::UpstreamVersion;

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

/// One affected range inside 6.1.y: `introduced <= R < fixed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The first affected release, e.g. `6.1.0` or `6.1.52` (a bug a backport brought in).
    pub introduced: UpstreamVersion,
    /// The first release with the fix; `None`: no 6.1.y release fixes it.
    pub fixed: Option<UpstreamVersion>,
}

impl Range {
    /// Whether release `v` is affected: `introduced <= v < fixed`.
    pub fn contains(&self, v: &UpstreamVersion) -> bool {
        &self.introduced <= v && self.fixed.as_ref().is_none_or(|f| v < f)
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
    /// The affected 6.1.y ranges; empty means no 6.1.y release is affected.
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
}

/// All known CVEs by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CveDatabase {
    /// The records, keyed by CVE id (`CVE-2024-26581`).
    pub records: BTreeMap<String, CveRecord>,
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

    /// The first 6.1.y release at or after `from` that fixes every CVE in `fixed_set` that
    /// affects `from` and has a fix — i.e. the release whose fixes a patch level brings.
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

    /// Adds or replaces records (later sources win).
    pub fn merge(&mut self, other: CveDatabase) {
        self.records.extend(other.records);
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
