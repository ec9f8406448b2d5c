//! Exposure of a mixed fleet: 6.1 and 6.12 hosts (each evaluated in its own series), a 6.12
//! host newer than the CVE data (reported with the data's notice), and a host of a series
//! without data (unknown, never "no exposure") — through the CLI, the API, the compliance CSV,
//! VEX, `/metrics` and the dashboard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

mod common;
use common::*;

const NOTICE: &str =
    "CVE data covers 6.12 releases up to 6.12.104; fixes released after it are not known";

fn sync_snapshot(s: &Server) -> String {
    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../exposure/data");
    let out = std::process::Command::new(bin())
        .args(["cve", "sync", "--snapshot"])
        .arg(&snapshot)
        .arg("--data")
        .arg(&s.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn register(s: &Server, hostname: &str, kernel_release: &str, version: &str) -> String {
    let (status, reg) = call(
        s,
        "POST",
        "/api/v1/register",
        None,
        Some(Body::Json(json!({
            "key": s.registration_key, "hostname": hostname, "kernel_release": kernel_release,
            "kernel_version": version, "build_id": BUILD_ID, "agent_version": "0.1.0"}))),
    );
    assert_eq!(status, 201, "{reg}");
    reg["host_id"].as_str().unwrap().to_owned()
}

#[test]
fn the_cli_answers_for_6_12_and_marks_what_the_data_cannot_know() {
    let s = start(|t| t.to_owned());
    let synced = sync_snapshot(&s);
    assert!(
        synced.contains("6.1.y:") && synced.contains("6.12.y:") && synced.contains("6.12.104"),
        "{synced}"
    );
    let json_of = |version: &str| -> Value {
        let out = cli(
            &["cve", "exposure", version, "--json", "--at", "2026-08-21"],
            &s.data,
        );
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let covered = json_of("6.12.95");
    assert_eq!(covered["series"], "6.12");
    assert_eq!(covered["data_state"], "complete");
    assert_eq!(covered["notice"], Value::Null);
    assert!(covered["high"].as_u64().unwrap() > 500, "{covered}");
    let newer = json_of("6.12.117");
    assert_eq!(newer["data_state"], "stale");
    assert_eq!(newer["data_through"], "6.12.104");
    assert_eq!(newer["notice"], NOTICE);
    let out = cli(
        &["cve", "exposure", "6.12.117", "--at", "2026-08-21"],
        &s.data,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(NOTICE), "{text}");
    // 6.1 as before.
    let old = json_of("6.1.50");
    assert_eq!(old["series"], "6.1");
    assert!(old["cves"].as_u64().unwrap() > 1000);
    // A series without data is an error that says so, not an empty exposure.
    let out = cli(&["cve", "exposure", "5.10.200"], &s.data);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no CVE data for the 5.10 series") && err.contains("6.1, 6.12"),
        "{err}"
    );
}

#[test]
fn a_mixed_fleet_is_reported_per_series() {
    let s0 = start(|t| t.to_owned());
    sync_snapshot(&s0);
    // A fresh server process reads the synced database at once.
    let s = attach(&s0.data, &s0.admin, &s0.registration_key, &[]);
    let admin = Some(s.admin.as_str());
    let db61 = register(&s, "db-61", "6.1.0-10-amd64", "6.1.50");
    let web = register(&s, "web-612", "6.12.95+deb13-amd64", "6.12.95");
    let new = register(&s, "new-612", "6.12.117+deb13-amd64", "6.12.117");
    let old = register(&s, "old-510", "5.10.0-30-amd64", "5.10.200");

    // The 6.12 host: its exposure is its series' (every open CVE fixed in 6.12.y or not at all),
    // the same count as the CLI's for its release.
    let (status, e) = call(
        &s,
        "GET",
        &format!("/api/v1/hosts/{web}/exposure"),
        admin,
        None,
    );
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["upstream_version"], "6.12.95");
    assert_eq!(e["base"]["data"]["series"], "6.12");
    assert_eq!(e["base"]["data"]["state"], "complete");
    let list = e["live"]["list"].as_array().unwrap();
    assert!(list.len() > 1000, "{}", list.len());
    assert!(list
        .iter()
        .all(|c| c["fixed_in"].is_null() || c["fixed_in"].as_str().unwrap().starts_with("6.12.")));
    let out = cli(&["cve", "exposure", "6.12.95", "--json"], &s.data);
    let cli_summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["base"]["cves"], cli_summary["cves"]);
    // The 6.1 host's CVEs are 6.1's.
    let (_, e61) = call(
        &s,
        "GET",
        &format!("/api/v1/hosts/{db61}/exposure"),
        admin,
        None,
    );
    assert_eq!(e61["base"]["data"]["series"], "6.1");
    assert!(e61["base"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["fixed_in"].is_null() || c["fixed_in"].as_str().unwrap().starts_with("6.1.")));
    // Newer than the data: the notice travels with the exposure.
    let (_, en) = call(
        &s,
        "GET",
        &format!("/api/v1/hosts/{new}/exposure"),
        admin,
        None,
    );
    assert_eq!(en["live"]["data"]["state"], "stale");
    assert_eq!(en["live"]["data"]["notice"], NOTICE);
    // No data for 5.10: no exposure figures at all.
    let (_, eo) = call(
        &s,
        "GET",
        &format!("/api/v1/hosts/{old}/exposure"),
        admin,
        None,
    );
    assert_eq!(eo["upstream_version"], "5.10.200");
    assert!(eo["base"].is_null() && eo["live"].is_null(), "{eo}");
    let (status, err) = call(&s, "GET", "/api/v1/cve/exposure/5.10.1", admin, None);
    assert_eq!(status, 422, "{err}");
    assert!(error_of(&err).contains("5.10"), "{err}");
    let (status, one) = call(&s, "GET", "/api/v1/cve/exposure/6.12.95", admin, None);
    assert_eq!(status, 200);
    assert_eq!(one["data"]["series"], "6.12");

    // Compliance: one row per host with its series and what the data knows of it.
    let (status, csv) = get_text(&s, "/api/v1/reports/compliance?format=csv", &s.admin);
    assert_eq!(status, 200);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert!(
        header.ends_with(&[
            "series",
            "cve_data",
            "data_through",
            "window",
            "cve_data_date",
            "cve_synced_at"
        ]),
        "{header:?}"
    );
    assert_eq!(header[..2], ["host_id", "hostname"]);
    let rows: BTreeMap<String, BTreeMap<&str, String>> = lines
        .map(|l| {
            let cells: BTreeMap<&str, String> = header
                .iter()
                .copied()
                .zip(l.split(',').map(str::to_owned))
                .collect();
            (cells["hostname"].clone(), cells)
        })
        .collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert_eq!(rows["db-61"]["series"], "6.1");
    assert_eq!(rows["web-612"]["series"], "6.12");
    assert_eq!(rows["web-612"]["cve_data"], "complete");
    assert_eq!(
        rows["web-612"]["live_cves"],
        cli_summary["cves"].to_string()
    );
    assert_eq!(rows["new-612"]["cve_data"], "stale");
    assert_eq!(rows["new-612"]["data_through"], "6.12.104");
    assert_eq!(rows["old-510"]["series"], "5.10");
    assert_eq!(rows["old-510"]["cve_data"], "no_data");
    assert_eq!(rows["old-510"]["live_cves"], "", "unknown, not 0");
    assert_eq!(rows["old-510"]["window_breached"], "", "unknown, not false");
    assert_eq!(rows["old-510"]["window"], "unknown");
    let (_, only) = get_text(
        &s,
        "/api/v1/reports/compliance?format=csv&series=6.12",
        &s.admin,
    );
    assert_eq!(only.lines().count(), 3, "{only}");
    assert!(only.contains("web-612") && only.contains("new-612") && !only.contains("db-61"));
    let (status, report) = call(
        &s,
        "GET",
        "/api/v1/reports/compliance?series=6.1",
        admin,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(report["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(report["hosts"][0]["series"], "6.1");
    assert_eq!(
        call(
            &s,
            "GET",
            "/api/v1/reports/compliance?series=6.12.1",
            admin,
            None
        )
        .0,
        400
    );

    // VEX: the notice is a note of the document; remediations name the host's series.
    let (_, vex) = call(&s, "GET", &format!("/api/v1/hosts/{new}/vex"), admin, None);
    assert_eq!(vex["document"]["notes"][0]["text"], NOTICE);
    assert!(vex["vulnerabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["remediations"][0]["details"] == "Upstream: no 6.12.y fix up to 6.12.104"));
    let (_, vex61) = call(&s, "GET", &format!("/api/v1/hosts/{db61}/vex"), admin, None);
    // 6.1.50 is covered: no coverage note (a note on the data's age may be there).
    assert!(
        vex61["document"]["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|n| n["title"] != "CVE data coverage"),
        "{vex61}"
    );

    // /metrics: hosts by series and data state.
    let (_, metrics) = get_text(&s, "/metrics", &s.admin);
    for line in [
        "patchbay_hosts_by_series{series=\"6.1\",cve_data=\"complete\"} 1",
        "patchbay_hosts_by_series{series=\"6.12\",cve_data=\"complete\"} 1",
        "patchbay_hosts_by_series{series=\"6.12\",cve_data=\"stale\"} 1",
        "patchbay_hosts_by_series{series=\"5.10\",cve_data=\"no_data\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The dashboard: compliance by series, the host page's notice, the fleet's notices.
    let pages = UiPages::login(&s, "vera", "correct horse battery staple");
    let page = |path: &str| pages.page(path);
    let all = page("/ui/compliance");
    assert!(all.contains("id=\"series\""), "{all}");
    assert!(all.contains("/ui/compliance?series=6.12"), "{all}");
    assert!(all.contains("no CVE data"), "{all}");
    let only = page("/ui/compliance?series=6.12");
    assert!(only.contains("web-612") && only.contains("new-612"));
    assert!(
        !only.contains(">db-61<") && !only.contains(">old-510<"),
        "{only}"
    );
    let host = page(&format!("/ui/hosts/{new}"));
    assert!(host.contains(NOTICE), "{host}");
    assert!(host.contains("no 6.12.y fix up to 6.12.104"));
    assert!(!host.contains("no 6.1.y fix"));
    let old_host = page(&format!("/ui/hosts/{old}"));
    assert!(
        old_host.contains("no CVE data for the 5.10 series"),
        "{old_host}"
    );
    let fleet = page("/ui");
    assert!(fleet.contains("Hosts by kernel series"), "{fleet}");
    assert!(fleet.contains(NOTICE), "{fleet}");
}
