//! The harness's error: a scenario that cannot be loaded, or a run that
//! could not be carried out (both exit 2; a failed criterion is no error).

use super::scenario::ScenarioError;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("{0}")]
    Run(String),
}

/// Most run failures are another library's error, shown as it says it.
pub(crate) fn run_err(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Run(e.to_string())
}
