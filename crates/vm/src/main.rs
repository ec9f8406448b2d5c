//! `patchbay-vm`: boot a Debian kernel in QEMU with a scenario script, for humans.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use patchbay_vm::{check_report, run_with_serial_callback, Initramfs, VmConfig, VmExit};

#[derive(Debug, Parser)]
#[command(
    name = "patchbay-vm",
    version,
    about = "Boot a Debian kernel under QEMU (TCG) with a scenario script and report its results"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot once, run the script as /scenario.sh, print the serial log live and the results.
    ///
    /// Exit status: 0 when the guest completed, every `PB: check` passed and the script
    /// exited 0; 1 when the scenario failed; 2 when the harness itself failed.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Kernel: `newest`, `older` or an ABI such as 6.1.0-56-amd64 (fetched into the cache).
    #[arg(long, default_value = "newest", conflicts_with = "vmlinux")]
    kernel: String,
    /// Boot this uncompressed vmlinux instead of a fetched kernel.
    #[arg(long, value_name = "PATH")]
    vmlinux: Option<PathBuf>,
    /// With --vmlinux: its unpacked lib/modules/<release> directory, for --module.
    #[arg(long, value_name = "DIR", requires = "vmlinux")]
    modules_dir: Option<PathBuf>,
    /// The sh script to run in the guest; `. /lib/pb.sh` gives pb_check and friends.
    #[arg(long, value_name = "PATH")]
    script: PathBuf,
    /// Copy a host file into the guest, keeping its permission bits (repeatable).
    #[arg(long = "file", value_name = "HOST:GUEST", value_parser = parse_file_mapping)]
    files: Vec<FileMapping>,
    /// Put this kernel module and its dependencies into the guest for `modprobe` (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    modules: Vec<String>,
    /// Kill the VM after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Guest CPUs: 1 is fastest under TCG; use 2 to exercise livepatch's consistency model.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Extra kernel command line (e.g. `nokaslr`).
    #[arg(long, default_value = "")]
    append: String,
    /// Keep the generated initramfs at this path (it is deleted otherwise).
    #[arg(long, value_name = "PATH")]
    keep_initramfs: Option<PathBuf>,
    /// Do not print the serial log live (results are printed either way).
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone)]
struct FileMapping {
    host: PathBuf,
    guest: String,
}

/// `HOST:GUEST`, split at the last `:` (guest paths are absolute and rarely contain one).
fn parse_file_mapping(text: &str) -> Result<FileMapping, String> {
    let (host, guest) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:GUEST, got {text:?}"))?;
    if host.is_empty() || !guest.starts_with('/') {
        return Err(format!(
            "expected HOST:GUEST with an absolute guest path, got {text:?}"
        ));
    }
    Ok(FileMapping {
        host: PathBuf::from(host),
        guest: guest.to_owned(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_command(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("patchbay-vm: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The kernel to boot: its vmlinux, modules directory and a name for the report.
struct BootKernel {
    vmlinux: PathBuf,
    modules_dir: Option<PathBuf>,
    name: String,
}

fn select_kernel(args: &RunArgs) -> Result<BootKernel> {
    if let Some(vmlinux) = &args.vmlinux {
        return Ok(BootKernel {
            vmlinux: vmlinux.clone(),
            modules_dir: args.modules_dir.clone(),
            name: vmlinux.display().to_string(),
        });
    }
    let selector: patchbay_kernels::KernelSelector = args
        .kernel
        .parse()
        .map_err(|error| anyhow!("invalid --kernel {:?}: {error}", args.kernel))?;
    eprintln!("patchbay-vm: fetching kernel {} …", args.kernel);
    let kernel = patchbay_kernels::fetch_selector(&selector)
        .with_context(|| format!("fetching kernel {:?}", args.kernel))?;
    Ok(BootKernel {
        vmlinux: kernel.vmlinux().to_path_buf(),
        modules_dir: Some(kernel.modules_dir().to_path_buf()),
        name: format!("{} (build id {})", kernel.release(), kernel.build_id()),
    })
}

fn build_initramfs(args: &RunArgs, kernel: &BootKernel, out: &Path) -> Result<()> {
    let script = std::fs::read_to_string(&args.script)
        .with_context(|| format!("reading the scenario script {}", args.script.display()))?;
    let mut initramfs = Initramfs::new()?;
    initramfs.set_scenario(&script);
    for mapping in &args.files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&mapping.host)
            .with_context(|| format!("reading {}", mapping.host.display()))?
            .permissions()
            .mode();
        initramfs.add_file(&mapping.guest, &mapping.host, mode)?;
    }
    if !args.modules.is_empty() {
        let Some(modules_dir) = &kernel.modules_dir else {
            bail!("--module needs --modules-dir when booting a --vmlinux");
        };
        let names: Vec<&str> = args.modules.iter().map(String::as_str).collect();
        initramfs.add_kernel_modules(modules_dir, &names)?;
    }
    initramfs.write(out)?;
    Ok(())
}

/// Ok(true) when the scenario passed.
fn run_command(args: &RunArgs) -> Result<bool> {
    let kernel = select_kernel(args)?;

    let temp_dir = std::env::temp_dir().join(format!("patchbay-vm-{}", std::process::id()));
    std::fs::create_dir_all(&temp_dir)
        .with_context(|| format!("creating {}", temp_dir.display()))?;
    let initramfs_path = args
        .keep_initramfs
        .clone()
        .unwrap_or_else(|| temp_dir.join("initrd.cpio.gz"));
    let outcome = build_initramfs(args, &kernel, &initramfs_path).and_then(|()| {
        let mut config = VmConfig::new(&kernel.vmlinux, &initramfs_path);
        config.cpus = args.cpus;
        config.memory_mib = args.memory;
        config.timeout = Duration::from_secs(args.timeout);
        config.extra_cmdline = args.append.clone();
        eprintln!(
            "patchbay-vm: booting {} with {} CPU(s), {} MiB, timeout {} s",
            kernel.name, config.cpus, config.memory_mib, args.timeout
        );
        let quiet = args.quiet;
        let run = run_with_serial_callback(&config, &mut |line| {
            if !quiet {
                println!("{line}");
            }
        })?;
        Ok(run)
    });
    // Best effort: a leftover temp dir only costs disk space.
    let _ = std::fs::remove_dir_all(&temp_dir);
    let run = outcome?;

    println!("--- results ---");
    for line in &run.lines {
        println!("{} {}", line.key, line.value);
    }
    let seconds = |duration: Option<Duration>| {
        duration.map_or_else(|| "-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
    };
    println!(
        "--- {}: {}; /init reached after {} (guest uptime {}), wall {} ---",
        kernel.name,
        run.exit.describe(),
        seconds(run.boot_to_init),
        seconds(run.guest_uptime_at_init),
        seconds(Some(run.wall)),
    );
    if run.exit != VmExit::Completed && !run.qemu_stderr.is_empty() {
        println!("QEMU stderr:\n{}", run.qemu_stderr);
    }
    match check_report(&run) {
        Ok(passed) => {
            println!("PASS: {} check(s) passed", passed.len());
            Ok(true)
        }
        Err(error) => {
            // The log was printed above (unless --quiet); the first line says what failed.
            let error = error.to_string();
            if args.quiet {
                println!("FAIL: {error}");
            } else {
                println!("FAIL: {}", error.lines().next().unwrap_or_default());
            }
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn file_mappings() {
        let mapping = parse_file_mapping("target/agent:/bin/agent").unwrap();
        assert_eq!(mapping.host, PathBuf::from("target/agent"));
        assert_eq!(mapping.guest, "/bin/agent");
        let mapping = parse_file_mapping("a:b:/x").unwrap();
        assert_eq!(mapping.host, PathBuf::from("a:b"));
        assert!(parse_file_mapping("no-colon").is_err());
        assert!(parse_file_mapping("host:relative").is_err());
        assert!(parse_file_mapping(":/x").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
