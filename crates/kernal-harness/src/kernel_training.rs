//! A kernel scenario's local training settings (`[kernel]`): part of the
//! scenario file, so the scenario's types can hold them without reaching
//! into the kernel run.

use serde::{Deserialize, Serialize};

use kernal_client::kernel::{DEFAULT_BATCH, DEFAULT_LR, DEFAULT_STEPS};

/// A kernel scenario's local training (`[kernel]`), per trainer and version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelTraining {
    /// AdamW steps per version (`kernal trainer --steps`).
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Windows of the model's context per step (`--batch-size`).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// AdamW learning rate (`--lr`); a trainer's own `lr` wins.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Windows of the model's context scored per held-out set and model
    /// (spread evenly over the set): bounds the scoring's cost.
    #[serde(default = "default_eval_windows")]
    pub eval_windows: usize,
}

fn default_steps() -> usize {
    DEFAULT_STEPS
}
fn default_batch() -> usize {
    DEFAULT_BATCH
}
fn default_lr() -> f64 {
    DEFAULT_LR
}
fn default_eval_windows() -> usize {
    1024
}

impl Default for KernelTraining {
    fn default() -> Self {
        KernelTraining {
            steps: default_steps(),
            batch: default_batch(),
            lr: default_lr(),
            eval_windows: default_eval_windows(),
        }
    }
}
