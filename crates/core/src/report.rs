//! The upgrade report: what `patchbay-build upgrade` did with each CVE of a window, attached to
//! the level it published (`POST /api/v1/kernels/{build_id}/levels/{level}/report`) and shown on
//! the dashboard. One type for the builder that writes it and the server that stores it.

use serde::{Deserialize, Serialize};

use crate::{BuildId, CveId, KernelRelease, PatchLevel, Sha256};

/// The largest report a server accepts (a full window of a few hundred CVEs is ~200 KiB).
pub const REPORT_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The outcome of one `upgrade` run for one kernel build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeReport {
    /// `uname -r` of the kernel the level is for, e.g. `6.1.0-56-amd64`.
    pub kernel: KernelRelease,
    /// GNU build-id of that kernel's vmlinux (40 hex digits).
    pub build_id: BuildId,
    /// Upstream version of the running kernel (`6.1.170`).
    pub from_version: String,
    /// Upstream version whose fixes the level brings (`6.1.176`).
    pub to_version: String,
    /// The Debian source package version the fixes were taken from (`6.1.176-1`), or the
    /// directory of `--patches`.
    pub fixes_from: String,
    /// The level the bundle was built as.
    pub level: PatchLevel,
    /// CVEs below this CVSS score were not selected.
    pub min_cvss: f64,
    /// RFC 3339 UTC time the run started.
    pub started: String,
    /// Wall-clock seconds the whole run took.
    pub elapsed_seconds: f64,
    /// The bundle's module, when one was built.
    pub module: Option<ReportModule>,
    /// QEMU verification of the bundle, when it ran.
    pub verification: Option<Verification>,
    /// One entry per CVE of the window that was considered, whatever its outcome.
    pub cves: Vec<CveOutcome>,
    /// What a reader must know about the window as a whole, e.g. that the CVE data does not
    /// reach the newer source (its fixes after the data's last release are not in `cves`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

/// The module the run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportModule {
    /// The module's name in the kernel, e.g. `pb_0123456789ab_l1`.
    pub name: String,
    /// Size of the `.ko` in bytes.
    pub size: u64,
    /// SHA-256 of the `.ko`, as in the bundle's manifest.
    pub sha256: Sha256,
}

/// What happened to one CVE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CveOutcome {
    /// The CVE, e.g. `CVE-2024-26581`.
    pub cve: CveId,
    /// Its CVSS base score; `None` when the CVE database has none.
    pub score: Option<f64>,
    /// One-line description of the CVE.
    pub title: String,
    /// What the run did with it.
    pub status: CveStatus,
    /// CVEs that share files are built together; the group's number (1-based).
    pub group: u32,
    /// Kernel source files the fix touches.
    pub files: Vec<String>,
    /// `object:function` replaced for this CVE's group (patched and partial only).
    pub functions: Vec<String>,
    /// A stable category a script can count (not patchable, partial, not applicable).
    pub category: Option<String>,
    /// The exact reason, naming file and function where there is one.
    pub reason: Option<String>,
    /// Seconds spent on this CVE's group (shared by the CVEs of one group).
    pub seconds: f64,
}

/// The four outcomes a CVE can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CveStatus {
    /// The whole fix is in the module; the manifest's `fixes` lists it.
    Patched,
    /// The runtime part is in the module, but not all of the fix (e.g. a module's `__init`
    /// part, which runs again when that module is reloaded); not in `fixes`.
    Partial,
    /// The code is not built in this kernel's configuration (proven from kbuild's Makefiles).
    NotApplicable,
    /// The fix cannot be a live patch (or broke the verification run): `category`, `reason`.
    NotPatchable,
}

impl CveStatus {
    /// The kebab-case name used in the JSON, e.g. `not-applicable`.
    pub fn as_str(self) -> &'static str {
        match self {
            CveStatus::Patched => "patched",
            CveStatus::Partial => "partial",
            CveStatus::NotApplicable => "not-applicable",
            CveStatus::NotPatchable => "not-patchable",
        }
    }
}

/// The QEMU run that tried the bundle before it was offered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// Whether the offered bundle passed: loaded, transitioned and ran the workloads cleanly.
    pub passed: bool,
    /// Modules loaded in the guest before the patch (the objects it patches).
    pub modules_loaded: Vec<String>,
    /// The smoke workloads that ran while the patch was live.
    pub workloads: Vec<String>,
    /// Groups left out of the bundle (broke the smoke run, blocked the transition, or built
    /// only alone), with why.
    pub dropped_groups: Vec<DroppedGroup>,
    /// Wall-clock seconds all verification runs took.
    pub seconds: f64,
    /// What the run showed about the kernel rather than the patch (e.g. a patched module that
    /// cannot be reloaded while the patch is live on this kernel).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Guest seconds from `patchbay apply` to the transition's end for the offered bundle.
    #[serde(default)]
    pub apply_seconds: Option<f64>,
}

/// A group of CVEs taken out of the bundle because the verification run failed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DroppedGroup {
    /// The group's number, as in [`CveOutcome::group`].
    pub group: u32,
    /// The CVEs of the group, all left out together.
    pub cves: Vec<CveId>,
    /// Why, as a category a script can count (reports before it existed: verification).
    #[serde(default)]
    pub category: DropCategory,
    /// The failure in words, e.g. `broke the verification run: <first line of the failure>`.
    pub reason: String,
}

/// Why a group that built alone was left out of the cumulative bundle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropCategory {
    /// It builds alone but not together with the other groups.
    CumulativeBuildFailed,
    /// It broke the verification run in QEMU (kernel warning, failed workload, crash).
    #[default]
    VerificationFailed,
    /// Its transition could not finish: tasks sleep in functions it replaces.
    TransitionBlocked,
}

impl DropCategory {
    /// The category as the report and `--json` consumers spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            DropCategory::CumulativeBuildFailed => "cumulative-build-failed",
            DropCategory::VerificationFailed => "verification-failed",
            DropCategory::TransitionBlocked => "transition-blocked",
        }
    }
}

impl UpgradeReport {
    /// Parses a report received from the network or read from a file.
    pub fn parse(bytes: &[u8]) -> Result<UpgradeReport, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// CVEs with `status`.
    pub fn with_status(&self, status: CveStatus) -> impl Iterator<Item = &CveOutcome> {
        self.cves.iter().filter(move |c| c.status == status)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let report = UpgradeReport {
            kernel: "6.1.0-47-amd64".parse().unwrap(),
            build_id: "0123456789abcdef0123456789abcdef01234567".parse().unwrap(),
            from_version: "6.1.170".into(),
            to_version: "6.1.176".into(),
            fixes_from: "6.1.176-1".into(),
            level: PatchLevel::try_from(2).unwrap(),
            min_cvss: 7.0,
            started: "2026-11-30T06:00:00Z".into(),
            elapsed_seconds: 12.5,
            module: None,
            verification: None,
            cves: vec![CveOutcome {
                cve: "CVE-2025-1234".parse().unwrap(),
                score: Some(7.8),
                title: "a fix".into(),
                status: CveStatus::NotApplicable,
                group: 1,
                files: vec!["drivers/x.c".into()],
                functions: Vec::new(),
                category: Some("not-built-in-config".into()),
                reason: Some("drivers/x.o is not built".into()),
                seconds: 1.0,
            }],
            notices: Vec::new(),
        };
        let json = serde_json::to_vec(&report).unwrap();
        assert!(
            !String::from_utf8_lossy(&json).contains("notices"),
            "no notices: the same JSON as before there were any"
        );
        let noticed = UpgradeReport {
            notices: vec!["CVE data covers 6.12 releases up to 6.12.104".into()],
            ..report.clone()
        };
        let noticed_json = serde_json::to_vec(&noticed).unwrap();
        assert_eq!(UpgradeReport::parse(&noticed_json).unwrap(), noticed);
        assert!(
            String::from_utf8_lossy(&json).contains("\"not-applicable\""),
            "status spelled in kebab-case: {}",
            String::from_utf8_lossy(&json)
        );
        assert_eq!(UpgradeReport::parse(&json).unwrap(), report);
        let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        value["surprise"] = serde_json::json!(1);
        assert!(UpgradeReport::parse(&serde_json::to_vec(&value).unwrap()).is_err());
    }
}
