//! Diff mode (work in progress): a live patch from a unified diff of the kernel source, by
//! compiling only the changed translation units and diffing the objects. Each stage is its own
//! module: `patch_file` (what the diff touches), `preflight` (kernel config, compiler, the diff
//! applies). Stages still to come: object compilation, the object diff engine, symbols, module.

pub mod clones;
pub mod elf;
pub mod engine;
pub mod extract;
pub mod headers;
pub mod include_index;
pub mod kbuild_home;
pub mod objects;
pub mod patch_file;
pub mod pipeline;
pub mod preflight;
pub mod refusal;
