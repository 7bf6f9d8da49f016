//! Trainer protocol v2: the wire format shared by the hub and every trainer.
//!
//! Control messages are JSON text frames tagged by `type`; tensors travel as
//! binary frames in the safetensors format. This module has no actix in it so
//! that clients (the reference trainer, the harness, the benchmark) can use it.

pub mod dtypes;
pub mod errors;
pub mod evaluator;
pub mod names;
pub mod normalisation;
pub mod robust_stats;
pub mod tensors;
pub mod values;

use serde::{Deserialize, Serialize};

pub use dtypes::TensorDtype;
pub use errors::{ClientAction, ErrorCode, Refusal, Scope};
pub use evaluator::{EvaluatorReport, Role};
pub use names::{validate_model_name, validate_name, NameError};
pub use normalisation::{FeatureStats, Normalisation, NormalisationState, StatsPool};
pub use robust_stats::{RejectedReport, RobustFreeze};
pub use tensors::{ModelLayout, TensorSpec};

/// Version 2 added input normalisation (`stats`, `normalisation`, and the
/// `normalisation` field of `welcome`).
pub const PROTOCOL_VERSION: u32 = 2;
/// Trainers of version 1 still join models without normalisation.
pub const OLDEST_PROTOCOL_VERSION: u32 = 1;
pub const TRAINER_WS_PATH: &str = "/v1/trainers/ws";

/// Messages a trainer sends (JSON text frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message of every connection.
    Hello {
        #[serde(default = "default_protocol")]
        protocol: u32,
        name: String,
        /// Required of trainers (the hub answers `bad_json` without it);
        /// an evaluator has none.
        #[serde(default)]
        specialty: String,
        token: String,
        #[serde(default = "default_model")]
        model: String,
        /// `evaluator` for an evaluator connection; absent for a trainer.
        #[serde(default, skip_serializing_if = "Role::is_trainer")]
        role: Role,
    },
    /// Announces a model delta; the next frame must be a binary safetensors
    /// frame with the delta (`trained - base`) of every tensor of the model.
    Update {
        update_id: String,
        base_version: u64,
        num_examples: u64,
        #[serde(default)]
        loss: Option<f64>,
    },
    /// Federated evaluation of a global version on the trainer's own data.
    Eval {
        version: u64,
        #[serde(default)]
        specialty_accuracy: Option<f64>,
        #[serde(default)]
        global_accuracy: Option<f64>,
        #[serde(default)]
        loss: Option<f64>,
        #[serde(default)]
        num_examples: Option<u64>,
        /// Language models (`kernel`): bits per byte of the version on the
        /// trainer's own held-out code, and on all the code it knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        specialty_bits_per_byte: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        global_bits_per_byte: Option<f64>,
    },
    /// Sufficient statistics of the trainer's raw training features, sent
    /// when `welcome` says the model's normalisation is `pooling`.
    Stats {
        count: u64,
        sum: Vec<f64>,
        sumsq: Vec<f64>,
    },
    /// An evaluator's figures for a version (evaluator connections only).
    EvaluatorReport(EvaluatorReport),
    /// Application-level keepalive; answered with `pong`.
    Ping {
        #[serde(default)]
        nonce: Option<u64>,
    },
    /// The trainer is leaving on purpose.
    Bye,
}

/// The `type` of every [`ClientMessage`], for naming an unknown one.
pub const CLIENT_MESSAGE_TYPES: [&str; 7] = [
    "hello",
    "update",
    "eval",
    "stats",
    "evaluator_report",
    "ping",
    "bye",
];

fn default_protocol() -> u32 {
    PROTOCOL_VERSION
}
fn default_model() -> String {
    "digits".to_string()
}

/// Messages the hub sends (JSON text frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `hello`; a binary frame with the current weights follows.
    Welcome {
        protocol: u32,
        session_id: String,
        trainer: String,
        specialty: String,
        model: String,
        version: u64,
        registered: bool,
        tensors: Vec<TensorSpec>,
        max_message_bytes: usize,
        heartbeat_interval_secs: u64,
        max_staleness: u64,
        /// The model's input normalisation; absent when it has none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        normalisation: Option<Normalisation>,
    },
    /// The model's normalisation was frozen: apply it from now on. `null`
    /// when no trainer reported statistics (the model then has none).
    Normalisation {
        model: String,
        normalisation: Option<Normalisation>,
    },
    /// A `stats` report was pooled.
    StatsReceived {
        /// Trainers whose statistics are pooled so far.
        trainers: usize,
        /// Whether the normalisation is already frozen (late reports are
        /// not pooled).
        frozen: bool,
    },
    /// A new global version; a binary frame with its weights follows.
    Model {
        model: String,
        version: u64,
        num_updates: usize,
        #[serde(default)]
        metrics: Option<serde_json::Value>,
    },
    /// The update is durable in the hub's ledger.
    Ack {
        update_id: String,
        base_version: u64,
        staleness: u64,
        duplicate: bool,
        status: String,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        update_id: Option<String>,
        fatal: bool,
    },
    Pong {
        #[serde(default)]
        nonce: Option<u64>,
    },
    /// The hub is going away (shutdown); reconnect later.
    Goodbye { reason: String },
    /// An evaluator's report was stored. `current`: it is the version's
    /// hub evaluation (`metrics.eval`); false when the hub's own
    /// evaluation of the version is shown there instead.
    EvaluationRecorded {
        model: String,
        version: u64,
        evaluator: String,
        current: bool,
    },
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            update_id: None,
            fatal: code.is_fatal(),
        }
    }
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_with_defaults() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"hello","name":"a","specialty":"s","token":"t"}"#)
                .unwrap();
        assert_eq!(
            m,
            ClientMessage::Hello {
                protocol: PROTOCOL_VERSION,
                name: "a".into(),
                specialty: "s".into(),
                token: "t".into(),
                model: "digits".into(),
                role: Role::Trainer,
            }
        );
    }

    #[test]
    fn evaluator_hello_and_report_parse_and_trainer_hellos_are_unchanged() {
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"hello","name":"judge","token":"t","model":"wine","role":"evaluator"}"#,
        )
        .unwrap();
        assert!(
            matches!(m, ClientMessage::Hello { role: Role::Evaluator, ref specialty, .. } if specialty.is_empty())
        );
        let trainer = ClientMessage::Hello {
            protocol: 2,
            name: "a".into(),
            specialty: "s".into(),
            token: "t".into(),
            model: "digits".into(),
            role: Role::Trainer,
        };
        let json = serde_json::to_string(&trainer).unwrap();
        assert!(!json.contains("role"), "{json}");
        let r: ClientMessage = serde_json::from_str(
            r#"{"type":"evaluator_report","version":4,"accuracy":0.5,"num_examples":10,"metrics":{"f1":0.4}}"#,
        )
        .unwrap();
        let ClientMessage::EvaluatorReport(r) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (r.version, r.accuracy, r.metrics["f1"]),
            (4, Some(0.5), 0.4)
        );
    }

    #[test]
    fn error_codes_are_snake_case_strings() {
        let e = ServerMessage::error(ErrorCode::StaleUpdate, "x").to_json();
        assert!(e.contains(r#""code":"stale_update""#), "{e}");
        assert_eq!(
            serde_json::to_string(&ErrorCode::NonFinite).unwrap(),
            "\"non_finite\""
        );
        assert_eq!(ErrorCode::TooManyHandshakes.as_str(), "too_many_handshakes");
    }
}
