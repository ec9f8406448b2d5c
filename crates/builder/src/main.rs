//! `patchbay-build`: builds livepatch bundles for Debian kernels.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use patchbay_build::module_build::{self, ModuleBuild, SourceBuild};
use patchbay_core::{Bundle, CveId, PatchLevel};
use patchbay_core::{Distribution, KernelSeries};
use patchbay_kernels::{Flavour, Kernel, KernelLine, KernelSelector};

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
        /// Target kernel: a release (6.1.0-56-amd64, 6.12.117+deb13-amd64), `newest`, `older`
        /// (of the line --series/--distribution/--flavour name), or the path of an unpacked
        /// kernel directory made by `patchbay-build kernel fetch`.
        #[arg(long)]
        kernel: String,
        #[command(flatten)]
        line: LineArgs,
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
        /// Target kernel: a release, `newest`, `older`, or a kernel directory or headers tree.
        #[arg(long)]
        kernel: String,
        #[command(flatten)]
        line: LineArgs,
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
        /// Most other translation units recompiled to prove a changed header alters nothing
        /// else (per header); a header included more widely is refused.
        #[arg(long, default_value_t = patchbay_build::diff::headers::RECOMPILE_LIMIT)]
        header_recompile_limit: usize,
        /// The fix as unified diffs against the kernel's source tree (git, quilt or
        /// `diff -Nupr` format).
        #[arg(required = true)]
        patches: Vec<PathBuf>,
    },
    /// Bring a kernel up to a newer Debian kernel's security level: the fixes of every CVE in
    /// the window, cut from the newer source (or given with --patches), built into one
    /// cumulative bundle, verified in QEMU, optionally published with its report.
    Upgrade {
        /// The running kernel: a release (6.1.0-47-amd64, 6.12.95+deb12-amd64), `newest`,
        /// `older`, or a kernel directory.
        #[arg(long)]
        kernel: String,
        #[command(flatten)]
        line: LineArgs,
        /// The newer source of the kernel's line (linux-source-6.1, linux-source-6.12, …): an
        /// upstream version (6.1.176), a package version (6.1.176-1) or `newest`.
        #[arg(long)]
        to: String,
        /// Leave out CVEs scored below this (CVSS base score).
        #[arg(long, default_value_t = 7.0)]
        min_cvss: f64,
        /// Only these CVEs (each must be in the window).
        #[arg(long, value_delimiter = ',')]
        cves: Vec<CveId>,
        /// The level to build (default: 1, or the server's newest level + 1 with --publish).
        #[arg(long)]
        level: Option<PatchLevel>,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Also write the report as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// One patch per CVE named by its id (CVE-2024-1234.patch) instead of the source diff.
        #[arg(long)]
        patches: Option<PathBuf>,
        /// The CVE database: a vulns.git checkout, the snapshot directory, or a server's
        /// exported JSON (default: the snapshot built into this binary).
        #[arg(long)]
        cve_db: Option<PathBuf>,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Keep per-group patches and bundles here.
        #[arg(long)]
        keep_work_dir: Option<PathBuf>,
        /// Most other translation units recompiled to prove a changed header alters nothing
        /// else (per header); a header included more widely is refused.
        #[arg(long, default_value_t = patchbay_build::diff::headers::RECOMPILE_LIMIT)]
        header_recompile_limit: usize,
        /// Publish the bundle as the next level and attach the report.
        #[arg(long, requires_all = ["server", "token"])]
        publish: bool,
        #[arg(long, env = "PATCHBAY_SERVER")]
        server: Option<String>,
        #[arg(long, env = "PATCHBAY_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Watch Debian's archive for new sources of each kernel line the server's hosts run
    /// (linux-source-6.1, linux-source-6.12); for each such kernel,
    /// build, verify and publish the upgrade to the newest source as the next level and
    /// promote it into a channel (docs/upgrade.md).
    Watch {
        #[arg(long, env = "PATCHBAY_SERVER")]
        server: String,
        #[arg(long, env = "PATCHBAY_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        #[command(flatten)]
        trust: TrustArgs,
        /// The channel new levels are promoted into (e.g. testing); it must exist.
        #[arg(long)]
        channel: String,
        /// Time between rounds: 30m, 6h, 1d.
        #[arg(long, default_value = "6h")]
        interval: String,
        /// One round, then exit.
        #[arg(long)]
        once: bool,
        /// Refresh Patchbay's package lists of Debian's archive before each round (they are
        /// otherwise refreshed when a day old).
        #[arg(long)]
        apt_update: bool,
        #[arg(long, default_value_t = 7.0)]
        min_cvss: f64,
        /// Only these CVEs (each round).
        #[arg(long, value_delimiter = ',')]
        cves: Vec<CveId>,
        /// Where the watcher keeps its state, bundles and reports
        /// (default: ~/.local/state/patchbay-watch).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        cve_db: Option<PathBuf>,
        #[command(flatten)]
        verify: VerifyArgs,
    },
    /// Upload a bundle to a Patchbay server as the next level of its kernel.
    Publish {
        bundle: PathBuf,
        /// The server's base URL, e.g. https://patches.example:8470
        #[arg(long, env = "PATCHBAY_SERVER")]
        server: String,
        /// An admin API token (`patchbay-server token create`).
        #[arg(long, env = "PATCHBAY_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Debian kernels: list what apt offers, fetch one into the cache.
    Kernel {
        #[command(subcommand)]
        command: KernelCommand,
    },
    /// Show a bundle's manifest (and verify its module hash).
    Inspect { bundle: PathBuf },
}

/// How `upgrade` and `watch` try a bundle in QEMU before offering it.
#[derive(clap::Args)]
struct VerifyArgs {
    /// Do not try the bundle in QEMU before writing it.
    #[arg(long)]
    no_verify: bool,
    /// The static agent to verify with (default: `patchbay` beside this binary).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Seconds of fork/exec and timer stress during verification.
    #[arg(long, default_value_t = 20)]
    stress_seconds: u32,
}

impl VerifyArgs {
    fn options(self) -> Result<Option<patchbay_build::upgrade::verify::VerifyOptions>> {
        if self.no_verify {
            return Ok(None);
        }
        Ok(Some(patchbay_build::upgrade::verify::VerifyOptions {
            agent: match self.agent {
                Some(agent) => agent,
                None => default_agent()?,
            },
            stress_seconds: self.stress_seconds,
        }))
    }
}

/// Which line of kernels `newest` and `older` pick from.
#[derive(clap::Args, Clone, Default)]
struct LineArgs {
    /// Kernel series for `newest`/`older`: 6.1 (default) or 6.12.
    #[arg(long)]
    series: Option<KernelSeries>,
    /// Debian release for `newest`/`older`: 12, 13 or a code name (default: the newest one
    /// shipping the series).
    #[arg(long)]
    distribution: Option<Distribution>,
    /// Flavour for `newest`/`older`: amd64 (default) or cloud-amd64.
    #[arg(long)]
    flavour: Option<Flavour>,
}

impl LineArgs {
    fn line(&self) -> Result<KernelLine> {
        Ok(KernelLine::choose(
            self.series,
            self.distribution,
            self.flavour,
        )?)
    }

    fn any(&self) -> bool {
        self.series.is_some() || self.distribution.is_some() || self.flavour.is_some()
    }
}

#[derive(Subcommand)]
enum KernelCommand {
    /// List the kernels of every supported line Debian's archive offers, grouped by Debian
    /// release, series and flavour (or only one line with --series/--distribution/--flavour).
    List {
        #[command(flatten)]
        line: LineArgs,
    },
    /// Fetch and unpack a kernel (`newest`, `older` or a release); prints its directory.
    Fetch {
        selector: String,
        #[command(flatten)]
        line: LineArgs,
    },
    /// List the source package versions of a line Debian's archive offers (the `--to` of
    /// `upgrade`), oldest first: `<package> <version> <upstream version>`.
    Sources {
        #[command(flatten)]
        line: LineArgs,
    },
    /// Fetch a kernel and prepare its own source tree (the line's linux-source package of
    /// exactly its version, its config, `make modules_prepare` with its exact compiler): the
    /// tree diffs are written against. Prints the tree's directory.
    Source {
        selector: String,
        #[command(flatten)]
        line: LineArgs,
    },
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

fn open_kernel(spec: &str, line: &LineArgs) -> Result<Kernel> {
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
             kernel directory (no kernel.json); pass one of those, or a release such as \
             6.12.117+deb13-amd64"
        );
    }
    let selector = KernelSelector::parse_in(spec, line.line()?)
        .with_context(|| format!("--kernel {spec}: expected a release, newest, older or a path"))?;
    patchbay_kernels::fetch_selector(&selector).with_context(|| format!("fetch kernel {selector}"))
}

/// How the builder's commands trust the server's TLS certificate (default: the platform's CA
/// roots).
#[derive(Debug, Args)]
struct TrustArgs {
    /// The server's certificate SHA-256 (`patchbay-server init` prints it as
    /// tls-certificate-sha256): only that certificate is accepted.
    #[arg(long, env = "PATCHBAY_SERVER_CERT_SHA256", conflicts_with = "ca_file")]
    server_cert_sha256: Option<String>,
    /// A PEM file of the CA certificates that sign the server's certificate.
    #[arg(long, env = "PATCHBAY_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

impl TrustArgs {
    fn trust(&self) -> Result<patchbay_build::publish::ServerTrust> {
        use patchbay_build::publish::ServerTrust;
        Ok(match (&self.server_cert_sha256, &self.ca_file) {
            (Some(pin), _) => ServerTrust::Pinned(patchbay_updates::tls::parse_fingerprint(pin)?),
            (None, Some(file)) => {
                ServerTrust::CaBundle(patchbay_updates::tls::CaBundle::read(file)?)
            }
            (None, None) => ServerTrust::PlatformRoots,
        })
    }

    fn access(&self, url: String, token: String) -> Result<patchbay_build::publish::ServerAccess> {
        Ok(patchbay_build::publish::ServerAccess {
            url,
            token,
            trust: self.trust()?,
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// `patchbay` beside this binary (how the release packages install them).
fn default_agent() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find this binary's directory")?;
    let agent = exe.with_file_name("patchbay");
    if agent.is_file() {
        return Ok(agent);
    }
    bail!(
        "no agent binary at {} to verify the bundle with; pass --agent PATH (a static \
         `patchbay`), or --no-verify to skip the QEMU check",
        agent.display()
    )
}

/// The CVE database for `upgrade`: a vulns.git checkout (or a directory of CVE records), the
/// snapshot directory, a server's exported JSON, or (none) the snapshot built in.
fn load_cve_db(path: Option<&std::path::Path>) -> Result<patchbay_exposure::CveDatabase> {
    let Some(path) = path else {
        return Ok(patchbay_exposure::snapshot::embedded()?);
    };
    if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        return Ok(patchbay_exposure::CveDatabase::from_json(&bytes)?);
    }
    if patchbay_exposure::snapshot::SERIES
        .iter()
        .any(|s| path.join(s.cna_file).is_file())
    {
        return Ok(patchbay_exposure::snapshot::load_all(path)?);
    }
    let series: Vec<_> = patchbay_exposure::snapshot::series().collect();
    patchbay_exposure::vulns::sync_series(path, &series).with_context(|| {
        format!(
            "read {} as a vulns.git checkout (or give the snapshot directory or a JSON export)",
            path.display()
        )
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Module {
            kernel,
            line,
            level,
            fixes,
            output,
            object_files,
            symbols,
            keep_work_dir,
            json,
            sources,
        } => {
            let kernel = open_kernel(&kernel, &line)?;
            let request = SourceBuild {
                sources,
                module: ModuleBuild {
                    level,
                    fixes,
                    extra_objects: object_files,
                    symbols_override: symbols,
                    output: output.clone(),
                    keep_work_dir,
                },
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
            KernelCommand::List { line } => {
                let only = if line.any() { Some(line.line()?) } else { None };
                let kernels = patchbay_kernels::available_kernels()?;
                for group in KernelLine::all() {
                    if only.is_some_and(|only| only != group) {
                        continue;
                    }
                    println!("{group}");
                    let mut any = false;
                    for k in kernels.iter().filter(|k| group.contains(&k.release)) {
                        println!(
                            "  {}\t{}\t{}",
                            k.release, k.package_version, k.upstream_version
                        );
                        any = true;
                    }
                    if !any {
                        println!("  (none offered)");
                    }
                }
                Ok(())
            }
            KernelCommand::Sources { line } => {
                let line = line.line()?;
                for version in patchbay_kernels::source_versions(&line)? {
                    println!(
                        "{}\t{version}\t{}",
                        line.source_package(),
                        patchbay_kernels::upstream_version_of(&version)?
                    );
                }
                Ok(())
            }
            KernelCommand::Source { selector, line } => {
                let selector = KernelSelector::parse_in(&selector, line.line()?)?;
                let kernel = patchbay_kernels::fetch_selector(&selector)?;
                let tree = kernel
                    .source_tree()
                    .with_context(|| format!("prepare the source tree of {}", kernel.release()))?;
                println!("{}", tree.dir().display());
                Ok(())
            }
            KernelCommand::Fetch { selector, line } => {
                let selector = KernelSelector::parse_in(&selector, line.line()?)?;
                let kernel = patchbay_kernels::fetch_selector(&selector)?;
                println!("{}", kernel.dir().display());
                Ok(())
            }
        },
        Command::Diff {
            kernel,
            line,
            level,
            fixes,
            output,
            keep_work_dir,
            json,
            strip,
            header_recompile_limit,
            patches,
        } => {
            let kernel = open_kernel(&kernel, &line)?;
            let request = patchbay_build::diff::pipeline::DiffBuild {
                level,
                fixes,
                patches,
                output: output.clone(),
                keep_work_dir,
                strip_level: strip,
                header_recompile_limit,
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
                            "object": f.owner.object(),
                            "changed_functions": f.diff.changed_functions,
                            "new_functions": f.diff.new_functions,
                            "new_data": f.diff.new_data,
                            "removed_functions": f.diff.removed_functions,
                            "init_not_applied": f.diff.changed_init,
                            "altered_by": f.altered_by,
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
                match &f.altered_by {
                    Some(headers) => println!(
                        "{} (in {object}; unchanged itself, its object altered by {headers}):",
                        f.source
                    ),
                    None => println!("{} (in {object}):", f.source),
                }
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
        Command::Upgrade {
            kernel,
            line,
            to,
            min_cvss,
            cves,
            level,
            output,
            report,
            patches,
            cve_db,
            verify,
            keep_work_dir,
            header_recompile_limit,
            publish,
            server,
            token,
            trust,
        } => {
            let kernel = open_kernel(&kernel, &line)?;
            let db = load_cve_db(cve_db.as_deref())?;
            // The newer source from apt; with --patches alone, `--to` may name a release apt
            // does not offer (the patches bring it).
            let kernel_line = KernelLine::of(kernel.debian_release())?;
            let versions = patchbay_kernels::source_versions(&kernel_line)?;
            let (newer, to) = match patchbay_kernels::resolve_source_version(&to, &versions) {
                Ok(package) => {
                    let upstream = patchbay_kernels::upstream_version_of(&package)?;
                    eprintln!(
                        "upgrade: fixes from {} {package}",
                        kernel_line.source_package()
                    );
                    let tree = patchbay_kernels::unpacked_source(&kernel_line, &package)?;
                    (
                        Some(patchbay_build::upgrade::NewerSource {
                            package_version: package,
                            tree,
                        }),
                        upstream,
                    )
                }
                Err(err) if patches.is_some() => {
                    eprintln!("upgrade: only the patches in the --patches directory ({err})");
                    (
                        None,
                        to.parse()
                            .with_context(|| format!("--to {to}: expected e.g. 6.1.176"))?,
                    )
                }
                Err(err) => return Err(err.into()),
            };
            let fixes = patchbay_build::upgrade::FixSource { newer, patches };
            let publish_to = match (publish, server, token) {
                (true, Some(server), Some(token)) => Some(trust.access(server, token)?),
                _ => None,
            };
            let level = match (level, &publish_to) {
                (Some(level), _) => level,
                (None, Some(server)) => runtime()?
                    .block_on(patchbay_build::upgrade::next_level(
                        server,
                        kernel.build_id(),
                    ))
                    .map_err(|e| {
                        anyhow::anyhow!("ask the server for the kernel's next level: {e}")
                    })?,
                (None, None) => PatchLevel::try_from(1)?,
            };
            let verify = verify.options()?;
            let request = patchbay_build::upgrade::Upgrade {
                level,
                to,
                min_cvss,
                only: cves,
                fixes,
                output: output.clone(),
                verify,
                work_dir: keep_work_dir,
                header_recompile_limit,
            };
            let result = patchbay_build::upgrade::run(&kernel, &db, &request);
            let (upgrade_report, nothing_built) = match result {
                Ok(report) => (report, None),
                Err(patchbay_build::upgrade::UpgradeError::NothingBuilt { selected, report }) => {
                    (*report, Some(selected))
                }
                Err(err) => return Err(err.into()),
            };
            print!("{}", patchbay_build::upgrade::render::text(&upgrade_report));
            if let Some(path) = &report {
                patchbay_core::fsutil::write_atomic(
                    path,
                    &serde_json::to_vec_pretty(&upgrade_report)?,
                )
                .with_context(|| format!("write the report to {}", path.display()))?;
            }
            if let Some(selected) = nothing_built {
                bail!(
                    "none of the {selected} selected CVEs became a verified live patch; no \
                     bundle was written"
                );
            }
            if let Some(server) = publish_to {
                let runtime = runtime()?;
                let receipt = runtime
                    .block_on(patchbay_build::publish::publish(&server, &output))
                    .with_context(|| format!("publish {}", output.display()))?;
                runtime
                    .block_on(patchbay_build::publish::attach_report(
                        &server,
                        &upgrade_report,
                    ))
                    .context("attach the report to the published level")?;
                println!(
                    "published level {} for build-id {} as {} (report attached)",
                    receipt.level, receipt.build_id, receipt.target
                );
            }
            Ok(())
        }
        Command::Watch {
            server,
            token,
            trust,
            channel,
            interval,
            once,
            apt_update,
            min_cvss,
            cves,
            state_dir,
            cve_db,
            verify,
        } => {
            use patchbay_build::upgrade::watch::{self, KernelRound, WatchConfig, WatchState};
            let interval = watch::parse_interval(&interval).map_err(anyhow::Error::msg)?;
            let db = load_cve_db(cve_db.as_deref())?;
            let verify = verify.options()?;
            let config = WatchConfig {
                server: trust.access(server, token)?,
                channel,
                min_cvss,
                only: cves,
                verify,
                state_dir: match state_dir {
                    Some(dir) => dir,
                    None => std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .context("no --state-dir and no $HOME to put the watch state in")?
                        .join(".local/state/patchbay-watch"),
                },
                apt_update,
            };
            let mut state = WatchState::load(&config.state_dir)?;
            loop {
                let mut failed = 0;
                match watch::round(&config, &db, &mut state) {
                    Ok(rounds) => {
                        for r in rounds {
                            match r {
                                KernelRound::Published(b) => println!(
                                    "watch: {} level {} published from {} {} ({} of {} CVEs \
                                     patched) {} s after the source was seen; report {}",
                                    b.kernel,
                                    b.level,
                                    b.source_package(),
                                    b.source,
                                    b.patched,
                                    b.cves,
                                    b.seen_to_published_seconds,
                                    b.report.display()
                                ),
                                KernelRound::UpToDate { kernel, reason } => {
                                    println!("watch: {kernel} up to date: {reason}")
                                }
                                KernelRound::Skipped { kernel, reason } => {
                                    println!("watch: {kernel} skipped: {reason}")
                                }
                                KernelRound::Failed { kernel, reason } => {
                                    failed += 1;
                                    eprintln!("watch: {kernel} failed: {reason}")
                                }
                            }
                        }
                    }
                    Err(e) if !once => eprintln!("watch: round failed: {e}; trying again later"),
                    Err(e) => return Err(e.into()),
                }
                if once {
                    if failed > 0 {
                        bail!("{failed} kernels could not be brought up to date (above)");
                    }
                    return Ok(());
                }
                std::thread::sleep(interval);
            }
        }
        Command::Publish {
            bundle,
            server,
            token,
            trust,
        } => {
            let server = trust.access(server, token)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?;
            let receipt = runtime
                .block_on(patchbay_build::publish::publish(&server, &bundle))
                .with_context(|| format!("publish {}", bundle.display()))?;
            println!(
                "published level {} for build-id {} as {}",
                receipt.level, receipt.build_id, receipt.target
            );
            Ok(())
        }
        Command::Inspect { bundle } => {
            let b = Bundle::read(&bundle)?;
            println!("{}", serde_json::to_string_pretty(b.manifest())?);
            Ok(())
        }
    }
}
