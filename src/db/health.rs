//! Whether the hub can store what it is sent: storage errors are counted and
//! reported as such (`/healthz` unhealthy, `kernal_storage_errors_total`),
//! never mistaken for corrupt data or repeated silently.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct StorageHealth {
    errors: AtomicU64,
    /// The last write failed and none has succeeded since.
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Acknowledged updates found missing at start (see `db::acked`).
    lost_acknowledged: AtomicU64,
}

impl StorageHealth {
    /// A write succeeded: the storage works (again).
    pub fn wrote(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            log::warn!("storage works again");
        }
    }

    /// A write failed. Logged once when storage starts failing, then at
    /// debug level, so a read-only disk does not fill the log.
    pub fn failed(&self, e: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::AcqRel) {
            log::error!("the hub cannot write to its storage: {e}");
        } else {
            log::debug!("storage still failing: {e}");
        }
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(format!("{} {e}", crate::db::now()));
        }
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
