//! A member that floods its rounds: for every version it sends several
//! distinct `rotate_labels` updates (fresh ids, a huge claim), over its own
//! WebSocket, the way a hostile client would: the reference client sends
//! one update per version and has no reason to learn otherwise. What the
//! hub must show is that the whole round from one trainer is one vote.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::attack::{Attack, Attacker};
use kernal_core::protocol::ModelLayout;

/// Most updates a flooding member sends per version (a scenario asking for
/// more is refused: the point is a round's worth, not a denial of service).
pub const MAX_UPDATES_PER_VERSION: u32 = 16;

pub struct Flood {
    /// Updates sent so far (read by the report while the task runs).
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub name: String,
    pub specialty: String,
    pub model: String,
    pub updates_per_version: u32,
    pub norm: Option<f32>,
    pub claim: u64,
}

/// Runs until the hub closes the connection or the task is dropped; what
/// the hub answers (acks, refusals) is read and ignored. Returns why it
/// stopped, for the report.
pub async fn run(http_url: &str, f: Flood) -> String {
    let ws = format!(
        "{}/v1/trainers/ws",
        http_url.replacen("http://", "ws://", 1)
    );
    let Ok((mut sock, _)) = tokio_tungstenite::connect_async(&ws).await else {
        return format!("could not connect to {ws}");
    };
    let hello = serde_json::json!({
        "type": "hello", "name": f.name, "specialty": f.specialty,
        "token": format!("{}-flood-token", f.name), "model": f.model,
    });
    if sock.send(Message::text(hello.to_string())).await.is_err() {
        return "hello not sent".into();
    }
    let mut attacker = Attacker::new((), Some(Attack::RotateLabels), f.norm, None);
    let mut layout: Option<ModelLayout> = None;
    let mut version: Option<u64> = None;
    let mut sent = 0u64;
    while let Some(frame) = sock.next().await {
        let frame = match frame {
            Ok(m) => m,
            Err(e) => return format!("connection ended: {e}"),
        };
        match frame {
            Message::Text(t) => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                    continue;
                };
                match v["type"].as_str() {
                    Some("welcome") => {
                        let Ok(l) = serde_json::from_value::<ModelLayout>(serde_json::json!({
                            "tensors": v["tensors"]
                        })) else {
                            return "welcome without a layout".into();
                        };
                        attacker.locate(&l);
                        layout = Some(l);
                        version = v["version"].as_u64();
                    }
                    Some("model") => version = v["version"].as_u64(),
                    Some("error") if v["fatal"] == true => {
                        return format!("refused: {}", v["code"]);
                    }
                    _ => {}
                }
            }
            Message::Binary(b) => {
                let (Some(l), Some(base)) = (layout.as_ref(), version) else {
                    continue;
                };
                let Ok(global) = l.decode(&b) else { continue };
                let attacked = attacker.rotation(&global);
                let delta: Vec<f32> = attacked.iter().zip(&global).map(|(a, g)| a - g).collect();
                let Ok(payload) = l.encode(&delta, None) else {
                    continue;
                };
                for _ in 0..f.updates_per_version.min(MAX_UPDATES_PER_VERSION) {
                    sent += 1;
                    f.sent.store(sent, std::sync::atomic::Ordering::Relaxed);
                    let header = serde_json::json!({
                        "type": "update", "update_id": format!("flood-{sent}"),
                        "base_version": base, "num_examples": f.claim,
                    });
                    if sock.send(Message::text(header.to_string())).await.is_err()
                        || sock.send(Message::binary(payload.clone())).await.is_err()
                    {
                        return format!("connection ended after {sent} updates");
                    }
                }
            }
            Message::Close(_) => return format!("closed by the hub after {sent} updates"),
            _ => {}
        }
    }
    format!("connection ended after {sent} updates")
}
