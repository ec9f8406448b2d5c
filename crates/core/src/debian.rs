//! A Debian kernel's release name, parsed: which series, which Debian release, which flavour.
//!
//! Debian names its kernels in two forms, and `uname -r` prints the name:
//! - with an ABI number, as up to Debian 12's 6.1: `6.1.0-56-amd64`, `6.1.0-57-cloud-amd64`
//!   (`<series>.0-<abi>-<flavour>`; the Debian release follows from the series: 6.1 is Debian 12);
//! - with the upstream version and the Debian release, from 6.12 on: `6.12.117+deb13-amd64`,
//!   `6.12.95+deb12-cloud-amd64` (`<x.y.z>+deb<N>-<flavour>`).
//!
//! [`DebianRelease`] is that name parsed once; [`KernelRelease`] stays the plain `uname -r`
//! text of any kernel (an agent may run on a kernel that is not Debian's).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{IdError, KernelRelease};
use crate::version::UpstreamVersion;

/// A stable kernel series such as 6.1 or 6.12 (major and minor version): the one type for the
/// kernel lines, the CVE data's series and the exposure reports. Text and JSON form `6.12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelSeries {
    major: u32,
    minor: u32,
}

impl KernelSeries {
    /// The series `major.minor`, e.g. `KernelSeries::new(6, 12)`.
    pub const fn new(major: u32, minor: u32) -> Self {
        KernelSeries { major, minor }
    }

    /// The series a release belongs to: 6.12 for 6.12.117.
    pub fn of(version: &UpstreamVersion) -> Self {
        KernelSeries::new(version.major, version.minor)
    }

    /// Whether release `v` belongs to this series.
    pub fn contains(&self, v: &UpstreamVersion) -> bool {
        KernelSeries::of(v) == *self
    }

    /// The series' mainline release, `6.12.0`.
    pub fn base(&self) -> UpstreamVersion {
        UpstreamVersion::new(self.major, self.minor, 0)
    }

    /// `(major, minor)`, as [`UpstreamVersion::series`] gives it.
    pub fn as_pair(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

impl From<(u32, u32)> for KernelSeries {
    fn from((major, minor): (u32, u32)) -> Self {
        KernelSeries::new(major, minor)
    }
}

impl Serialize for KernelSeries {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KernelSeries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for KernelSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for KernelSeries {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "kernel series";
        let (major, minor) = s
            .split_once('.')
            .ok_or_else(|| IdError::new(WHAT, s, "expected MAJOR.MINOR, e.g. 6.12"))?;
        match (decimal(major), decimal(minor)) {
            (Some(major), Some(minor)) => Ok(KernelSeries { major, minor }),
            _ => Err(IdError::new(WHAT, s, "expected MAJOR.MINOR, e.g. 6.12")),
        }
    }
}

/// A Debian release by its major version: 12 is "bookworm", 13 is "trixie".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Distribution(u32);

/// Debian releases whose kernels Patchbay can name, with their code names.
const CODENAMES: &[(u32, &str)] = &[
    (11, "bullseye"),
    (12, "bookworm"),
    (13, "trixie"),
    (14, "forky"),
];

/// The Debian release of each series named in the ABI-number form (`6.1.0-56-amd64`); from 6.12
/// on the name carries the Debian release itself.
const ABI_FORM_SERIES: &[((u32, u32), u32)] = &[((5, 10), 11), ((6, 1), 12)];

impl Distribution {
    /// Debian 12, "bookworm".
    pub const DEBIAN_12: Distribution = Distribution(12);
    /// Debian 13, "trixie".
    pub const DEBIAN_13: Distribution = Distribution(13);

    /// The Debian release of major version `number`, if Patchbay knows its code name.
    pub fn from_number(number: u32) -> Option<Distribution> {
        CODENAMES
            .iter()
            .any(|(known, _)| *known == number)
            .then_some(Distribution(number))
    }

    /// The major version: 12 for bookworm.
    pub fn number(self) -> u32 {
        self.0
    }

    /// The code name apt's suites use: `bookworm`, `trixie`.
    pub fn codename(self) -> &'static str {
        CODENAMES
            .iter()
            .find(|(number, _)| *number == self.0)
            .map_or("unknown", |(_, name)| name)
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Debian {}", self.0)
    }
}

impl FromStr for Distribution {
    type Err = IdError;
    /// `13`, `debian13`, `deb13` or a code name such as `trixie`.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let number = s
            .strip_prefix("debian")
            .or_else(|| s.strip_prefix("deb"))
            .unwrap_or(s);
        decimal(number)
            .and_then(Distribution::from_number)
            .or_else(|| {
                CODENAMES
                    .iter()
                    .find(|(_, name)| *name == s)
                    .map(|(n, _)| Distribution(*n))
            })
            .ok_or_else(|| {
                IdError::new(
                    "Debian release",
                    s,
                    "expected 12, 13, debian13 or a code name such as trixie",
                )
            })
    }
}

/// How a release name identifies its build within a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Build {
    /// `6.1.0-56-amd64`: the Debian ABI number.
    AbiNumber(u32),
    /// `6.12.117+deb13-amd64`: the upstream version.
    Version(UpstreamVersion),
}

/// A Debian kernel release name (what `uname -r` prints on Debian), parsed: series, Debian
/// release, flavour. Only the two shapes in the module docs are accepted (digits, dots, one
/// `+deb<N>`, lowercase letters and single dashes), so it is safe in package names and paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DebianRelease {
    release: KernelRelease,
    series: KernelSeries,
    distribution: Distribution,
    build: Build,
    /// Byte offset of the dash before the flavour.
    flavour_dash: usize,
}

fn decimal(text: &str) -> Option<u32> {
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

fn three_numbers(text: &str) -> Option<[u32; 3]> {
    let mut parts = text.split('.');
    let numbers = [
        decimal(parts.next()?)?,
        decimal(parts.next()?)?,
        decimal(parts.next()?)?,
    ];
    parts.next().is_none().then_some(numbers)
}

fn valid_flavour(flavour: &str) -> bool {
    !flavour.is_empty()
        && !flavour.starts_with('-')
        && !flavour.ends_with('-')
        && !flavour.contains("--")
        && flavour
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl FromStr for DebianRelease {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "Debian kernel release";
        let bad = |reason| IdError::new(WHAT, s, reason);
        if s.len() > 64 {
            return Err(bad("longer than 64 characters"));
        }
        let (head, rest) = s.split_once('-').ok_or_else(|| {
            bad("expected <x.y.z>-<abi>-<flavour> (6.1.0-56-amd64) or <x.y.z>+deb<N>-<flavour> (6.12.117+deb13-amd64)")
        })?;
        let (series, distribution, build, flavour_dash) =
            if let Some((version, debian)) = head.split_once('+') {
                let [major, minor, patch] =
                    three_numbers(version).ok_or_else(|| bad("the version must be x.y.z"))?;
                let number = debian
                    .strip_prefix("deb")
                    .and_then(decimal)
                    .ok_or_else(|| bad("expected +deb<N> after the version, e.g. +deb13"))?;
                let distribution = Distribution::from_number(number)
                    .ok_or_else(|| bad("names a Debian release Patchbay does not know"))?;
                let upstream: UpstreamVersion = format!("{major}.{minor}.{patch}")
                    .parse()
                    .map_err(|_| bad("the version must be x.y.z"))?;
                (
                    KernelSeries::new(major, minor),
                    distribution,
                    Build::Version(upstream),
                    head.len(),
                )
            } else {
                let [major, minor, zero] =
                    three_numbers(head).ok_or_else(|| bad("the series must be x.y.0"))?;
                if zero != 0 {
                    return Err(bad("the series must be x.y.0 in the ABI-number form"));
                }
                let (number, _) = rest
                    .split_once('-')
                    .ok_or_else(|| bad("missing -<flavour> after the ABI number"))?;
                let abi = decimal(number).ok_or_else(|| bad("the ABI number must be decimal"))?;
                let distribution = ABI_FORM_SERIES
                    .iter()
                    .find(|(series, _)| *series == (major, minor))
                    .map(|(_, debian)| Distribution(*debian))
                    .ok_or_else(|| bad("a series Debian does not name with ABI numbers"))?;
                (
                    KernelSeries::new(major, minor),
                    distribution,
                    Build::AbiNumber(abi),
                    head.len() + 1 + number.len(),
                )
            };
        let flavour = s.get(flavour_dash + 1..).unwrap_or("");
        if !valid_flavour(flavour) {
            return Err(bad(
                "the flavour must be lowercase letters/digits separated by single dashes",
            ));
        }
        Ok(DebianRelease {
            release: s.parse()?,
            series,
            distribution,
            build,
            flavour_dash,
        })
    }
}

impl DebianRelease {
    /// The name as `uname -r` prints it.
    pub fn as_str(&self) -> &str {
        self.release.as_str()
    }

    /// The same name as core's plain release type.
    pub fn kernel_release(&self) -> &KernelRelease {
        &self.release
    }

    /// The stable series: 6.1 for `6.1.0-56-amd64`, 6.12 for `6.12.117+deb13-amd64`.
    pub fn series(&self) -> KernelSeries {
        self.series
    }

    /// The Debian release that ships it: 12 for `6.1.0-56-amd64` and `6.12.95+deb12-amd64`.
    pub fn distribution(&self) -> Distribution {
        self.distribution
    }

    /// The flavour: `amd64`, `cloud-amd64`, `rt-amd64`.
    pub fn flavour(&self) -> &str {
        self.as_str().get(self.flavour_dash + 1..).unwrap_or("")
    }

    /// The name without its flavour: `6.1.0-56` or `6.12.117+deb13`; the headers shared by
    /// all flavours are `linux-headers-<base>-common`.
    pub fn base(&self) -> &str {
        self.as_str().get(..self.flavour_dash).unwrap_or("")
    }

    /// The Debian ABI number of the older form (56 for `6.1.0-56-amd64`), `None` from 6.12 on.
    pub fn abi_number(&self) -> Option<u32> {
        match self.build {
            Build::AbiNumber(n) => Some(n),
            Build::Version(_) => None,
        }
    }

    /// The upstream version when the name carries it (`6.12.117` for `6.12.117+deb13-amd64`);
    /// the ABI-number form does not (read it from the package version).
    pub fn named_version(&self) -> Option<UpstreamVersion> {
        match self.build {
            Build::AbiNumber(_) => None,
            Build::Version(v) => Some(v),
        }
    }

    /// Whether two releases are builds of one line: same series, Debian release and flavour.
    pub fn same_line(&self, other: &DebianRelease) -> bool {
        self.series == other.series
            && self.distribution == other.distribution
            && self.flavour() == other.flavour()
    }
}

impl Ord for DebianRelease {
    /// Series, then Debian release, then flavour, then the build (ABI number or version,
    /// numerically: -9 < -10, 6.12.9 < 6.12.10): within one line, older before newer.
    fn cmp(&self, other: &Self) -> Ordering {
        let build = |r: &DebianRelease| match r.build {
            Build::AbiNumber(n) => (0, n, None),
            Build::Version(v) => (1, 0, Some(v)),
        };
        self.series
            .cmp(&other.series)
            .then(self.distribution.cmp(&other.distribution))
            .then_with(|| self.flavour().cmp(other.flavour()))
            .then_with(|| build(self).cmp(&build(other)))
    }
}

impl PartialOrd for DebianRelease {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for DebianRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DebianRelease {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DebianRelease {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl KernelRelease {
    /// This release parsed as a Debian kernel's name, if it is one.
    pub fn debian(&self) -> Option<DebianRelease> {
        self.as_str().parse().ok()
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
    fn both_forms_parse_into_their_parts() {
        let old = release("6.1.0-56-amd64");
        assert_eq!(old.series().to_string(), "6.1");
        assert_eq!(old.distribution(), Distribution::DEBIAN_12);
        assert_eq!(old.flavour(), "amd64");
        assert_eq!(old.base(), "6.1.0-56");
        assert_eq!(old.abi_number(), Some(56));
        assert_eq!(old.named_version(), None);

        let cloud = release("6.1.0-57-cloud-amd64");
        assert_eq!(cloud.flavour(), "cloud-amd64");
        assert_eq!(cloud.base(), "6.1.0-57");

        let trixie = release("6.12.117+deb13-amd64");
        assert_eq!(trixie.series(), KernelSeries::new(6, 12));
        assert_eq!(trixie.distribution(), Distribution::DEBIAN_13);
        assert_eq!(trixie.distribution().codename(), "trixie");
        assert_eq!(trixie.base(), "6.12.117+deb13");
        assert_eq!(trixie.flavour(), "amd64");
        assert_eq!(trixie.abi_number(), None);
        assert_eq!(trixie.named_version().unwrap().to_string(), "6.12.117");

        let bookworm = release("6.12.95+deb12-cloud-amd64");
        assert_eq!(bookworm.distribution(), Distribution::DEBIAN_12);
        assert_eq!(bookworm.flavour(), "cloud-amd64");
        assert_eq!(
            bookworm.kernel_release().as_str(),
            "6.12.95+deb12-cloud-amd64"
        );
        assert_eq!(
            KernelRelease::from_str("6.12.95+deb12-cloud-amd64")
                .unwrap()
                .debian(),
            Some(bookworm)
        );
        assert_eq!(
            KernelRelease::from_str("6.8.0-45-generic")
                .unwrap()
                .debian(),
            None
        );
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "",
            "6.1.0",
            "6.1.0-56",
            "6.1.0-56-",
            "6.1-56-amd64",
            "6.1.0.1-56-amd64",
            "6.1.3-56-amd64",
            "6.1.0-x-amd64",
            "6.1.0-056-amd64",
            "6.1.0-56-AMD64",
            "6.1.0-56-amd64/../x",
            "6.1.0-56--amd64",
            "6.1.0-56-amd64-",
            "6.1.0-99999999999-amd64",
            "../6.1.0-56-amd64",
            "6.12.117+deb13",
            "6.12.117+deb13-",
            "6.12+deb13-amd64",
            "6.12.117+deb99-amd64",
            "6.12.117+ubuntu-amd64",
            "6.12.117+deb13+deb12-amd64",
            "6.12.0-1-amd64",
            "6.8.0-45-generic",
        ] {
            assert!(bad.parse::<DebianRelease>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn releases_order_within_a_line_numerically() {
        assert!(release("6.1.0-9-amd64") < release("6.1.0-10-amd64"));
        assert!(release("6.12.9+deb13-amd64") < release("6.12.10+deb13-amd64"));
        assert!(release("6.1.0-99-amd64") < release("6.12.1+deb12-amd64"));
        assert!(release("6.12.117+deb12-amd64") < release("6.12.90+deb13-amd64"));
        assert!(release("6.12.95+deb12-amd64").same_line(&release("6.12.117+deb12-amd64")));
        assert!(!release("6.12.95+deb12-amd64").same_line(&release("6.12.95+deb12-cloud-amd64")));
    }

    #[test]
    fn serde_round_trips_as_a_string() {
        let r = release("6.12.117+deb13-cloud-amd64");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"6.12.117+deb13-cloud-amd64\"");
        assert_eq!(serde_json::from_str::<DebianRelease>(&json).unwrap(), r);
        assert!(serde_json::from_str::<DebianRelease>("\"../etc\"").is_err());
    }

    #[test]
    fn series_and_distribution_parse() {
        assert_eq!(
            "6.12".parse::<KernelSeries>().unwrap(),
            KernelSeries::new(6, 12)
        );
        assert!("6".parse::<KernelSeries>().is_err());
        assert!("6.12.1".parse::<KernelSeries>().is_err());
        let s612 = KernelSeries::new(6, 12);
        assert!(s612.contains(&"6.12.95".parse().unwrap()));
        assert!(!s612.contains(&"6.1.95".parse().unwrap()));
        assert_eq!(s612.base().to_string(), "6.12.0");
        assert_eq!(serde_json::to_string(&s612).unwrap(), "\"6.12\"");
        assert_eq!(
            serde_json::from_str::<KernelSeries>("\"6.12\"").unwrap(),
            s612
        );
        assert!("6.x".parse::<KernelSeries>().is_err());
        for text in ["13", "debian13", "deb13", "trixie"] {
            assert_eq!(
                text.parse::<Distribution>().unwrap(),
                Distribution::DEBIAN_13
            );
        }
        assert!("ubuntu".parse::<Distribution>().is_err());
        assert_eq!(Distribution::DEBIAN_12.to_string(), "Debian 12");
    }
}
