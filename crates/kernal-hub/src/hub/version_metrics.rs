//! What the hub stores as a version's `metrics` (served by
//! `GET /v1/models/{m}/versions/{v}`): one typed shape for a fold, a
//! rollback and a model's first version, instead of JSON assembled at each.

use serde::Serialize;

use crate::aggregation::AggregateReport;
use crate::model::Evaluation;

/// A version's evaluation, naming the data it was scored on.
#[derive(Debug, Clone, Serialize)]
pub struct EvalFigures {
    pub accuracy: f64,
    pub loss: f64,
    pub examples: usize,
    /// `digits-test` (the built-in test split) or `evalset` (the model's
    /// uploaded evaluation set).
    pub dataset: &'static str,
}

impl EvalFigures {
    pub fn digits(e: &Evaluation) -> Self {
        Self::of(e, "digits-test")
    }

    pub fn evalset(e: &Evaluation) -> Self {
        Self::of(e, "evalset")
    }

    fn of(e: &Evaluation, dataset: &'static str) -> Self {
        EvalFigures {
            accuracy: e.accuracy,
            loss: e.loss,
            examples: e.examples,
            dataset,
        }
    }
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackFigures {
    pub restored_version: u64,
    pub replaced_version: u64,
    pub refused_updates: usize,
}

/// The metrics of one version. A fold fills the aggregation fields, a
/// rollback `rollback`; every version has `eval` (null when there is
/// nothing to score on).
#[derive(Debug, Clone, Serialize, Default)]
pub struct VersionMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<AggregateReport>,
    /// Folding every update (as it came, for streaming strategies) and
    /// finishing the fold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_seconds: Option<f64>,
    /// Fold, evaluation, encoding and the checkpoint file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_build_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackFigures>,
    pub eval: Option<EvalFigures>,
    /// `trainer/update_id` of each update folded in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_update_ids: Option<Vec<String>>,
    /// `trainer/update_id` of updates a newer one of the same trainer
    /// replaced before the fold: consumed by this version, with no weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_update_ids: Option<Vec<String>>,
    /// `trainer/update_id` of updates of trainers revoked before the fold:
    /// refused, not folded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_update_ids: Option<Vec<String>>,
    /// `trainer/update_id` of members the screen left out (the fold was
    /// measurably better on the hub's data without them): consumed by this
    /// version, with no weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screened_update_ids: Option<Vec<String>>,
}

impl VersionMetrics {
    /// A version with only its evaluation on the built-in test split.
    pub fn evaluated(eval: Option<&Evaluation>) -> Self {
        VersionMetrics {
            eval: eval.map(EvalFigures::digits),
            ..Default::default()
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Plain numbers, strings and lists: always representable.
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A `kernel` version's evaluation (its `eval` in the version's metrics):
/// bits per byte on the shipped held-out code of each specialty, never
/// trained on, and on code of subsystems no trainer has.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KernelEvalFigures {
    /// The mean over the specialties (each scored on as many bytes).
    pub bits_per_byte: f64,
    /// `networking`, `graphics`, `security`.
    pub per_specialty: std::collections::BTreeMap<String, f64>,
    /// Held-out code of subsystems no trainer has (fs/, mm/).
    pub unseen_bits_per_byte: f64,
    /// Bytes predicted in all.
    pub bytes: u64,
    /// Always `kernel-heldout`.
    pub dataset: &'static str,
    /// The version completing a fixed prompt (the dashboard's panel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<KernelCompletion>,
}

/// A version of a kernel model completing [`kernel_eval::COMPLETION_PROMPT`]
/// (sampled with a fixed seed, so the same weights always give the same text).
///
/// [`kernel_eval::COMPLETION_PROMPT`]: super::kernel_eval::COMPLETION_PROMPT
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KernelCompletion {
    pub prompt: String,
    /// The bytes after the prompt (invalid UTF-8 replaced).
    pub text: String,
}
