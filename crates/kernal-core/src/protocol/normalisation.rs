//! Federated input normalisation: trainers report sufficient statistics of
//! their raw features (count, per-feature sum and sum of squares, never
//! rows), the hub pools them and freezes one mean and standard deviation per
//! feature that every trainer then applies. Standardising each trainer's file
//! with its own statistics made the same raw value mean different inputs to
//! different trainers, and their updates pulled the shared model apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether the hub is still collecting statistics or has fixed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NormalisationState {
    /// Trainers should send `stats` and wait for a `normalisation` message.
    Pooling,
    /// `mean` and `std` are fixed for the life of the model.
    Frozen,
}

/// A model's input normalisation as trainers receive it (in `welcome` and in
/// the `normalisation` message) and as `GET /v1/models/{m}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Normalisation {
    pub state: NormalisationState,
    /// Number of input features.
    pub features: usize,
    /// Per-feature mean (frozen only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    /// Per-feature standard deviation, never 0 (frozen only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    /// Trainers whose statistics were pooled (0 when given at creation).
    #[serde(default)]
    pub trainers: usize,
    /// Rows behind the pooled statistics.
    #[serde(default)]
    pub count: u64,
}

impl Normalisation {
    /// Fixed statistics, given by an administrator or pooled.
    pub fn frozen(mean: Vec<f32>, std: Vec<f32>, trainers: usize, count: u64) -> Self {
        Normalisation {
            state: NormalisationState::Frozen,
            features: mean.len(),
            mean: Some(mean),
            std: Some(std),
            trainers,
            count,
        }
    }

    /// `(x - mean) / std` for every row, in place. Pooling: nothing to apply.
    pub fn apply(&self, features: &mut [f32]) {
        let (Some(mean), Some(std)) = (&self.mean, &self.std) else {
            return;
        };
        let dim = mean.len();
        if dim == 0 {
            return;
        }
        for row in features.chunks_exact_mut(dim) {
            for ((x, m), s) in row.iter_mut().zip(mean).zip(std) {
                *x = (*x - m) / s;
            }
        }
    }

    /// Checks statistics given at model creation.
    pub fn given(mean: Vec<f64>, std: Vec<f64>, features: usize) -> Result<Self, String> {
        if mean.len() != features || std.len() != features {
            return Err(format!(
                "normalisation needs {features} means and {features} standard deviations (one per input), got {} and {}",
                mean.len(),
                std.len()
            ));
        }
        if mean
            .iter()
            .any(|m| !m.is_finite() || m.abs() > MAX_ABS_MEAN)
        {
            return Err(format!(
                "normalisation.mean values must be finite and within ±{MAX_ABS_MEAN:e}"
            ));
        }
        if std
            .iter()
            .any(|s| !s.is_finite() || *s < MIN_STD || *s > MAX_ABS_MEAN)
        {
            return Err(format!(
                "normalisation.std values must be finite and within [{MIN_STD:e}, {MAX_ABS_MEAN:e}]"
            ));
        }
        Ok(Normalisation::frozen(
            mean.iter().map(|v| *v as f32).collect(),
            std.iter().map(|v| *v as f32).collect(),
            0,
            0,
        ))
    }
}

/// Feature magnitudes beyond this cannot be told apart in f32 arithmetic
/// with the rest of a network anyway; refusing them keeps sums of squares
/// finite in f64 whatever a hostile trainer sends.
pub const MAX_ABS_MEAN: f64 = 1e9;
/// A pool freezes once this many trainers have reported, whatever the
/// model's `min_updates`: it is stored whole on every report.
pub const MAX_POOLED_REPORTS: usize = 256;

/// Deviations below this are treated as a constant feature (std 1).
pub const MIN_STD: f64 = 1e-9;

/// One trainer's sufficient statistics of its raw training features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    pub count: u64,
    pub sum: Vec<f64>,
    pub sumsq: Vec<f64>,
}

impl FeatureStats {
    /// The statistics of row-major `features` with `dim` columns.
    pub fn of(features: &[f32], dim: usize) -> Self {
        let mut sum = vec![0.0f64; dim];
        let mut sumsq = vec![0.0f64; dim];
        let mut count = 0u64;
        if dim > 0 {
            for row in features.chunks_exact(dim) {
                count += 1;
                for ((s, q), x) in sum.iter_mut().zip(sumsq.iter_mut()).zip(row) {
                    let x = f64::from(*x);
                    *s += x;
                    *q += x * x;
                }
            }
        }
        FeatureStats { count, sum, sumsq }
    }

    /// What the hub accepts from a trainer: the model's width, at least one
    /// row and at most `max_count`, finite values, a non-negative variance
    /// and means within [`MAX_ABS_MEAN`].
    pub fn validate(&self, features: usize, max_count: u64) -> Result<(), String> {
        if self.sum.len() != features || self.sumsq.len() != features {
            return Err(format!(
                "stats need {features} sums and {features} sums of squares (one per input), got {} and {}",
                self.sum.len(),
                self.sumsq.len()
            ));
        }
        if self.count == 0 || self.count > max_count {
            return Err(format!(
                "stats count must be 1 to {max_count} (the model's max_num_examples), got {}",
                self.count
            ));
        }
        let n = self.count as f64;
        for (j, (s, q)) in self.sum.iter().zip(&self.sumsq).enumerate() {
            if !s.is_finite() || !q.is_finite() {
                return Err(format!("stats for feature {j} are not finite"));
            }
            let mean = s / n;
            if mean.abs() > MAX_ABS_MEAN || q / n > MAX_ABS_MEAN * MAX_ABS_MEAN {
                return Err(format!(
                    "stats for feature {j}: mean or mean square beyond ±{MAX_ABS_MEAN:e}"
                ));
            }
            // A sum of squares below sum²/n means a negative variance: not
            // statistics of any real column (rounding allowed for).
            if *q < 0.0 || q * n < s * s * (1.0 - 1e-9) - 1e-9 {
                return Err(format!(
                    "stats for feature {j}: sum of squares is smaller than sum²/count"
                ));
            }
        }
        Ok(())
    }
}

/// The hub's pool of statistics for one model while it is pooling. Keyed by
/// trainer name, so a trainer that reconnects and reports again replaces its
/// report instead of counting twice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsPool {
    pub features: usize,
    pub reports: BTreeMap<String, FeatureStats>,
    /// An administrator reset the model's statistics: an empty pool then
    /// waits for reports instead of freezing to no normalisation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_reset: bool,
}

impl StatsPool {
    pub fn new(features: usize) -> Self {
        StatsPool {
            features,
            reports: BTreeMap::new(),
            after_reset: false,
        }
    }

    /// Pools the report (validated by the caller); returns how many trainers
    /// have reported.
    pub fn add(&mut self, trainer: &str, stats: FeatureStats) -> usize {
        self.reports.insert(trainer.to_string(), stats);
        self.reports.len()
    }

    /// The pooled mean and population standard deviation, or `None` when
    /// nobody reported (the model then has no normalisation).
    pub fn freeze(&self) -> Option<Normalisation> {
        let count: u64 = self.reports.values().map(|r| r.count).sum();
        if count == 0 {
            return None;
        }
        let n = count as f64;
        let mut mean = Vec::with_capacity(self.features);
        let mut std = Vec::with_capacity(self.features);
        for j in 0..self.features {
            let s: f64 = self.reports.values().map(|r| r.sum[j]).sum();
            let q: f64 = self.reports.values().map(|r| r.sumsq[j]).sum();
            let m = s / n;
            let var = (q / n - m * m).max(0.0);
            let sd = var.sqrt();
            mean.push(m as f32);
            std.push(if sd > MIN_STD { sd as f32 } else { 1.0 });
        }
        Some(Normalisation::frozen(mean, std, self.reports.len(), count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_statistics_equal_those_of_the_union() {
        let a = [1.0f32, 10.0, 3.0, 10.0];
        let b = [5.0f32, 10.0, 7.0, 10.0, 9.0, 10.0];
        let mut pool = StatsPool::new(2);
        pool.add("a", FeatureStats::of(&a, 2));
        assert_eq!(pool.add("b", FeatureStats::of(&b, 2)), 2);
        // Reporting again replaces, it does not add.
        assert_eq!(pool.add("b", FeatureStats::of(&b, 2)), 2);
        let n = pool.freeze().unwrap();
        assert_eq!(n.state, NormalisationState::Frozen);
        assert_eq!((n.trainers, n.count), (2, 5));
        let mean = n.mean.clone().unwrap();
        let std = n.std.clone().unwrap();
        assert!((mean[0] - 5.0).abs() < 1e-6);
        assert!((std[0] - 8f32.sqrt()).abs() < 1e-5);
        // A constant feature keeps std 1, so it becomes 0, not NaN.
        assert_eq!((mean[1], std[1]), (10.0, 1.0));
        let mut rows = vec![5.0f32, 10.0];
        n.apply(&mut rows);
        assert_eq!(rows, vec![0.0, 0.0]);
        assert!(StatsPool::new(3).freeze().is_none());
    }

    #[test]
    fn impossible_or_hostile_statistics_are_refused() {
        let good = FeatureStats::of(&[1.0, 2.0, 3.0], 1);
        assert!(good.validate(1, 100).is_ok());
        assert!(good.validate(2, 100).is_err(), "wrong width");
        assert!(good.validate(1, 2).is_err(), "count over the limit");
        let bad = |count, s: f64, q: f64| FeatureStats {
            count,
            sum: vec![s],
            sumsq: vec![q],
        };
        assert!(bad(0, 0.0, 0.0).validate(1, 100).is_err());
        assert!(bad(3, f64::NAN, 1.0).validate(1, 100).is_err());
        assert!(bad(3, 3e38, 1e300).validate(1, 100).is_err(), "huge");
        assert!(bad(2, 4.0, 1.0).validate(1, 100).is_err(), "variance < 0");
        assert!(bad(2, 4.0, 8.0).validate(1, 100).is_ok(), "variance 0");
    }

    #[test]
    fn given_statistics_are_checked() {
        assert!(Normalisation::given(vec![0.0], vec![1.0], 1).is_ok());
        assert!(Normalisation::given(vec![0.0], vec![1.0], 2).is_err());
        assert!(Normalisation::given(vec![0.0], vec![0.0], 1).is_err());
        assert!(Normalisation::given(vec![f64::NAN], vec![1.0], 1).is_err());
    }
}
