//! The session actor: its state, how it answers (errors, closing), the
//! dispatch of each text frame to the part that handles it, the heartbeat,
//! and its life as an actix actor.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;

use super::parse::{parse_client_message, UpdateHeader};
use super::phase::Phase;
use crate::db::BlobStore;
use crate::hub::hub_actor::{self, Hub, ToSession};
use crate::hub::metrics::{self, MetricsAggregator};
use crate::hub::outbox::Outbox;
use crate::hub::secrets::TokenKey;
use crate::hub::ws::{Activity, Incoming};
use crate::protocol::{ClientMessage, ErrorCode, FeatureStats, Refusal, ServerMessage};

/// Limits a session enforces, from the hub config.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_message_bytes: usize,
    pub max_prehello_bytes: usize,
    pub max_fragments: usize,
    pub max_outbound_bytes: usize,
    pub hello_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    pub model_hold: Duration,
    /// A message holding part of the in-flight budget must arrive at least
    /// this fast (bytes per second), or the connection is dropped.
    pub min_upload_bytes_per_sec: u64,
    pub inflight_share: f64,
}

pub struct TrainerSession {
    pub(super) id: String,
    pub(super) remote: Option<String>,
    pub(super) hub: Addr<Hub>,
    pub(super) metrics: Addr<MetricsAggregator>,
    pub(super) limits: SessionLimits,
    pub(super) outbox: Arc<Outbox>,
    pub(super) activity: Arc<Activity>,
    pub(super) hot: Arc<metrics::HotMetrics>,
    pub(super) blobs: BlobStore,
    pub(super) tokens: TokenKey,
    pub(super) phase: Phase,
    pub(super) handshake: Option<HandshakeSlot>,
    /// Payload bytes received at the last heartbeat, for the upload-rate floor.
    pub(super) received_at_beat: u64,
}

/// A connection's place among those waiting for their hello: counted hub-wide
/// and per address, released exactly once (welcome, refusal or end).
pub struct HandshakeSlot {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl HandshakeSlot {
    pub fn new(release: impl FnOnce() + Send + 'static) -> Self {
        HandshakeSlot {
            release: Some(Box::new(release)),
        }
    }
}

impl std::fmt::Debug for HandshakeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandshakeSlot")
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Some(f) = self.release.take() {
            f();
        }
    }
}

/// One trainer's connection: where it came from, what it has to send, and
/// when it was last heard from.
pub struct Connection {
    pub remote: Option<String>,
    pub outbox: Arc<Outbox>,
    pub activity: Arc<Activity>,
    pub hot: Arc<metrics::HotMetrics>,
    pub handshake: HandshakeSlot,
    pub blobs: BlobStore,
    /// The hub's key for trainer tokens it issued.
    pub tokens: TokenKey,
}

impl TrainerSession {
    pub fn new(
        conn: Connection,
        hub: Addr<Hub>,
        metrics: Addr<MetricsAggregator>,
        limits: SessionLimits,
    ) -> Self {
        let Connection {
            remote,
            outbox,
            activity,
            hot,
            handshake,
            blobs,
            tokens,
        } = conn;
        TrainerSession {
            id: uuid::Uuid::new_v4().to_string(),
            remote,
            hub,
            metrics,
            limits,
            outbox,
            activity,
            hot,
            blobs,
            tokens,
            phase: Phase::AwaitingHello,
            handshake: Some(handshake),
            received_at_beat: 0,
        }
    }

    pub(super) fn send(&self, m: &ServerMessage) {
        self.outbox.text(m.to_json());
    }

    /// Asks the hub and hands its answer to `answered`; a refusal becomes
    /// this connection's `error` (fatal or not by its code), and a hub that
    /// is gone a `shutting_down`.
    pub(super) fn ask_hub<M, T>(
        &mut self,
        ctx: &mut Context<Self>,
        msg: M,
        answered: impl FnOnce(&mut Self, T) + 'static,
    ) where
        M: Message<Result = Result<T, Refusal>> + Send + 'static,
        M::Result: Send,
        T: 'static,
        Hub: Handler<M>,
    {
        ctx.spawn(
            self.hub
                .send(msg)
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(Ok(t)) => answered(act, t),
                    Ok(Err(Refusal { code, message })) => act.error(ctx, code, message, None),
                    Err(e) => act.error(
                        ctx,
                        ErrorCode::ShuttingDown,
                        format!("hub unavailable: {e}"),
                        None,
                    ),
                }),
        );
    }

    pub(super) fn error(
        &mut self,
        ctx: &mut Context<Self>,
        code: ErrorCode,
        message: String,
        update_id: Option<String>,
    ) {
        let fatal = code.is_fatal();
        if fatal {
            log::info!("closing session {}: {code}: {message}", self.id);
        } else {
            log::debug!("session {}: {code}: {message}", self.id);
        }
        self.send(&ServerMessage::Error {
            code,
            message: message.clone(),
            update_id,
            fatal,
        });
        if fatal {
            self.close(ctx, code, &message);
        }
    }

    pub(super) fn close(&mut self, ctx: &mut Context<Self>, code: ErrorCode, message: &str) {
        // RFC 6455 close codes: 1009 too big, 1001 going away, 1008 policy.
        let ws_code = match code {
            ErrorCode::MessageTooLarge => 1009,
            ErrorCode::ShuttingDown => 1001,
            _ => 1008,
        };
        self.outbox.close(ws_code, &format!("{code}: {message}"));
        self.leave(code.as_str().to_string());
        self.phase = Phase::Closing;
        ctx.stop();
    }

    pub(super) fn leave(&mut self, reason: String) {
        self.evaluator_left(reason.clone());
        if let Phase::Ready(r) = &self.phase {
            self.hub.do_send(hub_actor::Leave {
                session_id: self.id.clone(),
                name: r.name.clone(),
                reason,
            });
        }
    }

    /// Ends the session without a closing handshake (the client is gone or
    /// does not read).
    pub(super) fn drop_connection(&mut self, ctx: &mut Context<Self>, reason: &str) {
        self.leave(reason.to_string());
        self.phase = Phase::Closing;
        ctx.stop();
    }

    fn on_text(&mut self, b: Bytes, ctx: &mut Context<Self>) {
        let Ok(text) = std::str::from_utf8(&b) else {
            return self.error(
                ctx,
                ErrorCode::BadJson,
                "text frame is not UTF-8".into(),
                None,
            );
        };
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err(r) => {
                if r.was_update {
                    if let Phase::Ready(ready) = &mut self.phase {
                        // Its payload frame follows: swallow it quietly.
                        ready.pending = Some(UpdateHeader::swallow());
                        let refusal = hub_actor::SessionRefusal {
                            trainer: ready.name.clone(),
                            model: ready.model.clone(),
                            update_id: r.update_id.clone().unwrap_or_default(),
                            base_version: 0,
                            num_examples: 0,
                            bytes: 0,
                            code: r.code,
                            message: r.message,
                        };
                        return self.refuse_update(ctx, refusal, r.update_id);
                    }
                }
                return self.error(ctx, r.code, r.message, r.update_id);
            }
        };
        match (&mut self.phase, msg) {
            (Phase::Closing, _) => {}
            (_, ClientMessage::Ping { nonce }) => self.send(&ServerMessage::Pong { nonce }),
            (_, ClientMessage::Bye) => {
                self.leave("bye".into());
                self.phase = Phase::Closing;
                self.outbox.close(1000, "");
                ctx.stop();
            }
            (
                Phase::AwaitingHello,
                ClientMessage::Hello {
                    protocol,
                    name,
                    specialty,
                    token,
                    model,
                    role,
                },
            ) => self.on_any_hello(protocol, name, specialty, token, model, role, ctx),
            (Phase::Evaluating(_), m) => self.on_evaluator_message(m, ctx),
            (Phase::AwaitingHello, _) => self.error(
                ctx,
                ErrorCode::HelloRequired,
                "send a `hello` message before anything else".into(),
                None,
            ),
            (Phase::Verifying, _) => self.error(
                ctx,
                ErrorCode::HelloRequired,
                "wait for `welcome` before sending other messages".into(),
                None,
            ),
            (Phase::Ready(_), ClientMessage::EvaluatorReport(_)) => self.report_from_trainer(ctx),
            (Phase::Ready(_), ClientMessage::Hello { .. }) => self.error(
                ctx,
                ErrorCode::AlreadyGreeted,
                "this connection has already completed its hello".into(),
                None,
            ),
            (
                Phase::Ready(_),
                ClientMessage::Update {
                    update_id,
                    base_version,
                    num_examples,
                    loss,
                },
            ) => self.on_update_header(
                UpdateHeader {
                    update_id,
                    base_version,
                    num_examples,
                    loss,
                },
                ctx,
            ),
            (Phase::Ready(_), ClientMessage::Stats { count, sum, sumsq }) => {
                self.on_stats(FeatureStats { count, sum, sumsq }, ctx)
            }
            (Phase::Ready(_), m @ ClientMessage::Eval { .. }) => self.on_eval(m, ctx),
        }
    }

    /// The heartbeat: pings, and drops connections that are silent, do not
    /// read, or hold part of the in-flight budget while sending too slowly.
    fn beat(&mut self, ctx: &mut Context<Self>) {
        if self.outbox.aborted() {
            log::info!(
                "session {}: {}: the client does not read what it is sent; dropped",
                self.id,
                ErrorCode::SlowConsumer
            );
            return self.drop_connection(ctx, ErrorCode::SlowConsumer.as_str());
        }
        if self.activity.silent_for() > self.limits.client_timeout {
            log::info!("session {}: no sign of life, dropping it", self.id);
            return self.drop_connection(ctx, "timeout");
        }
        let (holding, received) = self.activity.holding();
        let since = received.saturating_sub(self.received_at_beat);
        self.received_at_beat = received;
        let floor = self.limits.min_upload_bytes_per_sec as f64
            * self.limits.heartbeat_interval.as_secs_f64();
        if holding && (since as f64) < floor {
            let message = format!(
                "{since} bytes in {} s while holding part of the in-flight budget; the floor is {} bytes/s",
                self.limits.heartbeat_interval.as_secs(),
                self.limits.min_upload_bytes_per_sec
            );
            return self.error(ctx, ErrorCode::TooSlow, message, None);
        }
        self.outbox.ping();
    }
}

impl Actor for TrainerSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.metrics.do_send(metrics::WsSession {
            kind: "trainer",
            opened: true,
        });
        ctx.run_later(self.limits.hello_timeout, |act, ctx| {
            if matches!(act.phase, Phase::AwaitingHello) {
                let secs = act.limits.hello_timeout.as_secs();
                act.error(
                    ctx,
                    ErrorCode::HelloTimeout,
                    format!("no `hello` within {secs} s of connecting"),
                    None,
                );
            }
        });
        ctx.run_interval(self.limits.heartbeat_interval, |act, ctx| act.beat(ctx));
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        // Always tell the Hub, however the connection ended, so no session leaks.
        self.leave("disconnected".into());
        self.phase = Phase::Closing;
        self.handshake = None;
        self.outbox.finish();
        self.metrics.do_send(metrics::WsSession {
            kind: "trainer",
            opened: false,
        });
        Running::Stop
    }
}

impl Handler<ToSession> for TrainerSession {
    type Result = ();
    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::Close { code, message } => {
                // Leave was decided by the hub; do not report it back.
                if code == ErrorCode::Replaced || code == ErrorCode::Revoked {
                    self.phase = Phase::Closing;
                }
                self.send(&ServerMessage::error(code, message.clone()));
                self.close(ctx, code, &message);
            }
            ToSession::Goodbye => {
                self.send(&ServerMessage::Goodbye {
                    reason: "the hub is shutting down; reconnect later".into(),
                });
                self.close(ctx, ErrorCode::ShuttingDown, "hub shutting down");
            }
        }
    }
}

impl StreamHandler<Incoming> for TrainerSession {
    fn handle(&mut self, item: Incoming, ctx: &mut Self::Context) {
        self.activity.touch();
        match item {
            Incoming::Ping(p) => self.outbox.pong(p),
            Incoming::Pong => {}
            Incoming::Text(b) => self.on_text(b, ctx),
            Incoming::Binary(b) => self.on_binary(b, None, ctx),
            Incoming::Spooled(s) => self.on_binary(s.bytes, Some(s.file), ctx),
            Incoming::BinaryRefused(code, message) => self.on_binary_refused(code, message, ctx),
            Incoming::Refused(code, message) => self.error(ctx, code, message, None),
            Incoming::Close => {
                self.leave("closed by trainer".into());
                self.phase = Phase::Closing;
                self.outbox.close(1000, "");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The connection ended (or its framing broke): nothing more can arrive.
        ctx.stop();
    }
}
