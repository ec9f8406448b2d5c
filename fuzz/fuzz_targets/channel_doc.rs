//! `ChannelDoc::parse` and rollout evaluation on arbitrary documents: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let channel = patchbay_core::ChannelName::default_channel();
    if let Ok(doc) = patchbay_core::ChannelDoc::parse(data, &channel) {
        let seed: patchbay_core::HostSeed = "00".repeat(16).parse().expect("a valid seed");
        for (build_id, rollout) in &doc.kernels {
            for now in [i64::MIN, -1, 0, 1_800_000_000, i64::MAX] {
                let _ = rollout.level_for(build_id, &seed, now);
                let _ = rollout.percent_at(now);
            }
        }
    }
});
