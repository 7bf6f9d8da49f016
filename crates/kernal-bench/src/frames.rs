//! What a synthetic trainer reads: server frames, text kept and binary
//! dropped as it arrives (a synthetic trainer needs only the version number
//! from the JSON).

use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use super::error::{err, BenchError};

/// Drops up to `n` received bytes without copying them out of the kernel
/// (`MSG_TRUNC` on a TCP socket): a synthetic trainer never looks at the
/// weights, and copying them would take CPU from the hub being measured.
async fn discard(sock: &OwnedReadHalf, n: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let stream: &TcpStream = sock.as_ref();
    loop {
        stream.readable().await?;
        let fd = stream.as_raw_fd();
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: a null buffer is allowed with MSG_TRUNC on TCP sockets:
            // the kernel discards the bytes instead of copying them.
            let got = unsafe {
                libc::recv(
                    fd,
                    std::ptr::null_mut(),
                    n,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            if got < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(got as usize)
            }
        });
        match r {
            Ok(got) => return Ok(got),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

pub(crate) enum ReadSide {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Reads server frames, keeping text payloads and discarding binary ones
/// (a synthetic trainer needs only the version number from the JSON).
pub(crate) struct FrameIn {
    pub(crate) sock: ReadSide,
    pub(crate) buf: Vec<u8>,
}

pub(crate) enum In {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Close,
}

impl FrameIn {
    async fn read_some(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.sock {
            ReadSide::Plain(r) => r.read(out).await,
            ReadSide::Tls(r) => r.read(out).await,
        }
    }

    async fn need(&mut self, n: usize) -> Result<bool, BenchError> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 8192];
            let got = self.read_some(&mut chunk).await.map_err(err)?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
        Ok(true)
    }

    /// Drops `n` bytes of payload still to come.
    async fn skip(&mut self, mut left: usize) -> Result<bool, BenchError> {
        let mut scratch = Vec::new();
        while left > 0 {
            let got = match &self.sock {
                ReadSide::Plain(r) => discard(r, left).await.map_err(err)?,
                ReadSide::Tls(_) => {
                    scratch.resize(left.min(64 * 1024), 0);
                    self.read_some(&mut scratch).await.map_err(err)?
                }
            };
            if got == 0 {
                return Ok(false);
            }
            left -= got;
        }
        Ok(true)
    }

    pub(crate) async fn next(&mut self) -> Result<Option<In>, BenchError> {
        let (opcode, len) = loop {
            let mut cursor = std::io::Cursor::new(&self.buf[..]);
            match FrameHeader::parse(&mut cursor).map_err(err)? {
                Some((h, len)) => {
                    let used = cursor.position() as usize;
                    self.buf.drain(..used);
                    break (u8::from(h.opcode), len as usize);
                }
                None => {
                    let want = self.buf.len() + 1;
                    if !self.need(want).await? {
                        return Ok(None);
                    }
                }
            }
        };
        if opcode == 0x2 {
            // Discard the weights without keeping them.
            let have = self.buf.len().min(len);
            self.buf.drain(..have);
            if !self.skip(len - have).await? {
                return Ok(None);
            }
            return Ok(Some(In::Binary));
        }
        if !self.need(len).await? {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf.drain(..len).collect();
        Ok(Some(match opcode {
            0x1 => In::Text(payload),
            0x9 => In::Ping(payload),
            0x8 => In::Close,
            _ => In::Text(Vec::new()),
        }))
    }
}

/// The fields a synthetic trainer reads from the hub's JSON, borrowed.
#[derive(serde::Deserialize)]
pub(crate) struct Reply<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    pub(crate) version: Option<u64>,
    pub(crate) update_id: Option<&'a str>,
}
