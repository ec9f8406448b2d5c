//! HTTP for the TUF client and the agent's API calls, on one reqwest client.
//!
//! tough's own HTTP transport insists on the platform's CA store; minimal hosts (and the
//! agent's initramfs tests) have none, and Patchbay does not need one for plain-HTTP servers:
//! TUF signatures, not TLS, protect what is loaded. So the client uses the platform's roots when
//! there are any and an empty root store otherwise (HTTPS then fails with a clear error).
//!
//! Every failed HTTP fetch carries a [`FetchFailure`] kind decided here, where the failure is
//! seen, so that callers tell an outage from a refusal by that kind ([`fetch_failure`]), never
//! by the wording of an error message.

use std::time::Duration;

use futures_util::StreamExt;
use tough::async_trait;
use tough::{FilesystemTransport, Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// A reqwest client with Patchbay's timeouts trusting the platform's roots; never fails for
/// lack of system CA roots ([`crate::tls::client`] for the other ways to trust a server).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    crate::tls::client(&crate::tls::ServerTrust::PlatformRoots, timeout).map_err(|e| e.to_string())
}

/// Why a reply body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The reply announced or sent more than the caller's limit; reading stopped there.
    #[error("the reply is larger than {limit} bytes; refused while reading it")]
    TooLarge {
        /// The caller's limit in bytes.
        limit: u64,
    },
    /// The connection failed while the body was being read.
    #[error("{0}")]
    Transport(#[from] reqwest::Error),
}

/// Reads a reply body of at most `limit` bytes, chunk by chunk: a reply that announces more,
/// or sends more, is refused as soon as it does, so a hostile or broken server cannot make
/// the caller buffer without bound.
pub async fn read_body_capped(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What kind of failure a fetch from a server was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// No answer: the connection was refused, reset or broke mid-reply, the name did not
    /// resolve, it timed out, or a gateway answered 502/503 for a server behind it that is
    /// down. Worth retrying later; nothing was refused.
    Unreachable,
    /// The server answered with this HTTP error status (404 excepted: tough takes that as a
    /// missing file).
    Status(u16),
    /// The request could not be made as asked (a malformed URL, a redirect loop).
    Request,
    /// The server's TLS certificate was refused (not the pinned one, or not signed by a
    /// trusted CA): someone else may be answering. Nothing was sent.
    Untrusted,
}

/// A failed HTTP fetch: its [`FetchFailure`] kind and what went wrong. It is the cause inside
/// the `TransportError` tough reports, where [`fetch_failure`] finds it again.
#[derive(Debug)]
struct FetchError {
    kind: FetchFailure,
    cause: FetchCause,
}

#[derive(Debug)]
enum FetchCause {
    Http(reqwest::Error),
    Status(reqwest::StatusCode),
}

impl FetchError {
    /// A request that failed to send, or a reply body that failed while streaming.
    fn http(e: reqwest::Error) -> Self {
        // reqwest's own classification of the failure: a connection that could not be made
        // or broke (`is_request`, `is_body`), or no answer in time. What remains is a request
        // that could not be built or followed (a bad URL, too many redirects).
        // A refused certificate is no outage: retrying will not make it the right server.
        let kind = if crate::tls::refused_certificate(&e).is_some() {
            FetchFailure::Untrusted
        } else if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() {
            FetchFailure::Unreachable
        } else {
            FetchFailure::Request
        };
        FetchError {
            kind,
            cause: FetchCause::Http(e),
        }
    }

    /// A reply with an error status.
    fn status(status: reqwest::StatusCode) -> Self {
        // A proxy or load balancer answers 502/503 when the server behind it is down or
        // restarting: an outage, like a refused connection, not the server refusing.
        let kind = match status {
            reqwest::StatusCode::BAD_GATEWAY | reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                FetchFailure::Unreachable
            }
            other => FetchFailure::Status(other.as_u16()),
        };
        FetchError {
            kind,
            cause: FetchCause::Status(status),
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            FetchCause::Http(e) => match crate::tls::refused_certificate(e) {
                Some(refused) => f.write_str(&refused),
                None => e.fmt(f),
            },
            FetchCause::Status(status) => write!(f, "HTTP {status}"),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // Shown as reqwest's error itself (Display above), so its chain goes on from there.
        match &self.cause {
            FetchCause::Http(e) => e.source(),
            FetchCause::Status(_) => None,
        }
    }
}

/// The kind of the first failed HTTP fetch in `err`'s chain of sources (`err` included): `None`
/// when the failure did not come from an HTTP fetch (a signature, a hash, a size limit, a
/// file in an archive).
pub fn fetch_failure(err: &(dyn std::error::Error + 'static)) -> Option<FetchFailure> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(fetch) = e.downcast_ref::<FetchError>() {
            return Some(fetch.kind);
        }
        next = e.source();
    }
    None
}

/// `file://` (archives) and `http(s)://` (servers) for tough.
#[derive(Debug, Clone)]
pub struct PatchbayTransport {
    client: reqwest::Client,
}

impl PatchbayTransport {
    /// A transport whose HTTP requests time out after `timeout` and whose HTTPS trusts the
    /// server as `trust` says.
    pub fn new(
        timeout: Duration,
        trust: &crate::tls::ServerTrust,
    ) -> Result<Self, crate::tls::TlsError> {
        Ok(PatchbayTransport {
            client: crate::tls::client(trust, timeout)?,
        })
    }
}

#[async_trait]
impl Transport for PatchbayTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            "http" | "https" => {
                let failed = |url: &Url, e: FetchError| {
                    TransportError::new_with_cause(TransportErrorKind::Other, url, e)
                };
                let response = self
                    .client
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| failed(&url, FetchError::http(e)))?;
                let status = response.status();
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
                }
                if !status.is_success() {
                    return Err(failed(&url, FetchError::status(status)));
                }
                let stream = response
                    .bytes_stream()
                    .map(move |chunk| chunk.map_err(|e| failed(&url, FetchError::http(e))));
                Ok(Box::pin(stream))
            }
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::io::{Read, Write};

    /// A loopback server that answers one request with an endless chunked body (or, with
    /// `announce`, a Content-Length it then exceeds).
    fn hostile_server(announce: Option<u64>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = match announce {
                Some(n) => format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n"),
                None => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            };
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = [b'x'; 8192];
            loop {
                let framed = match announce {
                    Some(_) => chunk.to_vec(),
                    None => [b"2000\r\n".as_slice(), &chunk, b"\r\n"].concat(),
                };
                if stream.write_all(&framed).is_err() {
                    return; // the client hung up: what we want
                }
            }
        });
        url
    }

    /// A loopback server that answers every request with `status` and an empty body.
    fn status_server(status: &'static str) -> Url {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x.json", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let reply =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        url.parse().unwrap()
    }

    async fn fetch_error(url: Url) -> TransportError {
        let transport = PatchbayTransport::new(
            Duration::from_secs(30),
            &crate::tls::ServerTrust::PlatformRoots,
        )
        .unwrap();
        match transport.fetch(url).await {
            Ok(_) => panic!("the fetch should have failed"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable() {
        // A port nobody listens on: bound, then closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url: Url = format!("http://{}/x.json", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let err = fetch_error(url).await;
        assert_eq!(
            fetch_failure(&err),
            Some(FetchFailure::Unreachable),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_error_status_is_the_server_answering_and_a_gateway_error_is_an_outage() {
        let err = fetch_error(status_server("500 Internal Server Error")).await;
        assert_eq!(
            fetch_failure(&err),
            Some(FetchFailure::Status(500)),
            "{err}"
        );
        assert!(
            err.to_string().contains("HTTP 500 Internal Server Error"),
            "{:?} does not name the status",
            err.to_string()
        );
        let err = fetch_error(status_server("403 Forbidden")).await;
        assert_eq!(
            fetch_failure(&err),
            Some(FetchFailure::Status(403)),
            "{err}"
        );
        for gateway in ["502 Bad Gateway", "503 Service Unavailable"] {
            let err = fetch_error(status_server(gateway)).await;
            assert_eq!(
                fetch_failure(&err),
                Some(FetchFailure::Unreachable),
                "{err}"
            );
        }
        // tough's own kind for a missing file, which is no failure of ours.
        let err = fetch_error(status_server("404 Not Found")).await;
        assert_eq!(err.kind(), TransportErrorKind::FileNotFound, "{err}");
        assert_eq!(fetch_failure(&err), None, "{err}");
    }

    #[tokio::test]
    async fn failures_that_are_no_fetch_have_no_kind() {
        let err = fetch_error("ftp://127.0.0.1/x.json".parse().unwrap()).await;
        assert_eq!(err.kind(), TransportErrorKind::UnsupportedUrlScheme);
        assert_eq!(fetch_failure(&err), None, "{err}");
        let missing = std::env::temp_dir().join("patchbay-no-such-dir/x.json");
        let err = fetch_error(Url::from_file_path(missing).unwrap()).await;
        assert_eq!(fetch_failure(&err), None, "{err}");
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        assert_eq!(
            fetch_failure(&io),
            None,
            "the words of a message decide nothing"
        );
    }

    #[tokio::test]
    async fn an_endless_reply_is_refused_while_streaming() {
        let url = hostile_server(None);
        let client = http_client(Duration::from_secs(30)).unwrap();
        let response = client.get(&url).send().await.unwrap();
        let err = read_body_capped(response, 1 << 20).await.unwrap_err();
        assert!(
            matches!(err, BodyError::TooLarge { limit } if limit == 1 << 20),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_announced_oversize_reply_is_refused_before_reading() {
        let url = hostile_server(Some(u64::MAX / 2));
        let client = http_client(Duration::from_secs(30)).unwrap();
        let response = client.get(&url).send().await.unwrap();
        let err = read_body_capped(response, 1 << 20).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { .. }), "{err}");
    }
}
