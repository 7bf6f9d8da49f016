//! The figures' arithmetic: percentiles, and the hub's traffic read from
//! its byte counters while the run goes on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// (unix seconds, received bytes, sent bytes) from the hub's counters.
pub(crate) type Sample = (f64, f64, f64);

/// Reads the hub's byte counters every 100 ms, and once more when told to
/// stop, so the samples bracket the whole run.
pub(crate) async fn sample_traffic(
    http: reqwest::Client,
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Sample> {
    let mut out = Vec::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if let Ok(r) = http.get(&url).send().await {
            if let Ok(text) = r.text().await {
                let counter = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                if let (Some(i), Some(o)) = (
                    counter("kernal_received_bytes_total "),
                    counter("kernal_sent_bytes_total "),
                ) {
                    out.push((now, i, o));
                }
            }
        }
        if stopping {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes per second in and out between the last sample at or before `t0`
/// and the first at or after `t1` (for a run shorter than the sampling
/// interval this takes in a little of what came before and after).
pub(crate) fn traffic_rates(samples: &[Sample], t0: f64, t1: f64) -> (f64, f64) {
    let a = samples.iter().rev().find(|s| s.0 <= t0).or(samples.first());
    let b = samples.iter().find(|s| s.0 >= t1).or(samples.last());
    match (a, b) {
        (Some(a), Some(b)) if b.0 > a.0 => ((b.1 - a.1) / (b.0 - a.0), (b.2 - a.2) / (b.0 - a.0)),
        _ => (0.0, 0.0),
    }
}
