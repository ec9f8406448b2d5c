//! Boots the newest Debian 6.1 kernel (and, for compressed modules, a 6.12 one; fetched into the
//! cache on first use) under QEMU TCG.
//! Each boot takes a few seconds; the timeout test takes 20 s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use patchbay_kernels::{fetch_selector, KernelSelector};
use patchbay_vm::{check_report, run, Initramfs, VmConfig, VmExit, VmRun};

struct TestKernel {
    vmlinux: PathBuf,
    modules_dir: PathBuf,
}

fn kernel() -> &'static TestKernel {
    static KERNEL: OnceLock<TestKernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let kernel = fetch_selector(&KernelSelector::newest())
            .unwrap_or_else(|error| panic!("fetching the newest kernel: {error}"));
        TestKernel {
            vmlinux: kernel.vmlinux().to_path_buf(),
            modules_dir: kernel.modules_dir().to_path_buf(),
        }
    })
}

fn boot_with(initramfs: &Initramfs, extra_cmdline: &str, timeout: Duration) -> VmRun {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio.gz");
    initramfs.write(&initrd).unwrap();
    let mut config = VmConfig::new(&kernel().vmlinux, &initrd);
    config.extra_cmdline = extra_cmdline.to_owned();
    config.timeout = timeout;
    let run = run(&config).unwrap();
    eprintln!(
        "boot: {:?}; /init after {:?} host wall (guest uptime {:?}); total wall {:?}",
        run.exit, run.boot_to_init, run.guest_uptime_at_init, run.wall
    );
    run
}

fn boot(script: &str, extra_cmdline: &str, timeout: Duration) -> VmRun {
    let mut initramfs = Initramfs::new().unwrap();
    initramfs.set_scenario(script);
    boot_with(&initramfs, extra_cmdline, timeout)
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn boots_and_reports_checks() {
    let marker = format!("patchbay.test_marker={}", std::process::id());
    let script = format!(
        r#". /lib/pb.sh
pb_expect_contains cmdline /proc/cmdline {marker}
pb_check sysfs-mounted test -d /sys/kernel
pb_check tmp-writable sh -c 'echo x > /tmp/x'
pb_value kernel "$(uname -r)"
pb_value uptime_ms "$(pb_uptime_ms)"
"#
    );
    let run = boot(&script, &marker, Duration::from_secs(120));
    let passed = check_report(&run).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(passed, vec!["cmdline", "sysfs-mounted", "tmp-writable"]);
    assert_eq!(run.exit, VmExit::Completed);
    assert_eq!(run.scenario_status, Some(0));
    assert!(run.boot_to_init.is_some(), "{}", run.serial_log);
    assert!(run.boot_to_init < Some(run.wall));
    let uptime_ms: u64 = run.values("uptime_ms")[0].parse().unwrap();
    assert!(uptime_ms > 0);
    let release = kernel()
        .modules_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(run.values("kernel"), vec![release.as_str()]);
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn failing_check_is_reported() {
    let run = boot(
        ". /lib/pb.sh\npb_expect_contains absent /proc/cmdline no-such-marker\nexit 0\n",
        "",
        Duration::from_secs(120),
    );
    let error = check_report(&run).unwrap_err().to_string();
    assert!(error.contains("absent (exit status 1)"), "{error}");
    // pb_expect_contains shows the file it searched.
    assert!(error.contains("console=ttyS0"), "{error}");
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn timeout_kills_the_vm() {
    let run = boot(
        "echo about-to-sleep\nsleep 1000\n",
        "",
        Duration::from_secs(20),
    );
    assert_eq!(run.exit, VmExit::TimedOut);
    assert!(run.wall < Duration::from_secs(30), "{:?}", run.wall);
    let error = run.expect_completed().unwrap_err().to_string();
    assert!(error.contains("timed out"), "{error}");
    assert!(error.contains("about-to-sleep"), "{error}");
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn kernel_panic_ends_the_run() {
    let run = boot(
        "echo before-crash\necho c > /proc/sysrq-trigger\n",
        "",
        Duration::from_secs(120),
    );
    assert_eq!(run.exit, VmExit::NoEndMarker);
    let error = check_report(&run).unwrap_err().to_string();
    assert!(error.contains("Kernel panic"), "{error}");
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn modprobe_loads_dependencies() {
    let mut initramfs = Initramfs::new().unwrap();
    initramfs
        .add_kernel_modules(&kernel().modules_dir, &["9p"])
        .unwrap()
        .set_scenario(
            ". /lib/pb.sh
pb_check modprobe modprobe 9p
pb_expect_contains netfs-loaded /proc/modules netfs
pb_expect_contains 9pnet-loaded /proc/modules 9pnet
",
        );
    let run = boot_with(&initramfs, "", Duration::from_secs(120));
    let passed = check_report(&run).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(passed, vec!["modprobe", "netfs-loaded", "9pnet-loaded"]);
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn qemu_failure_is_reported() {
    // Needs no real kernel: QEMU rejects the argument before loading anything.
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio.gz");
    Initramfs::new().unwrap().write(&initrd).unwrap();
    let mut config = VmConfig::new(&initrd, &initrd);
    config.qemu_args = vec!["-no-such-option".to_owned()];
    let run = run(&config).unwrap();
    assert!(
        matches!(run.exit, VmExit::QemuFailed(status) if status != 0),
        "{:?}",
        run.exit
    );
    let error = run.expect_completed().unwrap_err().to_string();
    assert!(
        error.contains("no-such-option"),
        "QEMU's stderr is shown: {error}"
    );
}

/// The guest reaches one host loopback port through `guestfwd` (several connections, each
/// with its own forwarder) and nothing else: `restrict=on` keeps it off every other address.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn guest_reaches_only_the_forwarded_host_port() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let body = format!("hello from the host, connection {n}\n");
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    // Answers if the guest ever gets through to a port that is not forwarded.
    std::thread::spawn(move || {
        for stream in other.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.write_all(b"reachable\n");
        }
    });
    let mut initramfs = Initramfs::new().unwrap();
    initramfs
        .add_kernel_modules(&kernel().modules_dir, &["virtio_pci", "virtio_net"])
        .unwrap();
    initramfs.set_scenario(&format!(
        r#". /lib/pb.sh
pb_check net-up pb_net_up
pb_check first-request sh -c 'printf "GET / HTTP/1.0\r\n\r\n" | nc 10.0.2.100 8080 > /tmp/a; cat /tmp/a; grep -q "connection 0" /tmp/a'
pb_check second-request sh -c 'printf "GET / HTTP/1.0\r\n\r\n" | nc 10.0.2.100 8080 > /tmp/b; grep -q "connection 1" /tmp/b'
pb_check other-host-port-unreachable sh -c 'printf x | nc -w 5 10.0.2.2 {other_port} > /tmp/c; ! grep -q reachable /tmp/c'
"#
    ));
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio.gz");
    initramfs.write(&initrd).unwrap();
    let mut config = VmConfig::new(&kernel().vmlinux, &initrd);
    config.network = patchbay_vm::Network::ForwardToHost {
        guest_port: 8080,
        host_port,
    };
    let run = run(&config).unwrap();
    let passed = check_report(&run).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(passed.len(), 4, "{}", run.serial_log);
}

/// Debian's 6.12 ships `.ko.xz` modules: they reach the guest decompressed, with their
/// dependencies, and load with busybox's modprobe.
#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn compressed_modules_of_a_6_12_kernel_load() {
    let line =
        patchbay_kernels::KernelLine::choose(Some("6.12".parse().unwrap()), None, None).unwrap();
    let kernel = fetch_selector(&KernelSelector::Newest(line)).unwrap();
    let mut initramfs = Initramfs::new().unwrap();
    initramfs
        .add_kernel_modules(kernel.modules_dir(), &["9p"])
        .unwrap()
        .set_scenario(
            ". /lib/pb.sh
pb_check modprobe modprobe 9p
pb_expect_contains 9p-loaded /proc/modules 9p
pb_expect_contains 9pnet-loaded /proc/modules 9pnet
",
        );
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio.gz");
    initramfs.write(&initrd).unwrap();
    let mut config = VmConfig::new(kernel.vmlinux(), &initrd);
    config.timeout = Duration::from_secs(120);
    let run = run(&config).unwrap();
    let passed = check_report(&run).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(passed, vec!["modprobe", "9p-loaded", "9pnet-loaded"]);
}
