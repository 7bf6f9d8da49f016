//! Evaluator credentials: the hub makes the token (evaluators are issued
//! by an administrator, never registered on first use), gives it out once
//! and keeps only its argon2 hash, as for trainers' tokens. The figures an
//! evaluator's report becomes in a version's metrics are shaped here too.

use std::collections::BTreeMap;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use serde::Serialize;

use crate::protocol::EvaluatorReport;

/// Token bytes from the OS generator: 256 bits, beyond guessing.
const TOKEN_BYTES: usize = 32;

/// A fresh evaluator token: `kev_` and 64 hex digits.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut raw = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("kev_{hex}")
}

/// argon2 refused to hash a token (it does not, for a token of our length
/// and the default parameters; the API answers it as `internal`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HashError(argon2::password_hash::Error);

/// The API's error takes a message: this is it, the same text as before.
impl From<HashError> for String {
    fn from(e: HashError) -> String {
        e.to_string()
    }
}

/// The argon2 hash stored for a token (a PHC string with its own salt).
pub fn hash(token: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError)
}

/// Whether `token` is the one `stored` was made from.
pub fn verify(token: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(token.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// An evaluator's report as a version's metrics hold it (`eval` when it is
/// the version's hub evaluation, and `evaluators.NAME` always). `accuracy`
/// and `loss` sit where the hub's own evaluation has them, so every reader
/// of `eval` (the dashboard's chart and header) shows either alike.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluatorFigures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_per_byte: Option<f64>,
    pub examples: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Always `evaluator`: the data is the evaluator's own held-out set.
    pub dataset: &'static str,
    /// Who scored it.
    pub evaluator: String,
    pub reported_at: String,
}

impl EvaluatorFigures {
    pub fn of(r: &EvaluatorReport, evaluator: &str) -> Self {
        EvaluatorFigures {
            accuracy: r.accuracy,
            loss: r.loss,
            bits_per_byte: r.bits_per_byte,
            examples: r.num_examples,
            metrics: r.metrics.clone(),
            dataset: "evaluator",
            evaluator: evaluator.to_string(),
            reported_at: crate::db::now(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Numbers, strings and a map of numbers: always representable.
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_only_their_own_hash_verifies() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 2 * TOKEN_BYTES);
        let h = hash(&a).unwrap();
        assert!(!h.contains(&a));
        assert!(verify(&a, &h));
        assert!(!verify(&b, &h));
        assert!(!verify(&a, "not a hash"));
    }
}
