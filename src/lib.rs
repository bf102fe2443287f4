//! tango-rs: a wire-compatible Rust port of Autolab's Tango autograding daemon.
//!
//! Read `docs/architecture.md` first. In one breath: the HTTP layer ([`api`]) validates
//! requests and files ([`labs`]) and queues jobs in a [`store`]; a [`manager`] claims them
//! and hands each to a [`worker`], which drives a machine from a [`vmms`] backend through
//! Tango's steps; the output goes back by [`callback`] or by poll. Inside the machine, the
//! [`autodriver`] runs `make` under limits. The process and file helpers that the
//! autodriver and the `local` backend both need are in [`host`].
//!
//! Everything but the autodriver and [`host`] sits behind the `daemon` feature, so a static
//! autodriver builds without the server's dependencies.

pub mod autodriver;
pub mod host;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this build was made from (see `build.rs`), or "unknown".
pub const COMMIT: &str = env!("TANGO_COMMIT");

#[cfg(feature = "daemon")]
pub mod api;
#[cfg(feature = "daemon")]
pub mod app;
#[cfg(feature = "daemon")]
pub mod callback;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod http;
#[cfg(feature = "daemon")]
pub mod labs;
#[cfg(feature = "daemon")]
pub mod logging;
#[cfg(feature = "daemon")]
pub mod manager;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod model;
#[cfg(feature = "daemon")]
pub mod owner;
#[cfg(feature = "daemon")]
pub mod preallocator;
#[cfg(feature = "daemon")]
pub mod provenance;
#[cfg(feature = "daemon")]
pub mod store;
#[cfg(feature = "daemon")]
pub mod vmms;
#[cfg(feature = "daemon")]
pub mod worker;
