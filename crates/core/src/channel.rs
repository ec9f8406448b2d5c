//! What a channel serves, as the server signs it and the agent reads it.
//!
//! A channel document is a TUF target (`channels/<name>.json`): the server's signature covers it
//! like any bundle, so a host's level is decided by signed data, never by what an API response
//! says. The agent evaluates it for its own build-id, host seed and clock
//! ([`KernelRollout::level_for`]); the server uses the same function to show what hosts get.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{BuildId, IdError, PatchLevel, Sha256};

/// The only channel document format this version reads and writes.
pub const CHANNEL_FORMAT: u32 = 1;

/// Channel documents are small; anything larger is refused before parsing.
pub const CHANNEL_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// The channel every registration key uses unless told otherwise.
pub const DEFAULT_CHANNEL: &str = "production";

/// A channel name: `[a-z0-9][a-z0-9-]{0,39}` (it becomes part of a TUF target path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelName(String);

impl ChannelName {
    /// The name as written, e.g. `production` (already validated).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `production`.
    pub fn default_channel() -> Self {
        ChannelName(DEFAULT_CHANNEL.to_owned())
    }

    /// The TUF target that holds this channel's document.
    pub fn target_name(&self) -> String {
        format!("channels/{}.json", self.0)
    }
}

impl FromStr for ChannelName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut bytes = s.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !first_ok
            || s.len() > 40
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(IdError::new(
                "channel name",
                s,
                "expected 1 to 40 of a-z, 0-9 and '-', starting with a letter or digit",
            ));
        }
        Ok(ChannelName(s.to_owned()))
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ChannelName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A host's stable random seed (32 hex digits), assigned at registration. It places the host
/// in or out of a staged wave; the same seed gives the same answer on server and agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostSeed(String);

impl HostSeed {
    /// The seed as 32 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host's bucket (0..100) for one rollout: different levels shuffle hosts differently,
    /// so the same hosts are not always first.
    pub fn bucket(&self, build_id: &BuildId, level: PatchLevel) -> u8 {
        let digest = Sha256::of(format!("{}:{}:{}", self.0, build_id, level).as_bytes());
        let prefix = digest.as_str().get(..8).unwrap_or("0");
        let n = u32::from_str_radix(prefix, 16).unwrap_or(0);
        u8::try_from(n % 100).unwrap_or(0)
    }
}

impl FromStr for HostSeed {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::new("host seed", s, "expected 32 hex digits"));
        }
        Ok(HostSeed(s.to_ascii_lowercase()))
    }
}

impl Serialize for HostSeed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostSeed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The TUF target name of a bundle: `bundles/<build-id>/<level>.pbb`.
pub fn bundle_target_name(build_id: &BuildId, level: PatchLevel) -> String {
    format!("bundles/{build_id}/{level}.pbb")
}

/// One step of a staged rollout: from `at` (unix seconds) on, `percent` of the channel's hosts
/// (by [`HostSeed::bucket`]) get the new level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Unix time (seconds) from which this wave applies.
    pub at: i64,
    /// Share of hosts in the rollout from `at` on, 0 to 100 (larger values count as 100).
    pub percent: u8,
}

/// What a channel serves to the hosts running one kernel build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRollout {
    /// The level being rolled out (or served, once the rollout is complete).
    pub level: PatchLevel,
    /// What hosts get while they are not (yet) in the rollout; `None`: no patch.
    pub previous: Option<PatchLevel>,
    /// `deploy-after`: no host gets `level` before this unix time.
    pub effective_at: i64,
    /// Staged waves; empty means every host at `effective_at`.
    pub waves: Vec<Wave>,
    /// A pinned kernel is not changed by promotions until unpinned.
    pub pinned: bool,
}

impl KernelRollout {
    /// The percentage of hosts that get `level` at `now`.
    pub fn percent_at(&self, now: i64) -> u8 {
        if now < self.effective_at {
            return 0;
        }
        if self.waves.is_empty() {
            return 100;
        }
        self.waves
            .iter()
            .filter(|w| w.at <= now)
            .map(|w| w.percent.min(100))
            .max()
            .unwrap_or(0)
    }

    /// The level a host with `seed` should run at `now`; `None`: no patch.
    pub fn level_for(&self, build_id: &BuildId, seed: &HostSeed, now: i64) -> Option<PatchLevel> {
        let percent = self.percent_at(now);
        if percent >= 100 || seed.bucket(build_id, self.level) < percent {
            Some(self.level)
        } else {
            self.previous
        }
    }
}

/// The signed document of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelDoc {
    /// Document format; only [`CHANNEL_FORMAT`] is accepted.
    pub format: u32,
    /// The channel this document is for; the agent refuses one for another channel.
    pub channel: ChannelName,
    /// Increases with every change of this channel (the audit log uses the same number).
    pub serial: u64,
    /// RFC 3339 UTC time of the change.
    pub updated: String,
    /// What the channel serves, per kernel build; a build not listed gets no patch.
    pub kernels: BTreeMap<BuildId, KernelRollout>,
}

/// Why bytes are not a channel document this version can use.
#[derive(Debug, thiserror::Error)]
pub enum ChannelDocError {
    /// The document is larger than [`CHANNEL_MAX_BYTES`] (its size in bytes); not parsed.
    #[error("channel document is {0} bytes, more than the {CHANNEL_MAX_BYTES} allowed")]
    TooLarge(u64),
    /// The bytes are not JSON of the expected shape (unknown fields included).
    #[error("channel document is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// The document declares a format other than [`CHANNEL_FORMAT`] (the one it declares).
    #[error("channel document has format {0}; this version reads format {CHANNEL_FORMAT}: update the agent")]
    Format(u32),
    /// The document is signed and valid but names a different channel than the one asked for.
    #[error("channel document is for channel {found}, expected {expected}")]
    WrongChannel {
        /// The channel the caller asked for.
        expected: ChannelName,
        /// The channel the document names.
        found: ChannelName,
    },
}

impl ChannelDoc {
    /// An empty document for a new channel.
    pub fn new(channel: ChannelName, updated: String) -> Self {
        ChannelDoc {
            format: CHANNEL_FORMAT,
            channel,
            serial: 0,
            updated,
            kernels: BTreeMap::new(),
        }
    }

    /// Parses a document that must belong to `expected`.
    pub fn parse(bytes: &[u8], expected: &ChannelName) -> Result<Self, ChannelDocError> {
        let len = bytes.len() as u64;
        if len > CHANNEL_MAX_BYTES {
            return Err(ChannelDocError::TooLarge(len));
        }
        // Read the format alone first: a newer format would otherwise fail the strict parse
        // (unknown fields) with a JSON error instead of the actionable "update the agent".
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let probe: FormatOnly = serde_json::from_slice(bytes)?;
        if probe.format != CHANNEL_FORMAT {
            return Err(ChannelDocError::Format(probe.format));
        }
        let doc: ChannelDoc = serde_json::from_slice(bytes)?;
        if &doc.channel != expected {
            return Err(ChannelDocError::WrongChannel {
                expected: expected.clone(),
                found: doc.channel,
            });
        }
        Ok(doc)
    }

    /// Canonical bytes (pretty JSON, sorted kernels) as signed and served.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising these plain types (string keys, no maps with non-string keys) cannot
        // fail; the fallback only keeps this free of panics.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn bid() -> BuildId {
        "ab".repeat(20).parse().unwrap()
    }

    fn level(n: u32) -> PatchLevel {
        n.try_into().unwrap()
    }

    fn seeds(n: usize) -> Vec<HostSeed> {
        (0..n)
            .map(|i| format!("{i:032x}").parse().unwrap())
            .collect()
    }

    #[test]
    fn channel_names_are_checked() {
        assert!("production".parse::<ChannelName>().is_ok());
        assert!("wave-2".parse::<ChannelName>().is_ok());
        for bad in ["", "-x", "Prod", "a/b", "../x", &"x".repeat(41)] {
            assert!(bad.parse::<ChannelName>().is_err(), "{bad:?}");
        }
        assert_eq!(
            ChannelName::default_channel().target_name(),
            "channels/production.json"
        );
    }

    #[test]
    fn deploy_after_holds_the_previous_level() {
        let rollout = KernelRollout {
            level: level(2),
            previous: Some(level(1)),
            effective_at: 1000,
            waves: vec![],
            pinned: false,
        };
        let seed = &seeds(1)[0];
        assert_eq!(rollout.level_for(&bid(), seed, 999), Some(level(1)));
        assert_eq!(rollout.level_for(&bid(), seed, 1000), Some(level(2)));
    }

    #[test]
    fn waves_widen_over_time_and_keep_early_hosts() {
        let rollout = KernelRollout {
            level: level(3),
            previous: None,
            effective_at: 0,
            waves: vec![
                Wave { at: 0, percent: 10 },
                Wave {
                    at: 100,
                    percent: 50,
                },
                Wave {
                    at: 200,
                    percent: 100,
                },
            ],
            pinned: false,
        };
        let hosts = seeds(1000);
        let count = |now| {
            hosts
                .iter()
                .filter(|s| rollout.level_for(&bid(), s, now).is_some())
                .count()
        };
        let (early, middle, late) = (count(50), count(150), count(250));
        assert!((50..=150).contains(&early), "10 % wave got {early} of 1000");
        assert!(
            (400..=600).contains(&middle),
            "50 % wave got {middle} of 1000"
        );
        assert_eq!(late, 1000);
        // Widening never takes the level away from a host that had it.
        for s in &hosts {
            if rollout.level_for(&bid(), s, 50).is_some() {
                assert!(rollout.level_for(&bid(), s, 150).is_some());
            }
        }
    }

    #[test]
    fn documents_round_trip_and_are_checked() {
        let name: ChannelName = "staging".parse().unwrap();
        let mut doc = ChannelDoc::new(name.clone(), "2026-11-22T00:00:00Z".into());
        doc.kernels.insert(
            bid(),
            KernelRollout {
                level: level(1),
                previous: None,
                effective_at: 0,
                waves: vec![],
                pinned: true,
            },
        );
        let bytes = doc.to_bytes();
        assert_eq!(ChannelDoc::parse(&bytes, &name).unwrap(), doc);
        let other: ChannelName = "production".parse().unwrap();
        assert!(matches!(
            ChannelDoc::parse(&bytes, &other),
            Err(ChannelDocError::WrongChannel { .. })
        ));
        let future = String::from_utf8(bytes)
            .unwrap()
            .replace("\"format\": 1", "\"format\": 2");
        assert!(matches!(
            ChannelDoc::parse(future.as_bytes(), &name),
            Err(ChannelDocError::Format(2))
        ));
        assert!(ChannelDoc::parse(b"{\"format\":1,\"extra\":1}", &name).is_err());
    }

    #[test]
    fn bundle_targets_are_named_by_build_and_level() {
        assert_eq!(
            bundle_target_name(&bid(), level(7)),
            format!("bundles/{}/7.pbb", "ab".repeat(20))
        );
    }
}
