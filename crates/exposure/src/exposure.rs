//! Exposure of a kernel version on a day: which CVEs it has, how many are high, overdue
//! against the window, or known exploited; optionally minus what a live patch fixes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::version::UpstreamVersion;
use crate::{CveDatabase, Day, Severity};

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
    /// The first 6.1.y release with the fix, if any.
    pub fixed_in: Option<UpstreamVersion>,
}

/// The counts (`version`, `cves`, `high`, `high_overdue`, `kev`) and the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// The release evaluated, e.g. `6.1.100`.
    pub version: UpstreamVersion,
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

/// The exposure of `version` on day `at`, not counting the CVEs in `fixed` (a live patch's).
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
    /// (plus `at`, `unscored`, `fixed_by_patch`).
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version.to_string(),
            "at": self.at,
            "cves": self.cves,
            "high": self.high,
            "high_overdue": self.high_overdue,
            "kev": self.kev,
            "unscored": self.unscored,
            "fixed_by_patch": self.fixed_by_patch,
        })
    }

    /// Plain-text report.
    pub fn render(&self, limit: usize) -> String {
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
        for c in self.list.iter().take(limit) {
            out.push_str(&format!(
                "  {:<16} {:>4} {:<8} {:<4} {:>5} {}\n",
                c.id,
                c.score.map_or("-".into(), |s| format!("{s:.1}")),
                c.severity.map_or("unscored", Severity::as_str),
                if c.kev { "KEV" } else { "" },
                c.days_public.map_or("?".into(), |d| format!("{d}d")),
                c.fixed_in
                    .map_or("no 6.1.y fix".into(), |v| format!("fixed in {v}")),
            ));
        }
        if self.list.len() > limit {
            out.push_str(&format!("  … {} more\n", self.list.len() - limit));
        }
        out
    }
}
