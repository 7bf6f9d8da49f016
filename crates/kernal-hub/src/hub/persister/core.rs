//! The Persister actor itself: its connection, the timing of each write
//! reported to the metrics, and the retiring of blob files. Its messages are
//! in the sibling files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use diesel::SqliteConnection;

use crate::db;
use crate::error::DbError;
use crate::hub::metrics::{MetricsAggregator, PersisterTiming};

pub struct Persister {
    pub(super) path: PathBuf,
    pub(super) conn: Option<SqliteConnection>,
    pub(super) metrics: Option<Addr<MetricsAggregator>>,
    pub(super) blobs: db::BlobStore,
    pub(super) janitor: Option<std::sync::mpsc::Sender<Vec<std::path::PathBuf>>>,
    /// Per model, the newest version whose weights are known pruned.
    pub(super) pruned: std::collections::HashMap<String, i64>,
    /// Raised by the checkpoint thread when the writer should finish its
    /// pass (see `db::start_checkpointer`); None without that thread.
    pub(super) checkpointer: Option<Arc<AtomicBool>>,
    pub(super) started_checkpointer: bool,
    /// The newest acknowledged ledger id, kept beside the database.
    pub(super) ackmark: Option<db::acked::AckMark>,
    /// The writer's page cache (KiB, `hub.db_cache_kib`).
    pub(super) cache_kib: u64,
    /// The writer's own checkpoints failing: logged at start, then rate-limited.
    pub(super) checkpoint_log: db::health::TroubleLog,
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

    pub(super) fn conn(&mut self) -> Result<&mut SqliteConnection, DbError> {
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

    pub(super) fn timed<T>(
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

    pub(super) fn report(&self, what: &'static str, start: Instant) {
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
    pub(super) fn discard(&mut self, files: Vec<(String, Option<u64>)>) {
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
    pub(super) fn mark_acked(&mut self, id: i64) {
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
