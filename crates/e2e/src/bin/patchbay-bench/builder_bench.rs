//! Diff-mode build time for a one-function fix (`fixtures/diffs/cmdline-string.patch`) on the
//! newest kernel, beside the raw cost of the compiles it cannot avoid: the same object compiled
//! twice (original and patched) in the same source tree.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchbay_build::diff::objects::compile_object;
use patchbay_build::diff::pipeline::{build, DiffBuild};
use patchbay_e2e::fixture;
use patchbay_kernels::{fetch_selector, KernelSelector};

const ROUNDS: usize = 3;
const WARM_RATIO_GOAL: f64 = 1.3;

pub fn run(args: &[String]) -> Result<()> {
    let cold = match args {
        [] => false,
        [flag] if flag == "--cold" => true,
        _ => bail!("usage: patchbay-bench builder [--cold]"),
    };
    let diff = fixture("diffs/cmdline-string.patch");
    let work = tempfile::tempdir()?;
    if cold {
        // A fresh cache: every download, the unpacked source and `make modules_prepare`.
        let cache = work.path().join("cold-cache");
        std::env::set_var("PATCHBAY_CACHE", &cache);
        let start = Instant::now();
        let kernel = fetch_selector(&KernelSelector::newest())?;
        let out = work.path().join("cold.pbb");
        build(&kernel, &request(&diff, &out)?).context("cold build")?;
        println!(
            "cold build (empty cache: kernel packages, -dbg symbols, source, modules_prepare): {:.1} s",
            start.elapsed().as_secs_f64()
        );
        std::env::remove_var("PATCHBAY_CACHE");
    }
    let kernel = fetch_selector(&KernelSelector::newest())?;
    let tree = kernel.source_tree()?;
    // Warm-up: caches, page cache, the symbol map.
    build(&kernel, &request(&diff, &work.path().join("warmup.pbb"))?)?;

    let mut builds = Vec::new();
    let mut raws = Vec::new();
    let mut size = 0;
    for round in 0..ROUNDS {
        let out = work.path().join(format!("warm{round}.pbb"));
        let start = Instant::now();
        let report = build(&kernel, &request(&diff, &out)?)?;
        builds.push(start.elapsed());
        size = report.module.manifest.module.size;

        let lock = tree.lock()?;
        let start = Instant::now();
        for name in ["a", "b"] {
            compile_object(
                &tree,
                "fs/proc/cmdline.c",
                &work.path().join(format!("raw/{round}{name}.o")),
            )?;
        }
        raws.push(start.elapsed());
        drop(lock);
    }
    let (build_median, raw_median) = (median(&builds), median(&raws));
    let ratio = build_median.as_secs_f64() / raw_median.as_secs_f64();
    println!(
        "kernel {} ({}), fix: one function in fs/proc/cmdline.c, {ROUNDS} rounds",
        kernel.release(),
        kernel.upstream_version()
    );
    println!(
        "warm diff build (preflight, 2 compiles, diff, extract, kbuild, klp rewrite, bundle)  median {:.2} s",
        build_median.as_secs_f64()
    );
    println!(
        "raw: the same object compiled twice                                               median {:.2} s",
        raw_median.as_secs_f64()
    );
    println!(
        "ratio (build / raw compiles)  {ratio:.2}x  (goal <= {WARM_RATIO_GOAL}x: {})",
        if ratio <= WARM_RATIO_GOAL {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("module size for 1 patched function: {size} bytes");
    Ok(())
}

fn request(diff: &std::path::Path, out: &std::path::Path) -> Result<DiffBuild> {
    Ok(DiffBuild {
        level: patchbay_core::PatchLevel::try_from(1)?,
        fixes: Vec::new(),
        patches: vec![diff.to_path_buf()],
        output: out.to_path_buf(),
        keep_work_dir: None,
        strip_level: None,
        header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
    })
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}
