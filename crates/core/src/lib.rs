//! Shared vocabulary of Patchbay: the values the builder, the agent and the server agree on.
//!
//! Everything that crosses a trust boundary — a bundle file, a manifest, a kernel's identity — is
//! parsed into a newtype here once, so the rest of the code never handles raw strings for them.
//! The JSON the agent, the builder and the server exchange is declared in [`protocol`], once.
#![warn(missing_docs)]

pub mod bundle;
pub mod channel;
pub mod clock;
pub mod debian;
pub mod fsutil;
pub mod ids;
pub mod manifest;
pub mod modinfo;
pub mod protocol;
pub mod registration;
pub mod report;
pub mod version;

pub use bundle::{Bundle, BundleError};
pub use channel::{
    bundle_target_name, ChannelDoc, ChannelDocError, ChannelName, HostSeed, KernelRollout, Wave,
    CHANNEL_MAX_BYTES,
};
pub use debian::{DebianRelease, Distribution, KernelSeries};
pub use ids::{BuildId, CveId, IdError, KernelRelease, ModuleName, ObjectName, PatchLevel, Sha256};
pub use manifest::{Manifest, ManifestError, ReplacedFunction, MANIFEST_FORMAT};
pub use report::{CveOutcome, CveStatus, DropCategory, UpgradeReport};
pub use version::UpstreamVersion;
