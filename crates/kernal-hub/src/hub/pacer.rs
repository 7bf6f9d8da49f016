//! Pacing new work under overload: how many trainers' updates the hub holds
//! unanswered at once, over all connections (`hub.max_pending_updates`).
//!
//! A trainer that answers every version at once (the benchmark's, or a fleet
//! of fast ones) sends its next update the moment the newest version reaches
//! it, so a thousand of them keep a thousand updates queued in the hub and
//! each waits for all the others: the ack latency is the fleet size over the
//! hub's throughput (Little's law), 1.2 s at 10,000 trainers. Past the limit
//! the hub stops *soliciting* updates: a version that would go to a trainer
//! right after its ack waits (in the trainer's outbox, newest kept) until an
//! answer frees a place, first come first served. Acks are never held, no
//! update is refused, and the hub's throughput is the same; what changes is
//! where the queue is: in trainers waiting for their next version, not in
//! updates waiting for their ack. A trainer that trains for a while between
//! versions holds no place while it trains, so a normal fleet never meets
//! the limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A connection that can take a held version when a place frees up.
pub trait Waiter: Send + Sync {
    /// Sends its held version if it may now; whether it did.
    fn resume(&self) -> bool;
}

/// The hub-wide count of unanswered updates and the connections waiting for
/// a place.
pub struct Pacer {
    /// 0: no limit.
    limit: usize,
    pending: AtomicUsize,
    waiting: Mutex<VecDeque<Weak<dyn Waiter>>>,
}

impl Pacer {
    pub fn new(limit: usize) -> Arc<Pacer> {
        Arc::new(Pacer {
            limit,
            pending: AtomicUsize::new(0),
            waiting: Mutex::new(VecDeque::new()),
        })
    }

    /// Whether a place is free (for the connection at the head of the queue).
    fn has_place(&self) -> bool {
        self.limit == 0 || self.pending.load(Ordering::Acquire) < self.limit
    }

    /// Whether a version may go out now to a trainer it would set to work,
    /// without a place in the queue: while anyone waits, nobody jumps it.
    pub fn admits(&self) -> bool {
        self.limit == 0 || (self.has_place() && self.waiting() == 0)
    }

    /// Updates received and not answered yet, over all connections.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// An update arrived.
    pub fn started(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// `n` updates were answered (or their connection ended first).
    pub fn answered(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
    }

    /// `w` waits for a place (once: the caller remembers it is queued).
    pub fn wait(&self, w: Weak<dyn Waiter>) {
        if let Ok(mut q) = self.waiting.lock() {
            q.push_back(w);
        }
    }

    /// Gives up to `places` freed places to waiting connections, oldest
    /// first; connections that ended or had nothing to send are skipped.
    pub fn resume(&self, mut places: usize) {
        while places > 0 && self.has_place() {
            let next = match self.waiting.lock() {
                Ok(mut q) => q.pop_front(),
                Err(_) => return,
            };
            let Some(w) = next else { return };
            if w.upgrade().is_some_and(|w| w.resume()) {
                places -= 1;
            }
        }
    }

    /// Gives every free place to waiting connections. An answer frees one
    /// place and resumes one waiter; this catches places freed otherwise
    /// (a resumed trainer that trains for a while before it sends, a
    /// connection that ended with updates in flight).
    pub fn resume_free(&self) {
        if self.limit > 0 && self.waiting() > 0 {
            self.resume(self.limit.saturating_sub(self.pending()));
        }
    }

    /// Resumes waiters every `every` while the pacer lives.
    pub fn spawn_ticker(self: &Arc<Self>, every: std::time::Duration) {
        if self.limit == 0 {
            return;
        }
        let weak = Arc::downgrade(self);
        actix_web::rt::spawn(async move {
            loop {
                actix_web::rt::time::sleep(every).await;
                match weak.upgrade() {
                    Some(p) => p.resume_free(),
                    None => return,
                }
            }
        });
    }

    /// Connections waiting for a place.
    pub fn waiting(&self) -> usize {
        self.waiting.lock().map(|q| q.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct W {
        held: AtomicBool,
        sent: AtomicUsize,
    }

    impl Waiter for W {
        fn resume(&self) -> bool {
            let had = self.held.swap(false, Ordering::AcqRel);
            if had {
                self.sent.fetch_add(1, Ordering::AcqRel);
            }
            had
        }
    }

    fn waiter() -> Arc<W> {
        Arc::new(W {
            held: AtomicBool::new(true),
            sent: AtomicUsize::new(0),
        })
    }

    #[test]
    fn places_free_up_one_answer_at_a_time_oldest_waiter_first() {
        let p = Pacer::new(2);
        assert!(p.admits());
        p.started();
        p.started();
        assert!(!p.admits());
        let (a, b, gone) = (waiter(), waiter(), waiter());
        let idle = waiter();
        idle.held.store(false, Ordering::Release);
        p.wait(Arc::downgrade(&gone) as Weak<dyn Waiter>);
        p.wait(Arc::downgrade(&idle) as Weak<dyn Waiter>);
        p.wait(Arc::downgrade(&a) as Weak<dyn Waiter>);
        p.wait(Arc::downgrade(&b) as Weak<dyn Waiter>);
        drop(gone);
        // Still full: nobody resumes, and nobody jumps the queue.
        p.resume(1);
        assert_eq!(p.waiting(), 4);
        p.answered(1);
        assert!(!p.admits(), "a free place goes to the queue first");
        p.started();
        p.answered(1);
        // One place: the ended and the idle connections are skipped.
        p.resume(1);
        assert_eq!(a.sent.load(Ordering::Acquire), 1);
        assert_eq!(b.sent.load(Ordering::Acquire), 0);
        assert_eq!(p.waiting(), 1);
        p.answered(5);
        assert_eq!(p.pending(), 0, "never below zero");
        p.resume(1);
        assert_eq!(b.sent.load(Ordering::Acquire), 1);
        assert_eq!(p.waiting(), 0);
        // No limit: always admits.
        let free = Pacer::new(0);
        (0..1000).for_each(|_| free.started());
        assert!(free.admits());
    }
}
