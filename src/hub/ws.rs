//! The server side of RFC 6455 for the trainer endpoint, written for large
//! binary messages shared by many connections.
//!
//! `actix-web-actors` encodes every outgoing message into each connection's
//! own buffer (a 40 MB model sent to 50 trainers is 2 GB of copies held at
//! once) and reads every incoming frame whole with no limit across
//! connections. Here the outgoing side hands the dispatcher slices of one
//! shared buffer, a bounded chunk at a time, and the incoming side asks a
//! hub-wide byte budget before it reads a large payload, so a burst of big
//! updates waits in the kernel's socket buffers instead of in the heap.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::hub::metrics::HotMetrics;
use crate::protocol::ErrorCode;

/// Largest slice of a payload handed to the HTTP dispatcher at once: it copies
/// each slice into the connection's write buffer, so this bounds that buffer.
const OUT_CHUNK: usize = 256 * 1024;
/// Frames smaller than this are written with their header in one piece.
const SMALL_FRAME: usize = 16 * 1024;
/// Payloads at least this large must hold part of the in-flight budget.
const BUDGET_MIN: usize = 64 * 1024;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

// ------------------------------------------------------------------ output

enum OutFrame {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close(u16, String),
    /// A new version: its JSON frame and weights frame go out back to back.
    Model {
        json: Bytes,
        weights: Bytes,
    },
    /// The `welcome` and the weights it names; never replaced by a newer model.
    Welcome {
        json: Bytes,
        weights: Bytes,
    },
}

#[derive(Default)]
struct OutQueue {
    frames: VecDeque<OutFrame>,
    /// No frame is accepted after a close frame or after the session ended.
    closed: bool,
    /// False until the welcome is queued: a version pushed before it is held
    /// back so that the trainer always hears `welcome` first.
    ready: bool,
    /// Updates of this trainer the hub has not answered yet. While one is in
    /// flight a new version is held back and only the newest goes out once
    /// the answer has: a trainer busy uploading cannot use the versions in
    /// between, and with a thousand trainers pushing them all would spend
    /// the hub's time on weights nobody trains on.
    in_flight: usize,
    /// When a version last went out to a trainer that has not sent an
    /// update since: it is still training on that one and cannot use a
    /// newer one before it is done, so newer versions wait (see
    /// [`Outbox::hold`]).
    working_since: Option<Instant>,
    held: Option<OutFrame>,
    waker: Option<Waker>,
}

impl OutQueue {
    /// Whether a new version may go out now rather than wait as `held`.
    fn may_push(&self, hold: Duration, now: Instant) -> bool {
        self.ready
            && self.in_flight == 0
            && self
                .working_since
                .is_none_or(|t| now.saturating_duration_since(t) >= hold)
    }

    /// The held version if it may go out now, marked as what the trainer
    /// works on next.
    fn release(&mut self, hold: Duration, now: Instant) -> Option<OutFrame> {
        if self.held.is_none() || !self.may_push(hold, now) {
            return None;
        }
        self.working_since = Some(now);
        self.held.take()
    }

    /// When the held version goes out without an answer: only while nothing
    /// but the hold keeps it (the welcome and an update's answer release it
    /// themselves).
    fn hold_ends(&self, hold: Duration) -> Option<Instant> {
        match (&self.held, self.ready, self.in_flight, self.working_since) {
            (Some(_), true, 0, Some(t)) => Some(t + hold),
            _ => None,
        }
    }
}

/// What a session has to send. Shared (and `Send`) so the hub can push a new
/// version into every session directly instead of through a thousand actor
/// messages.
pub struct Outbox {
    q: Mutex<OutQueue>,
    /// How long a version sent to a trainer that has not answered it yet
    /// holds back newer ones; zero sends every version as it is made.
    hold: Duration,
    /// Where the weights bytes sent over every connection are counted.
    hot: Arc<HotMetrics>,
}

impl Outbox {
    pub fn new(hot: Arc<HotMetrics>, hold: Duration) -> Arc<Outbox> {
        Arc::new(Outbox {
            q: Mutex::new(OutQueue::default()),
            hold,
            hot,
        })
    }

    fn push(&self, f: OutFrame) {
        let Ok(mut q) = self.q.lock() else { return };
        if q.closed {
            return;
        }
        if let OutFrame::Close(..) = f {
            q.closed = true;
        }
        q.frames.push_back(f);
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }

    pub fn text(&self, s: String) {
        self.push(OutFrame::Text(Bytes::from(s)));
    }

    pub fn binary(&self, b: Bytes) {
        self.push(OutFrame::Binary(b));
    }

    pub fn ping(&self) {
        self.push(OutFrame::Ping(Bytes::new()));
    }

    pub fn pong(&self, b: Bytes) {
        self.push(OutFrame::Pong(b));
    }

    /// Queues a close frame; nothing sent after it goes out.
    pub fn close(&self, code: u16, reason: &str) {
        // Close reasons are limited to 123 bytes by the protocol.
        let mut cut = reason.len().min(120);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        self.push(OutFrame::Close(code, reason[..cut].to_string()));
    }

    /// Queues a new version. A version still waiting in the queue is dropped
    /// for it: a trainer that cannot keep up gets the newest weights next,
    /// not a backlog of versions it would only skip through.
    pub fn model(&self, json: Bytes, weights: Bytes) {
        if let Ok(mut q) = self.q.lock() {
            let now = Instant::now();
            if !q.may_push(self.hold, now) {
                q.held = Some(OutFrame::Model { json, weights });
                return;
            }
            q.frames.retain(|f| !matches!(f, OutFrame::Model { .. }));
            q.working_since = Some(now);
        }
        self.push(OutFrame::Model { json, weights });
    }

    /// Queues the `welcome` with its weights, then any version that was
    /// pushed while the hello was being checked.
    pub fn welcome(&self, json: Bytes, weights: Bytes) {
        self.push(OutFrame::Welcome { json, weights });
        if let Ok(mut q) = self.q.lock() {
            q.ready = true;
            q.working_since = Some(Instant::now());
        }
        self.release_held();
    }

    /// An update of this trainer went to the hub.
    pub fn update_started(&self) {
        if let Ok(mut q) = self.q.lock() {
            q.in_flight += 1;
            q.working_since = None;
        }
    }

    /// An update of this trainer was refused by its session (bad header,
    /// shape, NaN...): like an answer, it ends the wait for the version the
    /// trainer was working on, so the newest goes out after the error.
    pub fn update_refused(&self) {
        if let Ok(mut q) = self.q.lock() {
            q.working_since = None;
        }
        self.release_held();
    }

    /// The hub's answer to an update (ack or error) has been queued.
    pub fn update_answered(&self) {
        if let Ok(mut q) = self.q.lock() {
            q.in_flight = q.in_flight.saturating_sub(1);
        }
        self.release_held();
    }

    fn release_held(&self) {
        let held = match self.q.lock() {
            Ok(mut q) => q.release(self.hold, Instant::now()),
            Err(_) => None,
        };
        if let Some(f) = held {
            self.push(f);
        }
    }

    /// Ends the stream once what is queued has gone out.
    pub fn finish(&self) {
        if let Ok(mut q) = self.q.lock() {
            q.closed = true;
            if let Some(w) = q.waker.take() {
                w.wake();
            }
        }
    }
}

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

/// The response body of a WebSocket connection: frames from its [`Outbox`].
pub struct OutboxBody {
    outbox: Arc<Outbox>,
    /// The rest of a large payload, handed out in slices.
    rest: Bytes,
    /// The weights frame of a model whose JSON frame just went out.
    then: Option<Bytes>,
    ended: bool,
    /// Wakes the body when a version held back only by [`Outbox::hold`] may
    /// go out although the trainer has not answered the last one.
    hold_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl OutboxBody {
    pub fn new(outbox: Arc<Outbox>) -> Self {
        OutboxBody {
            outbox,
            rest: Bytes::new(),
            then: None,
            ended: false,
            hold_timer: None,
        }
    }

    /// A whole frame, or its header with the payload left in `rest`.
    fn start(&mut self, opcode: u8, payload: Bytes) -> Bytes {
        let mut h = frame_header(opcode, payload.len(), None);
        if payload.len() < SMALL_FRAME {
            h.extend_from_slice(&payload);
        } else {
            self.rest = payload;
        }
        Bytes::from(h)
    }
}

impl Stream for OutboxBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.rest.is_empty() {
            let n = this.rest.len().min(OUT_CHUNK);
            return Poll::Ready(Some(Ok(this.rest.split_to(n))));
        }
        if let Some(w) = this.then.take() {
            this.outbox.hot.bytes_out(w.len() as u64);
            return Poll::Ready(Some(Ok(this.start(OP_BINARY, w))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let next = {
            let Ok(mut q) = this.outbox.q.lock() else {
                return Poll::Ready(None);
            };
            match q.frames.pop_front() {
                Some(f) => f,
                None if q.closed => return Poll::Ready(None),
                None => {
                    if let Some(f) = q.release(this.outbox.hold, Instant::now()) {
                        f
                    } else {
                        // A version waiting only for the hold goes out when
                        // it ends, unless the trainer answers first.
                        q.waker = Some(cx.waker().clone());
                        let until = q.hold_ends(this.outbox.hold);
                        drop(q);
                        match until {
                            Some(until) => {
                                let until = tokio::time::Instant::from_std(until);
                                let t = this.hold_timer.get_or_insert_with(|| {
                                    Box::pin(tokio::time::sleep_until(until))
                                });
                                if t.deadline() != until {
                                    t.as_mut().reset(until);
                                }
                                if std::future::Future::poll(t.as_mut(), cx).is_ready() {
                                    cx.waker().wake_by_ref();
                                }
                            }
                            None => this.hold_timer = None,
                        }
                        return Poll::Pending;
                    }
                }
            }
        };
        let out = match next {
            OutFrame::Text(b) => this.start(OP_TEXT, b),
            OutFrame::Binary(b) => this.start(OP_BINARY, b),
            OutFrame::Ping(b) => this.start(OP_PING, b),
            OutFrame::Pong(b) => this.start(OP_PONG, b),
            OutFrame::Close(code, reason) => {
                this.ended = true;
                let mut p = BytesMut::with_capacity(2 + reason.len());
                p.put_u16(code);
                p.extend_from_slice(reason.as_bytes());
                this.start(OP_CLOSE, p.freeze())
            }
            OutFrame::Model { json, weights } | OutFrame::Welcome { json, weights } => {
                this.then = Some(weights);
                this.start(OP_TEXT, json)
            }
        };
        Poll::Ready(Some(Ok(out)))
    }
}

// ------------------------------------------------------------------- input

/// One event read from a trainer's connection.
#[derive(Debug)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The peer closed; nothing more will be read.
    Close,
    /// A message broke a limit or the framing rules. After a fatal one the
    /// reader stops: the rest of the connection cannot be trusted or skipped.
    Refused(ErrorCode, String),
}

/// Bytes of large payloads the hub holds at once, over all connections.
#[derive(Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    kib: u32,
}

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        let kib = (bytes / 1024).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        Budget {
            sem: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    fn want(&self, len: usize) -> u32 {
        (len.div_ceil(1024) as u64).min(self.kib as u64) as u32
    }

    /// Waits for room; a message larger than the whole budget waits until it
    /// has the budget to itself.
    async fn acquire(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        self.sem
            .clone()
            .acquire_many_owned(self.want(len))
            .await
            .ok()
    }

    /// Later fragments of a message take room if there is some, and go
    /// without otherwise: waiting while holding the earlier fragments' room
    /// could deadlock connections against each other.
    fn try_acquire(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_many_owned(self.want(len)).ok()
    }

    /// Bytes currently held by payloads.
    pub fn in_use(&self) -> usize {
        (self.kib as usize - self.sem.available_permits()) * 1024
    }
}

/// A received payload and the budget it holds, released when the last
/// `Bytes` pointing into it is dropped.
struct Held {
    data: Vec<u8>,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// XORs `buf` with the mask, the mask starting at byte `offset % 4`.
fn unmask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
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

struct Assembling {
    text: bool,
    data: Vec<u8>,
    permits: Vec<OwnedSemaphorePermit>,
    fragments: usize,
}

/// When a connection last showed a sign of life, for the heartbeat. A
/// connection waiting for budget is alive: it is the hub that is not reading.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    waiting: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
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
}

/// Reads frames from a request body stream.
pub struct FrameReader<S> {
    stream: S,
    activity: Arc<Activity>,
    buf: BytesMut,
    max_message: usize,
    max_fragments: usize,
    budget: Budget,
    partial: Option<Assembling>,
    done: bool,
}

pub type ReadError = actix_http::error::PayloadError;

impl<S> FrameReader<S>
where
    S: Stream<Item = Result<Bytes, ReadError>> + Unpin,
{
    pub fn new(
        stream: S,
        activity: Arc<Activity>,
        max_message: usize,
        max_fragments: usize,
        budget: Budget,
    ) -> Self {
        FrameReader {
            stream,
            activity,
            buf: BytesMut::new(),
            max_message,
            max_fragments,
            budget,
            partial: None,
            done: false,
        }
    }

    /// Reads until `buf` holds `n` bytes; false at the end of the stream.
    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            match self.stream.next().await {
                Some(Ok(chunk)) => {
                    self.activity.touch();
                    self.buf.extend_from_slice(&chunk)
                }
                Some(Err(e)) => {
                    log::debug!("connection read error: {e}");
                    return false;
                }
                None => return false,
            }
        }
        true
    }

    /// Appends `len` unmasked payload bytes to `out`, reading straight from
    /// the stream's chunks once the buffered bytes are used up.
    async fn payload_into(&mut self, out: &mut Vec<u8>, len: usize, mask: [u8; 4]) -> bool {
        let start = out.len();
        let end = start + len;
        out.reserve_exact(len);
        let take = self.buf.len().min(len);
        out.extend_from_slice(&self.buf[..take]);
        self.buf.advance(take);
        while out.len() < end {
            match self.stream.next().await {
                Some(Ok(chunk)) => {
                    self.activity.touch();
                    let take = chunk.len().min(end - out.len());
                    out.extend_from_slice(&chunk[..take]);
                    if take < chunk.len() {
                        self.buf.extend_from_slice(&chunk[take..]);
                    }
                }
                Some(Err(e)) => {
                    log::debug!("connection read error: {e}");
                    return false;
                }
                None => return false,
            }
        }
        unmask(&mut out[start..], mask, 0);
        true
    }

    fn fatal(&mut self, code: ErrorCode, message: String) -> Option<Incoming> {
        self.done = true;
        self.partial = None;
        Some(Incoming::Refused(code, message))
    }

    /// The next frame header and its payload length, consumed from `buf`;
    /// `Err` names what is wrong with it, `Ok(None)` is the end of the stream.
    async fn header(&mut self) -> Result<Option<(FrameHeader, u64)>, String> {
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
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Reads a payload into `out`; `None` (and the reader done) if the
    /// connection ended first.
    async fn payload(&mut self, out: &mut Vec<u8>, len: usize, mask: [u8; 4]) -> Option<()> {
        if self.payload_into(out, len, mask).await {
            Some(())
        } else {
            self.done = true;
            None
        }
    }

    /// Reads and drops a frame's payload, then refuses it; the connection
    /// goes on (`bad_json`, as for any malformed message).
    async fn skip(&mut self, len: usize, mask: [u8; 4], why: &str) -> Option<Incoming> {
        self.payload(&mut Vec::new(), len, mask).await?;
        Some(Incoming::Refused(ErrorCode::BadJson, why.to_string()))
    }

    /// The next event, or `None` once the connection has ended. Not
    /// cancel-safe: a frame header is consumed before its payload is read,
    /// so the future must be driven to completion (a stream does that).
    pub async fn next(&mut self) -> Option<Incoming> {
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
            let already = self.partial.as_ref().map(|p| p.data.len()).unwrap_or(0);
            if !control && len.saturating_add(already as u64) > self.max_message as u64 {
                let limit = self.max_message;
                return self.fatal(
                    ErrorCode::MessageTooLarge,
                    format!("message exceeds the hub's limit of {limit} bytes"),
                );
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
                            mask,
                            "a new message started before the previous fragmented one ended",
                        )
                        .await;
                }
                OP_TEXT | OP_BINARY => {
                    let permit = if len >= BUDGET_MIN {
                        self.activity.waiting.store(true, Ordering::Relaxed);
                        let p = self.budget.acquire(len).await;
                        self.activity.waiting.store(false, Ordering::Relaxed);
                        self.activity.touch();
                        p
                    } else {
                        None
                    };
                    let mut data = Vec::new();
                    self.payload(&mut data, len, mask).await?;
                    let text = opcode == OP_TEXT;
                    let permits: Vec<_> = permit.into_iter().collect();
                    if h.is_final {
                        return Some(whole(text, data, permits));
                    }
                    self.partial = Some(Assembling {
                        text,
                        data,
                        permits,
                        fragments: 1,
                    });
                }
                OP_CONT => {
                    let Some(mut p) = self.partial.take() else {
                        return self
                            .skip(
                                len,
                                mask,
                                "a continuation frame arrived with no message started",
                            )
                            .await;
                    };
                    p.fragments += 1;
                    if p.fragments > self.max_fragments {
                        let max = self.max_fragments;
                        return self.fatal(
                            ErrorCode::TooManyFragments,
                            format!("message arrived in more than {max} fragments"),
                        );
                    }
                    if len >= BUDGET_MIN {
                        p.permits.extend(self.budget.try_acquire(len));
                    }
                    self.payload(&mut p.data, len, mask).await?;
                    if h.is_final {
                        return Some(whole(p.text, p.data, p.permits));
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

fn whole(text: bool, data: Vec<u8>, permits: Vec<OwnedSemaphorePermit>) -> Incoming {
    let bytes = if permits.is_empty() {
        Bytes::from(data)
    } else {
        Bytes::from_owner(Held {
            data,
            _permits: permits,
        })
    };
    if text {
        Incoming::Text(bytes)
    } else {
        Incoming::Binary(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = frame_header(opcode, payload.len(), Some(mask));
        if !fin {
            f[0] &= 0x7F;
        }
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// A reader over `bytes` delivered in chunks of `chunk` bytes.
    fn reader(
        bytes: Vec<u8>,
        chunk: usize,
        budget: &Budget,
    ) -> FrameReader<impl Stream<Item = Result<Bytes, ReadError>> + Unpin> {
        let chunks: Vec<Result<Bytes, ReadError>> = bytes
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        FrameReader::new(
            futures_util::stream::iter(chunks),
            Activity::new(),
            1 << 20,
            3,
            budget.clone(),
        )
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn unmask_at_any_offset() {
        let mask = [1, 2, 3, 4];
        let data: Vec<u8> = (0..37).collect();
        let mut whole = data.clone();
        unmask(&mut whole, mask, 0);
        for split in 0..data.len() {
            let mut v = data.clone();
            let (a, b) = v.split_at_mut(split);
            unmask(a, mask, 0);
            unmask(b, mask, split);
            assert_eq!(v, whole, "split at {split}");
        }
        unmask(&mut whole, mask, 0);
        assert_eq!(whole, data);
    }

    #[test]
    fn reads_frames_across_any_chunking() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = client_frame(true, OP_TEXT, b"{\"type\":\"ping\"}", [9, 8, 7, 6]);
        wire.extend(client_frame(true, OP_PING, b"hi", [1, 1, 1, 1]));
        wire.extend(client_frame(false, OP_BINARY, &big[..70_000], [5, 6, 7, 8]));
        wire.extend(client_frame(true, OP_CONT, &big[70_000..], [2, 3, 4, 5]));
        wire.extend(client_frame(true, OP_CLOSE, &[3, 232], [0, 0, 0, 1]));
        for chunk in [1, 7, 4096, 1 << 20] {
            let budget = Budget::new(1 << 20);
            let mut r = reader(wire.clone(), chunk, &budget);
            run(async {
                assert!(
                    matches!(r.next().await, Some(Incoming::Text(t)) if &t[..] == b"{\"type\":\"ping\"}")
                );
                assert!(matches!(r.next().await, Some(Incoming::Ping(p)) if &p[..] == b"hi"));
                match r.next().await {
                    Some(Incoming::Binary(b)) => {
                        assert_eq!(&b[..], &big[..]);
                        assert!(budget.in_use() > 0, "a held payload holds budget");
                        drop(b);
                        assert_eq!(budget.in_use(), 0, "dropping it gives the budget back");
                    }
                    other => panic!("expected binary, got {other:?}"),
                }
                assert!(matches!(r.next().await, Some(Incoming::Close)));
                assert!(r.next().await.is_none());
            });
        }
    }

    #[test]
    fn refuses_what_breaks_the_rules() {
        let budget = Budget::new(1 << 20);
        // Over the message limit: fatal, and reading stops.
        let mut r = reader(
            client_frame(true, OP_BINARY, &vec![0u8; (1 << 20) + 1], [1, 2, 3, 4]),
            65536,
            &budget,
        );
        run(async {
            assert!(matches!(
                r.next().await,
                Some(Incoming::Refused(ErrorCode::MessageTooLarge, _))
            ));
            assert!(r.next().await.is_none());
        });
        // Too many fragments (limit 3).
        let mut wire = client_frame(false, OP_TEXT, b"a", [1, 2, 3, 4]);
        for _ in 0..3 {
            wire.extend(client_frame(false, OP_CONT, b"", [1, 2, 3, 4]));
        }
        let mut r = reader(wire, 3, &budget);
        run(async {
            assert!(matches!(
                r.next().await,
                Some(Incoming::Refused(ErrorCode::TooManyFragments, _))
            ));
        });
        // Unmasked client frame.
        let mut r = reader(vec![0x82, 0x01, 0xFF], 3, &budget);
        run(async {
            assert!(matches!(
                r.next().await,
                Some(Incoming::Refused(ErrorCode::BadFrame, _))
            ));
            assert!(r.next().await.is_none());
        });
        // A stray continuation is refused but the connection reads on.
        let mut wire = client_frame(true, OP_CONT, b"x", [1, 2, 3, 4]);
        wire.extend(client_frame(true, OP_TEXT, b"ok", [4, 3, 2, 1]));
        let mut r = reader(wire, 5, &budget);
        run(async {
            assert!(matches!(
                r.next().await,
                Some(Incoming::Refused(ErrorCode::BadJson, _))
            ));
            assert!(matches!(r.next().await, Some(Incoming::Text(t)) if &t[..] == b"ok"));
        });
        // End of stream in the middle of a frame.
        let mut r = reader(
            client_frame(true, OP_TEXT, b"hello", [1, 2, 3, 4])[..5].to_vec(),
            2,
            &budget,
        );
        run(async { assert!(r.next().await.is_none()) });
    }

    #[test]
    fn budget_makes_the_second_large_payload_wait() {
        let budget = Budget::new(128 * 1024);
        let frame = client_frame(true, OP_BINARY, &vec![7u8; 100 * 1024], [1, 2, 3, 4]);
        let mut a = reader(frame.clone(), 8192, &budget);
        let mut b = reader(frame, 8192, &budget);
        run(async {
            let first = a.next().await;
            assert!(matches!(first, Some(Incoming::Binary(_))));
            let mut second = Box::pin(b.next());
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(50), &mut second).await;
            assert!(
                waiting.is_err(),
                "no room until the first payload is dropped"
            );
            drop(first);
            assert!(matches!(second.await, Some(Incoming::Binary(_))));
        });
    }

    #[test]
    fn a_version_waits_while_an_update_is_in_flight() {
        let out = Outbox::new(Arc::default(), Duration::ZERO);
        let mut body = OutboxBody::new(out.clone());
        out.welcome(Bytes::from_static(b"w"), Bytes::from_static(b"0"));
        out.update_started();
        out.model(Bytes::from_static(b"m1"), Bytes::from_static(b"1"));
        out.model(Bytes::from_static(b"m2"), Bytes::from_static(b"2"));
        out.text("ack".into());
        out.update_answered();
        out.finish();
        let wire: Vec<u8> = run(async {
            let mut all = Vec::new();
            while let Some(Ok(b)) = body.next().await {
                all.extend_from_slice(&b);
            }
            all
        });
        let expect: Vec<u8> = [
            &[0x81, 1, b'w', 0x82, 1, b'0'][..],
            &[0x81, 3, b'a', b'c', b'k'],
            &[0x81, 2, b'm', b'2', 0x82, 1, b'2'],
        ]
        .concat();
        assert_eq!(wire, expect, "the ack first, then only the newest version");
    }

    /// Reads what the body has ready within `ms`, without ending it.
    async fn ready_within(body: &mut OutboxBody, ms: u64) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        while let Ok(Some(Ok(b))) = tokio::time::timeout_at(deadline, body.next()).await {
            got.extend_from_slice(&b);
        }
        got
    }

    #[test]
    fn a_trainer_still_working_on_a_version_gets_newer_ones_with_its_ack_or_after_the_hold() {
        let out = Outbox::new(Arc::default(), Duration::from_millis(300));
        let mut body = OutboxBody::new(out.clone());
        run(async {
            out.welcome(Bytes::from_static(b"w"), Bytes::from_static(b"0"));
            assert_eq!(
                ready_within(&mut body, 20).await,
                [0x81, 1, b'w', 0x82, 1, b'0']
            );
            // Still training on the welcome's version: v1 and v2 wait, only
            // the newest is kept.
            out.model(Bytes::from_static(b"m1"), Bytes::from_static(b"1"));
            out.model(Bytes::from_static(b"m2"), Bytes::from_static(b"2"));
            assert!(ready_within(&mut body, 50).await.is_empty());
            // Its update arrives and is answered: the newest version follows the ack.
            out.update_started();
            out.text("ack".into());
            out.update_answered();
            assert_eq!(
                ready_within(&mut body, 50).await,
                [
                    &[0x81, 3, b'a', b'c', b'k'][..],
                    &[0x81, 2, b'm', b'2', 0x82, 1, b'2']
                ]
                .concat()
            );
            // A trainer that does not answer still gets v3, once the hold is over.
            let pushed = std::time::Instant::now();
            out.model(Bytes::from_static(b"m3"), Bytes::from_static(b"3"));
            assert!(ready_within(&mut body, 100).await.is_empty());
            assert_eq!(
                ready_within(&mut body, 1000).await,
                [0x81, 2, b'm', b'3', 0x82, 1, b'3']
            );
            assert!(pushed.elapsed() >= Duration::from_millis(250));
            // Having answered every version it got, the next one goes at once.
            out.update_started();
            out.update_answered();
            out.model(Bytes::from_static(b"m4"), Bytes::from_static(b"4"));
            assert_eq!(
                ready_within(&mut body, 50).await,
                [0x81, 2, b'm', b'4', 0x82, 1, b'4']
            );
            // An update its session refuses (bad shape, NaN) answers v4 too:
            // v5, held meanwhile, follows the error at once.
            out.model(Bytes::from_static(b"m5"), Bytes::from_static(b"5"));
            assert!(ready_within(&mut body, 50).await.is_empty());
            out.text("err".into());
            out.update_refused();
            assert_eq!(
                ready_within(&mut body, 50).await,
                [
                    &[0x81, 3, b'e', b'r', b'r'][..],
                    &[0x81, 2, b'm', b'5', 0x82, 1, b'5']
                ]
                .concat()
            );
        });
    }

    #[test]
    fn outbox_writes_frames_and_keeps_only_the_newest_model() {
        let out = Outbox::new(Arc::default(), Duration::ZERO);
        let mut body = OutboxBody::new(out.clone());
        out.model(Bytes::from_static(b"m0"), Bytes::from(vec![0u8; 10]));
        out.text("hi".into());
        out.welcome(Bytes::from_static(b"w"), Bytes::from_static(b"x"));
        out.model(Bytes::from_static(b"m1"), Bytes::from(vec![1u8; 10]));
        out.model(Bytes::from_static(b"m2"), Bytes::from(vec![2u8; 300_000]));
        out.close(1000, "bye");
        out.text("after close".into());
        let wire: Vec<u8> = run(async {
            let mut all = Vec::new();
            while let Some(Ok(b)) = body.next().await {
                assert!(b.len() <= OUT_CHUNK + 16);
                all.extend_from_slice(&b);
            }
            all
        });
        let mut expect = Vec::new();
        expect.extend_from_slice(&[0x81, 2]);
        expect.extend_from_slice(b"hi");
        // The welcome comes before the version pushed ahead of it.
        expect.extend_from_slice(&[0x81, 1, b'w', 0x82, 1, b'x']);
        expect.extend_from_slice(&[0x81, 2]);
        expect.extend_from_slice(b"m2");
        expect.extend_from_slice(&[0x82, 127]);
        expect.extend_from_slice(&300_000u64.to_be_bytes());
        expect.extend(std::iter::repeat_n(2u8, 300_000));
        expect.extend_from_slice(&[0x88, 5, 0x03, 0xE8]);
        expect.extend_from_slice(b"bye");
        assert_eq!(wire.len(), expect.len());
        assert!(wire == expect);
    }
}
