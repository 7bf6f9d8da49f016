//! One connection's work once welcomed: resend what is unacknowledged,
//! evaluate and train on each new version while still reading the hub's
//! frames, send the update, and leave cleanly when the work is done.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::error::ClientError;
use super::flow::Flow;
use super::frames::handle_frame;
use super::options::ClientOptions;
use super::progress::Progress;
use super::update::{encode_update, send_update, Pending};
use super::welcome::open;
use crate::events::ClientEvent;
use crate::policy;
use crate::pooling::{apply_normalisation, join_pool};
use crate::protocol::{ClientMessage, NormalisationState};
use crate::{Base, Learner, Trained};

/// Runs one connection; the [`Flow`] says what the reconnecting loop does next.
pub(super) async fn run_connection<L: Learner>(
    opts: &ClientOptions,
    url: &str,
    learner: &Arc<std::sync::Mutex<L>>,
    progress: &mut Progress,
    on_event: &mut (impl FnMut(&ClientEvent) + Send),
) -> Flow {
    let Progress {
        summary,
        pending,
        attempt,
    } = progress;
    let (mut ws, mut conn, layout) = match open(opts, url, learner, attempt, on_event).await {
        Ok(opened) => opened,
        Err(flow) => return flow,
    };
    let mut resent = false;
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
                match join_pool(&mut ws, learner, n, on_event).await {
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
        // The learner may keep an older base, or let this version pass.
        let due = match due {
            Some((version, global)) => match learner.lock() {
                Ok(mut l) => {
                    let newest = Base {
                        version,
                        weights: global.clone(),
                    };
                    l.choose_base(&newest).map(|base| (version, global, base))
                }
                Err(_) => return Flow::Fatal(ClientError::Poisoned("learner")),
            },
            None => None,
        };
        if let Some((version, global, chosen)) = due {
            // Federated evaluation of the received version.
            let (eval_learner, eval_weights) = (learner.clone(), global.clone());
            let eval = tokio::task::spawn_blocking(move || {
                eval_learner
                    .lock()
                    .map_err(|_| ClientError::Poisoned("learner"))
                    .and_then(|mut l| {
                        l.evaluate(&eval_weights, version)
                            .map_err(ClientError::Learner)
                    })
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
                Ok(Err(e)) => return Flow::Fatal(e),
                Err(e) => return Flow::Fatal(ClientError::Task(e)),
            }
            let Base {
                version: base_version,
                weights: base,
            } = chosen;
            let (train_learner, base_weights) = (learner.clone(), base.clone());
            let started = std::time::Instant::now();
            let train = tokio::task::spawn_blocking(move || {
                train_learner
                    .lock()
                    .map_err(|_| ClientError::Poisoned("learner"))
                    .and_then(|mut l| {
                        l.train(&base_weights, base_version)
                            .map_err(ClientError::Learner)
                    })
            });
            tokio::pin!(train);
            // Keep reading (new versions, pings) while the learner works.
            let trained: Trained = loop {
                tokio::select! {
                    r = &mut train => match r {
                        Ok(Ok(t)) => break t,
                        Ok(Err(e)) => return Flow::Fatal(e),
                        Err(e) => return Flow::Fatal(ClientError::Task(e)),
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
                return Flow::Fatal(ClientError::WrongWeights {
                    got: trained.weights.len(),
                    want: base.len(),
                });
            }
            let mut delta: Vec<f32> = trained
                .weights
                .iter()
                .zip(base.iter())
                .map(|(a, b)| a - b)
                .collect();
            match learner.lock() {
                Ok(mut l) => l.adjust_delta(&mut delta),
                Err(_) => return Flow::Fatal(ClientError::Poisoned("learner")),
            }
            let payload = match encode_update(&layout, &delta, opts.compression) {
                Ok(p) => p,
                Err(e) => return Flow::Fatal(ClientError::Encode(e)),
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
