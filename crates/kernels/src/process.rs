//! Running the Debian tools (apt-cache, apt-get, dpkg, xz) with errors that say what to do.

use std::io;
use std::process::{Command, ExitStatus, Output};

use crate::KernelError;

/// The Debian package that provides a tool, for "install X" hints.
fn providing_package(program: &str) -> &'static str {
    match program {
        "apt-get" | "apt-cache" => "apt",
        "dpkg" | "dpkg-deb" => "dpkg",
        "xz" => "xz-utils",
        "zstd" => "zstd",
        "mmdebstrap" => "mmdebstrap",
        "unshare" | "mount" => "util-linux",
        _ => "that provides it",
    }
}

/// A shell-like rendering of a command for error messages.
pub(crate) fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

pub(crate) fn spawn_error(command: &Command, source: io::Error) -> KernelError {
    let program = command.get_program().to_string_lossy().into_owned();
    if source.kind() == io::ErrorKind::NotFound {
        let package = providing_package(&program).to_string();
        KernelError::ToolMissing { program, package }
    } else {
        KernelError::CommandFailed {
            command: describe(command),
            status: "could not start".into(),
            stderr: source.to_string(),
            hint: String::new(),
        }
    }
}

/// The last lines of a tool's stderr: enough to see the cause, short enough for a message.
pub(crate) fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(8);
    lines.get(start..).unwrap_or(&[]).join(" | ")
}

pub(crate) fn failure(
    command: &Command,
    status: ExitStatus,
    stderr: &[u8],
    hint: &str,
) -> KernelError {
    KernelError::CommandFailed {
        command: describe(command),
        status: status.to_string(),
        stderr: stderr_tail(stderr),
        hint: if hint.is_empty() {
            String::new()
        } else {
            format!("; {hint}")
        },
    }
}

/// Runs a command to completion with captured output; non-zero exit is an error carrying
/// `hint` (what the user should do).
pub(crate) fn run(command: &mut Command, hint: &str) -> Result<Output, KernelError> {
    // Tool messages end up in our errors; keep them in one language.
    command.env("LC_ALL", "C");
    let output = command.output().map_err(|e| spawn_error(command, e))?;
    if !output.status.success() {
        return Err(failure(command, output.status, &output.stderr, hint));
    }
    Ok(output)
}
