//! The benchmark's error: what stopped a run, as a person reads it.

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub(crate) String);

/// Most failures are another library's error, shown as it says it.
pub(crate) fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}
