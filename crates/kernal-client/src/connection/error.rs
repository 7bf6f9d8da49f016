//! Why a trainer's run ended without finishing.

use kernal_core::protocol::tensors::TensorError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the hub refused this trainer: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("cannot reach the hub at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The learner's (or scorer's) own message, as it gave it.
    #[error("{0}")]
    Learner(String),
    /// A learner panicked while it held the lock; `.0` names which kind.
    #[error("{0} poisoned")]
    Poisoned(&'static str),
    /// The blocking task that trained or evaluated did not finish (a panic).
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("learner returned {got} weights, the model has {want}")]
    WrongWeights { got: usize, want: usize },
    #[error("{0}")]
    Encode(#[from] TensorError),
    #[error("stopped")]
    Stopped,
}
