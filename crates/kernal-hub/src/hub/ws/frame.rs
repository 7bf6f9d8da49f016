//! The bytes of a WebSocket frame (RFC 6455 section 5.2): opcodes, the
//! header of a whole frame, and masking. Shared by the reader, the outbox,
//! the tests and the benchmark, which is why it sits apart from both.

use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A whole-frame header; `mask` is for client frames (tests, the benchmark).
pub fn frame_header(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let h = FrameHeader {
        opcode: OpCode::from(opcode),
        mask,
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(14);
    // Writing into a Vec cannot fail.
    let _ = h.format(len as u64, &mut out);
    out
}

/// XORs `buf` with the mask, the mask starting at byte `offset % 4`: how a
/// client masks and the hub unmasks (RFC 6455 section 5.3).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = [0u8; 8];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(offset + i) % 4];
    }
    let m64 = u64::from_ne_bytes(m);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ m64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_at_any_offset() {
        let mask = [1, 2, 3, 4];
        let data: Vec<u8> = (0..37).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        for split in 0..data.len() {
            let mut v = data.clone();
            let (a, b) = v.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(v, whole, "split at {split}");
        }
        apply_mask(&mut whole, mask, 0);
        assert_eq!(whole, data);
    }
}
