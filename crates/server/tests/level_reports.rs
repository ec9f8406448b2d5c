//! Upgrade reports attached to levels: `POST`/`GET /api/v1/kernels/{build_id}/levels/{level}/
//! report`, the `report` flag of `GET /kernels`, the refusals (nothing stored), and the
//! dashboard's report page (every value escaped).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use patchbay_core::report::{
    CveOutcome, CveStatus, DroppedGroup, ReportModule, UpgradeReport, Verification,
    REPORT_MAX_BYTES,
};
use patchbay_core::Sha256;
use serde_json::{json, Value};

mod common;
use common::*;

const HOSTILE_TITLE: &str = "<script>alert('pwned')</script> & friends";

fn report_path(level: u32) -> String {
    format!("/api/v1/kernels/{BUILD_ID}/levels/{level}/report")
}

fn outcome(cve: &str, status: CveStatus, title: &str, group: u32) -> CveOutcome {
    CveOutcome {
        cve: cve.parse().unwrap(),
        score: Some(7.8),
        title: title.into(),
        status,
        group,
        files: vec!["net/netfilter/nf_tables_api.c".into()],
        functions: Vec::new(),
        category: None,
        reason: None,
        seconds: 2.0,
    }
}

/// The report of level `level` of the harness's kernel, for the module `bundle_bytes` builds.
fn report(level: u32) -> UpgradeReport {
    let name = common::module_of_level(level);
    let module = module(&name, RELEASE, true);
    let mut patched = outcome(
        "CVE-2024-1086",
        CveStatus::Patched,
        "netfilter: nf_tables: reject QUEUE/DROP verdict parameters",
        1,
    );
    patched.functions = vec!["vmlinux:nft_verdict_init".into()];
    let mut partial = outcome("CVE-2025-2001", CveStatus::Partial, "a module init fix", 2);
    partial.functions = vec!["nf_tables:nft_chain_add".into()];
    partial.category = Some("init-code".into());
    partial.reason = Some("nf_tables_module_init is __init: runs again only on reload".into());
    let mut refused = outcome("CVE-2025-3003", CveStatus::NotPatchable, HOSTILE_TITLE, 3);
    refused.category = Some("data-layout-change".into());
    refused.reason = Some("struct sk_buff gains a member in include/linux/skbuff.h".into());
    let mut absent = outcome(
        "CVE-2025-4004",
        CveStatus::NotApplicable,
        "a driver not built",
        4,
    );
    absent.score = None;
    absent.category = Some("not-built-in-config".into());
    absent.reason = Some("drivers/net/foo.o is not built (CONFIG_FOO is not set)".into());
    let mut dropped = outcome(
        "CVE-2025-5005",
        CveStatus::NotPatchable,
        "broke the smoke run",
        5,
    );
    dropped.category = Some("verification-failed".into());
    dropped.reason = Some("the smoke run failed with it".into());
    UpgradeReport {
        kernel: RELEASE.parse().unwrap(),
        build_id: BUILD_ID.parse().unwrap(),
        from_version: "6.1.192".into(),
        to_version: "6.1.196".into(),
        fixes_from: "6.1.196-1".into(),
        level: level.try_into().unwrap(),
        min_cvss: 7.0,
        started: "2026-11-30T06:00:00Z".into(),
        elapsed_seconds: 754.0,
        module: Some(ReportModule {
            name,
            size: module.len() as u64,
            sha256: Sha256::of(&module),
        }),
        verification: Some(Verification {
            passed: true,
            modules_loaded: vec!["nf_tables".into()],
            workloads: vec!["nft-ruleset".into(), "iperf-loopback".into()],
            dropped_groups: vec![DroppedGroup {
                group: 5,
                cves: vec!["CVE-2025-5005".parse().unwrap()],
                category: patchbay_core::DropCategory::VerificationFailed,
                reason: "kernel BUG at net/core/dev.c:3141 while iperf-loopback ran".into(),
            }],
            seconds: 98.0,
            notes: vec!["module nf_tables cannot be reloaded while the patch is live".into()],
            apply_seconds: Some(2.5),
        }),
        cves: vec![patched, partial, refused, absent, dropped],
        notices: vec!["CVE data covers 6.12 releases up to 6.12.104".into()],
    }
}

fn as_json(report: &UpgradeReport) -> Value {
    serde_json::to_value(report).unwrap()
}

fn publish_level_1(s: &Server) {
    let (status, v) = call(
        s,
        "POST",
        "/api/v1/bundles",
        Some(&s.admin),
        raw(bundle_bytes(1, RELEASE, true)),
    );
    assert_eq!(status, 201, "publish: {v}");
}

/// The `report` flag `GET /kernels` gives level `level` of the harness's kernel.
fn listed_report_flag(s: &Server, token: &str, level: u32) -> Value {
    let (status, kernels) = call(s, "GET", "/api/v1/kernels", Some(token), None);
    assert_eq!(status, 200, "{kernels}");
    kernels["kernels"][0]["levels"]
        .as_array()
        .unwrap_or_else(|| panic!("no levels in {kernels}"))
        .iter()
        .find(|l| l["level"] == level)
        .unwrap_or_else(|| panic!("no level {level} in {kernels}"))["report"]
        .clone()
}

#[test]
fn a_report_is_attached_read_back_listed_and_replaced_without_re_signing() {
    let s = start(|t| t.to_owned());
    let operator = token(&s, "operator");
    let viewer = token(&s, "viewer");
    publish_level_1(&s);
    assert_eq!(listed_report_flag(&s, &viewer, 1), json!(false));
    let signed_before = served_targets_version(&s);

    let mut sent = report(1);
    let (status, v) = call(
        &s,
        "POST",
        &report_path(1),
        Some(&operator),
        Some(Body::Json(as_json(&sent))),
    );
    assert_eq!(status, 201, "attach: {v}");
    let (status, got) = call(&s, "GET", &report_path(1), Some(&viewer), None);
    assert_eq!(status, 200, "read back: {got}");
    assert_eq!(
        UpgradeReport::parse(got.to_string().as_bytes()).unwrap(),
        sent,
        "the report read back differs from the one sent: {got}"
    );
    assert_eq!(listed_report_flag(&s, &viewer, 1), json!(true));
    assert_eq!(
        served_targets_version(&s),
        signed_before,
        "a report is not signed content: the targets role must not be signed again"
    );
    let (_, audit) = call(&s, "GET", "/api/v1/audit", Some(&viewer), None);
    let entry = &audit["audit"][0];
    assert!(
        entry["action"] == "report"
            && entry["actor"] == "token:operator"
            && entry["detail"]
                .as_str()
                .is_some_and(|d| d.contains("1 patched, 1 partial, 2 not patchable")),
        "audit entry of the attach: {entry}"
    );

    // A second report of the same level replaces the first.
    sent.to_version = "6.1.197".into();
    let (status, v) = call(
        &s,
        "POST",
        &report_path(1),
        Some(&s.admin),
        Some(Body::Json(as_json(&sent))),
    );
    assert_eq!(status, 201, "replace: {v}");
    let (_, got) = call(&s, "GET", &report_path(1), Some(&viewer), None);
    assert_eq!(got["to_version"], "6.1.197", "not replaced: {got}");
    let (_, audit) = call(&s, "GET", "/api/v1/audit", Some(&viewer), None);
    assert!(
        audit["audit"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("replaced an earlier one")),
        "{}",
        audit["audit"][0]
    );

    // Hosts carry the kernel release and build-id a watcher matches against the kernels.
    let (status, _) = register_host(&s, &s.registration_key, "web-1");
    assert_eq!(status, 201);
    let (_, hosts) = call(&s, "GET", "/api/v1/hosts", Some(&viewer), None);
    let host = &hosts["hosts"][0];
    assert!(
        host["kernel_release"] == RELEASE && host["build_id"] == BUILD_ID,
        "a host entry without its kernel: {hosts}"
    );
}

#[test]
fn refused_reports_change_nothing_and_say_why() {
    let s = start(|t| t.to_owned());
    let operator = token(&s, "operator");
    let viewer = token(&s, "viewer");
    publish_level_1(&s);
    let audit_before = call(&s, "GET", "/api/v1/audit", Some(&s.admin), None).1["audit"].clone();
    let post = |path: &str, tok: &str, body: Body| call(&s, "POST", path, Some(tok), Some(body));

    // No report yet.
    let (status, v) = call(&s, "GET", &report_path(1), Some(&viewer), None);
    assert!(
        status == 404 && error_of(&v).contains("has no upgrade report"),
        "{status} {v}"
    );

    // The body's level differs from the path's.
    let (status, v) = post(&report_path(1), &operator, Body::Json(as_json(&report(2))));
    assert!(
        status == 422 && error_of(&v).contains("level 2") && error_of(&v).contains(&report_path(2)),
        "mismatched level: {status} {v}"
    );
    // The body's build-id differs from the path's.
    let mut other = as_json(&report(1));
    other["build_id"] = json!("89abcdef0123456789abcdef0123456789abcdef");
    let (status, v) = post(&report_path(1), &operator, Body::Json(other));
    assert!(
        status == 422 && error_of(&v).contains("89abcdef0123456789abcdef0123456789abcdef"),
        "mismatched build-id: {status} {v}"
    );
    // A level that is not published.
    let (status, v) = post(&report_path(2), &operator, Body::Json(as_json(&report(2))));
    assert!(
        status == 404 && error_of(&v).contains("no published level 2"),
        "unknown level: {status} {v}"
    );
    // The report of another build of the module.
    let mut stale = report(1);
    if let Some(m) = stale.module.as_mut() {
        m.sha256 = Sha256::of(b"another module");
    }
    let (status, v) = post(&report_path(1), &operator, Body::Json(as_json(&stale)));
    assert!(
        status == 422 && error_of(&v).contains("another build"),
        "other module: {status} {v}"
    );
    // An unknown field.
    let mut surprise = as_json(&report(1));
    surprise["surprise"] = json!(1);
    let (status, v) = post(&report_path(1), &operator, Body::Json(surprise));
    assert!(
        status == 400 && error_of(&v).contains("surprise"),
        "unknown field: {status} {v}"
    );
    // Too large.
    let (status, v) = post(
        &report_path(1),
        &operator,
        Body::Raw(vec![b' '; REPORT_MAX_BYTES + 1], "application/json"),
    );
    assert!(
        status == 413 && error_of(&v).contains(&REPORT_MAX_BYTES.to_string()),
        "too large: {status} {v}"
    );
    // A viewer may read reports, not attach them.
    let (status, v) = post(&report_path(1), &viewer, Body::Json(as_json(&report(1))));
    assert!(
        status == 403 && error_of(&v).contains("operator"),
        "viewer: {status} {v}"
    );
    // Not a level number.
    let (status, v) = post(
        &format!("/api/v1/kernels/{BUILD_ID}/levels/one/report"),
        &operator,
        Body::Json(as_json(&report(1))),
    );
    assert_eq!(status, 400, "level in the path: {v}");

    let (status, v) = call(&s, "GET", &report_path(1), Some(&viewer), None);
    assert_eq!(status, 404, "a refused report was stored: {v}");
    assert_eq!(listed_report_flag(&s, &viewer, 1), json!(false));
    let (_, audit) = call(&s, "GET", "/api/v1/audit", Some(&s.admin), None);
    assert_eq!(
        audit["audit"], audit_before,
        "refusals must not be audited as changes"
    );
}

#[test]
fn the_dashboard_shows_a_levels_report_escaped() {
    let s = start(|t| t.to_owned());
    publish_level_1(&s);
    let (status, v) = call(
        &s,
        "POST",
        &report_path(1),
        Some(&s.admin),
        Some(Body::Json(as_json(&report(1)))),
    );
    assert_eq!(status, 201, "{v}");
    add_user(&s, "vera", "viewer", "viewer-password");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (levels, page) = rt.block_on(async {
        let client = s.no_redirect_client();
        let session = ui_session(&client, &s.url, "vera", "viewer-password").await;
        let get = |path: String| {
            let (client, session, base) = (&client, &session, &s.url);
            async move {
                let r = client
                    .get(format!("{base}{path}"))
                    .header("cookie", session)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let text = r.text().await.unwrap();
                assert_eq!(status, 200, "{path}: {text}");
                text
            }
        };
        (
            get("/ui/kernels".into()).await,
            get(format!("/ui/kernels/{BUILD_ID}/levels/1/report")).await,
        )
    });
    let link = format!("href=\"/ui/kernels/{BUILD_ID}/levels/1/report\"");
    assert!(
        levels.contains(&link),
        "no report link on the levels page:\n{levels}"
    );
    for expected in [
        "CVE-2024-1086",
        "netfilter: nf_tables: reject QUEUE/DROP verdict parameters",
        "vmlinux:nft_verdict_init",
        "data-layout-change",
        "struct sk_buff gains a member in include/linux/skbuff.h",
        "init-code",
        "drivers/net/foo.o is not built (CONFIG_FOO is not set)",
        "kernel BUG at net/core/dev.c:3141 while iperf-loopback ran",
        "module nf_tables cannot be reloaded while the patch is live",
        "CVE-2025-5005",
        "passed",
        "nf_tables",
        "nft-ruleset, iperf-loopback",
        "6.1.192 → 6.1.196",
        "12 min 34 s",
        "Note: CVE data covers 6.12 releases up to 6.12.104",
        "&lt;script&gt;alert(",
        "&lt;/script&gt; &amp; friends",
    ] {
        assert!(
            page.contains(expected),
            "the report page does not show {expected:?}:\n{page}"
        );
    }
    assert!(
        !page.contains("<script>"),
        "a title reached the page unescaped:\n{page}"
    );
    for (id, n) in [
        ("count-patched", 1),
        ("count-partial", 1),
        ("count-not-patchable", 2),
        ("count-not-applicable", 1),
    ] {
        let card = format!("id=\"{id}\"><b>{n}</b>");
        assert!(page.contains(&card), "expected {card:?} in:\n{page}");
    }
}
