//! The diff engine's read-only ELF view on arbitrary objects: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = patchbay_build::diff::elf::ElfView::parse("fuzz.o", data) {
        for symbol in &view.symbols {
            if let Some(index) = symbol.section {
                let _ = view.section(index);
                let _ = view.symbol_of_section(index);
            }
        }
    }
});
