//! Patchbay's update client: everything an agent (or an inner server importing an archive)
//! reads from a patch server goes through TUF here, so nothing unsigned reaches the caller.
//!
//! [`SignedRepo::load`] runs the TUF client workflow (root rotation, timestamp, snapshot,
//! targets; expired or rolled-back metadata is refused, with the newest versions seen kept in
//! the datastore directory). Then [`SignedRepo::channel`] returns a verified channel document and
//! [`SignedRepo::bundle`] a verified bundle whose manifest equals the signed one.
//! [`archive`] writes and unpacks the air-gapped archive format.
#![warn(missing_docs)]

pub mod archive;
pub mod tls;
pub mod transport;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use patchbay_core::{
    bundle_target_name, BuildId, Bundle, ChannelDoc, ChannelName, Manifest, PatchLevel,
    CHANNEL_MAX_BYTES,
};
use tough::{ExpirationEnforcement, RepositoryLoader, TargetName};
use transport::{fetch_failure, FetchFailure};
use url::Url;

/// Where the signed repository is read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A patch server: metadata at `<url>/tuf/metadata/`, targets at `<url>/tuf/targets/`,
    /// reached over HTTPS trusted as the [`tls::ServerTrust`] says.
    Server(Url, tls::ServerTrust),
    /// An unpacked archive: `<dir>/metadata/` and `<dir>/targets/`.
    Directory(PathBuf),
}

/// Size limits for what is downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest bundle accepted, whatever the signed metadata says.
    pub max_bundle_bytes: u64,
    /// The largest targets/snapshot/timestamp/root metadata file.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bundle_bytes: 64 << 20,
            max_metadata_bytes: 8 << 20,
        }
    }
}

/// Why reading the signed repository failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The source could not be set up (a bad server URL, the HTTP client).
    #[error("{0}")]
    Source(String),
    /// The TUF metadata could not be fetched, or was refused.
    #[error("the signed metadata from {source_name} was refused: {reason}")]
    Metadata {
        /// The server URL or archive directory the metadata came from.
        source_name: String,
        /// What TUF refused or why the fetch failed, with its chain of causes.
        reason: String,
        /// How the fetch failed, when an HTTP fetch is what failed.
        fetch: Option<FetchFailure>,
    },
    /// The channel is not among the signed targets.
    #[error("the channel {channel} is not in the signed targets (is this host's channel deleted? register again)")]
    NoChannel {
        /// The channel asked for.
        channel: ChannelName,
    },
    /// The signed channel document does not parse.
    #[error("the signed channel document {channel} is not valid: {reason}")]
    ChannelDoc {
        /// The channel whose document was read.
        channel: ChannelName,
        /// Why the document was refused.
        reason: String,
    },
    /// The level is not among the signed targets.
    #[error("level {level} of kernel {build_id} is not in the signed targets")]
    NoBundle {
        /// The kernel build the level was asked for.
        build_id: BuildId,
        /// The patch level asked for.
        level: PatchLevel,
    },
    /// The signed length of a target is above the caller's limit.
    #[error(
        "target {target} is {length} bytes, above the limit of {limit}; refused before download"
    )]
    TooLarge {
        /// The TUF target name.
        target: String,
        /// Its length in bytes (signed, or counted while downloading).
        length: u64,
        /// The caller's limit in bytes ([`Limits`]).
        limit: u64,
    },
    /// A target could not be fetched, or failed TUF's length and hash checks.
    #[error("download of {target} failed verification: {reason}")]
    Download {
        /// The TUF target name.
        target: String,
        /// What failed, with its chain of causes.
        reason: String,
        /// How the fetch failed, when an HTTP fetch is what failed.
        fetch: Option<FetchFailure>,
    },
    /// A downloaded bundle, or its signed manifest, is not valid.
    #[error("bundle {target} is not valid: {reason}")]
    Bundle {
        /// The TUF target name of the bundle.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A downloaded bundle's manifest is not the signed one.
    #[error("bundle {target}: its manifest differs from the signed manifest; refusing it")]
    ManifestMismatch {
        /// The TUF target name of the bundle.
        target: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An air-gapped archive is not valid.
    #[error("archive {path}: {reason}")]
    Archive {
        /// The archive file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl UpdateError {
    /// Whether the failure is the server being unreachable (worth retrying later), as opposed
    /// to something refused. Decided by the kind the transport gave the failed fetch.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            UpdateError::Metadata {
                fetch: Some(FetchFailure::Unreachable),
                ..
            } | UpdateError::Download {
                fetch: Some(FetchFailure::Unreachable),
                ..
            }
        )
    }

    /// The kind of the failed fetch behind this error, if a fetch failed.
    pub fn fetch_failure(&self) -> Option<FetchFailure> {
        match self {
            UpdateError::Metadata { fetch, .. } | UpdateError::Download { fetch, .. } => *fetch,
            _ => None,
        }
    }
}

/// A loaded, verified repository.
#[derive(Debug)]
pub struct SignedRepo {
    repo: tough::Repository,
    limits: Limits,
    clock_stepped_back_from: Option<jiff::Timestamp>,
}

/// The file where tough keeps the latest system time it saw.
const LATEST_KNOWN_TIME: &str = "latest_known_time.json";

/// Forgets a "latest known time" that lies in the future.
///
/// tough records the system time at every load and refuses to load while the clock reads
/// earlier, so one forward jump of the host clock (a bad NTP answer, a wrong RTC at boot)
/// would block every update until the clock caught up, months later perhaps. Freshness does
/// not depend on that record (every role's `expires` is checked against the clock) and
/// rollback is refused from the metadata versions kept beside it, so the future record is
/// dropped and the time it held is returned for the caller to report.
fn forget_future_clock(datastore: &Path) -> Result<Option<jiff::Timestamp>, UpdateError> {
    let path = datastore.join(LATEST_KNOWN_TIME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(UpdateError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    // An unreadable record is as good as a future one: tough would refuse to start on it.
    let recorded = serde_json::from_str::<String>(&text)
        .ok()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok());
    let now = jiff::Timestamp::now();
    match recorded {
        Some(t) if t <= now => Ok(None),
        other => {
            std::fs::remove_file(&path).map_err(|source| UpdateError::Io {
                path: path.display().to_string(),
                source,
            })?;
            Ok(Some(other.unwrap_or(now)))
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

impl SignedRepo {
    /// Runs the TUF update workflow from `trusted_root` (the host's pinned `root.json`),
    /// remembering the newest metadata seen in `datastore`.
    pub async fn load(
        trusted_root: &[u8],
        source: &Source,
        datastore: &Path,
        limits: Limits,
    ) -> Result<SignedRepo, UpdateError> {
        let (metadata, targets, name, trust) = match source {
            Source::Server(url, trust) => {
                // `Url::join` replaces the last path segment unless the base ends with '/', so a
                // server at `https://host/patchbay` would lose `patchbay` without it.
                let base = if url.path().ends_with('/') {
                    url.clone()
                } else {
                    let mut u = url.clone();
                    u.set_path(&format!("{}/", url.path()));
                    u
                };
                let join = |p: &str| {
                    base.join(p)
                        .map_err(|e| UpdateError::Source(format!("server URL {url}: {e}")))
                };
                (
                    join("tuf/metadata/")?,
                    join("tuf/targets/")?,
                    url.to_string(),
                    trust.clone(),
                )
            }
            Source::Directory(dir) => {
                let dir = dir.canonicalize().map_err(|source| UpdateError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
                let url = |sub: &str| {
                    Url::from_directory_path(dir.join(sub)).map_err(|()| {
                        UpdateError::Source(format!("{} is not an absolute path", dir.display()))
                    })
                };
                (
                    url("metadata")?,
                    url("targets")?,
                    dir.display().to_string(),
                    tls::ServerTrust::PlatformRoots,
                )
            }
        };
        std::fs::create_dir_all(datastore).map_err(|source| UpdateError::Io {
            path: datastore.display().to_string(),
            source,
        })?;
        let clock_stepped_back_from = forget_future_clock(datastore)?;
        let transport = transport::PatchbayTransport::new(Duration::from_secs(60), &trust)
            .map_err(|e| UpdateError::Source(e.to_string()))?;
        let max = limits.max_metadata_bytes;
        let repo = RepositoryLoader::new(&trusted_root, metadata, targets)
            .transport(transport)
            .datastore(datastore)
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .limits(tough::Limits {
                max_root_size: max,
                max_targets_size: max,
                max_timestamp_size: max,
                max_snapshot_size: max,
                max_root_updates: 1024,
            })
            .load()
            .await
            .map_err(|e| UpdateError::Metadata {
                source_name: name,
                reason: error_chain(&e),
                fetch: fetch_failure(&e),
            })?;
        Ok(SignedRepo {
            repo,
            limits,
            clock_stepped_back_from,
        })
    }

    /// When the system clock read earlier than at a previous load: the later time seen then
    /// (a clock that had jumped forward and was corrected). The load went on; report it.
    pub fn clock_stepped_back_from(&self) -> Option<jiff::Timestamp> {
        self.clock_stepped_back_from
    }

    /// The newest root this repository is signed under (to persist as the trusted root).
    pub fn root_json(&self) -> Result<Vec<u8>, UpdateError> {
        serde_json::to_vec_pretty(self.repo.root()).map_err(|e| UpdateError::Metadata {
            source_name: "root".into(),
            reason: e.to_string(),
            fetch: None,
        })
    }

    /// The role of the loaded chain that expires first (`root`, `timestamp`, `snapshot` or
    /// `targets`) and when, in Unix seconds: the chain is valid until then. TUF checks expiry
    /// against the host's clock, so a clock set back makes expired metadata pass; a caller that
    /// knows a later time has passed compares it with this.
    pub fn first_expiry(&self) -> (&'static str, i64) {
        let repo = &self.repo;
        [
            ("timestamp", repo.timestamp().signed.expires.as_second()),
            ("snapshot", repo.snapshot().signed.expires.as_second()),
            ("targets", repo.targets().signed.expires.as_second()),
            ("root", repo.root().signed.expires.as_second()),
        ]
        .into_iter()
        .fold(("root", i64::MAX), |first, role| {
            if role.1 < first.1 {
                role
            } else {
                first
            }
        })
    }

    /// The targets version (for reporting).
    pub fn targets_version(&self) -> u64 {
        self.repo.targets().signed.version.get()
    }

    /// The versions of the timestamp and snapshot roles the client verified (a mirror serves
    /// exactly those files).
    pub fn timestamp_and_snapshot_versions(&self) -> (u64, u64) {
        (
            self.repo.timestamp().signed.version.get(),
            self.repo.snapshot().signed.version.get(),
        )
    }

    fn target(&self, name: &str) -> Option<&tough::schema::Target> {
        let name = TargetName::new(name).ok()?;
        self.repo.targets().signed.targets.get(&name)
    }

    async fn read(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, UpdateError> {
        let Some(target) = self.target(name) else {
            return Ok(None);
        };
        if target.length > limit {
            return Err(UpdateError::TooLarge {
                target: name.to_owned(),
                length: target.length,
                limit,
            });
        }
        let target_name = TargetName::new(name).map_err(|e| UpdateError::Download {
            target: name.to_owned(),
            reason: e.to_string(),
            fetch: None,
        })?;
        let failed = |e: &(dyn std::error::Error + 'static)| UpdateError::Download {
            target: name.to_owned(),
            reason: error_chain(e),
            fetch: fetch_failure(e),
        };
        let Some(mut stream) = self
            .repo
            .read_target(&target_name)
            .await
            .map_err(|e| failed(&e))?
        else {
            return Ok(None);
        };
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| failed(&e))?;
            data.extend_from_slice(&chunk);
            if data.len() as u64 > limit {
                return Err(UpdateError::TooLarge {
                    target: name.to_owned(),
                    length: data.len() as u64,
                    limit,
                });
            }
        }
        Ok(Some(data))
    }

    /// The signed document of `channel`.
    pub async fn channel(&self, channel: &ChannelName) -> Result<ChannelDoc, UpdateError> {
        let bytes = self
            .read(&channel.target_name(), CHANNEL_MAX_BYTES)
            .await?
            .ok_or_else(|| UpdateError::NoChannel {
                channel: channel.clone(),
            })?;
        ChannelDoc::parse(&bytes, channel).map_err(|e| UpdateError::ChannelDoc {
            channel: channel.clone(),
            reason: e.to_string(),
        })
    }

    /// The signed manifest of a level, without downloading the bundle.
    pub fn manifest(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<Option<Manifest>, UpdateError> {
        let name = bundle_target_name(build_id, level);
        let Some(target) = self.target(&name) else {
            return Ok(None);
        };
        let value = target
            .custom
            .get("manifest")
            .ok_or_else(|| UpdateError::Bundle {
                target: name.clone(),
                reason: "its signed metadata carries no manifest".into(),
            })?;
        let bytes = serde_json::to_vec(value).map_err(|e| UpdateError::Bundle {
            target: name.clone(),
            reason: e.to_string(),
        })?;
        Manifest::parse(&bytes)
            .map(Some)
            .map_err(|e| UpdateError::Bundle {
                target: name,
                reason: format!("signed manifest: {e}"),
            })
    }

    /// Downloads and verifies a level's bundle: size from signed metadata (never more, never
    /// above the limit), hash, bundle format, and its manifest equal to the signed one.
    pub async fn bundle(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<Bundle, UpdateError> {
        let name = bundle_target_name(build_id, level);
        let signed = self
            .manifest(build_id, level)?
            .ok_or_else(|| UpdateError::NoBundle {
                build_id: build_id.clone(),
                level,
            })?;
        let bytes = self
            .read(&name, self.limits.max_bundle_bytes)
            .await?
            .ok_or_else(|| UpdateError::NoBundle {
                build_id: build_id.clone(),
                level,
            })?;
        let bundle =
            Bundle::from_reader(bytes.as_slice(), &name).map_err(|e| UpdateError::Bundle {
                target: name.clone(),
                reason: e.to_string(),
            })?;
        if *bundle.manifest() != signed {
            return Err(UpdateError::ManifestMismatch { target: name });
        }
        if &bundle.manifest().kernel.build_id != build_id || bundle.manifest().level != level {
            return Err(UpdateError::Bundle {
                target: name,
                reason: format!(
                    "it is level {} of {}, published as level {level} of {build_id}",
                    bundle.manifest().level,
                    bundle.manifest().kernel.build_id
                ),
            });
        }
        Ok(bundle)
    }

    /// Every target name with its sha256 and length (for mirroring).
    pub fn target_list(&self) -> Vec<(String, String, u64)> {
        let mut list: Vec<_> = self
            .repo
            .targets()
            .signed
            .targets
            .iter()
            .map(|(name, t)| (name.raw().to_owned(), hex_of(&t.hashes.sha256), t.length))
            .collect();
        list.sort();
        list
    }

    /// Reads any target (for mirroring), verified.
    pub async fn read_target(&self, name: &str) -> Result<Option<Vec<u8>>, UpdateError> {
        self.read(name, self.limits.max_bundle_bytes).await
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
