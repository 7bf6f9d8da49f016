//! Federated normalisation (pooled statistics, the freeze) and evaluation
//! (trainers' reports, the hub's own on an evaluation set).

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::core::{persisted, Hub};
use crate::data::Dataset;
use crate::hub::metrics::HubEvent;
use crate::hub::persister;
use crate::hub::state::{self, NormState};
use crate::hub::version_metrics::EvalFigures;
use crate::protocol::{ErrorCode, FeatureStats, Normalisation, Refusal, ServerMessage};

impl Hub {
    /// Fixes a pooling model's normalisation from the pooled statistics (no
    /// normalisation if nobody reported), stores it and tells every trainer
    /// of the model. Nothing happens to a model that is not pooling. Reports
    /// that disagree with no majority are pooled anyway (the deadline or an
    /// administrator decided; see [`Hub::freeze_if_agreed`]).
    pub(super) fn freeze_normalisation(&mut self, model: &str, reason: &str) {
        self.freeze_pool(model, reason, true);
    }

    /// The freeze once enough trainers reported: reports that disagree with
    /// no majority (two far apart, say) wait for more reports or the pool's
    /// deadline instead.
    fn freeze_if_agreed(&mut self, model: &str, reason: &str) {
        if !self.freeze_pool(model, reason, false) {
            log::info!(
                "model {model}: the statistics reported so far disagree and no majority tells which are right; waiting for more reports (at most normalisation_wait_secs)"
            );
        }
    }

    fn freeze_pool(&mut self, model: &str, reason: &str, force: bool) -> bool {
        let Some(m) = self.models.get_mut(model) else {
            return false;
        };
        let Some(verdict) = m.norm.freeze(force) else {
            return false;
        };
        m.norm_since = None;
        if verdict.undecided {
            log::warn!(
                "model {model}: the pooled statistics disagree with no majority (the least typical report is {:.1e} times the others' spread); all were pooled. If the model does not learn, POST /v1/models/{model}/normalisation/reset",
                verdict.worst_kept_ratio
            );
        }
        for r in &verdict.rejected {
            log::warn!(
                "model {model}: statistics of trainer {} left out of the normalisation: {}",
                r.trainer,
                r.reason
            );
            if let Some(s) = self.sessions.get(&r.trainer).filter(|s| s.model == model) {
                let msg = ServerMessage::error(
                    ErrorCode::StatsRejected,
                    format!(
                        "your statistics were left out of model `{model}`'s normalisation: {}. Check the units of your columns; the model's statistics follow and your trainer should use them",
                        r.reason
                    ),
                );
                s.outbox.text_bytes(Bytes::from(msg.to_json()));
            }
        }
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
            "model {model}: input normalisation frozen ({reason}): {features} features from {trainers} trainer(s), {count} rows{}{}",
            if verdict.rejected.is_empty() { String::new() } else { format!(", {} report(s) left out", verdict.rejected.len()) },
            if wire.is_none() { "; nobody reported statistics, so the model has none" } else { "" }
        );
        self.event(HubEvent::NormalisationFrozen {
            model: model.to_string(),
            trainers,
            count,
            features,
            reason: reason.to_string(),
        });
        true
    }

    /// Evaluates the model's current version on its evaluation set off the
    /// actor and off the fold, then stores the result in the version's
    /// metrics and publishes it.
    pub(super) fn evaluate_later(&mut self, model: &str, version: u64, ctx: &mut Context<Self>) {
        let Some(m) = self.models.get(model) else {
            return;
        };
        if crate::kernel::KernelSpec::from_layout(&m.layout).is_some() {
            return self.evaluate_kernel_later(model, version, ctx);
        }
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
            act.record_current_eval(&name, version, json);
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
                            act.freeze_if_agreed(&name, "statistics from min_updates trainers");
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

/// Admin: back to pooling after a bad freeze. The current weights stay:
/// they were trained on the old scaling (see the README on what to do).
#[derive(Message)]
#[rtype(result = "Result<Option<Normalisation>, Refusal>")]
pub struct ResetNormalisation {
    pub model: String,
}

impl Handler<ResetNormalisation> for Hub {
    type Result = ResponseActFuture<Self, Result<Option<Normalisation>, Refusal>>;
    fn handle(&mut self, m: ResetNormalisation, _: &mut Self::Context) -> Self::Result {
        let Some(model) = self.models.get(&m.model) else {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!("no model named `{}`", m.model.escape_default()),
            ))));
        };
        let mut norm = model.norm.clone();
        if norm.reset().is_none() {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::Conflict,
                format!(
                    "model `{}` has no input normalisation (created without one, or nobody reported statistics before it froze); there is nothing to reset",
                    m.model
                ),
            ))));
        }
        let save = persister::SaveNormalisation {
            model: m.model.clone(),
            json: norm.to_stored(),
        };
        let persister = self.persister.clone();
        let name = m.model;
        Box::pin(
            async move { persister.send(save).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    persisted(res)?;
                    let Some(model) = act.models.get_mut(&name) else {
                        return Err(Refusal::new(
                            ErrorCode::UnknownModel,
                            format!("model `{name}` is gone"),
                        ));
                    };
                    model.norm = norm;
                    model.norm_since = None;
                    let wire = model.norm.wire();
                    let version = model.version;
                    let json = Bytes::from(
                        ServerMessage::Normalisation {
                            model: name.clone(),
                            normalisation: wire.clone(),
                        }
                        .to_json(),
                    );
                    let mut told = 0usize;
                    for s in act.sessions.values().filter(|s| s.model == name) {
                        s.outbox.text_bytes(json.clone());
                        told += 1;
                    }
                    log::warn!(
                        "model {name}: an administrator reset its input normalisation at version {version}; pooling again from fresh statistics ({told} connected trainer(s) asked for theirs). The current weights were trained on the old scaling"
                    );
                    Ok(wire)
                }),
        )
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

impl Hub {
    /// Shows a version's evaluation, scored after its commit, as the
    /// model's current figures, unless a newer version came meanwhile.
    pub(super) fn record_current_eval(
        &mut self,
        model: &str,
        version: u64,
        eval: serde_json::Value,
    ) {
        if let Some(m) = self.models.get_mut(model) {
            if m.version == version {
                let metrics = m.last_metrics.get_or_insert_with(|| serde_json::json!({}));
                if let Some(o) = metrics.as_object_mut() {
                    o.insert("eval".into(), eval);
                }
            }
        }
    }
}
