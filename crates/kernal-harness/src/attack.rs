//! Members that lie, as the `poisoning` scenario runs them: a wrapper
//! [`Learner`] around an honest one that replaces what it would send with
//! its best attack within every documented limit. The connection loop is the
//! ordinary client's, so the hub sees exactly what a hostile trainer built
//! on `kernal-client` would send.

mod faulty;

use serde::{Deserialize, Serialize};

pub use faulty::{Behaviour, FaultyLearner};
use kernal_client::{Base, EvalReport, Learner, Trained};
use kernal_core::protocol::{FeatureStats, ModelLayout, Normalisation};

/// What a lying member does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    /// Sends `current weights with the output rows rotated - current
    /// weights`: a delta that teaches class c to answer c + 1 (scaled to
    /// `attack_norm` when the scenario gives one, for example just under
    /// the model's `max_update_norm`).
    RotateLabels,
    /// Reports feature statistics of mean 9e8, mean square 0.99e18 and
    /// count 1e8 before the model's normalisation freezes (all within the
    /// protocol's bounds), and trains honestly.
    StatsOutlier,
}

/// A learner that attacks: `claim` replaces the number of examples it
/// reports (a member may claim anything up to `max_num_examples`).
pub struct Attacker<L> {
    pub inner: L,
    pub attack: Option<Attack>,
    /// The L2 norm a rotation is scaled to (None: as it comes).
    pub norm: Option<f32>,
    pub claim: Option<u64>,
    /// The model's output layer (`fc2.weight` [classes, hidden] and
    /// `fc2.bias` [classes]) as offsets into the flat weights.
    out_rows: Option<(usize, usize, usize)>,
}

impl<L> Attacker<L> {
    pub fn new(inner: L, attack: Option<Attack>, norm: Option<f32>, claim: Option<u64>) -> Self {
        Attacker {
            inner,
            attack,
            norm,
            claim,
            out_rows: None,
        }
    }

    /// What a `rotate_labels` member sends as its trained weights: the
    /// output rows rotated, the step scaled to `norm` when one is given.
    pub fn rotation(&self, global: &[f32]) -> Vec<f32> {
        let rot = self.rotated(global);
        let Some(target) = self.norm else {
            return rot;
        };
        let norm = rot
            .iter()
            .zip(global)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let k = if norm > 0.0 {
            (target as f64 / norm) as f32
        } else {
            0.0
        };
        global
            .iter()
            .zip(&rot)
            .map(|(g, r)| g + k * (r - g))
            .collect()
    }

    /// The weights with the output rows rotated by one class.
    fn rotated(&self, global: &[f32]) -> Vec<f32> {
        let mut w = global.to_vec();
        if let Some((weight_at, bias_at, classes)) = self.out_rows {
            let hidden = (bias_at - weight_at) / classes;
            for c in 0..classes {
                let from = (c + 1) % classes;
                let (dst, src) = (weight_at + c * hidden, weight_at + from * hidden);
                w[dst..dst + hidden].copy_from_slice(&global[src..src + hidden]);
                w[bias_at + c] = global[bias_at + from];
            }
        }
        w
    }
}

impl<L: Learner> Learner for Attacker<L> {
    fn check_layout(&self, layout: &ModelLayout) -> Result<(), String> {
        self.inner.check_layout(layout)
    }

    fn train(&mut self, global: &[f32], version: u64) -> Result<Trained, String> {
        let mut t = self.inner.train(global, version)?;
        if let Some(n) = self.claim {
            t.num_examples = n;
        }
        if self.attack == Some(Attack::RotateLabels) {
            t.weights = self.rotation(global);
        }
        Ok(t)
    }

    fn evaluate(&mut self, global: &[f32], version: u64) -> Result<Option<EvalReport>, String> {
        self.inner.evaluate(global, version)
    }

    fn feature_stats(&self) -> Option<FeatureStats> {
        let honest = self.inner.feature_stats()?;
        if self.attack != Some(Attack::StatsOutlier) {
            return Some(honest);
        }
        let count = 100_000_000u64;
        let n = count as f64;
        Some(FeatureStats {
            count,
            sum: vec![9e8 * n; honest.sum.len()],
            sumsq: vec![0.99e18 * n; honest.sumsq.len()],
        })
    }

    fn use_normalisation(&mut self, normalisation: Option<&Normalisation>) -> Result<(), String> {
        self.inner.use_normalisation(normalisation)
    }

    fn choose_base(&mut self, newest: &Base) -> Option<Base> {
        self.inner.choose_base(newest)
    }

    fn adjust_delta(&mut self, delta: &mut [f32]) {
        self.inner.adjust_delta(delta)
    }
}

impl<L> Attacker<L> {
    /// Finds the output layer in the model's layout (the reference MLP's
    /// names); an attack on another layout sends the honest delta.
    pub fn locate(&mut self, layout: &ModelLayout) {
        let mut off = 0;
        let (mut w, mut b) = (None, None);
        for t in &layout.tensors {
            let n: usize = t.shape.iter().product();
            match (t.name.as_str(), t.shape.as_slice()) {
                ("fc2.weight", [c, _]) => w = Some((off, *c)),
                ("fc2.bias", [_]) => b = Some(off),
                _ => {}
            }
            off += n;
        }
        self.out_rows = match (w, b) {
            (Some((w, c)), Some(b)) if c > 1 && b > w => Some((w, b, c)),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernal_core::model::MlpSpec;

    struct Still;
    impl Learner for Still {
        fn check_layout(&self, _: &ModelLayout) -> Result<(), String> {
            Ok(())
        }
        fn train(&mut self, global: &[f32], _: u64) -> Result<Trained, String> {
            Ok(Trained {
                weights: global.to_vec(),
                num_examples: 10,
                loss: 0.0,
            })
        }
        fn evaluate(&mut self, _: &[f32], _: u64) -> Result<Option<EvalReport>, String> {
            Ok(None)
        }
    }

    #[test]
    fn rotation_moves_output_rows_and_scales_to_the_norm() {
        let spec = MlpSpec {
            inputs: 2,
            hidden: 2,
            classes: 3,
        };
        let global: Vec<f32> = (0..spec.layout().num_params()).map(|i| i as f32).collect();
        let mut a = Attacker::new(Still, Some(Attack::RotateLabels), None, Some(100_000_000));
        a.locate(&spec.layout());
        let t = a.train(&global, 1).unwrap();
        assert_eq!(t.num_examples, 100_000_000);
        // fc1 (6 values) untouched; fc2 rows rotated: row 0 gets row 1.
        assert_eq!(&t.weights[..6], &global[..6]);
        assert_eq!(&t.weights[6..8], &global[8..10]);
        assert_eq!(&t.weights[10..12], &global[6..8]);
        assert_eq!(t.weights[12], global[13]);
        let mut s = Attacker::new(Still, Some(Attack::RotateLabels), Some(999.0), None);
        s.locate(&spec.layout());
        let t = s.train(&global, 1).unwrap();
        let norm: f64 = t
            .weights
            .iter()
            .zip(&global)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 999.0).abs() < 0.01, "{norm}");
    }
}
