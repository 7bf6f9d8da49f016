//! One round of a model: the updates buffered since the last version, the
//! running sum streamed updates are folded into as they arrive, and the fold
//! that turns them into the next version. Pure computation (the fold task
//! calls it off the actor), tested without actix.
//!
//! A round counts members, not messages (see `aggregation::robust`): an
//! update is folded into the running sum as it arrives with a provisional
//! coefficient (its weight under the last fold's bounds); at fold time
//! [`settle`] computes each member's final coefficient from the round's own
//! members (one vote per trainer, capped weight, the clipping bound) and
//! corrects the sum for the few whose coefficient changed, re-reading their
//! stored payloads. A team whose claims and norms are stable needs no
//! correction.

mod buffer;
mod error;

use std::sync::Arc;

pub use self::buffer::{stream_into, Arrival, Buffered, Vote};
pub use self::error::{PayloadError, RoundError};
use crate::aggregation::robust::{self, Bounds, RobustState};
use crate::aggregation::stream;
pub use crate::aggregation::stream::Accumulator;
use crate::aggregation::{
    self, AggregateReport, AggregationSettings, Contribution, Intake, ServerState,
};
use crate::protocol::ModelLayout;

/// The inputs of one fold, detached from the hub so it can run elsewhere.
#[derive(Debug)]
pub struct FoldInput {
    pub version: u64,
    pub weights: Arc<Vec<f32>>,
    pub updates: Vec<Buffered>,
    pub acc: Option<Accumulator>,
    pub settings: AggregationSettings,
    pub server: ServerState,
    /// The bounds tracked from earlier folds.
    pub robust: RobustState,
}

/// What [`settle`] decided for a round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settlement {
    pub bounds: Bounds,
    /// The bounds for the next fold.
    pub next: RobustState,
    /// Streamed updates re-read to rebuild the running sum (0: none changed).
    pub corrected: usize,
    /// Members with a tensor scaled down to the round's per-tensor bound.
    pub tensor_clipped: usize,
}

/// Gives every update of the round its final coefficient: members (the
/// newest update of each trainer) by the bounds tracked from earlier folds
/// (the first fold: its own members' median claim and norm quantile),
/// superseded and dropped ones none. Where a streamed update was added with
/// another coefficient, the running sum is rebuilt from the stored payloads
/// (`payload`): subtracting a 1e8-weighted delta from an f32 sum would leave
/// its rounding error behind. A stable team never needs it after the first
/// fold; a trainer that floods or lies makes its rounds re-read.
pub fn settle(
    input: &mut FoldInput,
    layout: &ModelLayout,
    mut payload: impl FnMut(&Buffered) -> Result<Vec<u8>, PayloadError>,
) -> Result<Settlement, RoundError> {
    let s = &input.settings;
    let members: Vec<&Buffered> = input.updates.iter().filter(|b| b.counts()).collect();
    let claims: Vec<f64> = members.iter().map(|b| b.num_examples as f64).collect();
    let norms: Vec<f64> = members.iter().map(|b| b.norm).collect();
    let round_median = robust::lower_median(&claims);
    let q = robust::norm_quantile(input.robust.norm_quantile, &norms, s);
    let bounds = Bounds {
        examples_cap: match input.robust.median_examples.or(round_median) {
            Some(m) if s.max_weight_ratio > 0.0 => Some(m * s.max_weight_ratio),
            _ => None,
        },
        clip_bound: robust::clip_bound(q, s),
    };
    let next = RobustState {
        norm_quantile: robust::next_norm_quantile(q, &norms, s),
        median_examples: round_median.or(input.robust.median_examples),
    };
    // The running sum must hold every streamed update with the weight it
    // was added with: a fold that failed after turning the sum into its
    // weights put the round back without it.
    let streamed: f64 = (input.updates.iter().filter(|b| b.delta.is_none()))
        .map(|b| b.coef.0)
        .sum();
    let held = input.acc.as_ref().map_or(0.0, |a| a.weight);
    let mut rebuild = (streamed - held).abs() > 1e-9 * streamed.abs().max(1.0);
    let mut finals = Vec::with_capacity(input.updates.len());
    for b in input.updates.iter_mut() {
        let coef = if b.counts() {
            bounds.coefficient(&b.claim(), s)
        } else {
            (0.0, 1.0)
        };
        if b.delta.is_some() {
            b.coef = coef;
            b.clipped = coef.1 < 1.0;
        } else if coef != b.coef {
            rebuild = true;
        }
        finals.push(coef);
    }
    let mut corrected = 0;
    let mut tensor_clipped = 0;
    let k = input.updates.iter().filter(|b| b.counts()).count();
    if super::round_tensors::applies(layout, k, s.tensor_clip_multiplier) {
        // Every member's delta is kept for this fold (streamed ones read
        // back); the running sum is not used, so nothing to correct.
        tensor_clipped = super::round_tensors::clip_members(
            &mut input.updates,
            &finals,
            layout,
            s.tensor_clip_multiplier,
            &mut payload,
        )?;
        for (b, coef) in input.updates.iter_mut().zip(&finals) {
            b.coef = *coef;
            b.clipped = b.counts() && coef.1 < 1.0;
            if !b.counts() {
                b.delta = None;
            }
        }
        if let Some(acc) = input.acc.as_mut() {
            acc.sum.clear();
            acc.sum.resize(layout.num_params(), 0.0);
            acc.weight = 0.0;
        }
        rebuild = false;
    }
    if rebuild {
        let mut acc = Accumulator::new(layout.num_params());
        acc.seconds = input.acc.as_ref().map(|a| a.seconds).unwrap_or(0.0);
        for (b, coef) in input.updates.iter_mut().zip(finals) {
            if b.delta.is_some() {
                continue;
            }
            if coef.0 == 0.0 {
                b.coef = coef;
                continue;
            }
            let bytes = payload(b)?;
            stream_into(&mut acc, layout, b, coef, &bytes)
                .map_err(|e| RoundError::tensor(&b.update_id, e))?;
            corrected += 1;
        }
        input.acc = Some(acc);
    }
    Ok(Settlement {
        bounds,
        next,
        corrected,
        tensor_clipped,
    })
}

/// A fold ready to be committed: the new weights and what went into them.
#[derive(Debug)]
pub struct Fold {
    pub version: u64,
    pub parent: u64,
    pub weights: Vec<f32>,
    pub report: AggregateReport,
    /// Every update of the round (members, superseded and dropped ones).
    pub applied: Vec<Buffered>,
    pub acc: Option<Accumulator>,
    pub server: ServerState,
    pub robust: RobustState,
}

impl Fold {
    /// Whether the new weights and the server optimizer's state are all
    /// finite and below [`MAX_WEIGHT`]: a version that is not is never
    /// committed (the next fold from weights near f32's limit would overflow).
    pub fn is_finite(&self) -> bool {
        let finite = |v: &[f32]| v.iter().all(|x| x.abs() <= MAX_WEIGHT);
        finite(&self.weights)
            && self.server.momentum.as_deref().is_none_or(finite)
            && self.server.second_moment.as_deref().is_none_or(finite)
    }

    /// The ledger rows this version consumes (members and superseded
    /// updates; dropped ones were refused when their trainer was revoked).
    pub fn consumed_rows(&self) -> Vec<i64> {
        self.applied
            .iter()
            .filter(|b| b.vote != Vote::Dropped)
            .map(|b| b.row_id)
            .collect()
    }

    pub fn labels(&self, vote: Vote) -> Vec<String> {
        self.applied
            .iter()
            .filter(|b| b.vote == vote)
            .map(Buffered::label)
            .collect()
    }
}

/// Weights (and optimizer state) beyond this magnitude count as poisoned.
pub const MAX_WEIGHT: f32 = 1e30;

/// Folds a settled round into a copy of the weights with the model's
/// strategy. Streamed updates come from the accumulator, kept ones from
/// their deltas with their settled coefficients; the accumulator is handed
/// back in the fold so a failed commit can restore it.
pub fn compute_fold(mut input: FoldInput, settled: &Settlement) -> Fold {
    let s = &input.settings;
    let n = input.weights.len();
    let kept: Vec<(&Buffered, &[f32])> = input
        .updates
        .iter()
        .filter(|u| u.counts())
        .filter_map(|u| u.delta.as_ref().map(|d| (u, d.as_slice())))
        .collect();
    let rule = s.strategy.rule();
    let mean_delta: Vec<f32> = if rule.intake() == Intake::RunningSum || kept.is_empty() {
        // Weighted mean of everything: the accumulator plus any kept deltas
        // (kept ones exist when the strategy changed since they arrived).
        let kept: Vec<((f64, f32), &[f32])> = kept.iter().map(|(u, d)| (u.coef, *d)).collect();
        // The running sum becomes the mean, then the new weights, in its
        // own buffer: a failed commit puts the round back without it and
        // the next fold rebuilds it from the stored payloads (`settle`).
        stream::running_mean(input.acc.take(), &kept, n)
    } else {
        // Robust strategies need every member's delta, unweighted (weights
        // are what a lying member inflates); streamed leftovers (from before
        // a strategy change) enter as one more contribution.
        let acc_mean: Option<Vec<f32>> = input.acc.as_ref().and_then(Accumulator::mean);
        let mut all: Vec<Contribution<'_>> = kept
            .iter()
            .map(|(u, d)| Contribution {
                delta: d,
                num_examples: u.num_examples,
                staleness: u.staleness,
                scale: u.coef.1,
            })
            .collect();
        if let Some(m) = &acc_mean {
            all.push(Contribution {
                delta: m.as_slice(),
                num_examples: 1,
                staleness: 0,
                scale: 1.0,
            });
        }
        rule.reduce(&all, s)
    };
    let update_norm = aggregation::l2_norm(&mean_delta);
    let mut weights = mean_delta;
    let mut server = input.server;
    rule.server_step_into(&input.weights, &mut weights, s, &mut server);
    server.steps += 1;
    let members: Vec<&Buffered> = input.updates.iter().filter(|u| u.counts()).collect();
    let k = members.len();
    let report = AggregateReport {
        strategy: s.strategy,
        num_updates: input.updates.len(),
        total_examples: members.iter().map(|u| u.num_examples).sum(),
        mean_staleness: if k == 0 {
            0.0
        } else {
            members.iter().map(|u| u.staleness as f64).sum::<f64>() / k as f64
        },
        max_staleness: members.iter().map(|u| u.staleness).max().unwrap_or(0),
        update_norm,
        clipped: members.iter().filter(|u| u.clipped).count(),
        members: k,
        superseded: count(&input.updates, Vote::Superseded),
        dropped: count(&input.updates, Vote::Dropped),
        screened: count(&input.updates, Vote::Screened),
        examples_cap: settled.bounds.examples_cap,
        clip_bound: settled.bounds.clip_bound,
        norm_quantile: settled.next.norm_quantile,
        median_examples: settled.next.median_examples,
        corrected: settled.corrected,
        tensor_clipped: settled.tensor_clipped,
    };
    drop(kept);
    drop(members);
    Fold {
        version: input.version + 1,
        parent: input.version,
        weights,
        report,
        applied: input.updates,
        acc: input.acc,
        server,
        robust: settled.next,
    }
}

fn count(updates: &[Buffered], vote: Vote) -> usize {
    updates.iter().filter(|u| u.vote == vote).count()
}

/// A fold whose result was not finite, taken apart: the updates that made
/// it so, and the rest with their accumulator rebuilt, to go back in the
/// buffer.
#[derive(Debug)]
pub struct Poisoned {
    pub culprits: Vec<Buffered>,
    pub kept: Vec<Buffered>,
    pub acc: Option<Accumulator>,
}

/// Finds which updates of a settled fold made it non-finite: the member
/// with the largest weighted norm is set aside until folding the others
/// gives finite weights (or none is left). Streamed updates are folded again
/// from their stored payloads (`payload`), kept ones from their deltas. A
/// rare path: each step folds the remaining updates once.
pub fn separate_poison(
    input: FoldInput,
    settled: &Settlement,
    layout: &ModelLayout,
    mut payload: impl FnMut(&Buffered) -> Result<Vec<u8>, PayloadError>,
) -> Result<Poisoned, RoundError> {
    let FoldInput {
        version,
        weights,
        mut updates,
        settings,
        server,
        robust,
        ..
    } = input;
    let mut culprits = Vec::new();
    loop {
        let mut acc: Option<Accumulator> = None;
        for b in updates.iter_mut().filter(|b| b.delta.is_none()) {
            let a = acc.get_or_insert_with(|| Accumulator::new(layout.num_params()));
            let coef = b.coef;
            if coef.0 == 0.0 {
                continue;
            }
            let bytes = payload(b)?;
            stream_into(a, layout, b, coef, &bytes)
                .map_err(|e| RoundError::tensor(&b.update_id, e))?;
        }
        let fold = compute_fold(
            FoldInput {
                version,
                weights: weights.clone(),
                updates: updates.clone(),
                acc: acc.clone(),
                settings: settings.clone(),
                server: server.clone(),
                robust,
            },
            settled,
        );
        let members = updates.iter().filter(|b| b.counts()).count();
        if fold.is_finite() || members == 0 {
            return Ok(Poisoned {
                culprits,
                kept: updates,
                acc,
            });
        }
        let weight = |b: &Buffered| {
            if b.counts() {
                b.coef.0 * b.coef.1 as f64 * b.norm
            } else {
                f64::NEG_INFINITY
            }
        };
        let worst = updates
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| weight(a).total_cmp(&weight(b)))
            .map(|(i, _)| i)
            .unwrap_or(0);
        culprits.push(updates.remove(worst));
    }
}

#[cfg(test)]
#[path = "round_tests.rs"]
pub(crate) mod tests;
