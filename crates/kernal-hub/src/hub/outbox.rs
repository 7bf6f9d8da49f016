// Over 600 lines: one bounded queue and its version-hold policy; about 170 lines are unit tests on paused time.
//! What a trainer connection has to send, and the policy of when versions go
//! out. The hub pushes a new version straight into every connection's
//! [`Outbox`] (not through a thousand actor messages); the HTTP dispatcher
//! pulls frames from its [`OutboxBody`], slices of one shared buffer at a
//! time, so a 40 MB model sent to 50 trainers is never copied per connection.
//!
//! Replies (acks, errors, pongs) are counted in bytes: a client that sends
//! without ever reading would otherwise grow its queue without bound, so past
//! `max_outbound_bytes` the connection is aborted (`slow_consumer`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::Instant;

use crate::hub::encoded::Encoded;
use crate::hub::metrics::HotMetrics;
use crate::hub::ws::{frame_header, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// Largest slice of a payload handed to the HTTP dispatcher at once: it copies
/// each slice into the connection's write buffer, so this bounds that buffer.
pub const OUT_CHUNK: usize = 256 * 1024;
/// Frames smaller than this are written with their header in one piece.
const SMALL_FRAME: usize = 16 * 1024;

enum OutFrame {
    Text(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close(u16, String),
    /// A new version: its JSON frame and weights frame go out back to back.
    Model {
        json: Bytes,
        weights: Encoded,
    },
    /// The `welcome` and the weights it names; never replaced by a newer model.
    Welcome {
        json: Bytes,
        weights: Encoded,
    },
}

impl OutFrame {
    /// Bytes this frame adds to the connection's own queue. Weights are
    /// shared by every connection (and only the newest version waits), so
    /// only their JSON counts.
    fn own_bytes(&self) -> usize {
        match self {
            OutFrame::Text(b) | OutFrame::Ping(b) | OutFrame::Pong(b) => b.len(),
            OutFrame::Close(_, r) => r.len() + 2,
            OutFrame::Model { json, .. } | OutFrame::Welcome { json, .. } => json.len(),
        }
    }
}

#[derive(Default)]
struct OutQueue {
    frames: VecDeque<OutFrame>,
    /// Sum of `own_bytes` of `frames`.
    bytes: usize,
    /// No frame is accepted after a close frame or after the session ended.
    closed: bool,
    /// The client stopped reading: the queue was dropped and the body ends
    /// with an error, which makes the dispatcher drop the connection.
    aborted: bool,
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
    /// [`Outbox::model`]).
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

    fn pop(&mut self) -> Option<OutFrame> {
        let f = self.frames.pop_front()?;
        self.bytes = self.bytes.saturating_sub(f.own_bytes());
        Some(f)
    }
}

/// The socket of a connection, as `on_connect` saw it: for ending a
/// connection whose client does not read (see [`PeerSocket`]).
#[derive(Clone, Copy)]
pub struct ConnFd(std::os::fd::RawFd);

/// Stores the connection's socket in its request extensions (the server's
/// `on_connect` hook), plain or TLS.
pub fn remember_socket(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsRawFd;
    type Plain = actix_web::rt::net::TcpStream;
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<Plain>;
    if let Some(s) = conn.downcast_ref::<Plain>() {
        ext.insert(ConnFd(s.as_raw_fd()));
    } else if let Some(s) = conn.downcast_ref::<Tls>() {
        ext.insert(ConnFd(s.get_ref().0.as_raw_fd()));
    }
}

/// A connection's socket as its outbox may end it. The HTTP dispatcher
/// stops pulling a response body while it cannot write, so a client that
/// never reads would otherwise hold its connection for ever; shutting the
/// socket down makes the dispatcher's next write fail and drop the
/// connection (linger 0: reset). Not a duplicate descriptor: at 10,000
/// trainers duplicates doubled the hub's descriptors past a 20,000 limit.
/// The socket's inode, recorded while the request (so the connection) was
/// alive, is checked before ending it, so a descriptor number reused by a
/// later connection is left alone.
pub struct PeerSocket {
    fd: std::os::fd::RawFd,
    id: (u64, u64),
}

/// (device, inode) of an open descriptor.
fn identity(fd: std::os::fd::RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat only writes the struct it is given.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev as u64, st.st_ino as u64))
}

impl PeerSocket {
    /// Records the socket of the request being handled.
    pub fn of(fd: ConnFd) -> Option<PeerSocket> {
        identity(fd.0).map(|id| PeerSocket { fd: fd.0, id })
    }

    fn abort(&self) {
        if identity(self.fd) != Some(self.id) {
            return;
        }
        let fd = self.fd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: plain socket calls on the connection's descriptor, checked
        // above to be the same socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::shutdown(fd, libc::SHUT_RDWR);
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
    /// Bytes of replies that may wait for the client before it counts as
    /// not reading.
    max_bytes: usize,
    /// Where the weights bytes sent over every connection are counted.
    hot: Arc<HotMetrics>,
    /// The connection's socket, ended when the client stops reading.
    socket: Option<PeerSocket>,
}

impl Outbox {
    pub fn new(hot: Arc<HotMetrics>, hold: Duration, max_bytes: usize) -> Arc<Outbox> {
        Self::with_socket(hot, hold, max_bytes, None)
    }

    pub fn with_socket(
        hot: Arc<HotMetrics>,
        hold: Duration,
        max_bytes: usize,
        socket: Option<PeerSocket>,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            q: Mutex::new(OutQueue::default()),
            hold,
            max_bytes,
            hot,
            socket,
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
        q.bytes += f.own_bytes();
        if q.bytes > self.max_bytes {
            // The client does not read what it is sent: drop everything
            // queued for it and end the connection.
            q.frames.clear();
            q.bytes = 0;
            q.held = None;
            q.closed = true;
            q.aborted = true;
            self.hot.slow_consumer();
            if let Some(s) = &self.socket {
                s.abort();
            }
        } else {
            q.frames.push_back(f);
        }
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }

    /// Whether the connection was dropped for not reading.
    pub fn aborted(&self) -> bool {
        self.q.lock().map(|q| q.aborted).unwrap_or(true)
    }

    /// Bytes of replies waiting for the client.
    pub fn queued_bytes(&self) -> usize {
        self.q.lock().map(|q| q.bytes).unwrap_or(0)
    }

    pub fn text(&self, s: String) {
        self.push(OutFrame::Text(Bytes::from(s)));
    }

    /// A text frame shared by many connections (a broadcast).
    pub fn text_bytes(&self, b: Bytes) {
        self.push(OutFrame::Text(b));
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
    pub fn model(&self, json: Bytes, weights: impl Into<Encoded>) {
        let weights = weights.into();
        if let Ok(mut q) = self.q.lock() {
            let now = Instant::now();
            if !q.may_push(self.hold, now) {
                q.held = Some(OutFrame::Model { json, weights });
                return;
            }
            let dropped: usize = q
                .frames
                .iter()
                .filter(|f| matches!(f, OutFrame::Model { .. }))
                .map(OutFrame::own_bytes)
                .sum();
            q.frames.retain(|f| !matches!(f, OutFrame::Model { .. }));
            q.bytes = q.bytes.saturating_sub(dropped);
            q.working_since = Some(now);
        }
        self.push(OutFrame::Model { json, weights });
    }

    /// Queues the `welcome` with its weights, then any version that was
    /// pushed while the hello was being checked.
    pub fn welcome(&self, json: Bytes, weights: impl Into<Encoded>) {
        let weights = weights.into();
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

/// The response body of a WebSocket connection: frames from its [`Outbox`].
pub struct OutboxBody {
    outbox: Arc<Outbox>,
    /// The rest of a large payload, handed out in slices.
    rest: Bytes,
    /// What follows `rest` in the same frame (a version's second part).
    after: Bytes,
    /// The weights frame of a model whose JSON frame just went out.
    then: Option<Encoded>,
    ended: bool,
    /// Wakes the body when a version held back only by the hold may go out
    /// although the trainer has not answered the last one.
    hold_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl OutboxBody {
    pub fn new(outbox: Arc<Outbox>) -> Self {
        OutboxBody {
            outbox,
            rest: Bytes::new(),
            after: Bytes::new(),
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

    /// A version's frame: one header for both parts, then each in slices.
    fn start_parts(&mut self, weights: Encoded) -> Bytes {
        if weights.body.is_empty() {
            return self.start(OP_BINARY, weights.head);
        }
        self.rest = weights.head;
        self.after = weights.body;
        Bytes::from(frame_header(
            OP_BINARY,
            self.rest.len() + self.after.len(),
            None,
        ))
    }
}

impl Stream for OutboxBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.outbox.aborted() && !this.ended {
            // An error ends the response, and the dispatcher drops the
            // connection at once instead of flushing to a client that
            // does not read.
            this.ended = true;
            return Poll::Ready(Some(Err(std::io::Error::other(
                "slow_consumer: the client does not read what it is sent",
            ))));
        }
        if this.rest.is_empty() && !this.after.is_empty() {
            this.rest = std::mem::take(&mut this.after);
        }
        if !this.rest.is_empty() {
            let n = this.rest.len().min(OUT_CHUNK);
            return Poll::Ready(Some(Ok(this.rest.split_to(n))));
        }
        if let Some(w) = this.then.take() {
            this.outbox.hot.bytes_out(w.len() as u64);
            return Poll::Ready(Some(Ok(this.start_parts(w))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let next = {
            let Ok(mut q) = this.outbox.q.lock() else {
                return Poll::Ready(None);
            };
            match q.pop() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn outbox(hold_ms: u64) -> Arc<Outbox> {
        Outbox::new(Arc::default(), Duration::from_millis(hold_ms), 1 << 20)
    }

    /// Everything the body yields until it ends.
    async fn drain(body: &mut OutboxBody) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(Ok(b)) = body.next().await {
            assert!(b.len() <= OUT_CHUNK + 16);
            all.extend_from_slice(&b);
        }
        all
    }

    /// What the body has ready within `ms` of (paused) time, without ending it.
    async fn ready_within(body: &mut OutboxBody, ms: u64) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(ms);
        while let Ok(Some(Ok(b))) = tokio::time::timeout_at(deadline, body.next()).await {
            got.extend_from_slice(&b);
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_version_waits_while_an_update_is_in_flight() {
        let out = outbox(0);
        let mut body = OutboxBody::new(out.clone());
        out.welcome(Bytes::from_static(b"w"), Bytes::from_static(b"0"));
        out.update_started();
        out.model(Bytes::from_static(b"m1"), Bytes::from_static(b"1"));
        out.model(Bytes::from_static(b"m2"), Bytes::from_static(b"2"));
        out.text("ack".into());
        out.update_answered();
        out.finish();
        let expect: Vec<u8> = [
            &[0x81, 1, b'w', 0x82, 1, b'0'][..],
            &[0x81, 3, b'a', b'c', b'k'],
            &[0x81, 2, b'm', b'2', 0x82, 1, b'2'],
        ]
        .concat();
        assert_eq!(
            drain(&mut body).await,
            expect,
            "the ack first, then only the newest version"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trainer_still_working_on_a_version_gets_newer_ones_with_its_ack_or_after_the_hold() {
        let out = outbox(300);
        let mut body = OutboxBody::new(out.clone());
        out.welcome(Bytes::from_static(b"w"), Bytes::from_static(b"0"));
        assert_eq!(
            ready_within(&mut body, 20).await,
            [0x81, 1, b'w', 0x82, 1, b'0']
        );
        // Still training on the welcome's version: v1 and v2 wait, only the
        // newest is kept.
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
        // A trainer that does not answer still gets v3, once the hold of
        // v2 (sent 50 ms ago) is over, and not before.
        let pushed = Instant::now();
        out.model(Bytes::from_static(b"m3"), Bytes::from_static(b"3"));
        assert!(ready_within(&mut body, 249).await.is_empty());
        assert_eq!(
            ready_within(&mut body, 1000).await,
            [0x81, 2, b'm', b'3', 0x82, 1, b'3']
        );
        assert_eq!(pushed.elapsed(), Duration::from_millis(1249));
        // Having answered every version it got, the next one goes at once.
        out.update_started();
        out.update_answered();
        out.model(Bytes::from_static(b"m4"), Bytes::from_static(b"4"));
        assert_eq!(
            ready_within(&mut body, 1).await,
            [0x81, 2, b'm', b'4', 0x82, 1, b'4']
        );
        // An update its session refuses (bad shape, NaN) answers v4 too: v5,
        // held meanwhile, follows the error at once.
        out.model(Bytes::from_static(b"m5"), Bytes::from_static(b"5"));
        assert!(ready_within(&mut body, 50).await.is_empty());
        out.text("err".into());
        out.update_refused();
        assert_eq!(
            ready_within(&mut body, 1).await,
            [
                &[0x81, 3, b'e', b'r', b'r'][..],
                &[0x81, 2, b'm', b'5', 0x82, 1, b'5']
            ]
            .concat()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn outbox_writes_frames_and_keeps_only_the_newest_model() {
        let out = outbox(0);
        let mut body = OutboxBody::new(out.clone());
        out.model(Bytes::from_static(b"m0"), Bytes::from(vec![0u8; 10]));
        out.text("hi".into());
        out.welcome(Bytes::from_static(b"w"), Bytes::from_static(b"x"));
        out.model(Bytes::from_static(b"m1"), Bytes::from(vec![1u8; 10]));
        // A version in two parts (a header and a view of the weights) is
        // one frame.
        let parts = Encoded {
            head: Bytes::from(vec![2u8; 1_000]),
            body: Bytes::from(vec![2u8; 299_000]),
        };
        out.model(Bytes::from_static(b"m2"), parts);
        out.close(1000, "bye");
        out.text("after close".into());
        let wire = drain(&mut body).await;
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

    /// A client that never reads: replies pile up until the bound, then the
    /// queue is dropped and the body ends with an error (connection dropped).
    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_dropped_past_the_bound() {
        let hot: Arc<HotMetrics> = Arc::default();
        let out = Outbox::new(hot.clone(), Duration::ZERO, 10_000);
        let mut body = OutboxBody::new(out.clone());
        for _ in 0..99 {
            out.text("x".repeat(100));
        }
        assert!(!out.aborted());
        assert_eq!(out.queued_bytes(), 9_900);
        // Reading some makes room: the bound is on what waits, not on totals.
        for _ in 0..50 {
            assert!(matches!(body.next().await, Some(Ok(_))));
        }
        for _ in 0..50 {
            out.text("x".repeat(100));
        }
        assert!(!out.aborted());
        out.text("x".repeat(200));
        assert!(out.aborted());
        assert_eq!(out.queued_bytes(), 0, "the queue is dropped at once");
        assert!(matches!(body.next().await, Some(Err(_))));
        assert!(body.next().await.is_none());
        out.text("more".into());
        assert_eq!(out.queued_bytes(), 0, "nothing is queued after the abort");
        assert_eq!(hot.slow_consumers(), 1);
    }
}
