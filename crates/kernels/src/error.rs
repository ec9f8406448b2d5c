use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while resolving, fetching or reading a kernel.
/// Each message names the thing that failed and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("invalid kernel ABI {input:?}: {reason} (expected e.g. \"6.1.0-56-amd64\")")]
    InvalidAbi { input: String, reason: String },

    #[error("invalid kernel selector {input:?}: expected \"newest\", \"older\" or an ABI such as \"6.1.0-56-amd64\"")]
    InvalidSelector { input: String },

    #[error("invalid Debian package version {input:?}: {reason}")]
    InvalidPackageVersion { input: String, reason: String },

    #[error("apt offers no Debian 6.1 amd64 kernels (searched {pattern:?}); run `apt-get update` and check that bookworm and bookworm-security are in the apt sources")]
    NoKernelsAvailable { pattern: String },

    #[error("kernel ABI {abi} is not offered by apt (any more); available: {available}; pick one of those or run `apt-get update`")]
    AbiNotAvailable { abi: String, available: String },

    #[error("no older kernel: apt offers only {available}; `older` needs at least two 6.1 ABIs (run `apt-get update`)")]
    NoOlderKernel { available: String },

    #[error("package {package} is not in apt's package lists (needed for kernel {abi}); run `apt-get update`, or the version was withdrawn: resolve the kernel again")]
    PackageNotInApt { package: String, abi: String },

    #[error("no usable version of {package} for kernel {abi}: needs {requirement}, apt has [{available}]; run `apt-get update`")]
    KbuildUnavailable {
        package: String,
        abi: String,
        requirement: String,
        available: String,
    },

    #[error("`{program}` was not found; install the Debian package {package}")]
    ToolMissing { program: String, package: String },

    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
        /// Already formatted as "; <what to do>" or empty.
        hint: String,
    },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path} is not a usable bzImage: {reason}")]
    BzImage { path: PathBuf, reason: String },

    #[error("{path} is not a usable ELF file: {reason}")]
    Elf { path: PathBuf, reason: String },

    #[error("kernel cache entry {dir} is unusable: {reason}; delete that directory and fetch the kernel again")]
    CacheEntry { dir: PathBuf, reason: String },

    #[error("symbol table line {line}: {reason} (expected \"<hex address> <type> <name>[\\t[module]]\")")]
    SymbolLine { line: usize, reason: String },

    #[error("invalid module name {name:?}: only letters, digits, '-' and '_' are allowed")]
    InvalidModuleName { name: String },

    #[error("no kernel modules (*.ko) under {dir}; the kernel cache entry is incomplete: delete it and fetch again")]
    NoModules { dir: PathBuf },

    #[error("module {path} has no vermagic in its .modinfo section")]
    NoVermagic { path: PathBuf },

    #[error("{path} is not the full System.map ({reason}); the -dbg package {package} changed layout, report this")]
    BadSystemMap {
        path: PathBuf,
        package: String,
        reason: String,
    },

    #[error("{path} is not a kernel headers tree: {reason}; pass the directory of an unpacked linux-headers-<abi> package (the one with Module.symvers)")]
    NotHeadersTree { path: PathBuf, reason: String },

    #[error("headers tree {path} does not match Debian's {abi} packages ({reason}); a patch built against it would not load on that kernel: use the headers of the exact kernel build")]
    HeadersMismatch {
        path: PathBuf,
        abi: String,
        reason: String,
    },
}

impl KernelError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        KernelError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
