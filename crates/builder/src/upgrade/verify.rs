//! Every upgrade bundle is tried before it is offered: boot the target kernel in QEMU, load the
//! modules the patch touches, apply the bundle with the real agent, run a smoke workload while
//! it is live, unload it, and look at the kernel log and taint flags.
//!
//! Several candidates (the cumulative bundle, or each group's own bundle when the cumulative
//! one failed) are tried one after another in one boot, each with its own agent state and
//! its own kernel-log window, so that one boot names the group that breaks the run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use patchbay_kernels::Kernel;
use patchbay_vm::{Initramfs, VmConfig, VmExit};

/// One bundle to try.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// A short name (letters, digits, `-`): `all`, `group-7`.
    pub label: String,
    /// The bundle file (`.pbb`) the guest's agent applies.
    pub bundle: PathBuf,
    /// Loadable modules whose functions the bundle replaces.
    pub modules: Vec<String>,
}

/// How the verification runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The static agent binary (`patchbay`) to install in the guest.
    pub agent: PathBuf,
    /// Seconds of fork/exec and timer stress while each candidate is live.
    pub stress_seconds: u32,
}

/// What one candidate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Applied, survived the workloads, unloaded, with a clean kernel log and taint.
    Passed,
    /// What went wrong, one line (the agent's error, a bad log line, a new taint, a crash).
    Failed(String),
}

/// The outcome of trying candidates.
#[derive(Debug, Clone)]
pub(crate) struct VerifyRun {
    /// Each candidate's label with its verdict, in the order they were decided.
    pub verdicts: Vec<(String, Verdict)>,
    /// Modules the guest loaded before the candidates (the patched ones and the smoke set).
    pub modules_loaded: Vec<String>,
    /// The workloads each candidate ran under ([`WORKLOADS`]).
    pub workloads: Vec<String>,
    /// Wall-clock seconds of the whole run, every boot included.
    pub seconds: f64,
    /// What the run showed about this kernel rather than the patch (e.g. patched modules that
    /// cannot be reloaded while the patch is live).
    pub notes: Vec<String>,
    /// Guest seconds each candidate's `patchbay apply` took (load and transition).
    pub apply_seconds: Vec<(String, f64)>,
    /// The serial console of the last boot, for the report's failure details.
    pub serial_tail: String,
}

/// Why the verification could not run at all (a candidate that fails is a verdict, not this).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The initramfs could not be assembled or QEMU could not be run.
    #[error("prepare the verification guest: {0}")]
    Guest(#[from] patchbay_vm::VmError),
    /// A file operation on the verification's work files failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`create`, ...).
        action: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The guest's scratch ext4 disk could not be made (mkfs.ext4 missing or failed).
    #[error("mkfs.ext4 for the verification disk failed: {0}; install e2fsprogs")]
    Mkfs(String),
    /// [`VerifyOptions::agent`] is not a file.
    #[error(
        "the agent binary {0} does not exist; build it (`cargo build --release -p patchbay`) \
         and pass --agent, or --no-verify"
    )]
    NoAgent(PathBuf),
    /// [`VerifyOptions::agent`] is not a static x86-64 executable: the busybox guest has no
    /// dynamic loader or libc, so it would not start there and every group would look broken.
    #[error(
        "the agent binary {path} cannot run in the verification guest ({why}); build the \
         static agent (`CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS=\"-C \
         target-feature=+crt-static\" cargo build --release -p patchbay --target \
         x86_64-unknown-linux-gnu`) and pass it with --agent, or --no-verify"
    )]
    AgentNotStatic {
        /// The binary given (or found beside the builder).
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Whether `agent` can run in the guest: an x86-64 ELF executable without a program
/// interpreter (statically linked). `upgrade::run` checks it once, before any build, so that a
/// harness problem is never reported as a group's failure.
pub(crate) fn check_agent(agent: &Path) -> Result<(), VerifyError> {
    let bytes = std::fs::read(agent).map_err(|_| VerifyError::NoAgent(agent.to_path_buf()))?;
    let not_static = |why: &str| VerifyError::AgentNotStatic {
        path: agent.to_path_buf(),
        why: why.to_owned(),
    };
    let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(bytes.as_slice())
        .map_err(|_| not_static("not a 64-bit ELF file"))?;
    use object::read::elf::ProgramHeader as _;
    use object::Object as _;
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(not_static("not built for x86-64"));
    }
    let endian = elf.endian();
    if elf
        .elf_program_headers()
        .iter()
        .any(|header| header.p_type(endian) == object::elf::PT_INTERP)
    {
        return Err(not_static(
            "dynamically linked: it needs a program interpreter the guest does not have",
        ));
    }
    Ok(())
}

/// The workloads every candidate runs while it is live (names as reported).
pub const WORKLOADS: [&str; 6] = [
    "tmpfs-io",
    "ext4-io",
    "loopback-tcp",
    "module-reload",
    "fork-exec-timers",
    "kernel-log-and-taint",
];

/// Kernel log lines that fail a candidate: oopses, warnings, lockups, memory corruption.
const BAD_LOG: &str = "Oops|BUG:|WARNING:|general protection|Kernel panic|Call Trace|UBSAN|KASAN|\
                       corruption|refcount_t:|soft lockup|hard LOCKUP|self-detected stall|\
                       blocked for more than";

/// Taint flags a live patch legitimately sets: O (out-of-tree module), E (unsigned module),
/// K (live patch). Any other new flag fails the candidate.
const ALLOWED_TAINT: u32 = (1 << 12) | (1 << 13) | (1 << 15);

/// A kernel log line without what changes from one occurrence to the next (time, CPU, PID,
/// offsets, addresses): what the baseline is compared by.
const SIGNATURE_FN: &str = r#"signature() {
	sed -E 's/^\[ *[0-9.]+\] //; s/(CPU|PID): *[0-9]+ //g; s/\+0x[0-9a-f]+\/0x[0-9a-f]+//g; s/[0-9a-f]{8,}/X/g'
}
"#;

/// How long the guest's `patchbay unload` waits for the unpatch transition. Under TCG the
/// unpatch of a 100-module bundle takes about a minute (the kernel retries every second and
/// wakes sleeping tasks only every 15 s), right at the agent's 60 s default for real hosts; a
/// patch the guest cannot unload in three minutes is a real failure.
const UNLOAD_TRANSITION_TIMEOUT_SECS: u64 = 180;

/// Modules the smoke workload itself needs (virtio disk, ext4).
const SMOKE_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The guest script: load modules, then for each candidate apply → smoke → unload → check.
fn script(candidates: &[Candidate], stress_seconds: u32) -> String {
    let mut modules: Vec<&str> = candidates
        .iter()
        .flat_map(|c| c.modules.iter().map(String::as_str))
        .collect();
    modules.sort_unstable();
    modules.dedup();
    let mut s = String::new();
    let _ = write!(
        s,
        r#". /lib/pb.sh
ip link set lo up
for m in {smoke_modules}; do modprobe "$m" || echo "smoke module $m did not load"; done
i=0; while [ ! -b /dev/vda ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
# The patched modules that load in this guest at all (a driver may need hardware).
patched_modules=""
for m in {modules}; do
	if modprobe "$m"; then pb_value module-loaded "$m"; patched_modules="$patched_modules $m"
	else pb_value module-failed "$m"; fi
done
# What this kernel logs without any patch (e.g. a crypto self-test that fails under TCG each
# time its module loads): the patched modules go out and in once; those log lines, by their
# signature, are this kernel's and not a candidate's (reported as notes).
{signature_fn}for m in $patched_modules; do modprobe -r "$m" 2>/dev/null; done
for m in $patched_modules; do modprobe "$m" 2>/dev/null; done
dmesg | grep -E '{bad}' | signature | sort -u >/tmp/baseline
while read -r line; do pb_value baseline "$line"; done </tmp/baseline
# busybox grep -v -f with an empty pattern file drops every line: never leave it empty.
echo "patchbay: a line no kernel prints" >>/tmp/baseline
# Patched modules loaded after the patch: livepatch patches each as it comes.
load_patched_modules() {{
	for m in $patched_modules; do
		modprobe "$m" 2>/dev/null && continue
		echo "module-load: $m does not load while the patch is live: $(dmesg | grep -E 'livepatch|module' | tail -n 1)"
		return 1
	done
}}
mkdir -p /mnt/t /mnt/e
smoke() {{
	mount -t tmpfs none /mnt/t || {{ echo "tmpfs-io: mount failed"; return 1; }}
	dd if=/dev/urandom of=/mnt/t/f bs=64k count=64 2>/dev/null && cp /mnt/t/f /mnt/t/g &&
		cmp /mnt/t/f /mnt/t/g && rm /mnt/t/f /mnt/t/g && umount /mnt/t ||
		{{ echo "tmpfs-io: write/copy/compare failed"; return 1; }}
	if [ -b /dev/vda ]; then
		mount -t ext4 /dev/vda /mnt/e || {{ echo "ext4-io: mount failed"; return 1; }}
		dd if=/dev/urandom of=/mnt/e/f bs=64k count=64 2>/dev/null && sync &&
			cp /mnt/e/f /mnt/e/g && cmp /mnt/e/f /mnt/e/g && mkdir -p /mnt/e/d/e &&
			mv /mnt/e/g /mnt/e/d/e/h && rm -r /mnt/e/f /mnt/e/d && umount /mnt/e ||
			{{ echo "ext4-io: write/copy/rename/remove failed"; return 1; }}
	else
		echo "ext4-io: no disk (skipped)"
	fi
	rm -f /tmp/recv
	nc -l -p 7777 >/tmp/recv &
	sleep 0.5
	echo patchbay-loopback | nc 127.0.0.1 7777
	wait
	grep -q patchbay-loopback /tmp/recv || {{ echo "loopback-tcp: data did not arrive"; return 1; }}
	for m in $patched_modules; do
		modprobe -r "$m" 2>/dev/null || continue
		modprobe "$m" && continue
		# 6.1 lacks upstream 0c05e7bd2d01 ("livepatch,x86: Clear relocation targets on a
		# module removal"): a module a live patch patches cannot load again while the
		# patch is live. The kernel refuses it cleanly; that is this kernel, not the fix.
		if dmesg | grep -q 'Skipping invalid relocation target'; then
			pb_value limitation "$m" >/dev/console
			continue
		fi
		echo "module-reload: $m did not load again"
		return 1
	done
	end=$(( $(cut -d. -f1 /proc/uptime) + {stress} ))
	n=0
	while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
		busybox true && sleep 0.02 & busybox true; wait; n=$((n + 1))
	done
	[ "$n" -gt 0 ] || {{ echo "fork-exec-timers: no iteration ran"; return 1; }}
	return 0
}}
check_kernel() {{
	bad=$(dmesg | grep -E '{bad}' | signature | grep -v -x -F -f /tmp/baseline | head -n 3 | tr '\n' ' ')
	[ -z "$bad" ] || {{ echo "kernel log: $bad"; return 1; }}
	t=$(cat /proc/sys/kernel/tainted)
	new=$(( t & ~taint_before & ~{allowed} ))
	[ "$new" -eq 0 ] || {{ echo "kernel taint flags $new appeared (tainted=$t)"; return 1; }}
	return 0
}}
# The agent's whole message on one line (a blocked transition names the tasks, their stacks
# and the replaced functions they sleep in: what the builder drops groups by).
oneline() {{
	echo "$1" | tr '\n' ' ' | cut -c1-6000
}}
# Modules a failed step left unloaded come back for the next candidate.
restore_modules() {{
	for m in {smoke_modules} $patched_modules; do modprobe "$m" 2>/dev/null; done
}}
try() {{
	label=$1
	pb_value candidate-start "$label"
	export PATCHBAY_STATE_DIR=/var/lib/patchbay-$label
	mkdir -p "$PATCHBAY_STATE_DIR"
	dmesg -c >/dev/null
	taint_before=$(cat /proc/sys/kernel/tainted)
	# First as on a host that has not loaded the patched modules yet.
	for m in $patched_modules; do modprobe -r "$m" 2>/dev/null; done
	t0=$(cut -d' ' -f1 /proc/uptime)
	out=$(patchbay apply "/bundles/$label.pbb" 2>&1) ||
		{{ pb_value candidate "$label fail apply: $(oneline "$out")"; restore_modules; return; }}
	pb_value apply-seconds "$label $t0 $(cut -d' ' -f1 /proc/uptime)"
	why=$(load_patched_modules && smoke 2>&1) || {{
		pb_value candidate "$label fail $(echo "$why" | tail -n 1)"
		patchbay unload --transition-timeout {unload_timeout}s >/dev/null 2>&1
		restore_modules
		return
	}}
	out=$(patchbay unload --transition-timeout {unload_timeout}s 2>&1) ||
		{{ pb_value candidate "$label fail unload: $(oneline "$out")"; return; }}
	restore_modules
	# Then as on a host that has: the patch applied to the loaded modules.
	out=$(patchbay apply "/bundles/$label.pbb" 2>&1) ||
		{{ pb_value candidate "$label fail apply over loaded modules: $(oneline "$out")"; return; }}
	out=$(patchbay unload --transition-timeout {unload_timeout}s 2>&1) ||
		{{ pb_value candidate "$label fail unload: $(oneline "$out")"; return; }}
	why=$(check_kernel) || {{ pb_value candidate "$label fail $why"; return; }}
	pb_value candidate "$label ok"
}}
"#,
        signature_fn = SIGNATURE_FN,
        smoke_modules = SMOKE_MODULES.join(" "),
        modules = modules.join(" "),
        stress = stress_seconds,
        unload_timeout = UNLOAD_TRANSITION_TIMEOUT_SECS,
        bad = BAD_LOG,
        allowed = ALLOWED_TAINT,
    );
    for c in candidates {
        let _ = writeln!(s, "try {}", c.label);
    }
    s
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VerifyError {
    let path = path.to_path_buf();
    move |source| VerifyError::Io {
        action,
        path,
        source,
    }
}

/// A fresh 64 MiB ext4 image for the smoke run's disk I/O.
fn ext4_disk(path: &Path) -> Result<(), VerifyError> {
    let file = std::fs::File::create(path).map_err(io("create", path))?;
    file.set_len(64 << 20).map_err(io("size", path))?;
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .output()
        .map_err(|e| VerifyError::Mkfs(e.to_string()))?;
    if !out.status.success() {
        return Err(VerifyError::Mkfs(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// Tries `candidates` in the target kernel. A candidate that crashes the guest fails with the
/// end of the console; the ones after it are tried in a new boot.
pub(crate) fn verify(
    kernel: &Kernel,
    options: &VerifyOptions,
    candidates: &[Candidate],
    work: &Path,
) -> Result<VerifyRun, VerifyError> {
    if !options.agent.is_file() {
        return Err(VerifyError::NoAgent(options.agent.clone()));
    }
    let started = Instant::now();
    let mut run = VerifyRun {
        verdicts: Vec::new(),
        modules_loaded: Vec::new(),
        workloads: WORKLOADS.iter().map(|w| (*w).to_owned()).collect(),
        seconds: 0.0,
        notes: Vec::new(),
        apply_seconds: Vec::new(),
        serial_tail: String::new(),
    };
    let mut remaining: Vec<Candidate> = candidates
        .iter()
        .filter(|c| label_ok(&c.label))
        .cloned()
        .collect();
    let mut boot = 0;
    while !remaining.is_empty() {
        boot += 1;
        let mut initramfs = Initramfs::new()?;
        initramfs.add_file("/bin/patchbay", &options.agent, 0o755)?;
        let mut modules: Vec<&str> = SMOKE_MODULES.to_vec();
        for c in &remaining {
            modules.extend(c.modules.iter().map(String::as_str));
        }
        modules.sort_unstable();
        modules.dedup();
        // A module the kernel package does not have cannot be loaded (the guest reports it).
        let present: Vec<&str> = modules
            .into_iter()
            .filter(|m| kernel.find_module(m).ok().flatten().is_some())
            .collect();
        initramfs.add_kernel_modules(kernel.modules_dir(), &present)?;
        for c in &remaining {
            initramfs.add_file(&format!("/bundles/{}.pbb", c.label), &c.bundle, 0o644)?;
        }
        initramfs.set_scenario(&script(&remaining, options.stress_seconds));
        let cpio = work.join(format!("verify-{boot}.cpio.gz"));
        initramfs.write(&cpio)?;
        let disk = work.join(format!("verify-{boot}.ext4"));
        ext4_disk(&disk)?;
        let mut config = VmConfig::new(kernel.vmlinux(), &cpio);
        config.cpus = 2;
        config.disks = vec![disk.clone()];
        // Boot, module loads, and per candidate: two transitions, the smoke run, two unloads
        // (each may wait its whole timeout); each patched module is loaded, removed and loaded
        // again (seconds each under TCG).
        let per_candidate = |c: &Candidate| {
            60 + 2 * UNLOAD_TRANSITION_TIMEOUT_SECS
                + u64::from(options.stress_seconds) * 2
                + 6 * u64::try_from(c.modules.len()).unwrap_or(u64::MAX / 1024)
        };
        // Boot, module loads and the baseline's unload and load of each.
        config.timeout = Duration::from_secs(
            180 + 9 * u64::try_from(present.len()).unwrap_or(0)
                + remaining.iter().map(per_candidate).sum::<u64>(),
        );
        let vm = patchbay_vm::run(&config)?;
        // The console stays beside the work for whoever reads a failure.
        let log = work.join(format!("verify-{boot}.log"));
        let _ = std::fs::write(&log, &vm.serial_log);
        let _ = std::fs::remove_file(&disk);
        let _ = std::fs::remove_file(&cpio);
        for value in vm.values("apply-seconds") {
            let mut words = value.split_whitespace();
            if let (Some(label), Some(Ok(start)), Some(Ok(end))) = (
                words.next(),
                words.next().map(str::parse::<f64>),
                words.next().map(str::parse::<f64>),
            ) {
                run.apply_seconds.push((label.to_owned(), end - start));
            }
        }
        let mut not_reloadable: Vec<&str> = vm.values("limitation");
        not_reloadable.sort();
        not_reloadable.dedup();
        if let Some(note) = reload_limitation_note(&not_reloadable) {
            if !run.notes.contains(&note) {
                run.notes.push(note);
            }
        }
        for line in vm.values("baseline") {
            let note = format!(
                "this kernel logs \"{line}\" without any patch (when the modules load); not \
                 counted against the patch"
            );
            if !run.notes.contains(&note) {
                run.notes.push(note);
            }
        }
        for m in vm.values("module-loaded") {
            if !run.modules_loaded.iter().any(|l| l == m) {
                run.modules_loaded.push(m.to_owned());
            }
        }
        let tail: String = {
            let lines: Vec<&str> = vm.serial_log.lines().collect();
            let skip = lines.len().saturating_sub(40);
            lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
        };
        run.serial_tail = tail.clone();
        let mut decided = Vec::new();
        for value in vm.values("candidate") {
            let (label, rest) = value.split_once(' ').unwrap_or((value, ""));
            let verdict = if rest == "ok" {
                Verdict::Passed
            } else {
                Verdict::Failed(rest.strip_prefix("fail ").unwrap_or(rest).to_owned())
            };
            decided.push(label.to_owned());
            run.verdicts.push((label.to_owned(), verdict));
        }
        // A candidate that started but never reported took the guest down.
        let started_labels = vm.values("candidate-start");
        if let Some(crashed) = started_labels
            .iter()
            .find(|l| !decided.iter().any(|d| d == *l))
        {
            let why = match vm.exit {
                VmExit::Completed => "the guest script stopped".to_owned(),
                other => other.describe(),
            };
            let last: Vec<&str> = tail.lines().rev().take(3).collect();
            run.verdicts.push((
                (*crashed).to_owned(),
                Verdict::Failed(format!(
                    "{why} while it was live; console: {}",
                    last.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )),
            ));
            decided.push((*crashed).to_owned());
        }
        let before = remaining.len();
        remaining.retain(|c| !decided.contains(&c.label));
        if remaining.len() == before {
            // Nothing was decided: the guest never got to the candidates.
            for c in remaining.drain(..) {
                run.verdicts.push((
                    c.label,
                    Verdict::Failed(format!(
                        "the verification guest did not reach the patch ({}); console: {}",
                        vm.exit.describe(),
                        tail.lines().last().unwrap_or("")
                    )),
                ));
            }
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

/// What the agent says before the functions a blocked task sleeps in (`patchbay` error text).
const SLEEPS_IN_REPLACED: &str = "in functions the patch replaces:";

/// The replaced functions the agent found on the stacks of the tasks that blocked a
/// transition, from a candidate's failure text (the agent's message on one line).
pub(super) fn blocking_functions(failure: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (at, _) in failure.match_indices(SLEEPS_IN_REPLACED) {
        let after = failure.get(at + SLEEPS_IN_REPLACED.len()..).unwrap_or("");
        for word in after.split_whitespace() {
            let name = word.trim_end_matches(',');
            if !name.is_empty() && !found.iter().any(|f| f == name) {
                found.push(name.to_owned());
            }
            if !word.ends_with(',') {
                break;
            }
        }
    }
    found
}

/// Whether `failure` is a transition that outlived the agent's wait without any task named as
/// sleeping in a function the patch replaces (no group to blame: the guest was slow).
pub(super) fn is_unattributed_stall(failure: &str) -> bool {
    let stalled = failure.contains(" blocked by ") && failure.contains("(waited ");
    stalled && blocking_functions(failure).is_empty()
}

/// One note for every module the kernel would refuse to reload while the patch is live (a
/// note per module made a report of a hundred lines saying the same thing).
fn reload_limitation_note(modules: &[&str]) -> Option<String> {
    let (subject, which) = match modules {
        [] => return None,
        [one] => (format!("module {one}"), "it"),
        _ => (
            format!("{} modules ({})", modules.len(), modules.join(", ")),
            "one of them",
        ),
    };
    Some(format!(
        "{subject} cannot be reloaded while the patch is live: this kernel lacks upstream \
         commit 0c05e7bd2d01 (livepatch,x86: clear relocation targets on a module removal), so \
         the kernel refuses the reload cleanly; unload the patch (`patchbay unload`) before \
         reloading {which}"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a_stall_naming_no_replaced_function_is_the_guest() {
        let unnamed = "unload: patchbay: error: unload of level 1 blocked by tasks that could \
                       not be identified in /proc (waited 60.0 s); reverted; level 1 stays active";
        assert!(is_unattributed_stall(unnamed));
        let named = "apply: transition to level 1 blocked by task 96 kworker (waited 60.0 s); \
                     reverted   task 96 kworker sleeps in:     [<0>] __schedule+0x1/0x2     in \
                     functions the patch replaces: rescuer_thread";
        assert!(!is_unattributed_stall(named));
        assert!(!is_unattributed_stall(
            "kernel log: BUG: unable to handle page fault"
        ));
    }

    #[test]
    fn functions_a_blocked_transition_names() {
        let failure = "apply over loaded modules: transition to level 1 blocked by task 96 \
                       kworker, task 120 kauditd (waited 60.0 s); reverted   task 96 kworker \
                       sleeps in:     [<0>] __schedule+0x1/0x2     in functions the patch \
                       replaces: rescuer_thread, worker_thread.isra.0   task 120 kauditd sleeps \
                       in:     [<0>] kauditd_thread+0x1/0x2     in functions the patch replaces: \
                       kauditd_thread These tasks sleep inside a function the patch replaces.";
        assert_eq!(
            blocking_functions(failure),
            vec!["rescuer_thread", "worker_thread.isra.0", "kauditd_thread"]
        );
        assert!(blocking_functions("apply: refused: bad signature").is_empty());
    }

    /// The baseline filter as the guest runs it (busybox, as in the initramfs).
    #[test]
    fn lines_the_kernel_logs_without_a_patch_are_not_the_candidate_s() {
        let run = |baseline: &str, candidate: &str| -> String {
            let script = format!(
                "{SIGNATURE_FN}\nprintf '{baseline}' | signature | sort -u >/tmp/pb-baseline.$$\n\
                 echo 'patchbay: a line no kernel prints' >>/tmp/pb-baseline.$$\n\
                 printf '{candidate}' | signature | grep -v -x -F -f /tmp/pb-baseline.$$\n\
                 rm -f /tmp/pb-baseline.$$\n"
            );
            let out = std::process::Command::new("busybox")
                .args(["sh", "-c", &script])
                .output()
                .expect("busybox (busybox-static, installed by scripts/setup)");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let warn = |t: &str, pid: u32| {
            format!("[ {t}] WARNING: CPU: 1 PID: {pid} at crypto/testmgr.c:5907 alg_test.cold+0x7c/0xf5\\n")
        };
        // The same warning later, from another task: the kernel's, not the patch's.
        let out = run(&warn("69.72", 372), &warn("203.76", 2254));
        assert_eq!(out, "", "{out}");
        // A new one is kept, with what identifies it.
        let oops = "[ 204.1] BUG: kernel NULL pointer dereference, address: 0000000000000008\\n";
        let out = run(&warn("69.72", 372), oops);
        assert_eq!(out, "BUG: kernel NULL pointer dereference, address: X\n");
        // No baseline at all filters nothing.
        let out = run("", &warn("203.76", 2254));
        assert_eq!(out, "WARNING: at crypto/testmgr.c:5907 alg_test.cold\n");
    }

    #[test]
    fn the_script_tries_each_candidate_and_loads_their_modules_once() {
        let c = |label: &str, modules: &[&str]| Candidate {
            label: label.to_owned(),
            bundle: PathBuf::from("/x"),
            modules: modules.iter().map(|m| (*m).to_owned()).collect(),
        };
        let s = script(
            &[c("group-1", &["ext4", "nfsd"]), c("group-2", &["nfsd"])],
            7,
        );
        assert!(s.contains("for m in ext4 nfsd; do"), "{s}");
        assert!(s.contains("try group-1\ntry group-2\n"), "{s}");
        assert!(s.contains("+ 7 ))"), "stress time used: {s}");
        assert!(s.contains("s/[0-9a-f]{8,}/X/g'\n}\n"), "{s}");
        assert!(s.contains("grep -v -x -F -f /tmp/baseline"), "{s}");
        assert_eq!(
            s.matches("patchbay unload --transition-timeout 180s")
                .count(),
            3,
            "every unload waits the guest's longer timeout: {s}"
        );
        assert!(!s.contains("patchbay unload 2>"), "{s}");
        assert!(label_ok("group-12") && !label_ok("a b") && !label_ok(""));
    }

    #[test]
    fn modules_that_cannot_be_reloaded_make_one_note() {
        assert_eq!(reload_limitation_note(&[]), None);
        let one = reload_limitation_note(&["nf_tables"]).unwrap();
        assert!(
            one.starts_with("module nf_tables cannot be reloaded"),
            "{one}"
        );
        assert!(one.ends_with("before reloading it"), "{one}");
        let many = reload_limitation_note(&["btrfs", "nf_tables", "xfs"]).unwrap();
        assert!(
            many.starts_with("3 modules (btrfs, nf_tables, xfs) cannot be reloaded"),
            "{many}"
        );
    }

    #[test]
    fn only_a_static_x86_64_agent_is_taken_for_the_guest() {
        // This test binary is dynamically linked (the workspace builds without crt-static).
        let this = std::env::current_exe().unwrap();
        match check_agent(&this) {
            Err(VerifyError::AgentNotStatic { why, .. }) => {
                assert!(why.contains("dynamically linked"), "{why}")
            }
            other => panic!("a dynamic binary must be refused, got {other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("patchbay");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(matches!(
            check_agent(&script),
            Err(VerifyError::AgentNotStatic { .. })
        ));
        assert!(matches!(
            check_agent(&dir.path().join("missing")),
            Err(VerifyError::NoAgent(_))
        ));
        // A static executable: compiled here with gcc-12 -static.
        let c = dir.path().join("s.c");
        std::fs::write(&c, "int main(void) { return 0; }\n").unwrap();
        let exe = dir.path().join("static-agent");
        let built = std::process::Command::new("gcc-12")
            .args(["-static", "-o"])
            .arg(&exe)
            .arg(&c)
            .status()
            .unwrap();
        assert!(built.success());
        check_agent(&exe).unwrap();
    }
}
