//! The agent's state machine against the fake kernel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::cell::RefCell;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::agent::{Agent, ApplyOptions, TransitionOptions};
use crate::error::{exit, AgentError};
use crate::state::{AgentState, Event, OpKind, StateLock};
use crate::status::{PatchState, Verdict};
use crate::testutil::*;

struct Harness {
    k: FakeKernel,
    logs: RefCell<Vec<String>>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            k: FakeKernel::new(),
            logs: RefCell::new(Vec::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&Agent<'_>) -> R) -> R {
        let log = |s: &str| self.logs.borrow_mut().push(s.to_owned());
        let agent = Agent {
            kernel: &self.k,
            clock: &self.k,
            paths: self.k.paths(),
            state_dir: self.k.state_dir(),
            log: &log,
        };
        f(&agent)
    }

    fn bundle(&self, level: u32) -> std::path::PathBuf {
        write_bundle(
            &self.k,
            &bundle_for(BUILD_ID, level),
            &format!("l{level}.pbb"),
        )
    }

    fn apply(&self, level: u32) -> Result<crate::ApplyOutcome, AgentError> {
        let path = self.bundle(level);
        self.with(|a| a.apply(&path, &ApplyOptions::default()))
    }

    fn state(&self) -> AgentState {
        AgentState::load(&self.k.state_dir().state_file()).unwrap()
    }

    fn events(&self) -> Vec<Event> {
        self.state().history.iter().map(|h| h.event).collect()
    }

    fn logs(&self) -> String {
        self.logs.borrow().join("\n")
    }
}

fn m(level: u32) -> String {
    module_name(BUILD_ID, level)
}

fn quick() -> TransitionOptions {
    TransitionOptions {
        timeout: Duration::from_secs(1),
        signal_after: Duration::from_millis(200),
        force: false,
    }
}

fn blocker(patching: bool, unpatching: bool, woken_by_signal: bool) -> Blocker {
    Blocker {
        pid: 4242,
        comm: "blocker".into(),
        blocks_patching: patching,
        blocks_unpatching: unpatching,
        woken_by_signal,
    }
}

#[test]
fn apply_upgrade_rollback_unload() {
    let h = Harness::new();
    let out = h.apply(1).unwrap();
    assert_eq!(out.level.get(), 1);
    assert_eq!(out.previous, None);
    assert!(out
        .to_string()
        .starts_with("level 1 active (no level was active before) in "));
    assert_eq!(h.k.sysfs(), vec![m(1)]);
    assert_eq!(h.k.loaded(), vec![m(1)]);
    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.state, PatchState::Patched);
    assert_eq!(st.exit_code, exit::OK);
    assert_eq!(
        st.active.as_ref().unwrap().functions,
        vec!["vmlinux:cmdline_proc_show"]
    );
    assert_eq!(
        st.active.as_ref().unwrap().fixes[0].as_str(),
        "CVE-2024-1001"
    );

    let out = h.apply(2).unwrap();
    assert_eq!(out.previous.map(|l| l.get()), Some(1));
    assert!(
        out.to_string()
            .starts_with("level 2 active (replaced level 1) in "),
        "{out}"
    );
    assert_eq!(h.k.sysfs(), vec![m(2)]);
    assert_eq!(h.k.loaded(), vec![m(2)], "level 1's module is removed");
    assert!(
        h.k.sim().deletes.contains(&m(1)),
        "{:?} does not contain {:?}",
        h.k.sim().deletes,
        &m(1)
    );
    let sd = h.k.state_dir();
    assert!(!exists(&sd.module_path(&m(1).parse().unwrap())));
    assert!(exists(&sd.module_path(&m(2).parse().unwrap())));
    assert_eq!(h.with(|a| a.status()).unwrap().exit_code, exit::OK);

    let out = h.with(|a| a.rollback(&ApplyOptions::default())).unwrap();
    assert_eq!(out.level.get(), 1);
    assert_eq!(out.previous.map(|l| l.get()), Some(2));
    assert_eq!(h.k.sysfs(), vec![m(1)]);
    assert_eq!(h.k.loaded(), vec![m(1)]);
    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.verdict, Verdict::NewerLevelAvailable);
    assert_eq!(st.exit_code, exit::NEWER_AVAILABLE);

    let err = h
        .with(|a| a.rollback(&ApplyOptions::default()))
        .unwrap_err();
    assert!(matches!(err, AgentError::NoLowerLevel { .. }), "{err}");
    assert!(
        err.to_string().contains("patchbay unload"),
        "{:?} does not contain {:?}",
        err.to_string(),
        "patchbay unload"
    );

    let out = h.with(|a| a.unload(&TransitionOptions::default())).unwrap();
    assert_eq!(
        out.removed.iter().map(|l| l.get()).collect::<Vec<_>>(),
        vec![1]
    );
    assert!(h.k.sysfs().is_empty());
    assert!(h.k.loaded().is_empty());
    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.state, PatchState::Unpatched);
    assert_eq!(st.exit_code, exit::NO_PATCH);

    let out = h.with(|a| a.unload(&TransitionOptions::default())).unwrap();
    assert!(out.removed.is_empty());
    assert!(
        out.to_string().contains("nothing to unload"),
        "{:?} does not contain {:?}",
        out.to_string(),
        "nothing to unload"
    );

    assert_eq!(
        h.events(),
        vec![
            Event::Applied,
            Event::Applied,
            Event::RolledBack,
            Event::Unloaded
        ]
    );
    assert!(h.state().pending.is_none());
}

#[test]
fn applying_the_active_level_again_does_nothing() {
    let h = Harness::new();
    h.apply(1).unwrap();
    let out = h.apply(1).unwrap();
    assert!(out.already_active);
    assert_eq!(out.to_string(), "level 1 is already active; nothing to do");
    assert_eq!(h.k.sim().loads.len(), 1);
}

#[test]
fn wrong_kernel_is_refused_and_nothing_changes() {
    let h = Harness::new();
    let other = write_bundle(&h.k, &bundle_for(OTHER_BUILD_ID, 1), "other.pbb");
    let err = h
        .with(|a| a.apply(&other, &ApplyOptions::default()))
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::REFUSED);
    let msg = err.to_string();
    assert!(
        msg.contains(BUILD_ID) && msg.contains(OTHER_BUILD_ID),
        "{msg}"
    );
    assert!(msg.contains("nothing was loaded"), "{msg}");
    assert!(h.k.sim().loads.is_empty());
    assert!(!h.k.state_dir().root().exists(), "state dir untouched");

    // Same build-id, different release name: refused too.
    let renamed = write_bundle(
        &h.k,
        &bundle_with(BUILD_ID, "6.1.0-55-amd64", 1, ""),
        "renamed.pbb",
    );
    let err = h
        .with(|a| a.apply(&renamed, &ApplyOptions::default()))
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::REFUSED);
    assert!(
        err.to_string().contains("6.1.0-55-amd64"),
        "{:?} does not contain {:?}",
        err.to_string(),
        "6.1.0-55-amd64"
    );
    assert!(h.k.sim().loads.is_empty());
}

#[test]
fn tampered_bundle_is_refused_and_nothing_changes() {
    let h = Harness::new();
    h.apply(1).unwrap();
    let before = fs::read(h.k.state_dir().state_file()).unwrap();
    let path = h.bundle(2);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.windows(4).rposition(|w| w == b"name").unwrap();
    bytes[at] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let err = h
        .with(|a| a.apply(&path, &ApplyOptions::default()))
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::REFUSED, "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    assert_eq!(h.k.sim().loads.len(), 1);
    assert_eq!(fs::read(h.k.state_dir().state_file()).unwrap(), before);
    assert!(!exists(
        &h.k.state_dir()
            .bundle_path(&BUILD_ID.parse().unwrap(), 2.try_into().unwrap())
    ));

    let missing = h.k.root.path().join("nope.pbb");
    let err = h
        .with(|a| a.apply(&missing, &ApplyOptions::default()))
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::ERROR);
    assert!(
        err.to_string().contains("nope.pbb"),
        "{:?} does not contain {:?}",
        err.to_string(),
        "nope.pbb"
    );
}

#[test]
fn blocked_transition_is_reverted_and_reported() {
    let h = Harness::new();
    h.apply(1).unwrap();
    h.k.set_blocker(blocker(true, false, false));
    let path = h.bundle(2);
    let opts = ApplyOptions {
        transition: quick(),
        ..ApplyOptions::default()
    };
    let err = h.with(|a| a.apply(&path, &opts)).unwrap_err();
    assert_eq!(err.exit_code(), exit::BLOCKED);
    let msg = err.to_string();
    assert!(
        msg.starts_with("transition to level 2 blocked by task 4242 blocker"),
        "{msg}"
    );
    assert!(msg.contains("reverted; level 1 stays active"), "{msg}");
    assert!(msg.contains("cmdline_proc_show+0x1a/0x40"), "{msg}");
    assert!(!msg.contains("one_line_too_many"), "stack is cut: {msg}");
    assert!(h.logs().contains("fake signal itself"), "{}", h.logs());
    assert!(h.logs().contains("4242 blocker"), "{}", h.logs());

    assert_eq!(h.k.sysfs(), vec![m(1)]);
    assert_eq!(h.k.loaded(), vec![m(1)]);
    assert!(
        h.k.sim().deletes.contains(&m(2)),
        "{:?} does not contain {:?}",
        h.k.sim().deletes,
        &m(2)
    );
    let state = h.state();
    assert!(state.pending.is_none());
    assert_eq!(state.last_error.as_ref().unwrap().exit_code, exit::BLOCKED);
    assert_eq!(h.events(), vec![Event::Applied, Event::Reverted]);

    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.active.as_ref().unwrap().level.get(), 1);
    assert_eq!(st.state, PatchState::Patched);
    assert_eq!(st.exit_code, exit::NEWER_AVAILABLE);

    // Once the task is gone, the same apply works.
    h.k.sim().blocker = None;
    assert_eq!(h.apply(2).unwrap().level.get(), 2);
}

#[test]
fn first_blocked_apply_reverts_to_unpatched() {
    let h = Harness::new();
    h.k.set_blocker(blocker(true, false, false));
    let path = h.bundle(1);
    let opts = ApplyOptions {
        transition: quick(),
        ..ApplyOptions::default()
    };
    let err = h.with(|a| a.apply(&path, &opts)).unwrap_err();
    assert!(
        err.to_string()
            .contains("reverted; no Patchbay level is active"),
        "{err}"
    );
    assert!(h.k.sysfs().is_empty() && h.k.loaded().is_empty());
}

#[test]
fn signal_attribute_is_used_when_the_kernel_has_it() {
    let h = Harness::new();
    h.k.sim().signal_attr = true;
    h.k.set_blocker(blocker(true, false, true));
    let path = h.bundle(1);
    let opts = ApplyOptions {
        transition: TransitionOptions {
            timeout: Duration::from_secs(10),
            signal_after: Duration::from_secs(1),
            force: false,
        },
        ..ApplyOptions::default()
    };
    let out = h.with(|a| a.apply(&path, &opts)).unwrap();
    assert!(
        h.logs().contains("signalled the blocking tasks"),
        "{}",
        h.logs()
    );
    let took = out.timings.transitioned;
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
        "{took:?}"
    );
}

#[test]
fn force_is_only_used_when_asked() {
    let h = Harness::new();
    h.apply(1).unwrap();
    h.k.set_blocker(blocker(true, false, false));
    let path = h.bundle(2);
    let opts = ApplyOptions {
        transition: TransitionOptions {
            force: true,
            ..quick()
        },
        ..ApplyOptions::default()
    };
    let out = h.with(|a| a.apply(&path, &opts)).unwrap();
    assert!(out.forced);
    assert!(
        out.to_string().contains("FORCED"),
        "{:?} does not contain {:?}",
        out.to_string(),
        "FORCED"
    );
    assert_eq!(h.k.sysfs(), vec![m(2)]);
    // A forced transition pins the replaced module in the kernel.
    assert!(
        h.k.loaded().contains(&m(1)),
        "{:?} does not contain {:?}",
        h.k.loaded(),
        &m(1)
    );
    assert!(out.warnings.iter().any(|w| w.contains("until reboot")));
    assert_eq!(*h.events().last().unwrap(), Event::Forced);
}

#[test]
fn blocked_unload_returns_to_patched() {
    let h = Harness::new();
    h.apply(1).unwrap();
    h.k.set_blocker(blocker(false, true, false));
    let err = h.with(|a| a.unload(&quick())).unwrap_err();
    assert_eq!(err.exit_code(), exit::BLOCKED, "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("unload of level 1 blocked by task 4242 blocker"),
        "{msg}"
    );
    assert!(msg.contains("reverted; level 1 stays active"), "{msg}");
    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.state, PatchState::Patched);
    assert_eq!(st.active.unwrap().level.get(), 1);
    assert_eq!(h.k.loaded(), vec![m(1)]);
}

#[test]
fn an_unload_that_finishes_as_its_wait_runs_out_is_an_unload() {
    let h = Harness::new();
    h.apply(1).unwrap();
    h.k.set_blocker(blocker(false, true, false));
    h.k.sim().unpatch_ends_before_reversal = true;
    let out = h.with(|a| a.unload(&quick())).unwrap();
    assert_eq!(out.removed.len(), 1, "{out:?}");
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("finished just after")),
        "{:?}",
        out.warnings
    );
    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.state, PatchState::Unpatched, "{st:?}");
    assert!(h.k.loaded().is_empty(), "{:?}", h.k.loaded());
    assert_eq!(*h.events().last().unwrap(), Event::Unloaded);
}

#[test]
fn busy_module_deletes_are_retried() {
    let h = Harness::new();
    h.apply(1).unwrap();
    h.k.sim().eagain_deletes = 3;
    h.apply(2).unwrap();
    assert_eq!(h.k.loaded(), vec![m(2)]);
    h.k.sim().eagain_deletes = 2;
    h.with(|a| a.unload(&TransitionOptions::default())).unwrap();
    assert!(h.k.loaded().is_empty());
}

#[test]
fn crash_before_load_leaves_a_truthful_status() {
    let h = Harness::new();
    h.apply(1).unwrap();
    h.k.sim().crash_on_load = true;
    let path = h.bundle(2);
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        h.with(|a| a.apply(&path, &ApplyOptions::default()))
    }));
    assert!(crashed.is_err());
    h.k.sim().crash_on_load = false;

    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.state, PatchState::Interrupted);
    assert_eq!(st.active.as_ref().unwrap().level.get(), 1, "not level 2");
    let op = st.interrupted_operation.as_ref().unwrap();
    assert_eq!((op.op, op.level.map(|l| l.get())), (OpKind::Apply, Some(2)));
    assert!(!st.operation_running);
    assert_eq!(st.exit_code, exit::NEWER_AVAILABLE);
    assert!(
        st.render().contains("did not finish"),
        "{:?} does not contain {:?}",
        st.render(),
        "did not finish"
    );

    // The next run records the interruption and goes on.
    assert_eq!(h.apply(2).unwrap().level.get(), 2);
    assert_eq!(
        h.events(),
        vec![Event::Applied, Event::Interrupted, Event::Applied]
    );
    assert!(
        h.logs().contains("was interrupted"),
        "{:?} does not contain {:?}",
        h.logs(),
        "was interrupted"
    );
    assert_eq!(h.with(|a| a.status()).unwrap().state, PatchState::Patched);
}

#[test]
fn crash_after_load_leaves_a_truthful_status() {
    let h = Harness::new();
    h.apply(1).unwrap();
    h.k.sim().crash_after_load = true;
    let path = h.bundle(2);
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        h.with(|a| a.apply(&path, &ApplyOptions::default()))
    }));
    assert!(crashed.is_err());
    h.k.sim().crash_after_load = false;

    // Mid-transition: level 1 still active, level 2 being applied.
    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.state, PatchState::Interrupted);
    assert_eq!(st.active.as_ref().unwrap().level.get(), 1);
    let t = st.transition.as_ref().unwrap();
    assert_eq!(
        (t.level.map(|l| l.get()), t.direction),
        (Some(2), "patching")
    );

    // The kernel finishes on its own: level 2 is active though no history says so.
    crate::host::Clock::sleep(&h.k, Duration::from_millis(50));
    crate::host::Clock::sleep(&h.k, Duration::from_millis(5));
    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.active.as_ref().unwrap().level.get(), 2);
    assert_eq!(st.leftover_modules.len(), 1, "level 1's module is left");
    assert_eq!(st.exit_code, exit::OK);

    // The next apply of that level reconciles and cleans up; the kernel finished the apply,
    // so the history records level 2 as applied (boot re-applies from the history).
    assert!(h.apply(2).unwrap().already_active);
    assert!(h.k.loaded() == vec![m(2)]);
    assert_eq!(h.events(), vec![Event::Applied, Event::Applied]);
    assert!(
        h.state().history[1].detail.contains("level 2 is active"),
        "{:?} does not contain {:?}",
        h.state().history[1].detail,
        "level 2 is active"
    );
}

#[test]
fn interrupted_transition_is_reversed_by_unload() {
    let h = Harness::new();
    h.apply(1).unwrap();
    h.k.set_blocker(blocker(true, false, false));
    h.k.sim().crash_after_load = true;
    let path = h.bundle(2);
    let _ = catch_unwind(AssertUnwindSafe(|| {
        h.with(|a| a.apply(&path, &ApplyOptions::default()))
    }));
    h.k.sim().crash_after_load = false;
    let err = h.apply(3).unwrap_err();
    assert!(err.to_string().contains("already in progress"), "{err}");
    assert!(err.to_string().contains("patchbay unload"), "{err}");
    let out = h.with(|a| a.unload(&quick())).unwrap();
    let removed: Vec<u32> = out.removed.iter().map(|l| l.get()).collect();
    assert_eq!(removed, vec![2, 1]);
    assert!(h.k.sysfs().is_empty() && h.k.loaded().is_empty());
}

#[test]
fn foreign_livepatches_are_not_replaced_silently() {
    let h = Harness::new();
    h.k.add_foreign("kpatch_vendor_fix", false);
    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.foreign_patches[0].name, "kpatch_vendor_fix");
    assert_eq!(st.exit_code, exit::UNSUPPORTED);
    let err = h.apply(1).unwrap_err();
    assert!(matches!(err, AgentError::ForeignPatches { .. }), "{err}");
    assert!(h.k.sim().loads.is_empty());

    let path = h.bundle(1);
    let opts = ApplyOptions {
        replace_foreign: true,
        ..ApplyOptions::default()
    };
    let out = h.with(|a| a.apply(&path, &opts)).unwrap();
    assert_eq!(out.replaced_foreign, vec!["kpatch_vendor_fix".to_owned()]);
    assert_eq!(h.k.sysfs(), vec![m(1)]);
    // Not our module: left for its owner.
    assert!(
        h.k.loaded().contains(&"kpatch_vendor_fix".to_owned()),
        "{:?} does not contain {:?}",
        h.k.loaded(),
        &"kpatch_vendor_fix".to_owned()
    );
}

#[test]
fn foreign_transition_blocks_apply() {
    let h = Harness::new();
    h.k.add_foreign("other_patch", true);
    let path = h.bundle(1);
    let opts = ApplyOptions {
        replace_foreign: true,
        ..ApplyOptions::default()
    };
    let err = h.with(|a| a.apply(&path, &opts)).unwrap_err();
    assert!(
        matches!(err, AgentError::TransitionInProgress { .. }),
        "{err}"
    );
    assert!(h.k.sim().loads.is_empty());
}

#[test]
fn downgrade_needs_rollback_or_flag() {
    let h = Harness::new();
    h.apply(2).unwrap();
    let err = h.apply(1).unwrap_err();
    assert!(matches!(err, AgentError::Downgrade { .. }), "{err}");
    let path = h.bundle(1);
    let opts = ApplyOptions {
        allow_downgrade: true,
        ..ApplyOptions::default()
    };
    assert_eq!(h.with(|a| a.apply(&path, &opts)).unwrap().level.get(), 1);
}

#[test]
fn a_changed_level_is_refused() {
    let h = Harness::new();
    h.apply(1).unwrap();
    let rebuilt = write_bundle(&h.k, &bundle_with(BUILD_ID, RELEASE, 1, "v2"), "l1b.pbb");
    let err = h
        .with(|a| a.apply(&rebuilt, &ApplyOptions::default()))
        .unwrap_err();
    assert!(matches!(err, AgentError::CacheConflict { .. }), "{err}");
    assert_eq!(err.exit_code(), exit::REFUSED);
}

#[test]
fn module_that_is_not_a_livepatch_is_removed_again() {
    let h = Harness::new();
    let path = write_bundle(
        &h.k,
        &bundle_with(BUILD_ID, RELEASE, 1, "nolivepatch"),
        "x.pbb",
    );
    let err = h
        .with(|a| a.apply(&path, &ApplyOptions::default()))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no livepatch of that name appeared"),
        "{err}"
    );
    assert!(h.k.loaded().is_empty());
    assert!(h.state().pending.is_none());
    assert!(h.state().last_error.is_some());
}

#[test]
fn status_exit_codes_and_unsupported_kernels() {
    let h = Harness::new();
    let st = h.with(|a| a.status()).unwrap();
    assert_eq!(st.verdict, Verdict::KernelUnsupported);
    assert_eq!(st.exit_code, exit::UNSUPPORTED);
    assert!(
        st.render().contains("kernel unsupported"),
        "{:?} does not contain {:?}",
        st.render(),
        "kernel unsupported"
    );
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["exit_code"], 5);
    assert_eq!(json["build_id"], BUILD_ID);

    let err = h
        .with(|a| a.rollback(&ApplyOptions::default()))
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::UNSUPPORTED);

    h.apply(1).unwrap();
    h.with(|a| a.unload(&TransitionOptions::default())).unwrap();
    let err = h
        .with(|a| a.rollback(&ApplyOptions::default()))
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::NO_PATCH);

    fs::remove_dir_all(h.k.paths().livepatch_dir).unwrap();
    let st = h.with(|a| a.status()).unwrap();
    assert!(!st.livepatch_supported);
    assert_eq!(st.exit_code, exit::UNSUPPORTED);
    let err = h.apply(1).unwrap_err();
    assert_eq!(err.exit_code(), exit::UNSUPPORTED, "{err}");
}

#[test]
fn corrupt_state_file_does_not_block_patching() {
    let h = Harness::new();
    h.apply(1).unwrap();
    fs::write(h.k.state_dir().state_file(), b"{ torn").unwrap();
    let st = h.with(|a| a.status()).unwrap();
    assert!(!st.warnings.is_empty());
    assert_eq!(st.active.unwrap().level.get(), 1, "the kernel is the truth");
    h.apply(2).unwrap();
    assert!(
        h.logs().contains("moved it to"),
        "{:?} does not contain {:?}",
        h.logs(),
        "moved it to"
    );
    assert_eq!(h.events(), vec![Event::Applied]);
}

#[test]
fn concurrent_operations_are_refused() {
    let h = Harness::new();
    let sd = h.k.state_dir();
    sd.ensure_layout().unwrap();
    let _held = StateLock::acquire(&sd.lock_file()).unwrap();
    let err = h.apply(1).unwrap_err();
    assert!(
        err.to_string().contains("another patchbay process"),
        "{err}"
    );
    assert!(h.k.sim().loads.is_empty());
    assert!(h.with(|a| a.status()).unwrap().operation_running);
}

#[test]
fn bench_raw_load_times_load_and_transition() {
    let h = Harness::new();
    let ko = h.k.root.path().join("raw.ko");
    fs::write(&ko, fake_module("pb_raw", "")).unwrap();
    let took = h
        .with(|a| a.bench_raw_load(&ko, &TransitionOptions::default()))
        .unwrap();
    assert!(
        took >= Duration::from_millis(20) && took < Duration::from_millis(30),
        "{took:?}"
    );
    assert_eq!(h.k.sysfs(), vec!["pb_raw".to_owned()]);
}

#[test]
fn identity_comes_from_uname_and_notes() {
    let h = Harness::new();
    let id = h.with(|a| a.identity()).unwrap();
    assert_eq!(id.build_id.as_str(), BUILD_ID);
    assert_eq!(id.release.as_str(), RELEASE);
    fs::write(h.k.paths().notes_path, b"garbage").unwrap();
    let err = h.with(|a| a.identity()).unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
}
