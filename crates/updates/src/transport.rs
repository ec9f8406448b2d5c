//! HTTP for the TUF client and the agent's API calls, on one reqwest client.
//!
//! tough's own HTTP transport insists on the platform's CA store; minimal hosts (and the
//! agent's initramfs tests) have none, and Patchbay does not need one for plain-HTTP servers:
//! TUF signatures, not TLS, protect what is loaded. So the client uses the platform's roots when
//! there are any and an empty root store otherwise (HTTPS then fails with a clear error).

use std::time::Duration;

use futures_util::StreamExt;
use tough::async_trait;
use tough::{FilesystemTransport, Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// A reqwest client with Patchbay's timeouts; never fails for lack of system CA roots.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    let builder = || {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("patchbay/", env!("CARGO_PKG_VERSION")))
    };
    match builder().build() {
        Ok(client) => Ok(client),
        Err(_) => builder()
            .tls_certs_only(Vec::<reqwest::Certificate>::new())
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}")),
    }
}

/// Why a reply body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the reply is larger than {limit} bytes; refused while reading it")]
    TooLarge { limit: u64 },
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

/// `file://` (archives) and `http(s)://` (servers) for tough.
#[derive(Debug, Clone)]
pub struct PatchbayTransport {
    client: reqwest::Client,
}

impl PatchbayTransport {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        Ok(PatchbayTransport {
            client: http_client(timeout)?,
        })
    }
}

#[async_trait]
impl Transport for PatchbayTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            "http" | "https" => {
                let response = self.client.get(url.clone()).send().await.map_err(|e| {
                    TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e)
                })?;
                let status = response.status();
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
                }
                if !status.is_success() {
                    return Err(TransportError::new_with_cause(
                        TransportErrorKind::Other,
                        url,
                        format!("HTTP {status}"),
                    ));
                }
                let stream = response.bytes_stream().map(move |chunk| {
                    chunk.map_err(|e| {
                        TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e)
                    })
                });
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
    #![allow(clippy::unwrap_used, clippy::expect_used)]
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
