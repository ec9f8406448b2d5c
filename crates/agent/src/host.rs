//! The agent's view of the machine: where the kernel's files are, the two module syscalls, and
//! time. Everything is behind a trait or a path so the state machine runs against a fake kernel
//! in tests.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use patchbay_core::ModuleName;

/// Where the kernel-facing files live. Real values by default; tests point them into a tempdir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPaths {
    /// `/sys/kernel/livepatch`: one directory per loaded livepatch.
    pub livepatch_dir: PathBuf,
    /// `/proc`: per-task `patch_state`, `comm`, `stack`, and `modules`.
    pub proc_dir: PathBuf,
    /// `/sys/kernel/notes`: the kernel's raw ELF notes (for the build-id).
    pub notes_path: PathBuf,
}

impl Default for KernelPaths {
    fn default() -> Self {
        KernelPaths {
            livepatch_dir: PathBuf::from("/sys/kernel/livepatch"),
            proc_dir: PathBuf::from("/proc"),
            notes_path: PathBuf::from("/sys/kernel/notes"),
        }
    }
}

/// The syscalls the agent needs from the kernel.
pub trait KernelSyscalls {
    /// The running kernel's release (`uname -r`).
    fn release(&self) -> io::Result<String>;
    /// Loads the module in `module` (`finit_module(fd, "", 0)`). The kernel reads the file from
    /// its start, whatever the file position.
    fn load_module(&self, module: &File) -> io::Result<()>;
    /// Removes a module (`delete_module(name, O_NONBLOCK)`): fails with `EAGAIN`/`EBUSY` while
    /// it is still in use, `ENOENT` when it is not loaded.
    fn delete_module(&self, name: &ModuleName) -> io::Result<()>;
    /// Whether this process may load and remove modules; `Err` says why not.
    fn check_privileges(&self) -> Result<(), String>;
}

/// Monotonic time; a trait so tests run transitions in virtual time.
pub trait Clock {
    /// Time since an arbitrary fixed point.
    fn now(&self) -> Duration;
    /// Waits `duration`.
    fn sleep(&self, duration: Duration);
}

/// The real kernel, through libc.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemKernel;

impl KernelSyscalls for SystemKernel {
    fn release(&self) -> io::Result<String> {
        // SAFETY: `utsname` is a plain C struct of byte arrays; all-zero is a valid value.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `uts` is a valid, writable utsname that outlives the call.
        let rc = unsafe { libc::uname(&mut uts) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // The field is NUL-terminated; stop at the NUL or the end of the array, whichever first.
        let bytes: Vec<u8> = uts
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn load_module(&self, module: &File) -> io::Result<()> {
        let params = c"";
        // SAFETY: finit_module(int fd, const char *params, int flags): the fd is open for the
        // whole call (borrowed from `module`), `params` is a NUL-terminated static string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                module.as_raw_fd(),
                params.as_ptr(),
                0 as libc::c_int,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn delete_module(&self, name: &ModuleName) -> io::Result<()> {
        // A ModuleName holds only [a-z0-9_], so it never contains a NUL.
        let name = CString::new(name.as_str())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: delete_module(const char *name, unsigned int flags): `name` is a valid
        // NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_delete_module,
                name.as_ptr(),
                libc::O_NONBLOCK as libc::c_uint,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn check_privileges(&self) -> Result<(), String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(format!(
                "loading and removing kernel modules needs root (running as uid {euid}); \
                 run patchbay as root"
            ));
        }
        Ok(())
    }
}

/// Wall-clock-independent real time.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}
