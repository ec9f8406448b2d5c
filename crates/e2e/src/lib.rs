//! Shared plumbing of the end-to-end tests, the demo and the benchmark: build the real agent as
//! a static binary, build the fixture module and patch bundles for a real Debian kernel, boot it
//! in QEMU with a scenario script.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use patchbay_build::kbuild::{self, UndefinedSymbols};
use patchbay_build::module_build::{self, ModuleBuild, SourceBuild};
use patchbay_core::{CveId, PatchLevel};
use patchbay_kernels::Kernel;
use patchbay_vm::{Initramfs, Network, VmConfig, VmRun};

pub mod server;
pub use server::{builder_binary, server_binary, ServerProcess};

/// The repository's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A file under `fixtures/`.
pub fn fixture(relative: &str) -> PathBuf {
    workspace_root().join("fixtures").join(relative)
}

/// Builds the agent as a static binary (once per process) and returns its path.
/// `PATCHBAY_AGENT_BIN` overrides it with a prebuilt binary.
pub fn agent_binary() -> Result<PathBuf> {
    static AGENT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    AGENT
        .get_or_init(|| build_agent().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The static agent built with its `fault-injection` crash points (for `tests/faults.rs`).
pub fn agent_binary_with_fault_injection() -> Result<PathBuf> {
    static AGENT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            release_binary_with_features(
                "patchbay",
                "patchbay",
                "static-agent-faults",
                Linking::Static,
                &["fault-injection"],
            )
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_agent() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATCHBAY_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    release_binary("patchbay", "patchbay", "static-agent", Linking::Static)
}

/// How [`release_binary`] links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linking {
    Dynamic,
    /// `-C target-feature=+crt-static`, as the agent ships.
    Static,
}

/// Builds `bin` of `package` in release mode into `target/<target_dir>` and returns its path.
/// A separate target dir per binary: the build must not wait on the lock of the cargo
/// invocation that runs the tests.
pub fn release_binary(
    package: &str,
    bin: &str,
    target_dir: &str,
    linking: Linking,
) -> Result<PathBuf> {
    release_binary_with_features(package, bin, target_dir, linking, &[])
}

/// [`release_binary`] with cargo features.
pub fn release_binary_with_features(
    package: &str,
    bin: &str,
    target_dir: &str,
    linking: Linking,
    features: &[&str],
) -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target").join(target_dir);
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(&root)
        .args(["build", "--release", "--locked", "--quiet", "-p", package])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .env("CARGO_TARGET_DIR", &target_dir);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    if linking == Linking::Static {
        command.env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        );
    }
    let status = command
        .status()
        .with_context(|| format!("run cargo to build {bin}"))?;
    if !status.success() {
        bail!("building {bin} failed ({status})");
    }
    let path = target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(bin);
    if !path.is_file() {
        bail!("{} was not produced", path.display());
    }
    Ok(path)
}

/// Asserts that a guest run passed every one of `expected` checks (so a check that silently
/// did not run fails too); on failure prints the whole serial log. Prints the log anyway (the
/// test harness shows it only for failing tests or with --nocapture).
pub fn assert_checks(run: &VmRun, expected: &[&str]) {
    eprintln!("serial log:\n{}", run.serial_log);
    let passed = patchbay_vm::check_report(run).unwrap_or_else(|e| panic!("{e}"));
    let missing: Vec<&&str> = expected
        .iter()
        .filter(|name| !passed.iter().any(|p| p == *name))
        .collect();
    assert!(
        missing.is_empty(),
        "checks that never reported: {missing:?}\nserial log:\n{}",
        run.serial_log
    );
}

/// One case of the diff-mode QEMU scenario (`fixtures/scenarios/diff.sh`): diffs under
/// `fixtures/diffs/`, a guest check that fails before the patch is loaded, passes while it is
/// live and fails again after unload, and optionally a check that must pass after unload.
#[derive(Debug, Clone, Copy)]
pub struct DiffCase<'a> {
    /// The case's name (a guest file name: letters, digits, dashes).
    pub name: &'a str,
    /// The diffs, relative to `fixtures/diffs/`.
    pub diffs: &'a [&'a str],
    /// A shell check in the guest.
    pub check: &'a str,
    /// A shell check that must pass after the unload.
    pub after_unload: Option<&'a str>,
}

/// Builds each case with `patchbay-build diff` for `kernel` (distinct levels: the agent keeps
/// every bundle it applied), runs them in one guest with `cpus` CPUs and asserts every step of
/// every case passed, printing the serial log. Returns the run for further checks.
pub fn run_diff_cases(kernel: &Kernel, cases: &[DiffCase<'_>], cpus: u32) -> Result<VmRun> {
    use patchbay_build::diff::pipeline::{build, DiffBuild};
    let work = tempfile::tempdir()?;
    let mut guest = Guest::new()?;
    guest.cpus = cpus;
    for (index, case) in cases.iter().enumerate() {
        let out = work.path().join(format!("{}.pbb", case.name));
        let level = u32::try_from(index + 1)?;
        let report = build(
            kernel,
            &DiffBuild {
                level: PatchLevel::try_from(level)?,
                fixes: Vec::new(),
                patches: case
                    .diffs
                    .iter()
                    .map(|d| fixture(&format!("diffs/{d}")))
                    .collect(),
                output: out.clone(),
                keep_work_dir: None,
                strip_level: None,
                header_recompile_limit: patchbay_build::diff::headers::RECOMPILE_LIMIT,
            },
        )
        .with_context(|| format!("build {} for {}", case.name, kernel.release()))?;
        eprintln!("{}: {:?}", case.name, report.files);
        guest.file(&format!("/bundles/{}.pbb", case.name), &out)?;
        let mut checks = vec![("check", case.check)];
        checks.extend(case.after_unload.map(|after| ("after", after)));
        for (suffix, text) in checks {
            let file = work.path().join(format!("{}.{suffix}", case.name));
            std::fs::write(&file, text)?;
            guest.file(&format!("/cases/{}.{suffix}", case.name), &file)?;
        }
    }
    let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    let scenario = std::fs::read_to_string(fixture("scenarios/diff.sh"))?;
    let script = format!("CASES=\"{}\"\n{scenario}", names.join(" "));
    let run = guest.run_script(kernel, "diff", &script, work.path())?;
    let mut expected: Vec<String> = Vec::new();
    for case in cases {
        for step in [
            "fails-before",
            "apply",
            "passes-live",
            "unload",
            "fails-after-unload",
        ] {
            expected.push(format!("{}-{step}", case.name));
        }
        if case.after_unload.is_some() {
            expected.push(format!("{}-after-unload", case.name));
        }
    }
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_checks(&run, &expected);
    Ok(run)
}

/// Builds the `pb_fixture` test module for `kernel` into `out_dir`.
pub fn fixture_module(kernel: &Kernel, out_dir: &Path) -> Result<PathBuf> {
    let dir = out_dir.join("pb_fixture");
    std::fs::create_dir_all(&dir)?;
    for name in ["pb_fixture.c", "Kbuild"] {
        std::fs::copy(
            fixture(&format!("modules/pb_fixture/{name}")),
            dir.join(name),
        )
        .with_context(|| format!("copy fixture {name}"))?;
    }
    Ok(kbuild::build_module(
        kernel,
        &dir,
        "pb_fixture",
        UndefinedSymbols::Refuse,
    )?)
}

/// Builds a bundle of `level` for `kernel` from patch sources under `fixtures/patches/`.
pub fn bundle(
    kernel: &Kernel,
    level: u32,
    patches: &[&str],
    fixes: &[&str],
    extra_objects: &[PathBuf],
    output: &Path,
) -> Result<module_build::BuildReport> {
    let request = SourceBuild {
        sources: patches
            .iter()
            .map(|p| fixture(&format!("patches/{p}")))
            .collect(),
        module: ModuleBuild {
            level: PatchLevel::try_from(level)?,
            fixes: fixes
                .iter()
                .map(|f| f.parse::<CveId>())
                .collect::<Result<_, _>>()?,
            extra_objects: extra_objects.to_vec(),
            symbols_override: None,
            output: output.to_path_buf(),
            keep_work_dir: None,
        },
    };
    module_build::build(kernel, &request).with_context(|| {
        format!(
            "build level {level} from {patches:?} for {}",
            kernel.release()
        )
    })
}

/// A guest to boot: the agent at `/bin/patchbay`, `/lib/pb.sh`, files, and a scenario.
#[derive(Debug)]
pub struct Guest {
    initramfs: Initramfs,
    pub cpus: u32,
    pub timeout: Duration,
    pub network: Network,
    pub disks: Vec<PathBuf>,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
}

impl Guest {
    /// A guest with the agent installed.
    pub fn new() -> Result<Guest> {
        Guest::with_agent(&agent_binary()?)
    }

    /// A guest with the agent binary `agent` (e.g. one with crash points).
    pub fn with_agent(agent: &Path) -> Result<Guest> {
        let mut initramfs = Initramfs::new()?;
        initramfs.add_file("/bin/patchbay", agent, 0o755)?;
        Ok(Guest {
            initramfs,
            cpus: 1,
            timeout: Duration::from_secs(240),
            network: Network::None,
            disks: Vec::new(),
            extra_cmdline: String::new(),
        })
    }

    /// Adds the kernel's own modules (with their dependencies) for `modprobe` in the guest.
    pub fn modules(&mut self, kernel: &Kernel, names: &[&str]) -> Result<&mut Self> {
        self.initramfs
            .add_kernel_modules(kernel.modules_dir(), names)?;
        Ok(self)
    }

    /// Copies a host file into the guest.
    pub fn file(&mut self, guest_path: &str, host: &Path) -> Result<&mut Self> {
        self.initramfs.add_file(guest_path, host, 0o644)?;
        Ok(self)
    }

    /// Boots `kernel` and runs the scenario script from `fixtures/scenarios/<name>`.
    pub fn run(&mut self, kernel: &Kernel, scenario: &str, work: &Path) -> Result<VmRun> {
        let script = std::fs::read_to_string(fixture(&format!("scenarios/{scenario}")))
            .with_context(|| format!("read scenario {scenario}"))?;
        self.run_script(kernel, scenario, &script, work)
    }

    /// Boots `kernel` and runs `script`; `label` names the initramfs written under `work`.
    pub fn run_script(
        &mut self,
        kernel: &Kernel,
        label: &str,
        script: &str,
        work: &Path,
    ) -> Result<VmRun> {
        self.run_script_with(kernel, label, script, work, &mut |_| {})
    }

    /// Like [`Guest::run_script`], calling `on_line` with each serial line as it arrives (to
    /// act on the host when the guest reaches a step).
    pub fn run_script_with(
        &mut self,
        kernel: &Kernel,
        label: &str,
        script: &str,
        work: &Path,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<VmRun> {
        self.initramfs.set_scenario(script);
        let initramfs = work.join(format!("{label}.cpio.gz"));
        self.initramfs.write(&initramfs)?;
        let mut config = VmConfig::new(kernel.vmlinux(), initramfs);
        config.cpus = self.cpus;
        config.timeout = self.timeout;
        config.network = self.network.clone();
        config.disks = self.disks.clone();
        config.extra_cmdline = self.extra_cmdline.clone();
        Ok(patchbay_vm::run_with_serial_callback(&config, on_line)?)
    }
}

/// Stores as the server's CVE database (`<data_dir>/cve/db.json`) the bundled snapshot without
/// the CVEs published on or after `day` (`2025-01-01`): data older than the server's
/// `cve.max_age_days`, which it warns about (dashboard banner, `/metrics`, `doctor`). Written
/// atomically, so a running server reads it at its next request. Returns the data's date, the
/// newest publication day left (`2024-12-31`).
pub fn store_cve_data_before(data_dir: &Path, day: &str) -> Result<String> {
    let cutoff: patchbay_exposure::Day = day.parse().with_context(|| format!("day {day:?}"))?;
    let mut db = patchbay_exposure::snapshot::embedded()?;
    db.records
        .retain(|_, r| r.published.is_some_and(|p| p < cutoff));
    db.provenance = Some(patchbay_exposure::Provenance {
        source: format!("the bundled snapshot without the CVEs published since {day}"),
        synced_at: patchbay_core::clock::now_rfc3339(),
    });
    let newest = db
        .newest_published()
        .with_context(|| format!("no CVE of the snapshot was published before {day}"))?;
    let path = data_dir.join("cve/db.json");
    patchbay_core::fsutil::write_atomic(&path, &db.to_json()?)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(newest.to_string())
}
