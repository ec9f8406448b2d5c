//! Where a kernel's objects are compiled: with the host's compiler when it is exactly the one
//! the kernel was built with, else inside a build root of the kernel's Debian release.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::buildroot::{self, BuildRoot, DebianSuite};
use crate::{Kernel, KernelError};

/// How commands that compile for one kernel are run.
#[derive(Debug, Clone)]
pub enum Toolchain {
    /// The host has the kernel's exact compiler (Debian 12's gcc-12 for 6.1 and `+deb12`).
    Host,
    /// A build root of the kernel's Debian release (`+deb13` kernels: gcc-14).
    BuildRoot(BuildRoot),
}

impl Toolchain {
    /// A command running `program` with this toolchain; `binds` are the directories the
    /// command reads or writes (used by a build root, which sees only those of the host).
    pub fn command(&self, program: impl AsRef<OsStr>, binds: &[&Path]) -> Command {
        match self {
            Toolchain::Host => Command::new(program),
            Toolchain::BuildRoot(root) => root.command(program, binds),
        }
    }

    /// For messages: `the host` or `the trixie build root`.
    pub fn describe(&self) -> String {
        match self {
            Toolchain::Host => "the host".to_string(),
            Toolchain::BuildRoot(root) => format!("the {} build root", root.suite()),
        }
    }
}

impl Kernel {
    /// `CONFIG_CC_VERSION_TEXT` of the kernel's config, unquoted: the compiler that built it.
    pub fn compiler_version_text(&self) -> Result<String, KernelError> {
        let config = self.config();
        let text = fs::read_to_string(&config).map_err(|e| KernelError::io("read", &config, e))?;
        text.lines()
            .find_map(|line| line.strip_prefix("CONFIG_CC_VERSION_TEXT="))
            .map(|value| value.trim().trim_matches('"').to_string())
            .ok_or_else(|| KernelError::CacheEntry {
                dir: config.clone(),
                reason: "the config names no CONFIG_CC_VERSION_TEXT".into(),
            })
    }

    /// The toolchain with exactly this kernel's compiler: the host's when it has it, else
    /// the build root of the Debian release whose gcc built the kernel (made once, cached).
    pub fn toolchain(&self) -> Result<Toolchain, KernelError> {
        let wanted = self.compiler_version_text()?;
        if buildroot::host_has_compiler(&wanted) {
            return Ok(Toolchain::Host);
        }
        let suite = DebianSuite::for_compiler_version(&wanted).ok_or_else(|| {
            KernelError::CompilerUnavailable {
                kernel: self.release().to_string(),
                compiler: wanted.clone(),
                reason: "neither the host nor a Debian build root Patchbay knows has it".into(),
            }
        })?;
        let root = BuildRoot::ensure(suite)?;
        if !root.has_compiler(&wanted)? {
            return Err(KernelError::CompilerUnavailable {
                kernel: self.release().to_string(),
                compiler: wanted,
                reason: format!(
                    "the {suite} build root has {:?} (Debian updated gcc since the kernel was \
                     built, or the other way round); remove {} to make it anew",
                    root.recorded_compiler(),
                    root.path().parent().unwrap_or(&root.path()).display()
                ),
            });
        }
        Ok(Toolchain::BuildRoot(root))
    }
}
