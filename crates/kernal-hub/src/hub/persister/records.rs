//! The persister's messages that record what is not the ledger's hot path:
//! models and their deletion, trainers and sessions, evaluations, harness
//! runs, normalisation and evaluation sets. Each is one short transaction.

use actix::prelude::*;
use bytes::Bytes;

use super::core::Persister;
use crate::db;
use crate::db::EvalRow;
use crate::db::ModelRow;
use crate::db::NewHarnessRun;
use crate::db::TrainerRow;
use crate::error::DbError;
use crate::hub::encoded::Encoded;

#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct CreateModel {
    pub row: ModelRow,
    pub weights: Encoded,
    pub metrics: String,
}

impl Handler<CreateModel> for Persister {
    type Result = Result<(), DbError>;
    fn handle(&mut self, m: CreateModel, _: &mut Self::Context) -> Self::Result {
        let blobs = self.blobs.clone();
        self.timed("model", |c| {
            // A large model's first version goes to its file, as every
            // later one does (and is never copied into one piece).
            let file = match blobs.wants(m.weights.len()) {
                true => Some(blobs.put_parts(&m.weights.parts())?),
                false => None,
            };
            let weights = match file {
                Some(_) => Bytes::new(),
                None => m.weights.to_bytes(),
            };
            db::insert_model(
                c,
                &m.row,
                &db::NewVersion {
                    model: &m.row.name,
                    version: 0,
                    parent: None,
                    num_updates: 0,
                    weights: &weights,
                    metrics: m.metrics.clone(),
                    created_at: db::now(),
                    weights_file: file,
                },
            )
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct UpsertTrainer(pub TrainerRow);

impl Handler<UpsertTrainer> for Persister {
    type Result = Result<(), DbError>;
    fn handle(&mut self, m: UpsertTrainer, _: &mut Self::Context) -> Self::Result {
        self.timed("trainer", |c| db::upsert_trainer(c, &m.0))
    }
}

#[derive(Message)]
#[rtype(result = "Result<bool, DbError>")]
pub struct SetRevoked {
    pub name: String,
    pub revoked: bool,
}

impl Handler<SetRevoked> for Persister {
    type Result = Result<bool, DbError>;
    fn handle(&mut self, m: SetRevoked, _: &mut Self::Context) -> Self::Result {
        self.timed("trainer", |c| db::set_revoked(c, &m.name, m.revoked))
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct OpenSession {
    pub id: String,
    pub trainer: String,
    pub specialty: String,
    pub model: String,
    pub remote: Option<String>,
}

impl Handler<OpenSession> for Persister {
    type Result = Result<(), DbError>;
    fn handle(&mut self, m: OpenSession, _: &mut Self::Context) -> Self::Result {
        self.timed("session", |c| {
            db::open_session(
                c,
                &m.id,
                &m.trainer,
                &m.specialty,
                &m.model,
                m.remote.as_deref(),
            )
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub id: String,
    pub trainer: String,
    pub reason: String,
}

impl Handler<CloseSession> for Persister {
    type Result = ();
    fn handle(&mut self, m: CloseSession, _: &mut Self::Context) {
        if let Err(e) = self.timed("session", |c| {
            db::close_session(c, &m.id, &m.trainer, &m.reason)
        }) {
            log::warn!("could not record session end: {e}");
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct InsertEval(pub EvalRow);

impl Handler<InsertEval> for Persister {
    type Result = ();
    fn handle(&mut self, m: InsertEval, _: &mut Self::Context) {
        if let Err(e) = self.timed("evaluation", |c| db::insert_eval(c, &m.0)) {
            log::warn!("could not record evaluation: {e}");
        }
    }
}

#[derive(Message)]
#[rtype(result = "Result<i64, DbError>")]
pub struct InsertHarnessRun(pub NewHarnessRun);

impl Handler<InsertHarnessRun> for Persister {
    type Result = Result<i64, DbError>;
    fn handle(&mut self, m: InsertHarnessRun, _: &mut Self::Context) -> Self::Result {
        self.timed("harness_run", |c| db::insert_harness_run(c, &m.0))
    }
}

#[derive(Message)]
#[rtype(result = "Result<bool, DbError>")]
pub struct DeleteHarnessRun(pub i64);

impl Handler<DeleteHarnessRun> for Persister {
    type Result = Result<bool, DbError>;
    fn handle(&mut self, m: DeleteHarnessRun, _: &mut Self::Context) -> Self::Result {
        self.timed("harness_run", |c| db::delete_harness_run(c, m.0))
    }
}

/// A barrier: answered once every message sent before it has been handled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for Persister {
    type Result = ();
    fn handle(&mut self, _: Flush, _: &mut Self::Context) {}
}

#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct SaveNormalisation {
    pub model: String,
    /// JSON of the model's `NormState`; None: no normalisation.
    pub json: Option<String>,
}

impl Handler<SaveNormalisation> for Persister {
    type Result = Result<(), DbError>;
    fn handle(&mut self, m: SaveNormalisation, _: &mut Self::Context) -> Self::Result {
        self.timed("model", |c| {
            db::set_normalisation(c, &m.model, m.json.as_deref())
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct SaveEvalset {
    pub model: String,
    pub csv: Option<String>,
}

impl Handler<SaveEvalset> for Persister {
    type Result = Result<(), DbError>;
    fn handle(&mut self, m: SaveEvalset, _: &mut Self::Context) -> Self::Result {
        self.timed("model", |c| db::set_evalset(c, &m.model, m.csv.as_deref()))
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct RecordVersionEval {
    pub model: String,
    pub version: u64,
    pub eval: serde_json::Value,
}

impl Handler<RecordVersionEval> for Persister {
    type Result = Result<(), DbError>;
    fn handle(&mut self, m: RecordVersionEval, _: &mut Self::Context) -> Self::Result {
        self.timed("version", |c| {
            db::set_version_eval(c, &m.model, m.version as i64, &m.eval)
        })
    }
}

/// Deletes a model's rows and records the deletion; its blob files are
/// removed after the commit. `None`: no such model in the database.
#[derive(Message)]
#[rtype(result = "Result<Option<db::ModelDeletion>, DbError>")]
pub struct DeleteModel {
    pub model: String,
    pub forced: bool,
    pub disconnected: i64,
}

impl Handler<DeleteModel> for Persister {
    type Result = Result<Option<db::ModelDeletion>, DbError>;
    fn handle(&mut self, m: DeleteModel, _: &mut Self::Context) -> Self::Result {
        let done = self.timed("model_delete", |c| {
            db::delete_model(c, &m.model, m.forced, m.disconnected)
        })?;
        // Removed now rather than kept as spares: the caller is told the
        // model's bytes are gone when this returns.
        // Its retired payloads may wait as spares: they go too.
        Ok(done.map(|(record, files)| {
            let paths = files
                .iter()
                .filter_map(|(name, _)| self.blobs.forget(name))
                .chain(self.blobs.drain_spares());
            for path in paths {
                if let Err(e) = std::fs::remove_file(&path) {
                    log::warn!("deleting model {}: {}: {e}", record.model, path.display());
                }
            }
            record
        }))
    }
}
