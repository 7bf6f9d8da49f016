//! The `kernal trainer`, `kernal evaluator`, `kernal evaluate` and
//! `kernal complete` commands. The learner and the connection loop are the
//! `kernal-client` library, which custom trainers use without the hub.

pub mod args;
pub mod cli;
pub mod evaluator_cli;
pub mod kernel;
pub mod kernel_cli;
pub mod status;
pub mod token;
