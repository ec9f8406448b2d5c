use std::path::PathBuf;
use std::time::Duration;

use crate::qemu::VmExit;

/// Everything that can go wrong while building an initramfs or running a VM.
///
/// Errors that concern a finished VM run carry the whole serial log: the first line of the
/// `Display` output is a one-line summary, the log follows.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "busybox not found at {path}: {cause}; install the static build with `apt-get install busybox-static`"
    )]
    BusyboxMissing {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error(
        "{path} is not a statically linked ELF executable ({reason}); the guest has no libc, install the static build with `apt-get install busybox-static`"
    )]
    BusyboxNotStatic { path: PathBuf, reason: String },

    #[error("cannot read host file {path} for the initramfs: {cause}; check that it exists and is readable")]
    ReadHostFile {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("invalid guest path {path:?}: {reason}; use an absolute path like /bin/tool without `.`/`..` components")]
    InvalidGuestPath { path: String, reason: &'static str },

    #[error("guest path {path:?} conflicts with an existing initramfs entry: {reason}")]
    GuestPathConflict { path: String, reason: &'static str },

    #[error("guest file {path:?} is {size} bytes, more than the 4 GiB a newc cpio entry can hold")]
    EntryTooLarge { path: String, size: usize },

    #[error(
        "cannot write initramfs {path}: {cause}; check that the directory exists and is writable"
    )]
    WriteInitramfs {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("cannot read kernel modules directory {path}: {cause}; pass the unpacked lib/modules/<release> directory of the kernel")]
    ModulesDir {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("kernel modules directory {path} has no usable release name; pass the lib/modules/<release> directory itself")]
    ModulesRelease { path: PathBuf },

    #[error("kernel module {name:?} not found under {dir} (looked for {name}.ko, `-` and `_` treated alike); check the name with `find {dir} -name '*.ko*'`")]
    ModuleNotFound { name: String, dir: PathBuf },

    #[error("kernel module {path} is compressed; only plain .ko files are supported so far (decompress it first)")]
    CompressedModule { path: PathBuf },

    #[error("cannot read the .modinfo section of kernel module {path}: {reason}; the file may be corrupt or not a kernel module")]
    ModuleInfo { path: PathBuf, reason: String },

    #[error("{what} {path} is not readable: {cause}; build or fetch it before starting the VM")]
    MissingInput {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("cannot start {binary}: {cause}; install QEMU with `apt-get install qemu-system-x86`")]
    QemuSpawn {
        binary: PathBuf,
        cause: std::io::Error,
    },

    #[error("lost control of the QEMU process: {cause}")]
    QemuWait { cause: std::io::Error },

    #[error("the VM run did not complete: {} after {:.1} s; look for a kernel panic or a hung scenario below, or raise the timeout if the guest was only slow\n{}--- serial log ---\n{serial_log}\n--- end of serial log ---", exit.describe(), wall.as_secs_f64(), stderr_section(qemu_stderr))]
    RunIncomplete {
        exit: VmExit,
        wall: Duration,
        qemu_stderr: String,
        serial_log: String,
    },

    #[error("scenario checks failed: {}; see the serial log below\n--- serial log ---\n{serial_log}\n--- end of serial log ---", failed.join(", "))]
    ChecksFailed {
        failed: Vec<String>,
        serial_log: String,
    },

    #[error("the scenario script exited with status {status}; a command in it failed, see the serial log below\n--- serial log ---\n{serial_log}\n--- end of serial log ---")]
    ScenarioFailed { status: i32, serial_log: String },
}

fn stderr_section(qemu_stderr: &str) -> String {
    if qemu_stderr.trim().is_empty() {
        String::new()
    } else {
        format!("--- QEMU stderr ---\n{qemu_stderr}\n")
    }
}
