//! Which CVEs an upgrade closes: those of the CVE database that affect the running kernel's
//! upstream release and are fixed in the same stable series at or below the target release.

use std::collections::BTreeSet;

use patchbay_core::CveId;
use patchbay_core::UpstreamVersion;
use patchbay_exposure::{CveDatabase, CveRecord};

/// One CVE chosen for the upgrade.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedCve {
    /// The CVE (`CVE-2024-26581`).
    pub id: CveId,
    /// The record's one-line summary, as the report shows it.
    pub title: String,
    /// The CVSS base score (0.0–10.0); `None` when the database has none.
    pub score: Option<f64>,
    /// Kernel source files its fix touches (from the CVE record).
    pub files: Vec<String>,
    /// The stable release that fixes it (`None`: an operator's patch outside the window).
    pub fixed_in: Option<UpstreamVersion>,
    /// The operator's patch for it (`--patches`), used instead of the source diff.
    pub patch: Option<std::path::PathBuf>,
    /// What the builder did about the record's files (e.g. a file mainline renamed, found
    /// under its 6.1 name); shown with the CVE's outcome.
    pub notes: Vec<String>,
}

/// What to select.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    /// The running kernel's upstream release.
    pub from: UpstreamVersion,
    /// The newest release whose fixes to bring.
    pub to: UpstreamVersion,
    /// CVEs scored below this are left out (unscored ones too, unless named in `only`).
    pub min_cvss: f64,
    /// When not empty: only these CVEs (each must be in the window).
    pub only: &'a [CveId],
}

/// A named CVE that the window does not contain, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{cve}: {reason}")]
pub struct NotInWindow {
    /// The CVE as named.
    pub cve: CveId,
    /// Why it is not in the window (unknown, does not affect `from`, fixed after `to`).
    pub reason: String,
}

/// The release in `from`'s series that fixes `record` for a kernel at `from`, if it is at or
/// below `to`.
fn fixed_in(
    record: &CveRecord,
    from: &UpstreamVersion,
    to: &UpstreamVersion,
) -> Option<UpstreamVersion> {
    record
        .ranges
        .iter()
        .filter(|r| r.contains(from))
        .filter_map(|r| r.fixed)
        .filter(|f| f.series() == from.series() && f <= to)
        .min()
}

/// Every file named by a CVE fixed in the window `from`..=`to`, whatever its score: files
/// that belong to some CVE's fix (for telling a renamed file from another fix's file).
pub fn window_files(
    db: &CveDatabase,
    from: &UpstreamVersion,
    to: &UpstreamVersion,
) -> BTreeSet<String> {
    db.records
        .values()
        .filter(|r| fixed_in(r, from, to).is_some())
        .flat_map(|r| r.files.iter().cloned())
        .collect()
}

/// The CVEs to close, ordered by id. CVEs named in `only` that are not in the window are an
/// error naming each and why (unknown, does not affect `from`, fixed after `to`).
pub fn select(
    db: &CveDatabase,
    selection: &Selection<'_>,
) -> Result<Vec<SelectedCve>, Vec<NotInWindow>> {
    let mut chosen = Vec::new();
    let mut missing = Vec::new();
    let wanted = |id: &str| selection.only.iter().any(|c| c.as_str() == id);
    for record in db.records.values() {
        let named = wanted(&record.id);
        if !selection.only.is_empty() && !named {
            continue;
        }
        let Some(fixed) = fixed_in(record, &selection.from, &selection.to) else {
            continue;
        };
        let score = record.score.value();
        if !named && score.is_none_or(|s| s < selection.min_cvss) {
            continue;
        }
        let Ok(id) = record.id.parse::<CveId>() else {
            continue; // the database checked ids when it was loaded
        };
        chosen.push(SelectedCve {
            id,
            title: record.title.clone(),
            score,
            files: record.files.clone(),
            fixed_in: Some(fixed),
            patch: None,
            notes: Vec::new(),
        });
    }
    for cve in selection.only {
        if chosen.iter().any(|c| &c.id == cve) {
            continue;
        }
        let reason = match db.records.get(cve.as_str()) {
            None => "not in the CVE database (run `patchbay-server cve sync`, or check the id)"
                .to_owned(),
            Some(record) if !record.affects(&selection.from) => format!(
                "does not affect {} (the running kernel's release)",
                selection.from
            ),
            Some(_) => format!(
                "is not fixed in {}.{}.y at or below {}; choose a newer --to",
                selection.from.series().0,
                selection.from.series().1,
                selection.to
            ),
        };
        missing.push(NotInWindow {
            cve: cve.clone(),
            reason,
        });
    }
    if missing.is_empty() {
        Ok(chosen)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn v(s: &str) -> UpstreamVersion {
        s.parse().unwrap()
    }

    #[test]
    fn selects_the_window_of_the_bundled_database() {
        let db = patchbay_exposure::snapshot::embedded().unwrap();
        let selection = Selection {
            from: v("6.1.170"),
            to: v("6.1.176"),
            min_cvss: 7.0,
            only: &[],
        };
        let chosen = select(&db, &selection).unwrap();
        assert!(
            chosen.len() > 100,
            "the 6.1.170 → 6.1.176 window has hundreds of high CVEs, got {}",
            chosen.len()
        );
        for c in &chosen {
            assert!(c.score.is_some_and(|s| s >= 7.0), "{c:?}");
            let fixed = c.fixed_in.unwrap();
            assert!(fixed > v("6.1.170") && fixed <= v("6.1.176"), "{c:?}");
        }
        assert!(
            chosen.iter().filter(|c| !c.files.is_empty()).count() * 10 > chosen.len() * 9,
            "CNA records name the files of their fix"
        );
        // Lower threshold: more CVEs; an empty window: none.
        let all = select(
            &db,
            &Selection {
                min_cvss: 0.0,
                ..selection.clone()
            },
        )
        .unwrap();
        assert!(
            all.len() >= chosen.len(),
            "{} < {}",
            all.len(),
            chosen.len()
        );
        let none = select(
            &db,
            &Selection {
                to: v("6.1.170"),
                ..selection.clone()
            },
        )
        .unwrap();
        assert!(none.is_empty(), "{none:?}");

        // Named CVEs: kept even below the threshold; outside the window an error that says why.
        let first = chosen[0].id.clone();
        let named = select(
            &db,
            &Selection {
                min_cvss: 10.1,
                only: std::slice::from_ref(&first),
                ..selection.clone()
            },
        )
        .unwrap();
        assert_eq!(named.len(), 1);
        let unknown: CveId = "CVE-1999-0001".parse().unwrap();
        let err = select(
            &db,
            &Selection {
                only: &[first, unknown],
                ..selection
            },
        )
        .unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].reason.contains("not in the CVE database"), "{err:?}");
    }
}
