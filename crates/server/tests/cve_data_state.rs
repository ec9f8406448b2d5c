//! "A new server tells auditors that everything is fine" (issue 20): `init`, `serve`, twelve
//! hosts on 6.1.170, 6.1.176 and 6.1.192 register and check in — and nobody ran `cve sync`.
//! The server ships the kernel CNA snapshot and loads it at `init`, so the fleet's open high
//! CVEs show at once, with the data's date; without data every page, the compliance report,
//! the CSV and `/metrics` say "unknown" (never 0 open, never "within") and `doctor` fails; with
//! data older than `cve.max_age_days` they warn.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;

mod common;
use common::*;

const PASSWORD: &str = "correct horse battery staple";

/// The fleet of the scenario: (upstream release, Debian ABI name), four hosts each.
const RELEASES: [(&str, &str); 3] = [
    ("6.1.170", "6.1.0-48-amd64"),
    ("6.1.176", "6.1.0-50-amd64"),
    ("6.1.192", "6.1.0-56-amd64"),
];

/// A build-id per release (hosts on one release run the same kernel build).
fn build_id_of(release_index: usize) -> String {
    format!("{:040x}", 0x6100 + release_index)
}

/// Registers and checks in twelve hosts as their agents would; returns hostname → host id.
fn fleet_of_twelve(s: &Server) -> BTreeMap<String, String> {
    let mut hosts = BTreeMap::new();
    for (i, (version, abi)) in RELEASES.iter().enumerate() {
        for n in 1..=4 {
            let hostname = format!("web-{version}-{n}");
            let (status, reg) = call(
                s,
                "POST",
                "/api/v1/register",
                None,
                Some(Body::Json(json!({
                    "key": s.registration_key, "hostname": hostname, "kernel_release": abi,
                    "kernel_version": version, "build_id": build_id_of(i),
                    "agent_version": "0.1.0"}))),
            );
            assert_eq!(status, 201, "{reg}");
            let token = reg["host_token"].as_str().unwrap();
            let (status, reply) = call(
                s,
                "POST",
                "/api/v1/checkin",
                Some(token),
                Some(Body::Json(json!({
                    "kernel_release": abi, "kernel_version": version,
                    "build_id": build_id_of(i), "active_level": null, "state": "unpatched",
                    "last_error": null, "agent_version": "0.1.0"}))),
            );
            assert_eq!(status, 200, "{reply}");
            hosts.insert(hostname, reg["host_id"].as_str().unwrap().to_owned());
        }
    }
    hosts
}

/// `GET /api/v1/hosts/{id}/exposure` as the admin (200 expected).
fn exposure_of(s: &Server, host_id: &str) -> serde_json::Value {
    let (status, e) = call(
        s,
        "GET",
        &format!("/api/v1/hosts/{host_id}/exposure"),
        Some(s.admin.as_str()),
        None,
    );
    assert_eq!(status, 200, "{e}");
    e
}

/// The text of the element with `id` in `html` (its first text node).
fn element_text<'a>(html: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let rest = &html[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap();
    rest[open..open + close].trim()
}

#[test]
fn after_init_the_fleet_shows_the_open_high_cves_of_old_kernels() {
    let s = start(|t| t.to_owned());
    let hosts = fleet_of_twelve(&s);
    let admin = Some(s.admin.as_str());

    // The API: a 6.1.170 host has open high CVEs, in complete data.
    let old = &hosts["web-6.1.170-1"];
    let e = exposure_of(&s, old);
    assert_eq!(e["live"]["data"]["state"], "complete", "{e}");
    assert!(e["live"]["high"].as_u64().unwrap() > 100, "{e}");

    // The compliance report: every 6.1.170 host past the window with open high CVEs.
    let (_, report) = call(&s, "GET", "/api/v1/reports/compliance", admin, None);
    let rows = report["hosts"].as_array().unwrap();
    assert_eq!(rows.len(), 12);
    for row in rows.iter().filter(|r| r["upstream_version"] == "6.1.170") {
        assert!(row["live_high"].as_u64().unwrap() > 100, "{row}");
        assert_eq!(row["window"], "breached", "{row}");
    }

    // The fleet page.
    let browser = UiPages::login(&s, "vera", PASSWORD);
    let fleet = browser.page("/ui");
    let open_high: u64 = element_text(&fleet, "open-high").parse().unwrap();
    assert!(open_high > 100, "{fleet}");
}

/// Every dashboard page a viewer can open (one host's page among them).
fn every_page(host_id: &str) -> Vec<String> {
    [
        "/ui",
        "/ui/hosts",
        "/ui/kernels",
        "/ui/channels",
        "/ui/channels/production",
        "/ui/compliance",
        "/ui/audit",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .chain([format!("/ui/hosts/{host_id}")])
    .collect()
}

/// Asserts that every page carries the CVE data banner, saying `says`.
fn banner_on_every_page(browser: &UiPages, host_id: &str, says: &str) {
    for path in every_page(host_id) {
        let page = browser.page(&path);
        assert!(
            page.contains("id=\"cve-data-banner\"") && page.contains(says),
            "{path}: {page}"
        );
    }
}

/// The compliance CSV as one map per host (column → cell).
fn csv_rows(s: &Server) -> Vec<BTreeMap<String, String>> {
    let (status, csv) = get_text(s, "/api/v1/reports/compliance?format=csv", &s.admin);
    assert_eq!(status, 200, "{csv}");
    let mut lines = csv.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_owned))
                .collect()
        })
        .collect()
}

/// `doctor`'s exit code and output.
fn doctor(s: &Server) -> (Option<i32>, String) {
    let out = cli(&["doctor"], &s.data);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of the metric sample `name` (with its labels) in `/metrics`, if present.
fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    })
}

/// Asserts each `(sample, value)` of `/metrics`.
fn expect_metrics(metrics: &str, expected: &[(&str, f64)]) {
    for (name, value) in expected {
        assert_eq!(metric(metrics, name), Some(*value), "{name} in {metrics}");
    }
}

#[test]
fn without_cve_data_every_answer_says_unknown_and_doctor_fails() {
    let mut s = start(|t| t.to_owned());
    let hosts = fleet_of_twelve(&s);
    let admin = Some(s.admin.as_str());
    let old = hosts["web-6.1.170-1"].clone();
    // A data dir whose CVE data is gone (removed, or from a version that had none).
    std::fs::remove_file(s.data.join("cve/db.json")).unwrap();

    let (code, said) = doctor(&s);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("FAIL  no CVE data") && said.contains("cve sync"),
        "{said}"
    );

    // The API: no figures, and why.
    let e = exposure_of(&s, &old);
    assert!(e["base"].is_null() && e["live"].is_null(), "{e}");
    assert_eq!(e["cve_data"]["state"], "missing", "{e}");
    assert!(e["cve_data"]["warning"]
        .as_str()
        .unwrap()
        .contains("no CVE data"));
    // VEX: an empty list must not read as "not affected".
    let (_, vex) = call(&s, "GET", &format!("/api/v1/hosts/{old}/vex"), admin, None);
    assert!(
        vex["document"]["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["title"] == "CVE data age"
                && n["text"].as_str().unwrap().contains("no CVE data")),
        "{vex}"
    );
    let (_, report) = call(&s, "GET", "/api/v1/reports/compliance", admin, None);
    assert_eq!(report["cve_data"]["state"], "missing");
    let rows = report["hosts"].as_array().unwrap();
    assert_eq!(rows.len(), 12);
    for row in rows {
        assert_eq!(row["window"], "unknown", "{row}");
        assert!(row["window_breached"].is_null(), "{row}");
        assert!(
            row["live_cves"].is_null() && row["live_high_overdue"].is_null(),
            "{row}"
        );
    }
    // The CSV: empty cells, never 0 or false; the window is "unknown".
    let csv = csv_rows(&s);
    assert_eq!(csv.len(), 12);
    for row in &csv {
        assert_eq!(row["window"], "unknown", "{row:?}");
        assert_eq!(row["window_breached"], "", "{row:?}");
        assert_eq!(row["live_cves"], "", "{row:?}");
        assert_eq!(row["live_high_overdue"], "", "{row:?}");
        assert_eq!(row["cve_data_date"], "", "{row:?}");
    }
    // /metrics: every host unknown, the data missing for each series, outdated, no age.
    let (_, metrics) = get_text(&s, "/metrics", &s.admin);
    expect_metrics(
        &metrics,
        &[
            ("patchbay_hosts_exposure_unknown", 12.0),
            ("patchbay_cve_data_missing{series=\"6.1\"}", 1.0),
            ("patchbay_cve_data_missing{series=\"6.12\"}", 1.0),
            ("patchbay_cve_data_outdated", 1.0),
        ],
    );
    assert!(
        !metrics.contains("patchbay_cve_data_age_seconds{"),
        "{metrics}"
    );

    // The dashboard: a banner on every page; totals unknown, never 0; no host "within".
    let browser = UiPages::login(&s, "vera", PASSWORD);
    banner_on_every_page(&browser, &old, "no CVE data");
    let fleet = browser.page("/ui");
    assert_eq!(element_text(&fleet, "open-high"), "unknown");
    assert_eq!(element_text(&fleet, "breached"), "unknown");
    assert_eq!(element_text(&fleet, "hosts-unknown"), "12");
    assert!(fleet.contains("id=\"severity-unknown\""), "{fleet}");
    let compliance = browser.page("/ui/compliance");
    assert_eq!(element_text(&compliance, "unknown-hosts"), "12");
    assert!(!compliance.contains(">within<"), "{compliance}");
    let host = browser.page(&format!("/ui/hosts/{old}"));
    assert!(
        host.contains("the exposure of 6.1.170 is unknown"),
        "{host}"
    );

    // `serve` on a data dir without CVE data installs the bundled snapshot and says so.
    s.process.stop();
    let mut serve = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&s.data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(serve.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().contains("listening on") {
            break;
        }
    }
    serve.kill().unwrap();
    let output = serve.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("had no CVE data") && stderr.contains("installed the snapshot bundled"),
        "{stderr}"
    );
    s.restart_with_env(&[]);
    let e = exposure_of(&s, &old);
    assert!(e["live"]["high"].as_u64().unwrap() > 100, "{e}");
    assert_ne!(e["cve_data"]["state"], "missing", "{e}");
}

#[test]
fn outdated_cve_data_is_warned_everywhere_until_the_limit_allows_it() {
    // The default limit (7 days) and data whose newest CVE is from 2024.
    let mut s = start(|t| t.to_owned());
    let hosts = fleet_of_twelve(&s);
    let old = hosts["web-6.1.170-1"].clone();
    let newest = patchbay_e2e::store_cve_data_before(&s.data, "2025-01-01").unwrap();
    assert!(newest.starts_with("2024-"), "{newest}");

    let (code, said) = doctor(&s);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("WARN  the CVE data is")
            && said.contains(&format!("newest CVE published {newest}"))
            && said.contains("cve.max_age_days = 7"),
        "{said}"
    );
    assert!(!said.contains("FAIL"), "{said}");

    let (_, metrics) = get_text(&s, "/metrics", &s.admin);
    expect_metrics(
        &metrics,
        &[
            ("patchbay_cve_data_outdated", 1.0),
            ("patchbay_cve_data_max_age_seconds", 7.0 * 86_400.0),
            ("patchbay_cve_data_missing{series=\"6.1\"}", 0.0),
            ("patchbay_hosts_exposure_unknown", 0.0),
        ],
    );
    let age = metric(&metrics, "patchbay_cve_data_age_seconds{series=\"6.1\"}").unwrap();
    assert!(age > 300.0 * 86_400.0, "{metrics}");

    // The exposure is still computed (with the data's date beside it), and warned about.
    let e = exposure_of(&s, &old);
    assert_eq!(e["cve_data"]["state"], "outdated", "{e}");
    assert_eq!(e["cve_data"]["data_date"], newest.as_str());
    assert!(e["live"]["high"].as_u64().unwrap() > 0);
    let (_, vex) = call(
        &s,
        "GET",
        &format!("/api/v1/hosts/{old}/vex"),
        Some(s.admin.as_str()),
        None,
    );
    let notes = vex["document"]["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n["title"] == "CVE data age" && n["text"].as_str().unwrap().contains(&newest)),
        "{vex}"
    );
    for row in csv_rows(&s) {
        assert_eq!(row["cve_data_date"], newest, "{row:?}");
        assert_ne!(row["window"], "unknown", "{row:?}");
    }
    let browser = UiPages::login(&s, "vera", PASSWORD);
    banner_on_every_page(&browser, &old, "days old");
    for path in ["/ui", "/ui/compliance", &format!("/ui/hosts/{old}")] {
        let page = browser.page(path);
        let line = element_text(&page, "cve-data");
        assert!(
            line.contains(&format!("CVE data of {newest}")),
            "{path}: {line}"
        );
    }

    // A limit the data is within: no warning anywhere, doctor all ok.
    edit_config(&s.data, |t| {
        assert!(t.contains("max_age_days = 7"), "{t}");
        t.replace("max_age_days = 7", "max_age_days = 36500")
    });
    // The root key taken offline too: one beside the data is a WARN of its own.
    std::fs::remove_file(s.data.join("keys/root-1.pk8")).unwrap();
    s.restart_with_env(&[]);
    let (code, said) = doctor(&s);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("ok    CVE data of {newest}")),
        "{said}"
    );
    let (_, metrics) = get_text(&s, "/metrics", &s.admin);
    assert_eq!(metric(&metrics, "patchbay_cve_data_outdated"), Some(0.0));
    let fleet = UiPages::session(&s, "vera", PASSWORD).page("/ui");
    assert!(!fleet.contains("cve-data-banner"), "{fleet}");
}

#[test]
fn a_zero_maximum_age_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    patchbay_e2e::ServerProcess::init(std::path::Path::new(bin()), &data).unwrap();
    edit_config(&data, |t| t.replace("max_age_days = 7", "max_age_days = 0"));
    let out = cli(&["doctor"], &data);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("cve.max_age_days must be at least 1"),
        "{said}"
    );
}

/// `init` says which CVE data it installed, how old it is, and that it is too old to trust
/// once it is past `cve.max_age_days` (the bundled snapshot ages from the day it was made).
#[test]
fn init_says_which_cve_data_it_installed_and_how_old_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let init = Command::new(bin())
        .args(["init", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let stdout = String::from_utf8_lossy(&init.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("cve-data: "))
        .unwrap_or_else(|| panic!("no cve-data line:\n{stdout}"));
    assert!(line.starts_with("CVE data of 20"), "{line}");
    assert!(line.contains("days old"), "{line}");
    assert!(line.contains("bundled"), "{line}");
    // Past the default limit (7 days) the same output warns and says what to run.
    let age: u32 = line
        .split_once(" (")
        .and_then(|(_, rest)| rest.split_once(" days old"))
        .and_then(|(days, _)| days.parse().ok())
        .unwrap_or_else(|| panic!("no age in {line}"));
    let warned = stdout.contains("WARNING: the CVE data is") && stdout.contains("cve sync");
    assert_eq!(warned, age > 7, "{stdout}");
}
