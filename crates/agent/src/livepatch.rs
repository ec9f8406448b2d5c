//! Reading and writing the kernel's livepatch interface: `/sys/kernel/livepatch/<patch>/…`,
//! the per-task `patch_state` in `/proc`, and `/proc/modules`. Entries can vanish at any moment
//! (patches are freed asynchronously), so a vanished entry is skipped, not an error.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Largest sysfs/proc attribute we read; the real ones are a few bytes (stacks a few KiB).
const ATTR_MAX_BYTES: u64 = 64 * 1024;
/// Lines of a blocking task's kernel stack we report.
const STACK_LINES: usize = 6;
/// Frames of a blocking task's kernel stack we search for replaced functions (the kernel
/// shows at most 64).
const STACK_SEARCHED: usize = 64;
/// Longest line we keep from kernel-provided text (comm, stack frames).
const LINE_MAX_CHARS: usize = 160;

/// One livepatch as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LivePatch {
    /// Directory name = the patch module's name.
    pub name: String,
    /// `enabled`: 1 while the patch is (being) applied; 0 while it is being removed.
    pub enabled: bool,
    /// `transition`: 1 while tasks are still being switched for this patch.
    pub transition: bool,
}

/// The livepatch directory of one patch.
pub fn patch_dir(livepatch_dir: &Path, name: &str) -> PathBuf {
    livepatch_dir.join(name)
}

/// Lists the livepatches in sysfs. `Err(NotFound)` means the directory itself is missing (kernel
/// without livepatch support, or sysfs not mounted).
pub fn list_patches(livepatch_dir: &Path) -> io::Result<Vec<LivePatch>> {
    let mut patches = Vec::new();
    for entry in fs::read_dir(livepatch_dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        match read_patch(livepatch_dir, &name) {
            Ok(Some(patch)) => patches.push(patch),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    patches.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(patches)
}

/// Whether an error on a livepatch's sysfs attribute means the patch is gone: `ENOENT` once its
/// directory is removed, `ENODEV` while the kernel is still tearing the directory down (seen on
/// 6.1 right after an unpatching transition completes).
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

/// Reads one patch; `Ok(None)` if it is not (or no longer) there.
pub fn read_patch(livepatch_dir: &Path, name: &str) -> io::Result<Option<LivePatch>> {
    let dir = patch_dir(livepatch_dir, name);
    let enabled = match read_flag(&dir.join("enabled")) {
        Ok(v) => v,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let transition = match read_flag(&dir.join("transition")) {
        Ok(v) => v,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(LivePatch {
        name: name.to_owned(),
        enabled,
        transition,
    }))
}

/// Where an unpatch transition that outlived its wait stands after the agent wrote `1` to the
/// patch's `enabled` to reverse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUnpatchTimeout {
    /// The unpatch finished between the agent's last read and its write: the kernel refused
    /// to re-enable the disabled patch (EINVAL) or had freed it already. The unload completed.
    FinishedLate,
    /// The kernel took the reversal: the patch is on its way back to patched.
    Reversing,
}

/// Reads what the reversal write did: `written` is the write's result, `now` the patch as
/// read right after it ([`read_patch`]). A refused write is an error only while the patch is
/// still unpatching (the write was needed and failed).
pub fn after_unpatch_timeout(
    written: io::Result<()>,
    now: io::Result<Option<LivePatch>>,
) -> Result<AfterUnpatchTimeout, String> {
    match now {
        Ok(None) => Ok(AfterUnpatchTimeout::FinishedLate),
        Ok(Some(p)) if !p.enabled && !p.transition => Ok(AfterUnpatchTimeout::FinishedLate),
        Ok(Some(p)) => match written {
            Err(e) => Err(format!("cannot write 1 to enabled: {e}")),
            Ok(()) if p.enabled => Ok(AfterUnpatchTimeout::Reversing),
            Ok(()) => Err("the kernel did not take the reversal; it is still unpatching".into()),
        },
        Err(e) => Err(format!("cannot read the patch after the reversal: {e}")),
    }
}

/// Reads a 0/1 sysfs attribute.
pub fn read_flag(path: &Path) -> io::Result<bool> {
    let text = read_small(path)?;
    match text.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds {:?}, expected 0 or 1",
                path.display(),
                truncate(other)
            ),
        )),
    }
}

/// Writes a value to a sysfs attribute the way `echo value > attr` does.
pub fn write_attr(path: &Path, value: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(format!("{value}\n").as_bytes())
}

/// Whether the patch offers the `signal` attribute (kernels before 5.1 and some distro
/// kernels; Linux 6.1 signals blocking tasks itself).
pub fn has_signal_attr(livepatch_dir: &Path, name: &str) -> bool {
    patch_dir(livepatch_dir, name).join("signal").exists()
}

/// A task that has not yet switched to a transition's target state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockingTask {
    /// Thread-group id (what `ps` shows as PID).
    pub pid: u32,
    /// Thread id; equals `pid` for the main thread.
    pub tid: u32,
    /// The task's command name from `/proc/<pid>/task/<tid>/comm`, e.g. `kworker/0:1`.
    pub comm: String,
    /// First lines of `/proc/<pid>/task/<tid>/stack`; empty when unreadable.
    pub stack: Vec<String>,
    /// The functions on the whole stack that the transition replaces (or restores): why the
    /// task cannot switch. Empty when unknown.
    pub in_replaced: Vec<String>,
}

/// The function a `/proc/<pid>/stack` line names: `[<0>] name+0x1f/0x80 [module]` → `name`.
pub fn stack_function(line: &str) -> Option<&str> {
    let rest = line.trim_start();
    let rest = match rest.strip_prefix("[<") {
        Some(r) => r.split_once(">]")?.1.trim_start(),
        None => rest,
    };
    let name = rest.split(['+', ' ']).next()?;
    (!name.is_empty()).then_some(name)
}

/// `foo.isra.0`, `foo.constprop.3`, `foo.cold` → `foo`: the kernel's stack names the GCC
/// clone, a patch may name either.
fn without_clone_suffix(name: &str) -> &str {
    name.split_once('.').map_or(name, |(base, _)| base)
}

/// The functions a transition moves tasks off, as named in a bundle's manifest (both the
/// kernel's original and the patch's replacement): the names a blocking stack is checked for.
#[derive(Debug, Clone, Default)]
pub struct ReplacedNames(std::collections::BTreeSet<String>);

impl ReplacedNames {
    /// The given function names, GCC clone suffixes (`.isra.0`, ...) stripped.
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> ReplacedNames {
        ReplacedNames(
            names
                .into_iter()
                .map(|n| without_clone_suffix(n).to_owned())
                .collect(),
        )
    }

    /// Both sides of every replaced function of `manifest`: the original and the replacement.
    pub(crate) fn from_manifest(manifest: &patchbay_core::Manifest) -> ReplacedNames {
        ReplacedNames::new(
            manifest
                .replaced_functions
                .iter()
                .flat_map(|f| [f.function.as_str(), f.replacement.as_str()]),
        )
    }

    fn contains(&self, frame_function: &str) -> bool {
        self.0.contains(without_clone_suffix(frame_function))
    }
}

/// The tasks whose `patch_state` is neither -1 (no transition) nor `target` (0 unpatched,
/// 1 patched). Returns at most `limit` tasks and the total count; each task's stack is
/// searched for the `replaced` functions.
pub fn blocking_tasks(
    proc_dir: &Path,
    target: u8,
    limit: usize,
    replaced: &ReplacedNames,
) -> (Vec<BlockingTask>, usize) {
    let mut found = Vec::new();
    let mut total = 0usize;
    let Ok(entries) = fs::read_dir(proc_dir) else {
        return (found, total);
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let task_dir = proc_dir.join(pid.to_string()).join("task");
        let tids: Vec<u32> = match fs::read_dir(&task_dir) {
            Ok(entries) => {
                let mut tids: Vec<u32> = entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
                tids.sort_unstable();
                tids
            }
            // Without a task directory, look at the process itself.
            Err(_) => vec![pid],
        };
        for tid in tids {
            let dir = if task_dir.exists() {
                task_dir.join(tid.to_string())
            } else {
                proc_dir.join(pid.to_string())
            };
            let Ok(state) = read_small(&dir.join("patch_state")) else {
                continue;
            };
            let Ok(state) = state.trim().parse::<i32>() else {
                continue;
            };
            if state == -1 || state == i32::from(target) {
                continue;
            }
            total += 1;
            if found.len() < limit {
                let comm = read_small(&dir.join("comm"))
                    .map(|c| truncate(c.trim()))
                    .unwrap_or_else(|_| "?".to_owned());
                let full = read_small(&dir.join("stack")).unwrap_or_default();
                let stack = full.lines().take(STACK_LINES).map(truncate).collect();
                let mut in_replaced: Vec<String> = Vec::new();
                for function in full
                    .lines()
                    .take(STACK_SEARCHED)
                    .filter_map(stack_function)
                    .filter(|f| replaced.contains(f))
                {
                    let function = truncate(function);
                    if !in_replaced.contains(&function) {
                        in_replaced.push(function);
                    }
                }
                found.push(BlockingTask {
                    pid,
                    tid,
                    comm,
                    stack,
                    in_replaced,
                });
            }
        }
    }
    (found, total)
}

/// A module listed in `/proc/modules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModule {
    /// The module's name as the kernel knows it (`_`, never `-`), e.g. `pb_0123456789ab_l1`.
    pub name: String,
    /// `Live`, `Loading` or `Unloading`.
    pub state: String,
}

/// Parses `/proc/modules` (`name size refcount deps state address`). A missing file gives an
/// empty list.
pub fn loaded_modules(proc_dir: &Path) -> io::Result<Vec<LoadedModule>> {
    let text = match read_small_limit(&proc_dir.join("modules"), 4 * 1024 * 1024) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse_proc_modules(&text))
}

/// Pure parser for `/proc/modules` text; malformed lines are skipped.
pub fn parse_proc_modules(text: &str) -> Vec<LoadedModule> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let state = fields.nth(3)?;
            Some(LoadedModule {
                name: name.to_owned(),
                state: state.to_owned(),
            })
        })
        .collect()
}

fn read_small(path: &Path) -> io::Result<String> {
    read_small_limit(path, ATTR_MAX_BYTES)
}

fn read_small_limit(path: &Path, limit: u64) -> io::Result<String> {
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Bounds kernel-provided text we echo back and drops control characters.
pub fn truncate(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(LINE_MAX_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a_reversal_refused_because_the_unpatch_finished_is_a_late_finish() {
        let patch = |enabled, transition| {
            Ok(Some(LivePatch {
                name: "pb_l1".into(),
                enabled,
                transition,
            }))
        };
        let einval = || Err(io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(
            after_unpatch_timeout(einval(), patch(false, false)),
            Ok(AfterUnpatchTimeout::FinishedLate)
        );
        assert_eq!(
            after_unpatch_timeout(einval(), Ok(None)),
            Ok(AfterUnpatchTimeout::FinishedLate)
        );
        assert_eq!(
            after_unpatch_timeout(Ok(()), patch(true, true)),
            Ok(AfterUnpatchTimeout::Reversing)
        );
        let refused = after_unpatch_timeout(einval(), patch(false, true)).unwrap_err();
        assert!(refused.contains("cannot write 1"), "{refused}");
        let ignored = after_unpatch_timeout(Ok(()), patch(false, true)).unwrap_err();
        assert!(ignored.contains("still unpatching"), "{ignored}");
        let unreadable = after_unpatch_timeout(Ok(()), Err(io::Error::other("EIO"))).unwrap_err();
        assert!(unreadable.contains("cannot read"), "{unreadable}");
    }

    #[test]
    fn enoent_and_enodev_mean_the_patch_is_gone() {
        assert!(is_gone(&io::Error::from_raw_os_error(libc::ENOENT)));
        assert!(is_gone(&io::Error::from_raw_os_error(libc::ENODEV)));
        assert!(!is_gone(&io::Error::from_raw_os_error(libc::EBUSY)));
        assert!(!is_gone(&io::Error::from_raw_os_error(libc::EACCES)));
    }

    #[test]
    fn proc_modules_lines() {
        let text = "pb_x_l1 16384 1 - Live 0xffffffffc0a00000 (OEK)\n\
                    ext4 950272 1 mbcache,jbd2, Live 0x0\n\
                    broken\n\
                    pb_x_l2 16384 0 - Loading 0x0 (OEK)\n";
        let mods = parse_proc_modules(text);
        assert_eq!(mods.len(), 3);
        assert_eq!(mods[0].name, "pb_x_l1");
        assert_eq!(mods[0].state, "Live");
        assert_eq!(mods[2].state, "Loading");
    }

    #[test]
    fn flags_and_blockers() {
        let dir = tempfile::tempdir().unwrap();
        let lp = dir.path().join("livepatch");
        fs::create_dir_all(lp.join("pb_a")).unwrap();
        fs::write(lp.join("pb_a/enabled"), "1\n").unwrap();
        fs::write(lp.join("pb_a/transition"), "0\n").unwrap();
        fs::create_dir_all(lp.join("half_gone")).unwrap(); // no attributes: skipped
        let patches = list_patches(&lp).unwrap();
        assert_eq!(
            patches,
            vec![LivePatch {
                name: "pb_a".into(),
                enabled: true,
                transition: false
            }]
        );
        fs::write(lp.join("pb_a/enabled"), "yes\n").unwrap();
        assert!(list_patches(&lp).is_err());

        let proc = dir.path().join("proc");
        for (pid, state, comm) in [(1, "-1", "init"), (7, "0", "sleepy"), (9, "1", "done")] {
            let t = proc.join(format!("{pid}/task/{pid}"));
            fs::create_dir_all(&t).unwrap();
            fs::write(t.join("patch_state"), format!("{state}\n")).unwrap();
            fs::write(t.join("comm"), format!("{comm}\n")).unwrap();
            let mut stack = String::from("[<0>] __schedule+0x1/0x2\n");
            for frame in 0..10 {
                stack.push_str(&format!("[<0>] frame{frame}+0x3/0x4\n"));
            }
            stack.push_str("[<0>] worker_loop.isra.0+0x5/0x6 [some_mod]\n");
            fs::write(t.join("stack"), stack).unwrap();
        }
        fs::create_dir_all(proc.join("self")).unwrap();
        let replaced = ReplacedNames::new(["worker_loop", "pb_worker_loop"]);
        let (tasks, total) = blocking_tasks(&proc, 1, 10, &replaced);
        assert_eq!(total, 1);
        assert_eq!(tasks[0].pid, 7);
        assert_eq!(tasks[0].comm, "sleepy");
        assert_eq!(tasks[0].stack.len(), STACK_LINES, "{:?}", tasks[0].stack);
        // Below the lines shown, and named by its clone: still found.
        assert_eq!(tasks[0].in_replaced, vec!["worker_loop.isra.0".to_owned()]);
        let (tasks, total) = blocking_tasks(&proc, 0, 0, &ReplacedNames::default());
        assert_eq!((tasks.len(), total), (0, 1));
    }

    #[test]
    fn stack_frames() {
        assert_eq!(stack_function("[<0>] kthread+0xe6/0x110"), Some("kthread"));
        assert_eq!(stack_function("[<0>] nfsd+0x10/0x20 [nfsd]"), Some("nfsd"));
        assert_eq!(stack_function("[<0>] "), None);
        assert_eq!(stack_function("[<0"), None);
    }
}
