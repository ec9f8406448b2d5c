//! The HTTP API fuzzed from its own OpenAPI document: schemathesis (installed by
//! `scripts/setup` into a cached venv) generates valid and invalid requests for every
//! operation `/api/v1/openapi.json` lists, as an admin, against a server that has a level,
//! a rollout and a host. No answer may be a 5xx, and the server must still be alive and
//! serving its TUF repository afterwards. Bounded by the number of examples per operation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

mod common;
use common::*;

const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Test cases per operation and phase; with ~20 operations this keeps the run to a minute
/// or two on two cores.
const EXAMPLES: &str = "40";

fn schemathesis() -> PathBuf {
    python_venv(&format!("schemathesis-{SCHEMATHESIS_VERSION}")).join("bin/schemathesis")
}

/// One schemathesis run with `token`; fails the test on any 5xx. Returns its report.
fn fuzz(s: &Server, token: &str, filter: &[&str]) -> String {
    let run = Command::new(schemathesis())
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", s.url))
        .args(["--url", &format!("{}/api/v1", s.url)])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", EXAMPLES])
        .args(["--workers", "2"])
        .args(["--request-timeout", "60"])
        .args(["--suppress-health-check", "all"])
        .args(["--warnings", "off"])
        .args(filter)
        .arg("--report-dir")
        .arg(s._dir.path().join("schemathesis"))
        // Its cache (`.schemathesis/`) goes to the working directory: keep it out of the clone.
        .current_dir(s._dir.path())
        .env("NO_COLOR", "1")
        // The server's self-signed certificate is the one CA (requests / OpenSSL).
        .env("REQUESTS_CA_BUNDLE", s.certificate())
        .env("SSL_CERT_FILE", s.certificate())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "schemathesis found server errors ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        run.status
    );
    stdout
}

#[test]
fn every_operation_of_the_openapi_document_survives_generated_requests() {
    let mut s = start(|t| t.to_owned());
    let admin = Some(s.admin.as_str());
    assert_eq!(
        call(
            &s,
            "POST",
            "/api/v1/bundles",
            admin,
            raw(bundle_bytes(1, RELEASE, true))
        )
        .0,
        201
    );
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/channels/production/promote",
        admin,
        Some(Body::Json(json!({"build_id": BUILD_ID, "level": 1}))),
    );
    assert_eq!(status, 200);
    let (status, host) = register_host(&s, &s.registration_key, "fuzzed");
    assert_eq!(status, 201);

    let host_token = host["host_token"].as_str().unwrap().to_owned();

    // As an admin, every operation; then as the host, check-in (an admin's token stops it at
    // authentication, before its body is read).
    let stdout = fuzz(&s, &s.admin, &[]);
    fuzz(&s, &host_token, &["--include-path", "/checkin"]);
    // Every operation of the document was exercised (none skipped for an unusable schema),
    // but for the document itself, which schemathesis leaves out when it loads it by URL.
    let (_, document) = call(&s, "GET", "/api/v1/openapi.json", None, None);
    let operations: usize = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.as_str() != "/openapi.json")
        .map(|(_, item)| item.as_object().unwrap().len())
        .sum();
    assert!(
        stdout.contains(&format!("{operations} selected"))
            || stdout.contains(&format!("{operations} total")),
        "expected all {operations} operations to run:\n{stdout}"
    );

    assert!(s.process.is_running(), "the server died");
    let (status, _) = call(&s, "GET", "/healthz", None, None);
    assert_eq!(status, 200);
    fresh_client(&s, &["production".parse().unwrap()]).unwrap();
    // And it starts again on what the fuzzing left.
    s.restart_with_env(&[]);
    fresh_client(&s, &["production".parse().unwrap()]).unwrap();
}
