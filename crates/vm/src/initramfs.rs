//! Building the guest's initramfs: busybox, an /init that runs one scenario, helper files.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::cpio::{CpioWriter, EntryHeader, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
use crate::error::VmError;
use crate::modules;

/// The host's static busybox, from Debian's `busybox-static`.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Marker `/init` prints right before running the scenario: `PBVM: init-start <uptime s>`.
pub(crate) const INIT_START_MARKER: &str = "PBVM: init-start";
/// Marker `/init` prints after the scenario: `PBVM: end <exit status> <uptime s>`.
pub(crate) const END_MARKER: &str = "PBVM: end";

const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# Patchbay guest init: mount the basics, run /scenario.sh, report its status, power off.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root
cd /
# Firmware output may have left a partial line (SeaBIOS prints "Booting from ROM.." without a newline).
echo
read -r pb_uptime pb_idle < /proc/uptime
echo "PBVM: init-start $pb_uptime"
sh /scenario.sh
pb_status=$?
read -r pb_uptime pb_idle < /proc/uptime
echo "PBVM: end $pb_status $pb_uptime"
sync
poweroff -f
"#;

/// Guest-side helpers; scenarios use them with `. /lib/pb.sh`.
pub const PB_SH: &str = r#"# Patchbay scenario helpers. Results go to the serial console as `PB: <key> <value...>`.

# pb_value KEY VALUE...: report a value.
pb_value() {
	pb_key=$1
	shift
	echo "PB: $pb_key $*"
}

# pb__name_ok NAME: check names must be one word, or the host cannot parse the line.
pb__name_ok() {
	case "$1" in
	"" | *[!A-Za-z0-9_.:/-]*)
		echo "pb.sh: invalid check name '$1' (use letters, digits, _ . : / -)"
		return 1
		;;
	esac
	return 0
}

# pb_check NAME CMD...: run CMD, report `check NAME ok` or `check NAME fail <status>`.
# Returns CMD's status.
pb_check() {
	pb_name=$1
	shift
	pb__name_ok "$pb_name" || pb_name=invalid-check-name
	"$@"
	pb_rc=$?
	if [ "$pb_rc" -eq 0 ]; then
		echo "PB: check $pb_name ok"
	else
		echo "PB: check $pb_name fail $pb_rc"
	fi
	return "$pb_rc"
}

# pb_expect_contains NAME FILE STRING: check that FILE contains STRING (fixed string).
pb_expect_contains() {
	pb_name=$1
	pb_file=$2
	pb_needle=$3
	pb__name_ok "$pb_name" || pb_name=invalid-check-name
	grep -qF -- "$pb_needle" "$pb_file"
	pb_rc=$?
	if [ "$pb_rc" -eq 0 ]; then
		echo "PB: check $pb_name ok"
		return 0
	fi
	echo "pb_expect_contains: '$pb_needle' not found in $pb_file, which holds:"
	cat "$pb_file"
	echo
	echo "PB: check $pb_name fail $pb_rc"
	return "$pb_rc"
}

# pb_net_up: bring up the guest's only network: QEMU user networking (restrict=on), where
# 10.0.2.100 forwards to one port on the host's loopback (see patchbay_vm::Network).
pb_net_up() {
	# Either may be built in (6.12 builds virtio_pci in): then /sys/module has it already.
	for m in virtio_pci virtio_net; do
		[ -d /sys/module/$m ] || modprobe $m || return 1
	done
	ip link set lo up
	ip link set eth0 up || return 1
	ip addr add 10.0.2.15/24 dev eth0 || return 1
	ip route add default via 10.0.2.2
}

# pb_uptime_ms: milliseconds since boot (busybox date has no %N).
pb_uptime_ms() {
	read -r pb_up pb_idle < /proc/uptime
	pb_int=${pb_up%.*}
	pb_frac=${pb_up#*.}
	# Two decimals; a leading zero would make ash read the number as octal.
	pb_frac=${pb_frac#0}
	echo $((pb_int * 1000 + pb_frac * 10))
}
"#;

const DEFAULT_SCENARIO: &str = "#!/bin/sh\necho 'no scenario was set'\n";

/// An absolute path inside the guest, without `.`/`..`/empty components.
/// Stored without the leading `/`, which is how cpio names entries; ordering puts every
/// directory before its contents.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestPath(String);

impl GuestPath {
    pub(crate) fn parse(path: &str) -> Result<Self, VmError> {
        Self::parse_or_reason(path).map_err(|reason| VmError::InvalidGuestPath {
            path: path.to_owned(),
            reason,
        })
    }

    fn parse_or_reason(path: &str) -> Result<Self, &'static str> {
        let relative = path.strip_prefix('/').ok_or("it is not absolute")?;
        if relative.is_empty() {
            return Err("the root directory is not an entry");
        }
        if path.contains('\0') {
            return Err("it contains a NUL byte");
        }
        for component in relative.split('/') {
            match component {
                "" => return Err("it has an empty component or a trailing slash"),
                "." | ".." => return Err("it has a `.` or `..` component"),
                _ => {}
            }
        }
        Ok(Self(relative.to_owned()))
    }

    /// The name as written into the archive (no leading `/`).
    pub fn archive_name(&self) -> &str {
        &self.0
    }

    fn ancestors(&self) -> impl Iterator<Item = GuestPath> + '_ {
        self.0
            .match_indices('/')
            .map(|(index, _)| GuestPath(self.0.get(..index).unwrap_or_default().to_owned()))
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

#[derive(Clone)]
enum EntryKind {
    Directory,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Clone)]
struct Entry {
    kind: EntryKind,
    permissions: u32,
}

/// A problem found by a method that cannot return an error itself; `write` reports it.
#[derive(Debug, Clone)]
struct PathProblem {
    path: String,
    reason: &'static str,
    invalid: bool,
}

impl From<PathProblem> for VmError {
    fn from(problem: PathProblem) -> Self {
        if problem.invalid {
            VmError::InvalidGuestPath {
                path: problem.path,
                reason: problem.reason,
            }
        } else {
            VmError::GuestPathConflict {
                path: problem.path,
                reason: problem.reason,
            }
        }
    }
}

/// The guest's root file system, written as a gzip-compressed newc cpio archive.
pub struct Initramfs {
    entries: BTreeMap<GuestPath, Entry>,
    /// First problem from `add_bytes`/`set_scenario`, reported by `write`.
    deferred_problem: Option<PathProblem>,
    /// Per kernel release: module path → dependencies, for `modules.dep`.
    module_dependencies: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl fmt::Debug for Initramfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_map();
        for (path, entry) in &self.entries {
            let description = match &entry.kind {
                EntryKind::Directory => "dir".to_owned(),
                EntryKind::File(data) => format!("file, {} bytes", data.len()),
                EntryKind::Symlink(target) => format!("symlink to {target}"),
                EntryKind::CharDevice { major, minor } => format!("char device {major}:{minor}"),
            };
            list.entry(&path.to_string(), &description);
        }
        list.finish()
    }
}

impl Initramfs {
    /// An initramfs with the host's static busybox (`/bin/busybox`), the basic directories,
    /// `/init`, `/lib/pb.sh` and a placeholder `/scenario.sh`.
    pub fn new() -> Result<Self, VmError> {
        Self::with_busybox(Path::new(HOST_BUSYBOX))
    }

    /// Like [`Initramfs::new`] with a busybox binary from elsewhere; it must be static.
    pub fn with_busybox(busybox: &Path) -> Result<Self, VmError> {
        let busybox_bytes = std::fs::read(busybox).map_err(|cause| VmError::BusyboxMissing {
            path: busybox.to_path_buf(),
            cause,
        })?;
        check_static_executable(&busybox_bytes).map_err(|reason| VmError::BusyboxNotStatic {
            path: busybox.to_path_buf(),
            reason,
        })?;

        let mut initramfs = Self {
            entries: BTreeMap::new(),
            deferred_problem: None,
            module_dependencies: BTreeMap::new(),
        };
        for dir in [
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/etc",
            "/root",
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/run",
            "/mnt",
            "/var/lib",
            "/lib/modules",
        ] {
            initramfs.add_dir(dir, 0o755);
        }
        initramfs.add_entry(
            "/dev/console",
            Entry {
                kind: EntryKind::CharDevice { major: 5, minor: 1 },
                permissions: 0o600,
            },
        );
        initramfs.add_bytes("/bin/busybox", busybox_bytes, 0o755);
        initramfs.add_bytes("/init", INIT_SCRIPT.as_bytes().to_vec(), 0o755);
        initramfs.add_bytes("/lib/pb.sh", PB_SH.as_bytes().to_vec(), 0o644);
        initramfs.set_scenario(DEFAULT_SCENARIO);
        match initramfs.deferred_problem.take() {
            Some(problem) => Err(problem.into()),
            None => Ok(initramfs),
        }
    }

    /// Copies a host file into the guest. `mode` holds the permission bits (e.g. `0o755`).
    pub fn add_file(
        &mut self,
        guest_path: &str,
        host_path: &Path,
        mode: u32,
    ) -> Result<&mut Self, VmError> {
        let data = std::fs::read(host_path).map_err(|cause| VmError::ReadHostFile {
            path: host_path.to_path_buf(),
            cause,
        })?;
        let path = GuestPath::parse(guest_path)?;
        self.insert(
            path,
            Entry {
                kind: EntryKind::File(data),
                permissions: mode & 0o7777,
            },
        )?;
        Ok(self)
    }

    /// Adds a guest file with the given content. An invalid or conflicting path is reported by
    /// [`Initramfs::write`].
    pub fn add_bytes(&mut self, guest_path: &str, data: Vec<u8>, mode: u32) -> &mut Self {
        self.add_entry(
            guest_path,
            Entry {
                kind: EntryKind::File(data),
                permissions: mode & 0o7777,
            },
        )
    }

    /// Adds a directory (parents are created as needed anyway).
    pub fn add_dir(&mut self, guest_path: &str, mode: u32) -> &mut Self {
        self.add_entry(
            guest_path,
            Entry {
                kind: EntryKind::Directory,
                permissions: mode & 0o7777,
            },
        )
    }

    /// Adds a symbolic link pointing at `target` (taken literally, like `ln -s`).
    pub fn add_symlink(&mut self, guest_path: &str, target: &str) -> &mut Self {
        self.add_entry(
            guest_path,
            Entry {
                kind: EntryKind::Symlink(target.to_owned()),
                permissions: 0o777,
            },
        )
    }

    /// Sets `/scenario.sh`, the `sh` script `/init` runs. Its exit status is reported.
    pub fn set_scenario(&mut self, script: &str) -> &mut Self {
        self.add_bytes("/scenario.sh", script.as_bytes().to_vec(), 0o755)
    }

    /// Copies the named modules and everything they depend on (per their `.modinfo`) from an
    /// unpacked `lib/modules/<release>` directory to `/lib/modules/<release>/…` and writes a
    /// `modules.dep` for them, so `modprobe NAME` works in the guest.
    pub fn add_kernel_modules(
        &mut self,
        modules_dir: &Path,
        names: &[&str],
    ) -> Result<&mut Self, VmError> {
        let resolved = modules::resolve(modules_dir, names)?;
        let release_dir = format!("/lib/modules/{}", resolved.release);
        for (relative, host_path) in &resolved.files {
            let guest_path = format!("{release_dir}/{relative}");
            if host_path.to_string_lossy().ends_with(".ko") {
                self.add_file(&guest_path, host_path, 0o644)?;
            } else {
                self.add_bytes(&guest_path, modules::module_bytes(host_path)?, 0o644);
            }
        }
        let dependencies = self
            .module_dependencies
            .entry(resolved.release.clone())
            .or_default();
        dependencies.extend(resolved.dependencies);
        let modules_dep = modules::render_modules_dep(dependencies);
        let path = GuestPath::parse(&format!("{release_dir}/modules.dep"))?;
        self.insert(
            path,
            Entry {
                kind: EntryKind::File(modules_dep.into_bytes()),
                permissions: 0o644,
            },
        )?;
        Ok(self)
    }

    /// Writes the gzip-compressed archive; `out` appears only once it is complete.
    pub fn write(&self, out: &Path) -> Result<(), VmError> {
        if let Some(problem) = &self.deferred_problem {
            return Err(problem.clone().into());
        }
        let write_error = |cause| VmError::WriteInitramfs {
            path: out.to_path_buf(),
            cause,
        };
        let file_name = out.file_name().ok_or_else(|| {
            write_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the output path has no file name",
            ))
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(file_name);
        temp_name.push(format!(".tmp-{}", std::process::id()));
        let temp_path: PathBuf = out.with_file_name(temp_name);

        let result = (|| -> Result<(), VmError> {
            let file = File::create(&temp_path).map_err(write_error)?;
            let gzip = GzEncoder::new(BufWriter::new(file), Compression::fast());
            let gzip = self.write_cpio(gzip, out)?;
            let buffered = gzip.finish().map_err(write_error)?;
            let file = buffered
                .into_inner()
                .map_err(|error| write_error(error.into_error()))?;
            file.sync_all().map_err(write_error)?;
            std::fs::rename(&temp_path, out).map_err(write_error)
        })();
        if result.is_err() {
            // Best effort: the temp file is garbage either way.
            let _ = std::fs::remove_file(&temp_path);
        }
        result
    }

    /// The uncompressed newc archive.
    pub fn to_cpio_bytes(&self) -> Result<Vec<u8>, VmError> {
        if let Some(problem) = &self.deferred_problem {
            return Err(problem.clone().into());
        }
        self.write_cpio(Vec::new(), Path::new("<memory>"))
    }

    /// Guest paths in archive order, for inspection.
    pub fn guest_paths(&self) -> impl Iterator<Item = &GuestPath> {
        self.entries.keys()
    }

    fn write_cpio<W: Write>(&self, out: W, reported_path: &Path) -> Result<W, VmError> {
        let write_error = |cause| VmError::WriteInitramfs {
            path: reported_path.to_path_buf(),
            cause,
        };
        let mut cpio = CpioWriter::new(out);
        for (path, entry) in &self.entries {
            let (type_bits, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &entry.kind {
                EntryKind::Directory => (S_IFDIR, 2, &[], (0, 0)),
                EntryKind::File(data) => (S_IFREG, 1, data, (0, 0)),
                EntryKind::Symlink(target) => (S_IFLNK, 1, target.as_bytes(), (0, 0)),
                EntryKind::CharDevice { major, minor } => (S_IFCHR, 1, &[], (*major, *minor)),
            };
            if u32::try_from(data.len()).is_err() {
                return Err(VmError::EntryTooLarge {
                    path: path.to_string(),
                    size: data.len(),
                });
            }
            cpio.entry(
                EntryHeader {
                    name: path.archive_name(),
                    mode: type_bits | entry.permissions,
                    nlink,
                    rdev_major: rdev.0,
                    rdev_minor: rdev.1,
                },
                data,
            )
            .map_err(write_error)?;
        }
        cpio.finish().map_err(write_error)
    }

    fn add_entry(&mut self, guest_path: &str, entry: Entry) -> &mut Self {
        let result = match GuestPath::parse_or_reason(guest_path) {
            Ok(path) => self.insert(path, entry),
            Err(reason) => Err(PathProblem {
                path: guest_path.to_owned(),
                reason,
                invalid: true,
            }),
        };
        if let Err(problem) = result {
            self.deferred_problem.get_or_insert(problem);
        }
        self
    }

    fn insert(&mut self, path: GuestPath, entry: Entry) -> Result<(), PathProblem> {
        let conflict = |path: &GuestPath, reason| PathProblem {
            path: path.to_string(),
            reason,
            invalid: false,
        };
        let ancestors: Vec<GuestPath> = path.ancestors().collect();
        for ancestor in &ancestors {
            match self.entries.get(ancestor) {
                Some(Entry {
                    kind: EntryKind::Directory,
                    ..
                }) => {}
                Some(_) => return Err(conflict(ancestor, "a parent path is not a directory")),
                None => {}
            }
        }
        let is_directory = matches!(entry.kind, EntryKind::Directory);
        match self.entries.get(&path) {
            Some(Entry {
                kind: EntryKind::Directory,
                ..
            }) if !is_directory => {
                return Err(conflict(&path, "it is already a directory"));
            }
            Some(existing) if is_directory && !matches!(existing.kind, EntryKind::Directory) => {
                return Err(conflict(&path, "it is already a file"));
            }
            _ => {}
        }
        for ancestor in ancestors {
            self.entries.entry(ancestor).or_insert(Entry {
                kind: EntryKind::Directory,
                permissions: 0o755,
            });
        }
        self.entries.insert(path, entry);
        Ok(())
    }
}

/// `Ok` when `bytes` is an ELF executable without a program interpreter (static, maybe PIE).
pub(crate) fn check_static_executable(bytes: &[u8]) -> Result<(), String> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(bytes)
        .map_err(|error| format!("not a 64-bit ELF file: {error}"))?;
    let endian = header
        .endian()
        .map_err(|error| format!("unreadable ELF header: {error}"))?;
    let program_headers = header
        .program_headers(endian, bytes)
        .map_err(|error| format!("unreadable program headers: {error}"))?;
    if program_headers.is_empty() {
        return Err("it has no program headers".to_owned());
    }
    if program_headers
        .iter()
        .any(|program_header| program_header.p_type(endian) == object::elf::PT_INTERP)
    {
        return Err("it is dynamically linked (has a PT_INTERP program header)".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use std::io::Read;
    use std::process::{Command, Stdio};

    use super::*;

    /// Runs the host `cpio` with `args`, feeding it `archive`, in `dir`.
    fn cpio_tool(archive: &[u8], args: &[&str], dir: &Path) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio is installed (apt-get install cpio)");
        let mut stdin = child.stdin.take().unwrap();
        let archive = archive.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&archive));
        let output = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(
            output.status.success(),
            "cpio {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn gunzip(path: &Path) -> Vec<u8> {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    #[test]
    fn guest_paths_are_validated() {
        assert_eq!(GuestPath::parse("/a/b").unwrap().archive_name(), "a/b");
        for bad in ["a/b", "/", "/a//b", "/a/", "/a/../b", "/./a", "/a\0"] {
            assert!(GuestPath::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn archive_lists_and_extracts() {
        let dir = tempfile::tempdir().unwrap();
        let host_file = dir.path().join("tool");
        std::fs::write(&host_file, b"#!/bin/sh\necho tool\n").unwrap();

        let mut initramfs = Initramfs::new().unwrap();
        initramfs
            .add_file("/opt/deep/tool", &host_file, 0o750)
            .unwrap()
            .add_bytes("/etc/odd-size", b"12345".to_vec(), 0o600)
            .add_bytes("/etc/empty", Vec::new(), 0o644)
            .add_symlink("/usr/bin/tool", "/opt/deep/tool")
            .set_scenario("echo hi\n");
        let out = dir.path().join("initrd.cpio.gz");
        initramfs.write(&out).unwrap();
        let archive = gunzip(&out);
        assert_eq!(archive, initramfs.to_cpio_bytes().unwrap());

        let listing = cpio_tool(&archive, &["-t", "--quiet"], dir.path());
        let names: Vec<&str> = listing.lines().collect();
        for expected in [
            "bin/busybox",
            "init",
            "scenario.sh",
            "lib/pb.sh",
            "dev/console",
            "proc",
            "sys",
            "tmp",
            "var/lib",
            "lib/modules",
            "opt",
            "opt/deep",
            "opt/deep/tool",
            "usr/bin/tool",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        // Parents come before children, as the kernel's unpacker needs.
        let position = |name: &str| names.iter().position(|n| *n == name).unwrap();
        assert!(position("opt") < position("opt/deep"));
        assert!(position("opt/deep") < position("opt/deep/tool"));

        // Extract (without device nodes, which need privileges and are not under test).
        let extract = dir.path().join("root");
        std::fs::create_dir(&extract).unwrap();
        cpio_tool(
            &archive,
            &[
                "-i",
                "--quiet",
                "--make-directories",
                "--no-absolute-filenames",
                "--nonmatching",
                "dev/console",
            ],
            &extract,
        );
        assert_eq!(
            std::fs::read(extract.join("opt/deep/tool")).unwrap(),
            b"#!/bin/sh\necho tool\n"
        );
        assert_eq!(
            std::fs::read(extract.join("etc/odd-size")).unwrap(),
            b"12345"
        );
        assert_eq!(std::fs::read(extract.join("etc/empty")).unwrap(), b"");
        assert_eq!(
            std::fs::read(extract.join("scenario.sh")).unwrap(),
            b"echo hi\n"
        );
        assert_eq!(
            std::fs::read(extract.join("lib/pb.sh")).unwrap(),
            PB_SH.as_bytes()
        );
        assert_eq!(
            std::fs::read(extract.join("bin/busybox")).unwrap(),
            std::fs::read(HOST_BUSYBOX).unwrap()
        );
        assert_eq!(
            std::fs::read_link(extract.join("usr/bin/tool")).unwrap(),
            Path::new("/opt/deep/tool")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(extract.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("opt/deep/tool"), 0o750);
        assert_eq!(mode("etc/odd-size"), 0o600);
        assert_eq!(mode("init"), 0o755);
        assert!(std::fs::metadata(extract.join("tmp")).unwrap().is_dir());

        // The console node is listed with its device numbers.
        let verbose = cpio_tool(&archive, &["-tv", "--quiet", "dev/console"], dir.path());
        assert!(verbose.starts_with("crw-------"), "{verbose}");
        assert!(verbose.contains("5,"), "{verbose}");
    }

    #[test]
    fn bad_paths_are_reported_by_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut initramfs = Initramfs::new().unwrap();
        initramfs.add_bytes("relative/path", b"x".to_vec(), 0o644);
        let error = initramfs.write(&dir.path().join("out")).unwrap_err();
        assert!(error.to_string().contains("relative/path"), "{error}");
        assert!(!dir.path().join("out").exists());

        let mut initramfs = Initramfs::new().unwrap();
        initramfs.add_bytes("/tmp", b"x".to_vec(), 0o644);
        let error = initramfs.to_cpio_bytes().unwrap_err();
        assert!(error.to_string().contains("already a directory"), "{error}");

        let mut initramfs = Initramfs::new().unwrap();
        let error = initramfs
            .add_file("/x", Path::new("/nonexistent/file"), 0o644)
            .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/file"), "{error}");
    }

    #[test]
    fn busybox_must_be_static() {
        let dynamic = Initramfs::with_busybox(Path::new("/bin/ls")).unwrap_err();
        assert!(
            dynamic
                .to_string()
                .contains("apt-get install busybox-static"),
            "{dynamic}"
        );
        let missing = Initramfs::with_busybox(Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("apt-get install busybox-static"),
            "{missing}"
        );
    }
}
