//! Exposure of a kernel version on a day: which CVEs it has, how many are high, overdue
//! against the window, or known exploited; optionally minus what a live patch fixes. Every
//! result says how far the data reaches for the release's series ([`DataCoverage`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{CveDatabase, CveError, Day, KernelSeries, Severity};
use patchbay_core::UpstreamVersion;

/// Whether the CVE data can answer for a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataState {
    /// The data covers the release's series and names fixes up to the release or beyond.
    Complete,
    /// The release is newer than the newest release the data names as a fix: CVEs fixed
    /// after that release show as unfixed, so the exposure may be too high and is not
    /// complete.
    Stale,
    /// The database holds no data for the release's series: the exposure is unknown (not 0).
    NoData,
}

impl DataState {
    /// The serialized name: `complete`, `stale`, `no_data`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataState::Complete => "complete",
            DataState::Stale => "stale",
            DataState::NoData => "no_data",
        }
    }
}

/// How far the CVE data reaches for one release's series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCoverage {
    /// The release's stable series, e.g. `6.12`.
    pub series: KernelSeries,
    /// Complete, stale or no data.
    pub state: DataState,
    /// The newest release of the series the data names as a fix (`6.12.104`); `None` without
    /// data for the series (or when no CVE of it has a fix).
    pub data_through: Option<UpstreamVersion>,
    /// For people, when the state is not complete: e.g. "CVE data covers 6.12 releases up to
    /// 6.12.104; fixes released after it are not known".
    pub notice: Option<String>,
}

impl DataCoverage {
    /// What `db` knows for release `version`: no data for its series, stale when `version`
    /// is newer than the newest fix the data names, else complete.
    pub fn of(db: &CveDatabase, version: &UpstreamVersion) -> DataCoverage {
        let series = KernelSeries::of(version);
        if !db.covers(series) {
            return DataCoverage {
                series,
                state: DataState::NoData,
                data_through: None,
                notice: Some(format!(
                    "no CVE data for the {series} series (the database covers {}): the \
                     exposure of {version} is unknown",
                    db.covered_text()
                )),
            };
        }
        let data_through = db.data_through(series);
        let stale = data_through.is_some_and(|last| *version > last);
        DataCoverage {
            series,
            state: if stale {
                DataState::Stale
            } else {
                DataState::Complete
            },
            data_through,
            notice: data_through.filter(|_| stale).map(|last| {
                format!(
                    "CVE data covers {series} releases up to {last}; fixes released after it \
                     are not known"
                )
            }),
        }
    }

    /// How a CVE without a fix in the series is described: `no 6.12.y fix`, or, when the
    /// data is stale for the release, `no 6.12.y fix up to 6.12.104`.
    pub fn no_fix_text(&self) -> String {
        match (self.state, self.data_through) {
            (DataState::Stale, Some(last)) => format!("no {}.y fix up to {last}", self.series),
            _ => format!("no {}.y fix", self.series),
        }
    }
}

/// When a CVE counts as high and how long it may stay open.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Policy {
    /// The lowest CVSS base score that counts as high (default 7.0).
    pub min_high_score: f64,
    /// Days a high CVE may stay public and unfixed before it is overdue (default 30).
    pub window_days: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_high_score: 7.0,
            window_days: 30,
        }
    }
}

/// One exposed CVE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExposedCve {
    /// The CVE id, e.g. `CVE-2024-26581`.
    pub id: String,
    /// Its one-line summary (may be empty).
    pub title: String,
    /// The CVSS base score, `None` when unscored.
    pub score: Option<f64>,
    /// `None` when unscored.
    pub severity: Option<Severity>,
    /// In CISA's KEV catalog on the evaluation day.
    pub kev: bool,
    /// Publication day as `2025-03-27`; `None` when unknown.
    pub published: Option<String>,
    /// Days from publication to the evaluation day; `None` when the day is unknown.
    pub days_public: Option<i64>,
    /// Score at least [`Policy::min_high_score`].
    pub high: bool,
    /// High and public for longer than the window.
    pub window_breached: bool,
    /// The first release of the evaluated release's series with the fix, if the data knows
    /// one.
    pub fixed_in: Option<UpstreamVersion>,
}

/// The counts (`version`, `cves`, `high`, `high_overdue`, `kev`) and the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// The release evaluated, e.g. `6.1.100`.
    pub version: UpstreamVersion,
    /// How far the data reaches for the release's series: with [`DataState::NoData`] the
    /// counts are not an answer (use [`try_exposure`] to get an error instead); with
    /// [`DataState::Stale`] they may be too high and `data.notice` says why.
    pub data: DataCoverage,
    /// The evaluation day, `2025-03-27`.
    pub at: String,
    /// How many CVEs affect it (the length of `list`).
    pub cves: usize,
    /// How many of them are high.
    pub high: usize,
    /// How many are high and past the window ([`ExposedCve::window_breached`]).
    pub high_overdue: usize,
    /// How many were in CISA's KEV catalog on that day.
    pub kev: usize,
    /// How many have no score.
    pub unscored: usize,
    /// CVEs of the base exposure that the live patch fixes (not counted above).
    pub fixed_by_patch: usize,
    /// The exposed CVEs, most urgent first: overdue, then KEV, score, days public, id.
    pub list: Vec<ExposedCve>,
}

/// The exposure of `version` on day `at`, not counting the CVEs in `fixed` (a live patch's);
/// [`CveError::NoSeriesData`] when the database has no data for `version`'s series.
pub fn try_exposure(
    db: &CveDatabase,
    version: UpstreamVersion,
    at: Day,
    policy: Policy,
    fixed: &BTreeSet<String>,
) -> Result<Exposure, CveError> {
    let e = exposure(db, version, at, policy, fixed);
    if e.data.state == DataState::NoData {
        return Err(CveError::NoSeriesData {
            version,
            series: e.data.series,
            covered: db.covered_text(),
        });
    }
    Ok(e)
}

/// The exposure of `version` on day `at`, not counting the CVEs in `fixed` (a live patch's).
/// Without data for the release's series the lists are empty and `data.state` is
/// [`DataState::NoData`]: check it, or call [`try_exposure`].
pub fn exposure(
    db: &CveDatabase,
    version: UpstreamVersion,
    at: Day,
    policy: Policy,
    fixed: &BTreeSet<String>,
) -> Exposure {
    let mut list = Vec::new();
    let mut fixed_by_patch = 0;
    for record in db.records.values() {
        if !record.affects(&version) {
            continue;
        }
        // A CVE published after the evaluation day was not known then.
        if record.published.is_some_and(|p| p > at) {
            continue;
        }
        if fixed.contains(&record.id) {
            fixed_by_patch += 1;
            continue;
        }
        let score = record.score.value();
        let high = score.is_some_and(|s| s >= policy.min_high_score);
        let days_public = record.published.map(|p| (at - p).get_days().into());
        let fixed_in = record
            .ranges
            .iter()
            .find(|r| r.contains(&version))
            .and_then(|r| r.fixed);
        list.push(ExposedCve {
            id: record.id.clone(),
            title: record.title.clone(),
            score,
            severity: record.score.severity(),
            // Known exploited as of the evaluation day, not later.
            kev: record.kev.as_ref().is_some_and(|k| k.date_added <= at),
            published: record.published.map(|p| p.to_string()),
            // An unknown publication date (older records from other CNAs) counts as past the
            // window: the conservative reading for an audit.
            window_breached: high && days_public.is_none_or(|d: i64| d > policy.window_days),
            days_public,
            high,
            fixed_in,
        });
    }
    // Most urgent first: overdue, KEV, score, age.
    list.sort_by(|a, b| {
        (
            b.window_breached,
            b.kev,
            b.score.unwrap_or(-1.0),
            b.days_public,
        )
            .partial_cmp(&(
                a.window_breached,
                a.kev,
                a.score.unwrap_or(-1.0),
                a.days_public,
            ))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.id.cmp(&b.id))
    });
    Exposure {
        version,
        data: DataCoverage::of(db, &version),
        at: at.to_string(),
        cves: list.len(),
        high: list.iter().filter(|c| c.high).count(),
        high_overdue: list.iter().filter(|c| c.window_breached).count(),
        kev: list.iter().filter(|c| c.kev).count(),
        unscored: list.iter().filter(|c| c.score.is_none()).count(),
        fixed_by_patch,
        list,
    }
}

impl Exposure {
    /// The counts as JSON with the keys `version`, `cves`, `high`, `high_overdue`, `kev`
    /// (plus `at`, `unscored`, `fixed_by_patch`), and how far the data reaches: `series`,
    /// `data_state` (`complete`, `stale`, `no_data`), `data_through` and `notice` (null when
    /// complete).
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version.to_string(),
            "series": self.data.series.to_string(),
            "data_state": self.data.state.as_str(),
            "data_through": self.data.data_through.map(|v| v.to_string()),
            "notice": self.data.notice,
            "at": self.at,
            "cves": self.cves,
            "high": self.high,
            "high_overdue": self.high_overdue,
            "kev": self.kev,
            "unscored": self.unscored,
            "fixed_by_patch": self.fixed_by_patch,
        })
    }

    /// Plain-text report: the counts, the data's notice when it is not complete, the list.
    pub fn render(&self, limit: usize) -> String {
        if self.data.state == DataState::NoData {
            return format!(
                "kernel {} on {}: {}\n",
                self.version,
                self.at,
                self.data.notice.as_deref().unwrap_or("no CVE data")
            );
        }
        let mut out = format!(
            "kernel {} on {}: {} CVEs, {} high (CVSS >= 7), {} high and public > window, {} known exploited (KEV), {} unscored{}\n",
            self.version,
            self.at,
            self.cves,
            self.high,
            self.high_overdue,
            self.kev,
            self.unscored,
            if self.fixed_by_patch > 0 {
                format!(", {} more fixed by the live patch", self.fixed_by_patch)
            } else {
                String::new()
            }
        );
        if let Some(notice) = &self.data.notice {
            out.push_str(&format!("  note: {notice}\n"));
        }
        for c in self.list.iter().take(limit) {
            out.push_str(&format!(
                "  {:<16} {:>4} {:<8} {:<4} {:>5} {}\n",
                c.id,
                c.score.map_or("-".into(), |s| format!("{s:.1}")),
                c.severity.map_or("unscored", Severity::as_str),
                if c.kev { "KEV" } else { "" },
                c.days_public.map_or("?".into(), |d| format!("{d}d")),
                c.fixed_in
                    .map_or_else(|| self.data.no_fix_text(), |v| format!("fixed in {v}")),
            ));
        }
        if self.list.len() > limit {
            out.push_str(&format!("  … {} more\n", self.list.len() - limit));
        }
        out
    }
}
