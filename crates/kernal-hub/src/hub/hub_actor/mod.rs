//! The Hub actor: owns every model's state and the set of connected sessions,
//! admits trainers, accepts updates (acking only after the Persister made them
//! durable), folds buffers into new versions and broadcasts them. This file
//! holds the actor and its shared plumbing; each group of messages has its
//! own file: [`join`] (hello, join, leave), [`updates`], [`fold`] (making a
//! version), [`refusals`] (refusing an update, or answering a resend of an
//! accepted one as a duplicate), [`rollback`], [`learning`] (normalisation, evaluation),
//! [`admin`] (models, revocation, config, shutdown), [`delete`] (deleting
//! a model), [`evaluators`] (the evaluator role), [`status`], [`kernel`] (scoring the built-in language model).

mod admin;
mod delete;
mod evaluators;
mod fold;
mod join;
mod kernel;
mod learning;
mod refusals;
mod rollback;
mod status;
mod updates;

pub use admin::*;
pub use delete::*;
pub use evaluators::*;
pub use join::*;
pub use learning::*;
pub use rollback::*;
pub use status::*;
pub use updates::*;

use super::version_metrics::{EvalFigures, RollbackFigures, VersionMetrics};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;

use crate::aggregation::AggregationSettings;
use crate::config::Config;
use crate::data::Dataset;
use crate::db::{BlobStore, DbPool};
use crate::db::{EvalRow, InsertOutcome, ModelRow, NewHarnessRun, TrainerRow};
use crate::error::DbError;
use crate::hub::metrics::{self, HubEvent, MetricsAggregator};
use crate::hub::outbox::Outbox;
use crate::hub::persister::{self, Persister, UpdateRecord};
use crate::hub::state::{
    self, Accumulator, Admission, Arrival, Buffered, Fold, FoldInput, ModelState, NormState,
    Poisoned, TrainerInfo, Vote, Waiting,
};
use crate::model::Evaluation;
use crate::protocol::{
    ErrorCode, FeatureStats, ModelLayout, Normalisation, ServerMessage, TensorSpec,
};

pub use crate::protocol::Refusal;

/// Messages the Hub sends to a trainer session.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum ToSession {
    /// Send this error and close the connection.
    Close { code: ErrorCode, message: String },
    /// The hub is shutting down.
    Goodbye,
}

struct SessionEntry {
    id: String,
    model: String,
    specialty: String,
    addr: Recipient<ToSession>,
    /// New versions go straight into it, not through the actor's mailbox.
    outbox: Arc<Outbox>,
    since: String,
}

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
    cfg: Config,
    models: BTreeMap<String, ModelState>,
    trainers: HashMap<String, TrainerInfo>,
    live: HashMap<String, TrainerLive>,
    sessions: HashMap<String, SessionEntry>,
    /// Connected evaluators, apart from trainers (see [`evaluators`]).
    evaluators: evaluators::Evaluators,
    persister: Addr<Persister>,
    metrics: Addr<MetricsAggregator>,
    hot: Arc<metrics::HotMetrics>,
    /// Accepted-update events not yet handed to the aggregator (see `event`).
    feed: Vec<HubEvent>,
    test_data: Option<Arc<Dataset>>,
    stopping: bool,
    persister_in_flight: i64,
    /// Updates waiting for the next group commit, with who to tell.
    to_persist: Vec<(UpdateRecord, PersistReply)>,
    persisting: bool,
    blobs: BlobStore,
    /// Read connections, for payloads and checkpoints read back off the actor.
    pool: DbPool,
    /// Kernel models whose evaluation is running (see [`kernel`]).
    kernel_evaluating: std::collections::HashSet<String>,
    /// New names registered per address (`hub.registrations_per_ip_per_hour`).
    registrations: crate::hub::registration::RegistrationLimiter,
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
const FEED_BATCH: usize = 256;

type PersistReply = tokio::sync::oneshot::Sender<Result<InsertOutcome, DbError>>;

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
    fn event(&mut self, e: HubEvent) {
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

    fn flush_feed(&mut self) {
        if !self.feed.is_empty() {
            let batch = std::mem::replace(&mut self.feed, Vec::with_capacity(FEED_BATCH));
            self.metrics.do_send(metrics::Events(batch));
        }
    }

    fn gauges(&self, model: &str) {
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
    fn persist_batch(&mut self, ctx: &mut Context<Self>) {
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
    fn drop_blob(&self, file: &Option<String>) {
        if let Some(f) = file {
            self.blobs.remove(f);
        }
    }

    fn queue(&mut self, delta: i64) {
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
fn persisted<T, E: std::fmt::Display>(
    res: Result<Result<T, E>, actix::MailboxError>,
) -> Result<T, Refusal> {
    match res {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Refusal::new(ErrorCode::Internal, e.to_string())),
        Err(e) => Err(Refusal::new(ErrorCode::ShuttingDown, e.to_string())),
    }
}
