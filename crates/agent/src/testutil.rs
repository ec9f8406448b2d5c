//! Test helpers: hand-made bundles and a fake kernel that simulates the 6.1 livepatch core in a
//! tempdir (sysfs directories, `/proc` task states, `/proc/modules`) in virtual time. The
//! simulation advances whenever the agent sleeps, and reacts to what the agent wrote into the
//! fake sysfs attributes, as the kernel would react to the writes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::cell::{RefCell, RefMut};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use patchbay_core::manifest::{BuilderInfo, KernelTarget, ModuleInfo};
use patchbay_core::{
    Bundle, Manifest, ModuleName, ObjectName, ReplacedFunction, Sha256, MANIFEST_FORMAT,
};

use crate::cache::StateDir;
use crate::host::{Clock, KernelPaths, KernelSyscalls};
use crate::notes::tests::kernel_notes;

pub(crate) const BUILD_ID: &str = "0123456789abcdef0123456789abcdef01234567";
pub(crate) const OTHER_BUILD_ID: &str = "fedcba9876543210fedcba9876543210fedcba98";
pub(crate) const RELEASE: &str = "6.1.0-56-amd64";

pub(crate) fn module_name(build_id: &str, level: u32) -> String {
    let build: patchbay_core::BuildId = build_id.parse().unwrap();
    patchbay_core::ModuleName::of_level(&build, level.try_into().unwrap())
        .as_str()
        .to_owned()
}

/// A fake module: an ELF magic, then what the fake kernel reads from it.
pub(crate) fn fake_module(name: &str, extra: &str) -> Vec<u8> {
    format!("\x7fELF fake livepatch module {extra} name={name}").into_bytes()
}

pub(crate) fn manifest_for(build_id: &str, release: &str, level: u32, module: &[u8]) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        kernel: KernelTarget {
            release: release.parse().unwrap(),
            build_id: build_id.parse().unwrap(),
            upstream_version: patchbay_core::UpstreamVersion::new(6, 1, 192),
            package_version: Some("6.1.192-2".into()),
        },
        level: level.try_into().unwrap(),
        module: ModuleInfo {
            name: module_name(build_id, level).parse().unwrap(),
            sha256: Sha256::of(module),
            size: module.len() as u64,
        },
        replaced_functions: vec![ReplacedFunction {
            object: ObjectName::vmlinux(),
            function: "cmdline_proc_show".into(),
            sympos: 0,
            replacement: "pb_cmdline_proc_show".into(),
        }],
        fixes: vec![format!("CVE-2024-{}", 1000 + level).parse().unwrap()],
        builder: BuilderInfo {
            name: "patchbay-build".into(),
            version: "0.1.0".into(),
        },
        created: "2026-11-22T08:00:00Z".into(),
    }
}

pub(crate) fn bundle_with(build_id: &str, release: &str, level: u32, extra: &str) -> Bundle {
    let module = fake_module(&module_name(build_id, level), extra);
    Bundle::new(manifest_for(build_id, release, level, &module), module).unwrap()
}

pub(crate) fn bundle_for(build_id: &str, level: u32) -> Bundle {
    bundle_with(build_id, RELEASE, level, "")
}

/// A bundle whose module is a small real ELF object with the `.modinfo` of a livepatch (what a
/// patch server checks), which the fake kernel loads like `fake_module`.
pub(crate) fn elf_bundle(build_id: &str, release: &str, level: u32) -> Bundle {
    elf_bundle_fixing(build_id, release, level, None)
}

/// Like `elf_bundle`, with the manifest's `fixes` replaced when given.
pub(crate) fn elf_bundle_fixing(
    build_id: &str,
    release: &str,
    level: u32,
    fixes: Option<Vec<String>>,
) -> Bundle {
    use object::write::Object;
    use object::{Architecture, BinaryFormat, Endianness, SectionKind};
    let name = module_name(build_id, level);
    let mut elf = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let this_module = elf.add_section(
        Vec::new(),
        b".gnu.linkonce.this_module".to_vec(),
        SectionKind::Data,
    );
    elf.append_section_data(this_module, &[0u8; 64], 8);
    let modinfo = elf.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::ReadOnlyData);
    let info = format!(
        "livepatch=Y\0license=GPL\0vermagic={release} SMP preempt mod_unload modversions \0name={name}\0"
    );
    elf.append_section_data(modinfo, info.as_bytes(), 1);
    let module = elf.write().unwrap();
    let mut manifest = manifest_for(build_id, release, level, &module);
    if let Some(fixes) = fixes {
        manifest.fixes = fixes.iter().map(|f| f.parse().unwrap()).collect();
    }
    Bundle::new(manifest, module).unwrap()
}

/// A task that sleeps in a patched function and so blocks transitions.
#[derive(Debug, Clone)]
pub(crate) struct Blocker {
    pub pid: u32,
    pub comm: String,
    pub blocks_patching: bool,
    pub blocks_unpatching: bool,
    /// A signal (through the `signal` attribute) wakes it, so it stops blocking.
    pub woken_by_signal: bool,
}

#[derive(Debug, Clone)]
struct SimPatch {
    name: String,
    enabled: bool,
    replace: bool,
}

#[derive(Debug, Clone)]
struct SimTransition {
    patch: String,
    /// true: patching; false: unpatching.
    target: bool,
    started: Duration,
    signalled: bool,
}

#[derive(Debug)]
pub(crate) struct Sim {
    pub now: Duration,
    pub release: String,
    /// How long an unblocked transition takes.
    pub transition_time: Duration,
    pub blocker: Option<Blocker>,
    /// Patches get a `signal` attribute (kernels other than 6.1).
    pub signal_attr: bool,
    pub crash_on_load: bool,
    pub crash_after_load: bool,
    /// The next this many deletes fail with EAGAIN.
    pub eagain_deletes: u32,
    /// An unpatch transition ends just before the agent's write that would reverse it (the
    /// last blocker left in between): the real kernel then refuses the write with EINVAL.
    pub unpatch_ends_before_reversal: bool,
    /// Module name -> pinned (its patch is not freed yet, or it was forced).
    modules: BTreeMap<String, bool>,
    patches: Vec<SimPatch>,
    transition: Option<SimTransition>,
    frees: Vec<(String, Duration)>,
    forced: bool,
    pub loads: Vec<String>,
    pub deletes: Vec<String>,
    proc_snapshot: String,
}

/// The fake kernel: a tempdir holding `sys/livepatch`, `proc`, `notes`, and a state dir.
pub(crate) struct FakeKernel {
    pub root: tempfile::TempDir,
    sim: RefCell<Sim>,
}

impl FakeKernel {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("sys/livepatch")).unwrap();
        fs::create_dir_all(root.path().join("proc/1/task/1")).unwrap();
        let id = hex_decode(BUILD_ID);
        fs::write(root.path().join("notes"), kernel_notes(&id)).unwrap();
        let k = FakeKernel {
            root,
            sim: RefCell::new(Sim {
                now: Duration::from_secs(1000),
                release: RELEASE.into(),
                transition_time: Duration::from_millis(20),
                blocker: None,
                signal_attr: false,
                crash_on_load: false,
                crash_after_load: false,
                eagain_deletes: 0,
                unpatch_ends_before_reversal: false,
                modules: BTreeMap::new(),
                patches: Vec::new(),
                transition: None,
                frees: Vec::new(),
                forced: false,
                loads: Vec::new(),
                deletes: Vec::new(),
                proc_snapshot: String::new(),
            }),
        };
        k.write_task(1, "init", "-1");
        k.write_proc_modules(&k.sim.borrow());
        k
    }

    pub fn paths(&self) -> KernelPaths {
        KernelPaths {
            livepatch_dir: self.lp(),
            proc_dir: self.root.path().join("proc"),
            notes_path: self.root.path().join("notes"),
        }
    }

    pub fn state_dir(&self) -> StateDir {
        StateDir::new(self.root.path().join("state"))
    }

    pub fn sim(&self) -> RefMut<'_, Sim> {
        self.sim.borrow_mut()
    }

    fn lp(&self) -> PathBuf {
        self.root.path().join("sys/livepatch")
    }

    pub fn set_blocker(&self, blocker: Blocker) {
        self.write_task(blocker.pid, &blocker.comm, "-1");
        let stack = "[<0>] pipe_read+0x2f1/0x430\n[<0>] cmdline_proc_show+0x1a/0x40\n\
             [<0>] vfs_read+0x1b7/0x2e0\n[<0>] ksys_read+0x5f/0xe0\n\
             [<0>] do_syscall_64+0x5b/0xc0\n[<0>] entry_SYSCALL_64_after_hwframe+0x64/0xce\n\
             [<0>] one_line_too_many+0x1/0x2\n";
        let dir = self
            .root
            .path()
            .join(format!("proc/{0}/task/{0}", blocker.pid));
        fs::write(dir.join("stack"), stack).unwrap();
        self.sim().blocker = Some(blocker);
    }

    /// Sysfs patch directory names.
    pub fn sysfs(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.lp())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Loaded module names.
    pub fn loaded(&self) -> Vec<String> {
        self.sim.borrow().modules.keys().cloned().collect()
    }

    /// A reboot into the same kernel: no module, no livepatch, no transition; files on disk
    /// (the state dir) stay.
    pub fn reboot(&self) {
        let mut sim = self.sim();
        sim.modules.clear();
        sim.patches.clear();
        sim.transition = None;
        sim.frees.clear();
        sim.forced = false;
        sim.crash_on_load = false;
        sim.crash_after_load = false;
        for entry in fs::read_dir(self.lp()).unwrap() {
            fs::remove_dir_all(entry.unwrap().path()).unwrap();
        }
        self.write_proc_modules(&sim);
    }

    /// Loads a non-Patchbay, non-replace livepatch (e.g. from another vendor).
    pub fn add_foreign(&self, name: &str, in_transition: bool) {
        let mut sim = self.sim();
        sim.modules.insert(name.into(), true);
        sim.patches.push(SimPatch {
            name: name.into(),
            enabled: true,
            replace: false,
        });
        if in_transition {
            let now = sim.now;
            sim.transition = Some(SimTransition {
                patch: name.into(),
                target: true,
                started: now,
                signalled: false,
            });
        }
        self.write_patch_files(&sim, name);
        self.write_proc_modules(&sim);
    }

    fn write_task(&self, pid: u32, comm: &str, state: &str) {
        for dir in [
            self.root.path().join(format!("proc/{pid}")),
            self.root.path().join(format!("proc/{pid}/task/{pid}")),
        ] {
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(dir.join("patch_state"), format!("{state}\n")).unwrap();
        }
    }

    fn write_patch_files(&self, sim: &Sim, name: &str) {
        let Some(p) = sim.patches.iter().find(|p| p.name == name) else {
            return;
        };
        let dir = self.lp().join(name);
        fs::create_dir_all(dir.join("vmlinux/cmdline_proc_show,0")).unwrap();
        let in_transition = sim.transition.as_ref().is_some_and(|t| t.patch == name);
        fs::write(dir.join("enabled"), if p.enabled { "1\n" } else { "0\n" }).unwrap();
        fs::write(
            dir.join("transition"),
            if in_transition { "1\n" } else { "0\n" },
        )
        .unwrap();
        fs::write(dir.join("force"), "0\n").unwrap();
        if sim.signal_attr {
            fs::write(dir.join("signal"), "0\n").unwrap();
        }
    }

    fn write_proc_modules(&self, sim: &Sim) {
        let text: String = sim
            .modules
            .iter()
            .map(|(name, pinned)| {
                format!(
                    "{name} 16384 {} - Live 0x0000000000000000 (OEK)\n",
                    u8::from(*pinned)
                )
            })
            .collect();
        fs::write(self.root.path().join("proc/modules"), text).unwrap();
    }

    fn write_task_states(&self, sim: &Sim) {
        let (target, blocked) = match &sim.transition {
            None => (None, false),
            Some(t) => (Some(t.target), Self::blocked(sim, t)),
        };
        let show = |patched: bool| if patched { "1" } else { "0" };
        let init_state = target.map(show).unwrap_or("-1");
        self.write_task(1, "init", init_state);
        if let Some(b) = &sim.blocker {
            let state = match target {
                None => "-1",
                Some(t) if blocked => show(!t),
                Some(t) => show(t),
            };
            self.write_task(b.pid, &b.comm, state);
        }
    }

    fn blocked(sim: &Sim, t: &SimTransition) -> bool {
        sim.blocker.as_ref().is_some_and(|b| {
            let blocks = if t.target {
                b.blocks_patching
            } else {
                b.blocks_unpatching
            };
            blocks && !(b.woken_by_signal && t.signalled)
        })
    }

    fn read_attr(&self, name: &str, attr: &str) -> Option<String> {
        fs::read_to_string(self.lp().join(name).join(attr))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// One tick of the simulated livepatch core.
    fn step(&self, sim: &mut Sim) {
        // React to what was written into the attributes since the last tick.
        let names: Vec<String> = sim.patches.iter().map(|p| p.name.clone()).collect();
        for name in &names {
            if let Some(v) = self.read_attr(name, "enabled") {
                let want = v == "1";
                let current = sim
                    .patches
                    .iter()
                    .find(|p| &p.name == name)
                    .unwrap()
                    .enabled;
                if want != current {
                    let now = sim.now;
                    let is_transition_patch =
                        sim.transition.as_ref().is_some_and(|t| &t.patch == name);
                    let unpatching = sim.transition.as_ref().is_some_and(|t| !t.target);
                    if is_transition_patch && want && unpatching && sim.unpatch_ends_before_reversal
                    {
                        // The transition completed first; the kernel refuses to enable a
                        // disabled patch that is no longer in transition.
                        self.complete(sim);
                    } else if is_transition_patch {
                        // klp_reverse_transition
                        let t = sim.transition.as_mut().unwrap();
                        t.target = want;
                        t.started = now;
                        sim.patches
                            .iter_mut()
                            .find(|p| &p.name == name)
                            .unwrap()
                            .enabled = want;
                    } else if !want && sim.transition.is_none() {
                        // __klp_disable_patch
                        sim.patches
                            .iter_mut()
                            .find(|p| &p.name == name)
                            .unwrap()
                            .enabled = false;
                        sim.transition = Some(SimTransition {
                            patch: name.clone(),
                            target: false,
                            started: now,
                            signalled: false,
                        });
                    }
                    self.write_patch_files(sim, name);
                }
            }
            if self.read_attr(name, "force").as_deref() == Some("1") {
                fs::write(self.lp().join(name).join("force"), "0\n").unwrap();
                if sim.transition.as_ref().is_some_and(|t| &t.patch == name) {
                    sim.forced = true;
                    for pinned in sim.modules.values_mut() {
                        *pinned = true;
                    }
                    self.complete(sim);
                }
            }
            if self.read_attr(name, "signal").as_deref() == Some("1") {
                fs::write(self.lp().join(name).join("signal"), "0\n").unwrap();
                if let Some(t) = sim.transition.as_mut() {
                    t.signalled = true;
                }
            }
        }
        if let Some(t) = sim.transition.clone() {
            if sim.now.saturating_sub(t.started) >= sim.transition_time && !Self::blocked(sim, &t) {
                self.complete(sim);
            }
        }
        let now = sim.now;
        let due: Vec<String> = sim
            .frees
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        sim.frees.retain(|(_, at)| *at > now);
        for name in due {
            let _ = fs::remove_dir_all(self.lp().join(&name));
            sim.patches.retain(|p| p.name != name);
            if !sim.forced {
                if let Some(pinned) = sim.modules.get_mut(&name) {
                    *pinned = false;
                }
            }
        }
        // Rewrite /proc only when something changed (keeps virtual-time loops fast).
        let snapshot = format!("{:?}{:?}{:?}", sim.transition, sim.modules, sim.blocker);
        if snapshot != sim.proc_snapshot {
            self.write_task_states(sim);
            self.write_proc_modules(sim);
            sim.proc_snapshot = snapshot;
        }
    }

    fn complete(&self, sim: &mut Sim) {
        let Some(t) = sim.transition.take() else {
            return;
        };
        let free_at = sim.now + Duration::from_millis(1);
        if t.target {
            let replace = sim
                .patches
                .iter()
                .find(|p| p.name == t.patch)
                .is_some_and(|p| p.replace);
            if replace {
                let others: Vec<String> = sim
                    .patches
                    .iter()
                    .filter(|p| p.name != t.patch)
                    .map(|p| p.name.clone())
                    .collect();
                for other in others {
                    sim.patches
                        .iter_mut()
                        .find(|p| p.name == other)
                        .unwrap()
                        .enabled = false;
                    self.write_patch_files(sim, &other);
                    sim.frees.push((other, free_at));
                }
            }
        } else {
            sim.frees.push((t.patch.clone(), free_at));
        }
        self.write_patch_files(sim, &t.patch);
        self.write_task_states(sim);
    }
}

impl KernelSyscalls for FakeKernel {
    fn release(&self) -> io::Result<String> {
        Ok(self.sim.borrow().release.clone())
    }

    fn load_module(&self, file: &File) -> io::Result<()> {
        let mut sim = self.sim.borrow_mut();
        if sim.crash_on_load {
            drop(sim);
            panic!("simulated crash just before finit_module");
        }
        let mut reader: &File = file;
        reader.seek(SeekFrom::Start(0))?;
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if !text.starts_with("\x7fELF") {
            return Err(io::Error::from_raw_os_error(libc::ENOEXEC));
        }
        let name = text
            .rsplit("name=")
            .next()
            .unwrap()
            .split('\0')
            .next()
            .unwrap()
            .to_owned();
        if sim.transition.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        if sim.modules.contains_key(&name) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        sim.loads.push(name.clone());
        if text.contains("nolivepatch") {
            sim.modules.insert(name, false);
            self.write_proc_modules(&sim);
            return Ok(());
        }
        sim.modules.insert(name.clone(), true);
        sim.patches.push(SimPatch {
            name: name.clone(),
            enabled: true,
            replace: true,
        });
        let now = sim.now;
        sim.transition = Some(SimTransition {
            patch: name.clone(),
            target: true,
            started: now,
            signalled: false,
        });
        self.write_patch_files(&sim, &name);
        // klp_enable_patch tries once to complete the transition right away.
        self.step(&mut sim);
        if sim.crash_after_load {
            drop(sim);
            panic!("simulated crash right after finit_module");
        }
        Ok(())
    }

    fn delete_module(&self, name: &ModuleName) -> io::Result<()> {
        let mut sim = self.sim.borrow_mut();
        match sim.modules.get(name.as_str()) {
            None => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
            Some(true) => return Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            Some(false) => {}
        }
        if sim.eagain_deletes > 0 {
            sim.eagain_deletes -= 1;
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        sim.modules.remove(name.as_str());
        sim.deletes.push(name.to_string());
        self.write_proc_modules(&sim);
        Ok(())
    }

    fn check_privileges(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Clock for FakeKernel {
    fn now(&self) -> Duration {
        // The real kernel acts on sysfs writes synchronously; the agent always reads the clock
        // before it looks at the effect of a write, so react to writes here.
        let mut sim = self.sim.borrow_mut();
        self.step(&mut sim);
        sim.now
    }

    fn sleep(&self, duration: Duration) {
        let mut sim = self.sim.borrow_mut();
        sim.now += duration;
        self.step(&mut sim);
    }
}

/// Writes a bundle into the fake kernel's tempdir (outside the state dir) and returns its path.
pub(crate) fn write_bundle(k: &FakeKernel, bundle: &Bundle, file: &str) -> PathBuf {
    let dir = k.root.path().join("incoming");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    bundle.write(&path).unwrap();
    path
}

pub(crate) fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub(crate) fn exists(p: &Path) -> bool {
    p.exists()
}
