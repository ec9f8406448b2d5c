//! Diff mode: a live patch from a unified diff of the kernel source, by compiling only the
//! changed translation units and diffing the objects. Each stage is its own module:
//! `patch_file` (what the diff touches), `preflight` (kernel config, compiler, the diff
//! applies), `objects` (original and patched objects, and the binary each belongs to),
//! `headers` (a changed header alters no other object), `engine` and `clones` (what changed),
//! `extract` (the replacement code as one object), `ibt` (on IBT kernels, no address of a
//! function the running kernel sealed). [`pipeline`] runs them in order and hands
//! typed markers to the module builder; [`refusal`] says why a diff cannot be live-patched.

pub mod clones;
pub mod elf;
pub mod engine;
pub mod extract;
pub mod headers;
pub mod ibt;
pub mod include_index;
pub(crate) mod kbuild_home;
pub mod objects;
pub mod patch_file;
pub mod pipeline;
pub mod preflight;
pub mod refusal;
