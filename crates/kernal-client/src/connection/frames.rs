//! What the trainer does with each frame the hub sends once it is welcomed:
//! versions, acknowledgements, errors (by the error table's action), a
//! goodbye, a frozen normalisation.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message;

use super::flow::{refused, Flow};
use super::progress::Summary;
use super::update::Pending;
use crate::events::ClientEvent;
use crate::policy::{self, Next};
use crate::protocol::{ErrorCode, ModelLayout, Normalisation, ServerMessage};

/// The state of one connection.
pub(super) struct Conn {
    pub layout: Option<Arc<ModelLayout>>,
    pub latest: Option<(u64, Arc<Vec<f32>>)>,
    pub expect_binary_for: Option<(u64, usize, Option<f64>)>,
    /// Statistics were sent; no training until the model's normalisation
    /// is frozen.
    pub waiting_norm: bool,
    /// A `normalisation` message to hand to the learner before it trains
    /// again (it may be training when the message arrives).
    pub norm_arrived: Option<Option<Normalisation>>,
    /// The welcome's `max_message_bytes`: no update larger is sent.
    pub max_message_bytes: usize,
}

pub(super) fn handle_frame(
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
