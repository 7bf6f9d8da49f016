//! Making a version: when a fold is due, the fold off the actor, committing
//! it, and pushing it to every trainer.

use super::*;
use crate::aggregation::integer_rules;
use crate::hub::screen_round::{screen_round, ScreenSet};

/// What the fold task computed off the actor.
enum Computed {
    Fold(
        Box<Fold>,
        f64,
        Option<Evaluation>,
        Result<(Bytes, Option<String>), String>,
    ),
    /// Not finite: taken apart, or why it could not be (with the updates
    /// and accumulator to put back).
    Poisoned(Result<Poisoned, String>, Vec<Buffered>, Option<Accumulator>),
    /// A payload to correct could not be read back: nothing is folded.
    Unsettled(String, Vec<Buffered>, Option<Accumulator>),
}

/// How a fold ended.
enum FoldOutcome {
    Committed(Box<Fold>, Bytes, serde_json::Value, f64),
    /// Abandoned: the culprits were refused, the rest go back in the buffer.
    Poisoned(Poisoned, String),
    /// Not committed (storage); every update goes back in the buffer.
    Failed(Vec<Buffered>, Option<Accumulator>, String),
}

/// A pending update's payload, read back from the ledger or its blob file
/// (blocking: called from the fold task's thread).
pub(super) fn read_payload(
    pool: &DbPool,
    blobs: &BlobStore,
    row_id: i64,
) -> Result<Vec<u8>, String> {
    let mut conn = pool.get().map_err(|e| e.to_string())?;
    match crate::db::pending_payload(&mut conn, row_id).map_err(|e| e.to_string())? {
        Some((_, Some(file))) => blobs.get(&file).map_err(|e| e.to_string()),
        Some((Some(bytes), None)) => Ok(bytes),
        _ => Err(format!("ledger row {row_id} has no payload")),
    }
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
        // What the round is screened on (see `hub::screen_round`).
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
                let mut input = input;
                let streamed = input.acc.as_ref().map(|a| a.seconds).unwrap_or(0.0);
                let mut settled = match state::settle(&mut input, &layout, |b| {
                    read_payload(&pool, &fold_blobs, b.row_id)
                }) {
                    Ok(s) => s,
                    Err(e) => {
                        return Computed::Unsettled(
                            format!("could not settle the round: {e}"),
                            input.updates,
                            input.acc,
                        )
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
                    let left_out = screen_round(&mut input, &layout, &set, |b| {
                        read_payload(&pool, &fold_blobs, b.row_id)
                    });
                    // Settled again without them: the running sum is
                    // rebuilt and the bounds follow the members that count.
                    if left_out > 0 {
                        settled = match state::settle(&mut input, &layout, |b| {
                            read_payload(&pool, &fold_blobs, b.row_id)
                        }) {
                            Ok(s) => s,
                            Err(e) => {
                                return Computed::Unsettled(
                                    format!("could not settle the screened round: {e}"),
                                    input.updates,
                                    input.acc,
                                )
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
                integer_rules::fold_integers(
                    &layout,
                    rules,
                    &again.weights,
                    &ints,
                    &mut fold.weights,
                );
                if !fold.is_finite() {
                    let acc = fold.acc;
                    let poisoned = state::separate_poison(again, &settled, &layout, |b| {
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
                Computed::Fold(Box::new(fold), fold_secs, eval, encoded)
            })
            .await;
            let (fold, agg_secs, eval, (encoded, weights_file)) = match computed {
                Ok(Computed::Fold(fold, secs, eval, Ok(enc))) => (fold, secs, eval, enc),
                Ok(Computed::Fold(fold, _, _, Err(e))) => {
                    let fold = *fold;
                    return FoldOutcome::Failed(fold.applied, fold.acc, e);
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
                Ok(Computed::Unsettled(e, updates, acc)) => {
                    return FoldOutcome::Failed(updates, acc, e)
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
                applied_update_ids: Some(fold.labels(Vote::Counts)),
                superseded_update_ids: Some(fold.labels(Vote::Superseded))
                    .filter(|v| !v.is_empty()),
                dropped_update_ids: Some(fold.labels(Vote::Dropped)).filter(|v| !v.is_empty()),
                screened_update_ids: Some(fold.labels(Vote::Screened)).filter(|v| !v.is_empty()),
                ..Default::default()
            }
            .to_json();
            let commit = persister::CommitVersion {
                model: name.clone(),
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
                    let num_updates = fold.report.members;
                    let mean_staleness = fold.report.mean_staleness;
                    m.finish_fold(*fold, encoded.clone(), now);
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

    pub(super) fn broadcast(
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
        self.broadcast_to_evaluators(model, &json, encoded);
    }
}
