//! Whether the hub can store what it is sent: storage errors are counted and
//! reported as such (`/healthz` unhealthy, `kernal_storage_errors_total`),
//! never mistaken for corrupt data or repeated silently.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// After a failed write the storage counts as troubled this long, whatever
/// succeeds meanwhile: on a full disk small writes into free pages still
/// succeed between the refused updates, and must not make `/healthz` say
/// `ok` (nor flood the log with "fails" / "works again" pairs).
pub const TROUBLE_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct StorageHealth {
    errors: AtomicU64,
    /// The last write failed and none has succeeded since.
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// When the last write failed.
    last_failure: Mutex<Option<Instant>>,
    /// The trouble was logged and its end not yet.
    announced: AtomicBool,
    /// Acknowledged updates found missing at start (see `db::acked`).
    lost_acknowledged: AtomicU64,
}

impl StorageHealth {
    /// A write succeeded. The end of a trouble is logged once no write has
    /// failed for [`TROUBLE_WINDOW`].
    pub fn wrote(&self) {
        self.failing.store(false, Ordering::Release);
        if self.announced.load(Ordering::Acquire) && !self.recently_failed() {
            self.announced.store(false, Ordering::Release);
            log::warn!(
                "storage works again ({} failed write(s) since start)",
                self.errors()
            );
        }
    }

    /// A write failed (or a row of a batch could not be stored). Logged
    /// once when the trouble starts, then at debug level, so a read-only or
    /// full disk does not fill the log.
    pub fn failed(&self, e: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.failing.store(true, Ordering::Release);
        if let Ok(mut t) = self.last_failure.lock() {
            *t = Some(Instant::now());
        }
        if !self.announced.swap(true, Ordering::AcqRel) {
            log::error!("the hub cannot write to its storage: {e}");
        } else {
            log::debug!("storage still failing: {e}");
        }
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(format!("{} {e}", super::time::now()));
        }
    }

    /// What failed works again (an update was stored): the trouble ends
    /// now, not [`TROUBLE_WINDOW`] later.
    pub fn recovered(&self) {
        if let Ok(mut t) = self.last_failure.lock() {
            *t = None;
        }
        self.wrote();
    }

    fn recently_failed(&self) -> bool {
        self.last_failure
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < TROUBLE_WINDOW)
    }

    /// Storage trouble: the last write failed, or one failed within
    /// [`TROUBLE_WINDOW`] (what `/healthz` reports).
    pub fn troubled(&self) -> bool {
        self.failing() || self.recently_failed()
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    pub fn set_lost_acknowledged(&self, n: u64) {
        self.lost_acknowledged.store(n, Ordering::Relaxed);
    }

    pub fn lost_acknowledged(&self) -> u64 {
        self.lost_acknowledged.load(Ordering::Relaxed)
    }
}

/// A warning for a recurring background failure (the WAL checkpoint, every
/// 500 ms): logged when it starts, then at most once per `every` with the
/// count since, and once when it ends.
#[derive(Debug)]
pub struct TroubleLog {
    what: &'static str,
    every: Duration,
    since: Option<Instant>,
    last_logged: Option<Instant>,
    count: u64,
}

impl TroubleLog {
    pub fn new(what: &'static str, every: Duration) -> Self {
        TroubleLog {
            what,
            every,
            since: None,
            last_logged: None,
            count: 0,
        }
    }

    /// Returns whether this failure was logged.
    pub fn failed(&mut self, e: &dyn std::fmt::Display) -> bool {
        let now = Instant::now();
        self.count += 1;
        let due = self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= self.every);
        if self.since.is_none() {
            self.since = Some(now);
        }
        if due {
            if self.count == 1 {
                log::warn!("{} failed: {e}", self.what);
            } else {
                log::warn!(
                    "{} still failing ({} failures so far): {e}",
                    self.what,
                    self.count
                );
            }
            self.last_logged = Some(now);
        }
        due
    }

    /// Returns whether the end of a trouble was logged.
    pub fn succeeded(&mut self) -> bool {
        let Some(since) = self.since.take() else {
            return false;
        };
        log::warn!(
            "{} works again after {} failure(s) over {:.0} s",
            self.what,
            self.count,
            since.elapsed().as_secs_f64()
        );
        self.count = 0;
        self.last_logged = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recurring_failure_is_logged_at_start_then_rate_limited_then_at_its_end() {
        let mut t = TroubleLog::new("WAL checkpoint", Duration::from_secs(3600));
        assert!(t.failed(&"disk full"), "the start is logged");
        for _ in 0..100 {
            assert!(!t.failed(&"disk full"), "not twice a second");
        }
        assert!(t.succeeded(), "the end is logged");
        assert!(!t.succeeded(), "once");
        assert!(t.failed(&"again"), "a new trouble is logged");
    }

    #[test]
    fn a_success_between_failures_does_not_end_the_trouble() {
        let h = StorageHealth::default();
        assert!(!h.troubled());
        h.failed("database or disk is full");
        h.wrote();
        assert!(!h.failing());
        assert!(
            h.troubled(),
            "a write that fits in a free page is no recovery"
        );
        assert_eq!(h.errors(), 1);
    }
}
