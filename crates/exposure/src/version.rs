//! Upstream kernel versions: the one type lives in `patchbay-core` (the builder, the kernel
//! cache and the agent read them too).

pub use patchbay_core::version::UpstreamVersion;
