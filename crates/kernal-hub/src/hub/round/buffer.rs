//! What a round holds: the accepted updates buffered since the last
//! version, with their vote and coefficient, and how a streamed one enters
//! the running sum.

use std::sync::Arc;

use crate::aggregation::robust::Claim;
use crate::aggregation::stream::Accumulator;
use crate::protocol::tensors::TensorError;
use crate::protocol::ModelLayout;

/// Whether a buffered update counts in its round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    /// The trainer's newest update of the round: it counts.
    Counts,
    /// A newer update of the same trainer replaced it: consumed by the fold
    /// with no weight (acknowledged updates are never lost, but a member
    /// has one vote).
    Superseded,
    /// Its trainer was revoked before the fold: refused, no weight.
    Dropped,
    /// Left out by the screen (`aggregation::screening`): the fold was
    /// measurably better on the hub's data without it. Consumed with no
    /// weight, like a superseded update.
    Screened,
}

/// An accepted, durable update waiting in a model's buffer.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub row_id: i64,
    pub update_id: String,
    pub trainer: String,
    pub base_version: u64,
    pub num_examples: u64,
    /// Staleness when it was accepted.
    pub staleness: u64,
    /// L2 norm of the delta (before clipping).
    pub norm: f64,
    pub clipped: bool,
    pub vote: Vote,
    /// The weight and clip factor this update counts with. For a streamed
    /// update, what it was added to the accumulator with (provisional until
    /// [`settle`]); for a kept one, set by [`settle`].
    pub coef: (f64, f32),
    /// The delta, kept only for strategies that need every delta at fold
    /// time (median, trimmed mean); streamed ones live in the accumulator.
    pub delta: Option<Arc<Vec<f32>>>,
    /// The integer and bool tensors' deltas, for their rules (None: the
    /// model has none): `aggregation::integer_rules`.
    pub ints: Option<Arc<[f32]>>,
}

impl Buffered {
    pub fn claim(&self) -> Claim {
        Claim {
            num_examples: self.num_examples,
            staleness: self.staleness,
            norm: self.norm,
        }
    }

    pub fn counts(&self) -> bool {
        self.vote == Vote::Counts
    }

    /// `trainer/update_id`, as versions list what they folded.
    pub fn label(&self) -> String {
        format!("{}/{}", self.trainer, self.update_id)
    }
}

/// A durable update about to be buffered.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub row_id: i64,
    pub update_id: String,
    pub trainer: String,
    pub base_version: u64,
    pub num_examples: u64,
    /// Staleness recorded when it was accepted (a reloaded update keeps
    /// it); None: counted from the model's current version.
    pub staleness: Option<u64>,
    /// The delta's L2 norm when the session already computed it.
    pub norm: Option<f64>,
}

/// Adds `(weight, factor)` of one update's delta to the accumulator,
/// straight from its encoded bytes, and records it as the update's coefficient.
pub fn stream_into(
    acc: &mut Accumulator,
    layout: &ModelLayout,
    b: &mut Buffered,
    coef: (f64, f32),
    payload: &[u8],
) -> Result<(), TensorError> {
    acc.add_payload(layout, coef, payload)?;
    b.coef = coef;
    b.clipped = coef.1 < 1.0;
    Ok(())
}
