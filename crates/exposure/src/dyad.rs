//! `.dyad` files of the kernel CNA: one `vulnerable_version:vulnerable_commit:fixed_version:
//! fixed_commit` pair per line (`#` comments). Version `0` means "since the beginning of git"
//! (vulnerable) or "not fixed" (fixed).
//!
//! How pairs become the ranges of a stable series `S` ([`ranges_for_series`], e.g. 6.1 or
//! 6.12; written for 6.1 below, the same for any series):
//! 1. A pair fixed in a 6.1.N release gives `[start, 6.1.N)`, where `start` is the vulnerable
//!    version if that is a 6.1.M release (a bug brought in by a stable backport), else 6.1.0
//!    (a bug that was in mainline 6.1 already).
//! 2. A pair vulnerable since a 6.1.M release and not fixed (`0`) gives `[6.1.M, ∞)`.
//! 3. If no pair touches 6.1.y, and some pair says the bug was in mainline at or before 6.1
//!    (vulnerable version `0` or a mainline release up to 6.1) and fixes it only after 6.1 (a
//!    later mainline or stable series) or not at all, then 6.1.y is vulnerable with no fix:
//!    `[6.1.0, ∞)`. A fix in mainline 6.1 or earlier means 6.1.0 already had it. A pair
//!    introduced by a stable backport (`5.4.44:…:0:0`, an end-of-life branch that never got
//!    the fix) speaks of that branch only, not of mainline: for a later series such as 6.12
//!    whose mainline already had the fix (6.8) it would be a false alarm.

use crate::{CveError, Range};
use patchbay_core::UpstreamVersion;

/// One vulnerable:fixed pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dyad {
    /// None: vulnerable since the beginning.
    pub vulnerable: Option<UpstreamVersion>,
    /// None: not fixed.
    pub fixed: Option<UpstreamVersion>,
    /// Whether the version has a patch part (a stable release, not a mainline tag).
    pub vulnerable_is_stable: bool,
    /// The same for the fixed version.
    pub fixed_is_stable: bool,
}

fn version(text: &str, what: &str) -> Result<(Option<UpstreamVersion>, bool), CveError> {
    if text == "0" {
        return Ok((None, false));
    }
    let v: UpstreamVersion = text
        .parse()
        .map_err(|e| CveError::malformed(what.to_owned(), e))?;
    Ok((Some(v), text.matches('.').count() == 2))
}

/// Parses a `.dyad` file; `what` names it in errors.
pub fn parse(text: &str, what: &str) -> Result<Vec<Dyad>, CveError> {
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let [v, _, f, _] = fields.as_slice() else {
            return Err(CveError::malformed(
                format!("{what} line {}", n + 1),
                "expected vulnerable_version:commit:fixed_version:commit",
            ));
        };
        let at = format!("{what} line {}", n + 1);
        let (vulnerable, vulnerable_is_stable) = version(v, &at)?;
        let (fixed, fixed_is_stable) = version(f, &at)?;
        pairs.push(Dyad {
            vulnerable,
            fixed,
            vulnerable_is_stable,
            fixed_is_stable,
        });
    }
    Ok(pairs)
}

/// The affected ranges of one stable series (e.g. `(6, 1)`), by the rules in the module docs.
pub fn ranges_for_series(pairs: &[Dyad], series: (u32, u32)) -> Vec<Range> {
    let base = UpstreamVersion::new(series.0, series.1, 0);
    let in_series = |v: &Option<UpstreamVersion>, stable: bool| {
        stable && v.is_some_and(|v| v.series() == series)
    };
    let mut ranges = Vec::new();
    for p in pairs {
        let vulnerable_here = in_series(&p.vulnerable, p.vulnerable_is_stable);
        if in_series(&p.fixed, p.fixed_is_stable) {
            let introduced = match p.vulnerable {
                Some(v) if vulnerable_here => v,
                Some(v) if v.series() > series => continue,
                _ => base,
            };
            if let Some(fixed) = p.fixed {
                if introduced < fixed {
                    ranges.push(Range {
                        introduced,
                        fixed: Some(fixed),
                    });
                }
            }
        } else if vulnerable_here && p.fixed.is_none() {
            if let Some(v) = p.vulnerable {
                ranges.push(Range {
                    introduced: v,
                    fixed: None,
                });
            }
        }
    }
    if ranges.is_empty() {
        let touches_series = pairs.iter().any(|p| {
            in_series(&p.vulnerable, p.vulnerable_is_stable)
                || in_series(&p.fixed, p.fixed_is_stable)
        });
        let in_mainline_base = |p: &Dyad| {
            p.vulnerable
                .is_none_or(|v| !p.vulnerable_is_stable && v.series() <= series)
        };
        let fixed_after_base = |p: &Dyad| p.fixed.is_none_or(|f| f.series() > series);
        if !touches_series
            && pairs
                .iter()
                .any(|p| in_mainline_base(p) && fixed_after_base(p))
        {
            ranges.push(Range {
                introduced: base,
                fixed: None,
            });
        }
    }
    ranges.sort_by_key(|r| r.introduced);
    ranges
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v(s: &str) -> UpstreamVersion {
        s.parse().unwrap()
    }

    #[test]
    fn rules() {
        let fixed_in_stable = parse("# c\n3.9:a:6.1.2:b\n3.9:a:6.2:c\n", "t").unwrap();
        assert_eq!(
            ranges_for_series(&fixed_in_stable, (6, 1)),
            vec![Range {
                introduced: v("6.1"),
                fixed: Some(v("6.1.2"))
            }]
        );
        let backport = parse("6.1.43:a:6.1.78:b\n6.7:c:6.8:d\n", "t").unwrap();
        assert_eq!(
            ranges_for_series(&backport, (6, 1)),
            vec![Range {
                introduced: v("6.1.43"),
                fixed: Some(v("6.1.78"))
            }]
        );
        let unfixed = parse("5.12:a:6.8:b\n5.12:a:6.6.20:c\n", "t").unwrap();
        assert_eq!(
            ranges_for_series(&unfixed, (6, 1)),
            vec![Range {
                introduced: v("6.1"),
                fixed: None
            }]
        );
        let never_fixed = parse("0:0:0:0\n", "t").unwrap();
        assert_eq!(ranges_for_series(&never_fixed, (6, 1)).len(), 1);
        let fixed_before = parse("5.4:a:6.1:b\n", "t").unwrap();
        assert!(ranges_for_series(&fixed_before, (6, 1)).is_empty());
        let introduced_later = parse("6.5:a:6.8:b\n", "t").unwrap();
        assert!(ranges_for_series(&introduced_later, (6, 1)).is_empty());
        let backport_unfixed = parse("6.1.50:a:0:0\n", "t").unwrap();
        assert_eq!(
            ranges_for_series(&backport_unfixed, (6, 1)),
            vec![Range {
                introduced: v("6.1.50"),
                fixed: None
            }]
        );
        // 6.12, from the upstream sample: a mainline bug fixed in 6.12.1 and later series.
        let fixed_in_6_12 = parse(
            "2.6.26:a:6.1.117:b\n2.6.26:a:6.11.8:c\n2.6.26:a:6.12.1:d\n2.6.26:a:6.13:e\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            ranges_for_series(&fixed_in_6_12, (6, 12)),
            vec![Range {
                introduced: v("6.12"),
                fixed: Some(v("6.12.1"))
            }]
        );
        // A bug a 6.12.34 backport brought in, fixed in 6.12.74; 6.1 has its own pair.
        let backport_6_12 = parse(
            "6.1.142:a:6.1.164:b\n6.12.34:c:6.12.74:d\n6.15.3:e:0:0\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            ranges_for_series(&backport_6_12, (6, 12)),
            vec![Range {
                introduced: v("6.12.34"),
                fixed: Some(v("6.12.74"))
            }]
        );
        assert_eq!(
            ranges_for_series(&backport_6_12, (6, 1)),
            vec![Range {
                introduced: v("6.1.142"),
                fixed: Some(v("6.1.164"))
            }]
        );
        // Mainline fixed it in 6.8, before 6.12; a stable branch that never got the fix
        // (6.4.8:…:0:0) does not make 6.12 vulnerable.
        let eol_branch = parse("6.1.43:a:6.1.78:b\n6.5:c:6.8:d\n6.4.8:e:0:0\n", "t").unwrap();
        assert!(ranges_for_series(&eol_branch, (6, 12)).is_empty());
        // Fixed in mainline 6.12 itself: 6.12.0 already had the fix.
        let fixed_in_mainline = parse("3.12:a:6.1.117:b\n3.12:a:6.12:c\n", "t").unwrap();
        assert!(ranges_for_series(&fixed_in_mainline, (6, 12)).is_empty());
        // Only fixed after 6.12 (a stable-only fix in 7.1.4): unfixed from 6.12.0.
        let fixed_later = parse("5.10:a:7.1.4:b\n", "t").unwrap();
        assert_eq!(
            ranges_for_series(&fixed_later, (6, 12)),
            vec![Range {
                introduced: v("6.12"),
                fixed: None
            }]
        );
        assert!(parse("1:2:3\n", "t").is_err());
        assert!(parse("x.y:a:6.1.2:b\n", "t").is_err());
    }
}
