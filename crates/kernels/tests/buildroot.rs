//! The trixie build root (made with mmdebstrap on first use: about a minute, then cached):
//! Debian 13's gcc-14 runs inside, compiles in a bound host directory, and the cache stays
//! untouched by what commands do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::time::Instant;

use object::{Object, ObjectSection};
use patchbay_kernels::buildroot::{host_has_compiler, BuildRoot, DebianSuite};

#[test]
#[ignore = "needs root, mmdebstrap and Debian's mirror (the slow suite): scripts/test runs it"]
fn trixie_root_compiles_with_gcc_14() {
    let start = Instant::now();
    let root = BuildRoot::ensure(DebianSuite::Trixie).unwrap();
    eprintln!(
        "build root: {:.1?} -> {}",
        start.elapsed(),
        root.path().display()
    );
    assert_eq!(root.suite(), DebianSuite::Trixie);

    let version = root.compiler_version_text("gcc-14").unwrap();
    assert!(version.starts_with("gcc-14 (Debian 14."), "{version}");
    assert_eq!(version, root.recorded_compiler());
    // Debian's kernel Makefiles call the compiler by its triplet name.
    let kernel_text = format!("\"x86_64-linux-gnu-{version}\"");
    assert!(root.has_compiler(&kernel_text).unwrap(), "{kernel_text}");
    assert!(!root
        .has_compiler("gcc-14 (Debian 14.0.0-1) 14.0.0")
        .unwrap());
    assert_eq!(
        DebianSuite::for_compiler_version(&kernel_text),
        Some(DebianSuite::Trixie)
    );
    // The Debian 12 host does not have it (on a Debian 13 host it would).
    let host_is_bookworm =
        std::fs::read_to_string("/etc/debian_version").is_ok_and(|v| v.starts_with("12."));
    if host_is_bookworm {
        assert!(!host_has_compiler(&kernel_text));
    }

    // A compile in a bound host directory, run from it: the object is GCC 14's.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("hello.c"),
        "int answer(void) { return 42; }\n",
    )
    .unwrap();
    let output = root
        .command("gcc-14", &[work.path()])
        .args(["-O2", "-c", "hello.c", "-o", "hello.o"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(work.path().join("hello.o")).unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    let comment = file.section_by_name(".comment").unwrap().data().unwrap();
    let comment = String::from_utf8_lossy(comment);
    assert!(comment.contains("GCC: (Debian 14."), "{comment:?}");

    // The working directory is bound when no bind covers it, at the same path.
    let sub = work.path().join("sub dir");
    std::fs::create_dir(&sub).unwrap();
    let output = root.command("pwd", &[]).current_dir(&sub).output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim_end(),
        sub.to_str().unwrap()
    );

    // The program's exit status comes back; what it writes outside the binds vanishes.
    let status = root
        .command("sh", &[])
        .args(["-c", "echo x > /tmp/leak && echo y > /etc/leak && exit 3"])
        .current_dir("/")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    for leak in ["tmp/leak", "etc/leak"] {
        assert!(!root.path().join(leak).exists(), "{leak} reached the cache");
    }
    assert!(!Path::new("/etc/leak").exists());

    // A second ensure is a cache hit.
    let again = Instant::now();
    let cached = BuildRoot::ensure(DebianSuite::Trixie).unwrap();
    assert_eq!(cached, root);
    assert!(again.elapsed().as_millis() < 500, "{:?}", again.elapsed());
}
