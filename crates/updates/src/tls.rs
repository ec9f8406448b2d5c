//! How a client trusts a patch server's TLS certificate: the platform's roots, a CA bundle of
//! the operator's, or one certificate pinned by its SHA-256 (a self-signed server; the pin
//! comes from the registration key or `--server-cert-sha256`).
//!
//! A pinned certificate is checked the way SSH checks a host key: its SHA-256 must equal the
//! pin (compared in constant time), and the handshake's signature must verify with its key, so
//! only the holder of the pinned certificate's private key can answer. Names and validity dates
//! are not read: the pin is the identity.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patchbay_core::Sha256;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use subtle::ConstantTimeEq;

/// How a client decides that it talks to the right server.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// The platform's CA roots (a certificate from a public CA; an empty store where the
    /// platform has none).
    PlatformRoots,
    /// Only the CA certificates of this PEM bundle.
    CaBundle(CaBundle),
    /// Only the certificate with this SHA-256 (of its DER bytes).
    Pinned(Sha256),
    /// Any certificate whose key signs the handshake; its SHA-256 is recorded in the slot, for
    /// `register --trust-on-first-use` to pin from then on.
    FirstUse(SeenCertificate),
}

/// The SHA-256 of the certificate a [`ServerTrust::FirstUse`] client was shown.
#[derive(Debug, Clone, Default)]
pub struct SeenCertificate(Arc<Mutex<Option<Sha256>>>);

impl SeenCertificate {
    /// The fingerprint of the last certificate seen, if a handshake got that far.
    pub fn get(&self) -> Option<Sha256> {
        match self.0.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, fingerprint: Sha256) {
        match self.0.lock() {
            Ok(mut slot) => *slot = Some(fingerprint),
            Err(poisoned) => *poisoned.into_inner() = Some(fingerprint),
        }
    }
}

/// A PEM file of CA certificates, read and checked once.
#[derive(Debug, Clone)]
pub struct CaBundle {
    path: PathBuf,
    certificates: Vec<reqwest::Certificate>,
}

impl CaBundle {
    /// Reads `path`: one or more PEM `CERTIFICATE` blocks.
    pub fn read(path: &Path) -> Result<CaBundle, TlsError> {
        let bad = |reason: String| TlsError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
        if certificates.is_empty() {
            return Err(bad("holds no PEM CERTIFICATE block".into()));
        }
        Ok(CaBundle {
            path: path.to_path_buf(),
            certificates,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why a TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file given (`--ca-file`, `ca_file`) cannot be used.
    #[error("CA file {}: {reason}; give a PEM file of the CA certificates that sign the server's certificate", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate fingerprint given as text is not a SHA-256.
    #[error("{text:?} is not a certificate SHA-256: expected 64 hex digits (optionally `sha256:` first, or colon-separated pairs as `openssl x509 -fingerprint -sha256` prints them)")]
    Fingerprint {
        /// The text given.
        text: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// The server presented a certificate other than the pinned one: refused in the handshake,
/// before a byte of the request was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the server's TLS certificate is not the pinned one: expected SHA-256 {expected}, the server \
     showed {seen}. Someone may be intercepting the connection; if the server's certificate was \
     replaced on purpose, pin the new one (the server's registration key or \
     `patchbay-server init` prints it)"
)]
pub struct PinMismatch {
    /// The pinned fingerprint.
    pub expected: Sha256,
    /// The fingerprint of the certificate the server presented.
    pub seen: Sha256,
}

/// The SHA-256 of a certificate's DER bytes: what a pin names (`openssl x509 -outform der |
/// sha256sum`).
pub fn certificate_sha256(der: &[u8]) -> Sha256 {
    Sha256::of(der)
}

/// Parses a certificate fingerprint as people copy it: 64 hex digits, optionally after
/// `sha256:` or `SHA256 Fingerprint=`, optionally as colon-separated pairs; any case.
pub fn parse_fingerprint(text: &str) -> Result<Sha256, TlsError> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let body = lower
        .strip_prefix("sha256 fingerprint=")
        .or_else(|| lower.strip_prefix("sha256:"))
        .or_else(|| lower.strip_prefix("sha256="))
        .unwrap_or(&lower);
    let hex: String = body.chars().filter(|c| *c != ':').collect();
    hex.parse().map_err(|_| TlsError::Fingerprint {
        text: text.to_owned(),
    })
}

/// The first cause in `err`'s chain (looking inside `io::Error`s, which hide their inner
/// error from `source`) that `find` recognises.
fn find_cause<T>(
    err: &(dyn std::error::Error + 'static),
    find: &dyn Fn(&(dyn std::error::Error + 'static)) -> Option<T>,
) -> Option<T> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = find(e) {
            return Some(found);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = find_cause(inner, find) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

/// The [`PinMismatch`] somewhere in `err`'s chain of causes, if the failure was a refused pin.
pub fn pin_mismatch(err: &(dyn std::error::Error + 'static)) -> Option<PinMismatch> {
    find_cause(err, &as_pin_mismatch)
}

/// Why the server's certificate was refused in the handshake, if that is how `err` failed: not
/// the pinned one ([`PinMismatch`]), or not valid under the CAs trusted (an unknown issuer, a
/// name it was not made for, expired). Nothing was sent then; retrying will not make it the
/// right server.
pub fn refused_certificate(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(mismatch) = pin_mismatch(err) {
        return Some(mismatch.to_string());
    }
    find_cause(err, &|e| match e.downcast_ref::<rustls::Error>() {
        Some(refused @ rustls::Error::InvalidCertificate(_)) => Some(format!(
            "the server's TLS certificate was refused ({refused}): it is not signed by a CA \
             this client trusts, or not valid for this server. Someone may be intercepting the \
             connection; if the server's certificate comes from a private CA, give that CA's \
             certificate (--ca-file; the agent's server_ca_file)"
        )),
        _ => None,
    })
}

fn as_pin_mismatch(e: &(dyn std::error::Error + 'static)) -> Option<PinMismatch> {
    if let Some(found) = e.downcast_ref::<PinMismatch>() {
        return Some(found.clone());
    }
    match e.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => {
            other.0.downcast_ref::<PinMismatch>().cloned()
        }
        _ => None,
    }
}

/// The text of `err` and all its causes, with a refused certificate said plainly.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    refused_certificate(err).unwrap_or_else(|| crate::error_chain(err))
}

/// A reqwest client with Patchbay's timeouts that trusts the server as `trust` says.
pub fn client(trust: &ServerTrust, timeout: Duration) -> Result<reqwest::Client, TlsError> {
    let builder = || {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("patchbay/", env!("CARGO_PKG_VERSION")))
    };
    let built = match trust {
        // Minimal hosts have no CA store: an empty one then (HTTPS fails with a clear error).
        ServerTrust::PlatformRoots => builder().build().or_else(|_| {
            builder()
                .tls_certs_only(Vec::<reqwest::Certificate>::new())
                .build()
        }),
        ServerTrust::CaBundle(bundle) => builder()
            .tls_certs_only(bundle.certificates.clone())
            .build(),
        ServerTrust::Pinned(expected) => builder()
            .tls_backend_preconfigured(pinned_config(Pin::Exactly(expected.clone()))?)
            .build(),
        ServerTrust::FirstUse(seen) => builder()
            .tls_backend_preconfigured(pinned_config(Pin::Record(seen.clone()))?)
            .build(),
    };
    built.map_err(|e| TlsError::Client(describe(&e)))
}

/// The rustls configuration of a client that accepts only the certificate `expected` names,
/// for clients built elsewhere (a test's browser-like client with cookies).
pub fn pinned_client_config(expected: &Sha256) -> Result<rustls::ClientConfig, TlsError> {
    pinned_config(Pin::Exactly(expected.clone()))
}

/// The SHA-256 of the first certificate of a PEM file's bytes, if it holds one.
pub fn pem_certificate_sha256(pem: &[u8]) -> Option<Sha256> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .map(|der| certificate_sha256(der.as_ref()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pinned_config(pin: Pin) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PinnedVerifier {
        pin,
        provider: Arc::clone(&provider),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Client(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
enum Pin {
    Exactly(Sha256),
    Record(SeenCertificate),
}

/// Accepts exactly the pinned end-entity certificate (or, first use, records whichever it
/// is), and verifies the handshake signature with that certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = certificate_sha256(end_entity.as_ref());
        match &self.pin {
            Pin::Record(slot) => {
                slot.set(seen);
                Ok(ServerCertVerified::assertion())
            }
            Pin::Exactly(expected) => {
                let equal: bool = expected
                    .as_str()
                    .as_bytes()
                    .ct_eq(seen.as_str().as_bytes())
                    .into();
                if equal {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                        rustls::OtherError(Arc::new(PinMismatch {
                            expected: expected.clone(),
                            seen,
                        })),
                    )))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_forms_people_copy() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        for text in [
            hex.clone(),
            format!("sha256:{hex}"),
            format!("SHA256 Fingerprint={colons}"),
            colons.clone(),
            format!("  {}\n", hex.to_uppercase()),
        ] {
            assert_eq!(parse_fingerprint(&text).unwrap().as_str(), hex, "{text}");
        }
        for bad in ["", "ab", &"zz".repeat(32), &format!("md5:{hex}")] {
            assert!(parse_fingerprint(bad).is_err(), "{bad:?} accepted");
        }
    }
}
