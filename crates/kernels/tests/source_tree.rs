//! The newest kernel's source tree (fetched and prepared on first use: minutes, then cached):
//! Debian's release, and one vmlinux object compiled in it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Instant;

use patchbay_kernels::{fetch_selector, KernelSelector};

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn newest_source_tree_is_prepared_and_compiles_an_object() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let start = Instant::now();
    let tree = kernel.source_tree().unwrap();
    eprintln!(
        "source tree: {:.1?} -> {}",
        start.elapsed(),
        tree.dir().display()
    );
    assert_eq!(tree.release(), kernel.release().as_str());
    let uts = std::fs::read_to_string(tree.dir().join("include/generated/utsrelease.h")).unwrap();
    assert!(uts.contains(kernel.release().as_str()), "{uts}");
    let config = std::fs::read_to_string(tree.dir().join(".config")).unwrap();
    assert!(
        config.contains("CONFIG_LIVEPATCH=y"),
        "{:?} does not contain {:?}",
        config,
        "CONFIG_LIVEPATCH=y"
    );

    // A second call is a cache hit.
    let again = Instant::now();
    kernel.source_tree().unwrap();
    assert!(again.elapsed().as_secs() < 5);

    let object = tree.dir().join("fs/proc/cmdline.o");
    let _ = std::fs::remove_file(&object);
    let start = Instant::now();
    let out = tree.make().arg("fs/proc/cmdline.o").output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("compile fs/proc/cmdline.o: {:.1?}", start.elapsed());
    let bytes = std::fs::read(&object).unwrap();
    assert!(bytes.starts_with(b"\x7fELF"));
    assert!(bytes.windows(17).any(|w| w == b"cmdline_proc_show"));
    std::fs::remove_file(&object).unwrap();
}
