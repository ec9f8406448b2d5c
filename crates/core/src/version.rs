//! Upstream kernel versions (`6.1`, `6.1.192`) and Debian's package versions of them: one type
//! for the CVE database, the builder's windows, the kernel cache and the agent's `/proc/version`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::IdError;

/// `major.minor[.patch]`; a mainline release `6.1` is `6.1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpstreamVersion {
    /// `6` in `6.1.192`.
    pub major: u32,
    /// `1` in `6.1.192`.
    pub minor: u32,
    /// `192` in `6.1.192`; 0 for a mainline release such as `6.1`.
    pub patch: u32,
}

impl UpstreamVersion {
    /// `major.minor.patch`, e.g. `UpstreamVersion::new(6, 1, 192)` is `6.1.192`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        UpstreamVersion {
            major,
            minor,
            patch,
        }
    }

    /// The stable series (`6.1`).
    pub fn series(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// From a Debian package version of the kernel (`6.1.192-2`, `6.1.76-1+deb12u1`,
    /// `1:6.1.5-1`, `6.1.192-2~bpo11+1`): the upstream part, without the epoch, the Debian
    /// revision and a backport's `~…`/`+…` suffix.
    pub fn from_debian(package_version: &str) -> Result<Self, IdError> {
        let without_epoch = package_version
            .split_once(':')
            .map_or(package_version, |(_, rest)| rest);
        let upstream = without_epoch
            .rsplit_once('-')
            .map_or(without_epoch, |(upstream, _)| upstream);
        let upstream = upstream.split(['~', '+']).next().unwrap_or(upstream);
        upstream.parse()
    }
}

impl FromStr for UpstreamVersion {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || {
            IdError::new(
                "kernel version",
                s,
                "expected MAJOR.MINOR or MAJOR.MINOR.PATCH, e.g. 6.1.192",
            )
        };
        let mut parts = s.trim().split('.');
        let mut next = |required: bool| -> Result<u32, IdError> {
            match parts.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map_err(|_| bad())
                }
                None if !required => Ok(0),
                _ => Err(bad()),
            }
        };
        let v = UpstreamVersion::new(next(true)?, next(true)?, next(false)?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

impl fmt::Display for UpstreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for UpstreamVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UpstreamVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn parses_and_orders() {
        let v: UpstreamVersion = "6.1.192".parse().unwrap();
        assert_eq!(v, UpstreamVersion::new(6, 1, 192));
        assert_eq!(
            "6.1".parse::<UpstreamVersion>().unwrap(),
            UpstreamVersion::new(6, 1, 0)
        );
        assert!("6.1.9".parse::<UpstreamVersion>().unwrap() < "6.1.10".parse().unwrap());
        assert!("6.1.200".parse::<UpstreamVersion>().unwrap() < "6.2".parse().unwrap());
        for bad in ["", "6", "6.x", "6.1.2.3", "v6.1", "6..1"] {
            assert!(bad.parse::<UpstreamVersion>().is_err(), "{bad}");
        }
        assert_eq!(
            UpstreamVersion::from_debian("6.1.192-2").unwrap(),
            UpstreamVersion::new(6, 1, 192)
        );
        assert_eq!(
            UpstreamVersion::from_debian("6.1.76-1+deb12u1").unwrap(),
            UpstreamVersion::new(6, 1, 76)
        );
        for (debian, upstream) in [
            ("1:6.1.5-1", (6, 1, 5)),
            ("6.1.192-2~bpo11+1", (6, 1, 192)),
            ("6.12.57", (6, 12, 57)),
        ] {
            let (major, minor, patch) = upstream;
            assert_eq!(
                UpstreamVersion::from_debian(debian).unwrap(),
                UpstreamVersion::new(major, minor, patch),
                "{debian}"
            );
        }
        assert!(UpstreamVersion::from_debian("abc-1").is_err());
    }
}
