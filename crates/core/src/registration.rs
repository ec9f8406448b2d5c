//! The registration key: the secret that admits a host to a channel, and the fingerprints the
//! host checks before it sends that secret (as `kubeadm join --discovery-token-ca-cert-hash`).
//!
//! Format 2, one copy-pasteable word:
//!
//! ```text
//! pbreg2.<secret: 64 hex>.root-sha256=<64 hex>[.cert-sha256=<64 hex>]
//! ```
//!
//! `root-sha256` is the SHA-256 of the server's TUF `root.json` (the file's bytes as served);
//! `cert-sha256` the SHA-256 of its TLS certificate (DER), present when the server's
//! certificate is self-signed and hosts pin it. The server stores only the hash of the secret;
//! the fingerprints are added whenever a key is shown. Format 1 keys (`pbreg_<64 hex>`, from
//! before format 2) carry no fingerprints: a host registering with one needs the root and the
//! certificate's trust from elsewhere (`--root`, `--server-cert-sha256` / `--ca-file`) or an
//! explicit `--trust-on-first-use`.

use std::fmt;
use std::str::FromStr;

use crate::Sha256;

const FORMAT_2: &str = "pbreg2";
const FORMAT_1: &str = "pbreg_";
const ROOT_FIELD: &str = "root-sha256=";
const CERT_FIELD: &str = "cert-sha256=";

/// The secret part of a registration key: what the host sends and the server looks up by its
/// hash. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationSecret(String);

impl RegistrationSecret {
    /// A secret from 32 random bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> RegistrationSecret {
        RegistrationSecret(format!("{FORMAT_1}{}", hex::encode(bytes)))
    }

    /// The secret as the server hashes it and `POST /api/v1/register` carries it
    /// (`pbreg_<64 hex>`, the same for both formats, so keys stored before format 2 work).
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn hex(&self) -> &str {
        self.0.get(FORMAT_1.len()..).unwrap_or_default()
    }
}

impl fmt::Debug for RegistrationSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistrationSecret(<redacted>)")
    }
}

/// What a host checks before it sends the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationPins {
    /// SHA-256 of the server's `root.json` as served.
    pub root_sha256: Sha256,
    /// SHA-256 of the server's TLS certificate (DER); `None` when hosts check it against a CA.
    pub cert_sha256: Option<Sha256>,
}

/// A registration key as an operator hands it to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationKey {
    /// Format 2: the secret and the fingerprints to check first.
    Pinned {
        /// The secret.
        secret: RegistrationSecret,
        /// The fingerprints.
        pins: RegistrationPins,
    },
    /// Format 1 (`pbreg_<64 hex>`): the secret alone.
    Unpinned {
        /// The secret.
        secret: RegistrationSecret,
    },
}

impl RegistrationKey {
    /// The secret, whichever the format.
    pub fn secret(&self) -> &RegistrationSecret {
        match self {
            RegistrationKey::Pinned { secret, .. } | RegistrationKey::Unpinned { secret } => secret,
        }
    }

    /// The fingerprints, for a format 2 key.
    pub fn pins(&self) -> Option<&RegistrationPins> {
        match self {
            RegistrationKey::Pinned { pins, .. } => Some(pins),
            RegistrationKey::Unpinned { .. } => None,
        }
    }
}

/// Why a registration key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the registration key is malformed: {reason}; expected pbreg2.<64 hex>.root-sha256=<64 hex>[.cert-sha256=<64 hex>] (or an older pbreg_<64 hex>) exactly as the server printed it")]
pub struct RegistrationKeyError {
    reason: &'static str,
}

fn bad(reason: &'static str) -> RegistrationKeyError {
    RegistrationKeyError { reason }
}

fn secret_from_hex(hex: &str) -> Result<RegistrationSecret, RegistrationKeyError> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the secret is not 64 hex digits"));
    }
    Ok(RegistrationSecret(format!(
        "{FORMAT_1}{}",
        hex.to_ascii_lowercase()
    )))
}

fn fingerprint(field: &str, text: &str) -> Result<Sha256, RegistrationKeyError> {
    text.strip_prefix(field)
        .ok_or(bad("a fingerprint field is missing or out of order"))?
        .parse()
        .map_err(|_| bad("a fingerprint is not 64 hex digits"))
}

impl FromStr for RegistrationKey {
    type Err = RegistrationKeyError;

    fn from_str(text: &str) -> Result<Self, RegistrationKeyError> {
        let text = text.trim();
        if let Some(hex) = text.strip_prefix(FORMAT_1) {
            return Ok(RegistrationKey::Unpinned {
                secret: secret_from_hex(hex)?,
            });
        }
        let mut parts = text.split('.');
        if parts.next() != Some(FORMAT_2) {
            return Err(bad("it does not start with pbreg2. (or pbreg_)"));
        }
        let secret = secret_from_hex(parts.next().ok_or(bad("the secret is missing"))?)?;
        let root_sha256 = fingerprint(
            ROOT_FIELD,
            parts.next().ok_or(bad("root-sha256 is missing"))?,
        )?;
        let cert_sha256 = parts
            .next()
            .map(|part| fingerprint(CERT_FIELD, part))
            .transpose()?;
        if parts.next().is_some() {
            return Err(bad("it has more fields than root-sha256 and cert-sha256"));
        }
        Ok(RegistrationKey::Pinned {
            secret,
            pins: RegistrationPins {
                root_sha256,
                cert_sha256,
            },
        })
    }
}

impl fmt::Display for RegistrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistrationKey::Unpinned { secret } => f.write_str(secret.expose()),
            RegistrationKey::Pinned { secret, pins } => {
                write!(
                    f,
                    "{FORMAT_2}.{}.{ROOT_FIELD}{}",
                    secret.hex(),
                    pins.root_sha256
                )?;
                if let Some(cert) = &pins.cert_sha256 {
                    write!(f, ".{CERT_FIELD}{cert}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sha(byte: &str) -> Sha256 {
        byte.repeat(32).parse().unwrap()
    }

    #[test]
    fn format_2_round_trips_with_and_without_the_certificate() {
        let secret = RegistrationSecret::from_bytes(&[7; 32]);
        for cert_sha256 in [Some(sha("cd")), None] {
            let key = RegistrationKey::Pinned {
                secret: secret.clone(),
                pins: RegistrationPins {
                    root_sha256: sha("ab"),
                    cert_sha256,
                },
            };
            let text = key.to_string();
            assert!(text.starts_with("pbreg2.0707"), "{text}");
            assert_eq!(text.parse::<RegistrationKey>().unwrap(), key);
        }
    }

    #[test]
    fn the_secret_sent_is_the_format_1_secret() {
        let old = format!("pbreg_{}", "ef".repeat(32));
        let new = format!("pbreg2.{}.root-sha256={}", "EF".repeat(32), "ab".repeat(32));
        let old: RegistrationKey = old.parse().unwrap();
        let new: RegistrationKey = new.parse().unwrap();
        assert_eq!(old.secret(), new.secret());
        assert_eq!(old.pins(), None);
        assert_eq!(new.secret().expose(), format!("pbreg_{}", "ef".repeat(32)));
        assert!(
            !format!("{:?}", new).contains("efef"),
            "Debug shows the secret"
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        let hex = "ab".repeat(32);
        for bad in [
            String::new(),
            "pbreg_xyz".into(),
            format!("pbreg3.{hex}.root-sha256={hex}"),
            format!("pbreg2.{hex}"),
            format!("pbreg2.{hex}.cert-sha256={hex}"),
            format!("pbreg2.{hex}.root-sha256={hex}.cert-sha256={hex}.x"),
            format!("pbreg2.{hex}.root-sha256=abc"),
            format!("pbreg2.{hex}.root-sha256={hex}.root-sha256={hex}"),
        ] {
            assert!(bad.parse::<RegistrationKey>().is_err(), "{bad:?} accepted");
        }
    }
}
