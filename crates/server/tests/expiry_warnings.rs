//! A root kept offline, 340 days after `init` (server clock moved with libfaketime): the server
//! cannot renew it and says so everywhere an operator looks — `doctor`, `/metrics`, every
//! dashboard page — until an administrator signs a new root with the offline key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

mod common;
use common::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn later() -> [(&'static str, &'static OsStr); 3] {
    [
        ("LD_PRELOAD", OsStr::new(LIBFAKETIME)),
        ("FAKETIME", OsStr::new("+340d")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", OsStr::new("1")),
    ]
}

fn run(args: &[&str], data: &Path, password: Option<&str>) -> std::process::Output {
    let mut command = Command::new(bin());
    command.args(args).arg("--data").arg(data).envs(later());
    if let Some(p) = password {
        command.env("PATCHBAY_PASSWORD", p);
    }
    command.output().unwrap()
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn an_offline_root_near_expiry_is_reported_everywhere_until_it_is_renewed() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's faketime package (scripts/setup does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let offline = dir.path().join("usb");
    let init = Command::new(bin())
        .args(["init", "--data"])
        .arg(&data)
        .arg("--offline-root")
        .arg(&offline)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let admin = String::from_utf8_lossy(&init.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("admin-token:"))
        .unwrap()
        .trim()
        .to_owned();

    // The bundled CVE data ages too; this test is about the root, so allow it any age.
    edit_config(&data, |t| {
        t.replace("max_age_days = 7", "max_age_days = 36500")
    });

    // Today all is well.
    let doctor = Command::new(bin())
        .args(["doctor", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(doctor.status.success(), "{}", text(&doctor));

    // 340 days later: root (365 days) has 25 left and its key is offline.
    let doctor = run(&["doctor"], &data, None);
    let said = text(&doctor);
    assert_eq!(doctor.status.code(), Some(1), "{said}");
    assert!(
        said.contains("WARN  root.json") && said.contains("root resign"),
        "{said}"
    );
    let user = run(
        &["user", "add", "--name", "olga", "--role", "viewer"],
        &data,
        Some("olga-password"),
    );
    assert!(user.status.success(), "{}", text(&user));
    let s = attach(&data, &admin, "", &later());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (metrics, page) = rt.block_on(async {
        let client = s.no_redirect_client();
        let metrics = client
            .get(format!("{}/metrics", s.url))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let login = ui_login(&client, &s.url, "olga", "olga-password").await;
        assert_eq!(login.status(), 303);
        let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
        let session = cookie.split(';').next().unwrap().to_owned();
        let page = client
            .get(format!("{}/ui/hosts", s.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (metrics, page)
    });
    assert!(
        metrics.contains("patchbay_tuf_offline_role_expiring{role=\"root\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("patchbay_tuf_offline_role_expiring{role=\"targets\"} 0"),
        "{metrics}"
    );
    assert!(
        page.contains("class=\"banner\"") && page.contains("root.json"),
        "every dashboard page carries the warning: {page}"
    );

    // Renewed with the offline key: the warning is gone.
    let key = offline.join("root-1.pk8");
    let resign = run(
        &["root", "resign", "--root-key", key.to_str().unwrap()],
        &data,
        None,
    );
    assert!(resign.status.success(), "{}", text(&resign));
    let doctor = run(&["doctor"], &data, None);
    assert!(doctor.status.success(), "{}", text(&doctor));
}
