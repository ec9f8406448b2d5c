//! `.dyad` files of the kernel CNA: one `vulnerable_version:vulnerable_commit:fixed_version:
//! fixed_commit` pair per line (`#` comments). Version `0` means "since the beginning of git"
//! (vulnerable) or "not fixed" (fixed).
//!
//! How pairs become 6.1.y ranges ([`ranges_for_series`] with series 6.1):
//! 1. A pair fixed in a 6.1.N release gives `[start, 6.1.N)`, where `start` is the vulnerable
//!    version if that is a 6.1.M release (a bug brought in by a stable backport), else 6.1.0
//!    (a bug that was in mainline 6.1 already).
//! 2. A pair vulnerable since a 6.1.M release and not fixed (`0`) gives `[6.1.M, ∞)`.
//! 3. If no pair touches 6.1.y, the bug was in mainline at or before 6.1 (vulnerable version
//!    `0` or a mainline/stable version of a series up to 6.1), and some pair fixes it only after
//!    6.1 (a later mainline or stable series) or not at all, then 6.1.y is vulnerable with no
//!    fix: `[6.1.0, ∞)`. A fix in mainline 6.1 or earlier means 6.1.0 already had it.

use crate::version::UpstreamVersion;
use crate::{CveError, Range};

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
        let in_mainline_base = |p: &Dyad| p.vulnerable.is_none_or(|v| v.series() <= series);
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
        assert!(parse("1:2:3\n", "t").is_err());
        assert!(parse("x.y:a:6.1.2:b\n", "t").is_err());
    }
}
