//! The events a trainer reports to its user (the status line, or one JSON
//! object per line with `--json`), apart from the connection loop that
//! emits them.

use serde::Serialize;

/// What the trainer tells its user, one per line with `--json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClientEvent {
    Welcome {
        trainer: String,
        model: String,
        version: u64,
        registered: bool,
        session_id: String,
    },
    Version {
        version: u64,
        num_updates: usize,
        hub_accuracy: Option<f64>,
    },
    /// The model's input normalisation: `pooling` (this trainer sent its
    /// statistics and waits), `frozen` (applied from now on) or `none`.
    Normalisation {
        state: String,
        features: usize,
        trainers: usize,
    },
    Evaluation {
        version: u64,
        specialty_accuracy: Option<f64>,
        global_accuracy: Option<f64>,
        loss: Option<f64>,
        /// Language models: bits per byte on the trainer's own and on all
        /// the held-out code it knows (absent for classifiers).
        #[serde(skip_serializing_if = "Option::is_none")]
        specialty_bits_per_byte: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        global_bits_per_byte: Option<f64>,
    },
    Trained {
        base_version: u64,
        update_id: String,
        num_examples: u64,
        loss: f64,
        seconds: f64,
    },
    Ack {
        update_id: String,
        base_version: u64,
        staleness: u64,
        duplicate: bool,
    },
    Error {
        code: String,
        message: String,
        update_id: Option<String>,
        fatal: bool,
    },
    Reconnect {
        attempt: u32,
        in_secs: f64,
        reason: String,
    },
    /// The first connection attempts all failed and the hub was never
    /// reached (said once; the client keeps trying): a wrong address or
    /// port, or a hub that is not running. `error` is the OS error.
    NeverReached {
        url: String,
        /// `host:port` tried.
        address: String,
        attempts: u32,
        error: String,
        message: String,
    },
    /// An evaluator's report was stored by the hub; `current`: it is the
    /// version's hub evaluation (false when the hub's own is shown).
    Reported {
        version: u64,
        accuracy: Option<f64>,
        loss: Option<f64>,
        bits_per_byte: Option<f64>,
        num_examples: u64,
        current: bool,
    },
    Done {
        versions_trained: u64,
        acked: u64,
        refused: u64,
    },
}
