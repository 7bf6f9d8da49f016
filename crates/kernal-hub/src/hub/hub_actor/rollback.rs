//! Rolling a model back to a kept checkpoint, as a new version.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use crate::hub::encoded::Encoded;

use super::core::Hub;
use super::fold::read_payload;
use super::rollback_message::{Rollback, RolledBack};
use crate::data::Dataset;
use crate::db::{BlobStore, DbPool};
use crate::hub::metrics::HubEvent;
use crate::hub::persister;
use crate::hub::state::{self, Accumulator, Buffered, FoldInput, Vote};
use crate::hub::version_metrics::{RollbackFigures, VersionMetrics};
use crate::model::Evaluation;
use crate::protocol::{ErrorCode, ModelLayout, Normalisation, Refusal};

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
                revoked: Vec::new(),
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

/// A rolled-back model, built off the actor.
struct RollbackBuilt {
    weights: Arc<Vec<f32>>,
    encoded: Encoded,
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
    let FoldInput { updates, .. } = input;
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
    // Dropped updates (revoked trainers) were refused already.
    let (mut kept, refused): (Vec<Buffered>, Vec<Buffered>) = updates
        .into_iter()
        .partition(|b| b.base_version <= to || b.vote == Vote::Dropped);
    let mut acc: Option<Accumulator> = None;
    for b in kept
        .iter_mut()
        .filter(|b| b.delta.is_none() && b.coef.0 != 0.0)
    {
        let coef = b.coef;
        let streamed = read_payload(pool, blobs, b.row_id).and_then(|p| {
            let a = acc.get_or_insert_with(|| Accumulator::new(layout.num_params()));
            state::stream_into(a, layout, b, coef, &p).map_err(|e| e.to_string())
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
    let weights = Arc::new(weights);
    let stored = Encoded::of(layout, &weights, Some(&meta))
        .map_err(|e| e.to_string())
        .and_then(|enc| {
            let file = if blobs.wants(enc.len()) {
                Some(blobs.put_parts(&enc.parts()).map_err(|e| e.to_string())?)
            } else {
                None
            };
            Ok((enc, file))
        });
    match stored {
        Ok((enc, file)) => Ok(RollbackBuilt {
            weights,
            encoded: enc,
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
