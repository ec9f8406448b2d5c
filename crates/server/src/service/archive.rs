//! Air-gapped distribution: `export` writes the served TUF chain and its targets into an
//! archive (`patchbay_updates::archive`); `import` verifies an archive with the same TUF client
//! the agents use and makes this (inner) server serve it unchanged, signatures and all.
//!
//! Every root of the archive is checked against the trusted one first (`check_root_chain`):
//! the TUF client starts from the trusted root and never reads the archive's copy of it.
//!
//! A child of [`crate::service`] because it reads and writes the served metadata and the
//! blobs directly, under the service's mutation lock.

use std::path::Path;

use bytes::Bytes;
use patchbay_updates::{Limits, SignedRepo, Source};
use serde_json::Value;
use tough::schema::{Role, Root, Signed, Snapshot, Targets, Timestamp};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The targets version now served.
    pub targets_version: u64,
    /// Targets the archive carried.
    pub targets: usize,
    /// The newest root version, now served as `root.json`.
    pub root_version: u64,
    /// Roots older than the trusted one that the archive carried and this server does not
    /// serve: nothing verifies them from the trusted root.
    pub older_roots_left_out: usize,
    /// The archive's other metadata files that the verified chain does not name (older or
    /// newer snapshot and targets versions, any other `.json`): not served, as nothing the
    /// hosts trust vouches for them.
    pub metadata_left_out: Vec<String>,
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

/// One root of the archive's chain that was verified from the trusted root: its file name
/// (`N.root.json`), version and bytes as the archive holds them.
struct VerifiedRoot {
    name: String,
    version: u64,
    bytes: Vec<u8>,
}

/// The archive's roots checked against the trusted one: `verified` from the trusted version
/// up to the newest, in order (never empty).
struct RootChain {
    verified: Vec<VerifiedRoot>,
    /// Archived roots older than the trusted one that this server does not serve yet: nothing
    /// can verify them from the trusted root, so they are left out.
    left_out: usize,
}

impl RootChain {
    fn newest(&self) -> Result<&VerifiedRoot, ServerError> {
        self.verified
            .last()
            .ok_or_else(|| ServerError::Unprocessable("the archive's root chain is empty".into()))
    }
}

/// The root version the TUF client ended at.
fn client_root_version(repo: &SignedRepo) -> Result<u64, ServerError> {
    let unreadable = |e: String| ServerError::Unprocessable(format!("the verified root: {e}"));
    let root: Value =
        serde_json::from_slice(&repo.root_json().map_err(|e| unreadable(e.to_string()))?)
            .map_err(|e| unreadable(e.to_string()))?;
    root.pointer("/signed/version")
        .and_then(Value::as_u64)
        .ok_or_else(|| unreadable("it has no version".into()))
}

/// A numbered root's version from its file name (`7.root.json` → 7).
fn root_version_of(name: &str) -> Option<u64> {
    name.strip_suffix(".root.json")?.parse().ok()
}

/// The numbered root files (`N.root.json`) in `dir`, by version; a `*.root.json` whose
/// prefix is not a version is refused.
fn numbered_roots(
    dir: &Path,
) -> Result<std::collections::BTreeMap<u64, std::path::PathBuf>, ServerError> {
    let mut roots = std::collections::BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(roots),
        Err(e) => return Err(io(dir, e)),
    };
    for entry in entries {
        let name = entry.map_err(|e| io(dir, e))?.file_name();
        let name = name.to_string_lossy();
        if name == "root.json" || !name.ends_with(".root.json") {
            continue;
        }
        let version = root_version_of(&name).ok_or_else(|| {
            ServerError::Unprocessable(format!(
                "metadata/{name}: not a versioned root name (N.root.json); refused, nothing \
                 imported"
            ))
        })?;
        roots.insert(version, dir.join(&*name));
    }
    Ok(roots)
}

fn parse_root(name: &str, bytes: &[u8]) -> Result<(Value, Signed<Root>), ServerError> {
    let unreadable = |e: serde_json::Error| {
        ServerError::Unprocessable(format!(
            "metadata/{name}: not a signed root ({e}); refused, nothing imported"
        ))
    };
    let value: Value = serde_json::from_slice(bytes).map_err(unreadable)?;
    let root: Signed<Root> = serde_json::from_value(value.clone()).map_err(unreadable)?;
    Ok((value, root))
}

/// Checks every root of the archive (`metadata`) against `trusted` (`trusted_from` says where
/// it came from): the archive's copy of the trusted version must hold the same signed content
/// and carry its signatures; each newer one must be signed by the threshold of the one before
/// and by its own, with no gap. A root version this mirror already serves must be the same
/// bytes in the archive. Older roots are left out unless served already.
fn check_root_chain(
    trusted: &[u8],
    trusted_from: &str,
    metadata: &Path,
    served: &std::collections::BTreeMap<u64, std::path::PathBuf>,
) -> Result<RootChain, ServerError> {
    let refused = |name: &str, why: String| {
        ServerError::Unprocessable(format!(
            "metadata/{name} in the archive {why}; refused, nothing imported. The archive was \
             altered or is not from the server this one trusts: export it again on the outer \
             server"
        ))
    };
    let (trusted_value, trusted_root) = parse_root("(trusted root)", trusted).map_err(|_| {
        ServerError::BadRequest(format!("{trusted_from} is not a signed root.json"))
    })?;
    let trusted_version = trusted_root.signed.version.get();
    let archived = numbered_roots(metadata)?;
    if !archived.contains_key(&trusted_version) {
        return Err(ServerError::Unprocessable(format!(
            "the archive has no metadata/{trusted_version}.root.json, the version of the root \
             this server trusts ({trusted_from}), so its chain cannot be checked against it; \
             refused, nothing imported. Export it again on the outer server"
        )));
    }
    let mut verified = Vec::new();
    let mut left_out = 0;
    let mut previous: Option<Signed<Root>> = None;
    for (&version, path) in &archived {
        let name = format!("{version}.root.json");
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        let differs_from_served = || -> Result<(), ServerError> {
            let Some(served_path) = served.get(&version) else {
                return Ok(());
            };
            let served_bytes = std::fs::read(served_path).map_err(|e| io(served_path, e))?;
            if served_bytes == bytes {
                return Ok(());
            }
            Err(refused(
                &name,
                format!("differs from the {name} this mirror already serves"),
            ))
        };
        if version < trusted_version {
            differs_from_served()?;
            if !served.contains_key(&version) {
                left_out += 1;
            }
            continue;
        }
        let (value, root) = parse_root(&name, &bytes)?;
        if root.signed.version.get() != version {
            return Err(refused(
                &name,
                format!("says it is version {}", root.signed.version),
            ));
        }
        match &previous {
            // The first version from the trusted one on is the trusted one (checked above).
            None => {
                if value.get("signed") != trusted_value.get("signed") {
                    return Err(refused(
                        &name,
                        format!(
                            "is not the root this server trusts (version {trusted_version}, \
                             {trusted_from}): its signed content differs"
                        ),
                    ));
                }
                trusted_root.signed.verify_role(&root).map_err(|e| {
                    refused(
                        &name,
                        format!("does not carry the trusted root's signatures: {e}"),
                    )
                })?;
            }
            Some(before) if before.signed.version.get() + 1 != version => {
                return Err(refused(
                    &name,
                    format!(
                        "does not follow {}.root.json (a version is missing)",
                        before.signed.version
                    ),
                ));
            }
            Some(before) => {
                before.signed.verify_role(&root).map_err(|e| {
                    refused(
                        &name,
                        format!(
                            "is not signed by the threshold of version {}'s root keys: {e}",
                            before.signed.version
                        ),
                    )
                })?;
                root.signed.verify_role(&root).map_err(|e| {
                    refused(
                        &name,
                        format!("is not signed by the threshold of its own root keys: {e}"),
                    )
                })?;
            }
        }
        differs_from_served()?;
        previous = Some(root);
        verified.push(VerifiedRoot {
            name,
            version,
            bytes,
        });
    }
    Ok(RootChain { verified, left_out })
}

/// The archive's metadata besides its roots: what this mirror serves and what it leaves out.
struct RoleFiles {
    /// `<n>.targets.json`, `<n>.snapshot.json` and `timestamp.json` (in that order, the order
    /// they are written in) as the TUF client verified them, each checked again against the
    /// newest verified root.
    served: Vec<(String, Vec<u8>)>,
    /// Every other `.json` of the archive's metadata directory, by name.
    left_out: Vec<String>,
}

/// Reads `metadata/<name>` of the archive as role `T` and checks it against `root`: signed by
/// the threshold of the role's keys, the `version` the chain names, not expired.
fn check_role<T: Role + serde::de::DeserializeOwned>(
    root: &Signed<Root>,
    metadata: &Path,
    name: &str,
    version: u64,
) -> Result<(Signed<T>, Vec<u8>), ServerError> {
    let refused = |why: String| {
        ServerError::Unprocessable(format!(
            "metadata/{name} in the archive {why}; refused, nothing imported. Export the \
             archive again on the outer server"
        ))
    };
    let path = metadata.join(name);
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let role: Signed<T> = serde_json::from_slice(&bytes)
        .map_err(|e| refused(format!("is not a signed {} role ({e})", T::TYPE)))?;
    root.signed.verify_role(&role).map_err(|e| {
        refused(format!(
            "is not signed by the {} key(s) of root version {}: {e}",
            T::TYPE,
            root.signed.version
        ))
    })?;
    if role.signed.version().get() != version {
        return Err(refused(format!(
            "is version {}, the verified chain names version {version}",
            role.signed.version()
        )));
    }
    if role.signed.expires() <= jiff::Timestamp::now() {
        return Err(refused(format!("expired at {}", role.signed.expires())));
    }
    Ok((role, bytes))
}

/// Chooses the metadata the mirror serves besides the roots: the timestamp, the snapshot it
/// names and the targets the snapshot names, which are the files the TUF client verified
/// (`versions`: its timestamp, snapshot and targets versions), checked again against
/// `newest_root`. Every other file is left out, never copied: a file the chain does not name
/// is vouched for by nothing.
fn check_role_files(
    newest_root: &Signed<Root>,
    metadata: &Path,
    versions: (u64, u64, u64),
) -> Result<RoleFiles, ServerError> {
    let (timestamp_version, snapshot_version, targets_version) = versions;
    let (timestamp, timestamp_bytes) =
        check_role::<Timestamp>(newest_root, metadata, "timestamp.json", timestamp_version)?;
    let named = |meta: &std::collections::HashMap<String, tough::schema::Metafile>,
                 role: &str,
                 by: &str| {
        meta.get(role).map(|m| m.version.get()).ok_or_else(|| {
            ServerError::Unprocessable(format!(
                "metadata/{by} in the archive names no {role}; refused, nothing imported"
            ))
        })
    };
    let snapshot_name = format!(
        "{}.snapshot.json",
        named(&timestamp.signed.meta, "snapshot.json", "timestamp.json")?
    );
    let (snapshot, snapshot_bytes) =
        check_role::<Snapshot>(newest_root, metadata, &snapshot_name, snapshot_version)?;
    let targets_name = format!(
        "{}.targets.json",
        named(&snapshot.signed.meta, "targets.json", &snapshot_name)?
    );
    let (_, targets_bytes) =
        check_role::<Targets>(newest_root, metadata, &targets_name, targets_version)?;
    let served = vec![
        (targets_name, targets_bytes),
        (snapshot_name, snapshot_bytes),
        ("timestamp.json".to_owned(), timestamp_bytes),
    ];
    let mut left_out = Vec::new();
    for entry in std::fs::read_dir(metadata).map_err(|e| io(metadata, e))? {
        let name = entry.map_err(|e| io(metadata, e))?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".root.json") || name == "root.json" {
            continue; // checked by `check_root_chain`
        }
        if !served.iter().any(|(served, _)| *served == name) {
            left_out.push(name.into_owned());
        }
    }
    left_out.sort();
    Ok(RoleFiles { served, left_out })
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
        let (trusted, trusted_from) = match (root, trusted_path.exists()) {
            (Some(path), _) => (
                std::fs::read(path).map_err(|e| io(path, e))?,
                format!("--root {}", path.display()),
            ),
            (None, true) => (
                std::fs::read(&trusted_path).map_err(|e| io(&trusted_path, e))?,
                format!("{}, pinned by the last import", trusted_path.display()),
            ),
            (None, false) => {
                let first = unpacked.join("metadata/1.root.json");
                eprintln!(
                    "patchbay-server: trusting the archive's own root (first import); pass \
                     --root to pin the outer server's root.json instead"
                );
                (
                    std::fs::read(&first).map_err(|e| io(&first, e))?,
                    "the archive's own 1.root.json (first import)".to_owned(),
                )
            }
        };
        // Every root of the archive is checked against the trusted one before anything else:
        // the TUF client starts from the trusted root and never reads the archive's copy of
        // it, which would otherwise be served as `root.json`.
        let source_meta = unpacked.join("metadata");
        let mirror = tuf_dir.join("mirror").exists();
        let served_roots = if mirror {
            numbered_roots(&service.tuf.metadata_dir)?
        } else {
            std::collections::BTreeMap::new()
        };
        let chain = check_root_chain(&trusted, &trusted_from, &source_meta, &served_roots)?;
        let newest = chain.newest()?;
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
        let client_version = client_root_version(&repo)?;
        if client_version != newest.version {
            return Err(ServerError::Unprocessable(format!(
                "{}: the TUF client ended at root version {client_version}, the chain check at \
                 {}; refused, nothing imported",
                archive.display(),
                newest.name
            )));
        }
        // The root hosts fetch unversioned is the newest one the chain verified, as the
        // archive holds it (`N.root.json`); the archive's own `root.json`, which nothing signs
        // into the chain, must be the same bytes.
        let unversioned = source_meta.join("root.json");
        if unversioned.exists() {
            let archived = std::fs::read(&unversioned).map_err(|e| io(&unversioned, e))?;
            if archived != newest.bytes {
                return Err(ServerError::Unprocessable(format!(
                    "{}: its metadata/root.json is not {}, the newest root its chain verifies; \
                     refused (nothing imported). Export the archive again on the outer server",
                    archive.display(),
                    newest.name
                )));
            }
        }
        // The timestamp, snapshot and targets roles the client verified, checked again against
        // the newest verified root; nothing else of the archive's metadata is served.
        let (_, newest_root) = parse_root(&newest.name, &newest.bytes)?;
        let (timestamp_version, snapshot_version) = repo.timestamp_and_snapshot_versions();
        let role_files = check_role_files(
            &newest_root,
            &source_meta,
            (timestamp_version, snapshot_version, repo.targets_version()),
        )?;
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
        // chain whose targets are not stored yet. Only what the chain verified is copied.
        std::fs::create_dir_all(&service.tuf.metadata_dir)
            .map_err(|e| io(&service.tuf.metadata_dir, e))?;
        if mirror {
            for (name, bytes) in &role_files.served {
                let path = service.tuf.metadata_dir.join(name);
                if name == "timestamp.json" || !path.exists() {
                    continue;
                }
                if std::fs::read(&path).map_err(|e| io(&path, e))? != *bytes {
                    return Err(ServerError::Unprocessable(format!(
                        "metadata/{name} in the archive differs from the {name} this mirror \
                         already serves (two different roles signed under one version); \
                         refused, nothing imported"
                    )));
                }
            }
        }
        let (timestamp, roles) = role_files
            .served
            .split_last()
            .ok_or_else(|| ServerError::Unprocessable("no verified metadata".into()))?;
        for (name, bytes) in roles {
            let to = service.tuf.metadata_dir.join(name);
            patchbay_core::fsutil::write_atomic(&to, bytes).map_err(|e| io(&to, e))?;
        }
        for root in &chain.verified {
            let to = service.tuf.metadata_dir.join(&root.name);
            patchbay_core::fsutil::write_atomic(&to, &root.bytes).map_err(|e| io(&to, e))?;
        }
        if !mirror {
            // This server's own metadata (from `init`) is no part of the chain it now serves.
            let keep = |name: &str| {
                name == "timestamp.json"
                    || role_files.served.iter().any(|(n, _)| n == name)
                    || chain.verified.iter().any(|r| r.name == name)
            };
            for path in service.tuf.metadata_files()? {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name != "root.json" && !keep(&name) {
                    std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                }
            }
        }
        let served_root = service.tuf.metadata_dir.join("root.json");
        patchbay_core::fsutil::write_atomic(&served_root, &newest.bytes)
            .map_err(|e| io(&served_root, e))?;
        let (name, bytes) = timestamp;
        let to = service.tuf.metadata_dir.join(name);
        patchbay_core::fsutil::write_atomic(&to, bytes).map_err(|e| io(&to, e))?;
        patchbay_core::fsutil::write_atomic(&trusted_path, &newest.bytes)
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
            root_version: newest.version,
            older_roots_left_out: chain.left_out,
            metadata_left_out: role_files.left_out,
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&unpacked);
    result
}
