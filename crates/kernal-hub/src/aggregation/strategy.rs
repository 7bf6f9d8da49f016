//! The [`Strategy`] value that names a strategy in config files and the
//! API (its names are a contract); what each one does is its type in
//! `rules`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Example- and staleness-weighted mean of deltas.
    Fedavg,
    /// FedAvg with server momentum.
    Fedavgm,
    /// FedAvg with a server-side Adam optimizer.
    Fedadam,
    /// Coordinate-wise median of deltas (robust to a minority of bad updates).
    Median,
    /// Coordinate-wise mean after trimming `trim_fraction` from each end.
    TrimmedMean,
}

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Fedavg => "fedavg",
            Strategy::Fedavgm => "fedavgm",
            Strategy::Fedadam => "fedadam",
            Strategy::Median => "median",
            Strategy::TrimmedMean => "trimmed_mean",
        }
    }
}
