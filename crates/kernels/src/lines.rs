//! The table of kernel lines Patchbay supports: which series each Debian release ships, from
//! which apt suites, with which source package. Nothing else in the code names a series.
//!
//! A *line* is the sequence of builds of one series for one Debian release and flavour
//! (`6.12` / Debian 13 / `cloud-amd64`): `newest` and `older` pick within a line.

use std::fmt;
use std::str::FromStr;

use patchbay_core::{DebianRelease, Distribution, KernelSeries};

use crate::KernelError;

/// A flavour Patchbay builds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flavour {
    /// `amd64`: the generic x86-64 kernel.
    Amd64,
    /// `cloud-amd64`: the kernel for virtual machines in clouds (fewer drivers).
    CloudAmd64,
}

impl Flavour {
    /// Every supported flavour.
    pub const ALL: [Flavour; 2] = [Flavour::Amd64, Flavour::CloudAmd64];

    /// The flavour as it ends a release name.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Amd64 => "amd64",
            Flavour::CloudAmd64 => "cloud-amd64",
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Flavour {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, KernelError> {
        match s {
            "amd64" => Ok(Flavour::Amd64),
            "cloud-amd64" | "cloud" => Ok(Flavour::CloudAmd64),
            _ => Err(KernelError::UnsupportedLine {
                line: format!("flavour {s:?}"),
                supported: supported_lines(),
            }),
        }
    }
}

/// Which part of Debian's archive a suite lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Archive {
    /// `debian`: the release, its updates and backports.
    Main,
    /// `debian-security`: security updates.
    Security,
}

/// One apt suite, e.g. `trixie-security` in the security archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Suite {
    pub(crate) archive: Archive,
    pub(crate) name: &'static str,
}

const fn main(name: &'static str) -> Suite {
    Suite {
        archive: Archive::Main,
        name,
    }
}

const fn security(name: &'static str) -> Suite {
    Suite {
        archive: Archive::Security,
        name,
    }
}

/// One series as one Debian release ships it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesRow {
    pub(crate) series: KernelSeries,
    pub(crate) distribution: Distribution,
    /// The source package holding exactly this series' tree (`linux-source-6.12`).
    pub(crate) source_package: &'static str,
    /// The suites carrying its images and sources.
    pub(crate) suites: &'static [Suite],
}

/// The table. Debian 12 ships 6.1 (its own) and 6.12 (security and backports); Debian 13
/// ships 6.12. The order is the listing order.
pub(crate) const SERIES: &[SeriesRow] = &[
    SeriesRow {
        series: KernelSeries::new(6, 1),
        distribution: Distribution::DEBIAN_12,
        source_package: "linux-source-6.1",
        suites: &[
            main("bookworm"),
            main("bookworm-updates"),
            security("bookworm-security"),
        ],
    },
    SeriesRow {
        series: KernelSeries::new(6, 12),
        distribution: Distribution::DEBIAN_12,
        source_package: "linux-source-6.12",
        suites: &[security("bookworm-security"), main("bookworm-backports")],
    },
    SeriesRow {
        series: KernelSeries::new(6, 12),
        distribution: Distribution::DEBIAN_13,
        source_package: "linux-source-6.12",
        suites: &[
            main("trixie"),
            main("trixie-updates"),
            security("trixie-security"),
        ],
    },
];

/// The row of a series shipped by a Debian release, if Patchbay supports that pair.
pub(crate) fn row(series: KernelSeries, distribution: Distribution) -> Option<&'static SeriesRow> {
    SERIES
        .iter()
        .find(|r| r.series == series && r.distribution == distribution)
}

/// The newest Debian release shipping `series` (Debian 13 for 6.12, Debian 12 for 6.1).
fn newest_distribution(series: KernelSeries) -> Option<Distribution> {
    SERIES
        .iter()
        .filter(|r| r.series == series)
        .map(|r| r.distribution)
        .max()
}

/// Every suite of the table, once each, in table order.
pub(crate) fn all_suites() -> Vec<Suite> {
    let mut suites: Vec<Suite> = Vec::new();
    for suite in SERIES.iter().flat_map(|r| r.suites.iter()) {
        if !suites.contains(suite) {
            suites.push(*suite);
        }
    }
    suites
}

fn supported_lines() -> String {
    SERIES
        .iter()
        .map(|r| {
            format!(
                "{} on {} ({})",
                r.series,
                r.distribution,
                Flavour::ALL.map(Flavour::as_str).join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A line of Debian kernels: one series, one Debian release, one flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelLine {
    series: KernelSeries,
    distribution: Distribution,
    flavour: Flavour,
}

impl Default for KernelLine {
    /// Debian 12's own 6.1, `amd64`: what `newest` meant before there were other lines.
    fn default() -> Self {
        KernelLine {
            series: KernelSeries::new(6, 1),
            distribution: Distribution::DEBIAN_12,
            flavour: Flavour::Amd64,
        }
    }
}

impl KernelLine {
    /// The line named by a command line's `--series`, `--distribution` and `--flavour`; each
    /// left out takes its default: series 6.1, the newest Debian release shipping the series,
    /// flavour `amd64`. Refuses a pair the table does not hold.
    pub fn choose(
        series: Option<KernelSeries>,
        distribution: Option<Distribution>,
        flavour: Option<Flavour>,
    ) -> Result<KernelLine, KernelError> {
        let series = series.unwrap_or(KernelSeries::new(6, 1));
        let distribution = match distribution {
            Some(d) => d,
            None => newest_distribution(series).ok_or_else(|| KernelError::UnsupportedLine {
                line: format!("series {series}"),
                supported: supported_lines(),
            })?,
        };
        let line = KernelLine {
            series,
            distribution,
            flavour: flavour.unwrap_or(Flavour::Amd64),
        };
        row(series, distribution).ok_or_else(|| KernelError::UnsupportedLine {
            line: line.to_string(),
            supported: supported_lines(),
        })?;
        Ok(line)
    }

    /// The line a release belongs to, if Patchbay supports it.
    pub fn of(release: &DebianRelease) -> Result<KernelLine, KernelError> {
        let flavour: Flavour = release.flavour().parse()?;
        let line = KernelLine {
            series: release.series(),
            distribution: release.distribution(),
            flavour,
        };
        row(line.series, line.distribution).ok_or_else(|| KernelError::UnsupportedLine {
            line: format!("{release} ({line})"),
            supported: supported_lines(),
        })?;
        Ok(line)
    }

    /// Every supported line, in listing order.
    pub fn all() -> Vec<KernelLine> {
        let mut lines = Vec::new();
        for row in SERIES {
            for flavour in Flavour::ALL {
                lines.push(KernelLine {
                    series: row.series,
                    distribution: row.distribution,
                    flavour,
                });
            }
        }
        lines
    }

    /// Whether a release is a build of this line.
    pub fn contains(&self, release: &DebianRelease) -> bool {
        release.series() == self.series
            && release.distribution() == self.distribution
            && release.flavour() == self.flavour.as_str()
    }

    /// The series.
    pub fn series(&self) -> KernelSeries {
        self.series
    }

    /// The Debian release.
    pub fn distribution(&self) -> Distribution {
        self.distribution
    }

    /// The flavour.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The source package of this line's tree, e.g. `linux-source-6.12`.
    pub fn source_package(&self) -> &'static str {
        row(self.series, self.distribution).map_or("", |r| r.source_package)
    }
}

impl fmt::Display for KernelLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {} ({}), {}",
            self.series,
            self.distribution,
            self.distribution.codename(),
            self.flavour
        )
    }
}

/// The source package holding a release's tree (`linux-source-6.12` for `6.12.95+deb12-amd64`).
pub fn source_package_of(release: &DebianRelease) -> Result<&'static str, KernelError> {
    row(release.series(), release.distribution())
        .map(|r| r.source_package)
        .ok_or_else(|| KernelError::UnsupportedLine {
            line: release.to_string(),
            supported: supported_lines(),
        })
}

/// Which Debian release a package version of a series was built for: a rebuild for an older
/// release says so in its version (`~deb12u1`, `~bpo12+1`); any other is the newest release
/// in the table shipping the series (Debian 13 for 6.12, Debian 12 for 6.1).
pub(crate) fn distribution_of_package(
    series: KernelSeries,
    package_version: &str,
) -> Option<Distribution> {
    let rebuilt_for = ["~deb", "~bpo"].iter().find_map(|marker| {
        let (_, after) = package_version.rsplit_once(marker)?;
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    match rebuilt_for {
        Some(n) => Distribution::from_number(n),
        None => newest_distribution(series),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn release(s: &str) -> DebianRelease {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_pick_debian12_6_1_and_the_newest_release_of_a_series() {
        assert_eq!(
            KernelLine::choose(None, None, None).unwrap(),
            KernelLine::default()
        );
        let trixie = KernelLine::choose(Some("6.12".parse().unwrap()), None, None).unwrap();
        assert_eq!(trixie.distribution(), Distribution::DEBIAN_13);
        assert_eq!(trixie.source_package(), "linux-source-6.12");
        let bookworm = KernelLine::choose(
            Some("6.12".parse().unwrap()),
            Some(Distribution::DEBIAN_12),
            Some(Flavour::CloudAmd64),
        )
        .unwrap();
        assert!(bookworm.contains(&release("6.12.95+deb12-cloud-amd64")));
        assert!(!bookworm.contains(&release("6.12.95+deb12-amd64")));
        let message = KernelLine::choose(
            Some("6.1".parse().unwrap()),
            Some(Distribution::DEBIAN_13),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("6.12 on Debian 13"), "{message}");
        assert!(KernelLine::choose(Some("5.10".parse().unwrap()), None, None).is_err());
    }

    #[test]
    fn releases_find_their_line() {
        let line = KernelLine::of(&release("6.1.0-57-cloud-amd64")).unwrap();
        assert_eq!(line.flavour(), Flavour::CloudAmd64);
        assert_eq!(line.series().to_string(), "6.1");
        assert!(KernelLine::of(&release("6.12.117+deb13-rt-amd64")).is_err());
        assert!(KernelLine::of(&release("5.10.0-30-amd64")).is_err());
        assert_eq!(KernelLine::all().len(), 6);
        assert_eq!(
            source_package_of(&release("6.12.117+deb13-amd64")).unwrap(),
            "linux-source-6.12"
        );
    }

    #[test]
    fn package_versions_name_their_debian_release() {
        let s612 = KernelSeries::new(6, 12);
        let of = |v| distribution_of_package(s612, v).map(Distribution::number);
        assert_eq!(of("6.12.107-1"), Some(13));
        assert_eq!(of("6.12.107-1~deb12u1"), Some(12));
        assert_eq!(of("6.12.95-1~bpo12+1"), Some(12));
        assert_eq!(
            distribution_of_package(KernelSeries::new(6, 1), "6.1.192-2").map(Distribution::number),
            Some(12)
        );
    }

    #[test]
    fn suites_are_listed_once() {
        let suites = all_suites();
        assert_eq!(
            suites
                .iter()
                .filter(|s| s.name == "bookworm-security")
                .count(),
            1
        );
        assert!(suites
            .iter()
            .any(|s| s.name == "trixie-security" && s.archive == Archive::Security));
    }
}
