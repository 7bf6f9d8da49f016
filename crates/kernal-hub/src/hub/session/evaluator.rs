//! An evaluator's side of a connection: the hello (an admin-issued token,
//! checked like a trainer's), the versions it receives through the same
//! outbox, and its reports. An evaluator is not a trainer: `update`,
//! `stats` and `eval` are refused with `not_trainer` (an update's payload
//! frame after a refused header is dropped without a second error).

use actix::prelude::*;
use bytes::Bytes;

use super::actor::TrainerSession;
use super::hello::{token_size_error, TOKEN_CHECKS};
use super::phase::{EvaluatorReady, Phase};
use crate::hub::hub_actor::{self, ToSession};
use crate::protocol::{
    validate_name, ClientMessage, ErrorCode, EvaluatorReport, Refusal, Role, ServerMessage,
    PROTOCOL_VERSION,
};

impl TrainerSession {
    /// A hello: an evaluator's, or a trainer's (which must name its
    /// specialty: a hello without one was `bad_json` before evaluators,
    /// which have none, made the field optional).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_any_hello(
        &mut self,
        protocol: u32,
        name: String,
        specialty: String,
        token: String,
        model: String,
        role: Role,
        ctx: &mut Context<Self>,
    ) {
        match role {
            Role::Trainer if specialty.is_empty() => self.error(
                ctx,
                ErrorCode::BadJson,
                "bad `hello` message: a trainer's hello needs `specialty`".into(),
                None,
            ),
            Role::Trainer => self.on_hello(protocol, name, specialty, token, model, ctx),
            Role::Evaluator
                if !(crate::protocol::OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION)
                    .contains(&protocol) =>
            {
                self.error(
                    ctx,
                    ErrorCode::ProtocolVersion,
                    format!("this hub speaks protocol up to {PROTOCOL_VERSION}, not {protocol}"),
                    None,
                )
            }
            Role::Evaluator => self.on_evaluator_hello(name, token, model, ctx),
        }
    }

    fn on_evaluator_hello(
        &mut self,
        name: String,
        token: String,
        model: String,
        ctx: &mut Context<Self>,
    ) {
        if let Err(e) = validate_name(&name) {
            return self.error(ctx, ErrorCode::BadName, format!("evaluator {e}"), None);
        }
        if let Some(why) = token_size_error(&token) {
            return self.error(ctx, ErrorCode::BadToken, why, None);
        }
        self.phase = Phase::Verifying;
        let hub = self.hub.clone();
        let addr = ctx.address().recipient::<ToSession>();
        let join = hub_actor::EvaluatorJoin {
            session_id: self.id.clone(),
            model: model.clone(),
            name: name.clone(),
            addr,
            outbox: self.outbox.clone(),
        };
        let fut = async move {
            let hash = hub
                .send(hub_actor::EvaluatorHello {
                    model: join.model.clone(),
                    name: join.name.clone(),
                })
                .await
                .map_err(|e| Refusal::new(ErrorCode::ShuttingDown, e.to_string()))??;
            let permit = TOKEN_CHECKS
                .acquire()
                .await
                .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
            let ok = actix_web::rt::task::spawn_blocking(move || {
                crate::hub::evaluator_tokens::verify(&token, &hash)
            })
            .await
            .unwrap_or(false);
            drop(permit);
            if !ok {
                return Err(Refusal::new(
                    ErrorCode::BadToken,
                    format!(
                        "wrong token for evaluator `{}` of model `{}`",
                        join.name, join.model
                    ),
                ));
            }
            hub.send(join)
                .await
                .map_err(|e| Refusal::new(ErrorCode::ShuttingDown, e.to_string()))?
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if matches!(act.phase, Phase::Closing) {
                return;
            }
            act.handshake = None;
            match res {
                Ok(w) => {
                    let welcome = ServerMessage::Welcome {
                        protocol: PROTOCOL_VERSION,
                        session_id: act.id.clone(),
                        trainer: name.clone(),
                        specialty: String::new(),
                        model: model.clone(),
                        version: w.version,
                        registered: false,
                        tensors: w.layout.tensors.clone(),
                        max_message_bytes: act.limits.max_message_bytes,
                        heartbeat_interval_secs: act.limits.heartbeat_interval.as_secs(),
                        max_staleness: w.max_staleness,
                        normalisation: w.normalisation,
                    }
                    .to_json();
                    act.activity.authenticate();
                    act.outbox.welcome(Bytes::from(welcome), w.encoded);
                    act.phase = Phase::Evaluating(EvaluatorReady {
                        name,
                        model,
                        swallow_binary: false,
                    });
                }
                Err(Refusal { code, message }) => {
                    act.phase = Phase::AwaitingHello;
                    let code = if code.is_fatal() {
                        code
                    } else {
                        ErrorCode::BadToken
                    };
                    act.error(ctx, code, message, None);
                }
            }
        }));
    }

    /// A message of a welcomed evaluator (ping and bye are answered before).
    pub(super) fn on_evaluator_message(&mut self, msg: ClientMessage, ctx: &mut Context<Self>) {
        let Phase::Evaluating(e) = &mut self.phase else {
            return;
        };
        match msg {
            ClientMessage::EvaluatorReport(report) => {
                let (name, model) = (e.name.clone(), e.model.clone());
                self.submit_report(name, model, report, ctx);
            }
            ClientMessage::Hello { .. } => self.error(
                ctx,
                ErrorCode::AlreadyGreeted,
                "this connection has already completed its hello".into(),
                None,
            ),
            ClientMessage::Update { update_id, .. } => {
                e.swallow_binary = true;
                self.error(
                    ctx,
                    ErrorCode::NotTrainer,
                    "an evaluator sends no updates; connect as a trainer (with a trainer's name and token) to train".into(),
                    Some(update_id),
                );
            }
            ClientMessage::Stats { .. } | ClientMessage::Eval { .. } => self.error(
                ctx,
                ErrorCode::NotTrainer,
                "an evaluator sends only `evaluator_report` (and ping, bye); `stats` and `eval` are a trainer's".into(),
                None,
            ),
            ClientMessage::Ping { .. } | ClientMessage::Bye => {}
        }
    }

    /// A binary frame from an evaluator: the payload of a refused update
    /// is dropped quietly; any other is unexpected.
    pub(super) fn on_evaluator_binary(&mut self, ctx: &mut Context<Self>) {
        if let Phase::Evaluating(e) = &mut self.phase {
            if std::mem::take(&mut e.swallow_binary) {
                return;
            }
        }
        self.error(
            ctx,
            ErrorCode::UnexpectedBinary,
            "an evaluator sends no binary frames".into(),
            None,
        );
    }

    fn submit_report(
        &mut self,
        name: String,
        model: String,
        report: EvaluatorReport,
        ctx: &mut Context<Self>,
    ) {
        let version = report.version;
        let submit = hub_actor::SubmitEvaluatorReport {
            session_id: self.id.clone(),
            model: model.clone(),
            evaluator: name.clone(),
            report,
        };
        self.ask_hub(ctx, submit, move |act, current| {
            act.send(&ServerMessage::EvaluationRecorded {
                model,
                version,
                evaluator: name,
                current,
            });
            // The evaluator is done with that version: a newer one held
            // back for it goes out now.
            act.outbox.update_refused();
        });
    }

    /// A trainer's connection sent `evaluator_report`.
    pub(super) fn report_from_trainer(&mut self, ctx: &mut Context<Self>) {
        self.error(
            ctx,
            ErrorCode::NotEvaluator,
            "a trainer does not send `evaluator_report`; evaluators connect with `role: evaluator` and a token from POST /v1/models/{m}/evaluators".into(),
            None,
        )
    }

    /// Tells the hub an evaluator's connection ended.
    pub(super) fn evaluator_left(&self, reason: String) {
        if let Phase::Evaluating(e) = &self.phase {
            self.hub.do_send(hub_actor::EvaluatorLeave {
                session_id: self.id.clone(),
                model: e.model.clone(),
                name: e.name.clone(),
                reason,
            });
        }
    }
}
