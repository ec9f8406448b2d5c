//! The agent's network half: registration, the update check (TUF through `patchbay-updates`,
//! the channel's level for this host, download, verify, apply), check-ins, the daemon loop, the
//! offline archive, and the boot-time re-apply.
//!
//! Trust: the only inputs that decide what is loaded are signed TUF targets (channel document
//! and bundle, whose manifest must equal the signed one). API answers (register, check-in) are
//! never used to pick a level.

use std::path::{Path, PathBuf};
use std::time::Duration;

use patchbay_core::protocol::{
    CheckInReply, CheckInRequest, ClockWarning, ErrorBody, HostState, RegisterReply,
    RegisterRequest,
};
use patchbay_core::registration::RegistrationKey;
use patchbay_core::{
    bundle_target_name, BuildId, ChannelName, HostSeed, PatchLevel, UpstreamVersion,
};
use patchbay_updates::tls::{CaBundle, SeenCertificate, ServerTrust};
use patchbay_updates::{Limits, SignedRepo, Source, UpdateError};
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, ApplyOptions, ApplyOutcome};
use crate::clock_trust;
use crate::error::{exit, AgentError};
use crate::state::{Event, OpKind};
use crate::status::PatchState;

/// The agent's version, reported on check-in.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Default config file.
pub const DEFAULT_CONFIG: &str = "/etc/patchbay/agent.toml";
/// The kill switch file (and `patchbay.disable` on the kernel command line).
pub const DEFAULT_DISABLE_FILE: &str = "/etc/patchbay/disable";

/// Why a command of the network half (`register`, `update`, `check`, `daemon`, `boot`,
/// `uname`) failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A local agent operation (identify, status, apply) failed.
    #[error("{0}")]
    Agent(#[from] AgentError),
    /// The signed repository could not be loaded or verified, or a target was refused.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// The server could not be reached or the connection broke; nothing was changed.
    #[error(
        "the server at {url} is unreachable ({reason}); the active patch is kept, retry later"
    )]
    Unreachable {
        /// The endpoint that was called.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("the server refused the request ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's error message (or the body as it is, e.g. a proxy's page).
        message: String,
    },
    /// The server answered with success, but the reply is not what this agent reads (too
    /// large, not the expected JSON, a root that cannot be kept).
    #[error("the server's reply ({status}) cannot be used: {message}; is the URL a Patchbay server of a compatible version?")]
    BadReply {
        /// The HTTP status of the reply.
        status: u16,
        /// What is wrong with the reply.
        message: String,
    },
    /// The server's TLS certificate was not the one this host trusts (pinned, or signed by
    /// the CA given): someone else may be answering. Nothing secret was sent.
    #[error("{0}")]
    Untrusted(String),
    /// Registration found that the server's root metadata is not the one the registration
    /// key names: someone may be intercepting. The key's secret was not sent.
    #[error("the server's root.json is not the one the registration key names: expected SHA-256 {expected}, the server sent {seen} (and no earlier root version it serves matches). Someone may be intercepting the connection; the registration key was NOT sent. Check the --server URL and the key")]
    RootMismatch {
        /// The key's `root-sha256`.
        expected: patchbay_core::Sha256,
        /// The SHA-256 of the `root.json` the server sent.
        seen: patchbay_core::Sha256,
    },
    /// The command needs the server link or trusted root that `register` stores.
    #[error("this host is not registered: run `patchbay register --server URL --key KEY` (or pass --root FILE with --from)")]
    NotRegistered,
    /// A file of the network half (server link, root, seed, archive) could not be used.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong with it.
        reason: String,
    },
    /// The config file (`/etc/patchbay/agent.toml`) is malformed or has an invalid value.
    #[error("config {path}: {reason}")]
    Config {
        /// The config file.
        path: String,
        /// The offending setting and why.
        reason: String,
    },
    /// A bad `--server` URL, or the HTTP client or async runtime could not be set up (exit 2).
    #[error("{0}")]
    Usage(String),
}

impl RemoteError {
    /// The process exit code for this error: refusals of signed data are 7, usage errors and
    /// an unregistered host 2, an agent error its own code, everything else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            RemoteError::Agent(e) => e.exit_code(),
            RemoteError::Update(
                UpdateError::Metadata { .. }
                | UpdateError::Download { .. }
                | UpdateError::Bundle { .. }
                | UpdateError::ManifestMismatch { .. }
                | UpdateError::TooLarge { .. }
                | UpdateError::ChannelDoc { .. },
            )
            | RemoteError::Untrusted(_)
            | RemoteError::RootMismatch { .. } => exit::REFUSED,
            RemoteError::Usage(_) | RemoteError::NotRegistered => exit::USAGE,
            _ => exit::ERROR,
        }
    }
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> RemoteError {
    RemoteError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// `server.json` in the state dir: how this host talks to its server (mode 0600).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLink {
    /// The server's base URL, ending in `/`, e.g. `https://patches.example:8470/`.
    pub url: String,
    /// The id the server gave this host at registration.
    pub host_id: String,
    /// Bearer token for check-ins; a secret, hence the file's mode.
    pub host_token: String,
    /// The channel the registration key chose (the config's `channel` overrides it).
    pub channel: ChannelName,
    /// The host's rollout seed from registration.
    pub seed: HostSeed,
    /// The SHA-256 of the server's TLS certificate, pinned at registration: no other
    /// certificate is accepted. Absent for links from before TLS (and CA-checked servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cert_sha256: Option<patchbay_core::Sha256>,
    /// The CA bundle the server's certificate is checked against (`register --ca-file`);
    /// absent: the platform's roots (when nothing is pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl ServerLink {
    /// The server's URL and how every connection to it checks its certificate: the pinned
    /// certificate, else the CA bundle of the config's `server_ca_file` (`config_ca_file`),
    /// else the link's CA file, else the platform's roots. A link that pins a certificate or
    /// names a CA file (or a config that names one) means TLS: an `http://` URL in it (edited
    /// by hand, or by someone who wants the token) is refused, as nothing it sends would be
    /// checked or encrypted. Links without either (from before TLS, or registered with
    /// `--insecure-http`) keep their URL.
    pub fn endpoint(
        &self,
        config_ca_file: Option<&Path>,
    ) -> Result<(url::Url, ServerTrust), RemoteError> {
        let url = server_url(&self.url)?;
        let trust = match (&self.server_cert_sha256, config_ca_file, &self.ca_file) {
            (Some(pin), _, _) => ServerTrust::Pinned(pin.clone()),
            (None, Some(file), _) => ServerTrust::CaBundle(CaBundle::read(file).map_err(|e| {
                RemoteError::Usage(format!(
                    "server_ca_file of the agent's config: {e}; fix the setting"
                ))
            })?),
            (None, None, Some(file)) => ServerTrust::CaBundle(
                CaBundle::read(file).map_err(|e| RemoteError::Usage(e.to_string()))?,
            ),
            (None, None, None) => return Ok((url, ServerTrust::PlatformRoots)),
        };
        if url.scheme() != "https" {
            return Err(RemoteError::Untrusted(format!(
                "the server link (server.json in the state directory) says {url}, plain \
                 HTTP, but this host was registered over TLS (its server's certificate is \
                 pinned or CA-checked): the host token would cross the network in clear, so \
                 nothing was sent. Set its url back to https:// or register again"
            )));
        }
        Ok((url, trust))
    }
}

/// `/etc/patchbay/agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Time between checks (`4h`, `30m`, `90s`).
    pub interval: String,
    /// Random extra delay up to this, so a fleet does not check at once.
    pub jitter: String,
    /// `false`: the daemon only checks and reports; `patchbay update` applies.
    pub auto_update: bool,
    /// Stay at this level whatever the channel says.
    pub pinned_level: Option<u32>,
    /// Follow this channel instead of the one the registration key chose.
    pub channel: Option<String>,
    /// A PEM file of the CA certificates that sign the server's certificate (a private CA):
    /// `register` uses it when no `--ca-file` is given, and every connection checks against
    /// it unless the host pins the certificate.
    pub server_ca_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interval: "4h".into(),
            jitter: "30m".into(),
            auto_update: true,
            pinned_level: None,
            channel: None,
            server_ca_file: None,
        }
    }
}

/// The parsed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Time between the daemon's checks; at least 1 s.
    pub interval: Duration,
    /// Upper bound of the random delay added to each interval.
    pub jitter: Duration,
    /// Whether the daemon applies what it finds (`false`: it only checks and reports).
    pub auto_update: bool,
    /// Stay at this level whatever the channel says; `None`: follow the channel.
    pub pinned_level: Option<PatchLevel>,
    /// Channel to follow instead of the registered one; `None`: the registered one.
    pub channel: Option<ChannelName>,
    /// The CA bundle that signs the server's certificate (`server_ca_file`); an absolute
    /// path. `None`: what `register` recorded, else the platform's roots.
    pub server_ca_file: Option<PathBuf>,
}

/// Parses `500ms`, `90s`, `30m`, `4h`, `1d`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = (t.get(..split).unwrap_or(""), t.get(split..).unwrap_or(""));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (use e.g. 90s, 30m, 4h)"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{text:?}: unknown unit (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

impl Settings {
    /// Reads the config file; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<Settings, RemoteError> {
        let config: AgentConfig = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| RemoteError::Config {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AgentConfig::default(),
            Err(e) => return Err(file_err(path, e)),
        };
        let bad = |reason: String| RemoteError::Config {
            path: path.display().to_string(),
            reason,
        };
        let interval =
            parse_interval(&config.interval).map_err(|e| bad(format!("interval: {e}")))?;
        if interval < Duration::from_secs(1) {
            return Err(bad("interval must be at least 1s".into()));
        }
        Ok(Settings {
            interval,
            jitter: parse_interval(&config.jitter).map_err(|e| bad(format!("jitter: {e}")))?,
            auto_update: config.auto_update,
            pinned_level: config
                .pinned_level
                .map(PatchLevel::try_from)
                .transpose()
                .map_err(|e| bad(format!("pinned_level: {e}")))?,
            channel: config
                .channel
                .map(|c| c.parse())
                .transpose()
                .map_err(|e: patchbay_core::IdError| bad(format!("channel: {e}")))?,
            server_ca_file: match config.server_ca_file {
                Some(file) if file.is_relative() => {
                    return Err(bad(format!(
                        "server_ca_file: {} is a relative path; give an absolute one (e.g. \
                         /etc/patchbay/ca.pem)",
                        file.display()
                    )))
                }
                file => file,
            },
        })
    }
}

/// Files of the network half, under the state dir.
#[derive(Debug, Clone)]
pub(crate) struct RemoteFiles {
    /// `server.json`: the [`ServerLink`] written by `register`.
    pub(crate) link: PathBuf,
    /// `effective.json`: the [`Effective`] release from the last check-in.
    pub(crate) effective: PathBuf,
    /// `tuf/root.json`: the trusted TUF root, updated on root rotation.
    pub(crate) root: PathBuf,
    /// `tuf/datastore`: the TUF client's cache of verified metadata.
    pub(crate) datastore: PathBuf,
    /// `seed`: a locally made rollout seed for hosts that never registered.
    pub(crate) seed: PathBuf,
}

impl RemoteFiles {
    /// The files under `state_dir`.
    pub(crate) fn new(state_dir: &Path) -> RemoteFiles {
        RemoteFiles {
            link: state_dir.join("server.json"),
            effective: state_dir.join("effective.json"),
            root: state_dir.join("tuf/root.json"),
            datastore: state_dir.join("tuf/datastore"),
            seed: state_dir.join("seed"),
        }
    }

    /// Reads `server.json`; `None` when the host never registered.
    pub(crate) fn load_link(&self) -> Result<Option<ServerLink>, RemoteError> {
        match std::fs::read(&self.link) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| file_err(&self.link, format!("{e}; register again"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_err(&self.link, e)),
        }
    }

    fn write_private(&self, path: &Path, bytes: &[u8]) -> Result<(), RemoteError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        }
        patchbay_core::fsutil::write_private(path, bytes).map_err(|e| file_err(path, e))
    }

    /// The host's seed: from registration, else a local one made once (offline hosts).
    fn seed(&self, link: Option<&ServerLink>) -> Result<HostSeed, RemoteError> {
        if let Some(link) = link {
            return Ok(link.seed.clone());
        }
        if let Ok(text) = std::fs::read_to_string(&self.seed) {
            if let Ok(seed) = text.trim().parse() {
                return Ok(seed);
            }
        }
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| file_err(&self.seed, e))?;
        let seed: HostSeed = hex::encode(bytes)
            .parse()
            .map_err(|e: patchbay_core::IdError| file_err(&self.seed, e))?;
        self.write_private(&self.seed, seed.as_str().as_bytes())?;
        Ok(seed)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, RemoteError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RemoteError::Usage(format!("cannot start the async runtime: {e}")))
}

fn server_url(text: &str) -> Result<url::Url, RemoteError> {
    let url = url::Url::parse(text).map_err(|e| {
        RemoteError::Usage(format!(
            "--server {text:?} is not a URL ({e}); expected e.g. https://patches.example:8470"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(RemoteError::Usage(format!(
            "--server {text:?}: the scheme must be http or https"
        )));
    }
    Ok(url)
}

fn http_client(trust: &ServerTrust) -> Result<reqwest::Client, RemoteError> {
    patchbay_updates::tls::client(trust, Duration::from_secs(30))
        .map_err(|e| RemoteError::Usage(e.to_string()))
}

/// A request that got no reply: a refused certificate is a refusal (nothing was sent), any
/// other failure an outage.
fn send_failed(endpoint: &url::Url, e: &reqwest::Error) -> RemoteError {
    match patchbay_updates::tls::refused_certificate(e) {
        Some(refused) => RemoteError::Untrusted(refused),
        None => RemoteError::Unreachable {
            url: endpoint.to_string(),
            reason: patchbay_updates::tls::describe(e),
        },
    }
}

async fn post_json<T: serde::de::DeserializeOwned>(
    url: &url::Url,
    trust: &ServerTrust,
    path: &str,
    token: Option<&str>,
    body: &impl Serialize,
) -> Result<T, RemoteError> {
    let endpoint = url
        .join(path)
        .map_err(|e| RemoteError::Usage(format!("{url}: {e}")))?;
    let mut request = http_client(trust)?.post(endpoint.clone()).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| send_failed(&endpoint, &e))?;
    let status = response.status();
    // Replies are small; anything beyond 1 MiB is not ours, and is refused while streaming.
    let bytes = patchbay_updates::transport::read_body_capped(response, 1 << 20)
        .await
        .map_err(|e| match e {
            // An oversized refusal (a proxy's error page) is still a refusal.
            patchbay_updates::transport::BodyError::TooLarge { .. } if !status.is_success() => {
                RemoteError::Refused {
                    status: status.as_u16(),
                    message: e.to_string(),
                }
            }
            patchbay_updates::transport::BodyError::TooLarge { .. } => RemoteError::BadReply {
                status: status.as_u16(),
                message: e.to_string(),
            },
            patchbay_updates::transport::BodyError::Transport(e) => RemoteError::Unreachable {
                url: endpoint.to_string(),
                reason: e.to_string(),
            },
        })?;
    if !status.is_success() {
        // Not every refusal is the server's own (a proxy's page): then the text as it is.
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|body| body.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        return Err(RemoteError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| RemoteError::BadReply {
        status: status.as_u16(),
        message: format!("unexpected reply: {e}"),
    })
}

fn base_url(url: &url::Url) -> url::Url {
    let mut base = url.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", url.path()));
    }
    base
}

/// The effective release the server computed at the last check-in, for `patchbay uname`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Effective {
    /// The build-id the server computed it for.
    pub(crate) build_id: String,
    /// The active level then; `None`: none was active.
    pub(crate) level: Option<u32>,
    /// The upstream release whose fixes the host had; `None` when the server could not say.
    pub(crate) effective_version: Option<UpstreamVersion>,
}

/// `patchbay uname`: the upstream release whose fixes this kernel has, counting the live patch
/// (what the server computed at the last check-in for the running build and level), else the
/// kernel's own upstream release.
pub fn uname(agent: &Agent<'_>) -> Result<(String, String), RemoteError> {
    let identity = agent.identity()?;
    let status = agent.status()?;
    let active = status.active.map(|a| a.level.get());
    let own = running_upstream_version(agent)
        .map_or_else(|| identity.release.to_string(), |v| v.to_string());
    let files = RemoteFiles::new(agent.state_dir.root());
    let recorded: Option<Effective> = std::fs::read(&files.effective)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let effective = recorded
        .filter(|e| e.build_id == identity.build_id.as_str() && e.level == active)
        .and_then(|e| e.effective_version)
        .map(|v| v.to_string());
    let detail = format!(
        "kernel {} (upstream {own}), live patch {}, effective {}",
        identity.release,
        active.map_or("none".to_owned(), |l| format!("level {l}")),
        effective
            .as_deref()
            .unwrap_or("unknown until the next check-in")
    );
    Ok((effective.unwrap_or(own), detail))
}

/// What `register` did.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The id the server gave this host.
    pub host_id: String,
    /// The channel the registration key put the host in.
    pub channel: ChannelName,
    /// Ids of the root keys now trusted, sorted (for the user to compare out of band).
    pub root_key_ids: Vec<String>,
    /// How the trusted root was chosen.
    pub root_trust: RootTrust,
    /// The server certificate's SHA-256 pinned from now on, if one is.
    pub pinned_certificate: Option<patchbay_core::Sha256>,
    /// The certificate was pinned as the server showed it (`--trust-on-first-use`), not as a
    /// key or `--server-cert-sha256` named it.
    pub certificate_trusted_on_first_use: bool,
}

/// Where the root `register` trusts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootTrust {
    /// Its SHA-256 is the one the registration key carries.
    KeyFingerprint,
    /// The `--root` file.
    RootFile,
    /// As the server sent it (`--trust-on-first-use`).
    FirstUse,
}

/// Whether `register` may trust what the server shows it without a fingerprint to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    /// Only what the key, `--root`, `--server-cert-sha256` or `--ca-file` vouch for.
    Refuse,
    /// `--trust-on-first-use`: whatever answers first (a man in the middle too) is trusted.
    Trust,
}

/// Whether `register` may send the registration key over plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainHttp {
    /// Refused: the key would cross the network in clear.
    Refuse,
    /// `--insecure-http`.
    Allow,
}

/// How `register` checks the server before it sends the key's secret, beyond the key's own
/// fingerprints.
#[derive(Debug, Clone)]
pub struct RegisterTrust {
    /// `--root`: the `root.json` to trust (a key without fingerprints).
    pub root_file: Option<PathBuf>,
    /// `--server-cert-sha256`: the certificate to pin (a key without one).
    pub server_cert_sha256: Option<patchbay_core::Sha256>,
    /// `--ca-file`: the CA bundle that signs the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// `--trust-on-first-use`.
    pub first_use: FirstUse,
    /// `--insecure-http`.
    pub plain_http: PlainHttp,
}

impl RegisterTrust {
    /// Without `--ca-file`, the CA file of the agent's config (`server_ca_file`).
    pub fn or_config_ca_file(mut self, settings: &Settings) -> Self {
        if self.ca_file.is_none() {
            self.ca_file.clone_from(&settings.server_ca_file);
        }
        self
    }
}

impl Default for RegisterTrust {
    fn default() -> Self {
        RegisterTrust {
            root_file: None,
            server_cert_sha256: None,
            ca_file: None,
            first_use: FirstUse::Refuse,
            plain_http: PlainHttp::Refuse,
        }
    }
}

/// The certificate check for registration: the key's pin, else `--server-cert-sha256`, else
/// `--ca-file`, else (first use) any certificate, recorded, else the platform's roots.
fn registration_tls(
    url: &url::Url,
    key: &RegistrationKey,
    trust: &RegisterTrust,
) -> Result<ServerTrust, RemoteError> {
    let key_pin = key.pins().and_then(|p| p.cert_sha256.clone());
    if let (Some(a), Some(b)) = (&key_pin, &trust.server_cert_sha256) {
        if a != b {
            return Err(RemoteError::Usage(format!(
                "--server-cert-sha256 {b} is not the certificate the registration key names \
                 ({a}); leave it out"
            )));
        }
    }
    let pin = key_pin.or_else(|| trust.server_cert_sha256.clone());
    if url.scheme() == "http" {
        if pin.is_some() {
            return Err(RemoteError::Usage(format!(
                "--server {url}: the registration key pins the server's TLS certificate; use \
                 https://"
            )));
        }
        if trust.plain_http == PlainHttp::Refuse {
            return Err(RemoteError::Usage(format!(
                "--server {url} is plain HTTP: the registration key and the host token would \
                 cross the network in clear. Use https:// (or, for a test, --insecure-http)"
            )));
        }
        return Ok(ServerTrust::PlatformRoots);
    }
    Ok(match (pin, &trust.ca_file, trust.first_use) {
        (Some(pin), _, _) => ServerTrust::Pinned(pin),
        (None, Some(file), _) => ServerTrust::CaBundle(
            CaBundle::read(file).map_err(|e| RemoteError::Usage(e.to_string()))?,
        ),
        (None, None, FirstUse::Trust) => ServerTrust::FirstUse(SeenCertificate::default()),
        (None, None, FirstUse::Refuse) => ServerTrust::PlatformRoots,
    })
}

/// GETs a public file of the server's (no token), capped at `limit` bytes.
async fn get_public(
    client: &reqwest::Client,
    url: &url::Url,
    path: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, RemoteError> {
    let endpoint = url
        .join(path)
        .map_err(|e| RemoteError::Usage(format!("{url}: {e}")))?;
    let response = client
        .get(endpoint.clone())
        .send()
        .await
        .map_err(|e| send_failed(&endpoint, &e))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(RemoteError::Refused {
            status: status.as_u16(),
            message: format!("GET {endpoint}"),
        });
    }
    patchbay_updates::transport::read_body_capped(response, limit)
        .await
        .map(Some)
        .map_err(|e| RemoteError::BadReply {
            status: status.as_u16(),
            message: format!("{endpoint}: {e}"),
        })
}

/// The served root whose SHA-256 is `expected`: `root.json` itself, or (the key is older than
/// a root rotation) one of the versioned roots before it, from which TUF walks the chain up.
async fn root_named_by_key(
    client: &reqwest::Client,
    url: &url::Url,
    served: Vec<u8>,
    expected: &patchbay_core::Sha256,
) -> Result<Vec<u8>, RemoteError> {
    let seen = patchbay_core::Sha256::of(&served);
    if seen == *expected {
        return Ok(served);
    }
    let version = serde_json::from_slice::<serde_json::Value>(&served)
        .ok()
        .and_then(|v| v.pointer("/signed/version").and_then(|v| v.as_u64()))
        .unwrap_or(0)
        .min(1024);
    for n in (1..version).rev() {
        let path = format!("tuf/metadata/{n}.root.json");
        if let Some(bytes) =
            get_public(client, url, &path, Limits::default().max_metadata_bytes).await?
        {
            if patchbay_core::Sha256::of(&bytes) == *expected {
                return Ok(bytes);
            }
        }
    }
    Err(RemoteError::RootMismatch {
        expected: expected.clone(),
        seen,
    })
}

/// `patchbay register`. Before the key's secret is sent: the TLS certificate is checked in
/// the handshake (the key's pin, `--server-cert-sha256`, `--ca-file`), the served root
/// metadata must be the one the key names (or `--root`), and the server's signed repository
/// must verify from it. Then the host token, the root and the certificate's pin are stored.
pub fn register(
    agent: &Agent<'_>,
    server: &str,
    key: &RegistrationKey,
    trust: &RegisterTrust,
) -> Result<Registered, RemoteError> {
    let url = base_url(&server_url(server)?);
    let tls = registration_tls(&url, key, trust)?;
    let identity = agent.identity()?;
    let hostname = std::fs::read_to_string(agent.paths.proc_dir.join("sys/kernel/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let files = RemoteFiles::new(agent.state_dir.root());
    runtime()?.block_on(async {
        // 1. Nothing secret: the root metadata, over the checked connection.
        let client = http_client(&tls)?;
        let served = get_public(
            &client,
            &url,
            "tuf/metadata/root.json",
            Limits::default().max_metadata_bytes,
        )
        .await?
        .ok_or_else(|| RemoteError::BadReply {
            status: 404,
            message: "no tuf/metadata/root.json".into(),
        })?;
        // A certificate trusted on first use is pinned from here on, the key's secret included.
        let (tls, certificate_tofu) = match &tls {
            ServerTrust::FirstUse(seen) => match seen.get() {
                Some(sha) => (ServerTrust::Pinned(sha), true),
                None => {
                    return Err(RemoteError::Untrusted(
                        "the server showed no TLS certificate".into(),
                    ))
                }
            },
            other => (other.clone(), false),
        };
        let (root, root_trust) = match (key.pins(), &trust.root_file, trust.first_use) {
            (Some(pins), _, _) => (
                root_named_by_key(&client, &url, served, &pins.root_sha256).await?,
                RootTrust::KeyFingerprint,
            ),
            (None, Some(path), _) => (
                std::fs::read(path).map_err(|e| file_err(path, e))?,
                RootTrust::RootFile,
            ),
            (None, None, FirstUse::Trust) => (served, RootTrust::FirstUse),
            (None, None, FirstUse::Refuse) => {
                return Err(RemoteError::Usage(
                    "the registration key carries no fingerprints (a pbreg_ key from before \
                     format 2): ask for a new key (`patchbay-server registration-key create`), \
                     or give --root FILE (the server's root.json, copied out of band), or \
                     --trust-on-first-use"
                        .into(),
                ))
            }
        };
        // 2. The server must serve a repository this root trusts (still nothing secret).
        let scratch = tempfile_dir(agent.state_dir.root())?;
        SignedRepo::load(
            &root,
            &Source::Server(url.clone(), tls.clone()),
            scratch.path(),
            Limits::default(),
        )
        .await
        .map_err(|e| match e.fetch_failure() {
            Some(patchbay_updates::transport::FetchFailure::Untrusted) => {
                RemoteError::Untrusted(e.to_string())
            }
            _ => RemoteError::Update(e),
        })?;
        // 3. Only now the secret.
        let reply: RegisterReply = post_json(
            &url,
            &tls,
            "api/v1/register",
            None,
            &RegisterRequest {
                key: key.secret().expose().to_owned(),
                hostname,
                kernel_release: identity.release.clone(),
                upstream_version: running_upstream_version(agent),
                build_id: identity.build_id.clone(),
                agent_version: AGENT_VERSION.to_owned(),
            },
        )
        .await?;
        files.write_private(&files.root, &root)?;
        let _ = std::fs::remove_dir_all(&files.datastore);
        let pinned_certificate = match &tls {
            ServerTrust::Pinned(sha) => Some(sha.clone()),
            _ => None,
        };
        let link = ServerLink {
            url: url.to_string(),
            host_id: reply.host_id.clone(),
            host_token: reply.host_token,
            channel: reply.channel.clone(),
            seed: reply.seed,
            server_cert_sha256: pinned_certificate.clone(),
            ca_file: match &tls {
                ServerTrust::CaBundle(bundle) => Some(bundle.path().to_path_buf()),
                _ => None,
            },
        };
        let bytes = serde_json::to_vec_pretty(&link).map_err(|e| file_err(&files.link, e))?;
        files.write_private(&files.link, &bytes)?;
        Ok(Registered {
            host_id: reply.host_id,
            channel: reply.channel,
            root_key_ids: root_key_ids(&root),
            root_trust,
            pinned_certificate,
            certificate_trusted_on_first_use: certificate_tofu,
        })
    })
}

/// The upstream release of a distribution kernel, from `/proc/version`: Debian writes its
/// package version there (`... #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)`), while
/// the release (`6.1.0-56-amd64`) names only the ABI.
pub fn upstream_version(proc_version: &str) -> Option<UpstreamVersion> {
    let mut words = proc_version.split_whitespace();
    while let Some(word) = words.next() {
        if word == "Debian" {
            let version = words.next()?;
            return UpstreamVersion::from_debian(version).ok();
        }
    }
    None
}

/// The running kernel's upstream release ([`upstream_version`] of `/proc/version`).
fn running_upstream_version(agent: &Agent<'_>) -> Option<UpstreamVersion> {
    std::fs::read_to_string(agent.paths.proc_dir.join("version"))
        .ok()
        .and_then(|text| upstream_version(&text))
}

fn root_key_ids(root: &[u8]) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_slice(root).unwrap_or_default();
    let mut ids: Vec<String> = value
        .pointer("/signed/roles/root/keyids")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// A private (0700) scratch directory in the state dir, removed when dropped (every return
/// and unwinding path). Its name carries this process's pid so that one a killed agent left
/// behind is recognised and removed by the next run ([`StateDir::remove_stale_leftovers`]).
fn tempfile_dir(state_dir: &Path) -> Result<tempfile::TempDir, RemoteError> {
    std::fs::create_dir_all(state_dir).map_err(|e| file_err(state_dir, e))?;
    crate::cache::StateDir::new(state_dir).remove_stale_leftovers();
    tempfile::Builder::new()
        .prefix(&format!(
            "{}{}-",
            crate::cache::SCRATCH_PREFIX,
            std::process::id()
        ))
        .tempdir_in(state_dir)
        .map_err(|e| file_err(state_dir, e))
}

/// What the signed data says this host should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The wanted level is active.
    UpToDate(PatchLevel),
    /// Another level is wanted (`downgrade` when it is below the active one).
    Change {
        /// The active level; `None`: none is active.
        from: Option<PatchLevel>,
        /// The wanted level.
        to: PatchLevel,
        /// `to` is below `from`.
        downgrade: bool,
    },
    /// The channel serves nothing for this kernel (yet, or not to this host's wave).
    NothingServed {
        /// The active level, left as it is; `None`: none is active.
        active: Option<PatchLevel>,
    },
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::UpToDate(l) => write!(f, "up to date at level {l}"),
            Plan::Change {
                from,
                to,
                downgrade,
            } => write!(
                f,
                "level {to} waits ({} {})",
                if *downgrade { "down from" } else { "up from" },
                from.map_or("none".to_owned(), |l| format!("level {l}"))
            ),
            Plan::NothingServed { active } => write!(
                f,
                "the channel serves no level for this kernel to this host{}",
                active.map_or(String::new(), |l| format!(" (level {l} stays active)"))
            ),
        }
    }
}

/// Where one check reads from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The registered server (needs `register` first).
    Server,
    /// An offline archive of the signed repository (`--from`).
    Archive {
        /// The archive file.
        path: PathBuf,
        /// The trusted root to verify it with (`--root`); `None`: the registered one.
        root: Option<PathBuf>,
    },
}

/// What one update did.
#[derive(Debug)]
pub struct UpdateReport {
    /// What the signed data says this host should run.
    pub plan: Plan,
    /// The outcome when a change was applied; `None` when nothing was (check only, up to
    /// date, nothing served, or the kill switch).
    pub applied: Option<ApplyOutcome>,
    /// The kill switch kept a change from being applied: why.
    pub disabled: Option<String>,
    /// The channel that was read.
    pub channel: ChannelName,
    /// Version of the TUF targets metadata the plan was computed from.
    pub targets_version: u64,
}

/// Why loading is switched off on this host, if it is: `patchbay.disable` on the kernel
/// command line or the disable file. Every path that loads (`update`, `daemon`, `boot`)
/// asks this first; a manual `patchbay apply` is an administrator's explicit act and does not.
pub fn kill_switch(agent: &Agent<'_>, disable_file: &Path) -> Option<String> {
    let cmdline = std::fs::read_to_string(agent.paths.proc_dir.join("cmdline")).unwrap_or_default();
    // `patchbay.disable` or `patchbay.disable=<anything>`, as systemd's
    // ConditionKernelCommandLine matches it.
    if cmdline
        .split_whitespace()
        .any(|w| w == "patchbay.disable" || w.starts_with("patchbay.disable="))
    {
        return Some("patchbay.disable is on the kernel command line".into());
    }
    if disable_file.exists() {
        return Some(format!("{} exists", disable_file.display()));
    }
    None
}

/// The remote half of the agent, bound to one `Agent`.
#[derive(Debug)]
pub struct Remote<'a, 'b> {
    /// The local agent that identifies the kernel and applies bundles.
    pub agent: &'a Agent<'b>,
    /// The parsed config.
    pub settings: Settings,
    /// The network half's files in the state directory.
    pub(crate) files: RemoteFiles,
    /// Options for applying what the channel serves.
    pub apply: ApplyOptions,
    /// The kill switch file ([`kill_switch`]).
    pub disable_file: PathBuf,
}

impl<'a, 'b> Remote<'a, 'b> {
    /// Binds the network half to `agent`, with the default kill switch file.
    pub fn new(agent: &'a Agent<'b>, settings: Settings, apply: ApplyOptions) -> Self {
        Remote {
            files: RemoteFiles::new(agent.state_dir.root()),
            agent,
            settings,
            apply,
            disable_file: PathBuf::from(DEFAULT_DISABLE_FILE),
        }
    }

    /// Uses `path` as the kill switch file instead of [`DEFAULT_DISABLE_FILE`].
    pub fn with_disable_file(mut self, path: &Path) -> Self {
        self.disable_file = path.to_path_buf();
        self
    }

    fn active_level(&self) -> Result<(Option<PatchLevel>, PatchState), RemoteError> {
        let status = self.agent.status()?;
        Ok((status.active.map(|a| a.level), status.state))
    }

    /// Loads the signed repository from the server or an archive, returning it with the
    /// channel and the unpacked archive dir (kept alive while the repo is read).
    async fn load(
        &self,
        origin: &Origin,
        link: Option<&ServerLink>,
    ) -> Result<(SignedRepo, Option<tempfile::TempDir>), RemoteError> {
        let state = self.agent.state_dir.root();
        match origin {
            Origin::Server => {
                let link = link.ok_or(RemoteError::NotRegistered)?;
                let root = std::fs::read(&self.files.root)
                    .map_err(|e| file_err(&self.files.root, format!("{e}; register again")))?;
                let (url, trust) = link.endpoint(self.settings.server_ca_file.as_deref())?;
                let repo = SignedRepo::load(
                    &root,
                    &Source::Server(url, trust),
                    &self.files.datastore,
                    Limits::default(),
                )
                .await
                .map_err(|e| classify(e, &link.url))?;
                self.keep_root(&repo)?;
                Ok((repo, None))
            }
            Origin::Archive { path, root } => {
                let trusted = match root {
                    Some(p) => std::fs::read(p).map_err(|e| file_err(p, e))?,
                    None => {
                        std::fs::read(&self.files.root).map_err(|_| RemoteError::NotRegistered)?
                    }
                };
                let dir = tempfile_dir(state)?;
                patchbay_updates::archive::unpack(path, dir.path())?;
                let repo = SignedRepo::load(
                    &trusted,
                    &Source::Directory(dir.path().to_path_buf()),
                    &self.files.datastore,
                    Limits::default(),
                )
                .await?;
                self.keep_root(&repo)?;
                Ok((repo, Some(dir)))
            }
        }
    }

    /// Checks the loaded chain against the last time this host verified one
    /// ([`clock_trust::check_chain`]): a role that expired before then is refused as a replay,
    /// a clock behind it noted. Then records `now` as verified.
    fn trust_clock(
        &self,
        repo: &SignedRepo,
        origin: &Origin,
        now: i64,
        clock_notes: &mut Vec<String>,
    ) -> Result<(), RemoteError> {
        let verified = clock_trust::VerifiedAt::new(self.agent.state_dir.root());
        match clock_trust::check_chain(verified.read(), now, repo.first_expiry()) {
            clock_trust::ChainCheck::Fine => {}
            clock_trust::ChainCheck::ClockBehind(why) => clock_notes.push(why),
            clock_trust::ChainCheck::Replay(why) => {
                clock_notes.push(why.clone());
                let source_name = match origin {
                    Origin::Server => self.files.load_link()?.map(|l| l.url).unwrap_or_default(),
                    Origin::Archive { path, .. } => path.display().to_string(),
                };
                return Err(RemoteError::Update(UpdateError::Metadata {
                    source_name,
                    reason: why,
                    fetch: None,
                }));
            }
        }
        verified
            .raise(now)
            .map_err(|e| file_err(&self.agent.state_dir.root().join("clock.json"), e))
    }

    /// Persists the newest verified root (root rotation).
    fn keep_root(&self, repo: &SignedRepo) -> Result<(), RemoteError> {
        if let Some(later) = repo.clock_stepped_back_from() {
            (self.agent.log)(&format!(
                "warning: the system clock reads earlier than at a previous update ({later}): it \
                 was set back, or had jumped forward and was corrected. Updates go on with the \
                 clock as it is now; metadata that expired before the last verification is refused"
            ));
        }
        let root = repo.root_json()?;
        if std::fs::read(&self.files.root).ok().as_deref() != Some(root.as_slice()) {
            self.files.write_private(&self.files.root, &root)?;
        }
        Ok(())
    }

    fn channel(&self, link: Option<&ServerLink>) -> ChannelName {
        self.settings
            .channel
            .clone()
            .or_else(|| link.map(|l| l.channel.clone()))
            .unwrap_or_else(ChannelName::default_channel)
    }

    /// The plan at the clock reading `now`; what the clock made doubtful goes to `clock_notes`.
    async fn plan(
        &self,
        repo: &SignedRepo,
        channel: &ChannelName,
        build_id: &BuildId,
        seed: &HostSeed,
        now: i64,
        clock_notes: &mut Vec<String>,
    ) -> Result<Plan, RemoteError> {
        let (active, _) = self.active_level()?;
        let wanted = match self.settings.pinned_level {
            Some(level) => Some(level),
            None => {
                let doc = repo.channel(channel).await?;
                clock_notes.extend(clock_trust::signed_time_ahead(
                    "the channel document",
                    &doc.updated,
                    now,
                ));
                doc.kernels.get(build_id).and_then(|rollout| {
                    // The clock may hold a host back, never take a level away.
                    let wanted = clock_trust::wanted_level(rollout, build_id, seed, now, active);
                    clock_notes.extend(wanted.warning(rollout, now));
                    wanted.level()
                })
            }
        };
        Ok(match (wanted, active) {
            (None, active) => Plan::NothingServed { active },
            (Some(w), Some(a)) if w == a => Plan::UpToDate(w),
            (Some(w), a) => Plan::Change {
                from: a,
                to: w,
                downgrade: a.is_some_and(|a| w < a),
            },
        })
    }

    /// Caches the signed download of `level` in place of a damaged copy. An entry that claims
    /// to be another build of this level is kept for inspection (quarantined), not overwritten.
    fn replace_cached(
        &self,
        bundle: &patchbay_core::Bundle,
        level: PatchLevel,
    ) -> Result<(), RemoteError> {
        let stored = self
            .agent
            .state_dir
            .store_bundle(bundle)
            .map_err(AgentError::Cache)?;
        if let crate::cache::StoreOutcome::Conflict { path, .. } = stored {
            let moved = crate::state::quarantine(&path).map_err(|e| file_err(&path, e))?;
            (self.agent.log)(&format!(
                "warning: {} held another bundle of level {level}; moved it to {}",
                path.display(),
                moved.display()
            ));
            self.agent
                .state_dir
                .store_bundle(bundle)
                .map_err(AgentError::Cache)?;
        }
        Ok(())
    }

    /// One check; applies the plan when `apply` is set.
    pub fn update(&self, origin: &Origin, apply: bool) -> Result<UpdateReport, RemoteError> {
        let link = self.files.load_link()?;
        let identity = self.agent.identity()?;
        let seed = self.files.seed(link.as_ref())?;
        let channel = self.channel(link.as_ref());
        let rt = runtime()?;
        let mut clock_notes = Vec::new();
        let result = rt.block_on(async {
            let (repo, _dir) = self.load(origin, link.as_ref()).await?;
            let now = patchbay_core::clock::unix_seconds();
            self.trust_clock(&repo, origin, now, &mut clock_notes)?;
            let plan = self
                .plan(
                    &repo,
                    &channel,
                    &identity.build_id,
                    &seed,
                    now,
                    &mut clock_notes,
                )
                .await?;
            let mut applied = None;
            if let (true, Plan::UpToDate(level)) = (apply, &plan) {
                let cached = self.agent.state_dir.bundle_path(&identity.build_id, *level);
                // `boot` re-applies from this copy: one damaged on disk is replaced now, from
                // the signed download, not found broken at the next reboot.
                let bundle = match crate::cache::read_cached_bundle(&cached) {
                    Ok(bundle) => bundle,
                    Err(e) => {
                        (self.agent.log)(&format!(
                            "warning: the cached bundle of the active level is damaged ({e}); \
                             replacing it with the signed download"
                        ));
                        let bundle = repo.bundle(&identity.build_id, *level).await?;
                        self.replace_cached(&bundle, *level)?;
                        bundle
                    }
                };
                // The level is live but an operation on it was never recorded (the agent was
                // interrupted after the transition): finish it, so history and cleanup are
                // right (boot re-applies from the history). The bundle verified above is
                // applied as it is, not read back from the cache.
                if self.agent.has_pending_operation()? {
                    let shown = cached.display().to_string();
                    applied = Some(self.agent.apply_bundle(bundle, &shown, &self.apply)?);
                }
            }
            let disabled = match (apply, &plan) {
                (true, Plan::Change { .. }) => kill_switch(self.agent, &self.disable_file),
                _ => None,
            };
            if let Some(why) = &disabled {
                (self.agent.log)(&format!("disabled: {why}; {plan} is not applied"));
            }
            if let (true, None, Plan::Change { to, downgrade, .. }) = (apply, &disabled, &plan) {
                // The verified download goes to the kernel from memory: nothing on disk
                // between TUF's check and the cache, so nothing to leave behind or tamper with.
                let bundle = repo.bundle(&identity.build_id, *to).await?;
                crate::fault::crash_point(crate::fault::FaultPoint::AfterDownload);
                let opts = ApplyOptions {
                    allow_downgrade: *downgrade,
                    ..self.apply
                };
                let shown = bundle_target_name(&identity.build_id, *to);
                applied = Some(self.agent.apply_bundle(bundle, &shown, &opts)?);
            }
            Ok::<_, RemoteError>(UpdateReport {
                plan,
                applied,
                disabled,
                channel: channel.clone(),
                targets_version: repo.targets_version(),
            })
        });
        for note in &clock_notes {
            (self.agent.log)(&format!("warning: {note}"));
        }
        if let (Origin::Server, Some(link)) = (origin, link.as_ref()) {
            let error = result.as_ref().err().map(ToString::to_string);
            let unreachable = matches!(result, Err(RemoteError::Unreachable { .. }));
            if !unreachable {
                // Best effort: a failed check-in is reported at the next check.
                let disabled = result.as_ref().is_ok_and(|r| r.disabled.is_some());
                let clock = clock_trust::clock_warning(&clock_notes);
                let checkin = self.checkin_with_clock(link, error.as_deref(), disabled, clock);
                if let Err(e) = rt.block_on(checkin) {
                    (self.agent.log)(&format!("check-in failed: {e}"));
                }
            }
        }
        result
    }

    /// Reports this host's state to the server.
    pub async fn checkin(
        &self,
        link: &ServerLink,
        error: Option<&str>,
        disabled: bool,
    ) -> Result<(), RemoteError> {
        self.checkin_with_clock(link, error, disabled, None).await
    }

    /// [`Remote::checkin`] with a warning about this host's clock, when it has one.
    pub async fn checkin_with_clock(
        &self,
        link: &ServerLink,
        error: Option<&str>,
        disabled: bool,
        clock_warning: Option<ClockWarning>,
    ) -> Result<(), RemoteError> {
        let identity = self.agent.identity()?;
        let (active, state) = self.active_level()?;
        let state = match (error, state) {
            (Some(_), _) => HostState::Error,
            (None, _) if disabled => HostState::Disabled,
            (None, PatchState::Patched) => HostState::Patched,
            (None, PatchState::Unpatched) => HostState::Unpatched,
            (None, PatchState::Transition) => HostState::Transition,
            (None, PatchState::Interrupted) => HostState::Interrupted,
        };
        let (url, trust) = link.endpoint(self.settings.server_ca_file.as_deref())?;
        let mut request = CheckInRequest {
            kernel_release: identity.release.clone(),
            upstream_version: running_upstream_version(self.agent),
            build_id: identity.build_id.clone(),
            active_level: active,
            state,
            last_error: error.map(|e| e.chars().take(4000).collect::<String>()),
            agent_version: AGENT_VERSION.to_owned(),
            clock_warning,
        };
        let token = Some(link.host_token.as_str());
        let path = "api/v1/checkin";
        let reply: CheckInReply = match post_json(&url, &trust, path, token, &request).await {
            // A server older than the field refuses it by name: the rest still gets through.
            Err(RemoteError::Refused {
                status: 400,
                message,
            }) if request.clock_warning.is_some() && message.contains("clock_warning") => {
                (self.agent.log)(
                    "warning: the server is older than clock warnings; the check-in goes \
                     without it",
                );
                request.clock_warning = None;
                post_json(&url, &trust, path, token, &request).await?
            }
            other => other?,
        };
        // The server's view of which upstream release's fixes this host has (`patchbay uname`).
        let record = Effective {
            build_id: identity.build_id.to_string(),
            level: active.map(PatchLevel::get),
            effective_version: reply.effective_version,
        };
        if let Ok(bytes) = serde_json::to_vec(&record) {
            let path = self.files.effective.clone();
            let _ = patchbay_core::fsutil::write_private(&path, &bytes);
        }
        Ok(())
    }

    /// `patchbay daemon`: check every interval (+ jitter); on failure retry with exponential
    /// backoff (+ jitter) up to the interval. Runs until killed.
    pub fn daemon(&self) -> ! {
        let mut failures: u32 = 0;
        loop {
            let wait = self.daemon_step(&mut failures);
            std::thread::sleep(wait);
        }
    }

    /// One round of the daemon: a check (applying when `auto_update`), logged; returns how long
    /// to wait before the next one.
    pub fn daemon_step(&self, failures: &mut u32) -> Duration {
        match self.update(&Origin::Server, self.settings.auto_update) {
            Ok(report) => {
                *failures = 0;
                let done = match (&report.applied, &report.disabled) {
                    (Some(o), _) => format!("; {o}"),
                    (None, Some(why)) => format!("; not applied, disabled: {why}"),
                    (None, None) => String::new(),
                };
                (self.agent.log)(&format!(
                    "check: channel {} (targets v{}): {}{done}",
                    report.channel, report.targets_version, report.plan
                ));
                self.settings.interval + jitter(self.settings.jitter)
            }
            Err(e) => {
                *failures = failures.saturating_add(1);
                (self.agent.log)(&format!("check failed: {e}"));
                backoff(*failures, self.settings.interval)
            }
        }
    }
}

fn classify(e: UpdateError, url: &str) -> RemoteError {
    if e.is_unreachable() {
        RemoteError::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        }
    } else {
        RemoteError::Update(e)
    }
}

fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() || max.is_zero() {
        return Duration::ZERO;
    }
    let n = u64::from_le_bytes(bytes);
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(n % max_ms)
}

/// 30 s, 60 s, 120 s, ... capped at `cap`, each plus up to 50 % jitter.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_secs(30).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = base.min(cap);
    base + jitter(base / 2)
}

/// What `boot` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// The last active level was re-applied from the cache.
    Applied(ApplyOutcome),
    /// The kill switch is set (the text says which); nothing was applied.
    Disabled(String),
    /// Nothing to re-apply (no level was active for this build, or its bundle is gone); why.
    NothingToApply(String),
}

/// `patchbay boot`: re-applies the last active level of the running build-id from the cache,
/// offline, unless the kill switch is set.
pub fn boot(
    agent: &Agent<'_>,
    disable_file: &Path,
    opts: &ApplyOptions,
) -> Result<BootOutcome, RemoteError> {
    if let Some(why) = kill_switch(agent, disable_file) {
        return Ok(BootOutcome::Disabled(why));
    }
    let identity = agent.identity()?;
    let (state, quarantined) = agent.load_state_or_quarantine()?;
    let opts = ApplyOptions {
        allow_downgrade: true,
        ..*opts
    };
    if quarantined.is_some() {
        // The history is lost. The module files tell which level was loaded last: the agent
        // keeps the module of the active level and removes those of replaced ones.
        return Ok(
            match agent.state_dir.level_with_module_file(&identity.build_id) {
                Some(path) => BootOutcome::Applied(agent.apply(&path, &opts)?),
                None => BootOutcome::NothingToApply(
                    "the state file was corrupt and no cached level has its module file".into(),
                ),
            },
        );
    }
    // An apply or rollback cut short (killed, power lost) before it was recorded: the level
    // it was activating may have been live when the machine went down, and it is the level
    // this host was told to run; re-apply it rather than the one before it.
    if let Some(pending) = state.pending.as_ref().filter(|p| {
        p.build_id == identity.build_id && matches!(p.op, OpKind::Apply | OpKind::Rollback)
    }) {
        // A level that took the machine down while loading would do it again at every boot:
        // try an interrupted operation once. The marker names the kernel and level this boot
        // is about to load (not the operation: the apply below records a new pending
        // operation, with its own pid and time, before it loads); finding it at the next boot
        // means that boot never returned from the load. It is removed once the load returns.
        let marker = agent.state_dir.root().join("boot-attempt");
        let attempt = format!("{} {:?}\n", identity.build_id, pending.level);
        let tried = std::fs::read_to_string(&marker).ok().as_deref() == Some(attempt.as_str());
        if tried {
            (agent.log)(&format!(
                "warning: the last boot already tried to complete the interrupted {} of \
                 level {}; not again. Re-applying the last recorded level instead",
                pending.op,
                pending.level.map_or_else(|| "?".into(), |l| l.to_string())
            ));
        }
        if let (false, Some(level)) = (tried, pending.level) {
            let path = agent.state_dir.bundle_path(&identity.build_id, level);
            if path.exists() {
                patchbay_core::fsutil::write_private(&marker, attempt.as_bytes())
                    .map_err(|e| file_err(&marker, e))?;
                (agent.log)(&format!(
                    "note: the {} of level {level} was interrupted before it was recorded; \
                     re-applying level {level}",
                    pending.op
                ));
                let applied = agent.apply(&path, &opts);
                // The load returned (either way): the machine survived this level.
                remove_boot_attempt(&marker)?;
                return Ok(BootOutcome::Applied(applied?));
            }
        }
    }
    let last = state
        .history
        .iter()
        .rev()
        .find(|h| {
            h.build_id == identity.build_id
                && matches!(
                    h.event,
                    Event::Applied | Event::RolledBack | Event::Forced | Event::Unloaded
                )
        })
        .cloned();
    let level = match last {
        Some(entry) if entry.event == Event::Unloaded => {
            return Ok(BootOutcome::NothingToApply(
                "the last operation on this kernel was an unload".into(),
            ))
        }
        Some(entry) => entry.level,
        None => None,
    };
    let Some(level) = level else {
        return Ok(BootOutcome::NothingToApply(format!(
            "no level was ever active on kernel {} ({})",
            identity.release, identity.build_id
        )));
    };
    let path = agent.state_dir.bundle_path(&identity.build_id, level);
    if !path.exists() {
        return Ok(BootOutcome::NothingToApply(format!(
            "level {level} is not in the cache ({})",
            path.display()
        )));
    }
    Ok(BootOutcome::Applied(agent.apply(&path, &opts)?))
}

fn remove_boot_attempt(marker: &Path) -> Result<(), RemoteError> {
    match std::fs::remove_file(marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(file_err(marker, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upstream_version_from_proc_version() {
        let debian = "Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 \
                      (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) \
                      #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)";
        // The compiler's "(Debian 12.2.0-14...)" comes first and is not the kernel's.
        assert_eq!(
            upstream_version(debian),
            Some(UpstreamVersion::new(6, 1, 192))
        );
        let trixie = "Linux version 6.12.117+deb13-amd64 (debian-kernel@lists.debian.org) \
                      (x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0, GNU ld (GNU Binutils \
                      for Debian) 2.44) #1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1 (2026-11-20)";
        assert_eq!(
            upstream_version(trixie),
            Some(UpstreamVersion::new(6, 12, 117))
        );
        let backport = "Linux version 6.12.95+deb12-cloud-amd64 (debian-kernel@lists.debian.org) \
                        (x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld \
                        (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian \
                        6.12.95-1~bpo12+1 (2026-07-30)";
        assert_eq!(
            upstream_version(backport),
            Some(UpstreamVersion::new(6, 12, 95))
        );
        assert_eq!(upstream_version("Linux version 6.8.0 #1 SMP"), None);
        assert_eq!(upstream_version("Debian"), None);
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("4h").unwrap(), Duration::from_secs(4 * 3600));
        assert_eq!(parse_interval("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_interval("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_interval("4 hours").is_err());
        assert!(parse_interval("").is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(600);
        assert!(backoff(1, cap) >= Duration::from_secs(30));
        assert!(backoff(1, cap) <= Duration::from_secs(45));
        assert!(backoff(3, cap) >= Duration::from_secs(120));
        assert!(backoff(30, cap) <= Duration::from_secs(900));
    }

    #[test]
    fn shipped_config_file_is_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, include_str!("../../../dist/systemd/agent.toml")).unwrap();
        let shipped = Settings::load(&path).unwrap();
        assert_eq!(shipped, Settings::load(&dir.path().join("none")).unwrap());
    }

    #[test]
    fn config_defaults_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Settings::load(&dir.path().join("none.toml")).unwrap();
        assert_eq!(missing.interval, Duration::from_secs(4 * 3600));
        assert!(missing.auto_update);
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "interval = \"10m\"\nauto_update = false\npinned_level = 3\n",
        )
        .unwrap();
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.interval, Duration::from_secs(600));
        assert!(!s.auto_update);
        assert_eq!(s.pinned_level.map(PatchLevel::get), Some(3));
        std::fs::write(&path, "intervall = \"10m\"\n").unwrap();
        assert!(
            Settings::load(&path)
                .unwrap_err()
                .to_string()
                .contains("intervall"),
            "{:?} does not contain {:?}",
            Settings::load(&path).unwrap_err().to_string(),
            "intervall"
        );
        std::fs::write(&path, "channel = \"Bad Name\"\n").unwrap();
        assert!(
            Settings::load(&path)
                .unwrap_err()
                .to_string()
                .contains("channel"),
            "{:?} does not contain {:?}",
            Settings::load(&path).unwrap_err().to_string(),
            "channel"
        );
        std::fs::write(&path, "server_ca_file = \"/etc/patchbay/ca.pem\"\n").unwrap();
        assert_eq!(
            Settings::load(&path).unwrap().server_ca_file,
            Some(PathBuf::from("/etc/patchbay/ca.pem"))
        );
        std::fs::write(&path, "server_ca_file = \"ca.pem\"\n").unwrap();
        let refused = Settings::load(&path).unwrap_err().to_string();
        assert!(
            refused.contains("server_ca_file") && refused.contains("absolute"),
            "{refused}"
        );
    }
}
