//! `Manifest::parse`: what parses serialises and parses back to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = patchbay_core::Manifest::parse(data) {
        let json = manifest.to_json().expect("a parsed manifest serialises");
        let again = patchbay_core::Manifest::parse(&json).expect("and parses again");
        assert_eq!(manifest, again);
    }
});
