//! Aggregation: strategies as types over flat `f32` buffers (`strategy`,
//! `reduce`), the server optimizer state, the running sum a round streams
//! into (`stream`), and the buffering policy that decides when to fold.
//! Nothing here knows about actix, so it is tested directly.

pub mod integer_rules;
mod reduce;
pub mod robust;
mod rules;
pub mod screening;
pub mod settings;
mod strategy;
pub mod stream;
pub mod tensor_clip;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::protocol::{ErrorCode, Refusal};
pub use reduce::{
    axpy, clip_factor, contribution_weight, coordinate_median, l2_norm, scale_to, trim_count,
    trimmed_mean, weighted_mean, Contribution,
};
pub use rules::{FedAdam, FedAvg, FedAvgM, Intake, Median, Rule, ServerState, TrimmedMean};
pub use settings::{AggregationOverrides, AggregationSettings};
pub use strategy::Strategy;

/// Figures of one aggregation, stored with the version it produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AggregateReport {
    pub strategy: Strategy,
    pub num_updates: usize,
    pub total_examples: u64,
    pub mean_staleness: f64,
    pub max_staleness: u64,
    pub update_norm: f64,
    pub clipped: usize,
    /// Trainers that counted (one vote each).
    #[serde(default)]
    pub members: usize,
    /// Updates replaced by a newer one of the same trainer before the fold.
    #[serde(default)]
    pub superseded: usize,
    /// Updates of trainers revoked before the fold.
    #[serde(default)]
    pub dropped: usize,
    /// Members left out by the screen on the hub's data.
    #[serde(default)]
    pub screened: usize,
    /// Largest num_examples that counted (`max_weight_ratio` x the median claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples_cap: Option<f64>,
    /// Norm every delta was scaled down to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_bound: Option<f64>,
    /// The tracked norm quantile the next fold's adaptive bound starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_quantile: Option<f64>,
    /// The members' median claim (the next fold's provisional cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_examples: Option<f64>,
    /// Streamed updates re-read at fold time to rebuild the running sum
    /// (a coefficient changed: a superseded or over-claiming update).
    #[serde(default)]
    pub corrected: usize,
    /// Members with at least one tensor scaled down to the round's
    /// per-tensor bound (`tensor_clip_multiplier`).
    #[serde(default)]
    pub tensor_clipped: usize,
}

impl AggregateReport {
    /// A report of no updates (fields filled in by whoever folds).
    pub fn empty(strategy: Strategy) -> Self {
        AggregateReport {
            strategy,
            num_updates: 0,
            total_examples: 0,
            mean_staleness: 0.0,
            max_staleness: 0,
            update_norm: 0.0,
            clipped: 0,
            members: 0,
            superseded: 0,
            dropped: 0,
            screened: 0,
            examples_cap: None,
            clip_bound: None,
            norm_quantile: None,
            median_examples: None,
            corrected: 0,
            tensor_clipped: 0,
        }
    }
}

/// Folds the buffered contributions into `weights` in place with the
/// configured strategy and server optimizer.
pub fn aggregate(
    weights: &mut [f32],
    contribs: &[Contribution<'_>],
    s: &AggregationSettings,
    state: &mut ServerState,
) -> AggregateReport {
    let clipped: Vec<Contribution<'_>> = contribs
        .iter()
        .map(|c| Contribution {
            scale: c.scale * clip_factor(c.delta, s.clip_norm),
            ..c.clone()
        })
        .collect();
    let contribs = &clipped[..];
    let rule = s.strategy.rule();
    let mean_delta = rule.reduce(contribs, s);
    rule.server_step(weights, &mean_delta, s, state);
    state.steps += 1;
    let total_examples = contribs.iter().map(|c| c.num_examples).sum();
    let max_staleness = contribs.iter().map(|c| c.staleness).max().unwrap_or(0);
    let mean_staleness = if contribs.is_empty() {
        0.0
    } else {
        contribs.iter().map(|c| c.staleness as f64).sum::<f64>() / contribs.len() as f64
    };
    let clipped = contribs.iter().filter(|c| c.scale < 1.0).count();
    AggregateReport {
        strategy: s.strategy,
        num_updates: contribs.len(),
        total_examples,
        mean_staleness,
        max_staleness,
        update_norm: l2_norm(&mean_delta),
        clipped,
        members: contribs.len(),
        ..AggregateReport::empty(s.strategy)
    }
}

/// Applies an aggregated delta with the strategy's server optimizer.
pub fn apply_server_update(
    weights: &mut [f32],
    mean_delta: &[f32],
    s: &AggregationSettings,
    state: &mut ServerState,
) {
    s.strategy.rule().server_step(weights, mean_delta, s, state)
}

/// Whether a strategy only needs a running weighted sum of the deltas, so
/// each update can be folded into an accumulator as it arrives and dropped.
pub fn streams(strategy: Strategy) -> bool {
    strategy.rule().intake() == Intake::RunningSum
}

/// Checks an update's base version against the model's current version.
/// Returns its staleness, or the refusal.
pub fn check_staleness(current: u64, base: u64, max_staleness: u64) -> Result<u64, Refusal> {
    if base > current {
        return Err(Refusal::new(
            ErrorCode::FutureBaseVersion,
            format!("base_version {base} is ahead of the current version {current}"),
        ));
    }
    let staleness = current - base;
    if staleness > max_staleness {
        return Err(Refusal::new(
            ErrorCode::StaleUpdate,
            format!(
                "update is {staleness} versions old (base {base}, current {current}); the limit is {max_staleness}"
            ),
        ));
    }
    Ok(staleness)
}

/// When to fold: `min_updates` buffered, or the round timeout passed since
/// the first buffered update with at least one in the buffer.
#[derive(Debug, Clone, Default)]
pub struct RoundClock {
    pub first_buffered_at: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RoundDecision {
    Aggregate,
    WaitFor {
        more_updates: usize,
        timeout_in: Option<Duration>,
    },
}

impl RoundClock {
    pub fn on_buffered(&mut self, now: Instant) {
        if self.first_buffered_at.is_none() {
            self.first_buffered_at = Some(now);
        }
    }

    pub fn reset(&mut self, remaining: usize, now: Instant) {
        self.first_buffered_at = if remaining > 0 { Some(now) } else { None };
    }

    pub fn decide(&self, buffered: usize, s: &AggregationSettings, now: Instant) -> RoundDecision {
        if buffered >= s.min_updates {
            return RoundDecision::Aggregate;
        }
        let timeout_in = self.first_buffered_at.map(|t| {
            let deadline = t + s.round_timeout();
            deadline.saturating_duration_since(now)
        });
        if buffered > 0 && timeout_in == Some(Duration::ZERO) {
            return RoundDecision::Aggregate;
        }
        RoundDecision::WaitFor {
            more_updates: s.min_updates - buffered,
            timeout_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn settings(strategy: Strategy) -> AggregationSettings {
        AggregationSettings {
            strategy,
            min_updates: 2,
            round_timeout_secs: 10.0,
            max_staleness: 5,
            staleness_exponent: 0.0,
            server_lr: 1.0,
            momentum: 0.5,
            beta2: 0.5,
            tau: 1.0,
            trim_fraction: 0.25,
            clip_norm: 0.0,
            clip_quantile: 0.0,
            clip_lr: 0.2,
            clip_multiplier: 1.0,
            tensor_clip_multiplier: 0.0,
            max_weight_ratio: 0.0,
            screen_max_share: 0.0,
            max_num_examples: 1000,
            max_update_norm: 0.0,
            normalisation_wait_secs: 5.0,
            integer_rules: Default::default(),
        }
    }

    fn c(delta: &[f32], n: u64, s: u64) -> Contribution<'_> {
        Contribution {
            delta,
            num_examples: n,
            staleness: s,
            scale: 1.0,
        }
    }

    #[test]
    fn fedavg_weights_by_examples() {
        let (a, b) = ([1.0f32, 0.0], [4.0f32, 3.0]);
        let mut w = vec![10.0, 10.0];
        let r = aggregate(
            &mut w,
            &[c(&a, 1, 0), c(&b, 2, 0)],
            &settings(Strategy::Fedavg),
            &mut ServerState::default(),
        );
        // (1*1 + 2*4)/3 = 3, (0 + 2*3)/3 = 2
        assert_eq!(w, vec![13.0, 12.0]);
        assert_eq!(r.total_examples, 3);
    }

    #[test]
    fn staleness_discounts() {
        let mut s = settings(Strategy::Fedavg);
        s.staleness_exponent = 1.0;
        let (a, b) = ([0.0f32], [6.0f32]);
        let mut w = vec![0.0];
        // weights: 1/(1+0) = 1 and 1/(1+1) = 0.5 -> 6*0.5/1.5 = 2
        aggregate(
            &mut w,
            &[c(&a, 1, 0), c(&b, 1, 1)],
            &s,
            &mut ServerState::default(),
        );
        assert!((w[0] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn fedavgm_accumulates_momentum() {
        let s = settings(Strategy::Fedavgm);
        let mut st = ServerState::default();
        let d = [2.0f32];
        let mut w = vec![0.0];
        aggregate(&mut w, &[c(&d, 1, 0)], &s, &mut st);
        assert_eq!(w, vec![2.0]); // m = 2
        aggregate(&mut w, &[c(&d, 1, 0)], &s, &mut st);
        assert_eq!(w, vec![5.0]); // m = 0.5*2 + 2 = 3
    }

    #[test]
    fn fedadam_step() {
        let s = settings(Strategy::Fedadam);
        let mut st = ServerState::default();
        let d = [2.0f32];
        let mut w = vec![0.0];
        aggregate(&mut w, &[c(&d, 1, 0)], &s, &mut st);
        // m = 0.5*2 = 1, v = 0.5*4 = 2, step = 1/(sqrt(2)+1)
        let expect = 1.0 / (2.0f32.sqrt() + 1.0);
        assert!((w[0] - expect).abs() < 1e-6, "{}", w[0]);
    }

    #[test]
    fn median_ignores_outlier() {
        let s = settings(Strategy::Median);
        let (a, b, x) = ([1.0f32, 1.0], [2.0f32, 3.0], [1000.0f32, -1000.0]);
        let mut w = vec![0.0, 0.0];
        aggregate(
            &mut w,
            &[c(&a, 1, 0), c(&b, 1, 0), c(&x, 1000, 0)],
            &s,
            &mut ServerState::default(),
        );
        assert_eq!(w, vec![2.0, 1.0]);
    }

    #[test]
    fn trimmed_mean_drops_ends() {
        let s = settings(Strategy::TrimmedMean);
        let vals = [[1.0f32], [2.0], [3.0], [100.0]];
        let cs: Vec<_> = vals.iter().map(|v| c(v, 1, 0)).collect();
        let mut w = vec![0.0];
        aggregate(&mut w, &cs, &s, &mut ServerState::default());
        // trim 1 at each end of 4 -> mean(2,3) = 2.5
        assert_eq!(w, vec![2.5]);
    }

    /// 0.2 x 3 is 0.6: a plain floor would trim nothing and one liar of
    /// three would move the mean at will.
    #[test]
    fn trimmed_mean_trims_one_from_three() {
        assert_eq!(trim_count(3, 0.2), 1);
        assert_eq!(trim_count(2, 0.2), 0);
        assert_eq!(trim_count(10, 0.2), 2);
        assert_eq!(trim_count(4, 0.45), 1);
        let s = settings(Strategy::TrimmedMean);
        let vals = [[1.0f32], [2.0], [1e6]];
        let cs: Vec<_> = vals.iter().map(|v| c(v, 1, 0)).collect();
        let mut w = vec![0.0];
        aggregate(&mut w, &cs, &s, &mut ServerState::default());
        assert_eq!(w, vec![2.0]);
    }

    #[test]
    fn clipping_bounds_norm() {
        let mut s = settings(Strategy::Fedavg);
        s.clip_norm = 1.0;
        let big = [30.0f32, 40.0];
        let mut w = vec![0.0, 0.0];
        let r = aggregate(&mut w, &[c(&big, 1, 0)], &s, &mut ServerState::default());
        assert!((w[0] - 0.6).abs() < 1e-6 && (w[1] - 0.8).abs() < 1e-6);
        assert_eq!(r.clipped, 1);
    }

    #[test]
    fn staleness_rules() {
        assert_eq!(check_staleness(5, 5, 2), Ok(0));
        assert_eq!(check_staleness(5, 3, 2), Ok(2));
        assert_eq!(
            check_staleness(5, 2, 2).unwrap_err().code,
            ErrorCode::StaleUpdate
        );
        assert_eq!(
            check_staleness(5, 6, 2).unwrap_err().code,
            ErrorCode::FutureBaseVersion
        );
    }

    #[test]
    fn round_clock_decides() {
        let s = settings(Strategy::Fedavg);
        let mut clock = RoundClock::default();
        let t0 = Instant::now();
        assert!(matches!(
            clock.decide(0, &s, t0),
            RoundDecision::WaitFor {
                more_updates: 2,
                timeout_in: None
            }
        ));
        clock.on_buffered(t0);
        assert!(matches!(
            clock.decide(1, &s, t0),
            RoundDecision::WaitFor {
                more_updates: 1,
                ..
            }
        ));
        assert_eq!(clock.decide(2, &s, t0), RoundDecision::Aggregate);
        assert_eq!(
            clock.decide(1, &s, t0 + Duration::from_secs(11)),
            RoundDecision::Aggregate
        );
    }

    /// The weighted means stream into a running sum; the order statistics
    /// keep every delta.
    #[test]
    fn each_strategy_has_its_rule() {
        for (s, intake) in [
            (Strategy::Fedavg, Intake::RunningSum),
            (Strategy::Fedavgm, Intake::RunningSum),
            (Strategy::Fedadam, Intake::RunningSum),
            (Strategy::Median, Intake::EveryDelta),
            (Strategy::TrimmedMean, Intake::EveryDelta),
        ] {
            assert_eq!(s.rule().intake(), intake, "{}", s.as_str());
            assert_eq!(streams(s), intake == Intake::RunningSum);
        }
        // One clipping rule for the fixed and the adaptive bound.
        assert_eq!(clip_factor(&[3.0, 4.0], 1.0), scale_to(5.0, Some(1.0)));
        assert_eq!(clip_factor(&[3.0, 4.0], 0.0), 1.0);
        assert_eq!(scale_to(0.5, Some(1.0)), 1.0);
    }

    #[test]
    fn settings_validation_names_key() {
        let mut s = settings(Strategy::Fedavg);
        s.trim_fraction = 0.7;
        assert!(s.validate().unwrap_err().starts_with("trim_fraction"));
    }
}
