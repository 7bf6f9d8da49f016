//! What `kernal harness SCENARIO` is given (the binary's command line fills it).

use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct HarnessArgs {
    pub scenario: String,
    pub hub: Option<String>,
    pub report: Option<PathBuf>,
    pub seed: Option<u64>,
    pub admin_token: Option<String>,
    /// Extra trust for an `https://` hub (PEM).
    pub ca: Option<PathBuf>,
    pub progress: bool,
    /// Write the run's models here as checkpoints (`--keep-weights`).
    pub keep_weights: Option<PathBuf>,
}
