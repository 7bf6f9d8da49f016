//! Updates and evaluations from sessions, and refusals the sessions made.

use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::core::Hub;
use crate::db::{EvalRow, InsertOutcome};
use crate::hub::metrics::HubEvent;
use crate::hub::persister::{self, UpdateRecord};
use crate::hub::state::Arrival;
use crate::protocol::{ErrorCode, Refusal};

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
                // A stale base or a changed limit may be a resend of an
                // update accepted before: `refuse` answers that duplicate.
                return self.refuse(rec, code, message);
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
                        e.code(),
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
/// shape, NaN...): recorded in the ledger and the event feed, and answered
/// with the error; or, when the ledger accepted its id before, answered as a
/// duplicate (an `ack`) with nothing recorded.
#[derive(Message)]
#[rtype(result = "Result<AckInfo, Refusal>")]
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
    type Result = ResponseActFuture<Self, Result<AckInfo, Refusal>>;
    fn handle(&mut self, r: SessionRefusal, _: &mut Self::Context) -> Self::Result {
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
        self.refuse(rec, r.code, r.message)
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
