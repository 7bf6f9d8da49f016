//! Why a round could not be settled or taken apart: a stored payload that
//! could not be read back, or one that does not decode.

use crate::error::DbError;
use crate::protocol::tensors::TensorError;

/// A pending update's payload could not be read back from the ledger or
/// its blob file.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(transparent)]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("ledger row {0} has no payload")]
    Missing(i64),
}

impl PayloadError {
    /// The storage failure underneath, if it is one (a missing payload is
    /// the ledger's inconsistency, not the disk's).
    pub fn storage(&self) -> Option<&DbError> {
        match self {
            PayloadError::Db(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a round's stored updates could not be folded again.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("update {update_id}: {source}")]
    Tensor {
        update_id: String,
        source: TensorError,
    },
}

impl RoundError {
    pub(crate) fn tensor(update_id: &str, source: TensorError) -> Self {
        RoundError::Tensor {
            update_id: update_id.to_string(),
            source,
        }
    }
}
