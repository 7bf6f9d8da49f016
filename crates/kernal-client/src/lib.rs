//! The trainer side of kernal, without the server: the hub connection loop
//! ([`connection::run`]), the [`Learner`] trait a custom trainer implements,
//! and the reference learner (a candle MLP on a specialty's slice of the
//! data). It depends on `kernal-core` for the protocol, model and data, and
//! on no actix, diesel or SQLite: `cargo tree -p kernal-client` shows it.

pub mod connection;
pub mod evaluator;
pub mod events;
pub mod kernel;
mod policy;
mod pooling;
pub mod reach;
pub mod tls;

pub use kernal_core::{data, model, protocol};

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::protocol::{FeatureStats, ModelLayout, Normalisation};
use data::Dataset;
use model::{MlpSpec, TrainSettings};

/// The result of local training on one global version.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The locally trained weights (the client sends `trained - global`).
    pub weights: Vec<f32>,
    pub num_examples: u64,
    pub loss: f64,
}

/// Federated evaluation of a global version on the trainer's own data.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct EvalReport {
    /// Accuracy on the trainer's own specialty's test slice.
    pub specialty_accuracy: Option<f64>,
    /// Accuracy on the whole test set the trainer knows.
    pub global_accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub num_examples: u64,
    /// Language models: bits per byte on the trainer's own held-out code.
    pub specialty_bits_per_byte: Option<f64>,
    /// Language models: bits per byte on all the held-out code it knows.
    pub global_bits_per_byte: Option<f64>,
}

/// The global weights of one version, as the connection loop hands them to
/// a learner (shared, since the loop keeps them while the learner trains).
#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    pub version: u64,
    pub weights: Arc<Vec<f32>>,
}

/// The learning part of a trainer. The connection loop handles the hub,
/// reconnection, idempotent resends and output; a learner only learns.
pub trait Learner: Send + 'static {
    /// Refuses a hub model this learner cannot train (wrong tensors/shapes).
    fn check_layout(&self, layout: &ModelLayout) -> Result<(), String>;
    /// Trains from the global weights of `version`.
    fn train(&mut self, global: &[f32], version: u64) -> Result<Trained, String>;
    /// Evaluates the global weights of `version` on the learner's own data.
    fn evaluate(&mut self, global: &[f32], version: u64) -> Result<Option<EvalReport>, String>;
    /// Sufficient statistics of the learner's raw training features, sent
    /// when the model pools them. `None`: this learner has none to give (it
    /// then trains without waiting for the pool to freeze).
    fn feature_stats(&self) -> Option<FeatureStats> {
        None
    }
    /// The model's input normalisation: `Some` once frozen, `None` when the
    /// model has none. Called at every welcome and when it freezes.
    fn use_normalisation(&mut self, _normalisation: Option<&Normalisation>) -> Result<(), String> {
        Ok(())
    }
    /// Lets a learner train from a version other than the newest: one it
    /// kept (an update then names that older `base_version`), or none at
    /// all (`None`: the newest is neither evaluated nor trained on, and the
    /// loop asks again later). The default trains from the newest, which is
    /// what federated averaging expects of an honest member.
    fn choose_base(&mut self, newest: &Base) -> Option<Base> {
        Some(newest.clone())
    }
    /// A last say over the update (`trained - base`) before it is encoded,
    /// for changes that are defined on the delta rather than the weights:
    /// clipping or noise for differential privacy, or a test's deliberate
    /// faults. The default sends the delta as trained.
    fn adjust_delta(&mut self, _delta: &mut [f32]) {}
}

/// Fewest mini-batch steps the reference MLP trainer takes per version
/// (`--min-steps`): past its epochs it goes on through its rows until it
/// has taken these. Measured on class-disjoint shards of five small tabular
/// sets (README "Small tabular data: the default trainer"): with two epochs
/// alone a member with 40 rows took 4 steps per version, and the collective
/// model was 0.70-0.73 at version 30 where a centralised one scored 1.000
/// (crabs); with at least 40 steps it is 0.975-1.000, and wine, iris and
/// penguins are within 3 points too. Digits members take 28 to 36 steps in
/// their two epochs, so the digits demo barely changes.
pub const DEFAULT_MIN_STEPS: usize = 40;

/// The built-in learner: the reference MLP trained with candle's SGD.
pub struct MlpLearner {
    pub spec: MlpSpec,
    pub train_data: Dataset,
    pub specialty_test: Dataset,
    pub global_test: Dataset,
    pub settings: TrainSettings,
    /// Fewest mini-batch steps per version ([`DEFAULT_MIN_STEPS`] unless
    /// set with [`with_min_steps`](Self::with_min_steps); 0: epochs only).
    pub min_steps: usize,
    /// The data as loaded, kept to scale it again when the model's
    /// normalisation arrives.
    raw: Raw,
}

#[derive(Clone)]
struct Raw {
    train: Dataset,
    specialty_test: Dataset,
    global_test: Dataset,
    /// A user CSV on a model without normalisation is standardised with the
    /// file's own statistics (what `--data` always did); the built-in digits
    /// are already scaled to [0, 1].
    own_scaling: bool,
}

impl MlpLearner {
    fn from_raw(spec: MlpSpec, raw: Raw, settings: TrainSettings) -> Self {
        let mut l = MlpLearner {
            spec,
            train_data: raw.train.clone(),
            specialty_test: raw.specialty_test.clone(),
            global_test: raw.global_test.clone(),
            settings,
            min_steps: DEFAULT_MIN_STEPS,
            raw,
        };
        l.scale(None);
        l
    }

    /// The same learner taking at least `min_steps` steps per version.
    pub fn with_min_steps(mut self, min_steps: usize) -> Self {
        self.min_steps = min_steps;
        self
    }

    /// Scales the raw data with the model's normalisation, or without one as
    /// before there was any.
    fn scale(&mut self, norm: Option<&Normalisation>) {
        let mut sets = [
            self.raw.train.clone(),
            self.raw.specialty_test.clone(),
            self.raw.global_test.clone(),
        ];
        match norm {
            Some(n) => sets.iter_mut().for_each(|d| n.apply(&mut d.features)),
            None if self.raw.own_scaling => {
                // The file's own statistics (train and test alike), as one
                // file was always scaled.
                let mut pool = crate::protocol::StatsPool::new(self.raw.train.dim);
                pool.add(
                    "train",
                    FeatureStats::of(&self.raw.train.features, self.raw.train.dim),
                );
                let test = &self.raw.global_test;
                pool.add("test", FeatureStats::of(&test.features, test.dim));
                if let Some(own) = pool.freeze() {
                    sets.iter_mut().for_each(|d| own.apply(&mut d.features));
                }
            }
            None => {}
        }
        let [train, specialty_test, global_test] = sets;
        self.train_data = train;
        self.specialty_test = specialty_test;
        self.global_test = global_test;
    }
}

impl MlpLearner {
    /// The learner for the built-in digits data and a specialty.
    pub fn for_digits(
        spec: MlpSpec,
        specialty: &str,
        table: &BTreeMap<String, Vec<u32>>,
        settings: TrainSettings,
    ) -> Result<Self, String> {
        let split = data::digits_split().map_err(|e| e.to_string())?;
        let raw = Raw {
            train: data::specialty_slice(&split.train, specialty, table),
            specialty_test: data::specialty_slice(&split.test, specialty, table),
            global_test: split.test,
            own_scaling: false,
        };
        Ok(MlpLearner::from_raw(spec, raw, settings))
    }

    /// The learner for a user CSV: its own deterministic split; "specialty"
    /// and "global" test are both the file's test part.
    pub fn for_csv(spec: MlpSpec, ds: &Dataset, settings: TrainSettings) -> Self {
        let split = data::stratified_split(ds, data::TEST_FRACTION, data::SPLIT_SEED);
        MlpLearner::for_parts(spec, split.train, split.test, settings)
    }

    /// The learner for training rows and test rows given apart (the
    /// harness's class-disjoint shards of one file): "specialty" and
    /// "global" test are both `test`.
    pub fn for_parts(
        spec: MlpSpec,
        train: Dataset,
        test: Dataset,
        settings: TrainSettings,
    ) -> Self {
        let raw = Raw {
            train,
            specialty_test: test.clone(),
            global_test: test,
            own_scaling: true,
        };
        MlpLearner::from_raw(spec, raw, settings)
    }
}

impl Learner for MlpLearner {
    fn check_layout(&self, layout: &ModelLayout) -> Result<(), String> {
        if *layout != self.spec.layout() {
            return Err(format!(
                "the hub's model has tensors {:?}, this trainer's network needs {:?}",
                layout
                    .tensors
                    .iter()
                    .map(|t| (&t.name, &t.shape))
                    .collect::<Vec<_>>(),
                self.spec
                    .layout()
                    .tensors
                    .iter()
                    .map(|t| (t.name.clone(), t.shape.clone()))
                    .collect::<Vec<_>>()
            ));
        }
        Ok(())
    }

    fn train(&mut self, global: &[f32], version: u64) -> Result<Trained, String> {
        let s = TrainSettings {
            seed: self.settings.seed ^ version.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ..self.settings
        };
        let (weights, loss) = self
            .spec
            .train_min_steps(global, &self.train_data, &s, self.min_steps)
            .map_err(|e| e.to_string())?;
        Ok(Trained {
            weights,
            num_examples: self.train_data.len() as u64,
            loss,
        })
    }

    fn feature_stats(&self) -> Option<FeatureStats> {
        Some(FeatureStats::of(
            &self.raw.train.features,
            self.raw.train.dim,
        ))
    }

    fn use_normalisation(&mut self, normalisation: Option<&Normalisation>) -> Result<(), String> {
        if let Some(n) = normalisation {
            if n.mean
                .as_ref()
                .is_some_and(|m| m.len() != self.raw.train.dim)
            {
                return Err(format!(
                    "the model normalises {} features; this trainer's data has {}",
                    n.features, self.raw.train.dim
                ));
            }
        }
        self.scale(normalisation);
        Ok(())
    }

    fn evaluate(&mut self, global: &[f32], _version: u64) -> Result<Option<EvalReport>, String> {
        let own = self
            .spec
            .evaluate(global, &self.specialty_test)
            .map_err(|e| e.to_string())?;
        let all = self
            .spec
            .evaluate(global, &self.global_test)
            .map_err(|e| e.to_string())?;
        Ok(Some(EvalReport {
            specialty_accuracy: Some(own.accuracy),
            global_accuracy: Some(all.accuracy),
            loss: Some(all.loss),
            num_examples: all.examples as u64,
            ..Default::default()
        }))
    }
}
