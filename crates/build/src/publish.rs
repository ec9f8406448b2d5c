//! Uploading a bundle to a Patchbay server (`POST /api/v1/bundles`, admin token).
//!
//! The bundle is verified locally first, so a damaged file never leaves the machine; the server
//! checks it again (level N+1, manifest against module, livepatch for that kernel) and stores
//! nothing when it refuses.

use std::path::Path;
use std::time::Duration;

use patchbay_core::{Bundle, BundleError};
use serde::Deserialize;

/// What the server answers to a successful publish.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PublishReceipt {
    pub build_id: String,
    pub level: u32,
    pub target: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid server URL {url:?}: {reason} (expected e.g. http://patches.example:8470)")]
    Url { url: String, reason: String },
    #[error("cannot reach the server at {url}: {source}; check --server and that `patchbay-server serve` runs")]
    Connect { url: String, source: reqwest::Error },
    #[error("the server refused the bundle ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the server answered {status} with a body that is not a publish receipt: {body}")]
    BadReply { status: u16, body: String },
}

/// Verifies `bundle_path` and uploads it to `server` with the admin `token`.
pub async fn publish(
    server: &str,
    token: &str,
    bundle_path: &Path,
) -> Result<PublishReceipt, PublishError> {
    Bundle::read(bundle_path)?;
    let bytes = std::fs::read(bundle_path).map_err(|source| PublishError::Read {
        path: bundle_path.display().to_string(),
        source,
    })?;
    let base = url::Url::parse(server).map_err(|e| PublishError::Url {
        url: server.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(PublishError::Url {
            url: server.to_owned(),
            reason: "the scheme must be http or https".into(),
        });
    }
    let endpoint = base.join("api/v1/bundles").map_err(|e| PublishError::Url {
        url: server.to_owned(),
        reason: e.to_string(),
    })?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|source| PublishError::Connect {
            url: endpoint.to_string(),
            source,
        })?;
    let response = client
        .post(endpoint.clone())
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .map_err(|source| PublishError::Connect {
            url: endpoint.to_string(),
            source,
        })?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|source| PublishError::Connect {
            url: endpoint.to_string(),
            source,
        })?;
    let shown = || String::from_utf8_lossy(body.get(..2000).unwrap_or(&body)).into_owned();
    if !(200..300).contains(&status) {
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| shown());
        return Err(PublishError::Refused { status, message });
    }
    serde_json::from_slice(&body).map_err(|_| PublishError::BadReply {
        status,
        body: shown(),
    })
}
