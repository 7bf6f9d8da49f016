//! Making a version: when a fold is due, the fold off the actor, committing
//! it, and pushing it to every trainer. Three steps, each with its own
//! result: [`compute`] (pure computation on a blocking thread: settle,
//! screen, fold, encode), [`commit`] (the persister records the version, or
//! refuses a poisoned fold's culprits) and [`Hub::apply_fold`] (the actor's
//! state, events and broadcast).

use super::*;
use crate::aggregation::integer_rules;
use crate::hub::round::{PayloadError, RoundError};
use crate::hub::screen_round::{screen_round, ScreenSet};
use crate::protocol::tensors::TensorError;

/// Why a fold made no version; every update it took goes back in the buffer.
#[derive(Debug, thiserror::Error)]
enum FoldError {
    #[error("could not settle the round: {0}")]
    Settle(RoundError),
    #[error("could not settle the screened round: {0}")]
    SettleScreened(RoundError),
    #[error("a fold was not finite and could not be taken apart: {0}")]
    Separate(RoundError),
    #[error(transparent)]
    Encode(TensorError),
    #[error(transparent)]
    Storage(DbError),
    #[error("could not refuse a poisoned fold's updates: {0}")]
    RefusePoisoned(DbError),
    #[error(transparent)]
    Persister(actix::MailboxError),
    #[error("fold task failed: {0}")]
    Task(actix_web::rt::task::JoinError),
}

/// What the fold task needs, detached from the actor.
struct FoldJob {
    input: FoldInput,
    layout: Arc<ModelLayout>,
    /// The built-in test data the version is evaluated on (None: the model
    /// has its own evaluation set, evaluated after the commit).
    test: Option<Arc<Dataset>>,
    /// What the round is screened on (see `hub::screen_round`).
    screen_data: Option<Arc<Dataset>>,
    norm: Option<Normalisation>,
    pool: DbPool,
    blobs: BlobStore,
}

/// A finite fold, encoded, ready to commit.
struct Ready {
    fold: Fold,
    /// Streaming plus fold time.
    seconds: f64,
    eval: Option<Evaluation>,
    /// The new weights, shared with `encoded`.
    weights: Arc<Vec<f32>>,
    encoded: Encoded,
    /// The checkpoint's blob file when it is too large for a row.
    weights_file: Option<String>,
}

/// Updates taken for a fold that goes back in the buffer, and why.
struct PutBack {
    updates: Vec<Buffered>,
    acc: Option<Accumulator>,
    error: FoldError,
}

impl PutBack {
    fn new(updates: Vec<Buffered>, acc: Option<Accumulator>, error: FoldError) -> Self {
        PutBack {
            updates,
            acc,
            error,
        }
    }
}

/// What the fold task computed off the actor.
enum Computed {
    Ready(Box<Ready>),
    /// Not finite: taken apart into its culprits and the rest.
    Poisoned(Poisoned),
    /// Nothing folded (a payload could not be read back, a fold that could
    /// not be taken apart, a checkpoint that could not be written).
    PutBack(PutBack),
}

/// How a fold ended.
enum FoldOutcome {
    Committed {
        fold: Box<Fold>,
        weights: Arc<Vec<f32>>,
        encoded: Encoded,
        metrics: serde_json::Value,
        seconds: f64,
    },
    /// Abandoned: the culprits were refused, the rest go back in the buffer.
    Poisoned { poisoned: Poisoned, message: String },
    /// Not committed (storage); every update goes back in the buffer.
    Failed(PutBack),
}

/// A pending update's payload, read back from the ledger or its blob file
/// (blocking: called from the fold task's thread).
fn stored_payload(pool: &DbPool, blobs: &BlobStore, row_id: i64) -> Result<Vec<u8>, PayloadError> {
    let mut conn = pool.get()?;
    match crate::db::pending_payload(&mut conn, row_id)? {
        Some((_, Some(file))) => Ok(blobs.get(&file)?),
        Some((Some(bytes), None)) => Ok(bytes),
        _ => Err(PayloadError::Missing(row_id)),
    }
}

/// [`stored_payload`] with its error as text, for the rollback.
pub(super) fn read_payload(
    pool: &DbPool,
    blobs: &BlobStore,
    row_id: i64,
) -> Result<Vec<u8>, String> {
    stored_payload(pool, blobs, row_id).map_err(|e| e.to_string())
}

/// The fold itself (blocking, off the actor): settles the round, screens
/// it, folds it, applies the integer rules, and evaluates and encodes a
/// finite result; a result that is not finite is taken apart.
fn compute(job: FoldJob) -> Computed {
    let FoldJob {
        mut input,
        layout,
        test,
        screen_data,
        norm,
        pool,
        blobs,
    } = job;
    let payload = |b: &Buffered| stored_payload(&pool, &blobs, b.row_id);
    let fold_started = Instant::now();
    let streamed = input.acc.as_ref().map(|a| a.seconds).unwrap_or(0.0);
    let mut settled = match state::settle(&mut input, &layout, payload) {
        Ok(s) => s,
        Err(e) => {
            return Computed::PutBack(PutBack::new(input.updates, input.acc, FoldError::Settle(e)))
        }
    };
    // A round put back after a failed fold is screened afresh.
    for b in input.updates.iter_mut() {
        if b.vote == Vote::Screened {
            b.vote = Vote::Counts;
        }
    }
    let set = screen_data
        .as_deref()
        .and_then(|d| ScreenSet::new(&layout, d, norm.as_ref()));
    if let Some(set) = set {
        let left_out = screen_round(&mut input, &layout, &set, payload);
        // Settled again without them: the running sum is rebuilt and the
        // bounds follow the members that count.
        if left_out > 0 {
            settled = match state::settle(&mut input, &layout, payload) {
                Ok(s) => s,
                Err(e) => {
                    let error = FoldError::SettleScreened(e);
                    return Computed::PutBack(PutBack::new(input.updates, input.acc, error));
                }
            };
        }
    }
    // Kept for taking a poisoned fold apart.
    let again = FoldInput {
        version: input.version,
        weights: input.weights.clone(),
        updates: input.updates.clone(),
        acc: None,
        settings: input.settings.clone(),
        server: input.server.clone(),
        robust: input.robust,
    };
    let mut fold = state::compute_fold(input, &settled);
    // Integer and bool tensors follow their own rules, not the strategy.
    let ints: Vec<&[f32]> = (fold.applied.iter().filter(|b| b.counts()))
        .filter_map(|b| b.ints.as_deref())
        .collect();
    let rules = &again.settings.integer_rules;
    integer_rules::fold_integers(&layout, rules, &again.weights, &ints, &mut fold.weights);
    if !fold.is_finite() {
        return match state::separate_poison(again, &settled, &layout, payload) {
            Ok(p) => Computed::Poisoned(p),
            Err(e) => {
                Computed::PutBack(PutBack::new(fold.applied, fold.acc, FoldError::Separate(e)))
            }
        };
    }
    let seconds = streamed + fold_started.elapsed().as_secs_f64();
    let eval = state::evaluate_builtin(&layout, &fold.weights, test.as_deref(), norm.as_ref());
    let mut meta = std::collections::HashMap::new();
    meta.insert("version".to_string(), fold.version.to_string());
    // A large checkpoint is written to its file here, so the one SQLite
    // writer only records its name.
    // The version's encoding shares the weights' memory (see
    // `hub::encoded`): taken out of the fold, not copied.
    let weights = Arc::new(std::mem::take(&mut fold.weights));
    let enc = match Encoded::of(&layout, &weights, Some(&meta)) {
        Ok(enc) => enc,
        Err(e) => {
            return Computed::PutBack(PutBack::new(fold.applied, fold.acc, FoldError::Encode(e)))
        }
    };
    let weights_file = if blobs.wants(enc.len()) {
        match blobs.put_parts(&enc.parts()) {
            Ok(file) => Some(file),
            Err(e) => {
                return Computed::PutBack(PutBack::new(
                    fold.applied,
                    fold.acc,
                    FoldError::Storage(e),
                ))
            }
        }
    } else {
        None
    };
    Computed::Ready(Box::new(Ready {
        fold,
        seconds,
        eval,
        weights,
        encoded: enc,
        weights_file,
    }))
}

/// What the persister is asked to record for a fold, besides the fold.
struct CommitJob {
    persister: Addr<Persister>,
    model: String,
    /// The version the fold was to make (named in a poisoned fold's refusals).
    attempted: u64,
    keep_weights: u64,
    /// When the fold was taken from the buffer.
    started: Instant,
}

/// Records what [`compute`] made: the version, or the refusal of a
/// poisoned fold's culprits.
async fn commit(computed: Computed, job: CommitJob) -> FoldOutcome {
    let CommitJob {
        persister,
        model,
        attempted,
        keep_weights,
        started,
    } = job;
    let ready = match computed {
        Computed::Ready(r) => *r,
        Computed::PutBack(p) => return FoldOutcome::Failed(p),
        Computed::Poisoned(p) => {
            let ids: Vec<i64> = p.culprits.iter().map(|b| b.row_id).collect();
            let message = format!(
                "folding it into version {attempted} of `{model}` made the weights non-finite; the fold was abandoned"
            );
            let refused = persister
                .send(persister::RefusePending {
                    ids,
                    code: ErrorCode::NonFiniteResult,
                    message: message.clone(),
                })
                .await;
            let error = match refused {
                Ok(Ok(())) => {
                    return FoldOutcome::Poisoned {
                        poisoned: p,
                        message,
                    }
                }
                Ok(Err(e)) => FoldError::RefusePoisoned(e),
                Err(e) => FoldError::Persister(e),
            };
            let updates = [p.culprits, p.kept].concat();
            return FoldOutcome::Failed(PutBack::new(updates, p.acc, error));
        }
    };
    let Ready {
        fold,
        seconds,
        eval,
        weights,
        encoded,
        weights_file,
    } = ready;
    let version_secs = started.elapsed().as_secs_f64();
    let metrics = VersionMetrics {
        aggregation: Some(fold.report.clone()),
        aggregation_seconds: Some(seconds),
        version_build_seconds: Some(version_secs),
        eval: eval.as_ref().map(EvalFigures::digits),
        applied_update_ids: Some(fold.labels(Vote::Counts)),
        superseded_update_ids: Some(fold.labels(Vote::Superseded)).filter(|v| !v.is_empty()),
        dropped_update_ids: Some(fold.labels(Vote::Dropped)).filter(|v| !v.is_empty()),
        screened_update_ids: Some(fold.labels(Vote::Screened)).filter(|v| !v.is_empty()),
        ..Default::default()
    }
    .to_json();
    let commit = persister::CommitVersion {
        model,
        version: fold.version,
        parent: fold.parent,
        num_updates: fold.report.members,
        weights: encoded.clone(),
        weights_file,
        metrics: metrics.to_string(),
        applied: fold.consumed_rows(),
        refused: Vec::new(),
        revoked: fold
            .applied
            .iter()
            .filter(|b| b.vote == Vote::Dropped)
            .map(|b| b.row_id)
            .collect(),
        keep_weights,
    };
    let error = match persister.send(commit).await {
        Ok(Ok(())) => {
            return FoldOutcome::Committed {
                fold: Box::new(fold),
                weights,
                encoded,
                metrics,
                seconds,
            }
        }
        Ok(Err(e)) => FoldError::Storage(e),
        Err(e) => FoldError::Persister(e),
    };
    FoldOutcome::Failed(PutBack::new(fold.applied, fold.acc, error))
}

impl Hub {
    /// Starts a fold of `model` if one is due and none is running.
    pub(super) fn maybe_fold(&mut self, model: &str, ctx: &mut Context<Self>) {
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
        let screen_data = if m.settings.screen_max_share > 0.0 {
            m.evalset
                .clone()
                .or_else(crate::hub::screen_round::digits_root_data)
        } else {
            None
        };
        if matches!(m.norm, NormState::Pooling { .. }) {
            self.freeze_normalisation(model, "the model's first fold");
        }
        let norm = self
            .models
            .get(model)
            .and_then(|m| m.norm.frozen().cloned());
        let commit_job = CommitJob {
            persister: self.persister.clone(),
            model: model.to_string(),
            attempted: input.version + 1,
            keep_weights: self.cfg.hub.keep_weights_versions,
            started: Instant::now(),
        };
        let job = FoldJob {
            input,
            layout,
            test,
            screen_data,
            norm,
            pool: self.pool.clone(),
            blobs: self.blobs.clone(),
        };
        self.queue(1);
        let fut = async move {
            match actix_web::rt::task::spawn_blocking(move || compute(job)).await {
                Ok(computed) => commit(computed, commit_job).await,
                Err(e) => FoldOutcome::Failed(PutBack::new(Vec::new(), None, FoldError::Task(e))),
            }
        };
        let model_name = model.to_string();
        ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| {
            act.queue(-1);
            act.apply_fold(&model_name, outcome, ctx);
        }));
    }

    /// Brings a fold's outcome into the hub: a new version pushed to every
    /// trainer, a poisoned fold's culprits refused, or the updates put back
    /// with a backoff.
    fn apply_fold(&mut self, model_name: &str, outcome: FoldOutcome, ctx: &mut Context<Self>) {
        let model_name = model_name.to_string();
        let act = self;
        let now = Instant::now();
        match outcome {
            FoldOutcome::Committed {
                fold,
                weights,
                encoded,
                metrics: metrics_json,
                seconds: agg_secs,
            } => {
                let Some(m) = act.models.get_mut(&model_name) else {
                    return;
                };
                m.retry_at = None;
                m.failures = 0;
                let version = fold.version;
                let num_updates = fold.report.members;
                let mean_staleness = fold.report.mean_staleness;
                m.finish_fold(*fold, weights, encoded.clone(), now);
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
                    o.remove("superseded_update_ids");
                    o.remove("dropped_update_ids");
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
            FoldOutcome::Poisoned {
                poisoned: p,
                message,
            } => {
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
            FoldOutcome::Failed(PutBack {
                updates,
                acc,
                error: e,
            }) => {
                if let Some(m) = act.models.get_mut(&model_name) {
                    m.abort_fold(updates, acc, now);
                    // Back off: a failing disk is not retried ten times a second.
                    m.failures += 1;
                    let wait =
                        Duration::from_secs(1 << m.failures.min(6)).min(Duration::from_secs(60));
                    m.retry_at = Some(now + wait);
                    log::error!(
                        "model {model_name}: could not commit a new version: {e} (attempt {}, next in {} s)",
                        m.failures,
                        wait.as_secs()
                    );
                }
            }
        }
    }

    pub(super) fn broadcast(
        &self,
        model: &str,
        version: u64,
        num_updates: usize,
        encoded: &Encoded,
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
        self.broadcast_to_evaluators(model, &json, encoded);
    }
}
