//! Air-gapped distribution: `export` writes the served TUF chain and its targets into an
//! archive (`patchbay_updates::archive`); `import` verifies an archive with the same TUF client
//! the agents use and makes this (inner) server serve it unchanged, signatures and all.
//!
//! A child of [`crate::service`] because it reads and writes the served metadata and the
//! blobs directly, under the service's mutation lock.

use std::path::Path;

use bytes::Bytes;
use patchbay_updates::{Limits, SignedRepo, Source};

use crate::error::ServerError;
use crate::Service;

/// What [`export`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Metadata files: every `.json` of the served metadata directory.
    pub metadata: usize,
    /// Targets (bundles and channel documents).
    pub targets: usize,
}

/// What [`import`] installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// The targets version now served.
    pub targets_version: u64,
    /// Targets the archive carried.
    pub targets: usize,
}

fn io(path: &Path, source: std::io::Error) -> ServerError {
    ServerError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes the served TUF chain and every current target into the archive `output`
/// (atomically). [`ServerError::Conflict`] when nothing was published yet.
pub async fn export(service: &Service, output: &Path) -> Result<ExportSummary, ServerError> {
    let mut metadata = Vec::new();
    for path in service.tuf.metadata_files()? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        metadata.push((name, std::fs::read(&path).map_err(|e| io(&path, e))?));
    }
    let signed = service
        .tuf
        .current_targets()?
        .ok_or_else(|| ServerError::Conflict("nothing published yet".into()))?;
    let mut targets = Vec::new();
    for (name, target) in &signed.signed.targets {
        let sha256 = hex::encode(target.hashes.sha256.as_ref() as &[u8]);
        let bytes = service.blobs.get(&sha256).await?.ok_or_else(|| {
            ServerError::Blobs(format!(
                "target {} (sha256 {sha256}) is missing from the object store",
                name.raw()
            ))
        })?;
        targets.push((format!("{sha256}.{}", name.raw()), bytes.to_vec()));
    }
    let summary = ExportSummary {
        metadata: metadata.len(),
        targets: targets.len(),
    };
    patchbay_updates::archive::write(output, &metadata, &targets)
        .map_err(|e| ServerError::BadRequest(e.to_string()))?;
    Ok(summary)
}

/// Removes the unpack directories (`tuf/.import-<pid>`) of imports that were killed: the
/// caller holds the mutation lock, so no import is running.
fn remove_stale_imports(tuf_dir: &Path) -> Result<(), ServerError> {
    let entries = match std::fs::read_dir(tuf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(tuf_dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io(tuf_dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(".import-") {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

/// The newest root a loaded chain verified: its file name in the archive and its bytes.
struct VerifiedRoot {
    name: String,
    bytes: Vec<u8>,
}

fn verified_root_file(repo: &SignedRepo, metadata: &Path) -> Result<VerifiedRoot, ServerError> {
    let unreadable = |e: String| ServerError::Unprocessable(format!("the verified root: {e}"));
    let root: serde_json::Value =
        serde_json::from_slice(&repo.root_json().map_err(|e| unreadable(e.to_string()))?)
            .map_err(|e| unreadable(e.to_string()))?;
    let version = root
        .pointer("/signed/version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| unreadable("it has no version".into()))?;
    let name = format!("{version}.root.json");
    let path = metadata.join(&name);
    // The client read this very file from the private unpack directory, so these are the
    // bytes it verified.
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    Ok(VerifiedRoot { name, bytes })
}

/// Verifies `archive` with the agents' TUF client and serves its metadata and targets as
/// they are. The root trusted is `root` if given, else the one pinned by an earlier import,
/// else (first import) the archive's own `1.root.json`. An archive that does not verify is
/// [`ServerError::BadRequest`] or [`ServerError::Unprocessable`], and none of it is served.
pub async fn import(
    service: &Service,
    archive: &Path,
    root: Option<&Path>,
) -> Result<ImportSummary, ServerError> {
    let tuf_dir = service.data_dir.join("tuf");
    let trusted_path = tuf_dir.join("mirror-root.json");
    // One import at a time, and none while another command changes the metadata; whatever
    // an import killed earlier left unpacked is removed first.
    let _guard = service.lock_mutations().await?;
    remove_stale_imports(&tuf_dir)?;
    let unpacked = tuf_dir.join(format!(".import-{}", std::process::id()));
    std::fs::create_dir_all(&unpacked).map_err(|e| io(&unpacked, e))?;
    let result = async {
        patchbay_updates::archive::unpack(archive, &unpacked)
            .map_err(|e| ServerError::BadRequest(e.to_string()))?;
        let trusted = match (root, trusted_path.exists()) {
            (Some(path), _) => std::fs::read(path).map_err(|e| io(path, e))?,
            (None, true) => std::fs::read(&trusted_path).map_err(|e| io(&trusted_path, e))?,
            (None, false) => {
                let first = unpacked.join("metadata/1.root.json");
                eprintln!(
                    "patchbay-server: trusting the archive's own root (first import); pass \
                     --root to pin the outer server's root.json instead"
                );
                std::fs::read(&first).map_err(|e| io(&first, e))?
            }
        };
        let repo = SignedRepo::load(
            &trusted,
            &Source::Directory(unpacked.clone()),
            &tuf_dir.join("mirror-datastore"),
            Limits {
                max_bundle_bytes: service.config.limits.max_bundle_bytes,
                ..Limits::default()
            },
        )
        .await
        .map_err(|e| ServerError::Unprocessable(e.to_string()))?;
        // The root hosts fetch unversioned is the newest one the chain verified, as the
        // client read it from the archive (`N.root.json`), never the archive's own
        // `root.json`, which nothing signs into the chain.
        let source_meta = unpacked.join("metadata");
        let verified_root = verified_root_file(&repo, &source_meta)?;
        let unversioned = source_meta.join("root.json");
        if unversioned.exists() {
            let archived = std::fs::read(&unversioned).map_err(|e| io(&unversioned, e))?;
            if archived != verified_root.bytes {
                return Err(ServerError::Unprocessable(format!(
                    "{}: its metadata/root.json is not {}, the newest root its chain verifies; \
                     refused (nothing imported). Export the archive again on the outer server",
                    archive.display(),
                    verified_root.name
                )));
            }
        }
        let list = repo.target_list();
        for (name, _sha, _len) in &list {
            let bytes = repo
                .read_target(name)
                .await
                .map_err(|e| ServerError::Unprocessable(e.to_string()))?
                .ok_or_else(|| {
                    ServerError::Unprocessable(format!("target {name} is not in the archive"))
                })?;
            service.blobs.put(Bytes::from(bytes)).await?;
        }
        // Metadata after the targets, root.json and timestamp.json last: agents never see a
        // chain whose targets are not stored yet.
        let mut names: Vec<String> = std::fs::read_dir(&source_meta)
            .map_err(|e| io(&source_meta, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && n != "timestamp.json" && n != "root.json")
            .collect();
        names.sort();
        std::fs::create_dir_all(&service.tuf.metadata_dir)
            .map_err(|e| io(&service.tuf.metadata_dir, e))?;
        let served_root = service.tuf.metadata_dir.join("root.json");
        for name in &names {
            let from = source_meta.join(name);
            let bytes = std::fs::read(&from).map_err(|e| io(&from, e))?;
            let to = service.tuf.metadata_dir.join(name);
            patchbay_core::fsutil::write_atomic(&to, &bytes).map_err(|e| io(&to, e))?;
        }
        patchbay_core::fsutil::write_atomic(&served_root, &verified_root.bytes)
            .map_err(|e| io(&served_root, e))?;
        let from = source_meta.join("timestamp.json");
        let bytes = std::fs::read(&from).map_err(|e| io(&from, e))?;
        let to = service.tuf.metadata_dir.join("timestamp.json");
        patchbay_core::fsutil::write_atomic(&to, &bytes).map_err(|e| io(&to, e))?;
        let root_json = repo
            .root_json()
            .map_err(|e| ServerError::Unprocessable(e.to_string()))?;
        patchbay_core::fsutil::write_atomic(&trusted_path, &root_json)
            .map_err(|e| io(&trusted_path, e))?;
        let marker = tuf_dir.join("mirror");
        patchbay_core::fsutil::write_atomic(&marker, b"imported archive\n")
            .map_err(|e| io(&marker, e))?;
        service
            .store
            .audit(
                patchbay_core::clock::unix_seconds(),
                "cli",
                "import",
                &format!(
                    "imported {} (targets version {})",
                    archive.display(),
                    repo.targets_version()
                ),
                Some(repo.targets_version()),
            )
            .await?;
        Ok(ImportSummary {
            targets_version: repo.targets_version(),
            targets: list.len(),
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&unpacked);
    result
}
