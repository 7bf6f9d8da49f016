//! The events the hub publishes (the `/v1/events` feed, the dashboard, the
//! metrics): one enum, apart from the aggregator that counts them.

use serde::Serialize;

/// Something that happened, as the event feed and the dashboard see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubEvent {
    TrainerJoined {
        trainer: String,
        specialty: String,
        model: String,
        registered: bool,
    },
    TrainerLeft {
        trainer: String,
        model: String,
        reason: String,
    },
    UpdateAccepted {
        trainer: String,
        model: String,
        update_id: String,
        base_version: u64,
        staleness: u64,
        num_examples: u64,
        loss: Option<f64>,
        bytes: u64,
    },
    UpdateRefused {
        trainer: String,
        model: String,
        update_id: Option<String>,
        code: String,
        message: String,
    },
    Version {
        model: String,
        version: u64,
        num_updates: usize,
        accuracy: Option<f64>,
        loss: Option<f64>,
        aggregation_seconds: f64,
        mean_staleness: f64,
    },
    Evaluation {
        trainer: String,
        specialty: String,
        model: String,
        version: u64,
        specialty_accuracy: Option<f64>,
        global_accuracy: Option<f64>,
        num_examples: Option<u64>,
    },
    HarnessRun {
        id: i64,
        scenario: String,
        passed: bool,
        collective_accuracy: Option<f64>,
    },
    /// An administrator deleted a recorded harness run.
    HarnessRunDeleted {
        id: i64,
    },
    /// A fold whose result was not finite was abandoned; these updates
    /// (`trainer/update_id`) were refused, the others went back in the buffer.
    FoldAbandoned {
        model: String,
        refused: Vec<String>,
        code: String,
        message: String,
    },
    /// An administrator made an earlier checkpoint current again.
    RolledBack {
        model: String,
        version: u64,
        restored_version: u64,
        refused_updates: usize,
    },
    /// A model's input normalisation was fixed (or, with no statistics
    /// pooled, turned off: `trainers` 0).
    NormalisationFrozen {
        model: String,
        trainers: usize,
        count: u64,
        features: usize,
        reason: String,
    },
    /// The hub evaluated a version on the model's attached evaluation set
    /// (after the version was committed, so it arrives after `version`).
    HubEvaluation {
        model: String,
        version: u64,
        accuracy: f64,
        loss: f64,
        examples: usize,
    },
    /// An evaluator's report of a version was stored; `current`: it is the
    /// version's hub evaluation (the model has none of the hub's own).
    EvaluatorReport {
        model: String,
        version: u64,
        evaluator: String,
        accuracy: Option<f64>,
        loss: Option<f64>,
        bits_per_byte: Option<f64>,
        examples: u64,
        current: bool,
    },
    /// An administrator issued (`revoked: false`) or revoked an evaluator.
    EvaluatorCredential {
        model: String,
        evaluator: String,
        revoked: bool,
    },
    HubStopping,
    /// An administrator deleted a model (`DELETE /v1/models/{m}`); with
    /// `forced`, its `disconnected` trainers were told `model_deleted`.
    ModelDeleted {
        model: String,
        forced: bool,
        disconnected: usize,
        versions: i64,
        updates: i64,
    },
}
