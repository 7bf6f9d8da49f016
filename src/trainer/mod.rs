//! The `kernal trainer` command. The learner and the connection loop are the
//! `kernal-client` library, which custom trainers use without the hub.

pub mod cli;
pub mod evaluator_cli;
pub mod kernel;
pub mod status;
