//! Faulty members, as the `byzantine` scenario runs them: a wrapper
//! [`Learner`] that trains honestly and then sends what a broken or hostile
//! trainer would (noise, a flipped or scaled delta, NaN, a stale base, or
//! nothing). The fault lives here, not in `kernal-client`'s options, so the
//! client a user runs carries no harness knowledge and the hub sees the
//! faults through the ordinary connection loop.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use kernal_client::{Base, EvalReport, Learner, Trained};
use kernal_core::protocol::{FeatureStats, ModelLayout, Normalisation};

/// How a trainer behaves: honest, or one of the faults the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    #[default]
    Honest,
    /// Sends Gaussian noise (std 1) instead of its delta.
    Noise,
    /// Sends its delta negated and magnified four times.
    SignFlip,
    /// Sends its delta multiplied by 100 (a huge norm).
    Scaled,
    /// Sends a delta containing NaN.
    Nan,
    /// Keeps training from the first version it received.
    Stale,
    /// Connects and never sends an update.
    Silent,
}

/// A learner with a [`Behaviour`]: `inner` does the learning, this decides
/// what of it reaches the hub.
pub struct FaultyLearner<L> {
    pub inner: L,
    pub behaviour: Behaviour,
    /// The first version a `Stale` member trained from, kept across
    /// reconnections as the loop keeps the learner.
    first: Option<Base>,
    /// Noise is drawn fresh per run, as a faulty device's would be.
    rng: StdRng,
}

impl<L> FaultyLearner<L> {
    pub fn new(inner: L, behaviour: Behaviour) -> Self {
        FaultyLearner {
            inner,
            behaviour,
            first: None,
            rng: StdRng::from_entropy(),
        }
    }
}

/// Applies a faulty behaviour to an honest delta.
fn corrupt_delta(behaviour: Behaviour, delta: &mut [f32], rng: &mut impl Rng) {
    match behaviour {
        Behaviour::Noise => {
            for v in delta.iter_mut() {
                // Box-Muller normal sample.
                let (u1, u2): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
                *v = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            }
        }
        Behaviour::SignFlip => delta.iter_mut().for_each(|v| *v *= -4.0),
        Behaviour::Scaled => delta.iter_mut().for_each(|v| *v *= 100.0),
        Behaviour::Nan => {
            if let Some(v) = delta.first_mut() {
                *v = f32::NAN;
            }
        }
        Behaviour::Honest | Behaviour::Stale | Behaviour::Silent => {}
    }
}

impl<L: Learner> Learner for FaultyLearner<L> {
    fn check_layout(&self, layout: &ModelLayout) -> Result<(), String> {
        self.inner.check_layout(layout)
    }

    fn train(&mut self, global: &[f32], version: u64) -> Result<Trained, String> {
        self.inner.train(global, version)
    }

    fn evaluate(&mut self, global: &[f32], version: u64) -> Result<Option<EvalReport>, String> {
        self.inner.evaluate(global, version)
    }

    fn feature_stats(&self) -> Option<FeatureStats> {
        self.inner.feature_stats()
    }

    fn use_normalisation(&mut self, normalisation: Option<&Normalisation>) -> Result<(), String> {
        self.inner.use_normalisation(normalisation)
    }

    fn choose_base(&mut self, newest: &Base) -> Option<Base> {
        match self.behaviour {
            // Never evaluates nor trains, so never sends.
            Behaviour::Silent => None,
            Behaviour::Stale => Some(self.first.get_or_insert_with(|| newest.clone()).clone()),
            _ => self.inner.choose_base(newest),
        }
    }

    fn adjust_delta(&mut self, delta: &mut [f32]) {
        self.inner.adjust_delta(delta);
        corrupt_delta(self.behaviour, delta, &mut self.rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Still;
    impl Learner for Still {
        fn check_layout(&self, _: &ModelLayout) -> Result<(), String> {
            Ok(())
        }
        fn train(&mut self, global: &[f32], _: u64) -> Result<Trained, String> {
            Ok(Trained {
                weights: global.to_vec(),
                num_examples: 1,
                loss: 0.0,
            })
        }
        fn evaluate(&mut self, _: &[f32], _: u64) -> Result<Option<EvalReport>, String> {
            Ok(None)
        }
    }

    fn base(version: u64) -> Base {
        Base {
            version,
            weights: Arc::new(vec![version as f32; 3]),
        }
    }

    fn delta_of(behaviour: Behaviour) -> Vec<f32> {
        let mut d = vec![0.5, -1.0, 2.0];
        FaultyLearner::new(Still, behaviour).adjust_delta(&mut d);
        d
    }

    #[test]
    fn faults_change_the_delta_as_the_client_once_did() {
        assert_eq!(delta_of(Behaviour::Honest), [0.5, -1.0, 2.0]);
        assert_eq!(delta_of(Behaviour::SignFlip), [-2.0, 4.0, -8.0]);
        assert_eq!(delta_of(Behaviour::Scaled), [50.0, -100.0, 200.0]);
        let nan = delta_of(Behaviour::Nan);
        assert!(nan[0].is_nan() && nan[1..] == [-1.0, 2.0]);
        assert_ne!(delta_of(Behaviour::Noise), [0.5, -1.0, 2.0]);
        assert_eq!(delta_of(Behaviour::Stale), [0.5, -1.0, 2.0]);
    }

    #[test]
    fn stale_keeps_its_first_base_and_silent_takes_none() {
        let mut stale = FaultyLearner::new(Still, Behaviour::Stale);
        assert_eq!(stale.choose_base(&base(3)), Some(base(3)));
        assert_eq!(stale.choose_base(&base(7)), Some(base(3)));
        let mut silent = FaultyLearner::new(Still, Behaviour::Silent);
        assert_eq!(silent.choose_base(&base(3)), None);
        let mut honest = FaultyLearner::new(Still, Behaviour::Honest);
        assert_eq!(honest.choose_base(&base(7)), Some(base(7)));
    }
}
