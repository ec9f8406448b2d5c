//! The demo: starts a patch server (SQLite) on loopback, builds two patch levels for the newest
//! Debian 6.1 kernel and publishes them, boots that kernel in QEMU whose agent registers over the
//! network (QEMU user networking, restrict=on, a guestfwd to the server) and applies the level
//! the production channel serves, then promotes level 2 and shows the agent move to it.
//! `--local` runs the earlier offline demo (apply, replace, roll back, unload local bundles).

use std::process::ExitCode;

use anyhow::{Context, Result};
use patchbay_e2e::{bundle, fixture, Guest, ServerProcess};
use patchbay_exposure::Exposure;
use patchbay_kernels::{fetch_selector, KernelLine, KernelSelector};
use patchbay_vm::Network;

type HostExposure = patchbay_core::protocol::HostExposure<Exposure>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--kernel X` (or a bare `X`) within the line `--series`/`--distribution`/`--flavour` name.
fn parse_selector(args: &[String]) -> Result<KernelSelector> {
    let value = |flag: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let flags_with_values = ["--kernel", "--series", "--distribution", "--flavour"];
    let bare = args.iter().enumerate().find_map(|(i, a)| {
        let after_flag = i > 0
            && args
                .get(i - 1)
                .is_some_and(|prev| flags_with_values.contains(&prev.as_str()));
        (!a.starts_with("--") && !after_flag).then_some(a.as_str())
    });
    let line = KernelLine::choose(
        value("--series").map(str::parse).transpose()?,
        value("--distribution").map(str::parse).transpose()?,
        value("--flavour").map(str::parse).transpose()?,
    )?;
    let spec = value("--kernel").or(bare).unwrap_or("newest");
    Ok(KernelSelector::parse_in(spec, line)?)
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let selector = parse_selector(&args).context(
        "usage: patchbay-demo [--local] [--kernel newest|older|<release>] [--series 6.1|6.12] \
         [--distribution 12|13] [--flavour amd64|cloud-amd64]",
    )?;
    let local = args.iter().any(|a| a == "--local");
    eprintln!("==> fetching the Debian kernel ({selector}) into the cache");
    let kernel = fetch_selector(&selector)?;
    eprintln!(
        "==> kernel {} (upstream {}, build-id {})",
        kernel.release(),
        kernel.upstream_version(),
        kernel.build_id()
    );
    let work = tempfile::tempdir()?;
    let level1 = work.path().join("level1.pbb");
    let level2 = work.path().join("level2.pbb");
    eprintln!("==> building level 1 (cmdline_proc_show) and level 2 (+ version_proc_show)");
    // The CVE ids only label the demo levels: two real high-scored CVEs that affect the kernel's
    // release in the bundled data (of its own series), so the exposure report shows them closed;
    // the patches do not fix them.
    let labels = demo_cve_labels(kernel.upstream_version())?;
    let level1_fixes: Vec<&str> = labels.iter().take(1).map(String::as_str).collect();
    let level2_fixes: Vec<&str> = labels.iter().map(String::as_str).collect();
    for (level, sources, fixes, out) in [
        (1, &["cmdline_level1.c"][..], &level1_fixes[..], &level1),
        (
            2,
            &["cmdline_level2.c", "version_level2.c"][..],
            &level2_fixes[..],
            &level2,
        ),
    ] {
        let report = bundle(&kernel, level, sources, fixes, &[], out)?;
        let m = &report.manifest;
        eprintln!(
            "    level {}: module {} ({} bytes), {} function(s), {} livepatch relocation section(s)",
            m.level,
            m.module.name,
            m.module.size,
            m.replaced_functions.len(),
            report.klp_relocations.len()
        );
    }
    if !local {
        return network_demo(&kernel, work.path(), &level1, &level2);
    }
    let mut guest = Guest::new()?;
    guest.file("/bundles/level1.pbb", &level1)?;
    guest.file("/bundles/level2.pbb", &level2)?;
    eprintln!(
        "==> booting {} in QEMU (TCG) with the agent",
        kernel.release()
    );
    let run = guest.run(&kernel, "demo.sh", work.path())?;
    println!("{}", run.serial_log);
    let passed = patchbay_vm::check_report(&run)?;
    eprintln!(
        "==> demo finished in {:.1} s: {} checks passed",
        run.wall.as_secs_f64(),
        passed.len()
    );
    Ok(())
}

/// The two lowest-numbered CVEs with CVSS >= 7 that affect `release` in the bundled data.
fn demo_cve_labels(release: patchbay_core::UpstreamVersion) -> Result<Vec<String>> {
    let db = patchbay_exposure::snapshot::embedded()?;
    let mut ids: Vec<String> = db
        .records
        .values()
        .filter(|r| r.affects(&release) && r.score.value().is_some_and(|s| s >= 7.0))
        .map(|r| r.id.clone())
        .collect();
    ids.sort();
    ids.truncate(2);
    anyhow::ensure!(
        ids.len() == 2,
        "the bundled CVE data has no two high CVEs affecting {release}"
    );
    Ok(ids)
}

fn network_demo(
    kernel: &patchbay_kernels::Kernel,
    work: &std::path::Path,
    level1: &std::path::Path,
    level2: &std::path::Path,
) -> Result<()> {
    const GUEST_PORT: u16 = 8080;
    eprintln!("==> patchbay-server init + serve (SQLite, TUF keys) on 127.0.0.1");
    let mut server = ServerProcess::start(&work.join("server"))?;
    let sync = std::process::Command::new(patchbay_e2e::server_binary()?)
        .args(["cve", "sync", "--snapshot"])
        .arg(fixture("../crates/exposure/data"))
        .arg("--data")
        .arg(&server.data_dir)
        .output()?;
    anyhow::ensure!(sync.status.success(), "cve sync failed: {sync:?}");
    eprintln!("==> {}", String::from_utf8_lossy(&sync.stdout).trim());
    server.restart()?;
    eprintln!("    listening on {}", server.url);
    for bundle in [level1, level2] {
        let receipt = server.publish(bundle)?;
        eprintln!(
            "==> patchbay-build publish: level {} of {} signed as {}",
            receipt.level, receipt.build_id, receipt.target
        );
    }
    let build_id = kernel.build_id().to_string();
    server.admin(
        "POST",
        "channels/production/promote",
        Some(serde_json::json!({"build_id": build_id, "level": 1})),
    )?;
    eprintln!("==> production channel: level 1");
    let mut guest = Guest::new()?;
    guest.modules(kernel, &["virtio_pci", "virtio_net"])?;
    guest.network = Network::ForwardToHost {
        guest_port: GUEST_PORT,
        host_port: server.port,
    };
    let scenario = std::fs::read_to_string(fixture("scenarios/demo-network.sh"))?;
    let script = format!(
        "SERVER=https://{}:{GUEST_PORT}\nREGISTRATION_KEY={}\n{scenario}",
        patchbay_vm::GUEST_SERVER_IP,
        server.registration_key
    );
    eprintln!(
        "==> booting {} in QEMU (TCG); its only network is a guestfwd to the server",
        kernel.release()
    );
    let mut host_error = None;
    let mut before: Option<HostExposure> = None;
    let run = guest.run_script_with(kernel, "demo-network", &script, work, &mut |line: &str| {
        if line.trim().starts_with("PB: check demo-register ok") {
            // The host's exposure before any live patch.
            before = first_host(&server).and_then(|id| host_exposure(&server, &id).ok());
        }
        if line.trim() == "PB: step promote-level2" {
            eprintln!("==> operator: promote level 2 into production");
            if let Err(e) = server.admin(
                "POST",
                "channels/production/promote",
                Some(serde_json::json!({"build_id": build_id, "level": 2})),
            ) {
                host_error = Some(e);
            }
        }
    })?;
    println!("{}", run.serial_log);
    if let Some(e) = host_error {
        return Err(e.context("promote level 2"));
    }
    let passed = patchbay_vm::check_report(&run)?;
    let hosts = server.admin("GET", "hosts", None)?;
    eprintln!("==> the server's view of the fleet (GET /api/v1/hosts):");
    for host in hosts
        .get("hosts")
        .and_then(|h| h.as_array())
        .into_iter()
        .flatten()
    {
        eprintln!(
            "    {} {} level {} state {} (last check-in {})",
            field(host, "hostname"),
            field(host, "kernel_release"),
            field(host, "active_level"),
            field(host, "state"),
            field(host, "last_checkin")
        );
    }
    if let Some(id) = first_host(&server) {
        let after = Some(host_exposure(&server, &id)?);
        let count = |e: &Option<HostExposure>, what: fn(&Exposure) -> usize| {
            e.as_ref()
                .and_then(|e| e.live.as_ref())
                .map_or("?".to_owned(), |live| what(live).to_string())
        };
        eprintln!("==> the host's exposure (CVEs affecting its release, real kernel CNA data):");
        eprintln!(
            "    before the live patch: {} CVEs, {} with CVSS >= 7, {} of them open > 30 days",
            count(&before, |l| l.cves),
            count(&before, |l| l.high),
            count(&before, |l| l.high_overdue)
        );
        eprintln!(
            "    with level 2 live:     {} CVEs, {} with CVSS >= 7, {} of them open > 30 days (effective release {})",
            count(&after, |l| l.cves),
            count(&after, |l| l.high),
            count(&after, |l| l.high_overdue),
            after
                .as_ref()
                .and_then(|e| e.effective_version)
                .map_or("?".to_owned(), |v| v.to_string())
        );
        eprintln!(
            "    (the demo levels are labelled with CVE ids; the demo patches do not fix them)"
        );
    }
    let report = server.admin("GET", "reports/compliance", None)?;
    eprintln!("==> compliance report (GET /api/v1/reports/compliance):");
    for row in report
        .get("hosts")
        .and_then(|h| h.as_array())
        .into_iter()
        .flatten()
    {
        eprintln!(
            "    {} kernel {} level {} open {} high {} overdue {} window {}",
            field(row, "hostname"),
            field(row, "upstream_version"),
            field(row, "active_level"),
            field(row, "live_cves"),
            field(row, "live_high"),
            field(row, "live_high_overdue"),
            if row.get("window_breached") == Some(&serde_json::Value::Bool(true)) {
                "BREACHED"
            } else {
                "ok"
            }
        );
    }
    eprintln!(
        "==> demo finished in {:.1} s: {} checks passed",
        run.wall.as_secs_f64(),
        passed.len()
    );
    eprintln!(
        "==> dashboard: {}/ui  (user admin, password {})",
        server.url, server.dashboard_password
    );
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!("    open it in a browser; press Enter to stop the server");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    Ok(())
}

/// `GET /api/v1/hosts/{id}/exposure`.
fn host_exposure(server: &ServerProcess, id: &str) -> Result<HostExposure> {
    let reply = server.admin("GET", &format!("hosts/{id}/exposure"), None)?;
    serde_json::from_value(reply).context("the host exposure reply")
}

fn first_host(server: &ServerProcess) -> Option<String> {
    let hosts = server.admin("GET", "hosts", None).ok()?;
    hosts
        .get("hosts")?
        .as_array()?
        .first()?
        .get("id")?
        .as_str()
        .map(str::to_owned)
}

fn field(value: &serde_json::Value, key: &str) -> String {
    match value.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "?".into(),
    }
}
