// Over 600 lines: one actor and its state machine (handshake, ready, closing) with the validation it applies; about 110 lines are its unit tests.
//! TrainerSession: one actor per trainer WebSocket. Framing lives in
//! [`crate::hub::ws`]; message parsing and validation are plain functions
//! here, tested without actix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;

mod evaluator;
mod refusal;

use crate::db::BlobStore;
use crate::hub::hub_actor::{self, Hub, ToSession};
use crate::hub::metrics::{self, MetricsAggregator};
use crate::hub::outbox::Outbox;
use crate::hub::secrets::{self, TokenKey};
use crate::hub::state::Admission;
use crate::hub::ws::{Activity, Incoming};
use crate::protocol::{
    validate_name, ClientMessage, ErrorCode, ModelLayout, ServerMessage, PROTOCOL_VERSION,
};

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

pub use crate::protocol::Refusal;

// ---------------------------------------------------------------- plain logic

/// A text frame refused before it became a message.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseRefusal {
    pub code: ErrorCode,
    pub message: String,
    /// The `update_id` of a refused `update` header, recovered where the
    /// frame allows it, so the error can name the update.
    pub update_id: Option<String>,
    /// The frame was an `update` header: its binary frame is swallowed.
    pub was_update: bool,
}

impl ParseRefusal {
    fn plain(code: ErrorCode, message: String) -> Self {
        ParseRefusal {
            code,
            message,
            update_id: None,
            was_update: false,
        }
    }
}

/// What bare non-finite tokens are replaced with so the rest of the frame
/// can still be read.
const NON_FINITE_MARK: &str = "\u{0}non-finite";
/// The same marker as it is written into JSON text.
const NON_FINITE_MARK_JSON: &str = "\\u0000non-finite";

/// Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity` as bare
/// tokens, which JSON does not have. Returns the text with each such token
/// outside a string replaced by a marker string, or None if it has none.
fn mark_non_finite_tokens(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let (mut out, mut last, mut i) = (String::new(), 0, 0);
    let (mut in_string, mut escaped, mut found) = (false, false, false);
    while i < b.len() {
        let c = b[i];
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| b[i..].starts_with(t.as_bytes()));
        let ends = |n: usize| b.get(i + n).is_none_or(|c| !c.is_ascii_alphanumeric());
        match token {
            Some(t) if ends(t.len()) => {
                out.push_str(&text[last..i]);
                out.push('"');
                out.push_str(NON_FINITE_MARK_JSON);
                out.push('"');
                i += t.len();
                last = i;
                found = true;
            }
            _ => i += 1,
        }
    }
    found.then(|| {
        out.push_str(&text[last..]);
        out
    })
}

/// Parses a text frame into a client message with the right error code:
/// not JSON at all, JSON with an unknown `type`, or a known type with bad
/// fields. A refused `update` header carries its `update_id` where the frame
/// has one, and says it was an update (its payload frame is swallowed).
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseRefusal> {
    // The common case in one pass; the slower path below only names the error.
    if let Ok(m) = serde_json::from_str::<ClientMessage>(text) {
        return Ok(m);
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => match mark_non_finite_tokens(text).and_then(|t| serde_json::from_str(&t).ok()) {
            Some(v) => v,
            None => {
                return Err(ParseRefusal::plain(
                    ErrorCode::BadJson,
                    format!("frame is not valid JSON: {e}"),
                ))
            }
        },
    };
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_string)
    else {
        return Err(ParseRefusal::plain(
            ErrorCode::UnknownType,
            "message has no string field `type`".into(),
        ));
    };
    const KNOWN: [&str; 7] = crate::protocol::CLIENT_MESSAGE_TYPES;
    if !KNOWN.contains(&kind.as_str()) {
        return Err(ParseRefusal::plain(
            ErrorCode::UnknownType,
            format!(
                "unknown message type `{}` (known: {})",
                kind.escape_default(),
                KNOWN.join(", ")
            ),
        ));
    }
    let non_finite = value.as_object().and_then(|o| {
        o.iter()
            .find(|(_, v)| v.as_str() == Some(NON_FINITE_MARK))
            .map(|(k, _)| k.clone())
    });
    let update_id = (kind == "update")
        .then(|| {
            value
                .get("update_id")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .flatten()
        .filter(|id| id != NON_FINITE_MARK);
    let refusal = |code: ErrorCode, message: String| ParseRefusal {
        code,
        message,
        update_id: update_id.clone(),
        was_update: kind == "update",
    };
    if let Some(field) = non_finite {
        let code = match (kind.as_str(), field.as_str()) {
            ("update", "loss") => ErrorCode::BadLoss,
            ("eval" | "evaluator_report", _) => ErrorCode::BadEval,
            ("stats", _) => ErrorCode::BadStats,
            _ => ErrorCode::BadJson,
        };
        return Err(refusal(
            code,
            format!("`{field}` must be a finite number, not NaN or Infinity"),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        let code = match kind.as_str() {
            "eval" | "evaluator_report" => ErrorCode::BadEval,
            // NaN or Infinity inside the arrays arrive here, marked.
            "stats" => ErrorCode::BadStats,
            _ => ErrorCode::BadJson,
        };
        refusal(code, format!("bad `{kind}` message: {e}"))
    })
}

/// Checks what an `eval` reports (the hub checks the version exists).
pub fn validate_eval(
    specialty_accuracy: Option<f64>,
    global_accuracy: Option<f64>,
    loss: Option<f64>,
) -> Result<(), Refusal> {
    for (name, v) in [
        ("specialty_accuracy", specialty_accuracy),
        ("global_accuracy", global_accuracy),
    ] {
        if let Some(x) = v {
            if !(0.0..=1.0).contains(&x) {
                return Err(Refusal::new(
                    ErrorCode::BadEval,
                    format!("{name} must be between 0 and 1, not {x}"),
                ));
            }
        }
    }
    if let Some(l) = loss {
        if !(l.is_finite() && l >= 0.0) {
            return Err(Refusal::new(
                ErrorCode::BadEval,
                format!("loss must be a finite number >= 0, not {l}"),
            ));
        }
    }
    Ok(())
}

/// An update header waiting for its binary frame.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateHeader {
    pub update_id: String,
    pub base_version: u64,
    pub num_examples: u64,
    pub loss: Option<f64>,
}

impl UpdateHeader {
    /// The placeholder that swallows the payload of a refused header.
    fn swallow() -> Self {
        UpdateHeader {
            update_id: String::new(),
            base_version: 0,
            num_examples: 0,
            loss: None,
        }
    }

    fn is_swallow(&self) -> bool {
        self.update_id.is_empty()
    }
}

pub fn validate_update_header(h: &UpdateHeader) -> Result<(), Refusal> {
    if h.update_id.is_empty()
        || h.update_id.len() > 128
        || h.update_id.chars().any(|c| c.is_control())
    {
        return Err(Refusal::new(
            ErrorCode::BadUpdateId,
            "update_id must be 1 to 128 printable characters".into(),
        ));
    }
    if h.num_examples == 0 {
        return Err(Refusal::new(
            ErrorCode::BadNumExamples,
            "num_examples is 0; an update must come from at least one example".into(),
        ));
    }
    if let Some(l) = h.loss {
        if !l.is_finite() {
            return Err(Refusal::new(
                ErrorCode::BadLoss,
                "loss must be a finite number".into(),
            ));
        }
    }
    Ok(())
}

/// Argon2 token checks run at most this many at a time: each holds 19 MiB,
/// so a storm of hellos (a thousand trainers reconnecting after a restart)
/// must queue instead of allocating gigabytes at once. Hub-issued tokens
/// (fast keyed hash, see `secrets`) skip the queue.
static TOKEN_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Blob files up to this size are written on the session's own thread.
const INLINE_BLOB_WRITE: usize = 256 * 1024;

/// Blob files being written at once, over all sessions.
static BLOB_WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Checks a hello's token against the stored hash (or hashes it for a new
/// name): the fast keyed hash on the spot, argon2 on the blocking pool, two at
/// a time. Returns the hash to store for a new name.
async fn check_token(
    key: TokenKey,
    token: String,
    admission: Admission,
    name: &str,
) -> Result<Option<String>, Refusal> {
    let internal = |e: String| Refusal::new(ErrorCode::Internal, e);
    let slow = match &admission {
        Admission::Verify { token_hash } => secrets::slow_check(token_hash),
        Admission::Register => secrets::slow_hash(&key, &token),
    };
    let _permit = if slow {
        Some(
            TOKEN_CHECKS
                .acquire()
                .await
                .map_err(|e| internal(e.to_string()))?,
        )
    } else {
        None
    };
    let work = move || match admission {
        Admission::Verify { token_hash } => {
            Ok(secrets::verify_token(&key, &token, &token_hash).then_some(None))
        }
        Admission::Register => secrets::hash_token(&key, &token).map(|h| Some(Some(h))),
    };
    let res = if slow {
        actix_web::rt::task::spawn_blocking(work)
            .await
            .map_err(|e| internal(e.to_string()))?
    } else {
        work()
    };
    match res.map_err(|e| internal(e.to_string()))? {
        Some(new_hash) => Ok(new_hash),
        None => Err(Refusal::new(
            ErrorCode::BadToken,
            format!("wrong token for trainer `{name}`"),
        )),
    }
}

// ---------------------------------------------------------------- the actor

enum Phase {
    AwaitingHello,
    /// The hello arrived; its token is being checked. The hello deadline no
    /// longer runs: it covers the client's sending, not the hub's queue.
    Verifying,
    Ready(Ready),
    /// A welcomed evaluator (see [`evaluator`]).
    Evaluating(evaluator::EvaluatorReady),
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
    tokens: TokenKey,
    phase: Phase,
    handshake: Option<HandshakeSlot>,
    /// Payload bytes received at the last heartbeat, for the upload-rate floor.
    received_at_beat: u64,
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

    fn send(&self, m: &ServerMessage) {
        self.outbox.text(m.to_json());
    }

    /// Asks the hub and hands its answer to `answered`; a refusal becomes
    /// this connection's `error` (fatal or not by its code), and a hub that
    /// is gone a `shutting_down`.
    fn ask_hub<M, T>(
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
    fn drop_connection(&mut self, ctx: &mut Context<Self>, reason: &str) {
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
                if let Err(Refusal { code, message }) = validate_update_header(&h) {
                    let refusal = hub_actor::SessionRefusal {
                        trainer: r.name.clone(),
                        model: r.model.clone(),
                        update_id: h.update_id.clone(),
                        base_version: h.base_version,
                        num_examples: h.num_examples,
                        bytes: 0,
                        code,
                        message,
                    };
                    // Its payload frame will follow; swallow it quietly.
                    r.pending = Some(UpdateHeader::swallow());
                    return self.refuse_update(ctx, refusal, Some(h.update_id));
                }
                r.pending = Some(h);
                if let Some(p) = previous.filter(|p| !p.is_swallow()) {
                    self.error(
                        ctx,
                        ErrorCode::ExpectedBinary,
                        "an `update` must be followed by its binary frame; the earlier update was dropped".into(),
                        Some(p.update_id),
                    );
                }
            }
            (Phase::Ready(r), ClientMessage::Stats { count, sum, sumsq }) => {
                let submit = hub_actor::SubmitStats {
                    trainer: r.name.clone(),
                    model: r.model.clone(),
                    stats: crate::protocol::FeatureStats { count, sum, sumsq },
                };
                self.ask_hub(ctx, submit, |act, (trainers, frozen)| {
                    act.send(&ServerMessage::StatsReceived { trainers, frozen })
                });
            }
            (
                Phase::Ready(r),
                ClientMessage::Eval {
                    version,
                    specialty_accuracy,
                    global_accuracy,
                    loss,
                    num_examples,
                    specialty_bits_per_byte,
                    global_bits_per_byte,
                },
            ) => {
                let bpb = [specialty_bits_per_byte, global_bits_per_byte];
                if let Err(Refusal { code, message }) =
                    validate_eval(specialty_accuracy, global_accuracy, loss)
                        .and_then(|()| crate::hub::kernel_eval::validate_bits_per_byte(bpb))
                {
                    return self.error(ctx, code, message, None);
                }
                let eval = hub_actor::SubmitEval {
                    trainer: r.name.clone(),
                    specialty: r.specialty.clone(),
                    model: r.model.clone(),
                    version,
                    specialty_accuracy,
                    global_accuracy,
                    loss,
                    num_examples,
                };
                self.ask_hub(ctx, eval, |_, ()| {});
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
        if !(crate::protocol::OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol) {
            return self.error(
                ctx,
                ErrorCode::ProtocolVersion,
                format!(
                    "this hub speaks protocol {} to {PROTOCOL_VERSION}, not {protocol}",
                    crate::protocol::OLDEST_PROTOCOL_VERSION
                ),
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
        let join = hub_actor::Join {
            session_id: sid,
            name: name.clone(),
            specialty: specialty.clone(),
            model: model.clone(),
            remote,
            new_hash: None,
            addr,
            outbox,
        };
        let key = self.tokens.clone();
        let fut = async move {
            let admission = hub
                .send(hub_actor::Hello {
                    name: join.name.clone(),
                    model: join.model.clone(),
                    protocol,
                })
                .await
                .map_err(|e| Refusal::new(ErrorCode::ShuttingDown, e.to_string()))??;
            let new_hash = check_token(key, token, admission, &join.name).await?;
            hub.send(hub_actor::Join { new_hash, ..join })
                .await
                .map_err(|e| Refusal::new(ErrorCode::ShuttingDown, e.to_string()))?
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if matches!(act.phase, Phase::Closing) {
                return;
            }
            // Welcomed or refused, this connection no longer waits for its hello.
            act.handshake = None;
            match res {
                Ok(w) => {
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
                        normalisation: w.normalisation,
                    }
                    .to_json();
                    act.activity.authenticate();
                    act.outbox.welcome(Bytes::from(welcome), w.encoded);
                    act.phase = Phase::Ready(Ready {
                        name,
                        specialty,
                        model,
                        layout: w.layout,
                        pending: None,
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

    fn on_binary(&mut self, payload: Bytes, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Evaluating(_)) {
            return self.on_evaluator_binary(ctx);
        }
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
        if h.is_swallow() {
            // The payload of an update whose header was refused.
            return;
        }
        let (trainer, model) = (r.name.clone(), r.model.clone());
        // Shapes, dtypes, finite values and the norm, in one pass.
        let norm = match r.layout.check_sum_squares(&payload) {
            Ok(s) => s.sqrt(),
            Err(e) => {
                let refusal = hub_actor::SessionRefusal {
                    trainer,
                    model,
                    update_id: h.update_id.clone(),
                    base_version: h.base_version,
                    num_examples: h.num_examples,
                    bytes: payload.len() as u64,
                    code: e.code,
                    message: e.message,
                };
                return self.refuse_update(ctx, refusal, Some(h.update_id));
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
            norm,
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
                    b.put(&p).map_err(|e| (e.code(), e.to_string()))
                } else {
                    // A few at a time: hundreds of threads writing into one
                    // directory at once spend their time on its lock.
                    let _writing = BLOB_WRITES.acquire().await;
                    actix_web::rt::task::spawn_blocking(move || b.put(&p))
                        .await
                        .map_err(|e| (ErrorCode::Internal, e.to_string()))
                        .and_then(|r| r.map_err(|e| (e.code(), e.to_string())))
                };
                match written {
                    Ok(name) => sub.payload_file = Some(name),
                    Err((code, e)) => {
                        return Ok(Err(Refusal::new(
                            code,
                            format!("the update could not be stored: {e}"),
                        )));
                    }
                }
            }
            hub.send(sub).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(Ok(a)) => act.send(&ServerMessage::Ack {
                    update_id,
                    base_version: a.base_version,
                    staleness: a.staleness,
                    duplicate: a.duplicate,
                    status: a.status,
                }),
                // A refused update is this message's error, not the connection's.
                Ok(Err(Refusal { code, message })) => act.send(&ServerMessage::Error {
                    code,
                    message,
                    update_id: Some(update_id),
                    fatal: false,
                }),
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
            Incoming::Binary(b) => self.on_binary(b, ctx),
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
            parse_client_message("nope").unwrap_err().code,
            ErrorCode::BadJson
        );
        assert_eq!(
            parse_client_message(r#"{"type":"dance"}"#)
                .unwrap_err()
                .code,
            ErrorCode::UnknownType
        );
        let r = parse_client_message(r#"{"type":"update"}"#).unwrap_err();
        assert_eq!(
            (r.code, r.was_update, r.update_id),
            (ErrorCode::BadJson, true, None)
        );
        assert!(matches!(
            parse_client_message(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { nonce: None })
        ));
    }

    /// Python's json.dumps writes a NaN loss as a bare token: the header is
    /// still read far enough to refuse it as `bad_loss` with its id.
    #[test]
    fn update_headers_that_are_not_json_keep_their_id_where_possible() {
        let r = parse_client_message(
            r#"{"type": "update", "update_id": "py-1", "base_version": 3, "num_examples": 10, "loss": NaN}"#,
        )
        .unwrap_err();
        assert_eq!(r.code, ErrorCode::BadLoss);
        assert_eq!(r.update_id.as_deref(), Some("py-1"));
        assert!(r.was_update);
        let r = parse_client_message(
            r#"{"type":"update","update_id":"a NaN \"Infinity\"","base_version":-Infinity,"num_examples":1}"#,
        )
        .unwrap_err();
        assert_eq!(r.code, ErrorCode::BadJson);
        assert_eq!(r.update_id.as_deref(), Some("a NaN \"Infinity\""));
        let r = parse_client_message(
            r#"{"type":"update","update_id":"x","base_version":"three","num_examples":1}"#,
        )
        .unwrap_err();
        assert_eq!(
            (r.code, r.update_id.as_deref()),
            (ErrorCode::BadJson, Some("x"))
        );
        let r = parse_client_message(r#"{"type":"eval","version":1,"global_accuracy":NaN}"#)
            .unwrap_err();
        assert_eq!((r.code, r.was_update), (ErrorCode::BadEval, false));
        // Tokens inside strings and longer words are left alone.
        assert_eq!(mark_non_finite_tokens(r#"{"a":"NaN","b":NaNa}"#), None);
        assert_eq!(
            parse_client_message("{not json").unwrap_err().update_id,
            None
        );
    }

    #[test]
    fn eval_figures_are_checked() {
        assert!(validate_eval(Some(0.5), Some(1.0), Some(0.3)).is_ok());
        assert!(validate_eval(None, None, None).is_ok());
        assert_eq!(
            validate_eval(Some(5.0), None, None).unwrap_err().code,
            ErrorCode::BadEval
        );
        assert!(validate_eval(None, Some(-0.1), None).is_err());
        assert!(validate_eval(None, None, Some(-1.0)).is_err());
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
            validate_update_header(&h).unwrap_err().code,
            ErrorCode::BadNumExamples
        );
        let mut h = ok.clone();
        h.update_id = String::new();
        assert_eq!(
            validate_update_header(&h).unwrap_err().code,
            ErrorCode::BadUpdateId
        );
        let mut h = ok;
        h.loss = Some(f64::NAN);
        assert_eq!(
            validate_update_header(&h).unwrap_err().code,
            ErrorCode::BadLoss
        );
    }
}
