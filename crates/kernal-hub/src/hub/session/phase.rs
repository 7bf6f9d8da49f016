//! Where a connection is in its life: waiting for its hello, being
//! verified, welcomed as a trainer or an evaluator, or closing. Its own file
//! so that each part of the session can match on it without importing the
//! actor's other parts.

use std::sync::Arc;

use super::parse::UpdateHeader;
use crate::protocol::ModelLayout;

pub(super) enum Phase {
    AwaitingHello,
    /// The hello arrived; its token is being checked. The hello deadline no
    /// longer runs: it covers the client's sending, not the hub's queue.
    Verifying,
    Ready(Ready),
    /// A welcomed evaluator (see [`super::evaluator`]).
    Evaluating(EvaluatorReady),
    Closing,
}

/// A welcomed trainer.
pub(super) struct Ready {
    pub(super) name: String,
    pub(super) specialty: String,
    pub(super) model: String,
    pub(super) layout: Arc<ModelLayout>,
    pub(super) pending: Option<UpdateHeader>,
}

/// A welcomed evaluator.
pub(super) struct EvaluatorReady {
    pub(super) name: String,
    pub(super) model: String,
    /// An `update` header was refused: its payload frame is dropped.
    pub(super) swallow_binary: bool,
}
