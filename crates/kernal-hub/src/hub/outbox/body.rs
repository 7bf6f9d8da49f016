//! The HTTP response body of a WebSocket connection: the frames of its
//! [`Outbox`], a large payload in slices of the shared buffer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::Instant;

use super::queue::{OutFrame, Outbox, OUT_CHUNK, SMALL_FRAME, SMALL_PAYLOAD, SMALL_SLICE};
use crate::hub::encoded::Encoded;
use crate::hub::ws::{frame_header, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

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
            let slice = if this.rest.len() + this.after.len() <= SMALL_PAYLOAD {
                SMALL_SLICE
            } else {
                OUT_CHUNK
            };
            let n = this.rest.len().min(slice);
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
                    let (now, admitted) = (Instant::now(), this.outbox.admits());
                    if let Some(f) = q.release(this.outbox.hold, now, admitted) {
                        f
                    } else {
                        // A version waiting only for the hold goes out when
                        // it ends, unless the trainer answers first; one
                        // waiting for the pacer when it has a place.
                        q.waker = Some(cx.waker().clone());
                        let wait = !admitted && q.wait_for_place(this.outbox.hold, now);
                        let until =
                            (q.hold_ends(this.outbox.hold)).filter(|t| admitted || *t > now);
                        drop(q);
                        if wait {
                            this.outbox.wait_for_place();
                        }
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
