//! Stage 1 of diff mode: can this kernel be live-patched by object diffing, with this compiler,
//! with this diff? Every problem is reported at once, before anything is fetched or compiled.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::process::Command;

use patchbay_kernels::buildroot::{self, DebianSuite};

use super::refusal::{Category, Refusal};

/// A kernel `.config`, parsed.
#[derive(Debug, Clone, Default)]
pub struct KernelConfig {
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Reads the `CONFIG_*=value` lines of a `.config` (quotes around strings dropped);
    /// comments, `# CONFIG_X is not set` and anything else are ignored, so never an error.
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter_map(|line| line.trim().split_once('='))
            .filter(|(key, _)| key.starts_with("CONFIG_"))
            .map(|(key, value)| (key.to_owned(), value.trim_matches('"').to_owned()))
            .collect();
        KernelConfig { values }
    }

    /// `y`, `m`, a string, or `None` when unset.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn is_set(&self, key: &str) -> bool {
        matches!(self.get(key), Some("y" | "m"))
    }
}

/// A reason the build cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreflightProblem {
    /// The kernel has no `CONFIG_LIVEPATCH=y`.
    NoLivepatch,
    /// The kernel has an option that makes object diffing unsafe (FineIBT, LTO, ...).
    UnsupportedOption {
        /// The option (`CONFIG_X86_KERNEL_IBT`).
        option: &'static str,
        /// Why it rules diff mode out.
        why: &'static str,
    },
    /// The config has no `CONFIG_CC_VERSION_TEXT`, so the kernel's compiler is unknown.
    CompilerUnknown,
    /// Neither the host nor a Debian build root has the compiler the kernel was built with.
    CompilerMismatch {
        /// The kernel's `CONFIG_CC_VERSION_TEXT`.
        kernel: String,
        /// The first line of the local compiler's `--version`.
        ours: String,
    },
    /// The compiler the kernel names could not be run here (the error's text).
    CompilerMissing(String),
    /// `patch --dry-run` refused the diff (its output), or `patch` could not be run.
    PatchDoesNotApply(String),
}

impl fmt::Display for PreflightProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreflightProblem::NoLivepatch => f.write_str(
                "the kernel is built without CONFIG_LIVEPATCH=y: it cannot load live patches",
            ),
            PreflightProblem::UnsupportedOption { option, why } => {
                write!(f, "the kernel is built with {option}: {why}")
            }
            PreflightProblem::CompilerUnknown => f.write_str(
                "the kernel config has no CONFIG_CC_VERSION_TEXT; the compiler it was built with \
                 is unknown, so objects cannot be reproduced",
            ),
            PreflightProblem::CompilerMismatch { kernel, ours } => write!(
                f,
                "the kernel was built with \"{kernel}\" but the compiler of that name here is \
                 \"{ours}\" and no Debian build root ships it; objects would differ everywhere: \
                 install exactly that compiler"
            ),
            PreflightProblem::CompilerMissing(e) => {
                write!(
                    f,
                    "cannot run the kernel's compiler ({e}) and no Debian build root ships it: \
                     install it"
                )
            }
            PreflightProblem::PatchDoesNotApply(output) => write!(
                f,
                "the diff does not apply to this kernel's source (rebase it onto this version):\n{output}"
            ),
        }
    }
}

impl PreflightProblem {
    fn category(&self) -> Category {
        match self {
            PreflightProblem::NoLivepatch | PreflightProblem::UnsupportedOption { .. } => {
                Category::KernelConfig
            }
            PreflightProblem::CompilerUnknown
            | PreflightProblem::CompilerMismatch { .. }
            | PreflightProblem::CompilerMissing(_) => Category::Compiler,
            PreflightProblem::PatchDoesNotApply(_) => Category::PatchDoesNotApply,
        }
    }

    /// The problem as a refusal (no file: it is about the kernel, the compiler or the whole diff).
    pub(crate) fn to_refusal(&self) -> Refusal {
        Refusal::new(self.category(), self.to_string())
    }
}

/// Options that make object diffing unsafe or impossible, with why.
const REFUSED_OPTIONS: &[(&str, &str)] = &[
    (
        "CONFIG_LTO_CLANG_FULL",
        "link-time optimisation moves code across objects, so one object's diff is not the change",
    ),
    (
        "CONFIG_LTO_CLANG_THIN",
        "link-time optimisation moves code across objects, so one object's diff is not the change",
    ),
    (
        "CONFIG_RANDSTRUCT_FULL",
        "structure layouts are randomised with a seed we do not have",
    ),
    (
        "CONFIG_RANDSTRUCT_PERFORMANCE",
        "structure layouts are randomised with a seed we do not have",
    ),
    (
        "CONFIG_GCC_PLUGIN_RANDSTRUCT",
        "structure layouts are randomised with a seed we do not have",
    ),
    (
        "CONFIG_CFI_CLANG",
        "control-flow integrity checks would reject calls into the replacement functions",
    ),
    (
        "CONFIG_FINEIBT",
        "FineIBT rewrites every function entry into a hash check that object diffing cannot \
         reproduce for the replacement functions",
    ),
];

/// What a kernel's build does to each object that decides what a compiled translation unit
/// carries and what the patch module's own build must generate (derived from its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLayout {
    /// objtool runs only on the linked module (kbuild's `delay-objtool`: `CONFIG_X86_KERNEL_IBT`
    /// or clang LTO, Debian's 6.12): translation units carry no objtool output, and the patch
    /// module's `objtool --link --module` run makes `.return_sites`, `.call_sites`,
    /// `.ibt_endbr_seal`, ORC, `.static_call_sites` and the `__pfx_` symbols for all of it.
    /// `false` (Debian's 6.1): objtool ran on each object, whose tables are carried.
    pub objtool_on_linked_module: bool,
    /// Indirect branches must land on `ENDBR64` and unused ones are sealed at boot
    /// (`CONFIG_X86_KERNEL_IBT`): the patch may not take the address of a sealed function.
    pub ibt: bool,
}

impl KernelLayout {
    /// The layout of a kernel built with `config`.
    pub fn from_config(config: &KernelConfig) -> KernelLayout {
        let ibt = config.is_set("CONFIG_X86_KERNEL_IBT");
        KernelLayout {
            objtool_on_linked_module: ibt || config.is_set("CONFIG_LTO_CLANG"),
            ibt,
        }
    }

    /// Debian 6.1's layout: objtool on every object, no IBT.
    pub const fn per_object_objtool() -> KernelLayout {
        KernelLayout {
            objtool_on_linked_module: false,
            ibt: false,
        }
    }
}

/// Checks the kernel's configuration.
pub fn check_config(config: &KernelConfig) -> Vec<PreflightProblem> {
    let mut problems = Vec::new();
    if config.get("CONFIG_LIVEPATCH") != Some("y") {
        problems.push(PreflightProblem::NoLivepatch);
    }
    for (option, why) in REFUSED_OPTIONS {
        if config.is_set(option) {
            problems.push(PreflightProblem::UnsupportedOption { option, why });
        }
    }
    problems
}

/// Checks that the kernel's exact compiler can be had: the host's (`gcc-12` for Debian 12's
/// kernels prints exactly the kernel's `CONFIG_CC_VERSION_TEXT`), or a Debian release's
/// build root that ships it (Debian 13's gcc-14; made on first use).
pub fn check_compiler(config: &KernelConfig) -> Vec<PreflightProblem> {
    let Some(kernel) = config.get("CONFIG_CC_VERSION_TEXT") else {
        return vec![PreflightProblem::CompilerUnknown];
    };
    if buildroot::host_has_compiler(kernel) || DebianSuite::for_compiler_version(kernel).is_some() {
        return Vec::new();
    }
    let Some(program) = buildroot::compiler_program(kernel) else {
        return vec![PreflightProblem::CompilerUnknown];
    };
    match Command::new(program).arg("--version").output() {
        Err(e) => vec![PreflightProblem::CompilerMissing(format!("{program}: {e}"))],
        Ok(out) => vec![PreflightProblem::CompilerMismatch {
            kernel: kernel.to_owned(),
            ours: String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned(),
        }],
    }
}

/// Checks that `diff` applies to the tree at `source_dir` (`patch --dry-run`; nothing changes).
pub fn check_patch_applies(source_dir: &Path, diff: &Path) -> Vec<PreflightProblem> {
    let out = Command::new("patch")
        .current_dir(source_dir)
        .args(["-p1", "--dry-run", "--batch", "--force", "--silent", "-i"])
        .arg(diff)
        .env("LC_ALL", "C")
        .output();
    match out {
        Err(e) => vec![PreflightProblem::PatchDoesNotApply(format!(
            "cannot run patch: {e} (apt-get install patch)"
        ))],
        Ok(out) if out.status.success() => Vec::new(),
        Ok(out) => vec![PreflightProblem::PatchDoesNotApply(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn debian_like_config_passes_and_hardening_options_are_refused() {
        let debian = KernelConfig::parse(
            "CONFIG_LIVEPATCH=y\nCONFIG_LTO_NONE=y\nCONFIG_RANDSTRUCT_NONE=y\n\
             # CONFIG_X86_KERNEL_IBT is not set\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\n",
        );
        assert!(check_config(&debian).is_empty());
        assert_eq!(
            debian.get("CONFIG_CC_VERSION_TEXT"),
            Some("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
        );

        assert_eq!(
            KernelLayout::from_config(&debian),
            KernelLayout::per_object_objtool()
        );

        let hardened = KernelConfig::parse(
            "CONFIG_X86_KERNEL_IBT=y\nCONFIG_LTO_CLANG_THIN=y\nCONFIG_RANDSTRUCT_FULL=y\n\
             CONFIG_FINEIBT=y\n",
        );
        let problems = check_config(&hardened);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems.contains(&PreflightProblem::NoLivepatch),
            "{:?} does not contain {:?}",
            problems,
            &PreflightProblem::NoLivepatch
        );
        assert!(
            problems
                .iter()
                .any(|p| p.to_string().contains("CONFIG_FINEIBT")),
            "{problems:?}"
        );
        assert!(
            !problems
                .iter()
                .any(|p| p.to_string().contains("CONFIG_X86_KERNEL_IBT")),
            "{problems:?}"
        );
    }

    #[test]
    fn debian_6_12_with_ibt_is_accepted_and_delays_objtool() {
        let config = KernelConfig::parse(
            "CONFIG_LIVEPATCH=y\nCONFIG_X86_KERNEL_IBT=y\n# CONFIG_FINEIBT is not set\n\
             CONFIG_LTO_NONE=y\nCONFIG_CALL_THUNKS=y\n",
        );
        assert!(check_config(&config).is_empty());
        let layout = KernelLayout::from_config(&config);
        assert!(layout.ibt && layout.objtool_on_linked_module, "{layout:?}");
    }

    #[test]
    fn unknown_compiler_is_refused() {
        let config = KernelConfig::parse("CONFIG_LIVEPATCH=y\n");
        assert_eq!(
            check_compiler(&config),
            vec![PreflightProblem::CompilerUnknown]
        );
        let other = KernelConfig::parse("CONFIG_CC_VERSION_TEXT=\"gcc (GCC) 99.1\"\n");
        let problems = check_compiler(&other);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].to_string().contains("99.1"), "{}", problems[0]);
    }

    #[test]
    fn patch_dry_run_reports_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("fs")).unwrap();
        std::fs::write(dir.path().join("fs/a.c"), "int a = 1;\n").unwrap();
        let good = dir.path().join("good.patch");
        std::fs::write(
            &good,
            "--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n-int a = 1;\n+int a = 2;\n",
        )
        .unwrap();
        assert!(check_patch_applies(dir.path(), &good).is_empty());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("fs/a.c")).unwrap(),
            "int a = 1;\n"
        );
        let bad = dir.path().join("bad.patch");
        std::fs::write(
            &bad,
            "--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n-int a = 7;\n+int a = 2;\n",
        )
        .unwrap();
        let problems = check_patch_applies(dir.path(), &bad);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("does not apply"),
            "{:?} does not contain {:?}",
            problems[0].to_string(),
            "does not apply"
        );
    }
}
