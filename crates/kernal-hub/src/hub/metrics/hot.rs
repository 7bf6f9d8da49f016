//! The figures that change with every update, written by the hub and the
//! sessions straight into atomics rather than through the aggregator's mailbox.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::{Histogram, AGG_BUCKETS};

/// What changes with every update, kept in atomics the hub and the sessions
/// write directly: at ten thousand updates a second, one actor message per
/// update for each of these cost the ack latency p99 about 10 ms on 2 cores.
#[derive(Debug, Default)]
pub struct HotMetrics {
    pub(super) bytes_in: AtomicU64,
    /// Weights bytes trainers' connections have started sending, counted
    /// where they are written: versions held back or replaced by a newer one
    /// are never sent, so counting at the broadcast would overstate it.
    pub(super) bytes_out: AtomicU64,
    pub(super) persister_queue: AtomicI64,
    /// `kernal_update_answer_seconds`, per bucket (not cumulative).
    pub(super) answer_buckets: [AtomicU64; AGG_BUCKETS.len()],
    pub(super) answer_over: AtomicU64,
    pub(super) answer_nanos: AtomicU64,
    /// Connections dropped because they did not read what they were sent.
    pub(super) slow_consumers: AtomicU64,
}

impl HotMetrics {
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    pub fn slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    pub fn persister_queue(&self, depth: i64) {
        self.persister_queue.store(depth, Ordering::Relaxed);
    }

    /// Seconds from an update's last byte arriving to its answer being
    /// queued, measured by the session: the hub's share of what a trainer waits.
    pub fn answered(&self, d: Duration) {
        let v = d.as_secs_f64();
        match AGG_BUCKETS.iter().position(|b| v <= *b) {
            Some(i) => self.answer_buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.answer_over.fetch_add(1, Ordering::Relaxed),
        };
        self.answer_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(super) fn answer_histogram(&self) -> Histogram {
        let mut counts = Vec::with_capacity(AGG_BUCKETS.len());
        let mut below = 0;
        for b in &self.answer_buckets {
            below += b.load(Ordering::Relaxed);
            counts.push(below);
        }
        Histogram {
            counts,
            sum: self.answer_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: below + self.answer_over.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::metrics::histogram::Counted;
    use crate::hub::metrics::render::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn answer_histogram_is_cumulative_with_everything_in_inf() {
        let hot = HotMetrics::default();
        hot.answered(Duration::from_micros(300));
        hot.answered(Duration::from_millis(3));
        hot.answered(Duration::from_millis(3));
        hot.answered(Duration::from_secs(9));
        hot.bytes_in(10);
        hot.bytes_in(5);
        hot.persister_queue(7);
        let mut r = Registry::default();
        r.register("a", "A histogram", Counted(hot.answer_histogram()));
        let out = encode(&r);
        for line in [
            "# TYPE a histogram",
            "a_bucket{le=\"0.0005\"} 1",
            "a_bucket{le=\"0.0025\"} 1",
            "a_bucket{le=\"0.005\"} 3",
            "a_bucket{le=\"5\"} 3",
            "a_bucket{le=\"+Inf\"} 4",
            "a_count 4",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("a_sum "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((sum - 9.0063).abs() < 1e-9, "{sum}");
        assert_eq!(hot.bytes_in.load(Ordering::Relaxed), 15);
        assert_eq!(hot.persister_queue.load(Ordering::Relaxed), 7);
    }
}
