//! Uploading a bundle to a Patchbay server (`POST /api/v1/bundles`, operator or admin token),
//! and attaching the upgrade report of a published level to it ([`attach_report`]).
//!
//! The bundle is verified locally first, so a damaged file never leaves the machine; the server
//! checks it again (level N+1, manifest against module, livepatch for that kernel) and stores
//! nothing when it refuses.

use std::path::Path;
use std::time::Duration;

use patchbay_core::protocol::{ErrorBody, PublishReceipt};
use patchbay_core::{Bundle, BundleError, UpgradeReport};
pub use patchbay_updates::tls::ServerTrust;

/// A patch server the builder's commands talk to: its base URL, an API token, and how its TLS
/// certificate is trusted (a CA, or its SHA-256 pinned: `--ca-file`, `--server-cert-sha256`).
#[derive(Clone)]
pub struct ServerAccess {
    /// The base URL, e.g. `https://patches.example:8470`.
    pub url: String,
    /// An operator or admin API token; a secret (not shown by `Debug`).
    pub token: String,
    /// How the server's certificate is checked.
    pub trust: ServerTrust,
}

impl std::fmt::Debug for ServerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAccess")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("trust", &self.trust)
            .finish()
    }
}

impl ServerAccess {
    /// An HTTP client for this server with `timeout`, trusting its certificate as told. A
    /// pinned certificate or a CA file with an `http://` URL is refused: the token would cross
    /// the network in clear, unchecked, where TLS was asked for.
    pub fn client(&self, timeout: Duration) -> Result<reqwest::Client, String> {
        let plain = url::Url::parse(&self.url).is_ok_and(|u| u.scheme() == "http");
        if plain && !matches!(self.trust, ServerTrust::PlatformRoots) {
            return Err(format!(
                "--server {} is plain HTTP, but --server-cert-sha256 or --ca-file asks for a \
                 checked TLS certificate: the token would cross the network in clear. Use \
                 https://",
                self.url
            ));
        }
        patchbay_updates::tls::client(&self.trust, timeout).map_err(|e| e.to_string())
    }

    /// The text of a failed request: a refused certificate said plainly, else the whole chain.
    pub fn describe(err: &reqwest::Error) -> String {
        patchbay_updates::tls::describe(err)
    }
}

/// Why a bundle or report was not published. Nothing is stored on the server in any case.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The local bundle failed verification (unreadable, damaged, inconsistent); not uploaded.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The bundle verified but could not be read again for the upload.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The bundle file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `--server` is not an absolute `http`/`https` URL.
    #[error("invalid server URL {url:?}: {reason} (expected e.g. http://patches.example:8470)")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request or its reply failed in transport (connection refused, DNS, timeout, a
    /// refused certificate, ...).
    #[error("cannot reach the server at {url}: {reason}; check --server (and --ca-file or --server-cert-sha256) and that `patchbay-server serve` runs")]
    Connect {
        /// The endpoint that was tried.
        url: String,
        /// The transport error, with its causes.
        reason: String,
    },
    /// The server answered with a non-2xx status (bad token, wrong level, bundle refused).
    #[error("the server refused the {what} ({status}): {message}")]
    Refused {
        /// What was uploaded: `"bundle"` or `"report"`.
        what: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The server's error message (its JSON `error`, else the start of the body).
        message: String,
    },
    /// The upgrade report could not be serialised to JSON.
    #[error("cannot encode the upgrade report: {0}")]
    Encode(serde_json::Error),
    /// The server accepted the bundle but its 2xx reply is not a [`PublishReceipt`].
    #[error("the server answered {status} with a body that is not a publish receipt: {body}")]
    BadReply {
        /// The HTTP status code.
        status: u16,
        /// The reply body as text, at most 2000 bytes.
        body: String,
    },
}

/// Verifies `bundle_path` and uploads it to `server` (operator or admin token).
pub async fn publish(
    server: &ServerAccess,
    bundle_path: &Path,
) -> Result<PublishReceipt, PublishError> {
    Bundle::read(bundle_path)?;
    let bytes = std::fs::read(bundle_path).map_err(|source| PublishError::Read {
        path: bundle_path.display().to_string(),
        source,
    })?;
    let (status, body) = post(
        server,
        "api/v1/bundles",
        "application/octet-stream",
        bytes,
        "bundle",
    )
    .await?;
    serde_json::from_slice(&body).map_err(|_| PublishError::BadReply {
        status,
        body: shown(&body),
    })
}

/// Attaches `report` to the level it names (`POST /api/v1/kernels/{build_id}/levels/{level}/
/// report`, replacing an earlier report of that level). The level must be published first.
pub async fn attach_report(
    server: &ServerAccess,
    report: &UpgradeReport,
) -> Result<(), PublishError> {
    let bytes = serde_json::to_vec(report).map_err(PublishError::Encode)?;
    let path = format!(
        "api/v1/kernels/{}/levels/{}/report",
        report.build_id, report.level
    );
    post(server, &path, "application/json", bytes, "report").await?;
    Ok(())
}

/// At most 2000 bytes of a reply, as text.
fn shown(body: &[u8]) -> String {
    String::from_utf8_lossy(body.get(..2000).unwrap_or(body)).into_owned()
}

/// POSTs `bytes` to `path` under `server`; the status and body of a 2xx reply, else the
/// server's JSON error message as [`PublishError::Refused`] (`what` names the upload).
async fn post(
    server: &ServerAccess,
    path: &str,
    content_type: &str,
    bytes: Vec<u8>,
    what: &'static str,
) -> Result<(u16, Vec<u8>), PublishError> {
    let url_err = |reason: String| PublishError::Url {
        url: server.url.clone(),
        reason,
    };
    let base = url::Url::parse(&server.url).map_err(|e| url_err(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(url_err("the scheme must be http or https".into()));
    }
    let endpoint = base.join(path).map_err(|e| url_err(e.to_string()))?;
    let connect = |reason: String| PublishError::Connect {
        url: endpoint.to_string(),
        reason,
    };
    // Generous: a bundle can be tens of MiB, and the server verifies it before it answers.
    let client = server.client(Duration::from_secs(300)).map_err(connect)?;
    let response = client
        .post(endpoint.clone())
        .bearer_auth(&server.token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .map_err(|e| connect(ServerAccess::describe(&e)))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| connect(ServerAccess::describe(&e)))?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| shown(&body));
        return Err(PublishError::Refused {
            what,
            status,
            message,
        });
    }
    Ok((status, body.to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers one request with `status` and `body`; yields the request line
    /// and the request body it got.
    async fn one_shot(
        status: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<(String, Vec<u8>)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let (head_end, length) = loop {
                let n = stream.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    break (end + 4, length);
                }
            };
            while got.len() < head_end + length {
                let n = stream.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).await.unwrap();
            let request_line = String::from_utf8_lossy(&got)
                .lines()
                .next()
                .unwrap()
                .to_owned();
            (request_line, got[head_end..].to_vec())
        });
        (url, task)
    }

    fn access(url: String) -> ServerAccess {
        ServerAccess {
            url,
            token: "tok".into(),
            trust: ServerTrust::PlatformRoots,
        }
    }

    #[tokio::test]
    async fn a_pinned_certificate_with_an_http_url_sends_nothing() {
        // A plain-HTTP server that would accept the report: reaching it is the failure.
        let (url, request) = one_shot("201 Created", r#"{"report":true}"#).await;
        let pinned = ServerAccess {
            trust: ServerTrust::Pinned("ab".repeat(32).parse().unwrap()),
            ..access(url.clone())
        };
        let err = attach_report(&pinned, &report())
            .await
            .expect_err("the token was sent over plain HTTP");
        assert!(err.to_string().contains("plain HTTP"), "{err}");
        request.abort();
        // Without a pin or CA file, plain HTTP stays possible (a server behind a TLS proxy).
        assert!(access(url).client(Duration::from_secs(5)).is_ok());
    }

    fn report() -> UpgradeReport {
        serde_json::from_value(serde_json::json!({
            "kernel": "6.1.0-47-amd64",
            "build_id": "0123456789abcdef0123456789abcdef01234567",
            "from_version": "6.1.170", "to_version": "6.1.176", "fixes_from": "6.1.176-1",
            "level": 2, "min_cvss": 7.0, "started": "2026-11-30T06:00:00Z",
            "elapsed_seconds": 1.0, "module": null, "verification": null, "cves": []
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn attach_report_posts_to_the_level_and_surfaces_the_servers_error() {
        let (url, request) = one_shot("201 Created", r#"{"report":true}"#).await;
        attach_report(&access(url), &report()).await.unwrap();
        let (line, body) = request.await.unwrap();
        assert_eq!(
            line,
            "POST /api/v1/kernels/0123456789abcdef0123456789abcdef01234567/levels/2/report HTTP/1.1"
        );
        assert_eq!(UpgradeReport::parse(&body).unwrap(), report());

        let (url, _request) = one_shot(
            "404 Not Found",
            r#"{"error":"kernel 0123 has no published level 2"}"#,
        )
        .await;
        let e = attach_report(&access(url), &report()).await.unwrap_err();
        assert!(
            matches!(&e, PublishError::Refused { status: 404, .. })
                && e.to_string()
                    == "the server refused the report (404): kernel 0123 has no published level 2",
            "{e:?}: {e}"
        );
    }
}
