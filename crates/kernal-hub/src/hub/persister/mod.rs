//! The Persister: the one SQLite writer, on a SyncArbiter thread so diesel's
//! blocking calls never run on an async executor. Messages are handled in the
//! order they are sent, which is what makes `Flush` a barrier.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use diesel::SqliteConnection;

use crate::db::{self, EvalRow, InsertOutcome, ModelRow, NewHarnessRun, NewUpdate, TrainerRow};
use crate::error::DbError;
use crate::hub::metrics::{MetricsAggregator, PersisterTiming};

mod evaluators;
mod records;
pub use evaluators::*;
pub use records::*;

pub struct Persister {
    path: PathBuf,
    conn: Option<SqliteConnection>,
    metrics: Option<Addr<MetricsAggregator>>,
    blobs: db::BlobStore,
    janitor: Option<std::sync::mpsc::Sender<Vec<std::path::PathBuf>>>,
    /// Per model, the newest version whose weights are known pruned.
    pruned: std::collections::HashMap<String, i64>,
    /// Raised by the checkpoint thread when the writer should finish its
    /// pass (see `db::start_checkpointer`); None without that thread.
    checkpointer: Option<Arc<AtomicBool>>,
    started_checkpointer: bool,
    /// The newest acknowledged ledger id, kept beside the database.
    ackmark: Option<db::acked::AckMark>,
    /// The writer's page cache (KiB, `hub.db_cache_kib`).
    cache_kib: u64,
    /// The writer's own checkpoints failing: logged at start, then rate-limited.
    checkpoint_log: db::health::TroubleLog,
}

/// Test hook, set by tests only: `KERNAL_TEST_DB_MAX_PAGES` caps the writer's
/// database at that many pages (SQLite's `max_page_count`; a value below the
/// current size holds it at its size), so a test gets the real "database or
/// disk is full" errors of a full disk without filling one.
fn test_max_pages() -> Option<u64> {
    std::env::var("KERNAL_TEST_DB_MAX_PAGES").ok()?.parse().ok()
}

impl Persister {
    pub fn new(
        path: PathBuf,
        blobs: db::BlobStore,
        metrics: Option<Addr<MetricsAggregator>>,
    ) -> Self {
        Persister {
            path,
            conn: None,
            metrics,
            blobs,
            janitor: None,
            pruned: std::collections::HashMap::new(),
            checkpointer: None,
            started_checkpointer: false,
            ackmark: None,
            cache_kib: db::DEFAULT_CACHE_KIB,
            checkpoint_log: db::health::TroubleLog::new(
                "the writer's WAL checkpoint",
                std::time::Duration::from_secs(60),
            ),
        }
    }

    /// The writer's page cache: what it keeps of the database in memory.
    pub fn with_cache_kib(mut self, kib: u64) -> Self {
        self.cache_kib = kib;
        self
    }

    fn conn(&mut self) -> Result<&mut SqliteConnection, DbError> {
        if self.conn.is_none() {
            let mut c = db::connect(&self.path)?;
            db::set_cache_kib(&mut c, self.cache_kib)?;
            // The WAL is folded back into the database by a thread of its
            // own, not by whichever commit crosses the threshold: that commit
            // would hold every ack behind it for the checkpoint's writes and
            // fsync.
            if !self.started_checkpointer {
                self.started_checkpointer = true;
                self.checkpointer = db::start_checkpointer(&self.path);
            }
            if self.checkpointer.is_some() {
                diesel::connection::SimpleConnection::batch_execute(
                    &mut c,
                    "PRAGMA wal_autocheckpoint = 0;",
                )?;
            }
            if let Some(pages) = test_max_pages() {
                diesel::connection::SimpleConnection::batch_execute(
                    &mut c,
                    &format!("PRAGMA max_page_count = {pages};"),
                )?;
            }
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| DbError::Pool("no connection".into()))
    }

    fn timed<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut SqliteConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let start = Instant::now();
        let r = match self.conn() {
            Ok(c) => f(c),
            Err(e) => Err(e),
        };
        match &r {
            Ok(_) => self.blobs.health().wrote(),
            Err(e) => {
                self.blobs.health().failed(&e.to_string());
                // Reconnect next time: the connection may be what failed.
                self.conn = None;
            }
        }
        self.report(what, start);
        let due = self
            .checkpointer
            .as_ref()
            .is_some_and(|f| f.swap(false, Ordering::AcqRel));
        if due {
            if let Some(c) = self.conn.as_mut() {
                let start = Instant::now();
                match db::wal_checkpoint(c) {
                    Ok(_) => {
                        self.checkpoint_log.succeeded();
                    }
                    Err(e) => {
                        self.checkpoint_log.failed(&e);
                    }
                }
                self.report("checkpoint", start);
            }
        }
        r
    }

    fn report(&self, what: &'static str, start: Instant) {
        if let Some(m) = &self.metrics {
            m.do_send(PersisterTiming {
                what,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
    }
}

impl Persister {
    /// Retires files no row names any more. Keeping one as a spare is
    /// immediate, so the next update can reuse it at once; a file that cannot
    /// be kept goes to a janitor thread to unlink, since dropping a large file
    /// from the page cache costs milliseconds that need not delay a reply.
    fn discard(&mut self, files: Vec<(String, Option<u64>)>) {
        let doomed: Vec<std::path::PathBuf> = files
            .iter()
            .filter_map(|(f, size)| self.blobs.retire(f, *size))
            .collect();
        if doomed.is_empty() {
            return;
        }
        if self.janitor.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<std::path::PathBuf>>();
            let spawned = std::thread::Builder::new()
                .name("kernal-janitor".into())
                .spawn(move || {
                    while let Ok(batch) = rx.recv() {
                        for p in batch {
                            let _ = std::fs::remove_file(p);
                        }
                    }
                });
            if spawned.is_ok() {
                self.janitor = Some(tx);
            }
        }
        let doomed = match &self.janitor {
            Some(tx) => match tx.send(doomed) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => doomed,
        };
        for p in doomed {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Persister {
    /// Records the newest acknowledged ledger id before the acks go out.
    /// Best effort: the updates are durable whether or not the mark is.
    fn mark_acked(&mut self, id: i64) {
        if self.ackmark.is_none() {
            match db::acked::AckMark::open(&self.path) {
                Ok(m) => self.ackmark = Some(m),
                Err(e) => {
                    log::warn!("{e}");
                    return;
                }
            }
        }
        if let Some(m) = self.ackmark.as_mut() {
            if let Err(e) = m.record(id) {
                log::warn!("{e}");
                self.ackmark = None;
            }
        }
    }
}

impl Actor for Persister {
    type Context = SyncContext<Self>;
}

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
    pub weights: Bytes,
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
                None if blobs.wants(m.weights.len()) => Some(blobs.put(&m.weights)?),
                None => None,
            };
            let r = db::commit_version(
                c,
                &db::NewVersion {
                    model: &m.model,
                    version: m.version as i64,
                    parent: Some(m.parent as i64),
                    num_updates: m.num_updates as i32,
                    weights: if file.is_some() { &[] } else { &m.weights },
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
