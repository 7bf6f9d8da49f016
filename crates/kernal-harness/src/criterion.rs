//! One pass/fail check of a run, with its figure and bound: every kind of
//! scenario reports its criteria in this shape.

use serde::Serialize;

/// One pass/fail check with its figure and bound.
#[derive(Debug, Clone, Serialize)]
pub struct Criterion {
    pub name: String,
    pub passed: bool,
    pub value: Option<f64>,
    pub bound: Option<f64>,
    pub message: String,
}

pub(crate) fn crit(
    name: &str,
    passed: bool,
    value: Option<f64>,
    bound: Option<f64>,
    message: String,
) -> Criterion {
    Criterion {
        name: name.into(),
        passed,
        value,
        bound,
        message,
    }
}
