//! Build roots: a minimal Debian system of another suite (made once with `mmdebstrap`,
//! cached) in which out-of-tree module builds and object compiles run with that suite's
//! exact compiler, for kernels the host's compiler cannot serve (Debian 13's gcc-14 kernels
//! on a Debian 12 host).
//!
//! Cache layout: `<cache>/buildroots/<suite>-<key>/` (a sibling of [`crate::cache_root`]),
//! where `<key>` hashes the format version, the suite and the package list. It holds `root/`
//! (the system), `scratch/` (an empty mount point) and `buildroot.json` (the suite, the
//! packages and the compiler it holds). An entry is built in `<name>.tmp` under
//! `<name>.lock` and renamed into place when complete.
//!
//! Commands run in a private mount namespace (`unshare --mount`): the root is mounted as the
//! read-only lower layer of an overlay whose upper layer is a tmpfs, so nothing a build does
//! outside its bound directories reaches the cache, and no mount outlives the command. The
//! directories a build needs are bound at the same absolute paths as on the host, so paths in
//! Makefiles, `.cmd` files and compiler messages are the host's.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{fsutil, process, KernelError};

/// Bumped whenever the way a root is made or laid out changes: a new key, a new entry.
const FORMAT_VERSION: u32 = 1;

/// The entry's metadata, written last.
const METADATA: &str = "buildroot.json";

/// The keyring holding the Debian archive keys (package `debian-archive-keyring`).
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Default mirror of the Debian archive; overridden by `PATCHBAY_DEBIAN_MIRROR`.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Default mirror of the security archive; overridden by `PATCHBAY_DEBIAN_SECURITY_MIRROR`.
pub const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// What kbuild of external modules and single-object compiles in a prepared kernel tree need,
/// besides the suite's compiler.
const BASE_PACKAGES: &[&str] = &[
    "gcc",
    "make",
    "libc6-dev",
    "binutils",
    "libelf-dev",
    "bc",
    "flex",
    "bison",
    "libssl-dev",
    "dwarves",
    "kmod",
    "xz-utils",
    "zstd",
    "patch",
    // 6.12's `make modules_prepare` runs python3 scripts.
    "python3",
];

/// `PATH` inside a root (the caller's host `PATH` means nothing there).
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A Debian release a build root can be made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DebianSuite {
    /// Debian 12, gcc-12.
    Bookworm,
    /// Debian 13, gcc-14.
    Trixie,
}

impl DebianSuite {
    /// Every suite, oldest first.
    pub const ALL: [DebianSuite; 2] = [DebianSuite::Bookworm, DebianSuite::Trixie];

    /// The suite's code name, as in `sources.list`: `bookworm`, `trixie`.
    pub fn name(self) -> &'static str {
        match self {
            DebianSuite::Bookworm => "bookworm",
            DebianSuite::Trixie => "trixie",
        }
    }

    /// The major version of the suite's default GCC (the one its kernels are built with).
    pub fn gcc_major(self) -> u32 {
        match self {
            DebianSuite::Bookworm => 12,
            DebianSuite::Trixie => 14,
        }
    }

    /// The suite's compiler as kernel Makefiles name it: `gcc-12`, `gcc-14`.
    pub fn compiler(self) -> String {
        format!("gcc-{}", self.gcc_major())
    }

    /// The suite whose compiler printed `version_text`, a kernel's `CONFIG_CC_VERSION_TEXT`
    /// such as `x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0`: a Debian GCC of one of
    /// the suites' major versions. `None` for anything else (clang, another vendor's GCC).
    pub fn for_compiler_version(version_text: &str) -> Option<DebianSuite> {
        let text = unquote(version_text);
        let debian_version = text.split_once("(Debian ")?.1;
        let major: u32 = debian_version
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        Self::ALL.into_iter().find(|s| s.gcc_major() == major)
    }

    /// The packages a root of this suite is made with (`--include`), in a fixed order.
    pub fn packages(self) -> Vec<String> {
        let mut packages = vec![self.compiler()];
        packages.extend(BASE_PACKAGES.iter().map(|p| (*p).to_string()));
        packages
    }
}

impl fmt::Display for DebianSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DebianSuite {
    type Err = KernelError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == input)
            .ok_or_else(|| KernelError::UnknownSuite {
                input: input.to_string(),
            })
    }
}

/// What `buildroot.json` records about an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Metadata {
    format: u32,
    suite: DebianSuite,
    packages: Vec<String>,
    /// The first line of `gcc-NN --version` inside the root.
    compiler: String,
    mirror: String,
    security_mirror: String,
    created_unix: u64,
}

/// A cached Debian system of one suite in which commands run with that suite's tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRoot {
    entry: PathBuf,
    suite: DebianSuite,
    compiler: String,
}

impl BuildRoot {
    /// The build root of `suite`, made once (about a minute and 300 MB for trixie) and
    /// returned at once when cached. Concurrent callers (threads or processes) wait for one
    /// creation. Needs root, `mmdebstrap`, `unshare` and access to the Debian mirror.
    pub fn ensure(suite: DebianSuite) -> Result<BuildRoot, KernelError> {
        let dir = buildroots_dir();
        let name = entry_name(suite);
        let entry = dir.join(&name);
        if entry.join(METADATA).is_file() {
            return Self::open(&entry, suite);
        }
        fs::create_dir_all(&dir).map_err(|e| KernelError::io("create cache directory", &dir, e))?;
        let _lock = fsutil::lock(&dir.join(format!("{name}.lock")))?;
        if entry.join(METADATA).is_file() {
            return Self::open(&entry, suite); // made by someone else while we waited
        }
        // Leftovers of a crashed creation: the lock guarantees nobody is using them, and
        // mmdebstrap ran in its own mount namespace, so nothing is mounted in them.
        let staging = dir.join(format!("{name}.tmp"));
        fsutil::remove_dir_if_present(&staging)?;
        fsutil::remove_dir_if_present(&entry)?;
        fs::create_dir(&staging).map_err(|e| KernelError::io("create", &staging, e))?;
        if let Err(error) = create(suite, &staging) {
            let _ = fsutil::remove_dir_if_present(&staging);
            return Err(error);
        }
        fsutil::publish(&staging, &entry)?;
        Self::open(&entry, suite)
    }

    /// Opens a complete entry, checking that it is of `suite` and of this format.
    fn open(entry: &Path, suite: DebianSuite) -> Result<BuildRoot, KernelError> {
        let path = entry.join(METADATA);
        let text = fs::read_to_string(&path).map_err(|e| KernelError::io("read", &path, e))?;
        let unusable = |reason: String| KernelError::BuildRootUnusable {
            dir: entry.to_path_buf(),
            reason,
        };
        let metadata: Metadata = serde_json::from_str(&text)
            .map_err(|e| unusable(format!("{METADATA} does not parse: {e}")))?;
        if metadata.format != FORMAT_VERSION || metadata.suite != suite {
            return Err(unusable(format!(
                "{METADATA} is of format {} and suite {}, expected format {FORMAT_VERSION} and suite {suite}",
                metadata.format, metadata.suite
            )));
        }
        for needed in ["root/usr/bin", "scratch"] {
            if !entry.join(needed).is_dir() {
                return Err(unusable(format!("{needed} is missing")));
            }
        }
        Ok(BuildRoot {
            entry: entry.to_path_buf(),
            suite,
            compiler: metadata.compiler,
        })
    }

    /// The suite this root holds.
    pub fn suite(&self) -> DebianSuite {
        self.suite
    }

    /// The root file system (`<entry>/root`): read it, never write it; commands see it
    /// through an overlay.
    pub fn path(&self) -> PathBuf {
        self.entry.join("root")
    }

    /// The first line of the suite's `gcc-NN --version` as recorded when the root was made,
    /// e.g. `gcc-14 (Debian 14.2.0-19) 14.2.0`.
    pub fn recorded_compiler(&self) -> &str {
        &self.compiler
    }

    /// A command running `program` inside the root. `binds` are host directories made
    /// visible inside at the same absolute paths (read-write, with their submounts); the
    /// command runs in the `current_dir` the caller sets (or the caller's own), which is
    /// bound too when it is not under one of `binds`. Add arguments, environment and
    /// `current_dir` as with any command; `PATH` is set to the root's standard one. The exit
    /// status is `program`'s; a failure to set the root up exits non-zero with the reason
    /// on stderr (125 when the directory cannot be entered).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, binds: &[&Path]) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(ENTER_SCRIPT)
            .arg("patchbay-buildroot")
            .arg(&self.entry)
            .arg(binds.len().to_string())
            .args(sorted_binds(binds))
            .arg(program)
            .env("PATH", ROOT_PATH);
        command
    }

    /// The first line `program --version` prints inside the root, e.g. for `gcc-14`:
    /// `gcc-14 (Debian 14.2.0-19) 14.2.0`; compare it with a kernel's
    /// `CONFIG_CC_VERSION_TEXT` (see [`BuildRoot::has_compiler`]).
    pub fn compiler_version_text(&self, program: &str) -> Result<String, KernelError> {
        let mut command = self.command(program, &[]);
        command.arg("--version").current_dir("/");
        let output = process::run(
            &mut command,
            &format!(
                "is {program} installed in the {} build root {}?",
                self.suite,
                self.path().display()
            ),
        )?;
        Ok(first_line(&String::from_utf8_lossy(&output.stdout)).to_string())
    }

    /// Whether the root holds exactly the compiler that printed `version_text` (a kernel's
    /// `CONFIG_CC_VERSION_TEXT`, quoted or not): the program it names prints the same
    /// first line inside the root.
    pub fn has_compiler(&self, version_text: &str) -> Result<bool, KernelError> {
        let Some(program) = compiler_program(version_text) else {
            return Ok(false);
        };
        match self.compiler_version_text(program) {
            Ok(line) => Ok(line == unquote(version_text)),
            Err(KernelError::CommandFailed { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// Whether the host's own compiler is the one that printed `version_text` (a kernel's
/// `CONFIG_CC_VERSION_TEXT`, e.g. `gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0`, quoted or
/// not): the program it names exists on the host and prints the same first line of
/// `--version`. When it does not, build in a [`BuildRoot`] of
/// [`DebianSuite::for_compiler_version`].
pub fn host_has_compiler(version_text: &str) -> bool {
    let Some(program) = compiler_program(version_text) else {
        return false;
    };
    let Ok(output) = Command::new(program)
        .arg("--version")
        .env("LC_ALL", "C")
        .output()
    else {
        return false;
    };
    output.status.success()
        && first_line(&String::from_utf8_lossy(&output.stdout)) == unquote(version_text)
}

/// The program a compiler version text names (its first word, as `$(CC) --version` printed
/// it), if it is a plain program name.
pub fn compiler_program(version_text: &str) -> Option<&str> {
    let program = unquote(version_text).split_whitespace().next()?;
    let plain = !program.starts_with('-')
        && program
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    plain.then_some(program)
}

/// The text without surrounding whitespace and one pair of double quotes (as in `.config`).
fn unquote(text: &str) -> &str {
    let text = text.trim();
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
        .trim()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

/// Binds outermost first, so that a bind inside another one is mounted on top of it.
fn sorted_binds(binds: &[&Path]) -> Vec<PathBuf> {
    let mut sorted: Vec<PathBuf> = binds.iter().map(|p| p.to_path_buf()).collect();
    sorted.sort_by_key(|p| p.components().count());
    sorted
}

/// Run by `sh` in a fresh private mount namespace, with the caller's working directory:
/// `$1` the entry, `$2` the number of binds, then the binds, then the program and its
/// arguments. Mounts the root as an overlay on a tmpfs, `/proc`, the host's `/dev`, the
/// binds and, unless covered by one, the working directory; then enters it.
const ENTER_SCRIPT: &str = r#"set -eu
entry=$1; n=$2; shift 2
cwd=$(pwd)
scratch=$entry/scratch
root=$scratch/merged
mount -t tmpfs -o mode=0755 patchbay-buildroot "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$root"
mount -t overlay -o "lowerdir=$entry/root,upperdir=$scratch/upper,workdir=$scratch/work" patchbay-buildroot "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
covered=
[ "$cwd" = / ] && covered=1
while [ "$n" -gt 0 ]; do
  case "$cwd/" in "${1%/}/"*) covered=1 ;; esac
  mkdir -p "$root$1"
  mount --rbind "$1" "$root$1"
  shift; n=$((n - 1))
done
if [ -z "$covered" ]; then
  mkdir -p "$root$cwd"
  mount --rbind "$cwd" "$root$cwd"
fi
exec chroot "$root" /bin/sh -c 'cd "$1" || exit 125; shift; exec "$@"' patchbay-buildroot "$cwd" "$@"
"#;

/// `<cache>/buildroots`, beside the kernels' cache root.
fn buildroots_dir() -> PathBuf {
    let kernels = crate::cache_root();
    match kernels.parent() {
        Some(parent) => parent.join("buildroots"),
        None => kernels.join("buildroots"),
    }
}

/// `<suite>-<key>`: the key changes with the format and the package list.
fn entry_name(suite: DebianSuite) -> String {
    let mut description = format!("format={FORMAT_VERSION}\nsuite={suite}\n");
    for package in suite.packages() {
        description.push_str(&package);
        description.push('\n');
    }
    format!("{suite}-{:016x}", fnv1a64(description.as_bytes()))
}

/// FNV-1a, 64 bits: a stable cache key (not a security property).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().trim_end_matches('/').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The `sources.list` lines of a suite: its archive and its security updates.
fn sources(suite: DebianSuite, mirror: &str, security_mirror: &str) -> [String; 2] {
    [
        format!("deb {mirror} {suite} main"),
        format!("deb {security_mirror} {suite}-security main"),
    ]
}

/// The mmdebstrap invocation making `suite`'s root in `target`, run in its own mount
/// namespace so that nothing it mounts survives it.
fn mmdebstrap_command(
    suite: DebianSuite,
    target: &Path,
    mirror: &str,
    security_mirror: &str,
) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "mmdebstrap"])
        .args(["--mode=root", "--variant=apt", "--quiet"])
        .arg(format!("--keyring={ARCHIVE_KEYRING}"))
        .arg(format!("--include={}", suite.packages().join(",")))
        .arg("--aptopt=Acquire::Retries \"3\"");
    for excluded in ["doc", "man", "info", "locale"] {
        command.arg(format!("--dpkgopt=path-exclude=/usr/share/{excluded}/*"));
    }
    command.arg(suite.name()).arg(target);
    command.args(sources(suite, mirror, security_mirror));
    command
}

/// Makes the root in `staging` (empty): `root/`, `scratch/`, then `buildroot.json`.
fn create(suite: DebianSuite, staging: &Path) -> Result<(), KernelError> {
    let mirror = env_or("PATCHBAY_DEBIAN_MIRROR", DEFAULT_MIRROR);
    let security_mirror = env_or("PATCHBAY_DEBIAN_SECURITY_MIRROR", DEFAULT_SECURITY_MIRROR);
    let root = staging.join("root");
    let scratch = staging.join("scratch");
    process::run(
        &mut mmdebstrap_command(suite, &root, &mirror, &security_mirror),
        &format!(
            "install mmdebstrap (scripts/setup); check that {mirror} and {security_mirror} are reachable (set PATCHBAY_DEBIAN_MIRROR / \
             PATCHBAY_DEBIAN_SECURITY_MIRROR to use another mirror), that {ARCHIVE_KEYRING} holds \
             {suite}'s keys (upgrade debian-archive-keyring) and that this runs as root"
        ),
    )?;
    fs::create_dir(&scratch).map_err(|e| KernelError::io("create", &scratch, e))?;
    let mut made = BuildRoot {
        entry: staging.to_path_buf(),
        suite,
        compiler: String::new(),
    };
    let compiler = made.compiler_version_text(&suite.compiler())?;
    let expected = format!("{} ", suite.compiler());
    if !compiler.starts_with(&expected) {
        return Err(KernelError::BuildRootUnusable {
            dir: staging.to_path_buf(),
            reason: format!(
                "`{} --version` printed {compiler:?}, not the suite's compiler",
                suite.compiler()
            ),
        });
    }
    made.compiler = compiler.clone();
    let mut query = made.command("dpkg-query", &[]);
    query
        .args(["-W", "-f=${Package} ${Version}\\n"])
        .current_dir("/");
    let installed = process::run(&mut query, "")?;
    let listing = staging.join("packages.txt");
    fsutil::write_atomically(&listing, &installed.stdout)?;
    let metadata = Metadata {
        format: FORMAT_VERSION,
        suite,
        packages: suite.packages(),
        compiler,
        mirror,
        security_mirror,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let json =
        serde_json::to_vec_pretty(&metadata).map_err(|e| KernelError::BuildRootUnusable {
            dir: staging.to_path_buf(),
            reason: format!("cannot serialise {METADATA}: {e}"),
        })?;
    fsutil::sync_filesystem(staging)?;
    fsutil::write_atomically(&staging.join(METADATA), &json)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn suites_parse_and_name_their_compiler() {
        assert_eq!(
            "trixie".parse::<DebianSuite>().unwrap(),
            DebianSuite::Trixie
        );
        assert_eq!(
            "bookworm".parse::<DebianSuite>().unwrap(),
            DebianSuite::Bookworm
        );
        let error = "sid".parse::<DebianSuite>().unwrap_err().to_string();
        assert!(
            error.contains("\"sid\"") && error.contains("trixie"),
            "{error}"
        );
        assert_eq!(DebianSuite::Trixie.compiler(), "gcc-14");
        assert_eq!(DebianSuite::Trixie.to_string(), "trixie");
        let packages = DebianSuite::Trixie.packages();
        assert_eq!(packages[0], "gcc-14");
        for needed in ["make", "libelf-dev", "dwarves", "libc6-dev", "libssl-dev"] {
            assert!(packages.iter().any(|p| p == needed), "{needed}");
        }
    }

    #[test]
    fn suite_follows_the_kernels_compiler() {
        let cases = [
            (
                "x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0",
                Some(DebianSuite::Trixie),
            ),
            (
                "\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"",
                Some(DebianSuite::Bookworm),
            ),
            (
                "x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0",
                Some(DebianSuite::Bookworm),
            ),
            ("gcc-13 (Debian 13.3.0-1) 13.3.0", None),
            ("gcc (Ubuntu 14.2.0-4ubuntu2) 14.2.0", None),
            ("Debian clang version 19.1.7 (3)", None),
            ("", None),
        ];
        for (text, suite) in cases {
            assert_eq!(DebianSuite::for_compiler_version(text), suite, "{text}");
        }
    }

    #[test]
    fn compiler_program_is_the_first_plain_word() {
        assert_eq!(
            compiler_program("\"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\""),
            Some("x86_64-linux-gnu-gcc-14")
        );
        assert_eq!(
            compiler_program("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"),
            Some("gcc-12")
        );
        assert_eq!(compiler_program("/usr/bin/gcc (x) 1"), None);
        assert_eq!(compiler_program("--version"), None);
        assert_eq!(compiler_program("gcc;rm (x)"), None);
        assert_eq!(compiler_program("  "), None);
    }

    #[test]
    fn host_compiler_check_compares_the_whole_first_line() {
        // No such program on any host.
        assert!(!host_has_compiler("gcc-999 (Debian 999.0.0-1) 999.0.0"));
        assert!(!host_has_compiler(""));
        // Whatever gcc the host has: its own first line matches, a changed revision does not.
        let Ok(output) = Command::new("gcc").arg("--version").output() else {
            return;
        };
        let line = first_line(&String::from_utf8_lossy(&output.stdout)).to_string();
        assert!(host_has_compiler(&line), "{line}");
        assert!(host_has_compiler(&format!("\"{line}\"")), "{line}");
        assert!(!host_has_compiler(&format!("{line}-1")), "{line}");
    }

    #[test]
    fn entry_names_are_stable_and_per_suite() {
        let trixie = entry_name(DebianSuite::Trixie);
        assert!(trixie.starts_with("trixie-") && trixie.len() == "trixie-".len() + 16);
        assert_eq!(trixie, entry_name(DebianSuite::Trixie));
        assert_ne!(
            trixie.trim_start_matches("trixie-"),
            entry_name(DebianSuite::Bookworm).trim_start_matches("bookworm-")
        );
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn mmdebstrap_gets_both_archives_and_the_packages() {
        let command = mmdebstrap_command(
            DebianSuite::Trixie,
            Path::new("/c/x.tmp/root"),
            "http://m/debian",
            "http://m/debian-security",
        );
        let text = process::describe(&command);
        assert!(text.starts_with("unshare --mount"), "{text}");
        assert!(text.contains("--include=gcc-14,gcc,make,"), "{text}");
        assert!(
            text.ends_with(
                "trixie /c/x.tmp/root deb http://m/debian trixie main \
                 deb http://m/debian-security trixie-security main"
            ),
            "{text}"
        );
    }

    #[test]
    fn binds_are_mounted_outermost_first() {
        let binds = [Path::new("/a/b/c"), Path::new("/a"), Path::new("/x/y")];
        assert_eq!(
            sorted_binds(&binds),
            [
                PathBuf::from("/a"),
                PathBuf::from("/x/y"),
                PathBuf::from("/a/b/c")
            ]
        );
    }
}
