//! TrainerSession: one actor per trainer WebSocket. Framing lives in
//! [`crate::hub::ws`]; message parsing and validation are plain functions
//! here, tested without actix.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use bytes::Bytes;

use crate::db::BlobStore;
use crate::hub::hub_actor::{self, Hub, ToSession};
use crate::hub::metrics::{self, MetricsAggregator};
use crate::hub::state::Admission;
use crate::hub::ws::{Activity, Incoming, Outbox};
use crate::protocol::{
    validate_name, ClientMessage, ErrorCode, ModelLayout, ServerMessage, PROTOCOL_VERSION,
};

/// Limits a session enforces, from the hub config.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_message_bytes: usize,
    pub max_fragments: usize,
    pub hello_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    pub model_hold: Duration,
}

pub type Refusal = (ErrorCode, String);

// ---------------------------------------------------------------- plain logic

/// A complete message.
#[derive(Debug, Clone, PartialEq)]
pub enum Whole {
    Text(Bytes),
    Binary(Bytes),
}

/// Parses a text frame into a client message with the right error code:
/// not JSON at all, JSON with an unknown `type`, or a known type with bad fields.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, Refusal> {
    // The common case in one pass; the slower path below only names the error.
    if let Ok(m) = serde_json::from_str::<ClientMessage>(text) {
        return Ok(m);
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| (ErrorCode::BadJson, format!("frame is not valid JSON: {e}")))?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_string)
    else {
        return Err((
            ErrorCode::UnknownType,
            "message has no string field `type`".into(),
        ));
    };
    const KNOWN: [&str; 5] = ["hello", "update", "eval", "ping", "bye"];
    if !KNOWN.contains(&kind.as_str()) {
        return Err((
            ErrorCode::UnknownType,
            format!(
                "unknown message type `{}` (known: {})",
                kind.escape_default(),
                KNOWN.join(", ")
            ),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| (ErrorCode::BadJson, format!("bad `{kind}` message: {e}")))
}

/// An update header waiting for its binary frame.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateHeader {
    pub update_id: String,
    pub base_version: u64,
    pub num_examples: u64,
    pub loss: Option<f64>,
}

pub fn validate_update_header(h: &UpdateHeader) -> Result<(), Refusal> {
    if h.update_id.is_empty()
        || h.update_id.len() > 128
        || h.update_id.chars().any(|c| c.is_control())
    {
        return Err((
            ErrorCode::BadUpdateId,
            "update_id must be 1 to 128 printable characters".into(),
        ));
    }
    if h.num_examples == 0 {
        return Err((
            ErrorCode::BadNumExamples,
            "num_examples is 0; an update must come from at least one example".into(),
        ));
    }
    if let Some(l) = h.loss {
        if !l.is_finite() {
            return Err((ErrorCode::BadLoss, "loss must be a finite number".into()));
        }
    }
    Ok(())
}

/// Token checks run at most this many at a time: each argon2 computation
/// holds 19 MiB, so a storm of hellos (a thousand trainers reconnecting after
/// a restart) must queue instead of allocating gigabytes at once.
static TOKEN_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Blob files up to this size are written on the session's own thread.
const INLINE_BLOB_WRITE: usize = 256 * 1024;

/// Blob files being written at once, over all sessions.
static BLOB_WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

fn hash_token(token: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_token(token: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(token.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------- the actor

enum Phase {
    AwaitingHello,
    Verifying,
    Ready(Ready),
    Closing,
}

struct Ready {
    name: String,
    specialty: String,
    model: String,
    layout: Arc<ModelLayout>,
    pending: Option<UpdateHeader>,
}

pub struct TrainerSession {
    id: String,
    remote: Option<String>,
    hub: Addr<Hub>,
    metrics: Addr<MetricsAggregator>,
    limits: SessionLimits,
    outbox: Arc<Outbox>,
    activity: Arc<Activity>,
    hot: Arc<metrics::HotMetrics>,
    blobs: BlobStore,
    phase: Phase,
    handshakes: Arc<AtomicUsize>,
    counted_handshake: bool,
}

/// One trainer's connection: where it came from, what it has to send, and
/// when it was last heard from.
pub struct Connection {
    pub remote: Option<String>,
    pub outbox: Arc<Outbox>,
    pub activity: Arc<Activity>,
    pub hot: Arc<metrics::HotMetrics>,
}

impl TrainerSession {
    pub fn new(
        conn: Connection,
        hub: Addr<Hub>,
        metrics: Addr<MetricsAggregator>,
        limits: SessionLimits,
        handshakes: Arc<AtomicUsize>,
        blobs: BlobStore,
    ) -> Self {
        let Connection {
            remote,
            outbox,
            activity,
            hot,
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
            phase: Phase::AwaitingHello,
            handshakes,
            counted_handshake: true,
        }
    }

    fn handshake_done(&mut self) {
        if self.counted_handshake {
            self.counted_handshake = false;
            self.handshakes.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn send(&self, _: &mut Context<Self>, m: &ServerMessage) {
        self.outbox.text(m.to_json());
    }

    fn error(
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
        self.send(
            ctx,
            &ServerMessage::Error {
                code,
                message: message.clone(),
                update_id,
                fatal,
            },
        );
        if fatal {
            self.close(ctx, code, &message);
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: ErrorCode, message: &str) {
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

    fn leave(&mut self, reason: String) {
        if let Phase::Ready(r) = &self.phase {
            self.hub.do_send(hub_actor::Leave {
                session_id: self.id.clone(),
                name: r.name.clone(),
                reason,
            });
        }
    }

    fn on_whole(&mut self, w: Whole, ctx: &mut Context<Self>) {
        match w {
            Whole::Text(b) => match std::str::from_utf8(&b) {
                Ok(s) => {
                    let s = s.to_string();
                    self.on_text(&s, ctx)
                }
                Err(_) => self.error(
                    ctx,
                    ErrorCode::BadJson,
                    "text frame is not UTF-8".into(),
                    None,
                ),
            },
            Whole::Binary(b) => self.on_binary(b, ctx),
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err((code, message)) => return self.error(ctx, code, message, None),
        };
        match (&mut self.phase, msg) {
            (Phase::Closing, _) => {}
            (_, ClientMessage::Ping { nonce }) => self.send(ctx, &ServerMessage::Pong { nonce }),
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
                },
            ) => self.on_hello(protocol, name, specialty, token, model, ctx),
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
            (Phase::Ready(_), ClientMessage::Hello { .. }) => self.error(
                ctx,
                ErrorCode::AlreadyGreeted,
                "this connection has already completed its hello".into(),
                None,
            ),
            (
                Phase::Ready(r),
                ClientMessage::Update {
                    update_id,
                    base_version,
                    num_examples,
                    loss,
                },
            ) => {
                let h = UpdateHeader {
                    update_id,
                    base_version,
                    num_examples,
                    loss,
                };
                let previous = r.pending.take();
                if let Err((code, message)) = validate_update_header(&h) {
                    let (trainer, model) = (r.name.clone(), r.model.clone());
                    self.hub.do_send(hub_actor::SessionRefusal {
                        trainer,
                        model,
                        update_id: h.update_id.clone(),
                        base_version: h.base_version,
                        num_examples: h.num_examples,
                        bytes: 0,
                        code,
                        message: message.clone(),
                    });
                    // Its payload frame will follow; swallow it quietly.
                    if let Phase::Ready(r) = &mut self.phase {
                        r.pending = Some(UpdateHeader {
                            update_id: String::new(),
                            ..h.clone()
                        });
                    }
                    self.error(ctx, code, message, Some(h.update_id));
                    return self.outbox.update_refused();
                }
                r.pending = Some(h);
                // An empty id is the placeholder that swallows the payload of
                // a refused header; nothing to report about it.
                if let Some(p) = previous.filter(|p| !p.update_id.is_empty()) {
                    self.error(
                        ctx,
                        ErrorCode::ExpectedBinary,
                        "an `update` must be followed by its binary frame; the earlier update was dropped".into(),
                        Some(p.update_id),
                    );
                }
            }
            (
                Phase::Ready(r),
                ClientMessage::Eval {
                    version,
                    specialty_accuracy,
                    global_accuracy,
                    loss,
                    num_examples,
                },
            ) => {
                let finite = |v: Option<f64>| v.map(|x| x.is_finite()).unwrap_or(true);
                if !(finite(specialty_accuracy) && finite(global_accuracy) && finite(loss)) {
                    return self.error(
                        ctx,
                        ErrorCode::BadJson,
                        "evaluation figures must be finite numbers".into(),
                        None,
                    );
                }
                self.hub.do_send(hub_actor::SubmitEval {
                    trainer: r.name.clone(),
                    specialty: r.specialty.clone(),
                    model: r.model.clone(),
                    version,
                    specialty_accuracy,
                    global_accuracy,
                    loss,
                    num_examples,
                });
            }
        }
    }

    fn on_hello(
        &mut self,
        protocol: u32,
        name: String,
        specialty: String,
        token: String,
        model: String,
        ctx: &mut Context<Self>,
    ) {
        if protocol != PROTOCOL_VERSION {
            return self.error(
                ctx,
                ErrorCode::ProtocolVersion,
                format!("this hub speaks protocol {PROTOCOL_VERSION}, not {protocol}"),
                None,
            );
        }
        if let Err(e) = validate_name(&name) {
            return self.error(ctx, ErrorCode::BadName, format!("trainer {e}"), None);
        }
        if let Err(e) = validate_name(&specialty) {
            return self.error(ctx, ErrorCode::BadName, format!("specialty {e}"), None);
        }
        if token.is_empty() || token.len() > 1024 {
            return self.error(
                ctx,
                ErrorCode::BadToken,
                "token must be 1 to 1024 characters".into(),
                None,
            );
        }
        self.phase = Phase::Verifying;
        let hub = self.hub.clone();
        let addr = ctx.address().recipient::<ToSession>();
        let outbox = self.outbox.clone();
        let (sid, remote) = (self.id.clone(), self.remote.clone());
        let (n2, s2, m2) = (name.clone(), specialty.clone(), model.clone());
        let fut = async move {
            let admission = hub
                .send(hub_actor::Hello {
                    name: n2.clone(),
                    model: m2.clone(),
                })
                .await
                .map_err(|e| (ErrorCode::ShuttingDown, e.to_string()))??;
            let _permit = TOKEN_CHECKS
                .acquire()
                .await
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            let new_hash = match admission {
                Admission::Verify { token_hash } => {
                    let ok = actix_web::rt::task::spawn_blocking(move || {
                        verify_token(&token, &token_hash)
                    })
                    .await
                    .unwrap_or(false);
                    if !ok {
                        return Err((
                            ErrorCode::BadToken,
                            format!("wrong token for trainer `{n2}`"),
                        ));
                    }
                    None
                }
                Admission::Register => Some(
                    actix_web::rt::task::spawn_blocking(move || hash_token(&token))
                        .await
                        .map_err(|e| (ErrorCode::Internal, e.to_string()))?
                        .map_err(|e| (ErrorCode::Internal, e))?,
                ),
            };
            drop(_permit);
            hub.send(hub_actor::Join {
                session_id: sid,
                name: n2,
                specialty: s2,
                model: m2,
                remote,
                new_hash,
                addr,
                outbox,
            })
            .await
            .map_err(|e| (ErrorCode::ShuttingDown, e.to_string()))?
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if matches!(act.phase, Phase::Closing) {
                return;
            }
            match res {
                Ok(w) => {
                    act.handshake_done();
                    let welcome = ServerMessage::Welcome {
                        protocol: PROTOCOL_VERSION,
                        session_id: act.id.clone(),
                        trainer: name.clone(),
                        specialty: specialty.clone(),
                        model: model.clone(),
                        version: w.version,
                        registered: w.registered,
                        tensors: w.layout.tensors.clone(),
                        max_message_bytes: act.limits.max_message_bytes,
                        heartbeat_interval_secs: act.limits.heartbeat_interval.as_secs(),
                        max_staleness: w.max_staleness,
                    }
                    .to_json();
                    act.outbox.welcome(Bytes::from(welcome), w.encoded);
                    act.phase = Phase::Ready(Ready {
                        name,
                        specialty,
                        model,
                        layout: w.layout,
                        pending: None,
                    });
                }
                Err((code, message)) => {
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

    fn on_binary(&mut self, payload: Bytes, ctx: &mut Context<Self>) {
        let Phase::Ready(r) = &mut self.phase else {
            return self.error(
                ctx,
                ErrorCode::UnexpectedBinary,
                "binary frames are only accepted after `welcome`, following an `update`".into(),
                None,
            );
        };
        let Some(h) = r.pending.take() else {
            return self.error(
                ctx,
                ErrorCode::UnexpectedBinary,
                "a binary frame must follow an `update` message".into(),
                None,
            );
        };
        if h.update_id.is_empty() {
            // The payload of an update whose header was refused.
            return;
        }
        let (trainer, model) = (r.name.clone(), r.model.clone());
        match r.layout.validate(&payload) {
            Ok(()) => {}
            Err(e) => {
                self.hub.do_send(hub_actor::SessionRefusal {
                    trainer,
                    model,
                    update_id: h.update_id.clone(),
                    base_version: h.base_version,
                    num_examples: h.num_examples,
                    bytes: payload.len() as u64,
                    code: e.code,
                    message: e.message.clone(),
                });
                self.error(ctx, e.code, e.message, Some(h.update_id));
                return self.outbox.update_refused();
            }
        };
        let update_id = h.update_id.clone();
        let sub = hub_actor::SubmitUpdate {
            session_id: self.id.clone(),
            trainer,
            model,
            update_id: h.update_id,
            base_version: h.base_version,
            num_examples: h.num_examples,
            loss: h.loss,
            payload,
            payload_file: None,
        };
        let (hub, blobs) = (self.hub.clone(), self.blobs.clone());
        self.outbox.update_started();
        let received = Instant::now();
        let fut = async move {
            let mut sub = sub;
            // A large payload goes to its file here, on a blocking thread of
            // its own, so writing many at once proceeds in parallel and the
            // one SQLite writer only records the name.
            if blobs.wants(sub.payload.len()) {
                let (b, p) = (blobs.clone(), sub.payload.clone());
                let written = if p.len() <= INLINE_BLOB_WRITE {
                    // A page-cache write this small costs less than handing
                    // it to another thread and back.
                    b.put(&p).map_err(|e| e.to_string())
                } else {
                    // A few at a time: hundreds of threads writing into one
                    // directory at once spend their time on its lock.
                    let _writing = BLOB_WRITES.acquire().await;
                    actix_web::rt::task::spawn_blocking(move || b.put(&p))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                };
                match written {
                    Ok(name) => sub.payload_file = Some(name),
                    Err(e) => {
                        log::error!("could not write an update's blob file: {e}");
                        return Ok(Err((
                            ErrorCode::Internal,
                            format!("the update could not be stored: {e}"),
                        )));
                    }
                }
            }
            hub.send(sub).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(Ok(a)) => act.send(
                    ctx,
                    &ServerMessage::Ack {
                        update_id,
                        base_version: a.base_version,
                        staleness: a.staleness,
                        duplicate: a.duplicate,
                        status: a.status,
                    },
                ),
                Ok(Err((code, message))) => {
                    // A refused update is this message's error, not the connection's.
                    let code_nonfatal = code;
                    act.send(
                        ctx,
                        &ServerMessage::Error {
                            code: code_nonfatal,
                            message,
                            update_id: Some(update_id),
                            fatal: false,
                        },
                    )
                }
                Err(e) => act.error(
                    ctx,
                    ErrorCode::ShuttingDown,
                    format!("hub unavailable: {e}"),
                    Some(update_id),
                ),
            }
            act.outbox.update_answered();
            act.hot.answered(received.elapsed());
        }));
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
            if matches!(act.phase, Phase::AwaitingHello | Phase::Verifying) {
                let secs = act.limits.hello_timeout.as_secs();
                act.error(
                    ctx,
                    ErrorCode::HelloTimeout,
                    format!("no valid `hello` within {secs} s"),
                    None,
                );
            }
        });
        ctx.run_interval(self.limits.heartbeat_interval, |act, ctx| {
            if act.activity.silent_for() > act.limits.client_timeout {
                log::info!("session {}: no sign of life, dropping it", act.id);
                act.leave("timeout".into());
                act.phase = Phase::Closing;
                ctx.stop();
                return;
            }
            act.outbox.ping();
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        // Always tell the Hub, however the connection ended, so no session leaks.
        self.leave("disconnected".into());
        self.phase = Phase::Closing;
        self.handshake_done();
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
                self.send(ctx, &ServerMessage::error(code, message.clone()));
                self.close(ctx, code, &message);
            }
            ToSession::Goodbye => {
                self.send(
                    ctx,
                    &ServerMessage::Goodbye {
                        reason: "the hub is shutting down; reconnect later".into(),
                    },
                );
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
            Incoming::Text(b) => self.on_whole(Whole::Text(b), ctx),
            Incoming::Binary(b) => self.on_whole(Whole::Binary(b), ctx),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_parsing_codes() {
        assert_eq!(
            parse_client_message("nope").unwrap_err().0,
            ErrorCode::BadJson
        );
        assert_eq!(
            parse_client_message(r#"{"type":"dance"}"#).unwrap_err().0,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse_client_message(r#"{"type":"update"}"#).unwrap_err().0,
            ErrorCode::BadJson
        );
        assert!(matches!(
            parse_client_message(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { nonce: None })
        ));
    }

    #[test]
    fn update_header_checks() {
        let ok = UpdateHeader {
            update_id: "a".into(),
            base_version: 0,
            num_examples: 1,
            loss: Some(0.1),
        };
        assert!(validate_update_header(&ok).is_ok());
        let mut h = ok.clone();
        h.num_examples = 0;
        assert_eq!(
            validate_update_header(&h).unwrap_err().0,
            ErrorCode::BadNumExamples
        );
        let mut h = ok.clone();
        h.update_id = String::new();
        assert_eq!(
            validate_update_header(&h).unwrap_err().0,
            ErrorCode::BadUpdateId
        );
        let mut h = ok;
        h.loss = Some(f64::NAN);
        assert_eq!(
            validate_update_header(&h).unwrap_err().0,
            ErrorCode::BadLoss
        );
    }

    #[test]
    fn token_hashing() {
        let h = hash_token("s3cret").unwrap();
        assert!(!h.contains("s3cret"));
        assert!(verify_token("s3cret", &h));
        assert!(!verify_token("other", &h));
    }
}
