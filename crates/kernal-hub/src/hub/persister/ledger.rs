//! The ledger's hot path: updates persisted in group commits, refusals,
//! versions committed, pending updates refused.

use actix::prelude::*;
use bytes::Bytes;

use super::core::Persister;
use crate::db::{self, InsertOutcome, NewUpdate};
use crate::error::DbError;
use crate::hub::encoded::Encoded;

/// An update for the ledger, owned so it can cross threads.
#[derive(Debug, Clone)]
pub struct UpdateRecord {
    pub update_id: String,
    pub trainer: String,
    pub model: String,
    pub base_version: u64,
    pub num_examples: u64,
    pub staleness: u64,
    pub loss: Option<f64>,
    pub bytes: u64,
    pub refusal: Option<(String, String)>,
    pub payload: Option<Bytes>,
    /// The blob file the payload was already written to, off this thread.
    pub payload_file: Option<String>,
}

impl UpdateRecord {
    fn row<'a>(&'a self, payload_file: Option<&'a str>) -> NewUpdate<'a> {
        NewUpdate {
            update_id: &self.update_id,
            trainer: &self.trainer,
            model: &self.model,
            base_version: self.base_version as i64,
            num_examples: self.num_examples.min(i64::MAX as u64) as i64,
            staleness: self.staleness as i64,
            loss: self.loss,
            bytes: self.bytes as i64,
            status: if self.refusal.is_some() {
                "refused"
            } else {
                "pending"
            },
            refusal_code: self.refusal.as_ref().map(|r| r.0.as_str()),
            refusal_message: self.refusal.as_ref().map(|r| r.1.as_str()),
            received_at: db::now(),
            payload: if payload_file.is_some() {
                None
            } else {
                self.payload.as_deref()
            },
            payload_file,
        }
    }
}

/// Makes accepted updates durable, all in one commit; the hub acks each only
/// after its result here is Ok. The hub sends the next batch when this one
/// returns, so under load every commit carries everything that arrived
/// while the previous one was being written (group commit).
#[derive(Message)]
#[rtype(result = "Vec<Result<InsertOutcome, DbError>>")]
pub struct PersistUpdates(pub Vec<UpdateRecord>);

impl Handler<PersistUpdates> for Persister {
    type Result = Vec<Result<InsertOutcome, DbError>>;
    fn handle(&mut self, msg: PersistUpdates, _: &mut Self::Context) -> Self::Result {
        let blobs = self.blobs.clone();
        // Payloads that were not written to a file by their session but are
        // large enough for one (updates reloaded or sent by older paths).
        let mut files: Vec<Option<String>> = Vec::with_capacity(msg.0.len());
        for r in &msg.0 {
            let file = match (&r.payload_file, &r.payload) {
                (Some(f), _) => Ok(Some(f.clone())),
                (None, Some(p)) if blobs.wants(p.len()) => blobs.put(p).map(Some),
                _ => Ok(None),
            };
            match file {
                Ok(f) => files.push(f),
                Err(e) => {
                    for f in files.iter().flatten() {
                        blobs.remove(f);
                    }
                    return msg
                        .0
                        .iter()
                        .map(|_| Err(DbError::Storage(e.to_string())))
                        .collect();
                }
            }
        }
        let rows: Vec<_> = msg
            .0
            .iter()
            .zip(&files)
            .map(|(r, f)| r.row(f.as_deref()))
            .collect();
        let results = match self.timed("update", |c| db::insert_updates(c, &rows)) {
            Ok(r) => r,
            Err(e) => rows
                .iter()
                .map(|_| Err(DbError::Storage(e.to_string())))
                .collect(),
        };
        // An update stored ends a storage trouble at once. But the batch may
        // have fallen back to row by row with rows failing (a full disk):
        // the transaction "succeeded", those updates were refused for storage.
        if results
            .iter()
            .any(|r| matches!(r, Ok(InsertOutcome::Inserted { .. })))
        {
            self.blobs.health().recovered();
        }
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            self.blobs.health().failed(&e.to_string());
        }
        for (r, f) in results.iter().zip(&files) {
            if let (false, Some(f)) = (matches!(r, Ok(InsertOutcome::Inserted { .. })), f) {
                blobs.remove(f);
            }
        }
        let newest = results
            .iter()
            .filter_map(|r| match r {
                Ok(InsertOutcome::Inserted { row_id }) => Some(*row_id),
                _ => None,
            })
            .max();
        if let Some(id) = newest {
            self.mark_acked(id);
        }
        results
    }
}

/// Records a refused update in the ledger, unless the ledger accepted its
/// id before: then it answers the duplicate and records nothing. Handled in
/// order after the batches of accepted updates sent before it, so an
/// update accepted a moment earlier is found.
#[derive(Message)]
#[rtype(result = "Result<Option<InsertOutcome>, DbError>")]
pub struct RecordRefusal(pub UpdateRecord);

impl Handler<RecordRefusal> for Persister {
    type Result = Result<Option<InsertOutcome>, DbError>;
    fn handle(&mut self, msg: RecordRefusal, _: &mut Self::Context) -> Self::Result {
        self.timed("refusal", |c| {
            db::refuse_unless_accepted(c, &msg.0.row(None))
        })
    }
}

/// Writes a new version and marks its updates applied, in one transaction.
#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct CommitVersion {
    pub model: String,
    pub version: u64,
    pub parent: u64,
    pub num_updates: usize,
    pub weights: Encoded,
    /// The file the weights were already written to, off this thread.
    pub weights_file: Option<String>,
    pub metrics: String,
    pub applied: Vec<i64>,
    /// Pending updates refused in the same transaction (`rolled_back`).
    pub refused: Vec<i64>,
    /// Pending updates of trainers revoked before the fold, refused in the
    /// same transaction (`revoked`).
    pub revoked: Vec<i64>,
    /// Keep the weights of this many newest versions (0: all).
    pub keep_weights: u64,
}

impl Handler<CommitVersion> for Persister {
    type Result = Result<(), DbError>;
    fn handle(&mut self, m: CommitVersion, _: &mut Self::Context) -> Self::Result {
        let blobs = self.blobs.clone();
        let done = self.timed("version", |c| {
            let file = match &m.weights_file {
                Some(f) => Some(f.clone()),
                None if blobs.wants(m.weights.len()) => Some(blobs.put_parts(&m.weights.parts())?),
                None => None,
            };
            let inline = if file.is_some() {
                Bytes::new()
            } else {
                m.weights.to_bytes()
            };
            let r = db::commit_version(
                c,
                &db::NewVersion {
                    model: &m.model,
                    version: m.version as i64,
                    parent: Some(m.parent as i64),
                    num_updates: m.num_updates as i32,
                    weights: &inline,
                    metrics: m.metrics.clone(),
                    created_at: db::now(),
                    weights_file: file.clone(),
                },
                &m.applied,
                &m.refused,
                &m.revoked,
            );
            if r.is_err() {
                if let Some(f) = &file {
                    blobs.remove(f);
                }
            }
            r
        })?;
        // The applied updates' payload files are no longer needed.
        self.discard(done);
        if m.keep_weights > 0 && m.version >= m.keep_weights {
            let upto = (m.version - m.keep_weights) as i64;
            // Everything up to the last pruned version is known to be done;
            // the first prune after a start (or a retention change) looks
            // back over the whole history once.
            let from = self.pruned.get(&m.model).copied().unwrap_or(-1).min(upto);
            match self.timed("prune", |c| db::prune_weights(c, &m.model, from, upto)) {
                Ok(files) => {
                    self.pruned.insert(m.model.clone(), upto);
                    self.discard(files.into_iter().map(|f| (f, None)).collect())
                }
                // Pruning is housekeeping: the version itself is committed.
                Err(e) => log::warn!("could not prune old weights of {}: {e}", m.model),
            }
        }
        Ok(())
    }
}

/// Marks pending (acknowledged) updates refused, with the reason: the
/// culprits of a poisoned fold. Their payload files are no longer needed.
#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct RefusePending {
    pub ids: Vec<i64>,
    pub code: crate::protocol::ErrorCode,
    pub message: String,
}

impl Handler<RefusePending> for Persister {
    type Result = Result<(), DbError>;
    fn handle(&mut self, m: RefusePending, _: &mut Self::Context) -> Self::Result {
        let files = self.timed("refusal", |c| {
            db::refuse_pending(c, &m.ids, m.code.as_str(), &m.message)
        })?;
        self.discard(files);
        Ok(())
    }
}
