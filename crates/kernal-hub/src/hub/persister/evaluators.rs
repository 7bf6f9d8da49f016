//! The persister's evaluator messages: issuing and revoking credentials,
//! and storing a report in its version's metrics. Credentials are written
//! here, by the one writer, like trainers' registrations.

use actix::prelude::*;

use super::core::Persister;
use crate::db;
use crate::db::EvaluatorView;
use crate::error::DbError;

/// Stores a new evaluator (its token already hashed). `None`: the name is
/// taken for this model.
#[derive(Message)]
#[rtype(result = "Result<Option<EvaluatorView>, DbError>")]
pub struct InsertEvaluator {
    pub model: String,
    pub name: String,
    pub token_hash: String,
}

impl Handler<InsertEvaluator> for Persister {
    type Result = Result<Option<EvaluatorView>, DbError>;
    fn handle(&mut self, m: InsertEvaluator, _: &mut Self::Context) -> Self::Result {
        self.timed("evaluator", |c| {
            db::insert_evaluator(c, &m.model, &m.name, &m.token_hash)
        })
    }
}

/// Revokes an evaluator. `None`: no such evaluator.
#[derive(Message)]
#[rtype(result = "Result<Option<EvaluatorView>, DbError>")]
pub struct RevokeEvaluator {
    pub model: String,
    pub name: String,
}

impl Handler<RevokeEvaluator> for Persister {
    type Result = Result<Option<EvaluatorView>, DbError>;
    fn handle(&mut self, m: RevokeEvaluator, _: &mut Self::Context) -> Self::Result {
        self.timed("evaluator", |c| db::revoke_evaluator(c, &m.model, &m.name))
    }
}

/// Stores an evaluator's report in its version's metrics. `Some(true)`:
/// it is now the version's `eval`; `None`: no such version.
#[derive(Message)]
#[rtype(result = "Result<Option<bool>, DbError>")]
pub struct RecordEvaluatorReport {
    pub model: String,
    pub version: u64,
    pub evaluator: String,
    pub figures: serde_json::Value,
}

impl Handler<RecordEvaluatorReport> for Persister {
    type Result = Result<Option<bool>, DbError>;
    fn handle(&mut self, m: RecordEvaluatorReport, _: &mut Self::Context) -> Self::Result {
        self.timed("version", |c| {
            db::record_evaluator_report(c, &m.model, m.version as i64, &m.evaluator, &m.figures)
        })
    }
}
