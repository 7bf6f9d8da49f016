//! An update on the wire: the delta encoded in the trainer's chosen
//! precision, its header, and the copy kept until the hub acknowledges it.

use futures_util::SinkExt;
use rand::Rng;
use tokio_tungstenite::tungstenite::Message;

use super::options::{Behaviour, Compression};
use super::transport::Ws;
use crate::protocol::{ClientMessage, ModelLayout};

/// The update sent and not yet answered.
pub(super) struct Pending {
    pub update_id: String,
    pub base_version: u64,
    pub num_examples: u64,
    pub loss: f64,
    pub payload: Vec<u8>,
}

pub(super) fn encode_update(
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

pub(super) async fn send_update(ws: &mut Ws, p: &Pending) -> Result<(), String> {
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
