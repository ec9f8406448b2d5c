//! `coverage-load`: the "loaded" half of the diff-coverage benchmark (docs/benchmarks.md).
//! Given bundles that `patchbay-build diff` made for one kernel (say, one per CVE fix), boots
//! that kernel once in QEMU and, for each bundle, loads the modules it patches, applies it with
//! the agent (the transition must finish) and unloads it. Prints one line per bundle.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use patchbay_core::Bundle;
use patchbay_e2e::Guest;
use patchbay_kernels::{fetch_selector, KernelSelector};

fn usage() -> &'static str {
    "usage: patchbay-bench coverage-load --kernel <abi|newest|older> <dir with .pbb bundles>"
}

pub fn run(args: &[String]) -> Result<()> {
    let mut selector: Option<KernelSelector> = None;
    let mut dir: Option<PathBuf> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--kernel" {
            let value = args.next().context(usage())?;
            selector = Some(value.parse().context(usage())?);
        } else {
            dir = Some(PathBuf::from(arg));
        }
    }
    let (Some(selector), Some(dir)) = (selector, dir) else {
        bail!(usage());
    };
    let kernel = fetch_selector(&selector)?;
    let mut bundles: Vec<(String, PathBuf, Vec<String>)> = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pbb") {
            continue;
        }
        let bundle = Bundle::read(&path).with_context(|| format!("read {}", path.display()))?;
        if &bundle.manifest().kernel.build_id != kernel.build_id() {
            continue;
        }
        let name: String = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("bundle")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let modules = bundle.manifest().patched_modules();
        bundles.push((name, path, modules));
    }
    bundles.sort();
    if bundles.is_empty() {
        bail!(
            "no bundle in {} is for {} (build-id {})",
            dir.display(),
            kernel.release(),
            kernel.build_id()
        );
    }
    let work = tempfile::tempdir()?;
    let mut guest = Guest::new()?;
    guest.timeout = Duration::from_secs(120 + 30 * bundles.len() as u64);
    let mut all_modules: Vec<&str> = bundles
        .iter()
        .flat_map(|(_, _, m)| m.iter().map(String::as_str))
        .collect();
    all_modules.sort_unstable();
    all_modules.dedup();
    // A module that is not shipped (or fails to load) leaves its bundle to show it.
    for module in &all_modules {
        if let Err(e) = guest.modules(&kernel, &[module]) {
            eprintln!("module {module}: {e:#}");
        }
    }
    let mut script = String::from(". /lib/pb.sh\n");
    for (name, path, modules) in &bundles {
        guest.file(&format!("/bundles/{name}.pbb"), path)?;
        for module in modules {
            script.push_str(&format!("modprobe {module} 2>/dev/null\n"));
        }
        // Every bundle is some level of its own fix: each gets its own agent state, since a
        // level's content never changes within one.
        script.push_str(&format!(
            "export PATCHBAY_STATE_DIR=/var/lib/patchbay-{name}\n\
             pb_check {name}-apply patchbay apply /bundles/{name}.pbb && \
             pb_check {name}-unload patchbay unload\n"
        ));
    }
    let run = guest.run_script(&kernel, "coverage", &script, work.path())?;
    // Failed checks are results here, not errors: read the passed ones off the console.
    let passed = |check: String| run.serial_log.contains(&format!("PB: check {check} ok"));
    let mut loaded = 0;
    for (name, _, modules) in &bundles {
        let ok = passed(format!("{name}-apply")) && passed(format!("{name}-unload"));
        loaded += usize::from(ok);
        println!(
            "{name}\t{}\t{}",
            if ok { "loaded" } else { "not-loaded" },
            modules.join(",")
        );
    }
    println!("loaded {loaded} of {}", bundles.len());
    if loaded < bundles.len() {
        eprintln!("serial log:\n{}", run.serial_log);
    }
    Ok(())
}
