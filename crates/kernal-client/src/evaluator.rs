//! The evaluator role from Rust: connect with an admin-issued evaluator
//! token (`hello` with `role: evaluator`), receive the current version and
//! every new one as trainers do, score each with the user's [`Scorer`] and
//! report it; the hub records the figures as the version's hub evaluation.
//! Reconnection, the error policy and "never reached the hub" are the
//! trainer loop's ([`crate::connection`]), applied to a client that sends
//! no updates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Serialize;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::connection::{ws_url, ClientError, ClientEvent, Ws};
use crate::policy::{self, Next};
use crate::protocol::{
    ClientMessage, ErrorCode, EvaluatorReport, ModelLayout, Normalisation, NormalisationState,
    Role, ServerMessage, PROTOCOL_VERSION,
};
use crate::{EvalReport, Learner};

/// What a scorer measured on one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub bits_per_byte: Option<f64>,
    pub num_examples: u64,
    /// Anything else (`f1`, ...): names as trainer names, finite values.
    pub metrics: BTreeMap<String, f64>,
}

/// The user's evaluation: scores a version's weights (flat, in the
/// model's tensor order) on held-out data.
pub trait Scorer: Send + 'static {
    /// Refuses a model this scorer cannot run (wrong tensors or shapes).
    fn check_layout(&self, _layout: &ModelLayout) -> Result<(), String> {
        Ok(())
    }
    /// The model's input normalisation, when it is frozen (`None`: none).
    fn use_normalisation(&mut self, _n: Option<&Normalisation>) -> Result<(), String> {
        Ok(())
    }
    fn score(&mut self, weights: &[f32], version: u64) -> Result<Score, String>;
}

/// A closure is a scorer.
impl<F> Scorer for F
where
    F: FnMut(&[f32], u64) -> Result<Score, String> + Send + 'static,
{
    fn score(&mut self, weights: &[f32], version: u64) -> Result<Score, String> {
        self(weights, version)
    }
}

/// Any [`Learner`] scores with its own evaluation: its figures on all the
/// held-out data it knows (`global_*`) are the report.
pub struct LearnerScorer<L: Learner>(pub L);

impl<L: Learner> Scorer for LearnerScorer<L> {
    fn check_layout(&self, layout: &ModelLayout) -> Result<(), String> {
        self.0.check_layout(layout)
    }
    fn use_normalisation(&mut self, n: Option<&Normalisation>) -> Result<(), String> {
        self.0.use_normalisation(n)
    }
    fn score(&mut self, weights: &[f32], version: u64) -> Result<Score, String> {
        let r: EvalReport = self
            .0
            .evaluate(weights, version)?
            .ok_or("this learner has no evaluation")?;
        Ok(Score {
            accuracy: r.global_accuracy,
            loss: r.loss,
            bits_per_byte: r.global_bits_per_byte,
            num_examples: r.num_examples,
            metrics: BTreeMap::new(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct EvaluatorOptions {
    /// `ws://host:port` (or `http://`), with or without the WebSocket path.
    pub hub: String,
    pub name: String,
    pub token: String,
    pub model: String,
    /// Stop after this many reports were recorded.
    pub max_versions: Option<u64>,
    pub reconnect: bool,
    pub max_backoff: Duration,
    /// Give up after this many consecutive failed connection attempts.
    pub max_attempts: Option<u32>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl EvaluatorOptions {
    pub fn new(hub: &str, name: &str, token: &str, model: &str) -> Self {
        EvaluatorOptions {
            hub: hub.to_string(),
            name: name.to_string(),
            token: token.to_string(),
            model: model.to_string(),
            max_versions: None,
            reconnect: true,
            max_backoff: Duration::from_secs(10),
            max_attempts: None,
            tls: None,
        }
    }
}

/// Figures at the end of an evaluator's run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvaluatorSummary {
    /// Versions scored and reported.
    pub reported: u64,
    /// Reports the hub stored (`evaluation_recorded`).
    pub recorded: u64,
    /// Reports it refused.
    pub refused: u64,
    pub last_version: Option<u64>,
    pub last_score: Option<Score>,
}

enum Flow {
    Done,
    Reconnect(String),
    Fatal(ClientError),
}

/// Runs an evaluator until `max_versions` reports are recorded, `stop`
/// resolves, or the hub refuses it for good (bad token, revoked...).
pub async fn run_evaluator<S: Scorer>(
    opts: EvaluatorOptions,
    scorer: S,
    on_event: impl FnMut(&ClientEvent) + Send,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<EvaluatorSummary, ClientError> {
    let mut reach = crate::reach::Reach::default();
    let mut on_event = reach.watch(on_event);
    let scorer = Arc::new(std::sync::Mutex::new(scorer));
    let url = ws_url(&opts.hub);
    let mut summary = EvaluatorSummary::default();
    let mut attempt = 0u32;
    tokio::pin!(stop);
    loop {
        let flow = tokio::select! {
            f = one_connection(&opts, &url, &scorer, &mut summary, &mut attempt, &mut on_event) => f,
            _ = &mut stop => break,
        };
        let reason = match flow {
            Flow::Done => break,
            Flow::Fatal(e) => return Err(e),
            Flow::Reconnect(r) => r,
        };
        if !opts.reconnect {
            return Err(ClientError::Unreachable {
                url,
                message: reason,
            });
        }
        if let Some(e) = reach.failed(&url, &reason) {
            on_event(&e);
        }
        attempt += 1;
        if opts.max_attempts.is_some_and(|max| attempt > max) {
            return Err(ClientError::Unreachable {
                url,
                message: format!("{reason} (gave up after {} attempts)", attempt - 1),
            });
        }
        let base = 0.25f64 * 2f64.powi(attempt.min(10) as i32 - 1);
        let wait =
            base.min(opts.max_backoff.as_secs_f64()) * rand::thread_rng().gen_range(0.5..1.5);
        on_event(&ClientEvent::Reconnect {
            attempt,
            in_secs: wait,
            reason,
        });
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
            _ = &mut stop => break,
        }
    }
    on_event(&ClientEvent::Done {
        versions_trained: summary.reported,
        acked: summary.recorded,
        refused: summary.refused,
    });
    Ok(summary)
}

/// What one connection knows.
struct Conn {
    layout: Option<Arc<ModelLayout>>,
    /// The version whose weights the next binary frame carries.
    expect_binary_for: Option<(u64, usize)>,
    latest: Option<(u64, Arc<Vec<f32>>)>,
    scored: Option<u64>,
    /// Reports sent and not yet answered.
    in_flight: u64,
    norm: Option<Option<Normalisation>>,
}

async fn one_connection<S: Scorer>(
    opts: &EvaluatorOptions,
    url: &str,
    scorer: &Arc<std::sync::Mutex<S>>,
    summary: &mut EvaluatorSummary,
    attempt: &mut u32,
    on_event: &mut (impl FnMut(&ClientEvent) + Send),
) -> Flow {
    let mut ws = match crate::connection::connect(url, opts.tls.as_ref()).await {
        Ok(ws) => ws,
        Err(e) => return Flow::Reconnect(format!("connect: {e}")),
    };
    let hello = ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        name: opts.name.clone(),
        specialty: String::new(),
        token: opts.token.clone(),
        model: opts.model.clone(),
        role: Role::Evaluator,
    };
    if let Err(e) = send(&mut ws, &hello).await {
        return Flow::Reconnect(format!("send hello: {e}"));
    }
    let mut c = Conn {
        layout: None,
        expect_binary_for: None,
        latest: None,
        scored: summary.last_version,
        in_flight: 0,
        norm: None,
    };
    loop {
        if opts.max_versions.is_some_and(|m| summary.recorded >= m) && c.in_flight == 0 {
            let _ = send(&mut ws, &ClientMessage::Bye).await;
            let _ = ws.close(None).await;
            return Flow::Done;
        }
        if let Some(norm) = c.norm.take() {
            let applied = scorer
                .lock()
                .map_err(|_| ClientError::Poisoned("scorer"))
                .and_then(|mut s| {
                    s.use_normalisation(norm.as_ref())
                        .map_err(ClientError::Learner)
                });
            if let Err(e) = applied {
                return Flow::Fatal(e);
            }
        }
        let due = match &c.latest {
            Some((v, w)) if c.scored.is_none_or(|s| *v > s) && c.in_flight == 0 => {
                Some((*v, w.clone()))
            }
            _ => None,
        };
        if let Some((version, weights)) = due {
            let s = scorer.clone();
            let job = tokio::task::spawn_blocking(move || {
                s.lock()
                    .map_err(|_| ClientError::Poisoned("scorer"))
                    .and_then(|mut s| s.score(&weights, version).map_err(ClientError::Learner))
            });
            tokio::pin!(job);
            // Keep reading (new versions, pings) while the scorer works.
            let score = loop {
                tokio::select! {
                    r = &mut job => match r {
                        Ok(Ok(s)) => break s,
                        Ok(Err(e)) => return Flow::Fatal(e),
                        Err(e) => return Flow::Fatal(ClientError::Task(e)),
                    },
                    m = ws.next() => if let Some(f) = on_frame(m, &mut c, summary, attempt, scorer, on_event) {
                        return f;
                    },
                }
            };
            let report = ClientMessage::EvaluatorReport(EvaluatorReport {
                version,
                accuracy: score.accuracy,
                loss: score.loss,
                bits_per_byte: score.bits_per_byte,
                num_examples: score.num_examples,
                metrics: score.metrics.clone(),
            });
            if let Err(e) = send(&mut ws, &report).await {
                return Flow::Reconnect(format!("send report: {e}"));
            }
            c.scored = Some(version);
            c.in_flight += 1;
            summary.reported += 1;
            summary.last_version = Some(version);
            summary.last_score = Some(score);
            continue;
        }
        let m = ws.next().await;
        if let Some(f) = on_frame(m, &mut c, summary, attempt, scorer, on_event) {
            return f;
        }
    }
}

async fn send(ws: &mut Ws, m: &ClientMessage) -> Result<(), WsError> {
    ws.send(Message::Text(serde_json::to_string(m).unwrap_or_default()))
        .await
}

/// One frame from the hub; `Some` ends the connection.
fn on_frame<S: Scorer>(
    m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    c: &mut Conn,
    summary: &mut EvaluatorSummary,
    attempt: &mut u32,
    scorer: &Arc<std::sync::Mutex<S>>,
    on_event: &mut (impl FnMut(&ClientEvent) + Send),
) -> Option<Flow> {
    let msg = match m {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Some(Flow::Reconnect(e.to_string())),
        None => return Some(Flow::Reconnect("connection closed".into())),
    };
    let text = match msg {
        Message::Binary(b) => {
            let (Some((version, num_updates)), Some(layout)) =
                (c.expect_binary_for.take(), c.layout.as_ref())
            else {
                return None;
            };
            let weights = match layout.decode(&b) {
                Ok(w) => w,
                Err(e) => return Some(Flow::Reconnect(format!("bad weights from hub: {e}"))),
            };
            on_event(&ClientEvent::Version {
                version,
                num_updates,
                hub_accuracy: None,
            });
            if c.latest.as_ref().is_none_or(|(v, _)| version > *v) {
                c.latest = Some((version, Arc::new(weights)));
            }
            return None;
        }
        Message::Text(t) => t,
        Message::Close(_) => return Some(Flow::Reconnect("hub closed the connection".into())),
        _ => return None,
    };
    match serde_json::from_str::<ServerMessage>(&text) {
        Ok(ServerMessage::Welcome {
            version,
            tensors,
            session_id,
            trainer,
            model,
            normalisation,
            ..
        }) => {
            let layout = ModelLayout { tensors };
            let check = scorer
                .lock()
                .map_err(|_| ClientError::Poisoned("scorer"))
                .and_then(|s| s.check_layout(&layout).map_err(ClientError::Learner));
            if let Err(e) = check {
                return Some(Flow::Fatal(e));
            }
            c.layout = Some(Arc::new(layout));
            c.expect_binary_for = Some((version, 0));
            *attempt = 0;
            // Pooling: the model is not normalised yet; a `normalisation`
            // message follows when it freezes.
            c.norm = Some(normalisation.filter(|n| n.state == NormalisationState::Frozen));
            on_event(&ClientEvent::Welcome {
                trainer,
                model,
                version,
                registered: false,
                session_id,
            });
        }
        Ok(ServerMessage::Model {
            version,
            num_updates,
            ..
        }) => c.expect_binary_for = Some((version, num_updates)),
        Ok(ServerMessage::Normalisation { normalisation, .. }) => {
            c.norm = Some(normalisation.filter(|n| n.state == NormalisationState::Frozen));
        }
        Ok(ServerMessage::EvaluationRecorded {
            version, current, ..
        }) => {
            c.in_flight = c.in_flight.saturating_sub(1);
            summary.recorded += 1;
            let s = summary.last_score.clone().unwrap_or_default();
            on_event(&ClientEvent::Reported {
                version,
                accuracy: s.accuracy,
                loss: s.loss,
                bits_per_byte: s.bits_per_byte,
                num_examples: s.num_examples,
                current,
            });
        }
        Ok(ServerMessage::Error {
            code,
            message,
            fatal,
            update_id,
        }) => {
            on_event(&ClientEvent::Error {
                code: code.as_str().into(),
                message: message.clone(),
                update_id,
                fatal,
            });
            if code == ErrorCode::BadEval || code == ErrorCode::Internal {
                // That report is refused (or was not stored): the next
                // version gets a new one.
                c.in_flight = c.in_flight.saturating_sub(1);
                summary.refused += 1;
            }
            return match policy::on_error(code, fatal, false).next {
                Next::GiveUp => Some(Flow::Fatal(ClientError::Refused {
                    code: code.as_str().into(),
                    message,
                })),
                Next::Reconnect => Some(Flow::Reconnect(format!("{code}: {message}"))),
                Next::Continue => None,
            };
        }
        Ok(ServerMessage::Goodbye { reason }) => return Some(Flow::Reconnect(reason)),
        _ => {}
    }
    None
}
