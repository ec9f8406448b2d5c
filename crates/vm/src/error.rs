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
    /// The busybox binary for the guest could not be read.
    BusyboxMissing {
        /// Where busybox was looked for.
        path: PathBuf,
        /// Why reading it failed.
        cause: std::io::Error,
    },

    #[error(
        "{path} is not a statically linked ELF executable ({reason}); the guest has no libc, install the static build with `apt-get install busybox-static`"
    )]
    /// The busybox binary is dynamically linked (or not an ELF executable at all).
    BusyboxNotStatic {
        /// The busybox binary.
        path: PathBuf,
        /// What the ELF check found.
        reason: String,
    },

    #[error("cannot read host file {path} for the initramfs: {cause}; check that it exists and is readable")]
    /// A host file to copy into the initramfs could not be read.
    ReadHostFile {
        /// The host file.
        path: PathBuf,
        /// Why reading it failed.
        cause: std::io::Error,
    },

    #[error("invalid guest path {path:?}: {reason}; use an absolute path like /bin/tool without `.`/`..` components")]
    /// A guest path is not absolute, or has empty, `.`, `..` or NUL parts.
    InvalidGuestPath {
        /// The path as given.
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    #[error("guest path {path:?} conflicts with an existing initramfs entry: {reason}")]
    /// A guest path clashes with an entry already added (e.g. a file where a directory is).
    GuestPathConflict {
        /// The path being added.
        path: String,
        /// How it clashes.
        reason: &'static str,
    },

    #[error("guest file {path:?} is {size} bytes, more than the 4 GiB a newc cpio entry can hold")]
    /// A guest file is larger than a newc cpio entry can record (4 GiB).
    EntryTooLarge {
        /// The guest path.
        path: String,
        /// Its size in bytes.
        size: usize,
    },

    #[error(
        "cannot write initramfs {path}: {cause}; check that the directory exists and is writable"
    )]
    /// The initramfs archive could not be written.
    WriteInitramfs {
        /// The output file (`<memory>` for [`crate::Initramfs::to_cpio_bytes`]).
        path: PathBuf,
        /// Why writing failed.
        cause: std::io::Error,
    },

    #[error("cannot read kernel modules directory {path}: {cause}; pass the unpacked lib/modules/<release> directory of the kernel")]
    /// The `lib/modules/<release>` directory could not be read.
    ModulesDir {
        /// The directory given.
        path: PathBuf,
        /// Why reading it failed.
        cause: std::io::Error,
    },

    #[error("kernel modules directory {path} has no usable release name; pass the lib/modules/<release> directory itself")]
    /// The modules directory's name (the release, e.g. `6.1.0-18-amd64`) is missing or hidden.
    ModulesRelease {
        /// The directory given.
        path: PathBuf,
    },

    #[error("kernel module {name:?} not found under {dir} (looked for {name}.ko, `-` and `_` treated alike); check the name with `find {dir} -name '*.ko*'`")]
    /// A requested (or depended-on) module has no `.ko` file in the modules directory.
    ModuleNotFound {
        /// The module name, as asked for or as named in a `depends=` list.
        name: String,
        /// The modules directory searched.
        dir: PathBuf,
    },

    #[error("cannot read the .modinfo section of kernel module {path}: {reason}; the file may be corrupt or not a kernel module")]
    /// A module's `.modinfo` section (its dependencies) could not be read.
    ModuleInfo {
        /// The module file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    #[error("{what} {path} is not readable: {cause}; build or fetch it before starting the VM")]
    /// The kernel or initramfs to boot cannot be opened.
    MissingInput {
        /// Which input: `kernel (vmlinux)` or `initramfs`.
        what: &'static str,
        /// The path in the [`crate::VmConfig`].
        path: PathBuf,
        /// Why opening it failed.
        cause: std::io::Error,
    },

    #[error("cannot start {binary}: {cause}; install QEMU with `apt-get install qemu-system-x86`")]
    /// QEMU could not be started.
    QemuSpawn {
        /// The QEMU binary ([`crate::VmConfig::qemu_binary`]).
        binary: PathBuf,
        /// Why starting it failed.
        cause: std::io::Error,
    },

    #[error("lost control of the QEMU process: {cause}")]
    /// Waiting for the QEMU process failed.
    QemuWait {
        /// The operating system's error.
        cause: std::io::Error,
    },

    #[error("the VM run did not complete: {} after {:.1} s; look for a kernel panic or a hung scenario below, or raise the timeout if the guest was only slow\n{}--- serial log ---\n{serial_log}\n--- end of serial log ---", exit.describe(), wall.as_secs_f64(), stderr_section(qemu_stderr))]
    /// The guest did not run `/init` to its end (timeout, panic, QEMU failure).
    RunIncomplete {
        /// How the run ended.
        exit: VmExit,
        /// Host wall time of the run.
        wall: Duration,
        /// What QEMU printed on stderr.
        qemu_stderr: String,
        /// The whole serial console.
        serial_log: String,
    },

    #[error("scenario checks failed: {}; see the serial log below\n--- serial log ---\n{serial_log}\n--- end of serial log ---", failed.join(", "))]
    /// One or more `PB: check` lines reported `fail` or were malformed.
    ChecksFailed {
        /// Each failed check, e.g. `cmdline (exit status 1)`.
        failed: Vec<String>,
        /// The whole serial console.
        serial_log: String,
    },

    #[error("the scenario script exited with status {status}; a command in it failed, see the serial log below\n--- serial log ---\n{serial_log}\n--- end of serial log ---")]
    /// `/scenario.sh` exited with a non-zero status.
    ScenarioFailed {
        /// Its exit status.
        status: i32,
        /// The whole serial console.
        serial_log: String,
    },
}

fn stderr_section(qemu_stderr: &str) -> String {
    if qemu_stderr.trim().is_empty() {
        String::new()
    } else {
        format!("--- QEMU stderr ---\n{qemu_stderr}\n")
    }
}
