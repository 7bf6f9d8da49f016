//! Evaluators: connections that receive every new version like trainers
//! and report how it scores on their held-out data. They are kept apart
//! from trainers (`sessions`): they send no updates, do not count as a
//! model's connected trainers and are not in the trainers' list. Their
//! reports become the version's hub evaluation when the hub has none of
//! its own for it (see `db::record_evaluator_report`).

use std::sync::Arc;

use actix::prelude::*;

use crate::hub::encoded::Encoded;
use bytes::Bytes;

use super::core::{persisted, EvaluatorEntry, Hub, ToSession};
use super::join::Welcome;
use crate::hub::evaluator_tokens::EvaluatorFigures;
use crate::hub::metrics::HubEvent;
use crate::hub::outbox::Outbox;
use crate::hub::persister;
use crate::protocol::EvaluatorReport;
use crate::protocol::{ErrorCode, Refusal};

impl Hub {
    /// Queues a new version for the model's evaluators (after the
    /// trainers: see `broadcast`).
    pub(super) fn broadcast_to_evaluators(&self, model: &str, json: &Bytes, encoded: &Encoded) {
        for ((m, _), e) in &self.evaluators {
            if m == model {
                e.outbox.model(json.clone(), encoded.clone());
            }
        }
    }

    /// The hub is stopping: evaluators get the `goodbye` trainers get.
    pub(super) fn goodbye_evaluators(&self) {
        for e in self.evaluators.values() {
            e.addr.do_send(ToSession::Goodbye);
        }
    }

    /// Closes the connections of a model's evaluators (the model is gone).
    pub(super) fn close_evaluators(&mut self, model: &str, code: ErrorCode, message: &str) {
        let keys: Vec<_> = self
            .evaluators
            .keys()
            .filter(|(m, _)| m == model)
            .cloned()
            .collect();
        for k in keys {
            if let Some(e) = self.evaluators.remove(&k) {
                e.addr.do_send(ToSession::Close {
                    code,
                    message: message.to_string(),
                });
            }
        }
    }
}

/// First step of an evaluator's hello: the stored hash of its token (the
/// session checks the token off the actor).
#[derive(Message)]
#[rtype(result = "Result<String, Refusal>")]
pub struct EvaluatorHello {
    pub model: String,
    pub name: String,
}

impl Handler<EvaluatorHello> for Hub {
    type Result = ResponseFuture<Result<String, Refusal>>;
    fn handle(&mut self, m: EvaluatorHello, _: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Box::pin(std::future::ready(Err(Refusal::new(
                ErrorCode::ShuttingDown,
                "the hub is shutting down".into(),
            ))));
        }
        if !self.models.contains_key(&m.model) {
            return Box::pin(std::future::ready(Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!("model `{}` does not exist on this hub", m.model),
            ))));
        }
        let pool = self.pool.clone();
        Box::pin(async move {
            let (model, name) = (m.model.clone(), m.name.clone());
            let found = actix_web::rt::task::spawn_blocking(move || {
                let mut c = pool
                    .get()
                    .map_err(|e| crate::error::DbError::Pool(e.to_string()))?;
                crate::db::evaluator_token_hash(&mut c, &model, &name)
            })
            .await
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
            match found {
                Some((hash, false)) => Ok(hash),
                Some((_, true)) => Err(Refusal::new(
                    ErrorCode::Revoked,
                    format!(
                        "evaluator `{}` of model `{}` has been revoked",
                        m.name, m.model
                    ),
                )),
                None => Err(Refusal::new(
                    ErrorCode::BadToken,
                    format!(
                        "model `{}` has no evaluator `{}`: evaluator tokens are issued by an administrator (POST /v1/models/{}/evaluators); a trainer's token does not make an evaluator",
                        m.model, m.name, m.model
                    ),
                )),
            }
        })
    }
}

/// Second step: the token checked, the evaluator is connected.
#[derive(Message)]
#[rtype(result = "Result<Welcome, Refusal>")]
pub struct EvaluatorJoin {
    pub session_id: String,
    pub model: String,
    pub name: String,
    pub addr: Recipient<ToSession>,
    pub outbox: Arc<Outbox>,
}

impl Handler<EvaluatorJoin> for Hub {
    type Result = Result<Welcome, Refusal>;
    fn handle(&mut self, m: EvaluatorJoin, _: &mut Self::Context) -> Self::Result {
        let model = self.models.get(&m.model).ok_or(Refusal::new(
            ErrorCode::UnknownModel,
            format!("model `{}` is gone", m.model),
        ))?;
        let welcome = Welcome {
            version: model.version,
            layout: model.layout.clone(),
            encoded: model.encoded.clone(),
            max_staleness: model.settings.max_staleness,
            registered: false,
            normalisation: model.norm.wire(),
        };
        let entry = EvaluatorEntry {
            session_id: m.session_id,
            addr: m.addr,
            outbox: m.outbox,
        };
        if let Some(old) = self
            .evaluators
            .insert((m.model.clone(), m.name.clone()), entry)
        {
            old.addr.do_send(ToSession::Close {
                code: ErrorCode::Replaced,
                message: format!(
                    "a newer connection of evaluator `{}` replaced this one",
                    m.name
                ),
            });
        }
        log::info!(
            "evaluator {} joined model {} at version {}",
            m.name,
            m.model,
            welcome.version
        );
        Ok(welcome)
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct EvaluatorLeave {
    pub session_id: String,
    pub model: String,
    pub name: String,
    pub reason: String,
}

impl Handler<EvaluatorLeave> for Hub {
    type Result = ();
    fn handle(&mut self, m: EvaluatorLeave, _: &mut Self::Context) {
        let key = (m.model, m.name);
        if self
            .evaluators
            .get(&key)
            .is_some_and(|e| e.session_id == m.session_id)
        {
            self.evaluators.remove(&key);
            log::info!("evaluator {} of model {} left ({})", key.1, key.0, m.reason);
        }
    }
}

/// An administrator revoked an evaluator: its connection, if any, ends.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EvaluatorRevoked {
    pub model: String,
    pub name: String,
}

impl Handler<EvaluatorRevoked> for Hub {
    type Result = ();
    fn handle(&mut self, m: EvaluatorRevoked, _: &mut Self::Context) {
        if let Some(e) = self.evaluators.remove(&(m.model.clone(), m.name.clone())) {
            e.addr.do_send(ToSession::Close {
                code: ErrorCode::Revoked,
                message: format!(
                    "evaluator `{}` of model `{}` has been revoked",
                    m.name, m.model
                ),
            });
        }
        self.event(HubEvent::EvaluatorCredential {
            model: m.model,
            evaluator: m.name,
            revoked: true,
        });
    }
}

/// Names of a model's connected evaluators.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct OnlineEvaluators {
    pub model: String,
}

impl Handler<OnlineEvaluators> for Hub {
    type Result = Vec<String>;
    fn handle(&mut self, m: OnlineEvaluators, _: &mut Self::Context) -> Self::Result {
        self.evaluators
            .keys()
            .filter(|(model, _)| *model == m.model)
            .map(|(_, n)| n.clone())
            .collect()
    }
}

/// An evaluator's report: checked, stored in its version's metrics, and
/// shown as the model's current figures when it is the current version's
/// hub evaluation. Answers whether it is (`current`).
#[derive(Message)]
#[rtype(result = "Result<bool, Refusal>")]
pub struct SubmitEvaluatorReport {
    pub session_id: String,
    pub model: String,
    pub evaluator: String,
    pub report: EvaluatorReport,
}

impl Handler<SubmitEvaluatorReport> for Hub {
    type Result = ResponseActFuture<Self, Result<bool, Refusal>>;
    fn handle(&mut self, m: SubmitEvaluatorReport, _: &mut Self::Context) -> Self::Result {
        let still_here = self
            .evaluators
            .get(&(m.model.clone(), m.evaluator.clone()))
            .is_some_and(|e| e.session_id == m.session_id);
        let checked = match self.models.get(&m.model) {
            None => Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!("model `{}` is gone", m.model),
            )),
            Some(_) if !still_here => Err(Refusal::new(
                ErrorCode::Replaced,
                format!(
                    "evaluator `{}` is no longer connected on this session",
                    m.evaluator
                ),
            )),
            Some(model) => m
                .report
                .validate(model.settings.max_num_examples)
                .and_then(|()| {
                    if m.report.version > model.version {
                        Err(Refusal::new(
                            ErrorCode::BadEval,
                            format!(
                                "version {} of `{}` does not exist (current: {})",
                                m.report.version, m.model, model.version
                            ),
                        ))
                    } else {
                        Ok(())
                    }
                }),
        };
        if let Err(r) = checked {
            return Box::pin(fut::ready(Err(r)));
        }
        let figures = EvaluatorFigures::of(&m.report, &m.evaluator).to_json();
        let record = persister::RecordEvaluatorReport {
            model: m.model.clone(),
            version: m.report.version,
            evaluator: m.evaluator.clone(),
            figures: figures.clone(),
        };
        let persister = self.persister.clone();
        Box::pin(
            async move { persister.send(record).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    let shown = persisted(res)?.ok_or(Refusal::new(
                        ErrorCode::BadEval,
                        format!(
                            "version {} of `{}` is not stored (or the evaluator is gone)",
                            m.report.version, m.model
                        ),
                    ))?;
                    let r = &m.report;
                    if shown {
                        act.record_current_eval(&m.model, r.version, figures);
                    }
                    log::info!(
                        "model {}: evaluator {} scores version {}: {}{}",
                        m.model,
                        m.evaluator,
                        r.version,
                        describe(r),
                        if shown {
                            ""
                        } else {
                            " (stored; the hub's own evaluation stays the version's)"
                        }
                    );
                    act.event(HubEvent::EvaluatorReport {
                        model: m.model.clone(),
                        version: r.version,
                        evaluator: m.evaluator.clone(),
                        accuracy: r.accuracy,
                        loss: r.loss,
                        bits_per_byte: r.bits_per_byte,
                        examples: r.num_examples,
                        current: shown,
                    });
                    Ok(shown)
                }),
        )
    }
}

/// A report's figures in a log line.
fn describe(r: &EvaluatorReport) -> String {
    let mut parts = Vec::new();
    if let Some(a) = r.accuracy {
        parts.push(format!("accuracy {a:.3}"));
    }
    if let Some(l) = r.loss {
        parts.push(format!("loss {l:.4}"));
    }
    if let Some(b) = r.bits_per_byte {
        parts.push(format!("{b:.3} bits per byte"));
    }
    format!("{} on {} examples", parts.join(", "), r.num_examples)
}
