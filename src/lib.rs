//! kernal: a collaborative (federated) training hub, its reference trainer and
//! a scenario harness, in one crate.
//!
//! Tests and embedders start a hub with [`spawn_hub`] (own thread) or
//! [`hub::start_hub`] (inside an actix system) on a listener they bound.

pub mod aggregation;
pub mod bench;
pub mod config;
pub mod db;
pub mod error;
pub mod harness;
pub mod hub;
pub mod kernel_cli;
pub mod logging;
pub mod range;
pub mod trainer;

pub use kernal_core::{data, kernel, model, protocol};

pub use config::Config;
pub use hub::{spawn_hub, start_hub, HubHandle, RunningHub};
