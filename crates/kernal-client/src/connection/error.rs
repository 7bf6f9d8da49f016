//! Why a trainer's run ended without finishing.

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the hub refused this trainer: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("cannot reach the hub at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{0}")]
    Learner(String),
    #[error("stopped")]
    Stopped,
}
