//! `patchbay-build upgrade` end to end on a small real window: the oldest Debian kernel apt
//! offers brought up to the next newer `linux-source-6.1`, a handful of its real CVEs cut from
//! the two source trees, plus one operator patch that makes the kernel warn under the smoke
//! workload. The bundle is built, verified in QEMU (the breaking group is found, dropped and
//! named; the bundle is rebuilt and passes), published with its report; then an agent in QEMU
//! picks the level up and `patchbay status` lists the patched CVEs as fixed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

use patchbay_build::upgrade::select::{self, Selection};
use patchbay_core::UpstreamVersion;
use patchbay_core::{CveId, CveStatus, UpgradeReport};
use patchbay_e2e::{agent_binary, assert_checks, builder_binary, Guest, ServerProcess};
use patchbay_kernels::Kernel;
use patchbay_vm::Network;

const GUEST_PORT: u16 = 8080;

/// The oldest kernel of Debian 12's 6.1 that has a newer source, and the next newer upstream
/// version: the smallest real window (resolved from apt now, never hard-coded).
fn smallest_window() -> (Kernel, UpstreamVersion) {
    smallest_window_of(patchbay_kernels::KernelLine::default())
}

/// The oldest kernel of `line` the archive offers that has a newer source of the line, and
/// the next newer upstream version.
fn smallest_window_of(line: patchbay_kernels::KernelLine) -> (Kernel, UpstreamVersion) {
    let kernels: Vec<_> = patchbay_kernels::available_kernels()
        .unwrap()
        .into_iter()
        .filter(|k| line.contains(&k.release))
        .collect();
    let sources: Vec<UpstreamVersion> = patchbay_kernels::source_versions(&line)
        .unwrap()
        .iter()
        .filter_map(|s| patchbay_kernels::upstream_version_of(s).ok())
        .collect();
    for k in &kernels {
        let from = k.upstream_version;
        if let Some(next) = sources.iter().filter(|s| **s > from).min() {
            return (patchbay_kernels::fetch(k).unwrap(), *next);
        }
    }
    panic!(
        "the archive offers no kernel of {line} older than a {}: {kernels:?} / {sources:?}",
        line.source_package()
    );
}

/// The window's CVEs whose fix is one `.c` file in a core subsystem (not `fs/sync.c`, which
/// the breaking patch uses), by id.
fn simple_cves(from: UpstreamVersion, to: UpstreamVersion) -> Vec<CveId> {
    let db = patchbay_exposure::snapshot::embedded().unwrap();
    let window = select::select(
        &db,
        &Selection {
            from,
            to,
            min_cvss: 7.0,
            only: &[],
        },
    )
    .unwrap();
    window
        .iter()
        .filter(|c| {
            c.files.len() == 1
                && c.files[0].ends_with(".c")
                && ["fs/", "net/", "kernel/", "mm/"]
                    .iter()
                    .any(|p| c.files[0].starts_with(p))
                && c.files[0] != "fs/sync.c"
        })
        .map(|c| c.id.clone())
        .collect()
}

/// `patchbay-build upgrade` of `kernel` to `to` for `cves`, verified with the real agent
/// (5 s of smoke workload), published to `server`; the report and the bundle go to
/// `work/report.json` and `work/level.pbb`.
fn upgrade_command(
    kernel: &Kernel,
    to: UpstreamVersion,
    cves: &[&CveId],
    server: &ServerProcess,
    work: &Path,
) -> Command {
    let ids: Vec<&str> = cves.iter().map(|c| c.as_str()).collect();
    let mut command = Command::new(builder_binary().unwrap());
    command
        .arg("upgrade")
        .arg("--kernel")
        .arg(kernel.dir())
        .args(["--to", &to.to_string(), "--cves", &ids.join(",")])
        .arg("--agent")
        .arg(agent_binary().unwrap())
        .args(["--stress-seconds", "5", "--publish"])
        .args(server.builder_args())
        .arg("--report")
        .arg(work.join("report.json"))
        .arg("-o")
        .arg(work.join("level.pbb"));
    command
}

/// An operator's patch for `fs/sync.c` that warns on every `sync` (the smoke run syncs).
fn warning_patch(kernel: &Kernel, out: &Path) {
    let tree = kernel.source_tree().unwrap();
    let original = std::fs::read_to_string(tree.dir().join("fs/sync.c")).unwrap();
    let anchor = "void ksys_sync(void)\n{\n";
    assert!(original.contains(anchor), "fs/sync.c has ksys_sync");
    let patched = original.replacen(anchor, &format!("{anchor}\tWARN_ON_ONCE(1);\n"), 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, original).unwrap();
    std::fs::write(&b, patched).unwrap();
    let diff = Command::new("diff")
        .args(["-u", "--label", "a/fs/sync.c", "--label", "b/fs/sync.c"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(diff.status.code(), Some(1), "the patch differs");
    std::fs::write(out, diff.stdout).unwrap();
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn upgrade_builds_verifies_drops_a_breaking_group_and_publishes() {
    let (kernel, to) = smallest_window();
    let from: UpstreamVersion = kernel.upstream_version();
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);

    // A handful of the window's real CVEs: one .c file each, in core subsystems; one more id
    // stands for the operator's breaking patch.
    let simple = simple_cves(from, to);
    assert!(
        simple.len() >= 4,
        "window {from} → {to} too small: {simple:?}"
    );
    let real: Vec<CveId> = simple[..3].to_vec();
    let breaking = simple[3].clone();
    let patches = path("patches");
    std::fs::create_dir(&patches).unwrap();
    warning_patch(&kernel, &patches.join(format!("{breaking}.patch")));

    let mut server = ServerProcess::start(&path("server")).unwrap();
    // The server's CVE database, so its exposure report can show what the level closes.
    server.sync_cve_snapshot().unwrap();
    let cves: Vec<&CveId> = real.iter().chain([&breaking]).collect();
    let out = upgrade_command(&kernel, to, &cves, &server, work.path())
        .arg("--patches")
        .arg(&patches)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "upgrade failed:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let report = UpgradeReport::parse(&std::fs::read(path("report.json")).unwrap()).unwrap();
    let context = format!("report:\n{stdout}\n--- progress:\n{stderr}");

    // The breaking group was found in QEMU, dropped and named.
    let verification = report.verification.as_ref().expect("verified");
    assert!(verification.passed, "{context}");
    assert!(
        verification
            .dropped_groups
            .iter()
            .any(|d| d.cves.contains(&breaking) && d.reason.contains("WARNING")),
        "the warning patch's group is dropped with the kernel's warning: {context}"
    );
    let broken = report.cves.iter().find(|c| c.cve == breaking).unwrap();
    assert_eq!(broken.status, CveStatus::NotPatchable, "{context}");
    assert_eq!(
        broken.category.as_deref(),
        Some("verification-failed"),
        "{context}"
    );

    // The real CVEs each have an outcome with a reason; at least one is patched.
    let patched: Vec<CveId> = report
        .with_status(CveStatus::Patched)
        .map(|c| c.cve.clone())
        .collect();
    assert!(!patched.is_empty(), "no real CVE was patched: {context}");
    for c in &report.cves {
        assert!(
            c.status == CveStatus::Patched || c.category.is_some() && c.reason.is_some(),
            "{} has no category/reason: {context}",
            c.cve
        );
        if c.status == CveStatus::Patched {
            assert!(!c.functions.is_empty(), "{}: {context}", c.cve);
        }
    }
    let bundle = patchbay_core::Bundle::read(&path("level.pbb")).unwrap();
    let mut fixes = bundle.manifest().fixes.clone();
    fixes.sort();
    assert_eq!(
        fixes, patched,
        "the manifest lists exactly the patched CVEs"
    );
    assert!(stdout.contains("published level 1"), "{context}");

    // The report is attached to the published level.
    let attached = server.level_report(kernel.build_id().as_str(), 1).unwrap();
    assert_eq!(
        attached["cves"].as_array().map(Vec::len),
        Some(report.cves.len()),
        "{attached}"
    );

    agent_applies_level_1(&server, &kernel, &patched, work.path());
    server.stop();
}

/// An agent on `kernel` (in QEMU, over the network) picks level 1 up from the production
/// channel; `patchbay status` lists the `patched` CVEs, and the server's exposure report counts
/// them closed for the host.
fn agent_applies_level_1(server: &ServerProcess, kernel: &Kernel, patched: &[CveId], work: &Path) {
    // An agent on that kernel picks the level up; `patchbay status` lists the fixes.
    server
        .admin(
            "POST",
            "channels/production/promote",
            Some(serde_json::json!({"build_id": kernel.build_id(), "level": 1})),
        )
        .unwrap();
    let expect_fixed: Vec<String> = patched
        .iter()
        .map(|c| {
            format!(
                "pb_expect_contains fixed-{0} /tmp/status \"{0}\"",
                c.as_str()
            )
        })
        .collect();
    let script = format!(
        ". /lib/pb.sh\nexport PATCHBAY_STATE_DIR=/var/lib/patchbay\nmkdir -p $PATCHBAY_STATE_DIR\n\
         pb_check net-up pb_net_up\n\
         pb_check register patchbay register --server https://{}:{GUEST_PORT} --key {}\n\
         pb_check update patchbay update\n\
         patchbay status >/tmp/status 2>&1; cat /tmp/status\n\
         pb_expect_contains level-1 /tmp/status \"1 (module pb_\"\n{}\n",
        patchbay_vm::GUEST_SERVER_IP,
        server.registration_key,
        expect_fixed.join("\n")
    );
    let mut guest = Guest::new().unwrap();
    guest
        .modules(kernel, &["virtio_pci", "virtio_net"])
        .unwrap();
    guest.network = Network::ForwardToHost {
        guest_port: GUEST_PORT,
        host_port: server.port,
    };
    let run = guest
        .run_script(kernel, "upgrade-agent", &script, work)
        .unwrap();
    let mut expected = vec!["net-up", "register", "update", "level-1"];
    let names: Vec<String> = patched
        .iter()
        .map(|c| format!("fixed-{}", c.as_str()))
        .collect();
    expected.extend(names.iter().map(String::as_str));
    assert_checks(&run, &expected);

    // The exposure report counts those CVEs closed for the host on that level.
    let hosts = server.admin("GET", "hosts", None).unwrap();
    let id = hosts["hosts"][0]["id"].as_str().unwrap().to_owned();
    let exposure = server
        .admin("GET", &format!("hosts/{id}/exposure"), None)
        .unwrap();
    let open: Vec<&str> = exposure["live"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("the host has a live exposure: {exposure}"))
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    for cve in patched {
        assert!(
            !open.contains(&cve.as_str()),
            "{cve} is still open for the host: {exposure}"
        );
        assert!(
            exposure["fixes"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == cve.as_str())),
            "{cve} among the host's fixes: {exposure}"
        );
    }
    assert!(
        exposure["live"]["fixed_by_patch"].as_u64() >= Some(patched.len() as u64),
        "{exposure}"
    );
}

/// Registers a host the way the agent does, so the server knows a kernel its hosts run.
fn register_host(server: &ServerProcess, kernel: &Kernel) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = runtime.block_on(async {
        server
            .client()
            .post(format!("{}/api/v1/register", server.url))
            .json(&serde_json::json!({
                "key": server.registration_key,
                "hostname": "web-1",
                "kernel_release": kernel.release().to_string(),
                "kernel_version": kernel.upstream_version(),
                "build_id": kernel.build_id(),
                "agent_version": "e2e",
            }))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(reply.status().as_u16(), 201, "register: {reply:?}");
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn watcher_publishes_a_verified_level_when_apt_has_a_newer_source() {
    let (kernel, to) = smallest_window();
    let from: UpstreamVersion = kernel.upstream_version();
    // A few real CVEs of the smallest window (the same the upgrade test builds); the watcher
    // brings them from the newest source, whose window contains them. Its job is the loop
    // around `upgrade`: new source → level published, promoted, reported, remembered.
    let cves: Vec<String> = simple_cves(from, to)
        .iter()
        .take(3)
        .map(|c| c.as_str().to_owned())
        .collect();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&work.path().join("server")).unwrap();
    register_host(&server, &kernel);
    server
        .admin(
            "POST",
            "channels",
            Some(serde_json::json!({"name": "testing"})),
        )
        .unwrap();
    let builder = builder_binary().unwrap();
    let watch = || {
        Command::new(&builder)
            .args([
                "watch",
                "--once",
                "--channel",
                "testing",
                "--cves",
                &cves.join(","),
            ])
            .arg("--state-dir")
            .arg(work.path().join("watch"))
            .arg("--agent")
            .arg(agent_binary().unwrap())
            .args(["--stress-seconds", "3"])
            .args(server.builder_args())
            .output()
            .unwrap()
    };
    let first = watch();
    let out = String::from_utf8_lossy(&first.stdout).into_owned();
    let err = String::from_utf8_lossy(&first.stderr).into_owned();
    let context = format!("--- stdout\n{out}\n--- stderr\n{err}");
    assert!(first.status.success(), "watch failed: {context}");
    assert!(
        out.contains(&format!(
            "{} level 1 published from linux-source-6.1",
            kernel.release()
        )),
        "{context}"
    );
    let channel = server.admin("GET", "channels/testing", None).unwrap();
    assert!(
        channel.to_string().contains(kernel.build_id().as_str()),
        "level promoted into testing: {channel} / {context}"
    );
    let report = server.level_report(kernel.build_id().as_str(), 1).unwrap();
    assert_eq!(
        report["cves"].as_array().map(Vec::len),
        Some(cves.len()),
        "{report}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("watch/watch.json")).unwrap())
            .unwrap();
    let built = &state["built"][kernel.build_id().as_str()];
    assert!(
        built["seen_to_published_seconds"]
            .as_i64()
            .is_some_and(|s| s >= 0),
        "time from source seen to published is recorded: {state}"
    );

    // Nothing new in apt: the next round publishes nothing.
    let second = watch();
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success() && out.contains("up to date"),
        "{out}"
    );
    let kernels = server.admin("GET", "kernels", None).unwrap();
    assert_eq!(
        kernels["kernels"][0]["levels"].as_array().map(Vec::len),
        Some(1),
        "{kernels}"
    );
}

/// The case: a host on Debian 12's oldest 6.12 (from bookworm-backports) brought to the
/// next source of its line (6.12.107 from bookworm-security) with a few real CVEs, verified in
/// QEMU on that 6.12 kernel, published, picked up by an agent. The bundled CVE data ends before
/// that source, and the report says so.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn upgrade_of_debian12_6_12_is_verified_published_and_applied() {
    let line = patchbay_kernels::KernelLine::choose(
        Some("6.12".parse().unwrap()),
        Some(patchbay_core::Distribution::DEBIAN_12),
        None,
    )
    .unwrap();
    let (kernel, to) = smallest_window_of(line);
    let from = kernel.upstream_version();
    let cves: Vec<CveId> = simple_cves(from, to).into_iter().take(4).collect();
    assert!(cves.len() >= 2, "window {from} → {to} too small: {cves:?}");
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);
    let mut server = ServerProcess::start(&path("server")).unwrap();
    server.sync_cve_snapshot().unwrap();
    let ids: Vec<&CveId> = cves.iter().collect();
    let out = upgrade_command(&kernel, to, &ids, &server, work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "upgrade failed: {context}");
    let report = UpgradeReport::parse(&std::fs::read(path("report.json")).unwrap()).unwrap();
    assert!(
        report.fixes_from.starts_with("linux-source-6.12 "),
        "{context}"
    );
    assert!(
        report
            .notices
            .iter()
            .any(|n| n.contains("CVE data covers 6.12")),
        "the report says the data ends before the source: {context}"
    );
    assert!(
        report.verification.as_ref().is_some_and(|v| v.passed),
        "{context}"
    );
    let patched: Vec<CveId> = report
        .with_status(CveStatus::Patched)
        .map(|c| c.cve.clone())
        .collect();
    assert!(!patched.is_empty(), "no CVE was patched: {context}");
    assert!(stdout.contains("published level 1"), "{context}");
    agent_applies_level_1(&server, &kernel, &patched, work.path());
    server.stop();
}
