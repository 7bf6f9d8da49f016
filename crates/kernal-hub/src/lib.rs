//! The kernal hub daemon as a library: its actors, HTTP and WebSocket
//! surface, aggregation and SQLite storage.
//!
//! The `kernal` binary runs it as `kernal hub`; tests and embedders start a
//! hub with [`spawn_hub`] (own thread) or [`hub::start_hub`] (inside an actix
//! system) on a listener they bound. Trainers never link this crate: they use
//! `kernal-client`, which has no server in it.

pub mod aggregation;
pub mod config;
pub mod db;
pub mod error;
pub mod hub;
pub mod logging;
pub mod mapped;
pub mod range;

pub use kernal_core::{data, kernel, model, protocol};

pub use config::Config;
pub use hub::{spawn_hub, start_hub, HubHandle, RunningHub};
