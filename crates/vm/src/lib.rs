//! QEMU harness for Patchbay: build an initramfs around a scenario script, boot a Debian
//! kernel under TCG, and read results from the serial console.
//!
//! Guest contract: `/init` mounts proc, sysfs, devtmpfs and /tmp, runs `/scenario.sh` with
//! `sh`, prints an end marker with the script's exit status and powers off. Scenarios report
//! with lines `PB: <key> <value...>`; `. /lib/pb.sh` gives `pb_check`, `pb_expect_contains`,
//! `pb_value` and `pb_uptime_ms`.
#![warn(missing_docs)]

mod cpio;
mod error;
mod initramfs;
mod modules;
mod qemu;
mod results;

pub use error::VmError;
pub use initramfs::{GuestPath, Initramfs, HOST_BUSYBOX, PB_SH};
pub use qemu::{
    run, run_with_serial_callback, Network, VmConfig, VmExit, VmRun, BASE_CMDLINE, GUEST_SERVER_IP,
};
pub use results::{check_report, parse_result_line, ResultLine, CHECK_KEY, RESULT_PREFIX};
