//! Patchbay's patch server (see docs/distribution.md for the contract with the agent):
//! cumulative patch levels stored per kernel build, signed as TUF targets, served through
//! channels; hosts register and check in.
//!
//! Layers, each usable on its own: [`config`] (config.toml), [`store`] (the database behind the
//! [`store::Store`] trait), [`blobs`] (content-addressed blobs), [`tuf`] (keys and signed
//! metadata), [`service`] (what the server does; [`service::archive`], air-gapped
//! export/import), [`api`] (HTTP) and [`ui`] (the dashboard).
//!
//! Handlers (`api`, `ui`, the CLI) call [`Service`] only: its database, blob store and TUF
//! repository are private fields, so the compiler keeps them from reaching past it.
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod blobs;
pub mod channel_review;
pub mod config;
pub mod cve;
pub mod doctor;
pub mod error;
pub mod listener;
pub mod proxy;
pub mod service;
pub mod store;
pub(crate) mod throttle;
pub mod tls;
pub mod tuf;
pub mod ui;

pub use error::ServerError;
pub use service::Service;
