//! Patchbay's builder: turns a kernel fix into a livepatch module bundle for one exact kernel.
//!
//! Source mode ([`module_build`]) takes replacement functions marked with `PATCHBAY_REPLACE`
//! (see `include/patchbay.h`); diff mode ([`diff`]) finds them in the object diff of a fix.
//! Both hand typed [`markers`] to one module builder. Each stage is its own module so it can
//! be tested alone.

#![warn(missing_docs)]

pub mod codegen;
pub mod diff;
pub mod kbuild;
pub mod klp_elf;
pub mod markers;
pub mod module_build;
pub mod publish;
pub mod symbols;
pub mod upgrade;

/// The header patch authors include; the builder puts it on the include path.
pub const PATCHBAY_H: &str = include_str!("../include/patchbay.h");

/// The header for fixes built with `patchbay-build diff` (callbacks, ignored functions).
pub const PATCHBAY_DIFF_H: &str = include_str!("../include/patchbay-diff.h");
