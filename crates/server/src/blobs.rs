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

impl Blobs {
    /// Stores an upload's bytes under its sha256, read from its file a part at a time (one
    /// part in memory however large it is); returns the sha256 and whether it was new.
    pub async fn put_upload(&self, upload: &Upload) -> Result<(Sha256, bool), ServerError> {
        use tokio::io::AsyncReadExt;
        let sha256 = upload.sha256.clone();
        let path = key(sha256.as_str())?;
        if self.store.head(&path).await.is_ok() {
            return Ok((sha256, false));
        }
        let failed = |e: String| ServerError::Blobs(format!("store {sha256}: {e}"));
        let mut file = tokio::fs::File::open(&upload.path)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut parts = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let copied = async {
            loop {
                let mut part = Vec::with_capacity(UPLOAD_PART_BYTES);
                (&mut file)
                    .take(UPLOAD_PART_BYTES as u64)
                    .read_to_end(&mut part)
                    .await
                    .map_err(|e| e.to_string())?;
                if part.is_empty() {
                    return Ok::<(), String>(());
                }
                parts
                    .put_part(PutPayload::from(part))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        .await;
        match copied {
            Ok(()) => {
                parts.complete().await.map_err(|e| failed(e.to_string()))?;
                Ok((sha256, true))
            }
            Err(e) => {
                let _ = parts.abort().await;
                Err(failed(e))
            }
        }
    }
}

/// The size of the parts an upload is stored in (object stores want 5 MiB or more).
const UPLOAD_PART_BYTES: usize = 8 << 20;

/// Where uploads are received, under the data dir.
pub fn uploads_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("uploads")
}

/// Removes what a server stopped during an upload left in `uploads/` (`serve` at start).
pub fn remove_stale_uploads(data_dir: &Path) -> Result<usize, ServerError> {
    let dir = uploads_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(ServerError::Io {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(UPLOAD_PREFIX)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

const UPLOAD_PREFIX: &str = "upload-";

/// A request body received into a file in `uploads/` (written, fsynced, hashed on the way),
/// so an upload never sits in memory whole. The file is removed when this is dropped: after
/// it was stored, or on any failure.
#[derive(Debug)]
pub struct Upload {
    path: std::path::PathBuf,
    sha256: Sha256,
    length: u64,
}

impl Upload {
    /// Receives `body` into `<data_dir>/uploads/`, at most `max_bytes` (`limit` names the
    /// setting): 413 before a byte is written when the declared length is larger, or as soon
    /// as the body grows past it, and nothing is left behind.
    pub async fn receive(
        body: axum::body::Body,
        data_dir: &Path,
        max_bytes: u64,
        limit: &str,
    ) -> Result<Upload, ServerError> {
        use http_body::Body as _;
        use tokio::io::AsyncWriteExt;
        let too_large = || {
            ServerError::TooLarge(format!(
                "the upload is larger than {limit} ({max_bytes} bytes); nothing was stored"
            ))
        };
        if body.size_hint().lower() > max_bytes {
            return Err(too_large());
        }
        let dir = uploads_dir(data_dir);
        let io = |path: &Path, source| ServerError::Io {
            path: path.display().to_string(),
            source,
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io(&dir, e))?;
        let mut name = [0u8; 16];
        getrandom::fill(&mut name).map_err(|e| ServerError::Tuf(format!("random: {e}")))?;
        let path = dir.join(format!("{UPLOAD_PREFIX}{}", hex::encode(name)));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io(&path, e))?;
        // From here on the file goes with this value, whatever happens.
        let mut upload = Upload {
            path,
            sha256: Sha256::of(b""),
            length: 0,
        };
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut body = std::pin::pin!(body);
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = frame
                .map_err(|e| ServerError::BadRequest(format!("the upload was cut short: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            upload.length = upload.length.saturating_add(data.len() as u64);
            if upload.length > max_bytes {
                return Err(too_large());
            }
            hasher.update(&data);
            file.write_all(&data)
                .await
                .map_err(|e| io(&upload.path, e))?;
        }
        file.flush().await.map_err(|e| io(&upload.path, e))?;
        file.get_ref()
            .sync_all()
            .await
            .map_err(|e| io(&upload.path, e))?;
        upload.sha256 = hex::encode(hasher.finish().as_ref())
            .parse()
            .map_err(|e: patchbay_core::IdError| ServerError::Blobs(e.to_string()))?;
        Ok(upload)
    }

    /// The file holding the upload.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sha256 of the uploaded bytes.
    pub fn sha256(&self) -> &Sha256 {
        &self.sha256
    }

    /// How many bytes were uploaded.
    pub fn len(&self) -> u64 {
        self.length
    }

    /// Whether nothing was uploaded.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// The upload read as a bundle and verified (`Bundle::from_reader`), off the runtime.
    pub async fn bundle(&self) -> Result<patchbay_core::Bundle, ServerError> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(|source| ServerError::Io {
                path: path.display().to_string(),
                source,
            })?;
            patchbay_core::Bundle::from_reader(std::io::BufReader::new(file), "the uploaded bundle")
                .map_err(|e| ServerError::Unprocessable(e.to_string()))
        });
        read.await
            .map_err(|e| ServerError::Blobs(format!("reading the upload: {e}")))?
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
