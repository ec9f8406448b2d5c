use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while resolving, fetching or reading a kernel.
/// Each message names the thing that failed and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A string is not a Debian kernel release such as `6.1.0-56-amd64` or `6.12.117+deb13-amd64`.
    #[error("{reason} (expected e.g. \"6.1.0-56-amd64\" or \"6.12.117+deb13-amd64\")")]
    InvalidRelease {
        /// The string that was given.
        input: String,
        /// Which part of it is wrong.
        reason: String,
    },

    /// No toolchain has exactly the compiler a kernel was built with.
    #[error("cannot compile for kernel {kernel} with its exact compiler {compiler:?}: {reason}")]
    CompilerUnavailable {
        /// The kernel release.
        kernel: String,
        /// Its `CONFIG_CC_VERSION_TEXT`.
        compiler: String,
        /// Why no toolchain serves.
        reason: String,
    },

    /// A series, Debian release or flavour Patchbay has no line for.
    #[error("Patchbay does not support {line}; supported: {supported}")]
    UnsupportedLine {
        /// What was asked for.
        line: String,
        /// The supported lines.
        supported: String,
    },

    /// A kernel selector is none of `newest`, `older` or a release name.
    #[error("invalid kernel selector {input:?}: expected \"newest\", \"older\" or a release such as \"6.1.0-56-amd64\" or \"6.12.117+deb13-amd64\"")]
    InvalidSelector {
        /// The string that was given.
        input: String,
    },

    /// A Debian package version (`6.1.192-2`) cannot be read as an upstream kernel version.
    #[error("invalid Debian package version {input:?}: {reason}")]
    InvalidPackageVersion {
        /// The package version that was given.
        input: String,
        /// Why it was refused.
        reason: String,
    },

    /// Debian's archive holds no kernel image of a line at all.
    #[error("Debian's archive offers no kernels of {line} (apt lists in {lists}); check the mirror (PATCHBAY_DEBIAN_MIRROR) and remove that directory to refresh it")]
    NoKernelsAvailable {
        /// The line searched.
        line: String,
        /// Patchbay's private apt state directory.
        lists: String,
    },

    /// The exact release asked for is not (or no longer) in Debian's archive.
    #[error("kernel {release} is not offered by Debian's archive (any more); available in its line: {available}; pick one of those")]
    ReleaseNotAvailable {
        /// The release asked for, e.g. `6.1.0-56-amd64`.
        release: String,
        /// What apt offers, as `<abi> (<package version>)`, comma-separated.
        available: String,
    },

    /// `older` was asked for but apt offers fewer than two ABIs.
    #[error("no older kernel of {line}: Debian's archive offers only {available}; `older` needs at least two builds of the line")]
    NoOlderKernel {
        /// The line searched.
        line: String,
        /// What apt offers (one kernel or none), as `<abi> (<package version>)`.
        available: String,
    },

    /// A package a kernel needs (image, headers, -dbg, source) is not in apt's lists.
    #[error("package {package} is not in apt's package lists (needed for kernel {release}); run `apt-get update`, or the version was withdrawn: resolve the kernel again")]
    PackageNotInApt {
        /// The Debian package, e.g. `linux-image-6.1.0-56-amd64`.
        package: String,
        /// The kernel ABI it was needed for.
        release: String,
    },

    /// No version of the kbuild package apt has satisfies the headers' dependency.
    #[error("no usable version of {package} for kernel {release}: needs {requirement}, apt has [{available}]; run `apt-get update`")]
    KbuildUnavailable {
        /// The kbuild package the headers depend on, e.g. `linux-kbuild-6.1`.
        package: String,
        /// The kernel ABI the headers are for.
        release: String,
        /// The dependency as the headers package states it, e.g. `linux-kbuild-6.1 (>= 6.1.192)`.
        requirement: String,
        /// The versions of `package` apt has, comma-separated (may be empty).
        available: String,
    },

    /// An external tool (apt, dpkg-deb, ...) is not installed.
    #[error("`{program}` was not found; install the Debian package {package}")]
    ToolMissing {
        /// The program that could not be started, e.g. `dpkg-deb`.
        program: String,
        /// The Debian package that provides it.
        package: String,
    },

    /// An external command could not start or exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    CommandFailed {
        /// The command line, as run.
        command: String,
        /// Its exit status, or `could not start`.
        status: String,
        /// The last lines of its stderr, joined with ` | `.
        stderr: String,
        /// Already formatted as "; <what to do>" or empty.
        hint: String,
    },

    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase that takes the path: `read`, `create`, ...
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// The kernel image is not a bzImage from which vmlinux can be extracted.
    #[error("{path} is not a usable bzImage: {reason}")]
    BzImage {
        /// The image file, e.g. `boot/vmlinuz-6.1.0-56-amd64`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A vmlinux or module could not be read as ELF, or lacks what was needed from it.
    #[error("{path} is not a usable ELF file: {reason}")]
    Elf {
        /// The file that was read as ELF (vmlinux, a module, a -dbg vmlinux).
        path: PathBuf,
        /// The parser's complaint or the missing part.
        reason: String,
    },

    /// A kernel cache entry exists but is incomplete or does not match what it should hold.
    #[error("kernel cache entry {dir} is unusable: {reason}; delete that directory and fetch the kernel again")]
    CacheEntry {
        /// The cache entry's directory (`<cache_root>/<abi>/<package_version>/`).
        dir: PathBuf,
        /// What is missing or inconsistent in it.
        reason: String,
    },

    /// A line of a System.map or /proc/kallsyms text does not parse.
    #[error("symbol table line {line}: {reason} (expected \"<hex address> <type> <name>[\\t[module]]\")")]
    SymbolLine {
        /// The line's number, 1-based.
        line: usize,
        /// What is wrong with the line (and, when known, which file).
        reason: String,
    },

    /// A module name has characters that cannot be part of a `.ko` file name.
    #[error("invalid module name {name:?}: only letters, digits, '-' and '_' are allowed")]
    InvalidModuleName {
        /// The name that was given.
        name: String,
    },

    /// A cache entry's modules directory holds no `.ko` files.
    #[error("no kernel modules (*.ko) under {dir}; the kernel cache entry is incomplete: delete it and fetch again")]
    NoModules {
        /// The `lib/modules/<abi>` directory that was searched.
        dir: PathBuf,
    },

    /// A module's `.modinfo` has no `vermagic=` entry.
    #[error("module {path} has no vermagic in its .modinfo section")]
    NoVermagic {
        /// The `.ko` file.
        path: PathBuf,
    },

    /// What the -dbg package gave is not a full symbol table (its layout changed).
    #[error("{path} is not the full System.map ({reason}); the -dbg package {package} changed layout, report this")]
    BadSystemMap {
        /// The file that was expected to be or to give the full System.map.
        path: PathBuf,
        /// The -dbg package it came from.
        package: String,
        /// What is missing from it.
        reason: String,
    },

    /// A directory given as a headers tree is not one (e.g. no `Module.symvers`).
    #[error("{path} is not a kernel headers tree: {reason}; pass the directory of an unpacked linux-headers-<abi> package (the one with Module.symvers)")]
    NotHeadersTree {
        /// The directory that was given.
        path: PathBuf,
        /// What is missing from it.
        reason: String,
    },

    /// A headers tree is for a different kernel build than the ABI it is used with.
    #[error("headers tree {path} does not match Debian's {release} packages ({reason}); a patch built against it would not load on that kernel: use the headers of the exact kernel build")]
    HeadersMismatch {
        /// The headers tree that was given.
        path: PathBuf,
        /// The kernel ABI it was checked against.
        release: String,
        /// What differs.
        reason: String,
    },

    /// A name given as a Debian suite is not one build roots can be made of.
    #[error("unknown Debian suite {input:?}: expected \"bookworm\" or \"trixie\"")]
    UnknownSuite {
        /// The name that was given.
        input: String,
    },

    /// A build root exists (or was just made) but cannot be used.
    #[error(
        "build root {dir} is unusable: {reason}; delete that directory and it will be made again"
    )]
    BuildRootUnusable {
        /// The build root's cache entry (`<cache>/buildroots/<suite>-<key>/`).
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A build that was stopped while its diff was applied left the source tree changed, and
    /// the diff it recorded neither reverses nor is absent (stopped halfway through `patch`).
    #[error("the source tree {tree} was left changed by a build that was stopped while its diff was applied ({record}), and that diff cannot be reversed: {output}; delete {tree_root} and it will be prepared again")]
    InterruptedDiff {
        /// The tree (`…/source/linux`).
        tree: PathBuf,
        /// The directory to delete (`…/source`).
        tree_root: PathBuf,
        /// The recorded diff.
        record: PathBuf,
        /// What `patch` said.
        output: String,
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
