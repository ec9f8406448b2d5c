use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use patchbay_core::UpstreamVersion;
use serde::{Deserialize, Serialize};

use crate::KernelError;

/// A Debian kernel ABI name such as `6.1.0-56-amd64`: `<x.y.z>-<abi number>-<flavour>`.
///
/// It ends up in package names, command lines and cache paths, so only this strict shape is
/// accepted (digits, dots, lowercase letters and single dashes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Abi(String);

/// The parsed parts of an ABI; kept private so `Abi` stays a plain validated string.
struct AbiParts {
    series: [u32; 3],
    number: u32,
    /// Byte offset of the dash between the ABI number and the flavour.
    flavour_dash: usize,
}

fn parse_abi(input: &str) -> Result<AbiParts, String> {
    if input.len() > 64 {
        return Err("too long".into());
    }
    let (series, rest) = input
        .split_once('-')
        .ok_or_else(|| "missing '-<abi number>-<flavour>'".to_string())?;
    let mut series_parts = [0u32; 3];
    let mut count = 0;
    for (slot, part) in series.split('.').enumerate() {
        let target = series_parts
            .get_mut(slot)
            .ok_or_else(|| format!("kernel series {series:?} must be x.y.z"))?;
        *target =
            parse_decimal(part).ok_or_else(|| format!("kernel series {series:?} must be x.y.z"))?;
        count += 1;
    }
    if count != 3 {
        return Err(format!("kernel series {series:?} must be x.y.z"));
    }
    let (number_text, flavour) = rest
        .split_once('-')
        .ok_or_else(|| "missing '-<flavour>' after the ABI number".to_string())?;
    let number = parse_decimal(number_text)
        .ok_or_else(|| format!("ABI number {number_text:?} is not a decimal number"))?;
    if flavour.is_empty()
        || flavour.starts_with('-')
        || flavour.ends_with('-')
        || flavour.contains("--")
        || !flavour
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "flavour {flavour:?} must be lowercase letters/digits separated by single dashes"
        ));
    }
    Ok(AbiParts {
        series: series_parts,
        number,
        flavour_dash: series.len() + 1 + number_text.len(),
    })
}

/// A plain decimal number without sign or leading zeros (except "0" itself).
fn parse_decimal(text: &str) -> Option<u32> {
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

impl Abi {
    /// The ABI as `uname -r` prints it, e.g. `6.1.0-56-amd64`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parts(&self) -> AbiParts {
        // Construction validated the string, so parsing again cannot fail; the fallback
        // only keeps this free of panics.
        parse_abi(&self.0).unwrap_or(AbiParts {
            series: [0; 3],
            number: 0,
            flavour_dash: self.0.len(),
        })
    }

    /// The Debian ABI number: 56 for `6.1.0-56-amd64`.
    pub fn number(&self) -> u32 {
        self.parts().number
    }

    /// The kernel series: `6.1.0` for `6.1.0-56-amd64`.
    pub fn series(&self) -> &str {
        self.0
            .split_once('-')
            .map_or(self.0.as_str(), |(series, _)| series)
    }

    /// The ABI without its flavour: `6.1.0-56` (names the `-common` headers package).
    pub fn base(&self) -> &str {
        self.0.get(..self.parts().flavour_dash).unwrap_or(&self.0)
    }

    /// The flavour: `amd64` for `6.1.0-56-amd64`.
    pub fn flavour(&self) -> &str {
        self.0.get(self.parts().flavour_dash + 1..).unwrap_or("")
    }

    /// `linux-image-6.1.0-56-amd64-unsigned`: the image package (the same kernel as the
    /// signed one, without the EFI signature wrapper).
    pub(crate) fn image_package(&self) -> String {
        format!("linux-image-{}-unsigned", self.0)
    }

    /// `linux-headers-6.1.0-56-amd64`: the flavour's headers package.
    pub(crate) fn headers_package(&self) -> String {
        format!("linux-headers-{}", self.0)
    }

    /// `linux-headers-6.1.0-56-common`: the headers shared by all flavours of the ABI.
    pub(crate) fn common_headers_package(&self) -> String {
        format!("linux-headers-{}-common", self.base())
    }

    /// `linux-image-6.1.0-56-amd64-dbg`: the debug vmlinux (source of the full System.map).
    pub(crate) fn dbg_package(&self) -> String {
        format!("linux-image-{}-dbg", self.0)
    }
}

impl FromStr for Abi {
    type Err = KernelError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse_abi(input).map_err(|reason| KernelError::InvalidAbi {
            input: input.to_string(),
            reason,
        })?;
        Ok(Abi(input.to_string()))
    }
}

impl TryFrom<String> for Abi {
    type Error = KernelError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Abi> for String {
    fn from(abi: Abi) -> Self {
        abi.0
    }
}

impl fmt::Display for Abi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ord for Abi {
    /// Series first, then ABI number (numerically: -9 < -10), then flavour.
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.parts(), other.parts());
        a.series
            .cmp(&b.series)
            .then(a.number.cmp(&b.number))
            .then_with(|| self.flavour().cmp(other.flavour()))
    }
}

impl PartialOrd for Abi {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
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
    /// The highest ABI apt offers.
    Newest,
    /// The second highest ABI apt offers.
    Older,
    /// Exactly this ABI; an error if apt does not offer it.
    Exact(Abi),
}

impl FromStr for KernelSelector {
    type Err = KernelError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "newest" => Ok(KernelSelector::Newest),
            "older" => Ok(KernelSelector::Older),
            other => {
                other
                    .parse()
                    .map(KernelSelector::Exact)
                    .map_err(|_| KernelError::InvalidSelector {
                        input: input.to_string(),
                    })
            }
        }
    }
}

impl fmt::Display for KernelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSelector::Newest => f.write_str("newest"),
            KernelSelector::Older => f.write_str("older"),
            KernelSelector::Exact(abi) => abi.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn abi_parses_and_exposes_parts() {
        let abi: Abi = "6.1.0-56-amd64".parse().unwrap();
        assert_eq!(abi.as_str(), "6.1.0-56-amd64");
        assert_eq!(abi.to_string(), "6.1.0-56-amd64");
        assert_eq!(abi.number(), 56);
        assert_eq!(abi.series(), "6.1.0");
        assert_eq!(abi.base(), "6.1.0-56");
        assert_eq!(abi.flavour(), "amd64");
        assert_eq!(abi.image_package(), "linux-image-6.1.0-56-amd64-unsigned");
        assert_eq!(abi.headers_package(), "linux-headers-6.1.0-56-amd64");
        assert_eq!(
            abi.common_headers_package(),
            "linux-headers-6.1.0-56-common"
        );
        assert_eq!(abi.dbg_package(), "linux-image-6.1.0-56-amd64-dbg");

        let cloud: Abi = "6.1.0-7-cloud-amd64".parse().unwrap();
        assert_eq!(cloud.number(), 7);
        assert_eq!(cloud.base(), "6.1.0-7");
        assert_eq!(cloud.flavour(), "cloud-amd64");
    }

    #[test]
    fn abi_rejects_malformed_input() {
        for bad in [
            "",
            "6.1.0",
            "6.1.0-56",
            "6.1.0-56-",
            "6.1-56-amd64",
            "6.1.0.1-56-amd64",
            "6.1.0-x-amd64",
            "6.1.0-056-amd64",
            "6.1.0-56-AMD64",
            "6.1.0-56-amd64/../x",
            "6.1.0-56-amd64 ",
            "6.1.0-56--amd64",
            "6.1.0-56-amd64-",
            "6.1.0-99999999999-amd64",
            "../6.1.0-56-amd64",
        ] {
            assert!(bad.parse::<Abi>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn abi_orders_numerically_and_serializes_as_string() {
        let nine: Abi = "6.1.0-9-amd64".parse().unwrap();
        let ten: Abi = "6.1.0-10-amd64".parse().unwrap();
        assert!(nine < ten);
        let json = serde_json::to_string(&ten).unwrap();
        assert_eq!(json, "\"6.1.0-10-amd64\"");
        let back: Abi = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ten);
        assert!(serde_json::from_str::<Abi>("\"../etc\"").is_err());
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
            KernelSelector::Newest
        );
        assert_eq!(
            "older".parse::<KernelSelector>().unwrap(),
            KernelSelector::Older
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
    }
}
