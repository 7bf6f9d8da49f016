//! The evaluator role: a client that scores each new version on its own
//! held-out data and reports the figures, which the hub records as the
//! version's hub evaluation. It exists because the hub can only run the
//! models it knows (the built-in MLP and language model); any other model
//! is scored by its owner's code, and this is the wire side of that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::errors::{ErrorCode, Refusal};

/// What a connection is, as its `hello` says. Absent means `trainer`, so
/// every client written before evaluators existed is unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Trainer,
    Evaluator,
}

impl Role {
    /// For `skip_serializing_if`: a trainer's hello stays as it always was.
    pub fn is_trainer(&self) -> bool {
        *self == Role::Trainer
    }
}

/// Named metrics one report may carry besides the standard figures.
pub const MAX_NAMED_METRICS: usize = 32;
/// A named metric's value is a finite number within this magnitude.
pub const MAX_METRIC_MAGNITUDE: f64 = 1e12;
/// Bits per byte (or per token) above this are not a score but a bug.
pub const MAX_BITS_PER_BYTE: f64 = 64.0;

/// An evaluator's figures for one version (`evaluator_report`). At least
/// one of `accuracy`, `loss` and `bits_per_byte` is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluatorReport {
    pub version: u64,
    /// Fraction of held-out examples classified right, in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Mean loss on the held-out data: finite, not negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Language models: bits per byte on the held-out text, in [0, 64].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits_per_byte: Option<f64>,
    /// How many held-out examples (rows, windows) were scored: at least 1,
    /// at most the model's `max_num_examples`.
    pub num_examples: u64,
    /// Anything else the evaluator measures (`f1`, `top5`...): at most 32,
    /// names as trainer names, finite values within ±1e12.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

impl EvaluatorReport {
    /// Checks everything a report says on its own; the hub adds the version
    /// check (it must exist). `max_num_examples` is the model's limit.
    pub fn validate(&self, max_num_examples: u64) -> Result<(), Refusal> {
        let bad = |m: String| Err(Refusal::new(ErrorCode::BadEval, m));
        if self.accuracy.is_none() && self.loss.is_none() && self.bits_per_byte.is_none() {
            return bad(
                "an evaluator report needs at least one of `accuracy`, `loss` and `bits_per_byte`"
                    .into(),
            );
        }
        if let Some(a) = self.accuracy {
            if !(a.is_finite() && (0.0..=1.0).contains(&a)) {
                return bad(format!("`accuracy` must be between 0 and 1, not {a}"));
            }
        }
        if let Some(l) = self.loss {
            if !(l.is_finite() && l >= 0.0) {
                return bad(format!("`loss` must be a finite number >= 0, not {l}"));
            }
        }
        if let Some(b) = self.bits_per_byte {
            if !(b.is_finite() && (0.0..=MAX_BITS_PER_BYTE).contains(&b)) {
                return bad(format!(
                    "`bits_per_byte` must be between 0 and {MAX_BITS_PER_BYTE}, not {b}"
                ));
            }
        }
        if self.num_examples == 0 || self.num_examples > max_num_examples {
            return bad(format!(
                "`num_examples` must be 1 to {max_num_examples} (the model's max_num_examples), not {}",
                self.num_examples
            ));
        }
        if self.metrics.len() > MAX_NAMED_METRICS {
            return bad(format!(
                "at most {MAX_NAMED_METRICS} named metrics, not {}",
                self.metrics.len()
            ));
        }
        for (k, v) in &self.metrics {
            if let Err(e) = super::validate_name(k) {
                return bad(format!("metric {e}"));
            }
            if !(v.is_finite() && v.abs() <= MAX_METRIC_MAGNITUDE) {
                return bad(format!(
                    "metric `{k}` must be a finite number within ±{MAX_METRIC_MAGNITUDE:e}, not {v}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> EvaluatorReport {
        EvaluatorReport {
            version: 3,
            accuracy: Some(0.9),
            loss: Some(0.3),
            bits_per_byte: None,
            num_examples: 36,
            metrics: BTreeMap::new(),
        }
    }

    type Breaker = Box<dyn Fn(&mut EvaluatorReport)>;

    #[test]
    fn reports_are_range_checked() {
        assert!(report().validate(1000).is_ok());
        let cases: Vec<Breaker> = vec![
            Box::new(|r| r.accuracy = Some(1.5)),
            Box::new(|r| r.accuracy = Some(f64::NAN)),
            Box::new(|r| r.loss = Some(-1.0)),
            Box::new(|r| r.loss = Some(f64::INFINITY)),
            Box::new(|r| r.bits_per_byte = Some(65.0)),
            Box::new(|r| r.num_examples = 0),
            Box::new(|r| r.num_examples = 1001),
            Box::new(|r| {
                r.accuracy = None;
                r.loss = None;
            }),
            Box::new(|r| {
                r.metrics.insert("bad name!".into(), 1.0);
            }),
            Box::new(|r| {
                r.metrics.insert("f1".into(), 1e13);
            }),
            Box::new(|r| {
                for i in 0..33 {
                    r.metrics.insert(format!("m{i}"), 1.0);
                }
            }),
        ];
        for (i, break_it) in cases.iter().enumerate() {
            let mut r = report();
            break_it(&mut r);
            let e = r.validate(1000).expect_err(&format!("case {i} accepted"));
            assert_eq!(e.code, ErrorCode::BadEval, "case {i}");
        }
    }

    #[test]
    fn role_defaults_to_trainer() {
        assert_eq!(Role::default(), Role::Trainer);
        assert_eq!(
            serde_json::to_string(&Role::Evaluator).unwrap(),
            "\"evaluator\""
        );
    }
}
