//! Runs kbuild against a kernel's headers tree to build an out-of-tree module.

use std::path::{Path, PathBuf};
use std::process::Command;

use patchbay_kernels::Kernel;

/// Why kbuild did not produce the module.
#[derive(Debug, thiserror::Error)]
pub enum KbuildError {
    /// No toolchain with the kernel's exact compiler (the host lacks it and no build root
    /// could be made).
    #[error("{0}")]
    Toolchain(patchbay_kernels::KernelError),
    /// `make` could not be started at all (usually: not installed).
    #[error("cannot run make (install it: apt-get install make gcc-12): {0}")]
    Spawn(std::io::Error),
    /// kbuild ran and failed (a compile error, an unresolved symbol modpost refused, ...).
    #[error("kbuild failed for the module in {dir} (make exit {status}); its output:\n{output}")]
    Failed {
        /// The module's kbuild directory (`M=`).
        dir: String,
        /// make's exit status, as text (`exit status: 2`).
        status: String,
        /// make's stdout followed by its stderr, untruncated.
        output: String,
    },
    /// objtool found problems in the module (an IBT kernel's objtool checks the linked module
    /// and only warns, exiting 0): each is a module the running kernel could trip over.
    #[error(
        "objtool rejected the module in {dir} (its warnings are errors for a kernel with IBT):\n{}",
        warnings.join("\n")
    )]
    Objtool {
        /// The module's kbuild directory (`M=`).
        dir: String,
        /// The `warning: objtool:` lines, as printed.
        warnings: Vec<String>,
    },
    /// make exited 0 but the expected `<name>.ko` is not there (the path it looked for).
    #[error("kbuild succeeded but {0} was not produced")]
    Missing(String),
    /// `objcopy` could not be started (usually: binutils not installed).
    #[error("cannot run objcopy (install it: apt-get install binutils): {0}")]
    SpawnObjcopy(std::io::Error),
    /// `objcopy --strip-debug` ran and failed; the module is left as it was.
    #[error("objcopy --strip-debug {path} failed ({status}): {stderr}")]
    Strip {
        /// The `.ko` that could not be stripped.
        path: String,
        /// objcopy's exit status, as text.
        status: String,
        /// objcopy's stderr, trimmed.
        stderr: String,
    },
}

/// Removes debug sections from a linked module, as Debian does for its own modules
/// (`INSTALL_MOD_STRIP=1`): a tenth of the size to ship, hash and load. Symbols and
/// relocations stay, so livepatch rewriting still works afterwards.
pub fn strip_debug(ko: &Path) -> Result<(), KbuildError> {
    let out = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(ko)
        .output()
        .map_err(KbuildError::SpawnObjcopy)?;
    if !out.status.success() {
        return Err(KbuildError::Strip {
            path: ko.display().to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Whether symbols the kernel does not export may stay undefined in the linked module
/// (livepatch modules resolve them through klp relocations after linking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndefinedSymbols {
    /// modpost fails on an unresolved symbol (ordinary modules).
    Refuse,
    /// modpost only warns; the caller must resolve every undefined symbol itself.
    AllowForLivepatch,
}

/// Builds the module `name` from the kbuild directory `dir` against the kernel's headers,
/// with the kernel's own compiler (the host's, or its Debian release's build root), returning
/// the path of the linked `.ko`.
pub fn build_module(
    kernel: &Kernel,
    dir: &Path,
    name: &str,
    undefined: UndefinedSymbols,
) -> Result<PathBuf, KbuildError> {
    let toolchain = kernel.toolchain().map_err(KbuildError::Toolchain)?;
    let headers_dir = kernel.headers_dir();
    // The headers tree includes its -common sibling by relative path.
    let headers_parent = headers_dir.parent().unwrap_or(headers_dir);
    let mut make = toolchain.command("make", &[kernel.dir(), headers_parent, dir]);
    make.arg("-C")
        .arg(headers_dir)
        .arg(format!("M={}", dir.display()))
        .arg(format!("-j{}", parallelism()))
        .arg("modules")
        // Reproducible output that does not depend on the builder's locale or environment.
        .env("LC_ALL", "C")
        .env_remove("KBUILD_EXTRA_SYMBOLS")
        .env_remove("ARCH")
        .env_remove("CROSS_COMPILE");
    if undefined == UndefinedSymbols::AllowForLivepatch {
        make.arg("KBUILD_MODPOST_WARN=1");
    }
    let out = make.output().map_err(KbuildError::Spawn)?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(KbuildError::Failed {
            dir: dir.display().to_string(),
            status: out.status.to_string(),
            output,
        });
    }
    // A livepatch module's code is ours (or extracted by us): objtool's word on it is final.
    if undefined == UndefinedSymbols::AllowForLivepatch && objtool_checks_the_module(kernel) {
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        let warnings = objtool_problems(&output);
        if !warnings.is_empty() {
            return Err(KbuildError::Objtool {
                dir: dir.display().to_string(),
                warnings,
            });
        }
    }
    let ko = dir.join(format!("{name}.ko"));
    if !ko.is_file() {
        return Err(KbuildError::Missing(ko.display().to_string()));
    }
    Ok(ko)
}

/// Whether kbuild runs objtool on the linked module, where its warnings are about our code
/// (`CONFIG_X86_KERNEL_IBT`: `delay-objtool`, Debian's 6.12). objtool exits 0 on warnings.
fn objtool_checks_the_module(kernel: &Kernel) -> bool {
    std::fs::read_to_string(kernel.config()).is_ok_and(|config| {
        config
            .lines()
            .any(|l| l.trim() == "CONFIG_X86_KERNEL_IBT=y")
    })
}

/// The `warning: objtool:` lines of a kbuild run that matter: all of them (a `!ENDBR`
/// reference, a naked return, an indirect call, a missing `int3`, "file already has" a table
/// objtool must generate), except one that is harmless: a data relocation to a replacement
/// function (`__patchbay_new__*`) without `ENDBR64`, from the `klp_func` table. livepatch enters
/// a replacement by returning into it from ftrace, never by an indirect branch.
pub fn objtool_problems(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| line.contains("warning: objtool:"))
        .filter(|line| {
            let benign = line
                .split_once("relocation to !ENDBR: ")
                .is_some_and(|(_, target)| {
                    target.starts_with(crate::diff::extract::NEW_FUNCTION_PREFIX)
                });
            !benign
        })
        .map(|line| line.trim().to_owned())
        .collect()
}

/// make's `-j`: every core the builder may use (1 when that cannot be told).
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objtool_warnings_are_problems_except_a_replacement_without_endbr() {
        let output = "  LD [M]  /w/patchbay.o\n\
/w/patchbay.o: warning: objtool: funcs+0x8: data relocation to !ENDBR: __patchbay_new__cmdline_proc_show+0x0\n\
/w/patchbay.o: warning: objtool: bad_ops+0x0: data relocation to !ENDBR: noendbr_fn+0x0\n\
/w/patchbay.o: warning: objtool: file already has .return_sites, skipping\n\
  MODPOST /w/Module.symvers\n";
        assert_eq!(
            objtool_problems(output),
            [
                "/w/patchbay.o: warning: objtool: bad_ops+0x0: data relocation to !ENDBR: noendbr_fn+0x0",
                "/w/patchbay.o: warning: objtool: file already has .return_sites, skipping",
            ]
        );
        assert!(objtool_problems("  CC [M]  x.o\n").is_empty());
    }
}
