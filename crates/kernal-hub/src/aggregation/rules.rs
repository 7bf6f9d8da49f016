//! The strategies: one type per strategy behind [`Rule`] (what it takes in
//! from a round, how it reduces the deltas, its server step), each named by
//! a [`Strategy`] value. Adding a strategy is one new type, one variant and
//! its name.

use super::reduce::{coordinate_median, trimmed_mean, weighted_mean, Contribution};
use super::settings::AggregationSettings;
use super::strategy::Strategy;

impl Strategy {
    /// The rule this strategy folds with.
    pub fn rule(self) -> &'static dyn Rule {
        match self {
            Strategy::Fedavg => &FedAvg,
            Strategy::Fedavgm => &FedAvgM,
            Strategy::Fedadam => &FedAdam,
            Strategy::Median => &Median,
            Strategy::TrimmedMean => &TrimmedMean,
        }
    }
}

/// Server optimizer state carried between versions (momentum, Adam moments).
#[derive(Debug, Clone, Default)]
pub struct ServerState {
    pub momentum: Option<Vec<f32>>,
    pub second_moment: Option<Vec<f32>>,
    pub steps: u64,
}

/// What a strategy keeps of each update of a round until the fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// A weighted mean only needs the running weighted sum of the deltas:
    /// each update is folded into it as it arrives and dropped, so a round
    /// holds one model's worth of memory however many members it has.
    RunningSum,
    /// An order statistic needs every member's delta at once: each is kept
    /// until the fold.
    EveryDelta,
}

/// One aggregation strategy.
pub trait Rule: Sync {
    /// What the strategy keeps of each update until the fold.
    fn intake(&self) -> Intake;

    /// The round's aggregated delta from its (scaled) contributions.
    fn reduce(&self, contribs: &[Contribution<'_>], s: &AggregationSettings) -> Vec<f32>;

    /// Applies the aggregated delta to `weights` with the server optimizer
    /// (the step of [`server_step_into`](Self::server_step_into), on a copy
    /// of the delta: for callers that keep their delta).
    fn server_step(
        &self,
        weights: &mut [f32],
        mean_delta: &[f32],
        s: &AggregationSettings,
        state: &mut ServerState,
    ) {
        let mut next = mean_delta.to_vec();
        self.server_step_into(weights, &mut next, s, state);
        weights.copy_from_slice(&next);
    }

    /// The server optimizer's step from `old` weights, written over
    /// `delta`, which becomes the new weights: the fold of a large model
    /// then holds two model-sized buffers, not three. A plain step of
    /// `server_lr` unless the strategy carries state; the one place each
    /// strategy's step is written.
    fn server_step_into(
        &self,
        old: &[f32],
        delta: &mut [f32],
        s: &AggregationSettings,
        _state: &mut ServerState,
    ) {
        for (d, w) in delta.iter_mut().zip(old) {
            *d = *w + s.server_lr * *d;
        }
    }
}

/// Example- and staleness-weighted mean of deltas, plain server step.
pub struct FedAvg;

impl Rule for FedAvg {
    fn intake(&self) -> Intake {
        Intake::RunningSum
    }

    fn reduce(&self, contribs: &[Contribution<'_>], s: &AggregationSettings) -> Vec<f32> {
        weighted_mean(contribs, s)
    }
}

/// FedAvg's mean with server momentum.
pub struct FedAvgM;

impl Rule for FedAvgM {
    fn intake(&self) -> Intake {
        Intake::RunningSum
    }

    fn reduce(&self, contribs: &[Contribution<'_>], s: &AggregationSettings) -> Vec<f32> {
        weighted_mean(contribs, s)
    }

    fn server_step_into(
        &self,
        old: &[f32],
        delta: &mut [f32],
        s: &AggregationSettings,
        state: &mut ServerState,
    ) {
        let n = old.len();
        let m = state.momentum.get_or_insert_with(|| vec![0.0; n]);
        for i in 0..n {
            m[i] = s.momentum * m[i] + delta[i];
            delta[i] = old[i] + s.server_lr * m[i];
        }
    }
}

/// FedAvg's mean with a server-side Adam optimizer.
pub struct FedAdam;

impl Rule for FedAdam {
    fn intake(&self) -> Intake {
        Intake::RunningSum
    }

    fn reduce(&self, contribs: &[Contribution<'_>], s: &AggregationSettings) -> Vec<f32> {
        weighted_mean(contribs, s)
    }

    fn server_step_into(
        &self,
        old: &[f32],
        delta: &mut [f32],
        s: &AggregationSettings,
        state: &mut ServerState,
    ) {
        let n = old.len();
        let m = state.momentum.get_or_insert_with(|| vec![0.0; n]);
        let v = state.second_moment.get_or_insert_with(|| vec![0.0; n]);
        let (b1, b2) = (s.momentum, s.beta2);
        for i in 0..n {
            let d = delta[i];
            m[i] = b1 * m[i] + (1.0 - b1) * d;
            v[i] = b2 * v[i] + (1.0 - b2) * d * d;
            delta[i] = old[i] + s.server_lr * m[i] / (v[i].sqrt() + s.tau);
        }
    }
}

/// Coordinate-wise median, plain server step.
pub struct Median;

impl Rule for Median {
    fn intake(&self) -> Intake {
        Intake::EveryDelta
    }

    fn reduce(&self, contribs: &[Contribution<'_>], _s: &AggregationSettings) -> Vec<f32> {
        coordinate_median(contribs)
    }
}

/// Coordinate-wise trimmed mean, plain server step.
pub struct TrimmedMean;

impl Rule for TrimmedMean {
    fn intake(&self) -> Intake {
        Intake::EveryDelta
    }

    fn reduce(&self, contribs: &[Contribution<'_>], s: &AggregationSettings) -> Vec<f32> {
        trimmed_mean(contribs, s.trim_fraction)
    }
}
