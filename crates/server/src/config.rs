//! `config.toml` in the data dir. `init` writes it with every default spelled out.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ServerError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address `serve` listens on (`--listen` overrides it).
    pub listen: String,
    /// The database URL; a relative SQLite path is relative to the data dir.
    pub database: String,
    pub tuf: TufConfig,
    pub limits: Limits,
    pub ui: UiConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Dashboard sessions expire after this many hours.
    pub session_hours: u32,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig { session_hours: 12 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TufConfig {
    /// Root keys made by `init`, and how many must sign a new root.
    pub root_keys: u32,
    pub root_threshold: u32,
    pub root_expires_days: u32,
    pub targets_expires_days: u32,
    pub snapshot_expires_days: u32,
    /// Every role whose key is online is re-signed when less than half of its lifetime
    /// remains (`serve` checks every minute).
    pub timestamp_expires_hours: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest bundle `POST /api/v1/bundles` accepts.
    pub max_bundle_bytes: u64,
    /// Largest JSON request body.
    pub max_json_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8470".into(),
            database: "sqlite://patchbay.db".into(),
            tuf: TufConfig::default(),
            limits: Limits::default(),
            ui: UiConfig::default(),
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
        }
    }
}

impl ServerConfig {
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
             \n\
             [ui]\n\
             # Dashboard sessions expire after this many hours.\n\
             session_hours = {session_hours}\n",
            listen = self.listen,
            database = self.database,
            root_keys = t.root_keys,
            root_threshold = t.root_threshold,
            root_expires = t.root_expires_days,
            targets_expires = t.targets_expires_days,
            snapshot_expires = t.snapshot_expires_days,
            timestamp_expires = t.timestamp_expires_hours,
            max_bundle = l.max_bundle_bytes,
            max_json = l.max_json_bytes,
            session_hours = self.ui.session_hours,
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
