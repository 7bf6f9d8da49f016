//! The Hub actor itself: its state, how it starts, and the plumbing every
//! group of messages shares (events to the aggregator, group commits to the
//! persister, per-model gauges). The message handlers are in the sibling
//! files; they reach the state through the `pub(super)` fields.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use crate::config::Config;
use crate::data::Dataset;
use crate::db::{BlobStore, DbPool, InsertOutcome};
use crate::error::DbError;
use crate::hub::metrics::{self, HubEvent, MetricsAggregator};
use crate::hub::outbox::Outbox;
use crate::hub::persister::{self, Persister, UpdateRecord};
use crate::hub::registration::RegistrationLimiter;
use crate::hub::state::{ModelState, TrainerInfo};
use crate::protocol::{ErrorCode, Refusal};

/// Messages the Hub sends to a trainer session.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum ToSession {
    /// Send this error and close the connection.
    Close { code: ErrorCode, message: String },
    /// The hub is shutting down.
    Goodbye,
}

pub(super) struct SessionEntry {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) specialty: String,
    pub(super) addr: Recipient<ToSession>,
    /// New versions go straight into it, not through the actor's mailbox.
    pub(super) outbox: Arc<Outbox>,
    pub(super) since: String,
}

/// A connected evaluator.
pub(super) struct EvaluatorEntry {
    pub(super) session_id: String,
    pub(super) addr: Recipient<ToSession>,
    pub(super) outbox: Arc<Outbox>,
}

/// Connected evaluators by (model, name).
pub(super) type Evaluators = HashMap<(String, String), EvaluatorEntry>;

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct TrainerLive {
    pub accepted: u64,
    pub refused: u64,
    pub last_refusal: Option<String>,
    pub last_loss: Option<f64>,
    pub specialty_accuracy: Option<f64>,
    pub global_accuracy: Option<f64>,
    pub last_update_at: Option<String>,
}

pub struct Hub {
    pub(super) cfg: Config,
    pub(super) models: BTreeMap<String, ModelState>,
    pub(super) trainers: HashMap<String, TrainerInfo>,
    pub(super) live: HashMap<String, TrainerLive>,
    pub(super) sessions: HashMap<String, SessionEntry>,
    /// Connected evaluators, apart from trainers (see `evaluators.rs`).
    pub(super) evaluators: Evaluators,
    pub(super) persister: Addr<Persister>,
    pub(super) metrics: Addr<MetricsAggregator>,
    pub(super) hot: Arc<metrics::HotMetrics>,
    /// Accepted-update events not yet handed to the aggregator (see `event`).
    pub(super) feed: Vec<HubEvent>,
    pub(super) test_data: Option<Arc<Dataset>>,
    pub(super) stopping: bool,
    pub(super) persister_in_flight: i64,
    /// Updates waiting for the next group commit, with who to tell.
    pub(super) to_persist: Vec<(UpdateRecord, PersistReply)>,
    pub(super) persisting: bool,
    pub(super) blobs: BlobStore,
    /// Read connections, for payloads and checkpoints read back off the actor.
    pub(super) pool: DbPool,
    /// Kernel models whose evaluation is running (see `kernel.rs`).
    pub(super) kernel_evaluating: HashSet<String>,
    /// New names registered per address (`hub.registrations_per_ip_per_hour`).
    pub(super) registrations: RegistrationLimiter,
}

/// What the hub is started with.
pub struct HubParts {
    pub cfg: Config,
    pub models: Vec<ModelState>,
    pub trainers: HashMap<String, TrainerInfo>,
    pub persister: Addr<Persister>,
    pub metrics: Addr<MetricsAggregator>,
    pub hot: Arc<metrics::HotMetrics>,
    pub test_data: Option<Arc<Dataset>>,
    pub blobs: BlobStore,
    pub pool: DbPool,
}

/// Accepted-update events sent to the aggregator in one message.
pub(super) const FEED_BATCH: usize = 256;

pub(super) type PersistReply = tokio::sync::oneshot::Sender<Result<InsertOutcome, DbError>>;

impl Hub {
    pub fn new(p: HubParts) -> Self {
        Hub {
            cfg: p.cfg,
            models: p.models.into_iter().map(|m| (m.name.clone(), m)).collect(),
            trainers: p.trainers,
            live: HashMap::new(),
            sessions: HashMap::new(),
            evaluators: HashMap::new(),
            persister: p.persister,
            metrics: p.metrics,
            hot: p.hot,
            feed: Vec::new(),
            test_data: p.test_data,
            stopping: false,
            persister_in_flight: 0,
            to_persist: Vec::new(),
            persisting: false,
            blobs: p.blobs,
            pool: p.pool,
            kernel_evaluating: Default::default(),
            registrations: Default::default(),
        }
    }

    /// Events go to the aggregator in order; accepted updates, the one kind
    /// that comes thousands a second, in batches flushed by any other event,
    /// by a full batch, or by the 100 ms tick.
    pub(super) fn event(&mut self, e: HubEvent) {
        if matches!(e, HubEvent::UpdateAccepted { .. }) {
            self.feed.push(e);
            if self.feed.len() >= FEED_BATCH {
                self.flush_feed();
            }
            return;
        }
        self.flush_feed();
        self.metrics.do_send(metrics::Event(e));
    }

    pub(super) fn flush_feed(&mut self) {
        if !self.feed.is_empty() {
            let batch = std::mem::replace(&mut self.feed, Vec::with_capacity(FEED_BATCH));
            self.metrics.do_send(metrics::Events(batch));
        }
    }

    pub(super) fn gauges(&self, model: &str) {
        if let Some(m) = self.models.get(model) {
            let connected = self.sessions.values().filter(|s| s.model == model).count();
            self.metrics.do_send(metrics::ModelGauges {
                model: model.to_string(),
                version: m.version,
                buffered: m.buffer.len(),
                connected,
            });
        }
    }

    /// Sends what waits to be persisted as one batch, unless a batch is
    /// already being written: then it goes when that one returns.
    pub(super) fn persist_batch(&mut self, ctx: &mut Context<Self>) {
        if self.persisting || self.to_persist.is_empty() {
            return;
        }
        self.persisting = true;
        let (records, replies): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.to_persist).into_iter().unzip();
        let n = records.len();
        let fut = self.persister.send(persister::PersistUpdates(records));
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.persisting = false;
            let results = match res {
                Ok(r) if r.len() == n => r,
                Ok(_) => (0..n)
                    .map(|_| {
                        Err(DbError::Storage(
                            "persister answered a different batch".into(),
                        ))
                    })
                    .collect(),
                Err(e) => (0..n)
                    .map(|_| Err(DbError::Storage(format!("persister unavailable: {e}"))))
                    .collect(),
            };
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(r);
            }
            act.persist_batch(ctx);
        }));
    }

    /// Removes the blob file a session wrote for an update refused before
    /// it reached the ledger.
    pub(super) fn drop_blob(&self, file: &Option<String>) {
        if let Some(f) = file {
            self.blobs.remove(f);
        }
    }

    pub(super) fn queue(&mut self, delta: i64) {
        self.persister_in_flight += delta;
        self.hot.persister_queue(self.persister_in_flight);
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Large mailboxes: a thousand trainers may all send at once.
        ctx.set_mailbox_capacity(100_000);
        // Round timeouts: a partial buffer is folded once its deadline passes.
        ctx.run_interval(Duration::from_millis(100), |act, ctx| {
            let names: Vec<String> = act.models.keys().cloned().collect();
            let now = Instant::now();
            for n in names {
                let timed_out = act.models.get(&n).is_some_and(|m| {
                    m.norm_since
                        .is_some_and(|t| now.duration_since(t) >= m.settings.normalisation_wait())
                });
                if timed_out {
                    act.freeze_normalisation(
                        &n,
                        "normalisation_wait_secs passed since the first statistics",
                    );
                }
                act.maybe_fold(&n, ctx);
                act.gauges(&n);
            }
            act.flush_feed();
        });
        let names: Vec<String> = self.models.keys().cloned().collect();
        for n in names {
            self.gauges(&n);
            // Reloaded pending updates may already fill a round.
            self.maybe_fold(&n, ctx);
        }
    }
}

/// The answer of a persister write as the hub gives it: a failed write is
/// `internal`, a persister that is gone means the hub is shutting down.
pub(super) fn persisted<T, E: std::fmt::Display>(
    res: Result<Result<T, E>, actix::MailboxError>,
) -> Result<T, Refusal> {
    match res {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Refusal::new(ErrorCode::Internal, e.to_string())),
        Err(e) => Err(Refusal::new(ErrorCode::ShuttingDown, e.to_string())),
    }
}
