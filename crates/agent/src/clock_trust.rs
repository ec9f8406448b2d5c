//! How far the agent trusts the host's clock: enough to move up a channel's schedule, never
//! to move down it, and never to accept metadata that expired before a time the host has seen.
//!
//! A clock set back (a spoofed NTP answer, a wrong RTC) would otherwise do two things. The
//! deploy-after and wave schedule, read with the early clock, serves the channel's `previous`
//! level to a host that already runs the new one: a downgrade that loses fixes, which no
//! operator signed ([`wanted_level`] keeps the active level). And TUF checks expiry against
//! the clock, so metadata that expired since passes: a replay that freezes the host
//! ([`check_chain`] refuses it against [`VerifiedAt`], the latest time the host verified the
//! repository). Both, and a clock earlier than a time the server signed, are reported in the
//! check-in ([`patchbay_core::protocol::ClockWarning`]) so the dashboard shows them.

use std::path::{Path, PathBuf};

use patchbay_core::clock::rfc3339;
use patchbay_core::protocol::ClockWarning;
use patchbay_core::{BuildId, HostSeed, KernelRollout, PatchLevel};
use serde::{Deserialize, Serialize};

/// How far the clock may read behind a time already seen before the agent calls it set back:
/// NTP's slews and small steps stay well below.
pub const CLOCK_TOLERANCE_SECS: i64 = 600;

/// What a channel's signed rollout gives this host at its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The level the schedule serves at this host's clock; `None`: none.
    Scheduled(Option<PatchLevel>),
    /// The schedule read with this host's clock serves `scheduled`, below the `active` level,
    /// while the signed rollout names `signed`, at or above it: only the clock says go down,
    /// so `active` stays. A level is lowered only when the signed rollout itself names a lower
    /// one (a rollback or pin the operator signed).
    Held {
        /// The level the kernel runs; it stays.
        active: PatchLevel,
        /// What the schedule serves at this host's clock (`None`: nothing).
        scheduled: Option<PatchLevel>,
        /// The level the signed rollout rolls out.
        signed: PatchLevel,
    },
}

impl Wanted {
    /// The level to run: the scheduled one, or the active one when held.
    pub fn level(self) -> Option<PatchLevel> {
        match self {
            Wanted::Scheduled(level) => level,
            Wanted::Held { active, .. } => Some(active),
        }
    }

    /// For a held level: what the schedule read with `now` would have done, and why it is not.
    pub fn warning(self, rollout: &KernelRollout, now: i64) -> Option<String> {
        let Wanted::Held {
            active,
            scheduled,
            signed,
        } = self
        else {
            return None;
        };
        let schedule = if now < rollout.effective_at {
            format!("deploy-after {}", rfc3339(rollout.effective_at))
        } else {
            "its waves".to_owned()
        };
        Some(format!(
            "level {active} stays active: the channel's schedule ({schedule}) read with this \
             host's clock ({}) serves {}, but the signed rollout names level {signed}; only a \
             signed rollback lowers a level. Is the clock set back? Check NTP",
            rfc3339(now),
            scheduled.map_or("no level".to_owned(), |l| format!("level {l}")),
        ))
    }
}

/// The level `rollout` gives a host with `seed` running `active` at `now`, under the rule that
/// only signed metadata lowers a level. The schedule (deploy-after, waves) may hold a host back
/// from `rollout.level`, but never takes it below the level it runs; a rollout whose own level
/// is below the active one (a rollback or pin the operator signed) is served at once, whatever
/// the clock reads.
pub fn wanted_level(
    rollout: &KernelRollout,
    build_id: &BuildId,
    seed: &HostSeed,
    now: i64,
    active: Option<PatchLevel>,
) -> Wanted {
    let scheduled = rollout.level_for(build_id, seed, now);
    match active {
        Some(active) if rollout.level < active => Wanted::Scheduled(Some(rollout.level)),
        Some(active) if scheduled.is_none_or(|level| level < active) => Wanted::Held {
            active,
            scheduled,
            signed: rollout.level,
        },
        _ => Wanted::Scheduled(scheduled),
    }
}

/// The latest host time at which the signed repository verified, kept in `clock.json` in the
/// state directory. Raised only after a chain verified, so a clock that jumped forward is not
/// recorded (the one-day timestamp has expired at that time): the record is at most a
/// timestamp lifetime ahead of the real time.
#[derive(Debug, Clone)]
pub struct VerifiedAt {
    path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifiedAtFile {
    verified_at: i64,
}

impl VerifiedAt {
    /// The record in `state_dir`.
    pub fn new(state_dir: &Path) -> VerifiedAt {
        VerifiedAt {
            path: state_dir.join("clock.json"),
        }
    }

    /// The recorded time (Unix seconds); `None` when the repository never verified here. A
    /// damaged record counts as none: it only ever adds refusals.
    pub fn read(&self) -> Option<i64> {
        let bytes = std::fs::read(&self.path).ok()?;
        serde_json::from_slice::<VerifiedAtFile>(&bytes)
            .ok()
            .map(|f| f.verified_at)
    }

    /// Records that the repository verified at `now`, unless a later time is recorded.
    pub fn raise(&self, now: i64) -> std::io::Result<()> {
        if self.read().is_some_and(|seen| seen >= now) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&VerifiedAtFile { verified_at: now })
            .map_err(std::io::Error::other)?;
        patchbay_core::fsutil::write_private(&self.path, &bytes)
    }
}

/// The loaded chain, checked against the time the host last verified one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// Nothing to say.
    Fine,
    /// The clock reads earlier than at the last verification; the chain is still valid then.
    ClockBehind(String),
    /// A role of the chain expired before the last verification: only a clock set back let
    /// it pass. Refused.
    Replay(String),
}

/// Checks a chain whose first expiry is `first_expiry` (role, Unix seconds), verified with the
/// clock reading `now`, against `verified_at` ([`VerifiedAt::read`]).
pub fn check_chain(verified_at: Option<i64>, now: i64, first_expiry: (&str, i64)) -> ChainCheck {
    let Some(seen) = verified_at else {
        return ChainCheck::Fine;
    };
    let (role, expires) = first_expiry;
    if expires.saturating_add(CLOCK_TOLERANCE_SECS) < seen {
        return ChainCheck::Replay(format!(
            "{role}.json expired at {}, before {}, when this host last verified the signed \
             repository; it passed only because this host's clock reads {}. Refused as a replay \
             of expired metadata: correct the clock (NTP), then update again",
            rfc3339(expires),
            rfc3339(seen),
            rfc3339(now),
        ));
    }
    if now.saturating_add(CLOCK_TOLERANCE_SECS) < seen {
        return ChainCheck::ClockBehind(format!(
            "this host's clock reads {}, earlier than {}, when it last verified the signed \
             repository: it has been set back (or was ahead then). Check NTP",
            rfc3339(now),
            rfc3339(seen),
        ));
    }
    ChainCheck::Fine
}

/// A warning when `signed_at` (a time the server signed, RFC 3339) lies after `now` by more
/// than the tolerance: the server made that document later than this clock reads.
pub fn signed_time_ahead(what: &str, signed_at: &str, now: i64) -> Option<String> {
    let signed = patchbay_core::clock::parse_rfc3339(signed_at)?;
    (signed > now.saturating_add(CLOCK_TOLERANCE_SECS)).then(|| {
        format!(
            "{what} was signed at {}, after this host's clock ({}): the clock is behind. \
             Check NTP",
            rfc3339(signed),
            rfc3339(now),
        )
    })
}

/// The check-in's report of `notes` (what one update found doubtful about the clock), read
/// now; `None` when there is nothing to report.
pub fn clock_warning(notes: &[String]) -> Option<ClockWarning> {
    if notes.is_empty() {
        return None;
    }
    let mut detail = String::new();
    for c in notes.join("; ").chars() {
        if detail.len() + c.len_utf8() > ClockWarning::DETAIL_MAX {
            break;
        }
        detail.push(c);
    }
    Some(ClockWarning {
        host_time: patchbay_core::clock::unix_seconds(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use patchbay_core::Wave;

    const DAY: i64 = 86_400;
    const PROMOTED: i64 = 1_795_000_000;

    fn level(n: u32) -> PatchLevel {
        n.try_into().unwrap()
    }

    fn build_id() -> BuildId {
        "ab".repeat(20).parse().unwrap()
    }

    fn seed(n: u32) -> HostSeed {
        format!("{n:032x}").parse().unwrap()
    }

    /// Level 2 after a deploy-after delay, level 1 before it.
    fn deploy_after(level_now: u32, previous: Option<u32>) -> KernelRollout {
        KernelRollout {
            level: level(level_now),
            previous: previous.map(level),
            effective_at: PROMOTED,
            waves: vec![],
            pinned: false,
        }
    }

    #[test]
    fn a_clock_set_back_before_deploy_after_keeps_the_active_level() {
        let rollout = deploy_after(2, Some(1));
        let week_before = PROMOTED - 7 * DAY;
        // What the schedule alone says: level 1 before the delay.
        assert_eq!(
            rollout.level_for(&build_id(), &seed(0), week_before),
            Some(level(1))
        );
        let wanted = wanted_level(&rollout, &build_id(), &seed(0), week_before, Some(level(2)));
        assert_eq!(
            wanted,
            Wanted::Held {
                active: level(2),
                scheduled: Some(level(1)),
                signed: level(2)
            }
        );
        assert_eq!(wanted.level(), Some(level(2)));
        let warning = wanted.warning(&rollout, week_before).unwrap();
        assert!(
            warning.contains("level 2 stays") && warning.contains("deploy-after"),
            "{warning}"
        );
        // Set back before a first promotion (no previous level): the level stays too.
        let first = deploy_after(2, None);
        assert_eq!(
            wanted_level(&first, &build_id(), &seed(0), week_before, Some(level(2))).level(),
            Some(level(2))
        );
    }

    #[test]
    fn a_clock_set_back_out_of_a_wave_keeps_the_active_level() {
        let rollout = KernelRollout {
            waves: vec![
                Wave {
                    at: PROMOTED,
                    percent: 1,
                },
                Wave {
                    at: PROMOTED + DAY,
                    percent: 100,
                },
            ],
            ..deploy_after(3, Some(2))
        };
        let hosts: Vec<HostSeed> = (0..200).map(seed).collect();
        for host in &hosts {
            // Every host has level 3 after the last wave; the clock then reads half a day
            // earlier, when most hosts were not in the wave yet.
            let back = PROMOTED + DAY / 2;
            let wanted = wanted_level(&rollout, &build_id(), host, back, Some(level(3)));
            assert_eq!(wanted.level(), Some(level(3)), "{host:?}");
        }
    }

    #[test]
    fn the_schedule_still_moves_hosts_up_and_a_signed_rollback_moves_them_down() {
        let rollout = deploy_after(2, Some(1));
        // Up, when the time comes; not before.
        for (now, expected) in [(PROMOTED - 1, 1), (PROMOTED, 2)] {
            assert_eq!(
                wanted_level(&rollout, &build_id(), &seed(0), now, Some(level(1))),
                Wanted::Scheduled(Some(level(expected)))
            );
        }
        // A rollback the operator signed: the rollout itself names level 1. It is served at
        // once, even to a clock that reads before it was signed.
        let rolled_back = deploy_after(1, None);
        for now in [PROMOTED, PROMOTED - 7 * DAY] {
            assert_eq!(
                wanted_level(&rolled_back, &build_id(), &seed(0), now, Some(level(2))),
                Wanted::Scheduled(Some(level(1)))
            );
        }
        // Nothing active: the schedule decides alone.
        assert_eq!(
            wanted_level(&rollout, &build_id(), &seed(0), PROMOTED - 1, None),
            Wanted::Scheduled(Some(level(1)))
        );
        assert_eq!(Wanted::Scheduled(None).warning(&rollout, PROMOTED), None);
    }

    #[test]
    fn metadata_that_expired_before_the_last_verification_is_a_replay() {
        let verified = PROMOTED;
        // Never verified: nothing to compare with.
        assert_eq!(
            check_chain(None, PROMOTED - 7 * DAY, ("timestamp", PROMOTED - 6 * DAY)),
            ChainCheck::Fine
        );
        // The clock set back a week, the timestamp expired five days before the last check.
        let replay = check_chain(
            Some(verified),
            verified - 7 * DAY,
            ("timestamp", verified - 5 * DAY),
        );
        assert!(
            matches!(&replay, ChainCheck::Replay(why) if why.contains("timestamp.json expired")),
            "{replay:?}"
        );
        // Set back, but the metadata is fresh (valid after the last check): a warning only.
        let behind = check_chain(
            Some(verified),
            verified - 7 * DAY,
            ("timestamp", verified + DAY),
        );
        assert!(
            matches!(&behind, ChainCheck::ClockBehind(why) if why.contains("set back")),
            "{behind:?}"
        );
        // A clock going on as it should.
        assert_eq!(
            check_chain(
                Some(verified),
                verified + 3600,
                ("timestamp", verified + DAY)
            ),
            ChainCheck::Fine
        );
        // A small step back is NTP's business.
        assert_eq!(
            check_chain(Some(verified), verified - 60, ("timestamp", verified + DAY)),
            ChainCheck::Fine
        );
    }

    #[test]
    fn the_verification_time_only_goes_up() {
        let dir = tempfile::tempdir().unwrap();
        let record = VerifiedAt::new(dir.path());
        assert_eq!(record.read(), None);
        record.raise(PROMOTED).unwrap();
        record.raise(PROMOTED - 7 * DAY).unwrap();
        assert_eq!(record.read(), Some(PROMOTED));
        record.raise(PROMOTED + 1).unwrap();
        assert_eq!(record.read(), Some(PROMOTED + 1));
        std::fs::write(dir.path().join("clock.json"), b"garbage").unwrap();
        assert_eq!(record.read(), None);
    }

    #[test]
    fn a_time_the_server_signed_after_the_clock_is_reported() {
        let signed = rfc3339(PROMOTED);
        assert!(signed_time_ahead("the channel document", &signed, PROMOTED - DAY).is_some());
        assert_eq!(signed_time_ahead("x", &signed, PROMOTED), None);
        assert_eq!(signed_time_ahead("x", "not a time", PROMOTED), None);
    }
}
