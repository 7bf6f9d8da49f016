//! Trainer protocol v2: the wire format shared by the hub and every trainer.
//!
//! Control messages are JSON text frames tagged by `type`; tensors travel as
//! binary frames in the safetensors format. This module has no actix in it so
//! that clients (the reference trainer, the harness, the benchmark) can use it.

pub mod dtypes;
pub mod errors;
pub mod normalisation;
pub mod robust_stats;
pub mod tensors;
pub mod values;

use serde::{Deserialize, Serialize};

pub use dtypes::TensorDtype;
pub use errors::{ClientAction, ErrorCode, Refusal, Scope};
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
        specialty: String,
        token: String,
        #[serde(default = "default_model")]
        model: String,
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
    /// Application-level keepalive; answered with `pong`.
    Ping {
        #[serde(default)]
        nonce: Option<u64>,
    },
    /// The trainer is leaving on purpose.
    Bye,
}

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

/// Checks a trainer or model name: short, printable, no path characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a name has 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(format!(
            "name `{}` may only contain letters, digits, `_`, `-` and `.`",
            name.escape_default()
        ));
    }
    Ok(())
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
                model: "digits".into()
            }
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
