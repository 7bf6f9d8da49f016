//! A connection's bounded queue of frames and its version-hold policy.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::socket::PeerSocket;
use crate::hub::encoded::Encoded;
use crate::hub::metrics::HotMetrics;
use crate::hub::pacer::{Pacer, Waiter};

/// Largest slice of a payload handed to the HTTP dispatcher at once: it copies
/// each slice into the connection's write buffer, so this bounds that buffer.
pub const OUT_CHUNK: usize = 256 * 1024;
/// A payload up to this size goes out in `SMALL_SLICE` slices: the
/// dispatcher keeps the capacity of a write buffer below 128 KiB for the
/// connection's next response, so a 40 KB model copied in whole would stay
/// allocated on every idle connection. Larger ones go in `OUT_CHUNK`
/// slices, whose buffer the dispatcher frees once written.
pub const SMALL_PAYLOAD: usize = 128 * 1024;
pub const SMALL_SLICE: usize = 8 * 1024;
/// Frames smaller than this are written with their header in one piece.
pub(super) const SMALL_FRAME: usize = 16 * 1024;

pub(super) enum OutFrame {
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
pub(super) struct OutQueue {
    pub(super) frames: VecDeque<OutFrame>,
    /// Sum of `own_bytes` of `frames`.
    pub(super) bytes: usize,
    /// No frame is accepted after a close frame or after the session ended.
    pub(super) closed: bool,
    /// The client stopped reading: the queue was dropped and the body ends
    /// with an error, which makes the dispatcher drop the connection.
    pub(super) aborted: bool,
    /// False until the welcome is queued: a version pushed before it is held
    /// back so that the trainer always hears `welcome` first.
    pub(super) ready: bool,
    /// The welcome, waiting for a place in the pacer: ten thousand trainers
    /// connecting at once would otherwise all send an update at once.
    pub(super) welcome: Option<OutFrame>,
    /// Updates of this trainer the hub has not answered yet. While one is in
    /// flight a new version is held back and only the newest goes out once
    /// the answer has: a trainer busy uploading cannot use the versions in
    /// between, and with a thousand trainers pushing them all would spend
    /// the hub's time on weights nobody trains on.
    pub(super) in_flight: usize,
    /// When a version last went out to a trainer that has not sent an
    /// update since: it is still training on that one and cannot use a
    /// newer one before it is done, so newer versions wait (see
    /// [`Outbox::model`]).
    pub(super) working_since: Option<Instant>,
    pub(super) held: Option<OutFrame>,
    /// Queued in the pacer for a place (see `hub::pacer`).
    pub(super) paced: bool,
    pub(super) waker: Option<Waker>,
}

impl OutQueue {
    /// Whether a new version may go out now rather than wait as `held`
    /// (`admitted`: the pacer has a place for the update it will bring).
    fn may_push(&self, hold: Duration, now: Instant, admitted: bool) -> bool {
        self.ready
            && admitted
            && self.in_flight == 0
            && self
                .working_since
                .is_none_or(|t| now.saturating_duration_since(t) >= hold)
    }

    /// The held version if it may go out now, marked as what the trainer
    /// works on next.
    pub(super) fn release(
        &mut self,
        hold: Duration,
        now: Instant,
        admitted: bool,
    ) -> Option<OutFrame> {
        if self.held.is_none() || !self.may_push(hold, now, admitted) {
            return None;
        }
        self.working_since = Some(now);
        self.held.take()
    }

    /// When the held version goes out without an answer: only while nothing
    /// but the hold keeps it (the welcome and an update's answer release it
    /// themselves).
    /// Whether the held version waits for the pacer alone; marks it queued
    /// (true only once, so the connection is queued once).
    pub(super) fn wait_for_place(&mut self, hold: Duration, now: Instant) -> bool {
        let wait = !self.paced && self.held.is_some() && self.may_push(hold, now, true);
        self.paced |= wait;
        wait
    }

    pub(super) fn hold_ends(&self, hold: Duration) -> Option<Instant> {
        match (&self.held, self.ready, self.in_flight, self.working_since) {
            (Some(_), true, 0, Some(t)) => Some(t + hold),
            _ => None,
        }
    }

    pub(super) fn pop(&mut self) -> Option<OutFrame> {
        let f = self.frames.pop_front()?;
        self.bytes = self.bytes.saturating_sub(f.own_bytes());
        Some(f)
    }
}

/// What a session has to send. Shared (and `Send`) so the hub can push a new
/// version into every session directly instead of through a thousand actor
/// messages.
pub struct Outbox {
    pub(super) q: Mutex<OutQueue>,
    /// How long a version sent to a trainer that has not answered it yet
    /// holds back newer ones; zero sends every version as it is made.
    pub(super) hold: Duration,
    /// Bytes of replies that may wait for the client before it counts as
    /// not reading.
    pub(super) max_bytes: usize,
    /// Where the weights bytes sent over every connection are counted.
    pub(super) hot: Arc<HotMetrics>,
    /// The connection's socket, ended when the client stops reading.
    pub(super) socket: Option<PeerSocket>,
    /// A trainer's connection: the hub-wide pacing of new work.
    pub(super) pacer: Option<Arc<Pacer>>,
    pub(super) me: Weak<Outbox>,
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
        Self::paced(hot, hold, max_bytes, socket, None)
    }

    /// A trainer's outbox, whose versions wait for a place in `pacer`.
    pub fn paced(
        hot: Arc<HotMetrics>,
        hold: Duration,
        max_bytes: usize,
        socket: Option<PeerSocket>,
        pacer: Option<Arc<Pacer>>,
    ) -> Arc<Outbox> {
        Arc::new_cyclic(|me| Outbox {
            q: Mutex::new(OutQueue::default()),
            hold,
            max_bytes,
            hot,
            socket,
            pacer,
            me: me.clone(),
        })
    }

    pub(super) fn admits(&self) -> bool {
        self.pacer.as_ref().is_none_or(|p| p.admits())
    }

    /// Queues this connection in the pacer for a place.
    pub(super) fn wait_for_place(&self) {
        if let Some(p) = &self.pacer {
            p.wait(self.me.clone() as Weak<dyn Waiter>);
        }
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
        let admitted = self.admits();
        if let Ok(mut q) = self.q.lock() {
            let now = Instant::now();
            if !q.may_push(self.hold, now, admitted) {
                q.held = Some(OutFrame::Model { json, weights });
                let wait = !admitted && q.wait_for_place(self.hold, now);
                // The body is not woken for it: one held behind an update in
                // flight goes out with the answer, and one held only by the
                // hold goes out when the body next looks (at the latest with
                // the next heartbeat's ping), to a trainer still busy with
                // the last one. Waking every body for every version cost a
                // tenth of the ack latency at a thousand trainers.
                drop(q);
                if wait {
                    self.wait_for_place();
                }
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
    /// Under overload it waits for a place in the pacer like a version.
    pub fn welcome(&self, json: Bytes, weights: impl Into<Encoded>) {
        let f = OutFrame::Welcome {
            json,
            weights: weights.into(),
        };
        if !self.admits() {
            let wait = match self.q.lock() {
                Ok(mut q) => {
                    q.welcome = Some(f);
                    !std::mem::replace(&mut q.paced, true)
                }
                Err(_) => false,
            };
            if wait {
                self.wait_for_place();
            }
            return;
        }
        self.send_welcome(f);
    }

    fn send_welcome(&self, f: OutFrame) {
        self.push(f);
        if let Ok(mut q) = self.q.lock() {
            q.ready = true;
            q.working_since = Some(Instant::now());
        }
        self.release_held();
    }

    /// An update of this trainer went to the hub; it counts as answered
    /// when the returned guard is dropped (after its answer was queued, or
    /// when the session stops first). A trainer with updates unanswered
    /// holds one place in the pacer however many it sends.
    pub fn update_started(self: &Arc<Self>) -> InFlight {
        let first = match self.q.lock() {
            Ok(mut q) => {
                q.in_flight += 1;
                q.working_since = None;
                q.in_flight == 1
            }
            Err(_) => false,
        };
        if let (true, Some(p)) = (first, &self.pacer) {
            p.started();
        }
        InFlight {
            outbox: self.clone(),
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
    fn update_answered(&self) {
        let last = match self.q.lock() {
            Ok(mut q) => {
                q.in_flight = q.in_flight.saturating_sub(1);
                q.in_flight == 0
            }
            Err(_) => true,
        };
        // The trainer's place goes back with its last unanswered update.
        if let (true, Some(p)) = (last, &self.pacer) {
            p.answered(1);
        }
        self.release_held();
        if let (true, Some(p)) = (last, &self.pacer) {
            // The place this answer freed goes to the oldest waiter (this
            // trainer queued behind any that were waiting before it).
            p.resume(1);
        }
    }

    /// Sends the held version if it may go out now; whether it did.
    fn release_held(&self) -> bool {
        self.release_held_as(self.admits())
    }

    fn release_held_as(&self, admitted: bool) -> bool {
        let (held, wait) = match self.q.lock() {
            Ok(mut q) => {
                let now = Instant::now();
                let held = q.release(self.hold, now, admitted);
                let wait = held.is_none() && !admitted && q.wait_for_place(self.hold, now);
                (held, wait)
            }
            Err(_) => (None, false),
        };
        if wait {
            self.wait_for_place();
        }
        match held {
            Some(f) => {
                self.push(f);
                true
            }
            None => false,
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

impl Waiter for Outbox {
    /// A place in the pacer came to this connection.
    fn resume(&self) -> bool {
        let welcome = match self.q.lock() {
            Ok(mut q) => {
                q.paced = false;
                q.welcome.take()
            }
            Err(_) => return false,
        };
        if let Some(f) = welcome {
            self.send_welcome(f);
            return true;
        }
        self.release_held_as(true)
    }
}

/// An update the hub has not answered yet (see [`Outbox::update_started`]).
pub struct InFlight {
    outbox: Arc<Outbox>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.outbox.update_answered();
    }
}
