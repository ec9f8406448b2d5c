//! `config.toml` in the data dir. `init` writes it with every default spelled out.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// The whole `config.toml`; a missing key takes its default, an unknown key is an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address `serve` listens on (`--listen` overrides it).
    pub listen: String,
    /// The database URL; a relative SQLite path is relative to the data dir.
    pub database: String,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client
    /// (failed logins are counted per client address); empty: the peer is the client.
    pub trusted_proxies: Vec<crate::proxy::AddressRange>,
    /// `[tuf]`: root keys and how long each signed role lasts.
    pub tuf: TufConfig,
    /// `[limits]`: request sizes, timeouts and concurrency.
    pub limits: Limits,
    /// `[ui]`: dashboard sessions and login lockout.
    pub ui: UiConfig,
    /// `[metrics]`: who may read `/metrics`.
    pub metrics: MetricsConfig,
    /// `[retention]`: how long check-in history is kept.
    pub retention: RetentionConfig,
    /// `[cve]`: how old the CVE data may be before the server warns.
    pub cve: CveConfig,
    /// `[tls]`: the certificate `serve` answers with, and how hosts check it.
    pub tls: TlsConfig,
}

/// What `serve` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServedProtocol {
    /// HTTPS with `[tls]`'s certificate (the default).
    Https,
    /// Plain HTTP: tokens and passwords cross the network in clear. Only for a test, or behind
    /// a TLS proxy on the same machine; `serve` warns at every start.
    InsecureHttp,
}

impl ServedProtocol {
    /// The value as written in `config.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServedProtocol::Https => "https",
            ServedProtocol::InsecureHttp => "insecure-http",
        }
    }
}

/// How hosts know the server's certificate is the right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostsCheckCertificate {
    /// By its SHA-256, which registration keys carry (a self-signed certificate; `init`'s).
    Pin,
    /// Against a CA (the platform's roots or the agent's `ca_file`); registration keys carry
    /// only the root metadata's hash.
    Ca,
}

impl HostsCheckCertificate {
    /// The value as written in `config.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            HostsCheckCertificate::Pin => "pin",
            HostsCheckCertificate::Ca => "ca",
        }
    }
}

impl std::str::FromStr for HostsCheckCertificate {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "pin" => Ok(HostsCheckCertificate::Pin),
            "ca" => Ok(HostsCheckCertificate::Ca),
            other => Err(format!(
                "{other:?}: expected pin (registration keys carry the certificate's SHA-256) or \
                 ca (a CA signed it)"
            )),
        }
    }
}

/// `[tls]` of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `https` (default) or `insecure-http` (`serve --insecure-http` too).
    pub protocol: ServedProtocol,
    /// The certificate chain (PEM); relative to the data dir.
    pub certificate: String,
    /// Its private key (PEM); relative to the data dir.
    pub private_key: String,
    /// How hosts check the certificate: `pin` or `ca`.
    pub hosts_check: HostsCheckCertificate,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            protocol: ServedProtocol::Https,
            certificate: "tls/server.crt".into(),
            private_key: "tls/server.key".into(),
            hosts_check: HostsCheckCertificate::Pin,
        }
    }
}

impl TlsConfig {
    /// The certificate and key files, relative paths taken from `data_dir`.
    pub fn files(&self, data_dir: &Path) -> crate::tls::CertificateFiles {
        crate::tls::CertificateFiles {
            certificate: data_dir.join(&self.certificate),
            private_key: data_dir.join(&self.private_key),
        }
    }
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// Any API token (viewer or higher), as `Authorization: Bearer` (Prometheus
    /// `authorization` / `bearer_token_file`).
    Token,
    /// Not served at all (404).
    Disabled,
}

impl MetricsAccess {
    /// The value as written in `config.toml`: `token` or `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsAccess::Token => "token",
            MetricsAccess::Disabled => "disabled",
        }
    }
}

/// `[metrics]` of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Who may read `/metrics` (default: any API token).
    pub access: MetricsAccess,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            access: MetricsAccess::Token,
        }
    }
}

/// How browsers reach the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain HTTP (a trusted network, or a test).
    Http,
    /// Through TLS (a reverse proxy in front): session cookies are sent over TLS only
    /// (`Secure`).
    Https,
}

impl Transport {
    /// The value as written in `config.toml`: `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Https => "https",
        }
    }
}

/// `[ui]` of `config.toml`: the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Dashboard sessions expire after this many hours.
    pub session_hours: u32,
    /// How browsers reach the dashboard; `https` marks the session cookie `Secure`.
    pub served_over: Transport,
    /// Failed logins before a user name, or a client address, is locked out.
    pub login_failures_per_user: u32,
    /// The same count for one client address (default 50).
    pub login_failures_per_address: u32,
    /// How long a lockout lasts (and the window failures are counted in).
    pub login_lockout_secs: u32,
}

/// `[retention]` of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Check-in history older than this is deleted (each host's last state stays).
    pub checkin_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { checkin_days: 90 }
    }
}

/// `[cve]` of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CveConfig {
    /// CVE data whose newest CVE was published more than this many days ago is outdated:
    /// every dashboard page, `/metrics` and `doctor` say so (default 7).
    pub max_age_days: u32,
}

impl Default for CveConfig {
    fn default() -> Self {
        CveConfig { max_age_days: 7 }
    }
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            session_hours: 12,
            served_over: Transport::Http,
            login_failures_per_user: 5,
            login_failures_per_address: 50,
            login_lockout_secs: 900,
        }
    }
}

/// `[tuf]` of `config.toml`: the signing keys and the lifetime of each role's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TufConfig {
    /// Root keys made by `init`, and how many must sign a new root.
    pub root_keys: u32,
    /// How many of the root keys must sign a new root (1 to `root_keys`).
    pub root_threshold: u32,
    /// Days a signed `root.json` is valid (default 365).
    pub root_expires_days: u32,
    /// Days a signed `targets.json` is valid (default 90).
    pub targets_expires_days: u32,
    /// Days a signed `snapshot.json` is valid (default 7).
    pub snapshot_expires_days: u32,
    /// Hours a signed `timestamp.json` is valid (default 24). Every role whose key is online
    /// is re-signed when less than half of its lifetime remains (`serve` checks every minute).
    pub timestamp_expires_hours: u32,
}

/// `[limits]` of `config.toml`: what one request may cost the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest bundle `POST /api/v1/bundles` accepts.
    pub max_bundle_bytes: u64,
    /// Largest JSON request body.
    pub max_json_bytes: u64,
    /// A request not answered within this many seconds (body upload included) is cut with
    /// 408, so slow clients cannot hold connections and memory forever.
    pub request_timeout_secs: u32,
    /// Fleet requests handled at once (`/tuf` downloads, and requests carrying a valid host
    /// or API token: check-ins, publishing); more wait (up to half the request timeout) and
    /// are then answered 503.
    pub max_concurrent_requests: u32,
    /// Every other request (logins, registrations, dashboard pages) draws from this smaller
    /// share, so anonymous clients can never take the fleet's.
    pub max_anonymous_requests: u32,
    /// Anonymous requests from one client address (IPv6: its /64) at once, waiting ones
    /// included; more are answered 429.
    pub max_anonymous_requests_per_address: u32,
    /// Open connections from one peer address (IPv6: its /64) at once; one more is closed as
    /// soon as it is accepted. Trusted proxies are exempt.
    pub max_connections_per_address: u32,
    /// A request's headers must be in within this many seconds of the connection opening
    /// (or of the previous response): a partial request is cut with 408, a silent or idle
    /// keep-alive connection closed.
    pub header_timeout_secs: u32,
    /// A request body must bring at least this many bytes per second on average over each
    /// window of `body_rate_window_secs` until it is complete, or it is cut with 408.
    pub min_body_bytes_per_sec: u32,
    /// The window over which `min_body_bytes_per_sec` is measured.
    pub body_rate_window_secs: u32,
    /// A response the client stops reading (no byte taken for this many seconds) is cut.
    pub idle_connection_secs: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8470".into(),
            database: "sqlite://patchbay.db".into(),
            trusted_proxies: Vec::new(),
            tuf: TufConfig::default(),
            limits: Limits::default(),
            ui: UiConfig::default(),
            metrics: MetricsConfig::default(),
            retention: RetentionConfig::default(),
            cve: CveConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for TufConfig {
    fn default() -> Self {
        TufConfig {
            root_keys: 1,
            root_threshold: 1,
            root_expires_days: 365,
            targets_expires_days: 90,
            snapshot_expires_days: 7,
            timestamp_expires_hours: 24,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bundle_bytes: 64 << 20,
            max_json_bytes: 1 << 20,
            request_timeout_secs: 120,
            max_concurrent_requests: 1024,
            max_anonymous_requests: 64,
            max_anonymous_requests_per_address: 8,
            max_connections_per_address: 256,
            header_timeout_secs: 20,
            min_body_bytes_per_sec: 500,
            body_rate_window_secs: 10,
            idle_connection_secs: 120,
        }
    }
}

impl ServerConfig {
    /// Reads and checks `<data_dir>/config.toml`; [`ServerError::Config`] when it is missing
    /// (run `init`), does not parse, or has a value out of range (e.g. a threshold of 0).
    pub fn load(data_dir: &Path) -> Result<ServerConfig, ServerError> {
        let path = data_dir.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| ServerError::Config {
            path: path.display().to_string(),
            reason: format!(
                "{e}; run `patchbay-server init --data {}` first",
                data_dir.display()
            ),
        })?;
        let config: ServerConfig = toml::from_str(&text).map_err(|e| ServerError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        config.validate(&path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ServerError> {
        let bad = |reason: &str| ServerError::Config {
            path: path.display().to_string(),
            reason: reason.into(),
        };
        if self.tuf.root_threshold == 0 || self.tuf.root_threshold > self.tuf.root_keys {
            return Err(bad(
                "tuf.root_threshold must be between 1 and tuf.root_keys",
            ));
        }
        if self.tuf.timestamp_expires_hours == 0
            || self.tuf.snapshot_expires_days == 0
            || self.tuf.targets_expires_days == 0
            || self.tuf.root_expires_days == 0
        {
            return Err(bad("every tuf.*_expires_* must be at least 1"));
        }
        if self.ui.session_hours == 0 {
            return Err(bad("ui.session_hours must be at least 1"));
        }
        if self.limits.max_bundle_bytes == 0 || self.limits.max_json_bytes == 0 {
            return Err(bad("limits must be at least 1 byte"));
        }
        if self.limits.request_timeout_secs == 0
            || self.limits.max_concurrent_requests == 0
            || self.limits.idle_connection_secs == 0
            || self.limits.max_anonymous_requests == 0
            || self.limits.max_anonymous_requests_per_address == 0
            || self.limits.max_connections_per_address == 0
            || self.limits.header_timeout_secs == 0
            || self.limits.body_rate_window_secs == 0
        {
            return Err(bad(
                "limits.request_timeout_secs, limits.max_concurrent_requests, \
                 limits.max_anonymous_requests(_per_address), limits.max_connections_per_address, \
                 limits.header_timeout_secs, \
                 limits.body_rate_window_secs and limits.idle_connection_secs must be at least 1",
            ));
        }
        if self.ui.login_failures_per_user == 0
            || self.ui.login_failures_per_address == 0
            || self.ui.login_lockout_secs == 0
        {
            return Err(bad(
                "ui.login_failures_per_* and ui.login_lockout_secs must be at least 1",
            ));
        }
        if self.tls.certificate.is_empty() || self.tls.private_key.is_empty() {
            return Err(bad("tls.certificate and tls.private_key must name files"));
        }
        if self.retention.checkin_days == 0 {
            return Err(bad("retention.checkin_days must be at least 1"));
        }
        if self.cve.max_age_days == 0 {
            return Err(bad("cve.max_age_days must be at least 1"));
        }
        Ok(())
    }

    /// The commented file `init` writes.
    pub fn commented(&self) -> String {
        let t = &self.tuf;
        let l = &self.limits;
        format!(
            "# patchbay-server configuration. Every setting is shown with its default.\n\
             \n\
             # Address `patchbay-server serve` listens on (`--listen` overrides it).\n\
             listen = {listen:?}\n\
             # Database URL. SQLite paths are relative to the data directory.\n\
             database = {database:?}\n\
             # Reverse proxies in front of the server (addresses or CIDR ranges, e.g.\n\
             # [\"127.0.0.1\", \"10.0.0.0/8\"]). Only from these peers is X-Forwarded-For\n\
             # read (its right-most hop that is not one of them is the client); from anyone\n\
             # else it is ignored. Failed logins are counted per client address.\n\
             trusted_proxies = [{trusted_proxies}]\n\
             \n\
             [tuf]\n\
             # Root keys created by `init` and how many of them must sign a new root.json.\n\
             root_keys = {root_keys}\n\
             root_threshold = {root_threshold}\n\
             # Metadata lifetimes. `serve` re-signs every role whose key is online when less\n\
             # than half of its lifetime remains, and warns from 30 days before a role whose key\n\
             # is offline expires; agents refuse expired metadata.\n\
             root_expires_days = {root_expires}\n\
             targets_expires_days = {targets_expires}\n\
             snapshot_expires_days = {snapshot_expires}\n\
             timestamp_expires_hours = {timestamp_expires}\n\
             \n\
             [limits]\n\
             # Largest bundle accepted by POST /api/v1/bundles, in bytes.\n\
             max_bundle_bytes = {max_bundle}\n\
             # Largest JSON request body, in bytes.\n\
             max_json_bytes = {max_json}\n\
             # A request not answered within this many seconds (upload included) gets 408.\n\
             request_timeout_secs = {request_timeout}\n\
             # Fleet requests handled at once: /tuf downloads and requests with a valid host\n\
             # or API token (check-ins, publish). More wait, up to half the timeout, then 503.\n\
             max_concurrent_requests = {max_concurrent}\n\
             # Every other request (login, registration, dashboard pages) shares this smaller\n\
             # limit, so anonymous clients never take the fleet's share; and one client\n\
             # address (IPv6: its /64; behind trusted_proxies, the forwarded client) may have\n\
             # this many of them at once, waiting ones included, more get 429.\n\
             max_anonymous_requests = {max_anonymous}\n\
             max_anonymous_requests_per_address = {max_anonymous_per_address}\n\
             # Open connections from one peer address (IPv6: its /64) at once; one more is\n\
             # closed when accepted. Peers in trusted_proxies are exempt.\n\
             max_connections_per_address = {max_connections_per_address}\n\
             # A request's headers must be in within this many seconds of the connection\n\
             # opening or of the previous response (else 408; an idle keep-alive is closed).\n\
             header_timeout_secs = {header_timeout}\n\
             # A request body must bring at least min_body_bytes_per_sec on average over each\n\
             # window of body_rate_window_secs until it is complete, else 408: a client that\n\
             # trickles a byte now and then cannot hold a request.\n\
             min_body_bytes_per_sec = {min_body_rate}\n\
             body_rate_window_secs = {body_rate_window}\n\
             # A response the client stops reading for this many seconds is cut.\n\
             idle_connection_secs = {idle_connection}\n\
             \n\
             [ui]\n\
             # Dashboard sessions expire after this many hours.\n\
             session_hours = {session_hours}\n\
             # \"https\" when browsers reach the dashboard through TLS (a reverse proxy): the\n\
             # session cookie is then marked Secure and never sent over plain HTTP.\n\
             served_over = {served_over:?}\n\
             # Failed logins for one user name from one client address, and from one address\n\
             # (IPv6: its /64) whatever the names, before that pair or that address is locked\n\
             # out (429) for login_lockout_secs. A user is never locked out from every address.\n\
             # Behind a reverse proxy, list it in trusted_proxies (top of this file).\n\
             login_failures_per_user = {per_user}\n\
             login_failures_per_address = {per_address}\n\
             login_lockout_secs = {lockout}\n\
             \n\
             [metrics]\n\
             # Who may read /metrics: \"token\" (any API token, viewer or higher, as a bearer\n\
             # token) or \"disabled\".\n\
             access = {metrics_access:?}\n\
             \n\
             [retention]\n\
             # Check-in history older than this many days is deleted (hosts keep their last\n\
             # state).\n\
             checkin_days = {checkin_days}\n\
             \n\
             [cve]\n\
             # CVE data whose newest CVE was published more than this many days ago is\n\
             # outdated: every dashboard page, /metrics and `doctor` warn (CVEs published since\n\
             # are not counted). `init` installs the kernel CNA snapshot shipped with this\n\
             # version; keep the data current with `patchbay-server cve sync` (docs/exposure.md).\n\
             max_age_days = {max_age_days}\n\
             \n\
             [tls]\n\
             # \"https\", or \"insecure-http\" (tokens and passwords then cross the network in\n\
             # clear; only behind a TLS proxy on this machine, or for a test).\n\
             protocol = {protocol:?}\n\
             # The certificate chain and its private key (PEM), relative to the data directory.\n\
             # `serve --tls-cert/--tls-key` override them.\n\
             certificate = {certificate:?}\n\
             private_key = {private_key:?}\n\
             # How hosts check the certificate: \"pin\" (registration keys carry its SHA-256; a\n\
             # self-signed certificate) or \"ca\" (a CA signed it; hosts use their CA roots or\n\
             # the agent's ca_file).\n\
             hosts_check = {hosts_check:?}\n",
            listen = self.listen,
            database = self.database,
            trusted_proxies = self
                .trusted_proxies
                .iter()
                .map(|range| format!("{:?}", range.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
            root_keys = t.root_keys,
            root_threshold = t.root_threshold,
            root_expires = t.root_expires_days,
            targets_expires = t.targets_expires_days,
            snapshot_expires = t.snapshot_expires_days,
            timestamp_expires = t.timestamp_expires_hours,
            max_bundle = l.max_bundle_bytes,
            max_json = l.max_json_bytes,
            session_hours = self.ui.session_hours,
            served_over = self.ui.served_over.as_str(),
            metrics_access = self.metrics.access.as_str(),
            request_timeout = l.request_timeout_secs,
            max_concurrent = l.max_concurrent_requests,
            max_anonymous = l.max_anonymous_requests,
            max_anonymous_per_address = l.max_anonymous_requests_per_address,
            max_connections_per_address = l.max_connections_per_address,
            header_timeout = l.header_timeout_secs,
            min_body_rate = l.min_body_bytes_per_sec,
            body_rate_window = l.body_rate_window_secs,
            idle_connection = l.idle_connection_secs,
            per_user = self.ui.login_failures_per_user,
            per_address = self.ui.login_failures_per_address,
            lockout = self.ui.login_lockout_secs,
            checkin_days = self.retention.checkin_days,
            max_age_days = self.cve.max_age_days,
            protocol = self.tls.protocol.as_str(),
            certificate = self.tls.certificate,
            private_key = self.tls.private_key,
            hosts_check = self.tls.hosts_check.as_str(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn commented_file_parses_back_to_the_defaults() {
        let config = ServerConfig::default();
        let parsed: ServerConfig = toml::from_str(&config.commented()).unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn trusted_proxies_parse_and_a_bad_one_is_named() {
        let config = ServerConfig {
            trusted_proxies: vec!["127.0.0.1".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..ServerConfig::default()
        };
        let parsed: ServerConfig = toml::from_str(&config.commented()).unwrap();
        assert_eq!(parsed, config);
        let err = toml::from_str::<ServerConfig>("trusted_proxies = [\"10.0.0.1/8\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("10.0.0.1/8"), "{err}");
    }

    #[test]
    fn threshold_above_key_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::default();
        config.tuf.root_threshold = 2;
        std::fs::write(
            dir.path().join("config.toml"),
            toml::to_string(&config).unwrap(),
        )
        .unwrap();
        let err = ServerConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("root_threshold"), "{err}");
    }
}
