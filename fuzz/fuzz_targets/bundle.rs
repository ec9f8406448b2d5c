//! `Bundle::from_reader` on arbitrary bytes: an error or a bundle whose module matches its
//! manifest, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = patchbay_core::Bundle::from_reader(data, "fuzz") {
        assert_eq!(bundle.module().len() as u64, bundle.manifest().module.size);
        assert_eq!(
            patchbay_core::Sha256::of(bundle.module()),
            bundle.manifest().module.sha256
        );
    }
});
