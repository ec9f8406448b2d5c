//! Mutation fuzzing of the diff engine's ELF reader, comparison and extractor on real gcc-12
//! kernel objects: damaged input gives an error or a result, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use patchbay_build::diff::elf::ElfView;
use patchbay_build::diff::objects::compile_object;
use patchbay_build::diff::{engine, extract};
use patchbay_kernels::{fetch_selector, KernelSelector};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    match rng.below(4) {
        // A few random bytes anywhere.
        0 => {
            for _ in 0..=rng.below(8) {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
        }
        // The ELF and section headers, where offsets and sizes live.
        1 => {
            let i = rng.below(64);
            bytes[i] = rng.next() as u8;
            let shoff = u64::from_le_bytes(bytes[0x28..0x30].try_into().unwrap()) as usize;
            if shoff < bytes.len() {
                let j = shoff + rng.below(bytes.len() - shoff);
                bytes[j] = rng.next() as u8;
            }
        }
        // Truncation.
        2 => bytes.truncate(rng.below(bytes.len())),
        // A 32- or 64-bit field set to an extreme value.
        _ => {
            let i = rng.below(bytes.len().saturating_sub(8));
            let value: [u8; 8] = if rng.below(2) == 0 {
                [0xff; 8]
            } else {
                [0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0x80]
            };
            bytes[i..i + 8].copy_from_slice(&value);
        }
    }
    bytes
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn damaged_objects_never_panic() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let tree = kernel.source_tree().unwrap();
    let work = tempfile::tempdir().unwrap();
    let objects: Vec<Vec<u8>> = {
        let _exclusive = tree.lock().unwrap();
        ["fs/proc/cmdline.c", "fs/binfmt_misc.c"]
            .iter()
            .map(|source| {
                let out = work.path().join(format!("{}.o", source.replace('/', "_")));
                compile_object(&tree, source, &out).unwrap();
                std::fs::read(&out).unwrap()
            })
            .collect()
    };
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut parsed, mut refused) = (0, 0);
    for round in 0..4000 {
        let original = &objects[round % objects.len()];
        let damaged = mutate(&mut rng, original);
        let clean = ElfView::parse("clean", original).unwrap();
        match ElfView::parse("damaged", &damaged) {
            Err(_) => refused += 1,
            Ok(view) => {
                parsed += 1;
                let report = engine::compare(&clean, &view);
                let _ = engine::compare(&view, &clean);
                let mut routed = report.clone();
                let _ = engine::route_around_untraceable(&clean, &view, &mut routed);
                let _ = extract::unknown_special_sections(&view, &routed);
                let _ = extract::extract(&clean, &view, &routed, &BTreeMap::new(), false);
            }
        }
    }
    eprintln!("4000 damaged objects: {parsed} parsed, {refused} refused, no panic");
    assert!(
        parsed > 0 && refused > 0,
        "the mutations should reach both paths"
    );
}
