//! Patchbay's patch server (see docs/distribution.md). Work in progress.
