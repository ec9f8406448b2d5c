//! The server's TLS: the certificate `init` makes (self-signed, rcgen) or is given, loaded into
//! a rustls configuration for `serve`, and its SHA-256, which registration keys carry so hosts
//! can pin it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use patchbay_core::Sha256;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ServerError;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The certificate chain (PEM), the server's own certificate first.
    pub certificate: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

fn tls_err(path: &Path, reason: impl std::fmt::Display) -> ServerError {
    ServerError::Config {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl CertificateFiles {
    /// The files `--tls-cert` and `--tls-key` name, when both are given (clap requires each
    /// with the other).
    pub fn given(certificate: Option<PathBuf>, private_key: Option<PathBuf>) -> Option<Self> {
        Some(CertificateFiles {
            certificate: certificate?,
            private_key: private_key?,
        })
    }

    /// The certificate chain, the server's own first; refused when there is none.
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, ServerError> {
        let path = &self.certificate;
        let pem = std::fs::read(path).map_err(|e| {
            tls_err(
                path,
                format!(
                    "{e}: serve refuses to start without a TLS certificate. Give --tls-cert and \
                     --tls-key, make one with `patchbay-server tls generate`, or (tokens then \
                     cross the network in clear) --insecure-http"
                ),
            )
        })?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(path, format!("not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(tls_err(path, "holds no PEM CERTIFICATE block"));
        }
        Ok(chain)
    }

    /// The SHA-256 of the server's own certificate (DER): what hosts pin.
    pub fn sha256(&self) -> Result<Sha256, ServerError> {
        let chain = self.chain()?;
        let first = chain
            .first()
            .ok_or_else(|| tls_err(&self.certificate, "holds no certificate"))?;
        Ok(Sha256::of(first.as_ref()))
    }

    /// The rustls configuration `serve` answers with (HTTP/1.1, TLS 1.2 and 1.3).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        let chain = self.chain()?;
        let key = PrivateKeyDer::from_pem_file(&self.private_key)
            .map_err(|e| tls_err(&self.private_key, format!("not a PEM private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&self.certificate, e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                tls_err(
                    &self.private_key,
                    format!("does not go with {}: {e}", self.certificate.display()),
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Writes a new self-signed certificate for `names` (DNS names or IP addresses) and its
    /// key (mode 0600). Refuses to replace existing files: hosts may pin the certificate.
    pub fn generate_self_signed(&self, names: &[String]) -> Result<Sha256, ServerError> {
        for path in [&self.certificate, &self.private_key] {
            if path.exists() {
                return Err(ServerError::Conflict(format!(
                    "{} already exists; hosts may have pinned the certificate, so it is not \
                     replaced (remove it first to make a new one)",
                    path.display()
                )));
            }
        }
        let certified = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| tls_err(&self.certificate, format!("cannot make a certificate: {e}")))?;
        for path in [&self.certificate, &self.private_key] {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| tls_err(dir, e))?;
            }
        }
        patchbay_core::fsutil::write_private(
            &self.private_key,
            certified.signing_key.serialize_pem().as_bytes(),
        )
        .map_err(|e| tls_err(&self.private_key, e))?;
        patchbay_core::fsutil::write_atomic(&self.certificate, certified.cert.pem().as_bytes())
            .map_err(|e| tls_err(&self.certificate, e))?;
        Ok(Sha256::of(certified.cert.der().as_ref()))
    }
}

/// The names a generated certificate is made for: `localhost`, `127.0.0.1`, `::1`, this
/// machine's host name, then `extra` (`--tls-san`), each once.
pub fn default_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_generated_certificate_loads_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertificateFiles {
            certificate: dir.path().join("tls/server.crt"),
            private_key: dir.path().join("tls/server.key"),
        };
        let sha = files
            .generate_self_signed(&default_names(&["patches.example".into()]))
            .unwrap();
        assert_eq!(files.sha256().unwrap(), sha);
        files.server_config().unwrap();
        let err = files.generate_self_signed(&[]).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(files.sha256().unwrap(), sha, "the certificate was replaced");
    }

    #[test]
    fn a_missing_certificate_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertificateFiles {
            certificate: dir.path().join("none.crt"),
            private_key: dir.path().join("none.key"),
        };
        let err = files.server_config().unwrap_err().to_string();
        assert!(
            err.contains("--insecure-http") && err.contains("--tls-cert"),
            "{err}"
        );
    }
}
