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
