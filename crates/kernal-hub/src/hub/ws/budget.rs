//! The in-flight budget: bytes of large or fragmented incoming messages the
//! hub holds at once, over all connections (`hub.max_inflight_update_bytes`),
//! and each connection's share of it (`hub.max_inflight_share`).
//!
//! A message holds its part of the budget from before its bytes are read
//! until the last `Bytes` pointing into it is dropped (after it was stored
//! and folded), so fifty 40 MB updates arriving at once wait, unread, in
//! their sockets instead of in the heap. The share keeps one connection
//! (anyone may register a trainer name) from holding the whole budget.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The hub-wide budget, counted in KiB.
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

    /// Bytes currently held by messages.
    pub fn in_use(&self) -> usize {
        (self.kib as usize - self.sem.available_permits()) * 1024
    }

    pub fn bytes(&self) -> usize {
        self.kib as usize * 1024
    }
}

/// KiB needed to hold `bytes`.
pub fn kib_for(bytes: usize) -> u32 {
    bytes.div_ceil(1024).min(u32::MAX as usize) as u32
}

/// Why a reservation failed.
#[derive(Debug, PartialEq)]
pub enum ReserveError {
    /// The budget stayed full past the deadline.
    TimedOut,
    /// The hub is stopping (semaphores closed).
    Closed,
}

/// One connection's claim on the budget: never more than its share at once,
/// counting every message of the connection still held by the hub.
pub struct Claim {
    global: Budget,
    own: Arc<Semaphore>,
    share_kib: u32,
}

impl Claim {
    pub fn new(global: Budget, share: f64) -> Claim {
        let share_kib = ((global.kib as f64 * share).floor() as u32).clamp(1, global.kib);
        Claim {
            global,
            own: Arc::new(Semaphore::new(share_kib as usize)),
            share_kib,
        }
    }

    /// The most one message of this connection may hold.
    pub fn share_bytes(&self) -> usize {
        self.share_kib as usize * 1024
    }

    /// Waits for `kib` of the connection's share, then of the hub's budget;
    /// with a `deadline`, gives up after it (a message that already holds
    /// part of the budget must not wait for ever: connections waiting on
    /// each other would never finish).
    pub async fn reserve(
        &self,
        kib: u32,
        deadline: Option<Duration>,
    ) -> Result<Vec<OwnedSemaphorePermit>, ReserveError> {
        if kib == 0 {
            return Ok(Vec::new());
        }
        let kib = kib.min(self.share_kib);
        let both = async {
            let own = self
                .own
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(|_| ReserveError::Closed)?;
            let global = self
                .global
                .sem
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(|_| ReserveError::Closed)?;
            Ok(vec![own, global])
        };
        match deadline {
            None => both.await,
            Some(d) => tokio::time::timeout(d, both)
                .await
                .map_err(|_| ReserveError::TimedOut)?,
        }
    }
}

/// A received message and the budget it holds, released when the last
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

/// The message's bytes, holding `permits` for as long as they live.
pub fn hold(data: Vec<u8>, permits: Vec<OwnedSemaphorePermit>) -> Bytes {
    if permits.is_empty() {
        Bytes::from(data)
    } else {
        Bytes::from_owner(Held {
            data,
            _permits: permits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_holds_at_most_its_share_and_the_hub_at_most_the_budget() {
        let budget = Budget::new(100 * 1024);
        let a = Claim::new(budget.clone(), 0.5);
        let b = Claim::new(budget.clone(), 0.5);
        let c = Claim::new(budget.clone(), 0.5);
        assert_eq!(a.share_bytes(), 50 * 1024);
        let a1 = a.reserve(30, None).await.unwrap();
        // a's own share has 20 KiB left: a second 30 waits for the first.
        let waited = a.reserve(30, Some(Duration::from_secs(1))).await;
        assert_eq!(waited.unwrap_err(), ReserveError::TimedOut);
        let b1 = b.reserve(50, None).await.unwrap();
        assert_eq!(budget.in_use(), 80 * 1024);
        // 20 KiB left in the hub's budget: c gets it, not more.
        let c1 = c.reserve(20, Some(Duration::from_secs(1))).await.unwrap();
        assert!(c.reserve(1, Some(Duration::from_secs(1))).await.is_err());
        drop((a1, b1, c1));
        assert_eq!(budget.in_use(), 0);
        let bytes = hold(vec![1, 2, 3], a.reserve(3, None).await.unwrap());
        assert_eq!(budget.in_use(), 3 * 1024);
        let clone = bytes.slice(1..);
        drop(bytes);
        assert_eq!(budget.in_use(), 3 * 1024, "held while any slice lives");
        drop(clone);
        assert_eq!(budget.in_use(), 0);
    }
}
