//! The rows of each table as Rust structs (Diesel `Queryable`/`Insertable`).

use diesel::prelude::*;
use serde::Serialize;

use super::schema::*;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = models)]
pub struct ModelRow {
    pub name: String,
    pub architecture: String,
    pub layout: String,
    pub settings: Option<String>,
    pub created_at: String,
    /// JSON of `hub::state::NormState`; NULL: no normalisation.
    pub normalisation: Option<String>,
    /// The evaluation set's CSV as uploaded.
    #[serde(skip)]
    pub evalset: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = versions)]
pub struct NewVersion<'a> {
    pub model: &'a str,
    pub version: i64,
    pub parent: Option<i64>,
    pub num_updates: i32,
    pub weights: &'a [u8],
    pub metrics: String,
    pub created_at: String,
    /// Set when the checkpoint is in a blob file (then `weights` is empty).
    pub weights_file: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = versions)]
pub struct VersionMeta {
    #[serde(skip)]
    pub id: i64,
    pub model: String,
    pub version: i64,
    pub parent: Option<i64>,
    pub num_updates: i32,
    #[serde(skip)]
    pub metrics: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = trainers)]
pub struct TrainerRow {
    pub name: String,
    pub specialty: String,
    #[serde(skip)]
    pub token_hash: String,
    pub revoked: bool,
    pub created_at: String,
    pub last_seen: Option<String>,
}

// NULL, not DEFAULT, for a None: a batch of rows with DEFAULT cannot be one
// SQLite statement, and no nullable column of `updates` has another default.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = updates, treat_none_as_default_value = false)]
pub struct NewUpdate<'a> {
    pub update_id: &'a str,
    pub trainer: &'a str,
    pub model: &'a str,
    pub base_version: i64,
    pub num_examples: i64,
    pub staleness: i64,
    pub loss: Option<f64>,
    pub bytes: i64,
    pub status: &'a str,
    pub refusal_code: Option<&'a str>,
    pub refusal_message: Option<&'a str>,
    pub received_at: String,
    pub payload: Option<&'a [u8]>,
    pub payload_file: Option<&'a str>,
}

/// One entry of the contributions ledger.
#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = updates)]
pub struct UpdateRow {
    /// Ledger id: increasing, the cursor of `GET /v1/updates?after=`.
    pub id: i64,
    pub update_id: String,
    pub trainer: String,
    pub model: String,
    pub base_version: i64,
    pub num_examples: i64,
    pub staleness: i64,
    pub loss: Option<f64>,
    pub bytes: i64,
    pub status: String,
    pub applied_in_version: Option<i64>,
    pub refusal_code: Option<String>,
    pub refusal_message: Option<String>,
    pub received_at: String,
}

#[derive(Debug, Clone, Insertable, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = evaluations)]
pub struct EvalRow {
    pub model: String,
    pub version: i64,
    pub trainer: String,
    pub specialty: String,
    pub specialty_accuracy: Option<f64>,
    pub global_accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub num_examples: Option<i64>,
    pub created_at: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = harness_runs)]
pub struct HarnessRunRow {
    pub id: i64,
    pub scenario: String,
    pub passed: bool,
    pub collective_accuracy: Option<f64>,
    #[serde(skip)]
    pub report: String,
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = harness_runs)]
pub struct NewHarnessRun {
    pub scenario: String,
    pub passed: bool,
    pub collective_accuracy: Option<f64>,
    pub report: String,
    pub started_at: String,
    pub finished_at: String,
}

/// A pending (acknowledged, not yet applied) update reloaded at start.
#[derive(Debug, Clone, Queryable)]
pub struct PendingRow {
    pub id: i64,
    pub update_id: String,
    pub trainer: String,
    pub base_version: i64,
    pub num_examples: i64,
    pub staleness: i64,
    pub payload: Option<Vec<u8>>,
    pub payload_file: Option<String>,
}
