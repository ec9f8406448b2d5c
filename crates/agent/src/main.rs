//! `patchbay`: the agent CLI. Logic lives in the library; this maps arguments to it, prints,
//! and turns errors into exit codes (see docs/agent.md).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use patchbay::{
    exit, Agent, AgentError, ApplyOptions, KernelPaths, StateDir, SystemClock, SystemKernel,
    TransitionOptions, DEFAULT_STATE_DIR, STATE_DIR_ENV,
};

#[derive(Debug, Parser)]
#[command(
    name = "patchbay",
    version,
    about = "Applies, rolls back and unloads Patchbay livepatch bundles on this machine.",
    after_help = "Exit codes: 0 ok / up to date, 1 error, 2 usage, 3 no patch applied, \
                  4 newer level available, 5 kernel unsupported, 6 transition blocked and \
                  reverted, 7 bundle refused."
)]
struct Cli {
    /// State directory [env: PATCHBAY_STATE_DIR] [default: /var/lib/patchbay].
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// (testing) livepatch sysfs directory.
    #[arg(
        long,
        global = true,
        hide = true,
        default_value = "/sys/kernel/livepatch"
    )]
    livepatch_dir: PathBuf,
    /// (testing) proc root.
    #[arg(long, global = true, hide = true, default_value = "/proc")]
    proc_dir: PathBuf,
    /// Agent config file [env: PATCHBAY_CONFIG].
    #[arg(long, global = true, value_name = "FILE", default_value = patchbay::remote::DEFAULT_CONFIG, env = "PATCHBAY_CONFIG")]
    config: PathBuf,
    /// (testing) kill-switch file.
    #[arg(long, global = true, hide = true, default_value = patchbay::remote::DEFAULT_DISABLE_FILE)]
    disable_file: PathBuf,
    /// (testing) kernel notes file.
    #[arg(long, global = true, hide = true, default_value = "/sys/kernel/notes")]
    kernel_notes: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct TransitionArgs {
    /// Give up on a stalled transition after this long and revert it (e.g. 60s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    transition_timeout: Duration,
    /// After this long, report the tasks blocking the transition and signal them if the
    /// kernel offers livepatch's `signal` attribute (6.1 signals them itself every ~15 s).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    signal_after: Duration,
    /// DANGEROUS: on timeout, write livepatch's `force` attribute instead of reverting. Tasks
    /// that have not switched may keep running the old code, breaking the patch's consistency
    /// guarantee, and the patch modules can never be removed until reboot.
    #[arg(long)]
    force: bool,
}

impl TransitionArgs {
    fn options(&self) -> TransitionOptions {
        TransitionOptions {
            timeout: self.transition_timeout,
            signal_after: self.signal_after,
            force: self.force,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a bundle and make its level the active livepatch (atomic replace).
    Apply {
        /// The bundle file (.pbb).
        bundle: PathBuf,
        #[command(flatten)]
        transition: TransitionArgs,
        /// Allow applying a level below the active one (it drops that level's newer fixes).
        #[arg(long)]
        allow_downgrade: bool,
        /// Allow atomic replace to remove livepatches that are not Patchbay's.
        #[arg(long)]
        replace_foreign: bool,
    },
    /// Show the running kernel, the active level and what is cached; exit code = verdict.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Go back to the newest cached level below the active one.
    Rollback {
        #[command(flatten)]
        transition: TransitionArgs,
        /// Allow atomic replace to remove livepatches that are not Patchbay's.
        #[arg(long)]
        replace_foreign: bool,
    },
    /// Disable and remove the Patchbay livepatch.
    Unload {
        #[command(flatten)]
        transition: TransitionArgs,
    },
    /// Register this host with a patch server (stores the host token and trusted root.json).
    Register {
        /// The server, e.g. https://patches.example:8470 [env: PATCHBAY_SERVER].
        #[arg(long, env = "PATCHBAY_SERVER")]
        server: String,
        /// A registration key from the server administrator, as printed
        /// (pbreg2.<secret>.root-sha256=…[.cert-sha256=…]): the server's root metadata and
        /// certificate are checked against it before its secret is sent
        /// [env: PATCHBAY_REGISTRATION_KEY].
        #[arg(long, env = "PATCHBAY_REGISTRATION_KEY", hide_env_values = true)]
        key: String,
        /// For a key without fingerprints (pbreg_…): the server's root.json, copied out of band.
        #[arg(long, value_name = "FILE")]
        root: Option<PathBuf>,
        /// For a key without a certificate fingerprint: pin this certificate SHA-256.
        #[arg(long, value_name = "SHA256")]
        server_cert_sha256: Option<String>,
        /// A PEM file of the CA certificates that sign the server's certificate (kept for every
        /// later connection); default: `server_ca_file` of the config.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Trust whatever root and certificate the server shows where the key names none. A
        /// man in the middle at this moment would own this host's updates: avoid.
        #[arg(long)]
        trust_on_first_use: bool,
        /// Allow an http:// server: the key and the host token then cross the network in
        /// clear. Only for a test.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Check the server (or an archive) now and apply the level this host's channel serves.
    Update {
        /// Read a `patchbay-server export` archive instead of the server (air-gapped hosts).
        #[arg(long, value_name = "ARCHIVE")]
        from: Option<PathBuf>,
        /// With --from on a host never registered: the root.json to trust.
        #[arg(long, value_name = "FILE", requires = "from")]
        root: Option<PathBuf>,
        #[command(flatten)]
        transition: TransitionArgs,
        /// Allow atomic replace to remove livepatches that are not Patchbay's.
        #[arg(long)]
        replace_foreign: bool,
    },
    /// Exit 0 when up to date, 4 when another level waits; changes nothing.
    Check {
        #[arg(long, value_name = "ARCHIVE")]
        from: Option<PathBuf>,
        #[arg(long, value_name = "FILE", requires = "from")]
        root: Option<PathBuf>,
    },
    /// Check periodically (config: interval, jitter, auto_update) until stopped.
    Daemon {
        #[command(flatten)]
        transition: TransitionArgs,
    },
    /// At boot: re-apply the last active level from the cache, offline (kill switch:
    /// `patchbay.disable` on the kernel command line or the disable file).
    Boot {
        #[command(flatten)]
        transition: TransitionArgs,
    },
    /// Print the upstream release whose fixes this kernel has, live patch counted (like
    /// kcare-uname); `-a` adds the details.
    Uname {
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// (benchmark) finit_module + transition polling only; prints raw-load-us.
    #[command(hide = true)]
    BenchRawLoad {
        ko: PathBuf,
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        transition_timeout: Duration,
    },
}

/// Parses `60`, `60s`, `500ms`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (t.get(..i).unwrap_or(t), t.get(i..).unwrap_or("")),
        None => (t, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (use e.g. 60s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is out of range"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE as u8 } else { 0 });
        }
    };
    let code = run(cli);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(cli: Cli) -> i32 {
    // Everything the agent creates is its own: files 0600, directories 0700, including those
    // its libraries write (the TUF client's datastore).
    // SAFETY: umask only sets this process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let state_dir = cli
        .state_dir
        .or_else(|| std::env::var_os(STATE_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let kernel = SystemKernel;
    let clock = SystemClock::default();
    let log = |line: &str| eprintln!("patchbay: {line}");
    let agent = Agent {
        kernel: &kernel,
        clock: &clock,
        paths: KernelPaths {
            livepatch_dir: cli.livepatch_dir,
            proc_dir: cli.proc_dir,
            notes_path: cli.kernel_notes,
        },
        state_dir: StateDir::new(state_dir),
        log: &log,
    };
    // Every command reads or writes the state directory; one others can write to is refused
    // before anything is read from it.
    if let Err(e) = agent.state_dir.check_private() {
        eprintln!("patchbay: error: {e}");
        return exit::REFUSED;
    }
    agent.state_dir.remove_stale_leftovers();
    let timing = std::env::var_os("PATCHBAY_TIMING").is_some_and(|v| v == "1");
    let settings = match patchbay::remote::Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("patchbay: error: {e}");
            return exit::USAGE;
        }
    };
    let remote_result = match cli.command {
        Command::Register {
            ref server,
            ref key,
            ref root,
            ref server_cert_sha256,
            ref ca_file,
            trust_on_first_use,
            insecure_http,
        } => Some(register_command(
            &agent,
            server,
            key,
            RegisterArgs {
                root,
                server_cert_sha256,
                ca_file,
                trust_on_first_use,
                insecure_http,
            },
            &settings,
        )),
        Command::Update {
            ref from,
            ref root,
            ref transition,
            replace_foreign,
        } => {
            let opts = ApplyOptions {
                transition: transition.options(),
                allow_downgrade: false,
                replace_foreign,
            };
            let remote = patchbay::remote::Remote::new(&agent, settings.clone(), opts)
                .with_disable_file(&cli.disable_file);
            Some(remote.update(&origin(from, root), true).map(|report| {
                match (&report.applied, &report.disabled) {
                    (Some(outcome), _) => println!("{outcome}"),
                    (None, Some(why)) => {
                        println!("disabled: {why}; {} is not applied", report.plan)
                    }
                    (None, None) => println!("{}", report.plan),
                }
                exit::OK
            }))
        }
        Command::Check { ref from, ref root } => {
            let remote =
                patchbay::remote::Remote::new(&agent, settings.clone(), ApplyOptions::default());
            Some(remote.update(&origin(from, root), false).map(|report| {
                println!("{}", report.plan);
                match report.plan {
                    patchbay::remote::Plan::Change { .. } => exit::NEWER_AVAILABLE,
                    _ => exit::OK,
                }
            }))
        }
        Command::Daemon { ref transition } => {
            let opts = ApplyOptions {
                transition: transition.options(),
                ..ApplyOptions::default()
            };
            patchbay::remote::Remote::new(&agent, settings.clone(), opts)
                .with_disable_file(&cli.disable_file)
                .daemon()
        }
        Command::Boot { ref transition } => {
            let opts = ApplyOptions {
                transition: transition.options(),
                ..ApplyOptions::default()
            };
            Some(
                patchbay::remote::boot(&agent, &cli.disable_file, &opts).map(|outcome| {
                    match outcome {
                        patchbay::remote::BootOutcome::Applied(o) => println!("{o}"),
                        patchbay::remote::BootOutcome::Disabled(why) => {
                            println!("disabled: {why}; nothing applied")
                        }
                        patchbay::remote::BootOutcome::NothingToApply(why) => {
                            println!("nothing to re-apply: {why}")
                        }
                    }
                    exit::OK
                }),
            )
        }
        Command::Uname { all } => Some(patchbay::remote::uname(&agent).map(|(release, detail)| {
            if all {
                println!("{release} ({detail})");
            } else {
                println!("{release}");
            }
            exit::OK
        })),
        _ => None,
    };
    if let Some(result) = remote_result {
        let _ = std::io::stdout().flush();
        return match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("patchbay: error: {e}");
                e.exit_code()
            }
        };
    }
    let result: Result<i32, AgentError> = match cli.command {
        Command::Apply {
            bundle,
            transition,
            allow_downgrade,
            replace_foreign,
        } => {
            let opts = ApplyOptions {
                transition: transition.options(),
                allow_downgrade,
                replace_foreign,
            };
            agent.apply(&bundle, &opts).map(|out| {
                if timing && !out.already_active {
                    eprintln!("apply-us {}", out.timings.recorded.as_micros());
                    eprintln!("apply-total-us {}", out.timings.cleaned.as_micros());
                    eprintln!("apply-phases {}", out.timings.phases());
                }
                println!("{out}");
                exit::OK
            })
        }
        Command::Rollback {
            transition,
            replace_foreign,
        } => {
            let opts = ApplyOptions {
                transition: transition.options(),
                allow_downgrade: true,
                replace_foreign,
            };
            agent.rollback(&opts).map(|out| {
                println!("{out}");
                exit::OK
            })
        }
        Command::Unload { transition } => agent.unload(&transition.options()).map(|out| {
            println!("{out}");
            exit::OK
        }),
        Command::Status { json } => agent.status().map(|report| {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("patchbay: error: cannot encode the status as JSON: {e}");
                        return exit::ERROR;
                    }
                }
            } else {
                print!("{}", report.render());
            }
            report.exit_code
        }),
        Command::Register { .. }
        | Command::Update { .. }
        | Command::Check { .. }
        | Command::Daemon { .. }
        | Command::Boot { .. }
        | Command::Uname { .. } => Ok(exit::USAGE),
        Command::BenchRawLoad {
            ko,
            transition_timeout,
        } => {
            let opts = TransitionOptions {
                timeout: transition_timeout,
                ..TransitionOptions::default()
            };
            agent.bench_raw_load(&ko, &opts).map(|took| {
                println!("raw-load-us {}", took.as_micros());
                exit::OK
            })
        }
    };
    if timing {
        // Peak resident memory of this run, for the benchmark (scripts/bench).
        if let Some(kb) = peak_rss_kb() {
            eprintln!("max-rss-kb {kb}");
        }
    }
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("patchbay: error: {e}");
            e.exit_code()
        }
    }
}

fn origin(from: &Option<PathBuf>, root: &Option<PathBuf>) -> patchbay::remote::Origin {
    match from {
        Some(path) => patchbay::remote::Origin::Archive {
            path: path.clone(),
            root: root.clone(),
        },
        None => patchbay::remote::Origin::Server,
    }
}

/// `VmHWM` of /proc/self/status: the peak resident set size in KiB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `register`'s trust options as given.
struct RegisterArgs<'a> {
    root: &'a Option<PathBuf>,
    server_cert_sha256: &'a Option<String>,
    ca_file: &'a Option<PathBuf>,
    trust_on_first_use: bool,
    insecure_http: bool,
}

fn register_command(
    agent: &Agent<'_>,
    server: &str,
    key: &str,
    args: RegisterArgs<'_>,
    settings: &patchbay::remote::Settings,
) -> Result<i32, patchbay::remote::RemoteError> {
    use patchbay::remote::{FirstUse, PlainHttp, RegisterTrust, RemoteError, RootTrust};
    let key: patchbay_core::registration::RegistrationKey =
        key.parse()
            .map_err(|e: patchbay_core::registration::RegistrationKeyError| {
                RemoteError::Usage(e.to_string())
            })?;
    let server_cert_sha256 = args
        .server_cert_sha256
        .as_deref()
        .map(patchbay_updates::tls::parse_fingerprint)
        .transpose()
        .map_err(|e| RemoteError::Usage(e.to_string()))?;
    let trust = RegisterTrust {
        root_file: args.root.clone(),
        server_cert_sha256,
        ca_file: args.ca_file.clone(),
        first_use: if args.trust_on_first_use {
            FirstUse::Trust
        } else {
            FirstUse::Refuse
        },
        plain_http: if args.insecure_http {
            PlainHttp::Allow
        } else {
            PlainHttp::Refuse
        },
    }
    .or_config_ca_file(settings);
    let r = patchbay::remote::register(agent, server, &key, &trust)?;
    println!("registered as host {} in channel {}", r.host_id, r.channel);
    let how = match r.root_trust {
        RootTrust::KeyFingerprint => "checked against the registration key",
        RootTrust::RootFile => "from --root",
        RootTrust::FirstUse => "TRUSTED ON FIRST USE: compare them with the server's out of band",
    };
    println!("trusted root keys ({how}): {}", r.root_key_ids.join(", "));
    match (&r.pinned_certificate, r.certificate_trusted_on_first_use) {
        (Some(sha), false) => println!("server certificate pinned: SHA-256 {sha}"),
        (Some(sha), true) => eprintln!(
            "patchbay: WARNING: the server certificate was TRUSTED ON FIRST USE and is now \
             pinned: SHA-256 {sha}. Compare it with `patchbay-server init`'s \
             tls-certificate-sha256; if they differ, someone intercepted this registration"
        ),
        (None, _) => {}
    }
    if r.root_trust == RootTrust::FirstUse {
        eprintln!(
            "patchbay: WARNING: the root metadata was TRUSTED ON FIRST USE: a man in the middle \
             at this moment would own this host's updates. Use a registration key with \
             fingerprints (pbreg2.…) instead"
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["patchbay", "apply", "x.pbb", "--signal-after", "1s"]);
        assert!(cli.is_ok());
        assert!(Cli::try_parse_from(["patchbay", "apply"]).is_err());
    }
}
