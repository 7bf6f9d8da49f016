//! What one member may weigh in a fold. Everything a trainer says about
//! itself (`num_examples`, the size of its update) is a claim, and anyone may
//! register a trainer, so a fold counts members, not messages, and bounds
//! what a member's claims can buy:
//!
//! - **one vote per trainer**: a second update from a trainer before the fold
//!   replaces its first (the hub keeps the newest, trained on the newest
//!   weights); the first is consumed without weight;
//! - **bounded weight**: a member's `num_examples` counts at most
//!   `max_weight_ratio` times the median claim of the fold's members;
//! - **adaptive clipping**: every delta is scaled down to a bound that tracks
//!   the `clip_quantile` quantile of the members' update norms (the geometric
//!   rule of Andrew et al., "Differentially Private Learning with Adaptive
//!   Clipping", 2021, which Flower's adaptive clipping strategies use), so the
//!   bound follows honest norms as they shrink during training and one member
//!   cannot raise it.
//!
//! These are plain functions over a fold's members; the hub's fold applies
//! them (`crate::hub::round`).

use serde::{Deserialize, Serialize};

use super::{contribution_weight, scale_to, AggregationSettings};

/// What the hub tracks between folds to bound the next one: set at each fold
/// from its members, stored with the version (its aggregation report) and
/// read back at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RobustState {
    /// The tracked `clip_quantile` quantile of member norms for the next
    /// fold (None: no fold yet; the first fold takes the quantile of its own
    /// members' norms). The bound is `clip_multiplier` times it.
    pub norm_quantile: Option<f64>,
    /// The median member claim of the last fold: the provisional cap for
    /// updates folded as they arrive, so a stable team needs no correction
    /// at fold time.
    pub median_examples: Option<f64>,
}

/// One member's say in a fold, before the bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Claim {
    pub num_examples: u64,
    pub staleness: u64,
    /// L2 norm of the delta as sent.
    pub norm: f64,
}

/// The bounds a fold applies to every member.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bounds {
    /// Largest `num_examples` that counts (None: no cap).
    pub examples_cap: Option<f64>,
    /// Norm every delta is scaled down to (None: no clipping).
    pub clip_bound: Option<f64>,
}

impl Bounds {
    /// The coefficient of a member's delta in a weighted sum: its weight
    /// (capped examples, discounted by staleness) and its clip factor.
    pub fn coefficient(&self, c: &Claim, s: &AggregationSettings) -> (f64, f32) {
        let examples = match self.examples_cap {
            Some(cap) => (c.num_examples as f64).min(cap),
            None => c.num_examples as f64,
        };
        let weight = examples / (1.0 + c.staleness as f64).powf(s.staleness_exponent);
        (weight, self.clip_factor(c.norm))
    }

    /// The factor that scales a delta of norm `norm` down to the bound.
    pub fn clip_factor(&self, norm: f64) -> f32 {
        scale_to(norm, self.clip_bound)
    }
}

/// The lower median (the smaller middle value of an even count), so that
/// with two members the larger claim cannot set the reference for itself.
pub fn lower_median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable_by(|a, b| a.total_cmp(b));
    Some(v[(v.len() - 1) / 2])
}

/// The `q` quantile of `values` (nearest rank, lower).
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable_by(|a, b| a.total_cmp(b));
    let i = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

/// The cap on `num_examples` for a fold whose members claim `claims`.
pub fn examples_cap(claims: &[f64], s: &AggregationSettings) -> Option<f64> {
    if s.max_weight_ratio <= 0.0 {
        return None;
    }
    lower_median(claims).map(|m| m * s.max_weight_ratio)
}

/// The norm quantile a fold clips by: the tracked one, else (first fold)
/// the quantile of the fold's own member norms; None when adaptive
/// clipping is off.
pub fn norm_quantile(tracked: Option<f64>, norms: &[f64], s: &AggregationSettings) -> Option<f64> {
    if s.clip_norm > 0.0 || s.clip_quantile <= 0.0 {
        return None;
    }
    tracked
        .or_else(|| quantile(norms, s.clip_quantile as f64))
        .filter(|q| *q > 0.0)
}

/// The clipping bound of a fold: the model's fixed `clip_norm` when set,
/// else `clip_multiplier` times the norm quantile; None when clipping is off.
pub fn clip_bound(norm_quantile: Option<f64>, s: &AggregationSettings) -> Option<f64> {
    if s.clip_norm > 0.0 {
        return Some(s.clip_norm as f64);
    }
    norm_quantile.map(|q| q * s.clip_multiplier as f64)
}

/// The quantile estimate after a fold whose members had `norms`:
/// `q * exp(-lr * (share of norms within q - clip_quantile))`. It moves by
/// at most a factor `exp(lr)` per fold whatever the members send, and
/// settles where `clip_quantile` of them are within it.
pub fn next_norm_quantile(q: Option<f64>, norms: &[f64], s: &AggregationSettings) -> Option<f64> {
    let q = q?;
    let finite: Vec<f64> = norms.iter().copied().filter(|n| n.is_finite()).collect();
    if finite.is_empty() {
        return Some(q);
    }
    let within = finite.iter().filter(|n| **n <= q).count() as f64 / finite.len() as f64;
    let next = q * (-(s.clip_lr as f64) * (within - s.clip_quantile as f64)).exp();
    // Never collapse to 0 or grow without bound: a few honest folds undo any
    // drift within these limits.
    Some(next.clamp(1e-12, 1e30))
}

/// The weight a member would have without any bound (kept for reports).
pub fn raw_weight(c: &Claim, s: &AggregationSettings) -> f64 {
    contribution_weight(c.num_examples, c.staleness, s.staleness_exponent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregation::Strategy;

    fn settings() -> AggregationSettings {
        let mut s = crate::config::Config::builtin().aggregation;
        s.strategy = Strategy::Fedavg;
        s.staleness_exponent = 0.0;
        s
    }

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(lower_median(&[]), None);
        assert_eq!(lower_median(&[5.0]), Some(5.0));
        assert_eq!(lower_median(&[1e8, 400.0]), Some(400.0));
        assert_eq!(lower_median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(quantile(&[0.1, 0.5, 1.2, 999.0], 0.5), Some(0.5));
        assert_eq!(quantile(&[0.1, 0.5, 1.2], 0.5), Some(0.5));
        assert_eq!(quantile(&[f64::NAN, 2.0], 0.5), Some(2.0));
    }

    #[test]
    fn a_huge_claim_counts_as_the_median() {
        let mut s = settings();
        s.max_weight_ratio = 1.0;
        let claims = [575.0, 431.0, 431.0, 1e8];
        let cap = examples_cap(&claims, &s).unwrap();
        assert_eq!(cap, 431.0);
        let b = Bounds {
            examples_cap: Some(cap),
            clip_bound: None,
        };
        let liar = Claim {
            num_examples: 100_000_000,
            staleness: 0,
            norm: 1.0,
        };
        assert_eq!(b.coefficient(&liar, &s).0, 431.0);
        s.max_weight_ratio = 0.0;
        assert_eq!(examples_cap(&claims, &s), None);
    }

    #[test]
    fn the_bound_tracks_the_quantile_and_one_member_cannot_raise_it() {
        let mut s = settings();
        s.clip_quantile = 0.5;
        s.clip_lr = 0.2;
        // First fold: the median of its own members.
        let norms = [0.4, 0.6, 0.8, 999.0];
        s.clip_multiplier = 1.0;
        let q0 = norm_quantile(None, &norms, &s).unwrap();
        assert_eq!(q0, 0.6);
        assert_eq!(clip_bound(Some(q0), &s), Some(0.6));
        s.clip_multiplier = 0.5;
        assert_eq!(clip_bound(Some(q0), &s), Some(0.3));
        // An attacker far above it every fold: the estimate stays near the
        // honest median instead of following it up.
        let mut b = Some(q0);
        for _ in 0..100 {
            b = next_norm_quantile(b, &norms, &s);
        }
        let b = b.unwrap();
        assert!((0.4..=0.9).contains(&b), "{b}");
        // Honest norms shrinking tenfold: the bound follows them down.
        let mut t = Some(1.0);
        for _ in 0..100 {
            t = next_norm_quantile(t, &[0.08, 0.1, 0.12], &s);
        }
        assert!(t.unwrap() < 0.15, "{t:?}");
        // A fixed clip_norm wins; clip_quantile 0 turns it off.
        s.clip_norm = 2.0;
        assert_eq!(norm_quantile(Some(0.5), &norms, &s), None);
        assert_eq!(clip_bound(Some(0.5), &s), Some(2.0));
        s.clip_norm = 0.0;
        s.clip_quantile = 0.0;
        assert_eq!(norm_quantile(Some(0.5), &norms, &s), None);
        assert_eq!(clip_bound(None, &s), None);
    }

    #[test]
    fn clip_factor_scales_to_the_bound() {
        let b = Bounds {
            examples_cap: None,
            clip_bound: Some(1.0),
        };
        assert_eq!(b.clip_factor(0.5), 1.0);
        assert!((b.clip_factor(4.0) - 0.25).abs() < 1e-7);
        assert_eq!(Bounds::default().clip_factor(1e30), 1.0);
    }
}
