//! The air-gapped archive reader on arbitrary files: an error or files only under
//! `metadata/` and `targets/`, within the size limits, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("in.tar.gz");
    std::fs::write(&archive, data).expect("write input");
    let out = dir.path().join("out");
    let limits = patchbay_updates::Limits {
        max_bundle_bytes: 1 << 20,
        max_metadata_bytes: 1 << 20,
    };
    if patchbay_updates::archive::unpack_with_limits(&archive, &out, &limits).is_ok() {
        for entry in std::fs::read_dir(&out).expect("unpacked dir") {
            let name = entry.expect("entry").file_name();
            assert!(name == "metadata" || name == "targets", "{name:?}");
        }
    }
});
