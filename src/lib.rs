//! kernal: a collaborative (federated) training hub, its reference trainer and
//! a scenario harness, in one crate.

pub mod aggregation;
pub mod config;
pub mod db;
pub mod error;
pub mod protocol;
pub mod trainer;
pub mod hub;
