//! Benchmarks; docs/benchmarks.md records runs.
//!
//! `agent` (default): in one QEMU run of the newest Debian 6.1 kernel, the agent's `apply` of a
//! bundle against a bare `finit_module` + transition poll of the same module (rounds alternate
//! which goes first), then the static binary's size and the agent's peak memory.
//! `builder`: diff-mode build time of a one-function fix against compiling that object twice;
//! `--cold` adds a build from an empty cache (downloads, source tree, `make modules_prepare`).
//! `server`: check-ins per second against the patch server on loopback (SQLite), beside nginx
//! serving a static file of the same size in the same run, both driven by wrk.
//! `fleet`: dashboard pages, compliance export and `/metrics` with 10,000 hosts against 1 host.
//! `coverage-load`: boots one kernel and loads and unloads each diff-built bundle of a directory
//! (the "loaded" half of the diff-coverage benchmark).

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use patchbay_core::Bundle;
use patchbay_e2e::{agent_binary, bundle, fixture, Guest};
use patchbay_kernels::{fetch_selector, KernelSelector};

const DEFAULT_ROUNDS: usize = 10;
/// The goal from the foundation issue: apply costs at most 5 % over the bare kernel path.
const APPLY_RATIO_GOAL: f64 = 1.05;

mod builder_bench;
mod coverage_bench;
mod fleet_bench;
mod server_bench;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let which = match args.first().map(String::as_str) {
        Some("server") => {
            args.remove(0);
            "server"
        }
        Some("builder") => {
            args.remove(0);
            "builder"
        }
        Some("fleet") => {
            args.remove(0);
            "fleet"
        }
        Some("agent") => {
            args.remove(0);
            "agent"
        }
        Some("coverage-load") => {
            args.remove(0);
            "coverage-load"
        }
        _ => "agent",
    };
    let result = if which == "server" {
        server_bench::run(&args)
    } else if which == "fleet" {
        fleet_bench::run(&args)
    } else if which == "builder" {
        builder_bench::run(&args)
    } else if which == "coverage-load" {
        coverage_bench::run(&args)
    } else {
        run(args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> &'static str {
    "usage: patchbay-bench [agent] [--rounds N] [newest|older|<abi>] | patchbay-bench builder [--cold] | patchbay-bench server [--seconds N] | patchbay-bench fleet [--hosts N] | patchbay-bench coverage-load --kernel <abi> <dir>"
}

fn run(args: Vec<String>) -> Result<()> {
    let mut rounds = DEFAULT_ROUNDS;
    let mut selector = KernelSelector::newest();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            let value = args.next().context(usage())?;
            rounds = value
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("--rounds {value:?}: expected a positive number"))?;
        } else {
            selector = arg.parse().with_context(usage)?;
        }
    }

    let kernel = fetch_selector(&selector)?;
    let work = tempfile::tempdir()?;
    let level1 = work.path().join("level1.pbb");
    bundle(&kernel, 1, &["cmdline_level1.c"], &[], &[], &level1)?;
    let raw = work.path().join("raw.ko");
    std::fs::write(&raw, Bundle::read(&level1)?.module())?;

    let agent = agent_binary()?;
    let binary_size = std::fs::metadata(&agent)
        .with_context(|| format!("stat {}", agent.display()))?
        .len();

    let mut guest = Guest::new()?;
    guest.file("/bundles/level1.pbb", &level1)?;
    guest.file("/lib/raw.ko", &raw)?;
    let scenario = std::fs::read_to_string(fixture("scenarios/bench.sh"))?;
    let script = format!("ROUNDS={rounds}\n{scenario}");
    let vm = guest.run_script(&kernel, "bench", &script, work.path())?;
    patchbay_vm::check_report(&vm)?;

    let agent_us = numbers(&vm, "agent-apply-us", rounds)?;
    let raw_us = numbers(&vm, "raw-load-us", rounds)?;
    let apply_rss = numbers(&vm, "agent-apply-rss-kb", rounds)?;
    let status_rss = numbers(&vm, "agent-status-rss-kb", rounds)?;
    let (agent_med, raw_med) = (median(&agent_us), median(&raw_us));
    let ratio = agent_med / raw_med;

    println!(
        "kernel {} (upstream {}), {} rounds, QEMU TCG, 1 vCPU",
        kernel.release(),
        kernel.upstream_version(),
        rounds
    );
    println!(
        "module {} bytes",
        std::fs::metadata(&raw).map(|m| m.len()).unwrap_or(0)
    );
    println!(
        "agent apply (verify, cache, load, transition, record)  median {:>8.1} ms  (min {:.1}, max {:.1})",
        agent_med / 1000.0,
        min(&agent_us) / 1000.0,
        max(&agent_us) / 1000.0
    );
    println!(
        "bare finit_module + transition poll                   median {:>8.1} ms  (min {:.1}, max {:.1})",
        raw_med / 1000.0,
        min(&raw_us) / 1000.0,
        max(&raw_us) / 1000.0
    );
    println!(
        "apply ratio (agent / bare)                            {ratio:.3}x  (goal <= {APPLY_RATIO_GOAL:.2}x: {})",
        if ratio <= APPLY_RATIO_GOAL { "met" } else { "NOT met" }
    );
    println!(
        "agent overhead over bare (median)                     {:>8.1} ms",
        (agent_med - raw_med) / 1000.0
    );
    if let Some(phases) = vm.values("agent-phases").last() {
        println!("last agent apply phases: {phases}");
    }
    println!(
        "agent static binary                                   {:.2} MiB ({binary_size} bytes)",
        binary_size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "agent peak RSS: status {:.0} KiB, apply {:.0} KiB (median); no resident process between runs",
        median(&status_rss),
        median(&apply_rss)
    );
    if let Some(boot) = vm.boot_to_init {
        println!("guest boot to init {:.2} s", boot.as_secs_f64());
    }
    Ok(())
}

/// The `rounds` numeric values the guest reported under `key`.
fn numbers(vm: &patchbay_vm::VmRun, key: &str, rounds: usize) -> Result<Vec<f64>> {
    let values: Vec<f64> = vm
        .values(key)
        .iter()
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .with_context(|| format!("guest reported {key} = {v:?}, not a number"))
        })
        .collect::<Result<_>>()?;
    if values.len() != rounds {
        bail!(
            "guest reported {} values of {key}, expected {rounds}; serial log:\n{}",
            values.len(),
            vm.serial_log
        );
    }
    Ok(values)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match (
        sorted.get(mid),
        mid.checked_sub(1).and_then(|i| sorted.get(i)),
    ) {
        (Some(hi), Some(lo)) if sorted.len().is_multiple_of(2) => (hi + lo) / 2.0,
        (Some(m), _) => *m,
        _ => f64::NAN,
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
