//! `patchbay-build`: builds livepatch bundles for Debian kernels.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use patchbay_build::module_build::{self, SourceBuild};
use patchbay_core::{Bundle, CveId, PatchLevel};
use patchbay_kernels::{Kernel, KernelSelector};

#[derive(Parser)]
#[command(
    name = "patchbay-build",
    version,
    about = "Build Patchbay livepatch bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a bundle from C replacement functions marked with PATCHBAY_REPLACE.
    Module {
        /// Target kernel: an ABI (6.1.0-56-amd64), `newest`, `older`, or the path of an unpacked
        /// kernel directory made by `patchbay-build kernel fetch`.
        #[arg(long)]
        kernel: String,
        /// Cumulative patch level (1, 2, …).
        #[arg(long)]
        level: PatchLevel,
        /// CVEs this level fixes (repeat or separate with commas).
        #[arg(long, value_delimiter = ',')]
        fixes: Vec<CveId>,
        /// Where to write the bundle.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// A .ko of a module outside the distro kernel whose functions or symbols the patch uses.
        #[arg(long = "object-file")]
        object_files: Vec<PathBuf>,
        /// Symbol table to use instead of the distro's System.map (e.g. /proc/kallsyms of a host).
        #[arg(long)]
        symbols: Option<PathBuf>,
        /// Keep the generated kbuild directory here.
        #[arg(long)]
        keep_work_dir: Option<PathBuf>,
        /// Print the manifest as JSON instead of a summary.
        #[arg(long)]
        json: bool,
        /// C sources with replacement functions.
        #[arg(required = true)]
        sources: Vec<PathBuf>,
    },
    /// Build a bundle from unified diffs of the kernel source (compiles only the changed files
    /// and diffs the objects).
    Diff {
        /// Target kernel: an ABI, `newest`, `older`, or a kernel directory or headers tree.
        #[arg(long)]
        kernel: String,
        #[arg(long)]
        level: PatchLevel,
        #[arg(long, value_delimiter = ',')]
        fixes: Vec<CveId>,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Keep the objects and generated module sources here.
        #[arg(long)]
        keep_work_dir: Option<PathBuf>,
        /// Print the result as JSON: `{"result": "built", …}` or `{"result": "refused",
        /// "refusals": [{category, file, function, reason}]}` (`"failed"` for other errors).
        #[arg(long)]
        json: bool,
        /// Strip N leading path components from the diff's file names, as `patch -pN`
        /// (default: the one level at which the paths name files of the kernel tree).
        #[arg(short = 'p', long = "strip")]
        strip: Option<usize>,
        /// The fix as unified diffs against the kernel's source tree (git, quilt or
        /// `diff -Nupr` format).
        #[arg(required = true)]
        patches: Vec<PathBuf>,
    },
    /// Upload a bundle to a Patchbay server as the next level of its kernel.
    Publish {
        bundle: PathBuf,
        /// The server's base URL, e.g. http://patches.example:8470
        #[arg(long, env = "PATCHBAY_SERVER")]
        server: String,
        /// An admin API token (`patchbay-server token create`).
        #[arg(long, env = "PATCHBAY_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Debian kernels: list what apt offers, fetch one into the cache.
    Kernel {
        #[command(subcommand)]
        command: KernelCommand,
    },
    /// Show a bundle's manifest (and verify its module hash).
    Inspect { bundle: PathBuf },
}

#[derive(Subcommand)]
enum KernelCommand {
    /// List the Debian 6.1 kernels apt offers.
    List,
    /// Fetch and unpack a kernel (`newest`, `older` or an ABI); prints its directory.
    Fetch { selector: KernelSelector },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("patchbay-build: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn open_kernel(spec: &str) -> Result<Kernel> {
    let path = std::path::Path::new(spec);
    if spec.contains('/') || path.is_dir() {
        if path.join("kernel.json").is_file() {
            return Kernel::open(path).with_context(|| format!("open kernel directory {spec}"));
        }
        if path.join("Module.symvers").is_file() {
            return Kernel::from_headers_tree(path)
                .with_context(|| format!("use headers tree {spec}"));
        }
        bail!(
            "{spec} is neither an unpacked linux-headers tree (no Module.symvers) nor a Patchbay \
             kernel directory (no kernel.json); pass one of those, or an ABI such as 6.1.0-56-amd64"
        );
    }
    let selector: KernelSelector = spec
        .parse()
        .with_context(|| format!("--kernel {spec}: expected an ABI, newest, older or a path"))?;
    patchbay_kernels::fetch_selector(&selector).with_context(|| format!("fetch kernel {spec}"))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Module {
            kernel,
            level,
            fixes,
            output,
            object_files,
            symbols,
            keep_work_dir,
            json,
            sources,
        } => {
            let kernel = open_kernel(&kernel)?;
            let request = SourceBuild {
                level,
                fixes,
                sources,
                extra_objects: object_files,
                linked_objects: Vec::new(),
                symbol_hints: Default::default(),
                symbols_override: symbols,
                old_function_aliases: Default::default(),
                module_locals: Default::default(),
                output: output.clone(),
                keep_work_dir,
            };
            let report = module_build::build(&kernel, &request)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.manifest)?);
                return Ok(());
            }
            let m = &report.manifest;
            println!(
                "built {} for {} (build-id {}), level {}",
                output.display(),
                m.kernel.release,
                m.kernel.build_id,
                m.level
            );
            println!(
                "  module {} ({} bytes, sha256 {})",
                m.module.name, m.module.size, m.module.sha256
            );
            for f in &m.replaced_functions {
                println!(
                    "  replaces {}:{} with {}",
                    f.object, f.function, f.replacement
                );
            }
            for rela in &report.klp_relocations {
                println!(
                    "  livepatch relocations {}: {} ({})",
                    rela.name,
                    rela.relocations,
                    rela.symbols.join(", ")
                );
            }
            if !m.fixes.is_empty() {
                let fixes: Vec<&str> = m.fixes.iter().map(CveId::as_str).collect();
                println!("  fixes {}", fixes.join(", "));
            }
            Ok(())
        }
        Command::Kernel { command } => match command {
            KernelCommand::List => {
                for k in patchbay_kernels::available_kernels()? {
                    println!("{}\t{}\t{}", k.abi, k.package_version, k.upstream_version);
                }
                Ok(())
            }
            KernelCommand::Fetch { selector } => {
                let kernel = patchbay_kernels::fetch_selector(&selector)?;
                println!("{}", kernel.dir().display());
                Ok(())
            }
        },
        Command::Diff {
            kernel,
            level,
            fixes,
            output,
            keep_work_dir,
            json,
            strip,
            patches,
        } => {
            let kernel = open_kernel(&kernel)?;
            let request = patchbay_build::diff::pipeline::DiffBuild {
                level,
                fixes,
                patches,
                output: output.clone(),
                keep_work_dir,
                strip_level: strip,
            };
            let report = match patchbay_build::diff::pipeline::build(&kernel, &request) {
                Ok(report) => report,
                Err(err) if json => {
                    let refusals = err.refusals();
                    let result = if refusals.is_empty() {
                        "failed"
                    } else {
                        "refused"
                    };
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "result": result,
                            "category": err.category(),
                            "refusals": refusals,
                            "error": err.to_string(),
                        }))?
                    );
                    return Err(err.into());
                }
                Err(err) => return Err(err.into()),
            };
            if json {
                let files: Vec<serde_json::Value> = report
                    .files
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "source": f.source,
                            "object": match &f.owner {
                                patchbay_build::diff::objects::Owner::Vmlinux => "vmlinux".to_owned(),
                                patchbay_build::diff::objects::Owner::Module(m) => m.clone(),
                            },
                            "changed_functions": f.diff.changed_functions,
                            "new_functions": f.diff.new_functions,
                            "new_data": f.diff.new_data,
                            "removed_functions": f.diff.removed_functions,
                            "init_not_applied": f.diff.changed_init,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "result": "built",
                        "files": files,
                        "manifest": report.module.manifest,
                    }))?
                );
                return Ok(());
            }
            for f in &report.files {
                let object = match &f.owner {
                    patchbay_build::diff::objects::Owner::Vmlinux => "vmlinux".to_owned(),
                    patchbay_build::diff::objects::Owner::Module(m) => format!("module {m}"),
                };
                println!("{} (in {object}):", f.source);
                for (what, names) in [
                    ("changed function", &f.diff.changed_functions),
                    ("new function", &f.diff.new_functions),
                    ("new data", &f.diff.new_data),
                ] {
                    for name in names {
                        println!("  {what} {name}");
                    }
                }
                for name in &f.diff.changed_init {
                    println!(
                        "  not applied: {name} (__init/__exit code: already ran, or never runs)"
                    );
                }
            }
            let m = &report.module.manifest;
            println!(
                "built {} for {} (build-id {}), level {}: module {} ({} bytes)",
                output.display(),
                m.kernel.release,
                m.kernel.build_id,
                m.level,
                m.module.name,
                m.module.size
            );
            Ok(())
        }
        Command::Publish {
            bundle,
            server,
            token,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?;
            let receipt = runtime
                .block_on(patchbay_build::publish::publish(&server, &token, &bundle))
                .with_context(|| format!("publish {}", bundle.display()))?;
            println!(
                "published level {} for build-id {} as {}",
                receipt.level, receipt.build_id, receipt.target
            );
            Ok(())
        }
        Command::Inspect { bundle } => {
            let b = Bundle::read(&bundle)?;
            println!("{}", serde_json::to_string_pretty(&b.manifest)?);
            Ok(())
        }
    }
}
