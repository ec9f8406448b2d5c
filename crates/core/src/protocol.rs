//! The wire protocol of the patch server's `/api/v1`: the JSON bodies that agents, the
//! builder's `publish` and the server exchange. Each message is declared once, here, and both
//! ends (de)serialize this one type, so a field cannot be renamed on one side only.
//!
//! Compatibility rules, because agents in the field are older than the server they talk to:
//! - a field keeps its wire name for good; a Rust rename goes through `#[serde(rename)]` (the
//!   upstream version is `upstream_version` in Rust, `kernel_version` on the wire);
//! - requests refuse unknown fields (a misspelt field is an error, not silently dropped);
//!   replies ignore them, so a newer server may add fields without breaking older agents.
//!
//! What crosses the wire is parsed into core's newtypes at deserialization, so a server never
//! holds an unchecked kernel release, build-id, level or host state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    BuildId, ChannelName, CveId, HostSeed, KernelRelease, PatchLevel, Sha256, UpstreamVersion,
};

/// `POST /api/v1/register`: a host asks to be registered with a registration key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The registration key; it chooses the host's channel.
    pub key: String,
    /// The host's name as it knows it (`/proc/sys/kernel/hostname`).
    pub hostname: String,
    /// The running kernel's release (`uname -r`).
    pub kernel_release: KernelRelease,
    /// The upstream release the running kernel is built from (`6.1.192`), when the agent could
    /// tell. `kernel_version` on the wire, as agents have always sent it; the manifest's name
    /// `upstream_version` is accepted too.
    #[serde(default, rename = "kernel_version", alias = "upstream_version")]
    pub upstream_version: Option<UpstreamVersion>,
    /// The running kernel's GNU build-id.
    pub build_id: BuildId,
    /// The agent's version.
    pub agent_version: String,
}

/// The reply to a registration (`201 Created`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterReply {
    /// The host's id on the server.
    pub host_id: String,
    /// The secret the host authenticates its check-ins with; shown only this once.
    pub host_token: String,
    /// The channel the registration key assigned.
    pub channel: ChannelName,
    /// The host's seed for wave rollouts.
    pub seed: HostSeed,
    /// The server's current TUF `root.json`, trusted on first use unless the agent was given a
    /// root of its own; kept as JSON because TUF verifies it, not this protocol.
    pub root: serde_json::Value,
}

/// `POST /api/v1/checkin` (host token): what a host reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckInRequest {
    /// The running kernel's release (`uname -r`).
    pub kernel_release: KernelRelease,
    /// The upstream release of the running kernel, as in [`RegisterRequest::upstream_version`]
    /// (`kernel_version` on the wire).
    #[serde(default, rename = "kernel_version", alias = "upstream_version")]
    pub upstream_version: Option<UpstreamVersion>,
    /// The running kernel's GNU build-id.
    pub build_id: BuildId,
    /// The live patch level loaded, if any.
    pub active_level: Option<PatchLevel>,
    /// How the host's patching stands.
    pub state: HostState,
    /// Why the last check failed, when it did.
    pub last_error: Option<String>,
    /// The agent's version.
    pub agent_version: String,
    /// Why the host distrusts its own clock, when it does. Sent only then: servers older than
    /// this field refuse it (requests refuse unknown fields), so a check-in without a warning is
    /// byte for byte what they accept, and the agent resends one they refuse without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_warning: Option<ClockWarning>,
}

/// A host's clock reads earlier than it can be: earlier than when the host last verified the
/// signed repository, or than a time the server signed, or early enough that the channel's
/// schedule would take a level away (which the agent refuses: only signed metadata lowers a
/// level). A clock set back (a spoofed NTP answer) is how expired metadata is replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockWarning {
    /// The host's clock when it made the report (Unix seconds); the server compares it with
    /// its own.
    pub host_time: i64,
    /// What the agent found, for people (at most [`ClockWarning::DETAIL_MAX`] bytes).
    pub detail: String,
}

impl ClockWarning {
    /// The longest `detail` a server accepts, in bytes.
    pub const DETAIL_MAX: usize = 2048;
}

/// The reply to a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInReply {
    /// The host's channel on the server.
    pub channel: ChannelName,
    /// The upstream release whose fixes the host has, counting its live patch, when the
    /// server's CVE data knows it (what `patchbay uname` shows).
    // Informational only, never used to choose a level: a value an agent cannot read is
    // dropped rather than failing the whole check-in.
    #[serde(default, deserialize_with = "lenient_version")]
    pub effective_version: Option<UpstreamVersion>,
}

fn lenient_version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UpstreamVersion>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|v| v.as_str().and_then(|s| s.parse().ok())))
}

/// The reply to `POST /api/v1/bundles` (a published level, `201 Created`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishReceipt {
    /// The kernel build the level is for.
    pub build_id: BuildId,
    /// The level published.
    pub level: PatchLevel,
    /// The signed TUF target name the level is served as.
    pub target: String,
}

/// The reply to `GET /api/v1/kernels`: every kernel build with published levels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelsReply {
    /// One entry per kernel build, ordered by build-id.
    pub kernels: Vec<KernelSummary>,
}

/// A kernel build with published levels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSummary {
    /// The build the levels are for.
    pub build_id: BuildId,
    /// Its release, as `uname -r` prints it.
    pub kernel_release: KernelRelease,
    /// Its upstream version (named `upstream_version` in this reply since its first release).
    pub upstream_version: UpstreamVersion,
    /// Its published levels, ascending.
    pub levels: Vec<LevelSummary>,
}

/// One published level, as `GET /api/v1/kernels` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelSummary {
    /// The level.
    pub level: PatchLevel,
    /// The bundle's sha256 (the signed TUF target's).
    pub sha256: Sha256,
    /// The bundle's size in bytes.
    pub length: u64,
    /// The CVEs the level fixes (cumulative), from its manifest.
    pub fixes: Vec<CveId>,
    /// When it was published, in Unix seconds.
    pub published_at: i64,
    /// Whether an upgrade report is attached (`GET …/levels/{level}/report`).
    pub report: bool,
}

/// The body of every refusal (any 4xx or 5xx status): what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The message, for a person.
    pub error: String,
}

/// How a host's patching stands, as it reports it at check-in (and the server lists, counts
/// and filters hosts by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// A live patch is loaded and its transition has finished.
    Patched,
    /// No live patch is loaded.
    Unpatched,
    /// A live patch's transition is under way.
    Transition,
    /// A transition did not finish and was reverted.
    Interrupted,
    /// The last check failed (`last_error` says why).
    Error,
    /// The kill switch keeps the agent from loading.
    Disabled,
}

impl HostState {
    /// Every state, in the order the server lists them.
    pub const ALL: [HostState; 6] = [
        HostState::Patched,
        HostState::Unpatched,
        HostState::Transition,
        HostState::Interrupted,
        HostState::Error,
        HostState::Disabled,
    ];

    /// The wire and database spelling (the same as serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Patched => "patched",
            HostState::Unpatched => "unpatched",
            HostState::Transition => "transition",
            HostState::Interrupted => "interrupted",
            HostState::Error => "error",
            HostState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host state that is none of [`HostState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown host state {value:?}: expected one of {expected}", expected = HostState::ALL.map(HostState::as_str).join(", "))]
pub struct UnknownHostState {
    value: String,
}

impl FromStr for HostState {
    type Err = UnknownHostState;
    fn from_str(s: &str) -> Result<Self, UnknownHostState> {
        HostState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownHostState {
                // Bounded, like IdError: the value may come from anyone.
                value: s.chars().take(80).collect(),
            })
    }
}

/// `GET /api/v1/hosts/{id}/exposure`: a host's exposure, of its kernel and with its live patch.
/// Generic over the exposure record (`patchbay_exposure::Exposure`), which lives in the crate
/// that computes it: that crate depends on this one, not the other way round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostExposure<E> {
    /// The upstream release of the host's kernel, when known.
    pub upstream_version: Option<UpstreamVersion>,
    /// The release whose fixes the host has (kernel + live patch), like `kcare-uname`.
    pub effective_version: Option<UpstreamVersion>,
    /// The exposure of the kernel alone.
    pub base: Option<E>,
    /// The exposure with the active live patch.
    pub live: Option<E>,
    /// The CVEs the active level fixes.
    pub fixes: Vec<String>,
    /// Published levels above the active one, with the open CVEs each would close.
    pub upgrades: Vec<LevelOffer>,
}

/// What a published level would fix on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelOffer {
    /// The level.
    pub level: u32,
    /// The host's open CVEs it closes.
    pub closes: Vec<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    const BUILD_ID: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A check-in exactly as agents before this module sent it (`json!` in the agent).
    fn old_agent_checkin() -> serde_json::Value {
        serde_json::json!({
            "kernel_release": "6.1.0-56-amd64",
            "kernel_version": "6.1.192",
            "build_id": BUILD_ID,
            "active_level": 2,
            "state": "patched",
            "last_error": null,
            "agent_version": "0.1.0",
        })
    }

    #[test]
    fn old_agents_requests_still_parse() {
        let checkin: CheckInRequest = serde_json::from_value(old_agent_checkin()).unwrap();
        assert_eq!(
            checkin.upstream_version,
            Some(UpstreamVersion::new(6, 1, 192))
        );
        assert_eq!(checkin.state, HostState::Patched);
        assert_eq!(checkin.active_level.map(PatchLevel::get), Some(2));

        let register: RegisterRequest = serde_json::from_value(serde_json::json!({
            "key": "pbreg_x", "hostname": "web-1", "kernel_release": "6.1.0-56-amd64",
            "kernel_version": "6.1.192", "build_id": BUILD_ID, "agent_version": "0.1.0",
        }))
        .unwrap();
        assert_eq!(
            register.upstream_version,
            Some(UpstreamVersion::new(6, 1, 192))
        );
        // Agents older still sent no upstream version at all, or null.
        for version in [None, Some(serde_json::Value::Null)] {
            let mut body = old_agent_checkin();
            let object = body.as_object_mut().unwrap();
            object.remove("kernel_version");
            if let Some(v) = version {
                object.insert("kernel_version".into(), v);
            }
            let checkin: CheckInRequest = serde_json::from_value(body).unwrap();
            assert_eq!(checkin.upstream_version, None);
        }
    }

    #[test]
    fn the_wire_name_of_the_upstream_version_stays_kernel_version() {
        let checkin: CheckInRequest = serde_json::from_value(old_agent_checkin()).unwrap();
        // Servers before this module refuse unknown fields: new agents must send the old name.
        let sent = serde_json::to_value(&checkin).unwrap();
        assert_eq!(sent, old_agent_checkin());
        // The Rust name is accepted as well.
        let mut body = old_agent_checkin();
        let object = body.as_object_mut().unwrap();
        let version = object.remove("kernel_version").unwrap();
        object.insert("upstream_version".into(), version);
        let parsed: CheckInRequest = serde_json::from_value(body).unwrap();
        assert_eq!(parsed, checkin);
    }

    #[test]
    fn a_check_in_without_a_clock_warning_is_what_older_servers_accept() {
        let checkin: CheckInRequest = serde_json::from_value(old_agent_checkin()).unwrap();
        assert_eq!(checkin.clock_warning, None);
        assert_eq!(serde_json::to_value(&checkin).unwrap(), old_agent_checkin());
        let warned = CheckInRequest {
            clock_warning: Some(ClockWarning {
                host_time: 1_795_000_000,
                detail: "set back".into(),
            }),
            ..checkin
        };
        let sent = serde_json::to_value(&warned).unwrap();
        assert_eq!(sent["clock_warning"]["host_time"], 1_795_000_000);
        assert_eq!(
            serde_json::from_value::<CheckInRequest>(sent).unwrap(),
            warned
        );
    }

    #[test]
    fn unknown_host_state_is_refused_with_the_states_allowed() {
        let mut body = old_agent_checkin();
        body["state"] = serde_json::json!("hacked");
        let e = serde_json::from_value::<CheckInRequest>(body)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hacked") && e.contains("patched") && e.contains("disabled"),
            "the error names the value and the states allowed: {e}"
        );
        let e = "hacked".parse::<HostState>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown host state \"hacked\": expected one of patched, unpatched, transition, \
             interrupted, error, disabled"
        );
    }

    #[test]
    fn host_state_spellings_agree() {
        for state in HostState::ALL {
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json, serde_json::json!(state.as_str()));
            assert_eq!(state.as_str().parse::<HostState>().unwrap(), state);
            assert_eq!(serde_json::from_value::<HostState>(json).unwrap(), state);
        }
    }

    #[test]
    fn requests_refuse_unknown_fields_and_bad_values() {
        let mut typo = old_agent_checkin();
        typo["agent_verison"] = serde_json::json!("0.1.0");
        assert!(serde_json::from_value::<CheckInRequest>(typo).is_err());
        for (field, bad) in [
            ("kernel_version", "six"),
            ("kernel_release", "6.1 56"),
            ("build_id", "xyz"),
        ] {
            let mut body = old_agent_checkin();
            body[field] = serde_json::json!(bad);
            assert!(
                serde_json::from_value::<CheckInRequest>(body).is_err(),
                "{field} {bad:?}"
            );
        }
        let mut level_zero = old_agent_checkin();
        level_zero["active_level"] = serde_json::json!(0);
        assert!(serde_json::from_value::<CheckInRequest>(level_zero).is_err());
    }

    #[test]
    fn replies_ignore_new_fields_and_an_unreadable_effective_version() {
        let reply: CheckInReply = serde_json::from_value(serde_json::json!({
            "channel": "production", "effective_version": "6.1.193", "later": true,
        }))
        .unwrap();
        assert_eq!(
            reply.effective_version,
            Some(UpstreamVersion::new(6, 1, 193))
        );
        for unreadable in [
            serde_json::json!("6.1.x"),
            serde_json::json!(7),
            serde_json::Value::Null,
        ] {
            let reply: CheckInReply = serde_json::from_value(
                serde_json::json!({"channel": "production", "effective_version": unreadable}),
            )
            .unwrap();
            assert_eq!(reply.effective_version, None);
        }
        let receipt: PublishReceipt = serde_json::from_value(serde_json::json!({
            "build_id": BUILD_ID, "level": 3, "target": "x.pbb", "signed": true,
        }))
        .unwrap();
        assert_eq!(receipt.level.get(), 3);
        let error: ErrorBody = serde_json::from_str(r#"{"error":"no such channel"}"#).unwrap();
        assert_eq!(error.error, "no such channel");
    }
}
