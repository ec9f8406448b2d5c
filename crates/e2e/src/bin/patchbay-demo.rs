//! The demo: builds two patch levels for the newest Debian 6.1 kernel, boots it in QEMU and lets
//! the agent apply, replace, roll back and unload them while the guest shows /proc/cmdline.

use std::process::ExitCode;

use anyhow::{Context, Result};
use patchbay_e2e::{bundle, Guest};
use patchbay_kernels::{fetch_selector, KernelSelector};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let selector: KernelSelector = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "newest".into())
        .parse()
        .context("usage: patchbay-demo [newest|older|<abi>]")?;
    eprintln!("==> fetching the Debian kernel ({selector:?}) into the cache");
    let kernel = fetch_selector(&selector)?;
    eprintln!(
        "==> kernel {} (upstream {}, build-id {})",
        kernel.abi(),
        kernel.upstream_version(),
        kernel.build_id()
    );
    let work = tempfile::tempdir()?;
    let level1 = work.path().join("level1.pbb");
    let level2 = work.path().join("level2.pbb");
    eprintln!("==> building level 1 (cmdline_proc_show) and level 2 (+ version_proc_show)");
    // The CVE ids only label the demo levels; the patches do not fix them.
    for (level, sources, fixes, out) in [
        (
            1,
            &["cmdline_level1.c"][..],
            &["CVE-2024-1086"][..],
            &level1,
        ),
        (
            2,
            &["cmdline_level2.c", "version_level2.c"][..],
            &["CVE-2024-1086", "CVE-2023-0179"][..],
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
    let mut guest = Guest::new()?;
    guest.file("/bundles/level1.pbb", &level1)?;
    guest.file("/bundles/level2.pbb", &level2)?;
    eprintln!("==> booting {} in QEMU (TCG) with the agent", kernel.abi());
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
