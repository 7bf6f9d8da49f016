// Over 600 lines: one reconnecting loop and the per-connection protocol it drives; the loop and its message handling share the connection's state.
//! The trainer's connection loop: hello, receive versions, train, send
//! deltas, wait for acks, report evaluations; reconnect with exponential
//! backoff and jitter; resend an unacknowledged update with the same
//! `update_id` so the hub applies it once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Serialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::policy::{self, Next};
use crate::protocol::{
    ClientMessage, ErrorCode, ModelLayout, Normalisation, NormalisationState, ServerMessage,
    TRAINER_WS_PATH,
};
use crate::{EvalReport, Learner, Trained};

fn refused(code: ErrorCode, message: String) -> ClientError {
    let code = code.as_str().into();
    ClientError::Refused { code, message }
}

/// How a trainer behaves: honest, or one of the faults the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    #[default]
    Honest,
    /// Sends Gaussian noise (std 1) instead of its delta.
    Noise,
    /// Sends its delta negated and magnified four times.
    SignFlip,
    /// Sends its delta multiplied by 100 (a huge norm).
    Scaled,
    /// Sends a delta containing NaN.
    Nan,
    /// Keeps training from the first version it received.
    Stale,
    /// Connects and never sends an update.
    Silent,
}

/// Half-precision encoding of deltas, chosen per trainer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    F16,
    Bf16,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://host:port` (or `http://`), with or without the trainer path.
    pub hub: String,
    pub name: String,
    pub specialty: String,
    pub token: String,
    pub model: String,
    /// Stop after training on this many global versions.
    pub max_versions: Option<u64>,
    pub behaviour: Behaviour,
    pub compression: Compression,
    /// Reconnect after the hub goes away (false: return an error).
    pub reconnect: bool,
    pub max_backoff: Duration,
    /// Give up after this many consecutive failed connection attempts.
    pub max_attempts: Option<u32>,
    /// Trust for `wss://` hubs (None: the public web roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClientOptions {
    pub fn new(hub: &str, name: &str, specialty: &str, token: &str) -> Self {
        ClientOptions {
            hub: hub.to_string(),
            name: name.to_string(),
            specialty: specialty.to_string(),
            token: token.to_string(),
            model: "digits".into(),
            max_versions: None,
            behaviour: Behaviour::Honest,
            compression: Compression::None,
            reconnect: true,
            max_backoff: Duration::from_secs(10),
            max_attempts: None,
            tls: None,
        }
    }
}

pub use crate::events::ClientEvent;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the hub refused this trainer: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("cannot reach the hub at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{0}")]
    Learner(String),
    #[error("stopped")]
    Stopped,
}

/// Figures at the end of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub versions_trained: u64,
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
    pub refusal_codes: HashMap<String, u64>,
    pub acked_ids: Vec<String>,
    pub last_version: u64,
    pub last_eval: Option<EvalReport>,
}

/// Turns whatever the user gave into the trainer WebSocket URL.
pub fn ws_url(hub: &str) -> String {
    let mut u = hub.trim_end_matches('/').to_string();
    if let Some(rest) = u.strip_prefix("http://") {
        u = format!("ws://{rest}");
    } else if let Some(rest) = u.strip_prefix("https://") {
        u = format!("wss://{rest}");
    } else if !u.starts_with("ws://") && !u.starts_with("wss://") {
        u = format!("ws://{u}");
    }
    if !u.ends_with(TRAINER_WS_PATH) {
        u.push_str(TRAINER_WS_PATH);
    }
    u
}

/// The REST base URL of a hub given as a WebSocket or HTTP URL.
pub fn http_url(hub: &str) -> String {
    let u = ws_url(hub);
    let u = u.trim_end_matches(TRAINER_WS_PATH);
    if let Some(rest) = u.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = u.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        u.to_string()
    }
}

struct Pending {
    update_id: String,
    base_version: u64,
    num_examples: u64,
    loss: f64,
    payload: Vec<u8>,
}

pub(crate) enum Flow {
    Continue,
    /// Reconnect (the connection ended or the hub asked us to go).
    Reconnect(String),
    /// Stop for good with this error.
    Fatal(ClientError),
}

struct Conn {
    layout: Option<Arc<ModelLayout>>,
    latest: Option<(u64, Arc<Vec<f32>>)>,
    expect_binary_for: Option<(u64, usize, Option<f64>)>,
    /// Statistics were sent; no training until the model's normalisation
    /// is frozen.
    waiting_norm: bool,
    /// A `normalisation` message to hand to the learner before it trains
    /// again (it may be training when the message arrives).
    norm_arrived: Option<Option<Normalisation>>,
    /// The welcome's `max_message_bytes`: no update larger is sent.
    max_message_bytes: usize,
}

/// Tells the learner the model's normalisation and the user what it is.
pub(crate) fn apply_normalisation<L: Learner>(
    learner: &Arc<std::sync::Mutex<L>>,
    norm: Option<&Normalisation>,
    on_event: &mut (impl FnMut(&ClientEvent) + Send),
) -> Result<(), ClientError> {
    learner
        .lock()
        .map_err(|_| ClientError::Learner("learner poisoned".into()))?
        .use_normalisation(norm)
        .map_err(ClientError::Learner)?;
    on_event(&ClientEvent::Normalisation {
        state: if norm.is_some() { "frozen" } else { "none" }.into(),
        features: norm.map(|n| n.features).unwrap_or(0),
        trainers: norm.map(|n| n.trainers).unwrap_or(0),
    });
    Ok(())
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Runs a trainer until `max_versions` are trained, `stop` resolves, or a
/// fatal refusal. `on_event` sees every event as it happens.
pub async fn run<L: Learner>(
    opts: ClientOptions,
    learner: L,
    on_event: impl FnMut(&ClientEvent) + Send,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<Summary, ClientError> {
    let mut reach = crate::reach::Reach::default();
    let mut on_event = reach.watch(on_event);
    let learner = Arc::new(std::sync::Mutex::new(learner));
    let url = ws_url(&opts.hub);
    let mut progress = Progress::default();
    tokio::pin!(stop);
    loop {
        if let Some(max) = opts.max_versions {
            if progress.summary.versions_trained >= max && progress.pending.is_none() {
                break;
            }
        }
        let session = run_connection(&opts, &url, &learner, &mut progress, &mut on_event);
        let flow = tokio::select! {
            f = session => f,
            _ = &mut stop => return Ok(finish(&progress.summary, &mut on_event)),
        };
        match flow {
            Flow::Continue => break,
            Flow::Fatal(e) => return Err(e),
            Flow::Reconnect(reason) => {
                if !opts.reconnect {
                    return Err(ClientError::Unreachable {
                        url,
                        message: reason,
                    });
                }
                if let Some(e) = reach.failed(&url, &reason) {
                    on_event(&e);
                }
                progress.attempt += 1;
                let attempt = progress.attempt;
                if let Some(max) = opts.max_attempts {
                    if attempt > max {
                        return Err(ClientError::Unreachable {
                            url,
                            message: format!("{reason} (gave up after {max} attempts)"),
                        });
                    }
                }
                let base = 0.25f64 * 2f64.powi(attempt.min(10) as i32 - 1);
                let capped = base.min(opts.max_backoff.as_secs_f64());
                let jitter = rand::thread_rng().gen_range(0.5..1.5);
                let wait = capped * jitter;
                on_event(&ClientEvent::Reconnect {
                    attempt,
                    in_secs: wait,
                    reason,
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                    _ = &mut stop => return Ok(finish(&progress.summary, &mut on_event)),
                }
            }
        }
    }
    Ok(finish(&progress.summary, &mut on_event))
}

fn finish(summary: &Summary, on_event: &mut impl FnMut(&ClientEvent)) -> Summary {
    on_event(&ClientEvent::Done {
        versions_trained: summary.versions_trained,
        acked: summary.acked,
        refused: summary.refused,
    });
    summary.clone()
}

pub(crate) async fn connect(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Ws, String> {
    let cfg = WebSocketConfig {
        max_message_size: Some(2 << 30),
        max_frame_size: Some(2 << 30),
        ..Default::default()
    };
    let connector = if url.starts_with("wss://") {
        let tls = match tls {
            Some(t) => t.clone(),
            None => crate::tls::client_config(None)?,
        };
        Some(tokio_tungstenite::Connector::Rustls(tls))
    } else {
        None
    };
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_tls_with_config(url, Some(cfg), true, connector),
    )
    .await
    .map_err(|_| "connection timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn encode_update(
    layout: &ModelLayout,
    delta: &[f32],
    compression: Compression,
) -> Result<Vec<u8>, String> {
    use safetensors::tensor::Dtype;
    let dtype = match compression {
        Compression::None => Dtype::F32,
        Compression::F16 => Dtype::F16,
        Compression::Bf16 => Dtype::BF16,
    };
    layout
        .encode_as(delta, None, dtype)
        .map_err(|e| e.to_string())
}

/// Applies a faulty behaviour to an honest delta.
pub fn corrupt_delta(behaviour: Behaviour, delta: &mut [f32], rng: &mut impl Rng) {
    match behaviour {
        Behaviour::Noise => {
            for v in delta.iter_mut() {
                // Box-Muller normal sample.
                let (u1, u2): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
                *v = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            }
        }
        Behaviour::SignFlip => delta.iter_mut().for_each(|v| *v *= -4.0),
        Behaviour::Scaled => delta.iter_mut().for_each(|v| *v *= 100.0),
        Behaviour::Nan => {
            if let Some(v) = delta.first_mut() {
                *v = f32::NAN;
            }
        }
        Behaviour::Honest | Behaviour::Stale | Behaviour::Silent => {}
    }
}

/// What a trainer carries from one connection to the next.
#[derive(Default)]
struct Progress {
    summary: Summary,
    /// The update sent and not yet answered: resent with the same id.
    pending: Option<Pending>,
    /// The first version this trainer got: a `Stale` trainer keeps
    /// training from it.
    first_version: Option<(u64, Arc<Vec<f32>>)>,
    /// Reconnection attempts since the last welcome.
    attempt: u32,
}

async fn run_connection<L: Learner>(
    opts: &ClientOptions,
    url: &str,
    learner: &Arc<std::sync::Mutex<L>>,
    progress: &mut Progress,
    on_event: &mut (impl FnMut(&ClientEvent) + Send),
) -> Flow {
    let Progress {
        summary,
        pending,
        first_version,
        attempt,
    } = progress;
    let mut ws = match connect(url, opts.tls.as_ref()).await {
        Ok(ws) => ws,
        Err(e) => return Flow::Reconnect(format!("connect: {e}")),
    };
    let hello = ClientMessage::Hello {
        protocol: crate::protocol::PROTOCOL_VERSION,
        name: opts.name.clone(),
        specialty: opts.specialty.clone(),
        token: opts.token.clone(),
        model: opts.model.clone(),
        role: crate::protocol::Role::Trainer,
    };
    if let Err(e) = ws
        .send(Message::Text(
            serde_json::to_string(&hello).unwrap_or_default(),
        ))
        .await
    {
        return Flow::Reconnect(format!("send hello: {e}"));
    }
    // Welcome, then the weights.
    let layout: Arc<ModelLayout>;
    let mut conn = Conn {
        layout: None,
        latest: None,
        expect_binary_for: None,
        waiting_norm: false,
        norm_arrived: None,
        max_message_bytes: usize::MAX,
    };
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Flow::Reconnect(format!("during hello: {e}")),
            Ok(None) => return Flow::Reconnect("connection closed during hello".into()),
            Err(_) => return Flow::Reconnect("no welcome within 30 s".into()),
        };
        let Message::Text(t) = msg else { continue };
        match serde_json::from_str::<ServerMessage>(&t) {
            Ok(ServerMessage::Welcome {
                version,
                tensors,
                registered,
                session_id,
                trainer,
                model,
                normalisation,
                max_message_bytes,
                ..
            }) => {
                conn.max_message_bytes = max_message_bytes;
                let l = ModelLayout { tensors };
                let check = learner
                    .lock()
                    .map_err(|_| "learner poisoned".to_string())
                    .and_then(|g| g.check_layout(&l));
                if let Err(e) = check {
                    let _ = ws.close(None).await;
                    return Flow::Fatal(ClientError::Learner(e));
                }
                layout = Arc::new(l);
                conn.layout = Some(layout.clone());
                *attempt = 0;
                conn.expect_binary_for = Some((version, 0, None));
                on_event(&ClientEvent::Welcome {
                    trainer,
                    model,
                    version,
                    registered,
                    session_id,
                });
                let pooling = normalisation
                    .as_ref()
                    .filter(|n| n.state == NormalisationState::Pooling);
                match pooling {
                    // Contribute to the shared statistics and train only
                    // once they are frozen.
                    Some(n) => match crate::pooling::join_pool(&mut ws, learner, n, on_event).await
                    {
                        Ok(waiting) => conn.waiting_norm = waiting,
                        Err(flow) => return flow,
                    },
                    None => {
                        if let Err(e) =
                            apply_normalisation(learner, normalisation.as_ref(), on_event)
                        {
                            return Flow::Fatal(e);
                        }
                    }
                }
                break;
            }
            Ok(ServerMessage::Error {
                code,
                message,
                fatal,
                ..
            }) => {
                on_event(&ClientEvent::Error {
                    code: code.as_str().into(),
                    message: message.clone(),
                    update_id: None,
                    fatal,
                });
                return match policy::on_error(code, true, false).next {
                    Next::GiveUp => Flow::Fatal(refused(code, message)),
                    _ => Flow::Reconnect(format!("{code}: {message}")),
                };
            }
            Ok(ServerMessage::Goodbye { reason }) => return Flow::Reconnect(reason),
            _ => {}
        }
    }
    let mut resent = false;
    let mut rng = rand::rngs::StdRng::from_entropy();
    use rand::SeedableRng;
    loop {
        if let Some(max) = opts.max_versions {
            if summary.versions_trained >= max && pending.is_none() {
                let _ = ws
                    .send(Message::Text(
                        serde_json::to_string(&ClientMessage::Bye).unwrap_or_default(),
                    ))
                    .await;
                let _ = ws.close(None).await;
                // Finish the closing handshake so the hub sees a clean leave.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return Flow::Continue;
            }
        }
        // Resend an unacknowledged update (same update_id) once per connection.
        if let Some(p) = pending.as_ref() {
            if !resent {
                resent = true;
                if let Err(e) = policy::check_size(p.payload.len(), conn.max_message_bytes) {
                    return Flow::Fatal(e);
                }
                if let Err(e) = send_update(&mut ws, p).await {
                    return Flow::Reconnect(format!("resend: {e}"));
                }
                summary.sent += 1;
            }
        }
        if let Some(norm) = conn.norm_arrived.take() {
            conn.waiting_norm = false;
            let repooling = norm
                .as_ref()
                .filter(|n| n.state == NormalisationState::Pooling);
            if let Some(n) = repooling {
                // An administrator reset the model's statistics: send ours
                // again and wait for the new freeze, as after a welcome.
                match crate::pooling::join_pool(&mut ws, learner, n, on_event).await {
                    Ok(waiting) => conn.waiting_norm = waiting,
                    Err(flow) => return flow,
                }
            } else if let Err(e) = apply_normalisation(learner, norm.as_ref(), on_event) {
                return Flow::Fatal(e);
            }
        }
        // Train on the newest version not trained on yet.
        let due = match (&conn.latest, pending.is_none(), conn.waiting_norm) {
            (Some((v, w)), true, false) if summary.last_version_trained() != Some(*v) => {
                Some((*v, w.clone()))
            }
            _ => None,
        };
        if let (Some((version, global)), false) = (due, opts.behaviour == Behaviour::Silent) {
            // Federated evaluation of the received version.
            let (eval_learner, eval_weights) = (learner.clone(), global.clone());
            let eval = tokio::task::spawn_blocking(move || {
                eval_learner
                    .lock()
                    .map_err(|_| "learner poisoned".to_string())
                    .and_then(|mut l| l.evaluate(&eval_weights, version))
            });
            match eval.await {
                Ok(Ok(Some(r))) => {
                    summary.last_eval = Some(r);
                    on_event(&ClientEvent::Evaluation {
                        version,
                        specialty_accuracy: r.specialty_accuracy,
                        global_accuracy: r.global_accuracy,
                        loss: r.loss,
                        specialty_bits_per_byte: r.specialty_bits_per_byte,
                        global_bits_per_byte: r.global_bits_per_byte,
                    });
                    let m = ClientMessage::Eval {
                        version,
                        specialty_accuracy: r.specialty_accuracy,
                        global_accuracy: r.global_accuracy,
                        loss: r.loss,
                        num_examples: Some(r.num_examples),
                        specialty_bits_per_byte: r.specialty_bits_per_byte,
                        global_bits_per_byte: r.global_bits_per_byte,
                    };
                    if let Err(e) = ws
                        .send(Message::Text(serde_json::to_string(&m).unwrap_or_default()))
                        .await
                    {
                        return Flow::Reconnect(format!("send eval: {e}"));
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Flow::Fatal(ClientError::Learner(e)),
                Err(e) => return Flow::Fatal(ClientError::Learner(e.to_string())),
            }
            // A stale trainer keeps training from the first version it saw.
            let (base_version, base) = if opts.behaviour == Behaviour::Stale {
                first_version
                    .get_or_insert((version, global.clone()))
                    .clone()
            } else {
                (version, global.clone())
            };
            let (train_learner, base_weights) = (learner.clone(), base.clone());
            let started = std::time::Instant::now();
            let train = tokio::task::spawn_blocking(move || {
                train_learner
                    .lock()
                    .map_err(|_| "learner poisoned".to_string())
                    .and_then(|mut l| l.train(&base_weights, base_version))
            });
            tokio::pin!(train);
            // Keep reading (new versions, pings) while the learner works.
            let trained: Trained = loop {
                tokio::select! {
                    r = &mut train => match r {
                        Ok(Ok(t)) => break t,
                        Ok(Err(e)) => return Flow::Fatal(ClientError::Learner(e)),
                        Err(e) => return Flow::Fatal(ClientError::Learner(e.to_string())),
                    },
                    m = ws.next() => {
                        match handle_frame(m, &mut conn, summary, pending, on_event) {
                            Flow::Continue => {}
                            other => return other,
                        }
                    }
                }
            };
            if trained.weights.len() != base.len() {
                return Flow::Fatal(ClientError::Learner(format!(
                    "learner returned {} weights, the model has {}",
                    trained.weights.len(),
                    base.len()
                )));
            }
            let mut delta: Vec<f32> = trained
                .weights
                .iter()
                .zip(base.iter())
                .map(|(a, b)| a - b)
                .collect();
            corrupt_delta(opts.behaviour, &mut delta, &mut rng);
            let payload = match encode_update(&layout, &delta, opts.compression) {
                Ok(p) => p,
                Err(e) => return Flow::Fatal(ClientError::Learner(e)),
            };
            let update_id = format!(
                "{}-v{}-{}",
                opts.name,
                version,
                uuid::Uuid::new_v4().simple()
            );
            summary.versions_trained += 1;
            summary.last_version = version;
            summary.mark_trained(version);
            on_event(&ClientEvent::Trained {
                base_version,
                update_id: update_id.clone(),
                num_examples: trained.num_examples,
                loss: trained.loss,
                seconds: started.elapsed().as_secs_f64(),
            });
            let p = Pending {
                update_id,
                base_version,
                num_examples: trained.num_examples.max(1),
                loss: trained.loss,
                payload,
            };
            resent = true;
            if let Err(e) = policy::check_size(p.payload.len(), conn.max_message_bytes) {
                return Flow::Fatal(e);
            }
            if let Err(e) = send_update(&mut ws, &p).await {
                *pending = Some(p);
                return Flow::Reconnect(format!("send update: {e}"));
            }
            summary.sent += 1;
            *pending = Some(p);
            continue;
        }
        let m = ws.next().await;
        match handle_frame(m, &mut conn, summary, pending, on_event) {
            Flow::Continue => {}
            other => return other,
        }
    }
}

async fn send_update(ws: &mut Ws, p: &Pending) -> Result<(), String> {
    let header = ClientMessage::Update {
        update_id: p.update_id.clone(),
        base_version: p.base_version,
        num_examples: p.num_examples,
        loss: Some(p.loss).filter(|l| l.is_finite()),
    };
    ws.send(Message::Text(
        serde_json::to_string(&header).unwrap_or_default(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    ws.send(Message::Binary(p.payload.clone()))
        .await
        .map_err(|e| e.to_string())
}

impl Summary {
    fn last_version_trained(&self) -> Option<u64> {
        if self.versions_trained == 0 {
            None
        } else {
            Some(self.last_version)
        }
    }
    fn mark_trained(&mut self, v: u64) {
        self.last_version = v;
    }
}

fn handle_frame(
    m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    conn: &mut Conn,
    summary: &mut Summary,
    pending: &mut Option<Pending>,
    on_event: &mut (impl FnMut(&ClientEvent) + Send),
) -> Flow {
    let msg = match m {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Flow::Reconnect(e.to_string()),
        None => return Flow::Reconnect("connection closed".into()),
    };
    match msg {
        Message::Binary(b) => {
            if let Some((version, num_updates, acc)) = conn.expect_binary_for.take() {
                let Some(layout) = conn.layout.as_ref() else {
                    return Flow::Continue;
                };
                let weights = match layout.decode(&b) {
                    Ok(w) => w,
                    Err(e) => return Flow::Reconnect(format!("bad weights from hub: {e}")),
                };
                if version > 0 || conn.latest.is_none() {
                    on_event(&ClientEvent::Version {
                        version,
                        num_updates,
                        hub_accuracy: acc,
                    });
                }
                let newer = conn
                    .latest
                    .as_ref()
                    .map(|(v, _)| version > *v)
                    .unwrap_or(true);
                if newer {
                    conn.latest = Some((version, Arc::new(weights)));
                }
            }
            Flow::Continue
        }
        Message::Text(t) => match serde_json::from_str::<ServerMessage>(&t) {
            Ok(ServerMessage::Model {
                version,
                num_updates,
                metrics,
                ..
            }) => {
                let acc = metrics
                    .as_ref()
                    .and_then(|m| m["eval"]["accuracy"].as_f64());
                conn.expect_binary_for = Some((version, num_updates, acc));
                Flow::Continue
            }
            Ok(ServerMessage::Ack {
                update_id,
                base_version,
                staleness,
                duplicate,
                ..
            }) => {
                if pending
                    .as_ref()
                    .map(|p| p.update_id == update_id)
                    .unwrap_or(false)
                {
                    *pending = None;
                    summary.acked += 1;
                    summary.acked_ids.push(update_id.clone());
                }
                on_event(&ClientEvent::Ack {
                    update_id,
                    base_version,
                    staleness,
                    duplicate,
                });
                Flow::Continue
            }
            Ok(ServerMessage::Error {
                code,
                message,
                update_id,
                fatal,
            }) => {
                on_event(&ClientEvent::Error {
                    code: code.as_str().into(),
                    message: message.clone(),
                    update_id: update_id.clone(),
                    fatal,
                });
                if code == ErrorCode::BadStats && conn.waiting_norm {
                    // The hub would not pool our statistics: do not wait
                    // for a freeze; the welcome of the next connection or a
                    // `normalisation` message brings the model's.
                    conn.norm_arrived = Some(None);
                }
                let ours = update_id.is_some()
                    && pending
                        .as_ref()
                        .map(|p| Some(&p.update_id) == update_id.as_ref())
                        == Some(true);
                // The error table's action for the code (policy.rs).
                let decision = policy::on_error(code, fatal, ours);
                if decision.drop_pending {
                    // Refused for good (stale, bad values...): never resend it.
                    *pending = None;
                    summary.refused += 1;
                    *summary
                        .refusal_codes
                        .entry(code.as_str().to_string())
                        .or_default() += 1;
                }
                match decision.next {
                    Next::GiveUp => Flow::Fatal(refused(code, message)),
                    Next::Reconnect => Flow::Reconnect(format!("{code}: {message}")),
                    Next::Continue => Flow::Continue,
                }
            }
            Ok(ServerMessage::Goodbye { reason }) => Flow::Reconnect(reason),
            Ok(ServerMessage::Normalisation { normalisation, .. }) => {
                conn.norm_arrived = Some(normalisation);
                Flow::Continue
            }
            _ => Flow::Continue,
        },
        Message::Close(_) => Flow::Reconnect("hub closed the connection".into()),
        _ => Flow::Continue,
    }
}
