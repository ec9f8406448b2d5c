//! Booting a kernel + initramfs in QEMU (TCG) and collecting the serial console.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::VmError;
use crate::initramfs::{END_MARKER, INIT_START_MARKER};
use crate::results::{parse_result_line, ResultLine};

/// Always on the kernel command line: serial console, reboot (= QEMU exit) on panic, and no
/// boot chatter so scenario output stays readable.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// How often the run loop looks at QEMU's state.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long to wait for QEMU's output pipes to close after it exited or was killed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds against a guest flooding the console.
const MAX_SERIAL_LOG_BYTES: usize = 32 << 20;
const MAX_LINE_BYTES: usize = 64 << 10;
const MAX_STDERR_BYTES: u64 = 1 << 20;

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Uncompressed ELF kernel, booted through its PVH entry.
    pub vmlinux: PathBuf,
    /// gzip-compressed newc cpio archive (see [`crate::Initramfs`]).
    pub initramfs: PathBuf,
    /// Guest memory in MiB (`-m`).
    pub memory_mib: u32,
    /// Guest CPUs (`-smp`); 1 is fastest under TCG, 2 exercises livepatch's consistency model.
    pub cpus: u32,
    /// QEMU is killed when the guest has not powered off by then.
    pub timeout: Duration,
    /// Appended to [`BASE_CMDLINE`].
    pub extra_cmdline: String,
    /// Appended to QEMU's arguments (e.g. networking).
    pub qemu_args: Vec<String>,
    /// `qemu-system-x86_64` unless set otherwise.
    pub qemu_binary: PathBuf,
    /// No network unless a test needs the server.
    pub network: Network,
    /// Raw disk images attached as virtio disks (`/dev/vda`, `/dev/vdb`, …; the guest needs the
    /// `virtio_pci` and `virtio_blk` modules). They outlive the VM: a second run with the same
    /// image is a reboot with persistent storage.
    pub disks: Vec<PathBuf>,
}

/// The guest's network. Guests never reach anything but what is listed here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// No network device at all (`-nic none`).
    #[default]
    None,
    /// QEMU user networking with `restrict=on` (no traffic leaves the VM) and one `guestfwd`:
    /// connections to `GUEST_SERVER_IP:guest_port` reach `127.0.0.1:host_port` on the host.
    /// The guest needs the `virtio_pci` and `virtio_net` modules (`pb_net_up` loads those that
    /// are not built in).
    ForwardToHost {
        /// The port the guest connects to on [`GUEST_SERVER_IP`].
        guest_port: u16,
        /// The port on the host's loopback the connection reaches.
        host_port: u16,
    },
}

/// The address a guest uses for the forwarded host service.
pub const GUEST_SERVER_IP: &str = "10.0.2.100";

impl Network {
    fn qemu_args(&self) -> Vec<String> {
        match self {
            Network::None => vec!["-nic".to_owned(), "none".to_owned()],
            Network::ForwardToHost {
                guest_port,
                host_port,
            } => vec![
                "-netdev".to_owned(),
                // `cmd:` starts one forwarder per guest connection (a chardev target would
                // carry a single connection for the VM's lifetime).
                format!(
                    "user,id=net0,restrict=on,guestfwd=tcp:{GUEST_SERVER_IP}:{guest_port}-cmd:nc 127.0.0.1 {host_port}"
                ),
                "-device".to_owned(),
                // `romfile=`: no network boot ROM; the kernel boots directly (`-kernel`), and the
                // ROM file (Debian's `ipxe-qemu`) then need not be installed.
                "virtio-net-pci,netdev=net0,romfile=".to_owned(),
            ],
        }
    }
}

impl VmConfig {
    /// 1024 MiB, 1 CPU (livepatch transitions are fastest with one), 120 s timeout.
    pub fn new(vmlinux: impl Into<PathBuf>, initramfs: impl Into<PathBuf>) -> Self {
        Self {
            vmlinux: vmlinux.into(),
            initramfs: initramfs.into(),
            memory_mib: 1024,
            cpus: 1,
            timeout: Duration::from_secs(120),
            extra_cmdline: String::new(),
            qemu_args: Vec::new(),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            network: Network::None,
            disks: Vec::new(),
        }
    }

    /// The full kernel command line.
    pub fn cmdline(&self) -> String {
        let extra = self.extra_cmdline.trim();
        if extra.is_empty() {
            BASE_CMDLINE.to_owned()
        } else {
            format!("{BASE_CMDLINE} {extra}")
        }
    }

    /// QEMU's arguments (without the binary).
    pub fn qemu_command_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["-accel", "tcg", "-cpu", "max", "-nographic", "-no-reboot"]
            .iter()
            .map(|arg| (*arg).to_owned())
            .collect();
        args.extend(self.network.qemu_args());
        for disk in &self.disks {
            args.push("-drive".to_owned());
            // QEMU's option syntax splits at commas; a literal comma in a path is written `,,`.
            args.push(format!(
                "file={},format=raw,if=virtio",
                disk.to_string_lossy().replace(',', ",,")
            ));
        }
        args.extend([
            "-m".to_owned(),
            self.memory_mib.to_string(),
            "-smp".to_owned(),
            self.cpus.to_string(),
            "-kernel".to_owned(),
            self.vmlinux.to_string_lossy().into_owned(),
            "-initrd".to_owned(),
            self.initramfs.to_string_lossy().into_owned(),
            "-append".to_owned(),
            self.cmdline(),
        ]);
        args.extend(self.qemu_args.iter().cloned());
        args
    }
}

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// `/init` printed its end marker and the guest powered off.
    Completed,
    /// The guest was still running at the timeout and QEMU was killed.
    TimedOut,
    /// QEMU exited with this status (128 + signal number when killed by a signal).
    QemuFailed(i32),
    /// QEMU exited normally but `/init` never finished: usually a kernel panic (`panic=-1`
    /// reboots, `-no-reboot` turns that into an exit) or `/init` dying.
    NoEndMarker,
}

impl VmExit {
    /// A short sentence for reports, e.g. "QEMU failed with exit status 1".
    pub fn describe(&self) -> String {
        match self {
            VmExit::Completed => "the guest completed".to_owned(),
            VmExit::TimedOut => "the guest timed out and QEMU was killed".to_owned(),
            VmExit::QemuFailed(status) => format!("QEMU failed with exit status {status}"),
            VmExit::NoEndMarker => {
                "QEMU exited but /init never finished (kernel panic or /init died?)".to_owned()
            }
        }
    }
}

/// Everything observed during one boot.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// The serial console, `\r` removed.
    pub serial_log: String,
    /// `PB: <key> <value>` lines, in order.
    pub lines: Vec<ResultLine>,
    /// How the run ended; anything but [`VmExit::Completed`] means `/init` did not finish.
    pub exit: VmExit,
    /// Host wall time from starting QEMU until `/init` started (kernel boot under TCG).
    pub boot_to_init: Option<Duration>,
    /// Host wall time of the whole run.
    pub wall: Duration,
    /// Guest uptime (`/proc/uptime`) when `/init` started.
    pub guest_uptime_at_init: Option<Duration>,
    /// Exit status of `/scenario.sh`, when it finished.
    pub scenario_status: Option<i32>,
    /// What QEMU itself printed on stderr (at most 1 MiB); empty when it said nothing.
    pub qemu_stderr: String,
}

impl VmRun {
    /// Values of all result lines with this key, in order.
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|line| line.key == key)
            .map(|line| line.value.as_str())
            .collect()
    }

    /// `Ok` when the guest ran `/init` to the end; the error shows the whole serial log.
    pub fn expect_completed(&self) -> Result<&Self, VmError> {
        if self.exit == VmExit::Completed {
            Ok(self)
        } else {
            Err(VmError::RunIncomplete {
                exit: self.exit,
                wall: self.wall,
                qemu_stderr: self.qemu_stderr.clone(),
                serial_log: self.serial_log.clone(),
            })
        }
    }
}

/// Boots the VM, waits until it powers off or the timeout passes, and returns what it printed.
pub fn run(config: &VmConfig) -> Result<VmRun, VmError> {
    run_with_serial_callback(config, &mut |_| {})
}

/// Like [`run`], calling `on_line` with each serial console line as it arrives.
pub fn run_with_serial_callback(
    config: &VmConfig,
    on_line: &mut dyn FnMut(&str),
) -> Result<VmRun, VmError> {
    for (what, path) in [
        ("kernel (vmlinux)", &config.vmlinux),
        ("initramfs", &config.initramfs),
    ] {
        std::fs::File::open(path).map_err(|cause| VmError::MissingInput {
            what,
            path: path.clone(),
            cause,
        })?;
    }

    let start = Instant::now();
    let mut child = Command::new(&config.qemu_binary)
        .args(config.qemu_command_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|cause| VmError::QemuSpawn {
            binary: config.qemu_binary.clone(),
            cause,
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut qemu = KillOnDrop(child);

    let serial_lines = spawn_line_reader(stdout);
    let stderr_text = spawn_stderr_reader(stderr);

    let mut collector = Collector::new(start, on_line);
    let deadline = start + config.timeout;
    let mut stdout_closed = false;
    let mut timed_out = false;
    let status: ExitStatus = loop {
        let wait = POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now()));
        if stdout_closed {
            thread::sleep(wait);
        } else {
            match serial_lines.recv_timeout(wait) {
                Ok((seen_at, line)) => collector.line(seen_at, line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stdout_closed = true,
            }
        }
        if let Some(status) = qemu
            .0
            .try_wait()
            .map_err(|cause| VmError::QemuWait { cause })?
        {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // Kill can only fail if QEMU already exited, which `wait` then reports.
            let _ = qemu.0.kill();
            break qemu.0.wait().map_err(|cause| VmError::QemuWait { cause })?;
        }
    };

    // QEMU is gone; collect what is still in the pipe.
    if !stdout_closed {
        let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let wait = drain_deadline.saturating_duration_since(Instant::now());
            match serial_lines.recv_timeout(wait) {
                Ok((seen_at, line)) => collector.line(seen_at, line),
                Err(_) => break,
            }
        }
    }
    let qemu_stderr = stderr_text.recv_timeout(DRAIN_TIMEOUT).unwrap_or_default();

    let exit = if timed_out {
        VmExit::TimedOut
    } else if status.success() {
        if collector.scenario_status.is_some() {
            VmExit::Completed
        } else {
            VmExit::NoEndMarker
        }
    } else {
        VmExit::QemuFailed(
            status
                .code()
                .or_else(|| status.signal().map(|signal| 128 + signal))
                .unwrap_or(-1),
        )
    };
    Ok(VmRun {
        serial_log: collector.serial_log,
        lines: collector.lines,
        exit,
        boot_to_init: collector.boot_to_init,
        wall: start.elapsed(),
        guest_uptime_at_init: collector.guest_uptime_at_init,
        scenario_status: collector.scenario_status,
        qemu_stderr,
    })
}

/// Kills QEMU if the run is abandoned (error or panic) so no VM outlives its caller.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Collector<'a> {
    start: Instant,
    on_line: &'a mut dyn FnMut(&str),
    serial_log: String,
    log_truncated: bool,
    lines: Vec<ResultLine>,
    boot_to_init: Option<Duration>,
    guest_uptime_at_init: Option<Duration>,
    scenario_status: Option<i32>,
}

impl<'a> Collector<'a> {
    fn new(start: Instant, on_line: &'a mut dyn FnMut(&str)) -> Self {
        Self {
            start,
            on_line,
            serial_log: String::new(),
            log_truncated: false,
            lines: Vec::new(),
            boot_to_init: None,
            guest_uptime_at_init: None,
            scenario_status: None,
        }
    }

    fn line(&mut self, seen_at: Instant, line: String) {
        if let Some(rest) = line.strip_prefix(INIT_START_MARKER) {
            if self.boot_to_init.is_none() {
                self.boot_to_init = Some(seen_at.saturating_duration_since(self.start));
                self.guest_uptime_at_init = rest
                    .split_whitespace()
                    .next()
                    .and_then(parse_uptime_seconds);
            }
        } else if let Some(rest) = line.strip_prefix(END_MARKER) {
            self.scenario_status = rest
                .split_whitespace()
                .next()
                .and_then(|status| status.parse().ok());
        } else if let Some(result) = parse_result_line(&line) {
            self.lines.push(result);
        }
        (self.on_line)(&line);
        if self.serial_log.len() + line.len() < MAX_SERIAL_LOG_BYTES {
            self.serial_log.push_str(&line);
            self.serial_log.push('\n');
        } else if !self.log_truncated {
            self.log_truncated = true;
            self.serial_log
                .push_str("[patchbay-vm: serial log truncated, the guest printed too much]\n");
        }
    }
}

fn parse_uptime_seconds(text: &str) -> Option<Duration> {
    text.parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Splits QEMU's stdout into lines (without `\r`/`\n`), each stamped with when it arrived.
fn spawn_line_reader(stdout: Option<impl Read + Send + 'static>) -> Receiver<(Instant, String)> {
    let (sender, receiver) = mpsc::channel();
    let Some(mut stdout) = stdout else {
        return receiver; // sender dropped: reads as "closed"
    };
    thread::spawn(move || {
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 8192];
        let emit = |bytes: &[u8]| {
            let line = printable_line(&String::from_utf8_lossy(bytes));
            sender.send((Instant::now(), line)).is_ok()
        };
        loop {
            let read = match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            pending.extend_from_slice(chunk.get(..read).unwrap_or_default());
            while let Some(newline) = pending.iter().position(|&byte| byte == b'\n') {
                let rest = pending.split_off(newline + 1);
                if !emit(&pending) {
                    return;
                }
                pending = rest;
            }
            if pending.len() > MAX_LINE_BYTES {
                if !emit(&pending) {
                    return;
                }
                pending.clear();
            }
        }
        if !pending.is_empty() {
            emit(&pending);
        }
    });
    receiver
}

/// The text of a console line without terminal control: escape sequences (SeaBIOS clears the
/// screen, which would also clear the terminal of whoever watches the log), `\r` and other
/// control characters except tab are dropped.
fn printable_line(raw: &str) -> String {
    let mut line = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters, then one final byte in @..=~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: until BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                // Two-byte sequences such as ESC c (reset).
                _ => {}
            },
            '\t' => line.push(c),
            c if c.is_control() => {}
            c => line.push(c),
        }
    }
    line
}

fn spawn_stderr_reader(stderr: Option<impl Read + Send + 'static>) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    let Some(stderr) = stderr else {
        return receiver;
    };
    thread::spawn(move || {
        let mut limited = stderr.take(MAX_STDERR_BYTES);
        let mut bytes = Vec::new();
        let _ = limited.read_to_end(&mut bytes);
        // Keep draining so QEMU never blocks on a full pipe.
        let _ = std::io::copy(&mut limited.into_inner(), &mut std::io::sink());
        let _ = sender.send(String::from_utf8_lossy(&bytes).trim_end().to_owned());
    });
    receiver
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn console_lines_lose_terminal_control() {
        assert_eq!(
            printable_line("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16)\r\n"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(printable_line("a\tb\u{1b}]0;title\u{7}c\r"), "a\tbc");
        assert_eq!(printable_line("PB: check x ok"), "PB: check x ok");
    }

    #[test]
    fn command_line_and_arguments() {
        let mut config = VmConfig::new("/k/vmlinux", "/k/initrd");
        assert_eq!(config.cmdline(), BASE_CMDLINE);
        config.extra_cmdline = " nokaslr ".to_owned();
        config.qemu_args = vec!["-s".to_owned()];
        let args = config.qemu_command_args();
        let joined = args.join(" ");
        assert!(joined.starts_with("-accel tcg -cpu max"), "{joined}");
        assert!(
            joined.contains("-m 1024 -smp 1 -kernel /k/vmlinux -initrd /k/initrd"),
            "{joined}"
        );
        assert!(joined.contains("-nic none"), "{joined}");
        assert_eq!(args[args.len() - 2], "console=ttyS0 panic=-1 quiet nokaslr");
        assert_eq!(args[args.len() - 1], "-s");
    }
}
