//! Reading client frames: framing rules, limits and the in-flight budget.
//!
//! Every limit is checked on a frame's header, before its payload is read:
//! before the hello is answered a connection may send only small messages
//! (`max_prehello_bytes`) and holds no budget; after it, a large message
//! (64 KiB and up) or any fragmented one holds its bytes in the budget,
//! within the connection's share, before they are read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use super::budget::{self, Claim, ReserveError};
use super::frame::{apply_mask, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use super::spool::{SpoolDir, SpoolWriter, Spooled};
use crate::protocol::ErrorCode;

/// Unfragmented payloads at least this large hold part of the budget.
pub const BUDGET_MIN: usize = 64 * 1024;

/// One event read from a trainer's connection.
#[derive(Debug)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    /// A large binary message, written to its file as it arrived.
    Spooled(Spooled),
    /// A binary message read whole but not kept (its spool file could not
    /// be written): refused as that message, the connection goes on.
    BinaryRefused(ErrorCode, String),
    Ping(Bytes),
    Pong,
    /// The peer closed; nothing more will be read.
    Close,
    /// A message broke a limit or the framing rules. After a fatal one the
    /// reader stops: the rest of the connection cannot be trusted or skipped.
    Refused(ErrorCode, String),
}

/// The limits a reader enforces.
#[derive(Debug, Clone)]
pub struct ReaderLimits {
    pub max_message: usize,
    pub max_prehello: usize,
    pub max_fragments: usize,
    /// How long a message that already holds budget may wait for more.
    pub budget_wait: Duration,
    /// Where large binary messages go instead of the heap (None: nowhere).
    pub spool: Option<SpoolDir>,
}

/// What the reader and the session share about a connection: when it last
/// showed a sign of life, whether its hello was answered, and whether it is
/// sending a message that holds budget (and how fast).
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    /// Waiting for budget: the hub, not the client, is the one not reading.
    waiting: AtomicBool,
    authenticated: AtomicBool,
    /// Reading a message that holds budget.
    holding: AtomicBool,
    /// Payload bytes received so far.
    received: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            authenticated: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            received: AtomicU64::new(0),
        })
    }

    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has been silent, zero while it waits for budget.
    pub fn silent_for(&self) -> Duration {
        if self.waiting.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// The hello was answered: the connection may send large messages now.
    pub fn authenticate(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Whether a message holding budget is being read, and the payload
    /// bytes received so far (for the upload-rate floor).
    pub fn holding(&self) -> (bool, u64) {
        (
            self.holding.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

/// Where a payload's bytes go as they are read.
enum Sink<'a> {
    Heap(&'a mut Vec<u8>),
    File(&'a mut SpoolWriter),
    Drop,
}

fn text_frame(opcode: u8) -> bool {
    opcode == OP_TEXT
}

struct Assembling {
    text: bool,
    data: Vec<u8>,
    permits: Vec<OwnedSemaphorePermit>,
    held_kib: u32,
    fragments: usize,
    /// Whether the connection was authenticated at the message's first
    /// frame: the limits of that moment hold for the whole message.
    authed: bool,
}

/// Reads frames from a request body stream.
pub struct FrameReader<S> {
    stream: S,
    activity: Arc<Activity>,
    buf: BytesMut,
    limits: ReaderLimits,
    claim: Claim,
    partial: Option<Assembling>,
    done: bool,
}

pub type ReadError = actix_http::error::PayloadError;

impl<S> FrameReader<S>
where
    S: Stream<Item = Result<Bytes, ReadError>> + Unpin,
{
    pub fn new(stream: S, activity: Arc<Activity>, limits: ReaderLimits, claim: Claim) -> Self {
        FrameReader {
            stream,
            activity,
            buf: BytesMut::new(),
            limits,
            claim,
            partial: None,
            done: false,
        }
    }

    /// The largest message this connection may send once authenticated.
    pub fn max_message(&self) -> usize {
        self.limits.max_message.min(self.claim.share_bytes())
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        match self.stream.next().await {
            Some(Ok(chunk)) => {
                self.activity.touch();
                self.activity
                    .received
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Some(chunk)
            }
            Some(Err(e)) => {
                log::debug!("connection read error: {e}");
                None
            }
            None => None,
        }
    }

    /// Reads until `buf` holds `n` bytes; false at the end of the stream.
    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            match self.next_chunk().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return false,
            }
        }
        true
    }

    /// Appends `len` unmasked payload bytes to `out` (or drops them when
    /// `out` is None), reading straight from the stream's chunks once the
    /// buffered bytes are used up, each piece unmasked while still in cache
    /// (not the whole message afterwards). False if the connection ended.
    async fn payload_into(&mut self, out: Option<&mut Vec<u8>>, len: usize, mask: [u8; 4]) -> bool {
        let sink = match out {
            Some(v) => Sink::Heap(v),
            None => Sink::Drop,
        };
        self.payload_to(sink, len, mask).await
    }

    /// [`payload_into`](Self::payload_into) for any [`Sink`].
    async fn payload_to(&mut self, mut out: Sink<'_>, len: usize, mask: [u8; 4]) -> bool {
        fn append(out: &mut Sink<'_>, piece: &[u8], mask: [u8; 4], done: usize) {
            match out {
                Sink::Heap(o) => {
                    let at = o.len();
                    o.extend_from_slice(piece);
                    apply_mask(&mut o[at..], mask, done);
                }
                Sink::File(w) => w.write(piece, mask, done),
                Sink::Drop => {}
            }
        }
        if let Sink::Heap(o) = &mut out {
            o.reserve_exact(len);
        }
        let take = self.buf.len().min(len);
        append(&mut out, &self.buf[..take], mask, 0);
        self.buf.advance(take);
        let mut got = take;
        while got < len {
            let Some(chunk) = self.next_chunk().await else {
                return false;
            };
            let take = chunk.len().min(len - got);
            append(&mut out, &chunk[..take], mask, got);
            got += take;
            if take < chunk.len() {
                self.buf.extend_from_slice(&chunk[take..]);
            }
        }
        true
    }

    /// Reads a large binary message into its spool file (or, if the file
    /// could not be made or written, reads and drops it and refuses it: the
    /// connection goes on).
    async fn spooled(
        &mut self,
        created: std::io::Result<SpoolWriter>,
        len: usize,
        mask: [u8; 4],
        permits: Vec<OwnedSemaphorePermit>,
    ) -> Option<Incoming> {
        let mut w = match created {
            Ok(w) => w,
            Err(e) => {
                log::warn!("could not spool a {len}-byte message: {e}");
                let why = format!("the update could not be stored: {e}");
                if !self.payload_into(None, len, mask).await {
                    self.done = true;
                    return None;
                }
                return Some(Incoming::BinaryRefused(ErrorCode::StorageUnavailable, why));
            }
        };
        if !self.payload_to(Sink::File(&mut w), len, mask).await {
            self.done = true;
            return None;
        }
        Some(match w.finish(permits) {
            Ok(s) => Incoming::Spooled(s),
            Err((code, why)) => {
                log::warn!("could not spool a {len}-byte message: {why}");
                Incoming::BinaryRefused(code, why)
            }
        })
    }

    fn fatal(&mut self, code: ErrorCode, message: String) -> Option<Incoming> {
        self.done = true;
        self.partial = None;
        Some(Incoming::Refused(code, message))
    }

    /// The next frame header, consumed from `buf`; `Err` names what is
    /// wrong with it, `Ok(None)` is the end of the stream.
    async fn header(
        &mut self,
    ) -> Result<Option<(FrameHeader, u64)>, tokio_tungstenite::tungstenite::Error> {
        loop {
            let mut cursor = std::io::Cursor::new(&self.buf[..]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some(h)) => {
                    let used = cursor.position() as usize;
                    self.buf.advance(used);
                    return Ok(Some(h));
                }
                Ok(None) => {
                    let want = self.buf.len() + 1;
                    if !self.fill(want).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a payload into `out`; `None` (and the reader done) if the
    /// connection ended first.
    async fn payload(&mut self, out: &mut Vec<u8>, len: usize, mask: [u8; 4]) -> Option<()> {
        if self.payload_into(Some(out), len, mask).await {
            Some(())
        } else {
            self.done = true;
            None
        }
    }

    /// Reads and drops a frame's payload (never buffering it), then refuses
    /// it; the connection goes on (`bad_json`, as for any malformed message).
    async fn skip(&mut self, len: usize, why: &str) -> Option<Incoming> {
        if !self.payload_into(None, len, [0; 4]).await {
            self.done = true;
            return None;
        }
        Some(Incoming::Refused(ErrorCode::BadJson, why.to_string()))
    }

    /// Reserves `kib` more of the budget for the message being read.
    async fn reserve(
        &mut self,
        kib: u32,
        already_holding: bool,
    ) -> Result<Vec<OwnedSemaphorePermit>, Option<Incoming>> {
        if kib == 0 {
            return Ok(Vec::new());
        }
        self.activity.waiting.store(true, Ordering::Relaxed);
        // Waiting while holding part of the budget is bounded: two
        // connections each holding half could otherwise wait for ever.
        let deadline = already_holding.then_some(self.limits.budget_wait);
        let r = self.claim.reserve(kib, deadline).await;
        self.activity.waiting.store(false, Ordering::Relaxed);
        self.activity.touch();
        match r {
            Ok(p) => Ok(p),
            Err(ReserveError::TimedOut) => Err(self.fatal(
                ErrorCode::Busy,
                format!(
                    "this fragmented message waited {} s for room in the hub's in-flight budget; send it again later",
                    self.limits.budget_wait.as_secs()
                ),
            )),
            Err(ReserveError::Closed) => Err(self.fatal(
                ErrorCode::ShuttingDown,
                "the hub is stopping".into(),
            )),
        }
    }

    /// The next event, or `None` once the connection has ended. Not
    /// cancel-safe: a frame header is consumed before its payload is read,
    /// so the future must be driven to completion (a stream does that).
    pub async fn next(&mut self) -> Option<Incoming> {
        let r = self.next_inner().await;
        self.activity.holding.store(false, Ordering::Relaxed);
        if self.buf.is_empty() {
            // Whole chunks are buffered to read a frame header, so the buffer
            // grows to a chunk's size; an idle connection keeps none of it
            // (10,000 trainers' readers held tens of KiB each).
            self.buf = BytesMut::new();
        }
        if r.is_none() {
            // The connection ended mid-message: what it held goes back now,
            // not when the reader is dropped.
            self.partial = None;
        }
        r
    }

    async fn next_inner(&mut self) -> Option<Incoming> {
        loop {
            if self.done {
                return None;
            }
            let (h, len) = match self.header().await {
                Ok(Some(h)) => h,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => return self.fatal(ErrorCode::BadFrame, format!("bad frame header: {e}")),
            };
            let opcode: u8 = h.opcode.into();
            if h.rsv1 || h.rsv2 || h.rsv3 {
                return self.fatal(
                    ErrorCode::BadFrame,
                    "frame uses reserved bits no extension was agreed for".into(),
                );
            }
            let Some(mask) = h.mask else {
                return self.fatal(
                    ErrorCode::BadFrame,
                    "client frames must be masked (RFC 6455 section 5.1)".into(),
                );
            };
            let control = opcode & 0x08 != 0;
            if control && (!h.is_final || len > 125) {
                return self.fatal(
                    ErrorCode::BadFrame,
                    "control frames must be whole and at most 125 bytes".into(),
                );
            }
            if !control {
                let authed = match &self.partial {
                    Some(p) if opcode == OP_CONT => p.authed,
                    _ => self.activity.authenticated(),
                };
                let already = match &self.partial {
                    Some(p) if opcode == OP_CONT => p.data.len() as u64,
                    _ => 0,
                };
                let limit = if authed {
                    self.max_message()
                } else {
                    self.limits.max_prehello
                };
                if len.saturating_add(already) > limit as u64 {
                    let why = if !authed {
                        format!(
                            "before the hello is answered a message may have at most {limit} bytes"
                        )
                    } else if limit < self.limits.max_message {
                        format!(
                            "message exceeds this connection's share of the hub's in-flight budget ({limit} bytes)"
                        )
                    } else {
                        format!("message exceeds the hub's limit of {limit} bytes")
                    };
                    return self.fatal(ErrorCode::MessageTooLarge, why);
                }
            }
            let len = len as usize;
            match opcode {
                OP_PING | OP_PONG | OP_CLOSE => {
                    let mut p = Vec::with_capacity(len);
                    self.payload(&mut p, len, mask).await?;
                    return Some(match opcode {
                        OP_PING => Incoming::Ping(Bytes::from(p)),
                        OP_PONG => Incoming::Pong,
                        _ => {
                            self.done = true;
                            Incoming::Close
                        }
                    });
                }
                OP_TEXT | OP_BINARY if self.partial.is_some() => {
                    // The half-assembled message is dropped with this frame.
                    self.partial = None;
                    return self
                        .skip(
                            len,
                            "a new message started before the previous fragmented one ended",
                        )
                        .await;
                }
                OP_TEXT | OP_BINARY => {
                    let authed = self.activity.authenticated();
                    // Every fragmented message holds its bytes in the budget
                    // whatever its fragment sizes; whole ones from 64 KiB.
                    let counted = authed && (!h.is_final || len >= BUDGET_MIN);
                    let (permits, held_kib) = if counted {
                        let kib = budget::kib_for(len.max(1));
                        match self.reserve(kib, false).await {
                            Ok(p) => (p, kib),
                            Err(refusal) => return refusal,
                        }
                    } else {
                        (Vec::new(), 0)
                    };
                    self.activity.holding.store(counted, Ordering::Relaxed);
                    let spool = match &self.limits.spool {
                        Some(sp) if !text_frame(opcode) && h.is_final && len >= sp.min_bytes => {
                            Some(SpoolWriter::create(sp))
                        }
                        _ => None,
                    };
                    if let Some(created) = spool {
                        return self.spooled(created, len, mask, permits).await;
                    }
                    let mut data = Vec::new();
                    self.payload(&mut data, len, mask).await?;
                    let text = opcode == OP_TEXT;
                    if h.is_final {
                        let bytes = budget::hold(data, permits);
                        return Some(if text {
                            Incoming::Text(bytes)
                        } else {
                            Incoming::Binary(bytes)
                        });
                    }
                    self.partial = Some(Assembling {
                        text,
                        data,
                        permits,
                        held_kib,
                        fragments: 1,
                        authed,
                    });
                }
                OP_CONT => {
                    let Some(mut p) = self.partial.take() else {
                        return self
                            .skip(len, "a continuation frame arrived with no message started")
                            .await;
                    };
                    p.fragments += 1;
                    if p.fragments > self.limits.max_fragments {
                        let max = self.limits.max_fragments;
                        return self.fatal(
                            ErrorCode::TooManyFragments,
                            format!("message arrived in more than {max} fragments"),
                        );
                    }
                    if p.authed {
                        let need = budget::kib_for(p.data.len() + len);
                        let more = need.saturating_sub(p.held_kib);
                        match self.reserve(more, true).await {
                            Ok(permits) => {
                                p.permits.extend(permits);
                                p.held_kib += more;
                            }
                            Err(refusal) => return refusal,
                        }
                        self.activity.holding.store(true, Ordering::Relaxed);
                    }
                    // Grow by doubling (up to the message limit), not by each
                    // fragment: a message of many small fragments must not
                    // be copied over again for every one.
                    let needed = p.data.len() + len;
                    if needed > p.data.capacity() {
                        let grown = (p.data.capacity() * 2).min(self.max_message()).max(needed);
                        p.data.reserve_exact(grown - p.data.len());
                    }
                    self.payload(&mut p.data, len, mask).await?;
                    if h.is_final {
                        let bytes = budget::hold(p.data, p.permits);
                        return Some(if p.text {
                            Incoming::Text(bytes)
                        } else {
                            Incoming::Binary(bytes)
                        });
                    }
                    self.partial = Some(p);
                }
                other => {
                    return self.fatal(
                        ErrorCode::BadFrame,
                        format!("unknown WebSocket opcode {other:#x}"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
