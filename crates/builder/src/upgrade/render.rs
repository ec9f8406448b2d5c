//! The upgrade report as text for a terminal or a log.

use std::fmt::Write as _;

use patchbay_core::{CveStatus, UpgradeReport};

/// The report as lines of text: a summary, then each CVE by status.
pub fn text(report: &UpgradeReport) -> String {
    let mut s = String::new();
    let count = |status| report.with_status(status).count();
    let _ = writeln!(
        s,
        "upgrade of {} (build-id {}) from {} to {} ({}), level {}, CVSS ≥ {}",
        report.kernel,
        report.build_id,
        report.from_version,
        report.to_version,
        report.fixes_from,
        report.level,
        report.min_cvss
    );
    let _ = writeln!(
        s,
        "  {} CVEs: {} patched, {} partial, {} not applicable, {} not patchable; {:.0} s",
        report.cves.len(),
        count(CveStatus::Patched),
        count(CveStatus::Partial),
        count(CveStatus::NotApplicable),
        count(CveStatus::NotPatchable),
        report.elapsed_seconds
    );
    for notice in &report.notices {
        let _ = writeln!(s, "  note: {notice}");
    }
    match &report.module {
        Some(m) => {
            let _ = writeln!(
                s,
                "  module {} ({} bytes, sha256 {})",
                m.name, m.size, m.sha256
            );
        }
        None => {
            let _ = writeln!(s, "  no module was built");
        }
    }
    match &report.verification {
        Some(v) => {
            let _ = writeln!(
                s,
                "  verified in QEMU: {} ({:.0} s; modules loaded: {}; workloads: {})",
                if v.passed { "passed" } else { "FAILED" },
                v.seconds,
                if v.modules_loaded.is_empty() {
                    "none".to_owned()
                } else {
                    v.modules_loaded.join(", ")
                },
                v.workloads.join(", ")
            );
            if let Some(seconds) = v.apply_seconds {
                let _ = writeln!(
                    s,
                    "  apply (load and transition) took {seconds:.1} s in the guest"
                );
            }
            for note in &v.notes {
                let _ = writeln!(s, "  note: {note}");
            }
            for d in &v.dropped_groups {
                let ids: Vec<&str> = d.cves.iter().map(|c| c.as_str()).collect();
                let _ = writeln!(
                    s,
                    "  dropped group {} ({}), {}: {}",
                    d.group,
                    ids.join(", "),
                    d.category.as_str(),
                    d.reason
                );
            }
        }
        None => {
            let _ = writeln!(s, "  not verified (--no-verify)");
        }
    }
    for status in [
        CveStatus::Patched,
        CveStatus::Partial,
        CveStatus::NotApplicable,
        CveStatus::NotPatchable,
    ] {
        let cves: Vec<_> = report.with_status(status).collect();
        if cves.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{}:", status.as_str());
        for c in cves {
            let score = c.score.map_or("unscored".to_owned(), |v| format!("{v:.1}"));
            let _ = write!(
                s,
                "  {} ({score}, group {}, {:.0} s)",
                c.cve, c.group, c.seconds
            );
            if let Some(category) = &c.category {
                let _ = write!(s, " [{category}]");
            }
            if !c.functions.is_empty() {
                let shown: Vec<&str> = c.functions.iter().take(6).map(String::as_str).collect();
                let more = c.functions.len().saturating_sub(shown.len());
                let _ = write!(s, " {}", shown.join(", "));
                if more > 0 {
                    let _ = write!(s, " and {more} more");
                }
            }
            if let Some(reason) = &c.reason {
                let _ = write!(s, ": {reason}");
            }
            s.push('\n');
        }
    }
    s
}
