//! `kernal harness SCENARIO`: automated multi-trainer scenarios as regression
//! tests of the collective model. Starts its own hub (a `kernal hub` child
//! process on a free loopback port with a fresh database) or uses `--hub`,
//! runs real WebSocket trainers concurrently, evaluates the collective model,
//! compares it with specialists trained alone, checks the ledger, prints a
//! table and a verdict, writes a JSON report and records the run on the hub.

mod args;
pub mod attack;
mod cli;
mod criterion;
mod dataset;
mod error;
mod flood;
mod hub;
mod keep;
pub mod kernel;
mod kernel_baseline;
mod kernel_report;
mod kernel_training;
mod learners;
pub mod poisoning;
mod progress;
mod record;
mod regression;
pub mod report;
mod run;
mod run_once;
pub mod scenario;
mod scenario_check;
mod scoring;

pub use args::HarnessArgs;
pub use cli::{list_cli, run_cli};
pub use error::HarnessError;
pub use report::{render, Criterion, Report, RunOutcome, TrainerRow};
pub use run::run;
