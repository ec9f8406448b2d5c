//! A Debian kernel release's packages, and which kernel a command line asks for.

use std::fmt;
use std::str::FromStr;

use patchbay_core::{DebianRelease, UpstreamVersion};

use crate::{KernelError, KernelLine};

/// The Debian packages of one kernel release.
pub(crate) trait Packages {
    /// `linux-image-<release>-unsigned`: the image package (the same kernel as the signed
    /// one, without the EFI signature wrapper).
    fn image_package(&self) -> String;
    /// `linux-headers-<release>`: the flavour's headers package.
    fn headers_package(&self) -> String;
    /// `linux-headers-<base>-common`: the headers shared by all flavours of the build.
    fn common_headers_package(&self) -> String;
    /// `linux-image-<release>-dbg`: the debug vmlinux (source of the full System.map).
    fn dbg_package(&self) -> String;
}

impl Packages for DebianRelease {
    fn image_package(&self) -> String {
        format!("linux-image-{self}-unsigned")
    }

    fn headers_package(&self) -> String {
        format!("linux-headers-{self}")
    }

    fn common_headers_package(&self) -> String {
        format!("linux-headers-{}-common", self.base())
    }

    fn dbg_package(&self) -> String {
        format!("linux-image-{self}-dbg")
    }
}

/// Parses a release name given on a command line or found in apt, with the kernels crate's
/// error.
pub(crate) fn parse_release(input: &str) -> Result<DebianRelease, KernelError> {
    input
        .parse()
        .map_err(|e: patchbay_core::IdError| KernelError::InvalidRelease {
            input: input.chars().take(80).collect(),
            reason: e.to_string(),
        })
}

/// Checks a Debian package version before it is used in a path or on a command line.
pub(crate) fn validate_package_version(version: &str) -> Result<(), KernelError> {
    let bad = |reason: &str| KernelError::InvalidPackageVersion {
        input: version.to_string(),
        reason: reason.to_string(),
    };
    if version.is_empty() || version.len() > 128 {
        return Err(bad("empty or too long"));
    }
    if !version.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad("must start with a digit"));
    }
    if !version
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b'-' | b':'))
    {
        return Err(bad("only letters, digits and . + ~ - : are allowed"));
    }
    Ok(())
}

/// The upstream kernel version in a Debian package version: `6.1.192-2` → `6.1.192`
/// (the epoch and the Debian revision are dropped).
pub fn upstream_version_of(package_version: &str) -> Result<UpstreamVersion, KernelError> {
    validate_package_version(package_version)?;
    // Core's one rule for Debian versions (epoch, revision and backport suffix dropped).
    UpstreamVersion::from_debian(package_version).map_err(|e| KernelError::InvalidPackageVersion {
        input: package_version.to_string(),
        reason: format!("its upstream part is not a kernel version like 6.1.192: {e}"),
    })
}

/// Which kernel to use, as given on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSelector {
    /// The newest build of a line apt offers.
    Newest(KernelLine),
    /// The second newest build of a line apt offers.
    Older(KernelLine),
    /// Exactly this release; an error if apt does not offer it.
    Exact(DebianRelease),
}

impl KernelSelector {
    /// The newest build of Debian 12's 6.1 (`amd64`).
    pub fn newest() -> Self {
        KernelSelector::Newest(KernelLine::default())
    }

    /// The second newest build of Debian 12's 6.1 (`amd64`).
    pub fn older() -> Self {
        KernelSelector::Older(KernelLine::default())
    }

    /// `newest`, `older` (within `line`) or a release name such as `6.12.117+deb13-amd64`.
    pub fn parse_in(input: &str, line: KernelLine) -> Result<Self, KernelError> {
        match input {
            "newest" => Ok(KernelSelector::Newest(line)),
            "older" => Ok(KernelSelector::Older(line)),
            other => parse_release(other)
                .map(KernelSelector::Exact)
                .map_err(|_| KernelError::InvalidSelector {
                    input: input.chars().take(80).collect(),
                }),
        }
    }

    /// The line this selector picks from.
    pub fn line(&self) -> Result<KernelLine, KernelError> {
        match self {
            KernelSelector::Newest(line) | KernelSelector::Older(line) => Ok(*line),
            KernelSelector::Exact(release) => KernelLine::of(release),
        }
    }
}

impl FromStr for KernelSelector {
    type Err = KernelError;

    /// `newest` and `older` pick in Debian 12's 6.1 `amd64` line; see [`KernelSelector::parse_in`].
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        KernelSelector::parse_in(input, KernelLine::default())
    }
}

impl fmt::Display for KernelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSelector::Newest(line) if *line == KernelLine::default() => f.write_str("newest"),
            KernelSelector::Older(line) if *line == KernelLine::default() => f.write_str("older"),
            KernelSelector::Newest(line) => write!(f, "newest ({line})"),
            KernelSelector::Older(line) => write!(f, "older ({line})"),
            KernelSelector::Exact(release) => release.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn packages_are_named_for_both_forms() {
        let release: DebianRelease = "6.1.0-56-amd64".parse().unwrap();
        assert_eq!(
            release.image_package(),
            "linux-image-6.1.0-56-amd64-unsigned"
        );
        assert_eq!(release.headers_package(), "linux-headers-6.1.0-56-amd64");
        assert_eq!(
            release.common_headers_package(),
            "linux-headers-6.1.0-56-common"
        );
        assert_eq!(release.dbg_package(), "linux-image-6.1.0-56-amd64-dbg");
        let trixie: DebianRelease = "6.12.117+deb13-cloud-amd64".parse().unwrap();
        assert_eq!(
            trixie.image_package(),
            "linux-image-6.12.117+deb13-cloud-amd64-unsigned"
        );
        assert_eq!(
            trixie.common_headers_package(),
            "linux-headers-6.12.117+deb13-common"
        );
        assert!(parse_release("6.1.0-56-amd64/..").is_err());
    }

    #[test]
    fn upstream_version_drops_revision_and_epoch() {
        assert_eq!(
            upstream_version_of("6.1.192-2").unwrap().to_string(),
            "6.1.192"
        );
        assert_eq!(
            upstream_version_of("6.1.170-3").unwrap().to_string(),
            "6.1.170"
        );
        assert_eq!(
            upstream_version_of("1:6.1.5-1").unwrap().to_string(),
            "6.1.5"
        );
        assert_eq!(
            upstream_version_of("6.1.192-2~bpo11+1")
                .unwrap()
                .to_string(),
            "6.1.192"
        );
        assert_eq!(
            upstream_version_of("6.12.57").unwrap().to_string(),
            "6.12.57"
        );
        assert!(upstream_version_of("").is_err());
        assert!(upstream_version_of("abc-1").is_err());
        assert!(upstream_version_of("6.1.192-2/..").is_err());
        assert!(upstream_version_of("6-1").is_err());
    }

    #[test]
    fn selector_parses() {
        assert_eq!(
            "newest".parse::<KernelSelector>().unwrap(),
            KernelSelector::newest()
        );
        assert_eq!(
            "older".parse::<KernelSelector>().unwrap(),
            KernelSelector::older()
        );
        assert_eq!(
            "6.1.0-47-amd64".parse::<KernelSelector>().unwrap(),
            KernelSelector::Exact("6.1.0-47-amd64".parse().unwrap())
        );
        assert!("Newest".parse::<KernelSelector>().is_err());
        assert!("latest".parse::<KernelSelector>().is_err());
        assert_eq!(
            "6.1.0-47-amd64"
                .parse::<KernelSelector>()
                .unwrap()
                .to_string(),
            "6.1.0-47-amd64"
        );
        let trixie = KernelLine::choose(Some("6.12".parse().unwrap()), None, None).unwrap();
        let selector = KernelSelector::parse_in("newest", trixie).unwrap();
        assert_eq!(selector.line().unwrap(), trixie);
        assert_eq!(
            selector.to_string(),
            "newest (6.12 on Debian 13 (trixie), amd64)"
        );
        let exact = KernelSelector::parse_in("6.12.95+deb12-amd64", trixie).unwrap();
        assert_eq!(exact.line().unwrap().distribution().number(), 12);
    }
}
