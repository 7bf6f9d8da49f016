//! An update on the wire: the delta encoded in the trainer's chosen
//! precision, its header, and the copy kept until the hub acknowledges it.

use futures_util::SinkExt;
use kernal_core::protocol::tensors::TensorError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::options::Compression;
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
) -> Result<Vec<u8>, TensorError> {
    use safetensors::tensor::Dtype;
    let dtype = match compression {
        Compression::None => Dtype::F32,
        Compression::F16 => Dtype::F16,
        Compression::Bf16 => Dtype::BF16,
    };
    layout.encode_as(delta, None, dtype)
}

pub(super) async fn send_update(ws: &mut Ws, p: &Pending) -> Result<(), WsError> {
    let header = ClientMessage::Update {
        update_id: p.update_id.clone(),
        base_version: p.base_version,
        num_examples: p.num_examples,
        loss: Some(p.loss).filter(|l| l.is_finite()),
    };
    ws.send(Message::Text(
        serde_json::to_string(&header).unwrap_or_default(),
    ))
    .await?;
    ws.send(Message::Binary(p.payload.clone())).await
}
