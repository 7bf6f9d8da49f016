//! The baselines of a kernel scenario and the scoring of every model: each
//! specialist alone (the same versions of the same steps as in the
//! collective run, from the same initial weights, a fresh optimiser per
//! version as a trainer has), and one centralised run on the union of the
//! trainers' code with the same total budget. On blocking threads: it is
//! all CPU.

use std::collections::BTreeMap;

use super::error::{run_err, HarnessError};
use super::kernel_report::KernelModelRow;
use super::kernel_training::KernelTraining;
use super::scenario::{Scenario, TrainerSpec};
use kernal_client::kernel::{KernelLearner, KernelTexts};
use kernal_client::Learner;
use kernal_core::data;
use kernal_core::kernel::{KernelSpec, KernelTrainSettings};

/// Each held-out set's name and the bytes each model predicted on it.
pub type SetBytes = Vec<(String, u64)>;

/// A scoring thread's models: their index, figures and bytes per set.
type Scored = Vec<(usize, ScoredModel, Vec<u64>)>;

/// A model to score: its row (filled by [`score_all`]) and its weights.
pub struct ScoredModel {
    pub row: KernelModelRow,
    pub weights: Vec<f32>,
}

/// The solo models (one per trainer, in the scenario's order), then the
/// centralised one.
pub struct Baselines {
    pub models: Vec<ScoredModel>,
}

/// A trainer's local settings: the scenario's, its own `lr`, a seed of its own.
pub(crate) fn trainer_settings(
    k: &KernelTraining,
    t: &TrainerSpec,
    spec: KernelSpec,
    seed: u64,
) -> KernelTrainSettings {
    KernelTrainSettings {
        steps: k.steps,
        batch: k.batch,
        window: spec.context,
        lr: t.lr.unwrap_or(k.lr),
        weight_decay: 0.0,
        seed: data::fnv1a(&t.name) ^ seed,
    }
}

pub(crate) fn texts_for(t: &TrainerSpec) -> Result<KernelTexts, HarnessError> {
    KernelTexts::for_specialty(t.specialty.as_deref().unwrap_or("custom")).map_err(run_err)
}

/// The hub's initial weights of the built-in kernel model: seed 42, as
/// `[models.kernel] seed` (the baselines start where the collective did).
fn initial_weights(spec: KernelSpec) -> Vec<f32> {
    let seed = kernal_hub::config::Config::builtin()
        .models
        .get("kernel")
        .and_then(|m| m.seed)
        .unwrap_or(42);
    spec.init_weights(seed)
}

/// Trains every baseline, two threads at a time (this machine has two
/// cores; more would only share them).
pub fn baselines(
    sc: &Scenario,
    k: &KernelTraining,
    spec: KernelSpec,
    seed: u64,
) -> Result<Baselines, HarnessError> {
    let versions = sc.stop.versions;
    let w0 = initial_weights(spec);
    // The solos: each trainer's own learner, version after version.
    let mut jobs: Vec<Box<dyn FnOnce() -> Result<ScoredModel, HarnessError> + Send>> = Vec::new();
    for t in &sc.trainers {
        let (t, k, w0) = (t.clone(), k.clone(), w0.clone());
        jobs.push(Box::new(move || {
            let mut l =
                KernelLearner::new(spec, texts_for(&t)?, trainer_settings(&k, &t, spec, seed))
                    .map_err(HarnessError::Run)?;
            let mut w = w0;
            for v in 0..versions {
                w = l.train(&w, v).map_err(HarnessError::Run)?.weights;
            }
            Ok(ScoredModel {
                row: KernelModelRow {
                    model: format!("solo-{}", t.name),
                    trainer: Some(t.name.clone()),
                    specialty: t.specialty.clone(),
                    bits_per_byte: BTreeMap::new(),
                },
                weights: w,
            })
        }));
    }
    // Centralised: one optimiser on the union, as many steps as a version
    // has times the versions, each step the windows of all the trainers.
    let mut union = Vec::new();
    let mut batch = 0usize;
    let mut lr = k.lr;
    for t in &sc.trainers {
        union.extend_from_slice(&texts_for(t)?.train);
        batch += k.batch;
        lr = t.lr.unwrap_or(lr);
    }
    let settings = KernelTrainSettings {
        steps: k.steps.saturating_mul(versions as usize),
        batch,
        window: spec.context,
        lr,
        weight_decay: 0.0,
        seed: kernal_core::data::fnv1a("centralised") ^ seed,
    };
    jobs.insert(
        0,
        Box::new(move || {
            let (w, _) = spec.train(&w0, &union, &settings).map_err(run_err)?;
            Ok(ScoredModel {
                row: KernelModelRow {
                    model: "centralised".into(),
                    trainer: None,
                    specialty: None,
                    bits_per_byte: BTreeMap::new(),
                },
                weights: w,
            })
        }),
    );
    let mut results = run_two_at_a_time(jobs)?;
    // The centralised run went first (the longest); it is listed last.
    let central = results.remove(0);
    results.push(central);
    Ok(Baselines { models: results })
}

/// Runs the jobs on two threads, keeping their order in the result.
fn run_two_at_a_time<T: Send>(
    jobs: Vec<Box<dyn FnOnce() -> Result<T, HarnessError> + Send>>,
) -> Result<Vec<T>, HarnessError> {
    let n = jobs.len();
    let queue = std::sync::Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let results: std::sync::Mutex<Vec<Option<Result<T, HarnessError>>>> =
        std::sync::Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let job = match queue.lock() {
                    Ok(mut q) => {
                        if q.is_empty() {
                            break;
                        }
                        q.remove(0)
                    }
                    Err(_) => break,
                };
                let (i, f) = job;
                let r = f();
                if let Ok(mut out) = results.lock() {
                    out[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .map_err(|_| HarnessError::Run("a baseline thread panicked".into()))?
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(HarnessError::Run("a baseline did not run".into()))))
        .collect()
}

/// Scores every model on every set (at most `windows` windows of the
/// context each, spread evenly); returns the models with their figures and
/// each set's name with the bytes predicted.
pub fn score_all(
    spec: KernelSpec,
    models: Vec<ScoredModel>,
    sets: &[(String, Vec<u8>)],
    windows: usize,
) -> Result<(Vec<ScoredModel>, SetBytes), HarnessError> {
    let sets_ref = sets;
    let mut scored = Vec::with_capacity(models.len());
    let mut bytes = vec![0u64; sets.len()];
    // One thread per half of the models: scoring is forward passes only.
    let halves: Vec<Vec<ScoredModel>> = {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (i, m) in models.into_iter().enumerate() {
            if i % 2 == 0 {
                a.push(m)
            } else {
                b.push(m)
            }
        }
        vec![a, b]
    };
    let outs: Vec<Result<Scored, HarnessError>> = std::thread::scope(|s| {
        let handles: Vec<_> = halves
            .into_iter()
            .enumerate()
            .map(|(h, half)| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (j, mut m) in half.into_iter().enumerate() {
                        let vars = spec
                            .vars(&m.weights, &candle_core::Device::Cpu)
                            .map_err(run_err)?;
                        let mut b = Vec::new();
                        for (name, text) in sets_ref {
                            let e = spec
                                .bits_per_byte_vars(&vars, text, windows)
                                .map_err(run_err)?;
                            m.row.bits_per_byte.insert(name.clone(), e.bits_per_byte);
                            b.push(e.bytes);
                        }
                        out.push((j * 2 + h, m, b));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(HarnessError::Run("a scoring thread panicked".into())))
            })
            .collect()
    });
    let mut all = Vec::new();
    for o in outs {
        all.extend(o?);
    }
    all.sort_by_key(|(i, _, _)| *i);
    for (_, m, b) in all {
        bytes = b;
        scored.push(m);
    }
    Ok((
        scored,
        sets.iter().map(|(n, _)| n.clone()).zip(bytes).collect(),
    ))
}
