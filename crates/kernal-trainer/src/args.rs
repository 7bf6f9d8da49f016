//! What `kernal trainer` was asked to do, and how it fails: shared by the
//! command, its kernel-model learner and the evaluator.

use std::path::PathBuf;

use kernal_client::connection::{self, Compression};

#[derive(Debug, Clone)]
pub struct TrainerArgs {
    pub name: String,
    pub specialty: String,
    pub token: String,
    /// Extra trust for a `wss://` hub (PEM).
    pub ca: Option<PathBuf>,
    pub hub: String,
    pub model: String,
    pub data: Option<PathBuf>,
    /// Own source trees for the kernel model (`--source`, repeatable).
    pub source: Vec<PathBuf>,
    /// File name endings `--source` reads (`--ext`).
    pub ext: Vec<String>,
    pub local_epochs: usize,
    /// Classifiers: fewest mini-batch steps per version (`--min-steps`).
    pub min_steps: usize,
    /// Local steps per version of the kernel model (`--steps`).
    pub steps: Option<usize>,
    /// Defaults per model: 0.1 for an MLP, 5e-3 (AdamW) for the kernel model.
    pub lr: Option<f64>,
    pub batch_size: Option<usize>,
    pub max_versions: Option<u64>,
    pub json: bool,
    pub compression: Compression,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainerCliError {
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Client(#[from] connection::ClientError),
    #[error("{0}")]
    Other(String),
}

impl TrainerCliError {
    /// 2 for problems with what the user gave (data, shapes, refusal), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            TrainerCliError::Data(_) | TrainerCliError::Shape(_) => 2,
            TrainerCliError::Client(connection::ClientError::Refused { .. }) => 2,
            _ => 1,
        }
    }
}
