//! The livepatch ELF rewriter's readers on arbitrary objects: never a panic, and memory
//! bounded by the input (hostile section tables are refused, not allocated).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = patchbay_build::klp_elf::undefined_symbols(data);
    let _ = patchbay_build::klp_elf::inspect(data);
    let _ = patchbay_build::klp_elf::rewrite(data, &Default::default());
});
