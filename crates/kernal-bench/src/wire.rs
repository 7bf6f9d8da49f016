//! What a synthetic trainer writes: masked WebSocket frames, and an update
//! streamed without a masked copy of its payload.

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use kernal_hub::hub::ws::{apply_mask, frame_header};

/// The synthetic trainers speak WebSocket over a plain socket (or TLS): a
/// general client library would copy each 4 MB update again on every send
/// and buffer each received model, and on a 2-core machine that CPU is
/// taken from the hub being measured. Every frame gets a fresh random mask
/// (RFC 6455 section 5.3); a large payload is masked in 64 KiB pieces as it
/// is written, so no trainer holds a masked copy of it.
pub(crate) struct Wire {
    /// The update payload, unmasked, shared by every trainer.
    pub(crate) payload: Arc<Vec<u8>>,
}

/// Payloads up to this size go out in one write with their headers.
const ONE_WRITE: usize = 64 * 1024;

impl Wire {
    /// A whole frame with a fresh mask.
    pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask: [u8; 4] = rand::random();
        let mut f = frame_header(opcode, payload.len(), Some(mask));
        let start = f.len();
        f.extend_from_slice(payload);
        apply_mask(&mut f[start..], mask, 0);
        f
    }

    /// Writes an update: its JSON header frame, then the binary frame.
    pub(crate) async fn send_update(
        &self,
        wr: &mut (impl AsyncWrite + Unpin),
        header: &[u8],
        scratch: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let mask: [u8; 4] = rand::random();
        let p = &self.payload;
        scratch.clear();
        scratch.extend_from_slice(header);
        scratch.extend_from_slice(&frame_header(0x2, p.len(), Some(mask)));
        if p.len() <= ONE_WRITE {
            // One write for the three pieces: three woke the hub's
            // connection thread up to three times per update.
            let start = scratch.len();
            scratch.extend_from_slice(p);
            apply_mask(&mut scratch[start..], mask, 0);
            return wr.write_all(scratch).await;
        }
        wr.write_all(scratch).await?;
        for (k, piece) in p.chunks(ONE_WRITE).enumerate() {
            scratch.clear();
            scratch.extend_from_slice(piece);
            apply_mask(scratch, mask, k * ONE_WRITE);
            wr.write_all(scratch).await?;
        }
        Ok(())
    }
}
