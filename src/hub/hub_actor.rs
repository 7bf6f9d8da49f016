//! The Hub actor: owns every model's state and the set of connected sessions,
//! admits trainers, accepts updates (acking only after the Persister made them
//! durable), folds buffers into new versions and broadcasts them.

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
    Poisoned, TrainerInfo, Waiting,
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

/// What the fold task computed off the actor.
enum Computed {
    Fold(
        Fold,
        f64,
        Option<Evaluation>,
        Result<(Bytes, Option<String>), String>,
    ),
    /// Not finite: taken apart, or why it could not be (with the updates
    /// and accumulator to put back).
    Poisoned(Result<Poisoned, String>, Vec<Buffered>, Option<Accumulator>),
}

/// How a fold ended.
enum FoldOutcome {
    Committed(Fold, Bytes, serde_json::Value, f64),
    /// Abandoned: the culprits were refused, the rest go back in the buffer.
    Poisoned(Poisoned, String),
    /// Not committed (storage); every update goes back in the buffer.
    Failed(Vec<Buffered>, Option<Accumulator>, String),
}

/// A pending update's payload, read back from the ledger or its blob file
/// (blocking: called from the fold task's thread).
fn read_payload(pool: &DbPool, blobs: &BlobStore, row_id: i64) -> Result<Vec<u8>, String> {
    let mut conn = pool.get().map_err(|e| e.to_string())?;
    match crate::db::pending_payload(&mut conn, row_id).map_err(|e| e.to_string())? {
        Some((_, Some(file))) => blobs.get(&file).map_err(|e| e.to_string()),
        Some((Some(bytes), None)) => Ok(bytes),
        _ => Err(format!("ledger row {row_id} has no payload")),
    }
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

    fn refuse(&mut self, rec: UpdateRecord, code: ErrorCode, message: String) {
        let live = self.live.entry(rec.trainer.clone()).or_default();
        live.refused += 1;
        live.last_refusal = Some(format!("{code}: {message}"));
        self.event(HubEvent::UpdateRefused {
            trainer: rec.trainer.clone(),
            model: rec.model.clone(),
            update_id: Some(rec.update_id.clone()).filter(|s| !s.is_empty()),
            code: code.as_str().to_string(),
            message: message.clone(),
        });
        let mut rec = rec;
        rec.payload = None;
        rec.refusal = Some((code.as_str().to_string(), message));
        self.persister.do_send(persister::RecordRefusal(rec));
    }

    /// Starts a fold of `model` if one is due and none is running.
    fn maybe_fold(&mut self, model: &str, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        let Some(m) = self.models.get_mut(model) else {
            return;
        };
        if m.retry_at.is_some_and(|t| now < t) {
            return;
        }
        let Some(input) = m.begin_fold(now) else {
            return;
        };
        let layout = m.layout.clone();
        // A model with its own evaluation set is evaluated on it after the
        // commit, not on the built-in digits.
        let test = if m.evalset.is_some() {
            None
        } else {
            self.test_data.clone()
        };
        if matches!(m.norm, NormState::Pooling { .. }) {
            self.freeze_normalisation(model, "the model's first fold");
        }
        let norm = self
            .models
            .get(model)
            .and_then(|m| m.norm.frozen().cloned());
        let persister = self.persister.clone();
        let blobs = self.blobs.clone();
        let pool = self.pool.clone();
        let keep_weights = self.cfg.hub.keep_weights_versions;
        let name = model.to_string();
        let attempted = input.version + 1;
        self.queue(1);
        let fut = async move {
            let started = Instant::now();
            let (fold_blobs, fold_model) = (blobs.clone(), name.clone());
            let computed = actix_web::rt::task::spawn_blocking(move || {
                let fold_started = Instant::now();
                let streamed = input.acc.as_ref().map(|a| a.seconds).unwrap_or(0.0);
                // Kept for taking a poisoned fold apart.
                let again = FoldInput {
                    version: input.version,
                    weights: input.weights.clone(),
                    updates: input.updates.clone(),
                    acc: None,
                    settings: input.settings.clone(),
                    server: input.server.clone(),
                };
                let fold = state::compute_fold(input);
                if !fold.is_finite() {
                    let acc = fold.acc;
                    let poisoned = state::separate_poison(again, &layout, |b| {
                        read_payload(&pool, &fold_blobs, b.row_id)
                    });
                    return Computed::Poisoned(poisoned, fold.applied, acc);
                }
                let fold_secs = streamed + fold_started.elapsed().as_secs_f64();
                let eval =
                    state::evaluate_builtin(&layout, &fold.weights, test.as_deref(), norm.as_ref());
                let mut meta = std::collections::HashMap::new();
                meta.insert("version".to_string(), fold.version.to_string());
                // A large checkpoint is written to its file here, so the one
                // SQLite writer only records its name.
                let encoded = layout
                    .encode(&fold.weights, Some(&meta))
                    .map_err(|e| e.to_string())
                    .and_then(|enc| {
                        let file = if fold_blobs.wants(enc.len()) {
                            Some(fold_blobs.put(&enc).map_err(|e| e.to_string())?)
                        } else {
                            None
                        };
                        Ok((Bytes::from(enc), file))
                    });
                Computed::Fold(fold, fold_secs, eval, encoded)
            })
            .await;
            let (fold, agg_secs, eval, (encoded, weights_file)) = match computed {
                Ok(Computed::Fold(fold, secs, eval, Ok(enc))) => (fold, secs, eval, enc),
                Ok(Computed::Fold(fold, _, _, Err(e))) => {
                    return FoldOutcome::Failed(fold.applied, fold.acc, e)
                }
                Ok(Computed::Poisoned(Ok(p), _, _)) => {
                    let ids: Vec<i64> = p.culprits.iter().map(|b| b.row_id).collect();
                    let message = format!(
                        "folding it into version {attempted} of `{fold_model}` made the weights non-finite; the fold was abandoned"
                    );
                    let refused = persister
                        .send(persister::RefusePending {
                            ids,
                            code: ErrorCode::NonFiniteResult,
                            message: message.clone(),
                        })
                        .await;
                    return match refused {
                        Ok(Ok(())) => FoldOutcome::Poisoned(p, message),
                        Ok(Err(e)) => FoldOutcome::Failed(
                            [p.culprits, p.kept].concat(),
                            p.acc,
                            format!("could not refuse a poisoned fold's updates: {e}"),
                        ),
                        Err(e) => {
                            FoldOutcome::Failed([p.culprits, p.kept].concat(), p.acc, e.to_string())
                        }
                    };
                }
                Ok(Computed::Poisoned(Err(e), updates, acc)) => {
                    return FoldOutcome::Failed(
                        updates,
                        acc,
                        format!("a fold was not finite and could not be taken apart: {e}"),
                    )
                }
                Err(e) => {
                    return FoldOutcome::Failed(Vec::new(), None, format!("fold task failed: {e}"))
                }
            };
            let version_secs = started.elapsed().as_secs_f64();
            let metrics = VersionMetrics {
                aggregation: Some(fold.report.clone()),
                aggregation_seconds: Some(agg_secs),
                version_build_seconds: Some(version_secs),
                eval: eval.as_ref().map(EvalFigures::digits),
                applied_update_ids: Some(
                    fold.applied
                        .iter()
                        .map(|b| format!("{}/{}", b.trainer, b.update_id))
                        .collect(),
                ),
                ..Default::default()
            }
            .to_json();
            let commit = persister::CommitVersion {
                model: name.clone(),
                version: fold.version,
                parent: fold.parent,
                num_updates: fold.applied.len(),
                weights: encoded.clone(),
                weights_file,
                metrics: metrics.to_string(),
                applied: fold.applied.iter().map(|b| b.row_id).collect(),
                refused: Vec::new(),
                keep_weights,
            };
            match persister.send(commit).await {
                Ok(Ok(())) => FoldOutcome::Committed(fold, encoded, metrics, agg_secs),
                Ok(Err(e)) => FoldOutcome::Failed(fold.applied, fold.acc, e.to_string()),
                Err(e) => FoldOutcome::Failed(fold.applied, fold.acc, e.to_string()),
            }
        };
        let model_name = model.to_string();
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.queue(-1);
            let now = Instant::now();
            match res {
                FoldOutcome::Committed(fold, encoded, metrics_json, agg_secs) => {
                    let Some(m) = act.models.get_mut(&model_name) else {
                        return;
                    };
                    m.retry_at = None;
                    m.failures = 0;
                    let version = fold.version;
                    let num_updates = fold.applied.len();
                    let mean_staleness = fold.report.mean_staleness;
                    m.finish_fold(fold, encoded.clone(), now);
                    m.last_metrics = Some(metrics_json.clone());
                    let acc = metrics_json["eval"]["accuracy"].as_f64();
                    let loss = metrics_json["eval"]["loss"].as_f64();
                    log::info!(
                        "model {model_name}: version {version} from {num_updates} updates{}",
                        acc.map(|a| format!(", accuracy {a:.3}"))
                            .unwrap_or_default()
                    );
                    // Trainers get the figures, not the list of folded
                    // update ids (a hundred ids to each of a thousand
                    // trainers); that list stays in the version's record.
                    let mut pushed = metrics_json;
                    if let Some(o) = pushed.as_object_mut() {
                        o.remove("applied_update_ids");
                    }
                    act.broadcast(&model_name, version, num_updates, &encoded, Some(pushed));
                    act.event(HubEvent::Version {
                        model: model_name.clone(),
                        version,
                        num_updates,
                        accuracy: acc,
                        loss,
                        aggregation_seconds: agg_secs,
                        mean_staleness,
                    });
                    act.gauges(&model_name);
                    act.evaluate_later(&model_name, version, ctx);
                    act.maybe_fold(&model_name, ctx);
                }
                FoldOutcome::Poisoned(p, message) => {
                    log::error!(
                        "model {model_name}: a fold was not finite; refused {} update(s) ({}) with {}, kept {}",
                        p.culprits.len(),
                        p.culprits
                            .iter()
                            .map(|b| format!("{}/{}", b.trainer, b.update_id))
                            .collect::<Vec<_>>()
                            .join(", "),
                        ErrorCode::NonFiniteResult,
                        p.kept.len()
                    );
                    for b in &p.culprits {
                        let live = act.live.entry(b.trainer.clone()).or_default();
                        live.refused += 1;
                        live.last_refusal = Some(format!("{}: {message}", ErrorCode::NonFiniteResult));
                    }
                    act.event(HubEvent::FoldAbandoned {
                        model: model_name.clone(),
                        refused: p
                            .culprits
                            .iter()
                            .map(|b| format!("{}/{}", b.trainer, b.update_id))
                            .collect(),
                        code: ErrorCode::NonFiniteResult.as_str().to_string(),
                        message,
                    });
                    if let Some(m) = act.models.get_mut(&model_name) {
                        m.abort_fold(p.kept, p.acc, now);
                    }
                    act.gauges(&model_name);
                    act.maybe_fold(&model_name, ctx);
                }
                FoldOutcome::Failed(updates, acc, e) => {
                    if let Some(m) = act.models.get_mut(&model_name) {
                        m.abort_fold(updates, acc, now);
                        // Back off: a failing disk is not retried ten times a second.
                        m.failures += 1;
                        let wait = Duration::from_secs(1 << m.failures.min(6)).min(Duration::from_secs(60));
                        m.retry_at = Some(now + wait);
                        log::error!(
                            "model {model_name}: could not commit a new version: {e} (attempt {}, next in {} s)",
                            m.failures,
                            wait.as_secs()
                        );
                    }
                }
            }
        }));
    }

    fn broadcast(
        &self,
        model: &str,
        version: u64,
        num_updates: usize,
        encoded: &Bytes,
        metrics_json: Option<serde_json::Value>,
    ) {
        let json = ServerMessage::Model {
            model: model.to_string(),
            version,
            num_updates,
            metrics: metrics_json,
        }
        .to_json();
        let json = Bytes::from(json);
        for s in self.sessions.values().filter(|s| s.model == model) {
            s.outbox.model(json.clone(), encoded.clone());
        }
    }
}

impl Hub {
    /// Fixes a pooling model's normalisation from the pooled statistics (no
    /// normalisation if nobody reported), stores it and tells every trainer
    /// of the model. Nothing happens to a model that is not pooling.
    fn freeze_normalisation(&mut self, model: &str, reason: &str) {
        let Some(m) = self.models.get_mut(model) else {
            return;
        };
        if !m.norm.freeze() {
            return;
        }
        m.norm_since = None;
        let wire = m.norm.wire();
        // The reports stay stored until this lands; if it is lost, the next
        // start freezes the same reports to the same statistics.
        let save = persister::SaveNormalisation {
            model: model.to_string(),
            json: m.norm.to_stored(),
        };
        let persister = self.persister.clone();
        let name = model.to_string();
        actix_web::rt::spawn(async move {
            match persister.send(save).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::error!("model {name}: could not store its normalisation: {e}"),
                Err(e) => log::error!("model {name}: could not store its normalisation: {e}"),
            }
        });
        let json = Bytes::from(
            ServerMessage::Normalisation {
                model: model.to_string(),
                normalisation: wire.clone(),
            }
            .to_json(),
        );
        for s in self.sessions.values().filter(|s| s.model == model) {
            s.outbox.text_bytes(json.clone());
        }
        let (trainers, count, features) = wire
            .as_ref()
            .map(|n| (n.trainers, n.count, n.features))
            .unwrap_or((0, 0, 0));
        log::info!(
            "model {model}: input normalisation frozen ({reason}): {features} features from {trainers} trainer(s), {count} rows{}",
            if wire.is_none() { "; nobody reported statistics, so the model has none" } else { "" }
        );
        self.event(HubEvent::NormalisationFrozen {
            model: model.to_string(),
            trainers,
            count,
            features,
            reason: reason.to_string(),
        });
    }

    /// Evaluates the model's current version on its evaluation set off the
    /// actor and off the fold, then stores the result in the version's
    /// metrics and publishes it.
    fn evaluate_later(&mut self, model: &str, version: u64, ctx: &mut Context<Self>) {
        let Some(m) = self.models.get(model) else {
            return;
        };
        let Some(set) = m.evalset.clone() else {
            return;
        };
        let layout = m.layout.clone();
        let weights = m.weights.clone();
        let norm = m.norm.frozen().cloned();
        let persister = self.persister.clone();
        let name = model.to_string();
        let fut = async move {
            let ev = actix_web::rt::task::spawn_blocking(move || {
                state::evaluate_evalset(&layout, &weights, &set, norm.as_ref())
            })
            .await
            .ok()
            .flatten()?;
            let json = serde_json::to_value(EvalFigures::evalset(&ev)).unwrap_or_default();
            let stored = persister
                .send(persister::RecordVersionEval {
                    model: name.clone(),
                    version,
                    eval: json.clone(),
                })
                .await;
            if !matches!(stored, Ok(Ok(()))) {
                log::warn!("model {name}: could not store the evaluation of version {version}");
            }
            Some((ev, json, name))
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
            let Some((ev, json, name)) = res else {
                return;
            };
            if let Some(m) = act.models.get_mut(&name) {
                if m.version == version {
                    let metrics = m.last_metrics.get_or_insert_with(|| serde_json::json!({}));
                    if let Some(o) = metrics.as_object_mut() {
                        o.insert("eval".into(), json);
                    }
                }
            }
            log::info!(
                "model {name}: version {version} scores {:.3} on its evaluation set",
                ev.accuracy
            );
            act.event(HubEvent::HubEvaluation {
                model: name,
                version,
                accuracy: ev.accuracy,
                loss: ev.loss,
                examples: ev.examples,
            });
        }));
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

// ---------------------------------------------------------------- hello / join / leave

/// First step of a hello: may this name join, and how is it checked?
#[derive(Message)]
#[rtype(result = "Result<Admission, Refusal>")]
pub struct Hello {
    pub name: String,
    pub model: String,
    pub protocol: u32,
}

impl Handler<Hello> for Hub {
    type Result = Result<Admission, Refusal>;
    fn handle(&mut self, m: Hello, _: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err(Refusal::new(
                ErrorCode::ShuttingDown,
                "the hub is shutting down".into(),
            ));
        }
        if !self.models.contains_key(&m.model) {
            return Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!(
                    "model `{}` does not exist on this hub (models: {})",
                    m.model,
                    self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if m.protocol < crate::protocol::PROTOCOL_VERSION
            && self
                .models
                .get(&m.model)
                .is_some_and(|x| x.norm != NormState::Off)
        {
            return Err(Refusal::new(
ErrorCode::ProtocolVersion,
                format!(
                    "model `{}` normalises its inputs, which needs protocol {} (this trainer speaks {}); upgrade the trainer",
                    m.model,
                    crate::protocol::PROTOCOL_VERSION,
                    m.protocol
                ),
            ));
        }
        state::admit(
            &self.trainers,
            &m.name,
            self.cfg.hub.open_registration,
            &self.cfg.hub.allowed_trainers,
        )
    }
}

/// What a session needs to greet its trainer.
pub struct Welcome {
    pub version: u64,
    pub layout: Arc<ModelLayout>,
    pub encoded: Bytes,
    pub max_staleness: u64,
    pub registered: bool,
    pub normalisation: Option<Normalisation>,
}

/// Second step of a hello, after the token was checked off the actor.
#[derive(Message)]
#[rtype(result = "Result<Welcome, Refusal>")]
pub struct Join {
    pub session_id: String,
    pub name: String,
    pub specialty: String,
    pub model: String,
    pub remote: Option<String>,
    /// Set when the trainer registers (trust on first use).
    pub new_hash: Option<String>,
    pub addr: Recipient<ToSession>,
    pub outbox: Arc<Outbox>,
}

impl Handler<Join> for Hub {
    type Result = ResponseActFuture<Self, Result<Welcome, Refusal>>;
    fn handle(&mut self, m: Join, _: &mut Self::Context) -> Self::Result {
        let registered = m.new_hash.is_some();
        if let Some(hash) = &m.new_hash {
            if self.trainers.contains_key(&m.name) {
                return Box::pin(fut::ready(Err(Refusal::new(
                    ErrorCode::BadToken,
                    format!(
                        "trainer `{}` was registered concurrently; connect again",
                        m.name
                    ),
                ))));
            }
            self.trainers.insert(
                m.name.clone(),
                TrainerInfo {
                    specialty: m.specialty.clone(),
                    token_hash: hash.clone(),
                    revoked: false,
                },
            );
        } else if self
            .trainers
            .get(&m.name)
            .map(|t| t.revoked)
            .unwrap_or(true)
        {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::Revoked,
                format!("trainer `{}` has been revoked", m.name),
            ))));
        }
        let persister = self.persister.clone();
        let trainer_row = m.new_hash.as_ref().map(|h| TrainerRow {
            name: m.name.clone(),
            specialty: m.specialty.clone(),
            token_hash: h.clone(),
            revoked: false,
            created_at: crate::db::now(),
            last_seen: None,
        });
        let open = persister::OpenSession {
            id: m.session_id.clone(),
            trainer: m.name.clone(),
            specialty: m.specialty.clone(),
            model: m.model.clone(),
            remote: m.remote.clone(),
        };
        let fut = async move {
            if let Some(row) = trainer_row {
                persister
                    .send(persister::UpsertTrainer(row))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            }
            persister
                .send(open)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        };
        Box::pin(fut.into_actor(self).map(move |res, act, _| {
            if let Err(e) = res {
                if registered {
                    act.trainers.remove(&m.name);
                }
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    format!("could not record the session: {e}"),
                ));
            }
            let model = act.models.get(&m.model).ok_or(Refusal::new(
                ErrorCode::UnknownModel,
                format!("model `{}` is gone", m.model),
            ))?;
            let welcome = Welcome {
                version: model.version,
                layout: model.layout.clone(),
                encoded: model.encoded.clone(),
                max_staleness: model.settings.max_staleness,
                registered,
                normalisation: model.norm.wire(),
            };
            if let Some(t) = act.trainers.get_mut(&m.name) {
                t.specialty = m.specialty.clone();
            }
            if let Some(old) = act.sessions.insert(
                m.name.clone(),
                SessionEntry {
                    id: m.session_id.clone(),
                    model: m.model.clone(),
                    specialty: m.specialty.clone(),
                    addr: m.addr,
                    outbox: m.outbox,
                    since: crate::db::now(),
                },
            ) {
                old.addr.do_send(ToSession::Close {
                    code: ErrorCode::Replaced,
                    message: format!(
                        "a newer connection of trainer `{}` replaced this one",
                        m.name
                    ),
                });
            }
            log::info!(
                "trainer {} ({}) joined model {} at version {}{}",
                m.name,
                m.specialty,
                m.model,
                welcome.version,
                if registered { " (registered)" } else { "" }
            );
            act.event(HubEvent::TrainerJoined {
                trainer: m.name.clone(),
                specialty: m.specialty.clone(),
                model: m.model.clone(),
                registered,
            });
            act.gauges(&m.model);
            Ok(welcome)
        }))
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session_id: String,
    pub name: String,
    pub reason: String,
}

impl Handler<Leave> for Hub {
    type Result = ();
    fn handle(&mut self, m: Leave, _: &mut Self::Context) {
        let current = self
            .sessions
            .get(&m.name)
            .map(|s| s.id == m.session_id)
            .unwrap_or(false);
        let model = if current {
            self.sessions.remove(&m.name).map(|s| s.model)
        } else {
            None
        };
        self.persister.do_send(persister::CloseSession {
            id: m.session_id,
            trainer: m.name.clone(),
            reason: m.reason.clone(),
        });
        if let Some(model) = model {
            log::info!("trainer {} left ({})", m.name, m.reason);
            self.event(HubEvent::TrainerLeft {
                trainer: m.name,
                model: model.clone(),
                reason: m.reason,
            });
            self.gauges(&model);
        }
    }
}

// ---------------------------------------------------------------- updates

/// A decoded, shape-checked update from a session.
#[derive(Message)]
#[rtype(result = "Result<AckInfo, Refusal>")]
pub struct SubmitUpdate {
    pub session_id: String,
    pub trainer: String,
    pub model: String,
    pub update_id: String,
    pub base_version: u64,
    pub num_examples: u64,
    pub loss: Option<f64>,
    /// L2 norm of the delta, computed by the session while validating it.
    pub norm: f64,
    /// The validated safetensors delta, kept encoded: streaming strategies
    /// fold it straight from these bytes.
    pub payload: Bytes,
    /// The blob file the session already wrote the payload to, if large.
    pub payload_file: Option<String>,
}

pub struct AckInfo {
    pub staleness: u64,
    pub duplicate: bool,
    pub status: String,
    pub base_version: u64,
}

impl Handler<SubmitUpdate> for Hub {
    type Result = ResponseActFuture<Self, Result<AckInfo, Refusal>>;
    fn handle(&mut self, u: SubmitUpdate, ctx: &mut Self::Context) -> Self::Result {
        let mut rec = UpdateRecord {
            update_id: u.update_id.clone(),
            trainer: u.trainer.clone(),
            model: u.model.clone(),
            base_version: u.base_version,
            num_examples: u.num_examples,
            staleness: 0,
            loss: u.loss,
            bytes: u.payload.len() as u64,
            refusal: None,
            payload: None,
            payload_file: None,
        };
        self.hot.bytes_in(u.payload.len() as u64);
        let current = self
            .sessions
            .get(&u.trainer)
            .map(|s| s.id == u.session_id)
            .unwrap_or(false);
        if !current || self.stopping {
            let err = if self.stopping {
                Refusal::new(ErrorCode::ShuttingDown, "the hub is shutting down; the update was not accepted, send it again after reconnecting".to_string())
            } else {
                Refusal::new(
                    ErrorCode::Replaced,
                    "this connection was replaced; the update was not accepted".to_string(),
                )
            };
            self.drop_blob(&u.payload_file);
            return Box::pin(fut::ready(Err(err)));
        }
        let Some(m) = self.models.get(&u.model) else {
            self.drop_blob(&u.payload_file);
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!("model `{}` does not exist", u.model),
            ))));
        };
        let check = m
            .check_num_examples(u.num_examples)
            .and_then(|_| m.check_norm(u.norm))
            .and_then(|_| m.check_base(u.base_version));
        let staleness = match check {
            Ok(s) => s,
            Err(Refusal { code, message }) => {
                self.drop_blob(&u.payload_file);
                self.refuse(rec, code, message.clone());
                return Box::pin(fut::ready(Err(Refusal { code, message })));
            }
        };
        rec.staleness = staleness;
        let norm = u.norm;
        rec.payload = Some(u.payload);
        rec.payload_file = u.payload_file;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.to_persist.push((rec.clone(), tx));
        self.queue(1);
        self.persist_batch(ctx);
        Box::pin(rx.into_actor(self).map(move |res, act, ctx| {
            act.queue(-1);
            let outcome = match res {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    log::error!("could not persist update: {e}");
                    return Err(Refusal::new(
                        ErrorCode::Internal,
                        format!("the update could not be stored: {e}"),
                    ));
                }
                Err(e) => {
                    return Err(Refusal::new(
                        ErrorCode::ShuttingDown,
                        format!("the hub is stopping: {e}"),
                    ))
                }
            };
            match outcome {
                InsertOutcome::Duplicate {
                    status,
                    staleness,
                    base_version,
                } => Ok(AckInfo {
                    staleness: staleness as u64,
                    duplicate: true,
                    status,
                    base_version: base_version as u64,
                }),
                InsertOutcome::Inserted { row_id } => {
                    let now = Instant::now();
                    if let Some(m) = act.models.get_mut(&rec.model) {
                        let payload = rec.payload.clone().unwrap_or_default();
                        let arrival = Arrival {
                            row_id,
                            update_id: rec.update_id.clone(),
                            trainer: rec.trainer.clone(),
                            base_version: rec.base_version,
                            num_examples: rec.num_examples,
                            staleness: None,
                            norm: Some(norm),
                        };
                        if let Err(e) = m.push_payload(arrival, &payload, now) {
                            // Validated before, so this is a hub bug; the row is
                            // durable and will be reloaded at the next start.
                            log::error!("update {} could not be buffered: {e}", rec.update_id);
                        }
                    }
                    log::debug!(
                        "update {} from {} accepted (base {}, staleness {}, {} bytes)",
                        rec.update_id,
                        rec.trainer,
                        rec.base_version,
                        rec.staleness,
                        rec.bytes
                    );
                    let live = act.live.entry(rec.trainer.clone()).or_default();
                    live.accepted += 1;
                    live.last_loss = rec.loss.or(live.last_loss);
                    live.last_update_at = Some(crate::db::now());
                    act.event(HubEvent::UpdateAccepted {
                        trainer: rec.trainer.clone(),
                        model: rec.model.clone(),
                        update_id: rec.update_id.clone(),
                        base_version: rec.base_version,
                        staleness: rec.staleness,
                        num_examples: rec.num_examples,
                        loss: rec.loss,
                        bytes: rec.bytes,
                    });
                    // Gauges follow on the next tick: counting sessions for
                    // each of ten thousand updates a second costs more than
                    // the update itself.
                    act.maybe_fold(&rec.model, ctx);
                    Ok(AckInfo {
                        staleness: rec.staleness,
                        duplicate: false,
                        status: "pending".into(),
                        base_version: rec.base_version,
                    })
                }
            }
        }))
    }
}

/// An update the session refused before it reached the hub (bad frame,
/// shape, NaN...): recorded in the ledger and the event feed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionRefusal {
    pub trainer: String,
    pub model: String,
    pub update_id: String,
    pub base_version: u64,
    pub num_examples: u64,
    pub bytes: u64,
    pub code: ErrorCode,
    pub message: String,
}

impl Handler<SessionRefusal> for Hub {
    type Result = ();
    fn handle(&mut self, r: SessionRefusal, _: &mut Self::Context) {
        let rec = UpdateRecord {
            update_id: r.update_id,
            trainer: r.trainer,
            model: r.model,
            base_version: r.base_version,
            num_examples: r.num_examples,
            staleness: 0,
            loss: None,
            bytes: r.bytes,
            refusal: None,
            payload: None,
            payload_file: None,
        };
        self.refuse(rec, r.code, r.message);
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct SubmitEval {
    pub trainer: String,
    pub specialty: String,
    pub model: String,
    pub version: u64,
    pub specialty_accuracy: Option<f64>,
    pub global_accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub num_examples: Option<u64>,
}

impl Handler<SubmitEval> for Hub {
    type Result = Result<(), Refusal>;
    fn handle(&mut self, e: SubmitEval, _: &mut Self::Context) -> Self::Result {
        let Some(m) = self.models.get(&e.model) else {
            return Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!("no model `{}`", e.model),
            ));
        };
        if e.version > m.version {
            return Err(Refusal::new(
                ErrorCode::BadEval,
                format!(
                    "version {} of `{}` does not exist yet (current: {})",
                    e.version, e.model, m.version
                ),
            ));
        }
        if let Some(n) = e.num_examples {
            if n > m.settings.max_num_examples {
                return Err(Refusal::new(
                    ErrorCode::BadEval,
                    format!(
                        "num_examples {n} is above this model's limit of {}",
                        m.settings.max_num_examples
                    ),
                ));
            }
        }
        let live = self.live.entry(e.trainer.clone()).or_default();
        live.specialty_accuracy = e.specialty_accuracy.or(live.specialty_accuracy);
        live.global_accuracy = e.global_accuracy.or(live.global_accuracy);
        self.persister.do_send(persister::InsertEval(EvalRow {
            model: e.model.clone(),
            version: e.version as i64,
            trainer: e.trainer.clone(),
            specialty: e.specialty.clone(),
            specialty_accuracy: e.specialty_accuracy,
            global_accuracy: e.global_accuracy,
            loss: e.loss,
            num_examples: e.num_examples.map(|n| n as i64),
            created_at: crate::db::now(),
        }));
        self.event(HubEvent::Evaluation {
            trainer: e.trainer,
            specialty: e.specialty,
            model: e.model,
            version: e.version,
            specialty_accuracy: e.specialty_accuracy,
            global_accuracy: e.global_accuracy,
            num_examples: e.num_examples,
        });
        Ok(())
    }
}

// ---------------------------------------------------------------- admin

/// Makes an earlier kept checkpoint the model's current weights, as a new
/// version (its parent is the version it replaces; the metrics name the
/// version it restores). The server optimizer starts over, and pending
/// updates trained from a version after the restored one are refused
/// (`rolled_back`): they were computed from the weights being discarded.
#[derive(Message)]
#[rtype(result = "Result<RolledBack, Refusal>")]
pub struct Rollback {
    pub model: String,
    pub to_version: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RolledBack {
    pub model: String,
    /// The new current version.
    pub version: u64,
    /// The version whose weights it holds.
    pub restored: u64,
    /// Pending updates refused because they were trained after `restored`.
    pub refused_updates: usize,
}

impl Handler<Rollback> for Hub {
    type Result = ResponseActFuture<Self, Result<RolledBack, Refusal>>;
    fn handle(&mut self, r: Rollback, _: &mut Self::Context) -> Self::Result {
        let refuse = |code, msg: String| -> Self::Result {
            Box::pin(fut::ready(Err(Refusal::new(code, msg))))
        };
        if self.stopping {
            return refuse(ErrorCode::ShuttingDown, "the hub is shutting down".into());
        }
        let Some(m) = self.models.get_mut(&r.model) else {
            return refuse(
                ErrorCode::UnknownModel,
                format!("no model named `{}`", r.model),
            );
        };
        if r.to_version >= m.version {
            return refuse(
                ErrorCode::Conflict,
                format!(
                    "version: {} is not older than the current version {}; roll back to an earlier one",
                    r.to_version, m.version
                ),
            );
        }
        // Like a fold: nothing else changes the model meanwhile.
        let Some(input) = m.begin_rollback() else {
            return refuse(
                ErrorCode::Conflict,
                "a new version is being made; try again in a moment".into(),
            );
        };
        let layout = m.layout.clone();
        let norm = m.norm.frozen().cloned();
        let test = if m.evalset.is_some() {
            None
        } else {
            self.test_data.clone()
        };
        let (pool, blobs, persister) = (
            self.pool.clone(),
            self.blobs.clone(),
            self.persister.clone(),
        );
        let keep_weights = self.cfg.hub.keep_weights_versions;
        let (name, to) = (r.model.clone(), r.to_version);
        let current = input.version;
        let fut = async move {
            let job = RollbackJob {
                pool,
                blobs: blobs.clone(),
                layout,
                model: name.clone(),
                to,
                version: current + 1,
                input,
                test,
                norm,
            };
            let job = actix_web::rt::task::spawn_blocking(move || build_rollback(job)).await;
            let built = match job {
                Ok(Ok(b)) => b,
                Ok(Err((e, updates))) => return Err((e, Some((updates, None)))),
                Err(e) => return Err((Refusal::new(ErrorCode::Internal, e.to_string()), None)),
            };
            let RollbackBuilt {
                weights,
                encoded,
                file,
                eval,
                kept,
                refused,
                acc,
            } = built;
            let metrics = VersionMetrics {
                rollback: Some(RollbackFigures {
                    restored_version: to,
                    replaced_version: current,
                    refused_updates: refused.len(),
                }),
                ..VersionMetrics::evaluated(eval.as_ref())
            }
            .to_json();
            let refused_ids: Vec<i64> = refused.iter().map(|b| b.row_id).collect();
            let commit = persister::CommitVersion {
                model: name.clone(),
                version: current + 1,
                parent: current,
                num_updates: 0,
                weights: encoded.clone(),
                weights_file: file,
                metrics: metrics.to_string(),
                applied: Vec::new(),
                refused: refused_ids,
                keep_weights,
            };
            let restore = (kept, acc);
            match persister.send(commit).await {
                Ok(Ok(())) => Ok((weights, encoded, metrics, restore, refused)),
                Ok(Err(e)) => Err((
                    Refusal::new(ErrorCode::Internal, e.to_string()),
                    Some(restore),
                )),
                Err(e) => Err((
                    Refusal::new(ErrorCode::ShuttingDown, e.to_string()),
                    Some(restore),
                )),
            }
        };
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            let now = Instant::now();
            let Some(m) = act.models.get_mut(&r.model) else {
                return Err(Refusal::new(ErrorCode::UnknownModel, "the model is gone".into()));
            };
            match res {
                Ok((weights, encoded, metrics, (kept, acc), refused)) => {
                    let version = current + 1;
                    m.finish_rollback(version, weights, encoded.clone(), kept, acc, now);
                    m.last_metrics = Some(metrics.clone());
                    log::warn!(
                        "model {}: rolled back to the weights of version {to} as version {version}; {} pending update(s) refused",
                        r.model,
                        refused.len()
                    );
                    for b in &refused {
                        let live = act.live.entry(b.trainer.clone()).or_default();
                        live.refused += 1;
                        live.last_refusal = Some(format!(
                            "{}: the model was rolled back to version {to}",
                            ErrorCode::RolledBack
                        ));
                    }
                    act.broadcast(&r.model, version, 0, &encoded, Some(metrics.clone()));
                    act.event(HubEvent::RolledBack {
                        model: r.model.clone(),
                        version,
                        restored_version: to,
                        refused_updates: refused.len(),
                    });
                    act.event(HubEvent::Version {
                        model: r.model.clone(),
                        version,
                        num_updates: 0,
                        accuracy: metrics["eval"]["accuracy"].as_f64(),
                        loss: metrics["eval"]["loss"].as_f64(),
                        aggregation_seconds: 0.0,
                        mean_staleness: 0.0,
                    });
                    act.gauges(&r.model);
                    act.maybe_fold(&r.model, ctx);
                    Ok(RolledBack {
                        model: r.model.clone(),
                        version,
                        restored: to,
                        refused_updates: refused.len(),
                    })
                }
                Err((e, restore)) => {
                    let (kept, acc) = restore.unwrap_or_default();
                    m.abort_fold(kept, acc, now);
                    Err(e)
                }
            }
        }))
    }
}

/// Everything a rollback reads off the actor: the store, the model's shape
/// and the version to restore, and the pending updates to sort.
struct RollbackJob {
    pool: DbPool,
    blobs: BlobStore,
    layout: Arc<ModelLayout>,
    model: String,
    /// The version whose weights come back.
    to: u64,
    /// The number of the new version holding them.
    version: u64,
    input: FoldInput,
    test: Option<Arc<Dataset>>,
    norm: Option<Normalisation>,
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

/// A rolled-back model, built off the actor.
struct RollbackBuilt {
    weights: Vec<f32>,
    encoded: Bytes,
    file: Option<String>,
    eval: Option<Evaluation>,
    kept: Vec<Buffered>,
    refused: Vec<Buffered>,
    acc: Option<Accumulator>,
}

/// Reads the restored checkpoint, splits the pending updates into those
/// trained from it or before (kept, their accumulator rebuilt from their
/// payloads) and after (refused), and encodes the new version. On error
/// the updates come back to be put in the buffer again.
fn build_rollback(job: RollbackJob) -> Result<RollbackBuilt, (Refusal, Vec<Buffered>)> {
    let RollbackJob {
        pool,
        blobs,
        layout,
        model,
        to,
        version,
        input,
        test,
        norm,
    } = job;
    let (pool, blobs, layout, model) = (&pool, &blobs, &*layout, model.as_str());
    let (test, norm) = (test.as_deref(), norm.as_ref());
    let FoldInput {
        updates, settings, ..
    } = input;
    let weights = (|| {
        let mut conn = pool
            .get()
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
        let bytes = crate::db::get_weights(&mut conn, blobs, model, to as i64)
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::NotFound,
                    format!("`{model}` has no version {to}"),
                )
            })?;
        if bytes.is_empty() {
            return Err(Refusal::new(
                ErrorCode::WeightsPruned,
                format!(
                    "the weights of version {to} of `{model}` were dropped (hub.keep_weights_versions); roll back to a kept one"
                ),
            ));
        }
        layout
            .decode(&bytes)
            .map_err(|e| Refusal::new(ErrorCode::Internal, format!("version {to}: {e}")))
    })();
    let weights = match weights {
        Ok(w) => w,
        Err(e) => return Err((e, updates)),
    };
    let (kept, refused): (Vec<Buffered>, Vec<Buffered>) =
        updates.into_iter().partition(|b| b.base_version <= to);
    let mut acc: Option<Accumulator> = None;
    for b in kept.iter().filter(|b| b.delta.is_none()) {
        let streamed = read_payload(pool, blobs, b.row_id).and_then(|p| {
            let a = acc.get_or_insert_with(|| Accumulator {
                sum: vec![0.0; layout.num_params()],
                weight: 0.0,
                seconds: 0.0,
            });
            state::stream_into(a, layout, &settings, b, &p).map_err(|e| e.to_string())
        });
        if let Err(e) = streamed {
            return Err((
                Refusal::new(ErrorCode::Internal, e),
                [kept, refused].concat(),
            ));
        }
    }
    let eval = state::evaluate_builtin(layout, &weights, test, norm);
    let mut meta = std::collections::HashMap::new();
    meta.insert("version".to_string(), version.to_string());
    let stored = layout
        .encode(&weights, Some(&meta))
        .map_err(|e| e.to_string())
        .and_then(|enc| {
            let file = if blobs.wants(enc.len()) {
                Some(blobs.put(&enc).map_err(|e| e.to_string())?)
            } else {
                None
            };
            Ok((enc, file))
        });
    match stored {
        Ok((enc, file)) => Ok(RollbackBuilt {
            weights,
            encoded: Bytes::from(enc),
            file,
            eval,
            kept,
            refused,
            acc,
        }),
        Err(e) => Err((
            Refusal::new(ErrorCode::Internal, e),
            [kept, refused].concat(),
        )),
    }
}

/// Lets a revoked trainer name join again (with the token it registered).
/// Revokes a trainer (closing its connection) or reinstates it.
#[derive(Message)]
#[rtype(result = "Result<bool, Refusal>")]
pub struct SetRevocation {
    pub name: String,
    pub revoked: bool,
}

impl Handler<SetRevocation> for Hub {
    type Result = ResponseActFuture<Self, Result<bool, Refusal>>;
    fn handle(&mut self, m: SetRevocation, _: &mut Self::Context) -> Self::Result {
        let Some(t) = self.trainers.get_mut(&m.name) else {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::UnknownTrainer,
                format!("no trainer named `{}`", m.name),
            ))));
        };
        t.revoked = m.revoked;
        if m.revoked {
            if let Some(s) = self.sessions.get(&m.name) {
                s.addr.do_send(ToSession::Close {
                    code: ErrorCode::Revoked,
                    message: "an administrator revoked this trainer".into(),
                });
            }
        }
        let persister = self.persister.clone();
        let SetRevocation { name, revoked } = m;
        Box::pin(
            async move {
                persister
                    .send(persister::SetRevoked { name, revoked })
                    .await
            }
            .into_actor(self)
            .map(|res, _, _| persisted(res)),
        )
    }
}

/// A model created through the admin API.
#[derive(Message)]
#[rtype(result = "Result<u64, Refusal>")]
pub struct CreateModel {
    pub name: String,
    pub architecture: String,
    pub layout: ModelLayout,
    pub weights: Vec<f32>,
    pub overrides: crate::aggregation::AggregationOverrides,
    pub normalisation: NormState,
}

impl Handler<CreateModel> for Hub {
    type Result = ResponseActFuture<Self, Result<u64, Refusal>>;
    fn handle(&mut self, m: CreateModel, _: &mut Self::Context) -> Self::Result {
        if self.models.contains_key(&m.name) {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::Conflict,
                format!("model `{}` already exists", m.name),
            ))));
        }
        if self.models.len() >= self.cfg.hub.max_models {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::Conflict,
                format!(
                    "the hub already serves {} models (hub.max_models)",
                    self.models.len()
                ),
            ))));
        }
        let settings = self.cfg.aggregation_settings(&m.overrides);
        if let Err(e) = settings.validate() {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("aggregation.{e}"),
            ))));
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert("version".to_string(), "0".to_string());
        let encoded = match m.layout.encode(&m.weights, Some(&meta)) {
            Ok(b) => Bytes::from(b),
            Err(e) => return Box::pin(fut::ready(Err(Refusal::new(e.code, e.message)))),
        };
        let row = ModelRow {
            name: m.name.clone(),
            architecture: m.architecture.clone(),
            layout: serde_json::to_string(&m.layout).unwrap_or_default(),
            settings: serde_json::to_string(&m.overrides).ok(),
            created_at: crate::db::now(),
            normalisation: m.normalisation.to_stored(),
            evalset: None,
        };
        let eval = state::evaluate_builtin(
            &m.layout,
            &m.weights,
            self.test_data.as_deref(),
            m.normalisation.frozen(),
        );
        let metrics = VersionMetrics::evaluated(eval.as_ref()).to_json();
        let persister = self.persister.clone();
        let msg = persister::CreateModel {
            row,
            weights: encoded.clone(),
            metrics: metrics.to_string(),
        };
        // Reserve the name so a concurrent create gets a conflict.
        let overrides = m.overrides.clone();
        let mut state = ModelState::new(
            m.name.clone(),
            m.architecture.clone(),
            m.layout.clone(),
            settings,
            0,
            m.weights,
            encoded,
        );
        state.overrides = Some(overrides);
        state.norm = m.normalisation;
        self.models.insert(m.name.clone(), state);
        let name = m.name;
        Box::pin(
            async move { persister.send(msg).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(Ok(())) => {
                        log::info!("model {name} created");
                        act.gauges(&name);
                        Ok(0)
                    }
                    Ok(Err(e)) => {
                        act.models.remove(&name);
                        Err(Refusal::new(ErrorCode::Internal, e.to_string()))
                    }
                    Err(e) => {
                        act.models.remove(&name);
                        Err(Refusal::new(ErrorCode::ShuttingDown, e.to_string()))
                    }
                }),
        )
    }
}

#[derive(Message)]
#[rtype(result = "Result<i64, Refusal>")]
pub struct RecordHarnessRun(pub NewHarnessRun);

impl Handler<RecordHarnessRun> for Hub {
    type Result = ResponseActFuture<Self, Result<i64, Refusal>>;
    fn handle(&mut self, m: RecordHarnessRun, _: &mut Self::Context) -> Self::Result {
        let persister = self.persister.clone();
        let (scenario, passed, acc) = (m.0.scenario.clone(), m.0.passed, m.0.collective_accuracy);
        Box::pin(
            async move { persister.send(persister::InsertHarnessRun(m.0)).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    let id = persisted(res)?;
                    act.event(HubEvent::HarnessRun {
                        id,
                        scenario,
                        passed,
                        collective_accuracy: acc,
                    });
                    Ok(id)
                }),
        )
    }
}

/// Applies a re-read configuration: live keys change now.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct ApplyConfig(pub Config);

impl Handler<ApplyConfig> for Hub {
    type Result = Vec<String>;
    fn handle(&mut self, ApplyConfig(new): ApplyConfig, ctx: &mut Self::Context) -> Vec<String> {
        let mut changed = Vec::new();
        for (name, m) in self.models.iter_mut() {
            // Models created through the API keep their own overrides over
            // the new defaults; config models follow the file.
            let s: AggregationSettings = match (&m.overrides, new.models.contains_key(name)) {
                (Some(o), false) => new.aggregation_settings(o),
                _ => new.aggregation_for(name),
            };
            let keys = s.changed_keys(&m.settings);
            if !keys.is_empty() {
                changed.push(format!(
                    "models.{name} aggregation settings ({})",
                    keys.join(", ")
                ));
                m.settings = s;
            }
        }
        if new.hub.open_registration != self.cfg.hub.open_registration {
            changed.push("hub.open_registration".into());
        }
        if new.hub.allowed_trainers != self.cfg.hub.allowed_trainers {
            changed.push("hub.allowed_trainers".into());
        }
        self.cfg = new;
        let names: Vec<String> = self.models.keys().cloned().collect();
        for n in names {
            self.maybe_fold(&n, ctx);
        }
        changed
    }
}

/// Tells every session the hub is going away and stops accepting updates.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Shutdown;

impl Handler<Shutdown> for Hub {
    type Result = usize;
    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> usize {
        self.stopping = true;
        self.event(HubEvent::HubStopping);
        for s in self.sessions.values() {
            s.addr.do_send(ToSession::Goodbye);
        }
        self.sessions.len()
    }
}

// ---------------------------------------------------------------- normalisation and evaluation

/// A trainer's feature statistics for a pooling model.
#[derive(Message)]
#[rtype(result = "Result<(usize, bool), Refusal>")]
pub struct SubmitStats {
    pub trainer: String,
    pub model: String,
    pub stats: FeatureStats,
}

impl Handler<SubmitStats> for Hub {
    type Result = ResponseActFuture<Self, Result<(usize, bool), Refusal>>;
    fn handle(&mut self, m: SubmitStats, _: &mut Self::Context) -> Self::Result {
        let Some(model) = self.models.get_mut(&m.model) else {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!("model `{}` is gone", m.model),
            ))));
        };
        let max_count = model.settings.max_num_examples;
        let min_updates = model.settings.min_updates;
        let n = match &mut model.norm {
            NormState::Off => {
                return Box::pin(fut::ready(Err(Refusal::new(
                    ErrorCode::BadStats,
                    format!(
                        "model `{}` has no federated normalisation; it takes no statistics",
                        m.model
                    ),
                ))))
            }
            NormState::Frozen { normalisation } => {
                // A late trainer: the welcome already carried the frozen
                // statistics; nothing to pool.
                let n = normalisation.trainers;
                return Box::pin(fut::ready(Ok((n, true))));
            }
            NormState::Pooling { pool } => {
                if let Err(e) = m.stats.validate(pool.features, max_count) {
                    return Box::pin(fut::ready(Err(Refusal::new(ErrorCode::BadStats, e))));
                }
                pool.add(&m.trainer, m.stats)
            }
        };
        model.norm_since.get_or_insert_with(Instant::now);
        let save = persister::SaveNormalisation {
            model: m.model.clone(),
            json: model.norm.to_stored(),
        };
        let persister = self.persister.clone();
        let name = m.model;
        Box::pin(
            async move { persister.send(save).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(Ok(())) => {
                        // Anyone may register names: a pool of thousands of
                        // reports would be rewritten to the database on each
                        // one. It freezes at MAX_POOLED_REPORTS whatever
                        // min_updates says.
                        if n >= min_updates.min(crate::protocol::normalisation::MAX_POOLED_REPORTS)
                        {
                            act.freeze_normalisation(&name, "statistics from min_updates trainers");
                        }
                        let frozen = act
                            .models
                            .get(&name)
                            .is_some_and(|m| !matches!(m.norm, NormState::Pooling { .. }));
                        Ok((n, frozen))
                    }
                    Ok(Err(e)) => Err(Refusal::new(
                        ErrorCode::Internal,
                        format!("could not store the statistics: {e}; send them again"),
                    )),
                    Err(e) => Err(Refusal::new(ErrorCode::ShuttingDown, e.to_string())),
                }),
        )
    }
}

/// Admin: freeze a pooling model's normalisation now.
#[derive(Message)]
#[rtype(result = "Result<Option<Normalisation>, Refusal>")]
pub struct FreezeNormalisation {
    pub model: String,
}

impl Handler<FreezeNormalisation> for Hub {
    type Result = Result<Option<Normalisation>, Refusal>;
    fn handle(&mut self, m: FreezeNormalisation, _: &mut Self::Context) -> Self::Result {
        let model = self.models.get(&m.model).ok_or_else(|| {
            Refusal::new(
                ErrorCode::UnknownModel,
                format!("no model named `{}`", m.model.escape_default()),
            )
        })?;
        match &model.norm {
            NormState::Pooling { .. } => {}
            NormState::Off => {
                return Err(Refusal::new(
                    ErrorCode::Conflict,
                    format!("model `{}` has no federated normalisation", m.model),
                ))
            }
            NormState::Frozen { .. } => {
                return Err(Refusal::new(
                    ErrorCode::Conflict,
                    format!("model `{}`'s normalisation is already frozen", m.model),
                ))
            }
        }
        self.freeze_normalisation(&m.model, "an administrator froze it");
        Ok(self.models.get(&m.model).and_then(|x| x.norm.wire()))
    }
}

/// Admin: attach (replace) a model's evaluation set.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct SetEvalset {
    pub model: String,
    pub csv: String,
    pub data: Dataset,
}

impl Handler<SetEvalset> for Hub {
    type Result = ResponseActFuture<Self, Result<(), Refusal>>;
    fn handle(&mut self, m: SetEvalset, _: &mut Self::Context) -> Self::Result {
        let Some(model) = self.models.get(&m.model) else {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!("no model named `{}`", m.model.escape_default()),
            ))));
        };
        let Some(spec) = crate::model::MlpSpec::from_layout(&model.layout) else {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "model `{}` is not an MLP the hub can run; only its trainers can evaluate it",
                    m.model
                ),
            ))));
        };
        if spec.inputs != m.data.dim {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "the evaluation set has {} features; model `{}` has {} inputs",
                    m.data.dim, m.model, spec.inputs
                ),
            ))));
        }
        if let Some(l) = m.data.labels.iter().find(|l| **l as usize >= spec.classes) {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "the evaluation set has label {l}; model `{}` has classes 0 to {}",
                    m.model,
                    spec.classes - 1
                ),
            ))));
        }
        let persister = self.persister.clone();
        let save = persister::SaveEvalset {
            model: m.model.clone(),
            csv: Some(m.csv),
        };
        let (name, data) = (m.model, Arc::new(m.data));
        Box::pin(
            async move { persister.send(save).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    persisted(res)?;
                    let Some(model) = act.models.get_mut(&name) else {
                        return Ok(());
                    };
                    model.evalset = Some(data);
                    let v = model.version;
                    log::info!("model {name}: evaluation set attached");
                    act.evaluate_later(&name, v, ctx);
                    Ok(())
                }),
        )
    }
}

// ---------------------------------------------------------------- status

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelStatus {
    pub name: String,
    pub architecture: String,
    pub version: u64,
    pub num_params: usize,
    pub tensors: Vec<TensorSpec>,
    pub settings: AggregationSettings,
    pub waiting: Waiting,
    pub connected_trainers: usize,
    /// The newest version's metrics (evaluation, aggregation report).
    #[schema(value_type = Option<Object>)]
    pub last_metrics: Option<serde_json::Value>,
    /// The model's input normalisation (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalisation: Option<crate::protocol::Normalisation>,
    /// The attached evaluation set (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evalset: Option<EvalsetInfo>,
}

/// What `GET /v1/models/{m}` says of an attached evaluation set.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EvalsetInfo {
    pub rows: usize,
    pub features: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OnlineTrainer {
    pub name: String,
    pub specialty: String,
    pub model: String,
    pub session_id: String,
    pub connected_since: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HubStatus {
    pub models: Vec<ModelStatus>,
    pub online: Vec<OnlineTrainer>,
    pub live: HashMap<String, TrainerLive>,
    pub stopping: bool,
    pub open_registration: bool,
}

#[derive(Message)]
#[rtype(result = "HubStatus")]
pub struct GetStatus;

impl Handler<GetStatus> for Hub {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        let models = self
            .models
            .values()
            .map(|m| ModelStatus {
                name: m.name.clone(),
                architecture: m.architecture.clone(),
                version: m.version,
                num_params: m.layout.num_params(),
                tensors: m.layout.tensors.clone(),
                settings: m.settings.clone(),
                waiting: m.waiting(now),
                connected_trainers: self.sessions.values().filter(|s| s.model == m.name).count(),
                last_metrics: m.last_metrics.clone(),
                normalisation: m.norm.wire(),
                evalset: m.evalset.as_ref().map(|e| EvalsetInfo {
                    rows: e.len(),
                    features: e.dim,
                }),
            })
            .collect();
        let mut online: Vec<OnlineTrainer> = self
            .sessions
            .iter()
            .map(|(name, s)| OnlineTrainer {
                name: name.clone(),
                specialty: s.specialty.clone(),
                model: s.model.clone(),
                session_id: s.id.clone(),
                connected_since: s.since.clone(),
            })
            .collect();
        online.sort_by(|a, b| a.name.cmp(&b.name));
        MessageResult(HubStatus {
            models,
            online,
            live: self.live.clone(),
            stopping: self.stopping,
            open_registration: self.cfg.hub.open_registration,
        })
    }
}
