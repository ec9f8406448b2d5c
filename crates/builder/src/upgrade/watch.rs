//! `patchbay-build watch`: a new Debian kernel source is a new level, automatically.
//!
//! Each round: (optionally) `apt-get update`, note when each `linux-source-6.1` version was
//! first seen, ask the patch server which kernels its hosts run, and for every Debian kernel
//! whose newest upgrade is older than the newest source: `upgrade` (verified), publish as the
//! next level with the report attached, promote into the operator's channel. What was built
//! and how long it took from "source seen" to "level published" is kept in a state file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use patchbay_core::clock::{now_rfc3339, parse_rfc3339, unix_seconds};
use patchbay_core::{CveId, CveStatus};
use patchbay_exposure::CveDatabase;
use patchbay_kernels::{KernelLine, KernelSelector};

use super::verify::VerifyOptions;
use super::{FixSource, NewerSource, Upgrade, UpgradeError};

/// What the watcher does each round.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The patch server (`https://patches.example:8470`), with an API token that may read
    /// hosts, publish and promote (operator or admin role) and how its certificate is trusted.
    pub server: crate::publish::ServerAccess,
    /// The channel each new level is promoted into (it must exist).
    pub channel: String,
    /// CVEs scored below this CVSS base score (0.0–10.0) are left out, as for `upgrade`.
    pub min_cvss: f64,
    /// Only these CVEs (empty: the whole window).
    pub only: Vec<CveId>,
    /// How each level is verified in QEMU before it is published (`None`: not verified).
    pub verify: Option<VerifyOptions>,
    /// Where the state and the built bundles and reports are kept.
    pub state_dir: PathBuf,
    /// Run `apt-get update` first (needs root).
    pub apt_update: bool,
}

/// The watcher's memory (`<state_dir>/watch.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchState {
    /// `linux-source-6.1` package version → RFC 3339 time it was first seen in apt.
    pub sources_seen: BTreeMap<String, String>,
    /// Build-id → the newest level built for it.
    pub built: BTreeMap<String, BuiltLevel>,
}

/// One level the watcher published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltLevel {
    /// The kernel's release (`6.1.0-47-amd64`, `6.12.95+deb12-amd64`).
    pub kernel: String,
    /// The source package version whose fixes it brings.
    pub source: String,
    /// The patch level it was published as.
    pub level: u32,
    /// RFC 3339 time it was published (`2026-11-30T06:00:00Z`).
    pub published: String,
    /// How many of the level's CVEs it patches.
    pub patched: usize,
    /// How many CVEs the upgrade considered (patched or not).
    pub cves: usize,
    /// Seconds from the source first being seen to the level being published.
    pub seen_to_published_seconds: i64,
    /// The published bundle, kept in the state directory.
    pub bundle: PathBuf,
    /// The level's upgrade report (JSON), kept in the state directory.
    pub report: PathBuf,
}

impl BuiltLevel {
    /// The source package the fixes came from (`linux-source-6.12`), from the kernel's line.
    pub fn source_package(&self) -> &'static str {
        self.kernel
            .parse::<patchbay_core::DebianRelease>()
            .ok()
            .and_then(|release| patchbay_kernels::source_package_of(&release).ok())
            .unwrap_or("linux-source")
    }
}

/// What a round did for one kernel.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelRound {
    /// A new level was built, published, given its report and promoted.
    Published(BuiltLevel),
    /// Nothing to do: its level for the newest source exists, or it already runs that release.
    UpToDate {
        /// The kernel release hosts report (`6.1.0-47-amd64`).
        kernel: String,
        /// Why it is up to date.
        reason: String,
    },
    /// Not a kernel the watcher can build for (not Debian 6.1, not in apt, a custom build).
    Skipped {
        /// The kernel release hosts report.
        kernel: String,
        /// Why it was skipped.
        reason: String,
    },
    /// The upgrade, publish, report or promotion failed; tried again next round.
    Failed {
        /// The kernel release hosts report.
        kernel: String,
        /// What failed, as text.
        reason: String,
    },
}

/// Why a whole round stopped (a single kernel's failure is [`KernelRound::Failed`] instead).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// `watch.json` is not valid state (hand-edited, from another version), or cannot be encoded.
    #[error("read the watch state {path}: {reason}; move it aside to start afresh")]
    State {
        /// The state file.
        path: PathBuf,
        /// The JSON error.
        reason: String,
    },
    /// A file operation in the state directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`read`, `write`, `create`).
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The patch server could not be asked for its hosts (bad URL, unreachable, refused), or
    /// the async runtime for asking would not start.
    #[error("patch server: {0}")]
    Server(String),
    /// apt's list of `linux-source-6.1` versions could not be read or understood.
    #[error(transparent)]
    Kernel(#[from] patchbay_kernels::KernelError),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WatchError {
    let path = path.to_path_buf();
    move |source| WatchError::Io {
        action,
        path,
        source,
    }
}

impl WatchState {
    /// Reads `<dir>/watch.json`; an empty state when the file does not exist yet.
    pub fn load(dir: &Path) -> Result<WatchState, WatchError> {
        let path = dir.join("watch.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WatchError::State {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WatchState::default()),
            Err(e) => Err(WatchError::Io {
                action: "read",
                path,
                source: e,
            }),
        }
    }

    /// Writes `<dir>/watch.json` atomically (a crash leaves the old state or the new one).
    pub(crate) fn save(&self, dir: &Path) -> Result<(), WatchError> {
        let path = dir.join("watch.json");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| WatchError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        patchbay_core::fsutil::write_atomic(&path, &bytes).map_err(io("write", &path))
    }
}

/// A small client for the admin API calls the watcher makes.
struct Api {
    base: url::Url,
    token: String,
    client: reqwest::Client,
}

impl Api {
    fn new(server: &crate::publish::ServerAccess) -> Result<Api, WatchError> {
        let base = url::Url::parse(&server.url)
            .map_err(|e| WatchError::Server(format!("server URL {}: {e}", server.url)))?;
        let client = server
            .client(Duration::from_secs(120))
            .map_err(WatchError::Server)?;
        Ok(Api {
            base,
            token: server.token.clone(),
            client,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, WatchError> {
        let url = self
            .base
            .join(&format!("api/v1/{path}"))
            .map_err(|e| WatchError::Server(e.to_string()))?;
        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            WatchError::Server(format!(
                "{method} {url}: {}",
                crate::publish::ServerAccess::describe(&e)
            ))
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| WatchError::Server(format!("{method} {url}: {e}")))?;
        if !status.is_success() {
            return Err(WatchError::Server(format!(
                "{method} {url}: {status}: {text}"
            )));
        }
        serde_json::from_str(&text)
            .map_err(|e| WatchError::Server(format!("{method} {url}: {e}: {text}")))
    }
}

/// `(kernel_release, build_id)` of every host the server knows that is not revoked.
fn kernels_in_use(hosts: &serde_json::Value) -> Vec<(String, String)> {
    let mut kernels: Vec<(String, String)> = hosts
        .get("hosts")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|h| h.get("state").and_then(serde_json::Value::as_str) != Some("revoked"))
        .filter_map(|h| {
            Some((
                h.get("kernel_release")?.as_str()?.to_owned(),
                h.get("build_id")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    kernels.sort();
    kernels.dedup();
    kernels
}

/// One round. The state is saved after every published level.
pub fn round(
    config: &WatchConfig,
    db: &CveDatabase,
    state: &mut WatchState,
) -> Result<Vec<KernelRound>, WatchError> {
    std::fs::create_dir_all(&config.state_dir).map_err(io("create", &config.state_dir))?;
    if config.apt_update {
        if let Err(e) = patchbay_kernels::refresh_archive() {
            eprintln!(
                "watch: refreshing the package lists failed ({e}); using the lists there are"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| WatchError::Server(format!("start the async runtime: {e}")))?;
    let api = Api::new(&config.server)?;
    let hosts = runtime.block_on(api.call(reqwest::Method::GET, "hosts", None))?;
    let mut rounds = Vec::new();
    // Each line has its own source package (linux-source-6.1, linux-source-6.12 for Debian 12
    // or 13): the newest source is asked once per line a host runs.
    let mut newest_of_line: std::collections::HashMap<KernelLine, Option<String>> =
        std::collections::HashMap::new();
    for (release, build_id) in kernels_in_use(&hosts) {
        let skip = |reason: String| KernelRound::Skipped {
            kernel: release.clone(),
            reason,
        };
        let Ok(selector) = release.parse::<KernelSelector>() else {
            rounds.push(skip("not a Debian kernel release".into()));
            continue;
        };
        let line = match selector.line() {
            Ok(line) => line,
            Err(e) => {
                rounds.push(skip(e.to_string()));
                continue;
            }
        };
        let newest = match newest_of_line.get(&line) {
            Some(newest) => newest.clone(),
            None => {
                let versions = patchbay_kernels::source_versions(&line)?;
                let stamp = now_rfc3339();
                for v in &versions {
                    state
                        .sources_seen
                        .entry(v.clone())
                        .or_insert_with(|| stamp.clone());
                }
                state.save(&config.state_dir)?;
                let newest = versions.last().cloned();
                newest_of_line.insert(line, newest.clone());
                newest
            }
        };
        let Some(newest) = newest else {
            rounds.push(skip(format!(
                "Debian offers no {} yet",
                line.source_package()
            )));
            continue;
        };
        let newest_upstream = patchbay_kernels::upstream_version_of(&newest)?;
        if state
            .built
            .get(&build_id)
            .is_some_and(|b| b.source == newest)
        {
            rounds.push(KernelRound::UpToDate {
                kernel: release.clone(),
                reason: format!(
                    "its level for {} {newest} is published",
                    line.source_package()
                ),
            });
            continue;
        }
        let kernel = match patchbay_kernels::fetch_selector(&selector) {
            Ok(kernel) => kernel,
            Err(e) => {
                rounds.push(skip(format!("apt does not offer it: {e}")));
                continue;
            }
        };
        if kernel.build_id().as_str() != build_id {
            rounds.push(skip(format!(
                "its build-id {build_id} is not Debian's {} (a custom build)",
                kernel.build_id()
            )));
            continue;
        }
        let from = kernel.upstream_version();
        let to = newest_upstream;
        if to <= from {
            rounds.push(KernelRound::UpToDate {
                kernel: release.clone(),
                reason: format!("it runs {from}, the newest source is {newest_upstream}"),
            });
            continue;
        }
        match build_and_publish(config, db, &runtime, &api, &kernel, to, &newest, state) {
            Ok(built) => {
                state.built.insert(build_id.clone(), built.clone());
                state.save(&config.state_dir)?;
                rounds.push(KernelRound::Published(built));
            }
            Err(reason) => rounds.push(KernelRound::Failed {
                kernel: release.clone(),
                reason,
            }),
        }
    }
    Ok(rounds)
}

#[allow(clippy::too_many_arguments)]
fn build_and_publish(
    config: &WatchConfig,
    db: &CveDatabase,
    runtime: &tokio::runtime::Runtime,
    api: &Api,
    kernel: &patchbay_kernels::Kernel,
    to: patchbay_core::UpstreamVersion,
    source: &str,
    state: &WatchState,
) -> Result<BuiltLevel, String> {
    let level = runtime.block_on(super::next_level(&config.server, kernel.build_id()))?;
    let line = KernelLine::of(kernel.debian_release()).map_err(|e| e.to_string())?;
    let tree = patchbay_kernels::unpacked_source(&line, source).map_err(|e| e.to_string())?;
    let name = format!("{}-l{}", kernel.build_id(), level);
    let bundle = config.state_dir.join(format!("{name}.pbb"));
    let report_path = config.state_dir.join(format!("{name}.report.json"));
    let request = Upgrade {
        level,
        to,
        min_cvss: config.min_cvss,
        only: config.only.clone(),
        fixes: FixSource {
            newer: Some(NewerSource {
                package_version: source.to_owned(),
                tree,
            }),
            patches: None,
        },
        output: bundle.clone(),
        verify: config.verify.clone(),
        header_recompile_limit: crate::diff::headers::RECOMPILE_LIMIT,
        work_dir: None,
    };
    let report = match super::run(kernel, db, &request) {
        Ok(report) => report,
        Err(UpgradeError::NothingBuilt { report, .. }) => {
            let _ = write_report(&report_path, &report);
            return Err(format!(
                "no CVE of the window became a verified live patch (report: {})",
                report_path.display()
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    write_report(&report_path, &report)?;
    runtime
        .block_on(crate::publish::publish(&config.server, &bundle))
        .map_err(|e| format!("publish {}: {e}", bundle.display()))?;
    runtime
        .block_on(crate::publish::attach_report(&config.server, &report))
        .map_err(|e| format!("attach the report: {e}"))?;
    runtime
        .block_on(api.call(
            reqwest::Method::POST,
            &format!("channels/{}/promote", config.channel),
            Some(serde_json::json!({"build_id": kernel.build_id(), "level": level.get()})),
        ))
        .map_err(|e| {
            format!(
                "promote level {level} into channel {}: {e} (create the channel first)",
                config.channel
            )
        })?;
    let published = now_rfc3339();
    let seen = state
        .sources_seen
        .get(source)
        .and_then(|text| parse_rfc3339(text))
        .unwrap_or_else(unix_seconds);
    Ok(BuiltLevel {
        kernel: kernel.release().to_string(),
        source: source.to_owned(),
        level: level.get(),
        published,
        patched: report.with_status(CveStatus::Patched).count(),
        cves: report.cves.len(),
        seen_to_published_seconds: unix_seconds() - seen,
        bundle,
        report: report_path,
    })
}

fn write_report(path: &Path, report: &patchbay_core::UpgradeReport) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
    patchbay_core::fsutil::write_atomic(path, &bytes)
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// Parses `30s`, `15m`, `6h`, `1d` (or plain seconds).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("interval {text:?}: expected e.g. 30m, 6h, 1d"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("interval {text:?}: unit must be s, m, h or d")),
    };
    if seconds == 0 {
        return Err("the interval must be positive".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("6h").unwrap(), Duration::from_secs(21_600));
        assert_eq!(parse_interval("90").unwrap(), Duration::from_secs(90));
        assert!(parse_interval("0m").is_err());
        assert!(
            parse_interval("5w").unwrap_err().contains("unit"),
            "{:?} does not contain {:?}",
            parse_interval("5w").unwrap_err(),
            "unit"
        );
    }

    #[test]
    fn kernels_in_use_are_distinct_and_skip_revoked_hosts() {
        let hosts = serde_json::json!({"hosts": [
            {"kernel_release": "6.1.0-47-amd64", "build_id": "aa", "state": "patched"},
            {"kernel_release": "6.1.0-47-amd64", "build_id": "aa", "state": "unpatched"},
            {"kernel_release": "6.1.0-50-amd64", "build_id": "bb", "state": "revoked"},
            {"kernel_release": "6.1.0-53-amd64", "build_id": "cc"},
            {"hostname": "broken"}
        ]});
        assert_eq!(
            kernels_in_use(&hosts),
            vec![
                ("6.1.0-47-amd64".to_owned(), "aa".to_owned()),
                ("6.1.0-53-amd64".to_owned(), "cc".to_owned())
            ]
        );
    }

    #[test]
    fn state_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(WatchState::load(dir.path()).unwrap(), WatchState::default());
        let mut state = WatchState::default();
        state
            .sources_seen
            .insert("6.1.176-1".into(), "2026-11-30T06:00:00Z".into());
        state.save(dir.path()).unwrap();
        assert_eq!(WatchState::load(dir.path()).unwrap(), state);
        std::fs::write(dir.path().join("watch.json"), "{").unwrap();
        let err = WatchState::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("move it aside"), "{err}");
    }
}
