//! Content-addressed blobs (bundles, channel documents) through `object_store`: the local
//! filesystem by default (`objects/sha256/<hex>` in the data dir), any object store later.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::ServerError;
use patchbay_core::Sha256;

/// The blob store: blobs are keyed by the hex sha256 of their bytes (64 digits, any case);
/// a key that is not one is [`ServerError::BadRequest`]. Cloning shares the store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

fn key(sha256: &str) -> Result<ObjectPath, ServerError> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ServerError::BadRequest(format!(
            "{sha256:?} is not a sha256 (64 hex digits)"
        )));
    }
    Ok(ObjectPath::from(format!(
        "sha256/{}",
        sha256.to_ascii_lowercase()
    )))
}

impl Blobs {
    /// Blobs as files under `dir` (`<dir>/sha256/<hex>`), creating `dir` if needed.
    pub fn local(dir: &Path) -> Result<Blobs, ServerError> {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| ServerError::Blobs(format!("{}: {e}", dir.display())))?;
        Ok(Blobs {
            store: Arc::new(store),
        })
    }

    /// Stores `data`; returns its sha256 and whether it was new.
    pub async fn put(&self, data: Bytes) -> Result<(Sha256, bool), ServerError> {
        let sha256 = Sha256::of(&data);
        let path = key(sha256.as_str())?;
        if self.store.head(&path).await.is_ok() {
            return Ok((sha256, false));
        }
        self.store
            .put(&path, PutPayload::from(data))
            .await
            .map_err(|e| ServerError::Blobs(format!("store {sha256}: {e}")))?;
        Ok((sha256, true))
    }

    /// The whole blob in memory; `None` when there is none with that sha256.
    pub async fn get(&self, sha256: &str) -> Result<Option<Bytes>, ServerError> {
        let path = key(sha256)?;
        match self.store.get(&path).await {
            Ok(result) => {
                Ok(Some(result.bytes().await.map_err(|e| {
                    ServerError::Blobs(format!("read {sha256}: {e}"))
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(ServerError::Blobs(format!("read {sha256}: {e}"))),
        }
    }

    /// A blob as a stream of chunks with its length, so serving it holds one chunk in memory
    /// at a time however large it is and however many hosts download it at once.
    pub async fn stream(
        &self,
        sha256: &str,
    ) -> Result<Option<(u64, axum::body::Body)>, ServerError> {
        let path = key(sha256)?;
        match self.store.get(&path).await {
            Ok(result) => {
                let length = result.meta.size;
                Ok(Some((
                    length,
                    axum::body::Body::from_stream(result.into_stream()),
                )))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(ServerError::Blobs(format!("read {sha256}: {e}"))),
        }
    }

    /// Removes a blob (a bundle whose publication was undone).
    pub async fn delete(&self, sha256: &str) -> Result<(), ServerError> {
        let path = key(sha256)?;
        self.store
            .delete(&path)
            .await
            .map_err(|e| ServerError::Blobs(format!("delete {sha256}: {e}")))
    }
}
