//! `kernal bench`: a load benchmark of the hub. Starts its own hub (a child
//! process, so its peak RSS and CPU time can be read from /proc) or uses
//! `--hub`, connects N synthetic trainers as real WebSocket clients in this
//! process (no learning: each answers every version with a fixed delta),
//! runs R versions after a warm-up and prints the figures.

mod args;
mod cli;
mod connect;
mod error;
mod frames;
mod hub;
mod measure;
mod rejoin;
mod report;
mod run;
mod trainer;
mod wire;

pub use args::BenchArgs;
pub use cli::run_cli;
pub use error::BenchError;
pub use report::{render, BenchReport};
pub use run::run;
