//! The learners of a classifier scenario: each trainer's (the reference MLP
//! on its data, wrapped in its attack if it has one) and a specialist's
//! trained alone, the baseline the collective is compared with.

use super::attack;
use super::dataset::{shard, Prepared};
use super::error::{run_err, HarnessError};
use super::scenario::{Scenario, TrainerSpec};
use kernal_client::MlpLearner;
use kernal_core::data;
use kernal_core::model::{MlpSpec, TrainSettings};
use kernal_hub::config::Config;

/// The trainer's learner: the reference one, wrapped in its attack if the
/// scenario gives it one.
pub(crate) fn make_learner(
    sc: &Scenario,
    t: &TrainerSpec,
    spec: MlpSpec,
    cfg: &Config,
    seed: u64,
    prepared: Option<&Prepared>,
) -> Result<attack::Attacker<MlpLearner>, HarnessError> {
    let honest = make_honest_learner(sc, t, spec, cfg, seed, prepared)?
        .with_min_steps(sc.training.min_steps);
    let mut a = attack::Attacker::new(honest, t.attack, t.attack_norm, t.claim_examples);
    a.locate(&spec.layout());
    Ok(a)
}

fn make_honest_learner(
    sc: &Scenario,
    t: &TrainerSpec,
    spec: MlpSpec,
    cfg: &Config,
    seed: u64,
    prepared: Option<&Prepared>,
) -> Result<MlpLearner, HarnessError> {
    let settings = TrainSettings {
        epochs: t.local_epochs.unwrap_or(sc.training.local_epochs),
        lr: t.lr.unwrap_or(sc.training.lr),
        batch_size: sc.training.batch_size,
        seed: data::fnv1a(&t.name) ^ seed,
    };
    if let Some(p) = prepared {
        return Ok(MlpLearner::for_parts(
            spec,
            shard(&p.split.train, t),
            shard(&p.split.test, t),
            settings,
        ));
    }
    match &t.data {
        Some(p) => {
            let ds = data::load_csv(p).map_err(run_err)?;
            Ok(MlpLearner::for_csv(spec, &ds, settings))
        }
        None => MlpLearner::for_digits(
            spec,
            t.specialty.as_deref().unwrap_or("custom"),
            &cfg.specialties,
            settings,
        )
        .map_err(HarnessError::Run),
    }
}

/// Trains one specialty alone with the same budget as the collective run.
pub(crate) fn solo_accuracy(
    spec: MlpSpec,
    specialty: &str,
    rounds: u64,
    sc: &Scenario,
    seed: u64,
) -> Result<(f64, Vec<f32>), HarnessError> {
    let cfg = Config::builtin();
    let settings = TrainSettings {
        epochs: sc.training.local_epochs,
        lr: sc.training.lr,
        batch_size: sc.training.batch_size,
        seed: data::fnv1a(specialty) ^ seed,
    };
    let mut l = MlpLearner::for_digits(spec, specialty, &cfg.specialties, settings)
        .map_err(HarnessError::Run)?
        .with_min_steps(sc.training.min_steps);
    let mut w = spec.init_weights(42);
    for v in 0..rounds {
        w = kernal_client::Learner::train(&mut l, &w, v)
            .map_err(HarnessError::Run)?
            .weights;
    }
    let test = data::digits_split().map_err(run_err)?.test;
    Ok((spec.evaluate(&w, &test).map_err(run_err)?.accuracy, w))
}
