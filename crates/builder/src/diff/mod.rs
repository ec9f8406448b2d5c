//! Diff mode: a live patch from a unified diff of the kernel source, by compiling only the
//! changed translation units and diffing the objects. Each stage is its own module:
//! `patch_file` (what the diff touches), `preflight` (kernel config, compiler, the diff
//! applies), `objects` (original and patched objects, and the binary each belongs to),
//! `headers` (a changed header alters no other object), `layouts` (no struct that exists changes
//! its layout), `engine` and `clones` (what changed),
//! `extract` (the replacement code as one object), `ibt` (on IBT kernels, no address of a
//! function the running kernel sealed). [`pipeline`] runs them in order and hands
//! typed markers to the module builder; [`refusal`] says why a diff cannot be live-patched.

pub mod c_items;
pub mod clones;
pub mod elf;
pub mod engine;
pub mod extract;
pub mod headers;
pub mod ibt;
pub mod include_index;
pub(crate) mod kbuild_home;
pub mod layouts;
pub mod objects;
pub mod patch_file;
pub mod pipeline;
pub mod preflight;
pub mod refusal;

/// Test helper: compiles C with gcc-12 as the kernel's build does for a diff (`-O2 -fno-pic
/// -ffunction-sections -fdata-sections`, plus `extra` flags), for rules on real objects.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) fn gcc12_object(
    dir: &std::path::Path,
    name: &str,
    source: &str,
    extra: &[&str],
) -> elf::ElfView {
    let c = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, source).unwrap();
    let status = std::process::Command::new("gcc-12")
        .args(["-O2", "-fno-pic", "-ffunction-sections", "-fdata-sections"])
        .args(extra)
        .args(["-c", "-o"])
        .arg(&o)
        .arg(&c)
        .status()
        .expect("gcc-12 (apt-get install gcc-12; scripts/setup installs it)");
    assert!(status.success());
    elf::ElfView::parse(name, &std::fs::read(&o).unwrap()).unwrap()
}
