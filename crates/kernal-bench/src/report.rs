//! What `kernal bench` reports: one JSON object (`--json`) or the table.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub params: usize,
    pub trainers: usize,
    pub min_updates: usize,
    pub strategy: String,
    pub versions: u64,
    pub update_dtype: String,
    pub seconds_per_version_median: f64,
    pub seconds_per_version_min: f64,
    pub seconds_per_version_max: f64,
    pub versions_per_sec: f64,
    pub update_bytes_in_per_sec: f64,
    pub model_bytes_out_per_sec: f64,
    pub ack_latency_p50_ms: f64,
    pub ack_latency_p99_ms: f64,
    pub aggregation_seconds_median: Option<f64>,
    pub fold_rate_gb_per_sec: Option<f64>,
    pub hub_peak_rss_mib: Option<f64>,
    pub hub_cpu_seconds: Option<f64>,
    pub connect_seconds: f64,
    pub open_files_limit: Option<u64>,
    /// With `--rejoin`: seconds from the restarted hub answering until the
    /// last trainer was welcomed again, the median trainer's, and how many
    /// upgrades were refused (503) on the way.
    pub rejoin_seconds: Option<f64>,
    pub rejoin_median_seconds: Option<f64>,
    pub rejoin_refused_upgrades: Option<u64>,
}

pub fn render(r: &BenchReport) -> String {
    let opt =
        |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
    format!(
        "kernal bench: {} params, {} trainers, min_updates {}, {}, {} versions, {} updates\n\
         seconds per version   median {:.4}  min {:.4}  max {:.4}  ({:.1} versions/s)\n\
         update bytes in       {:.1} MB/s\n\
         model bytes out       {:.1} MB/s\n\
         ack latency           p50 {:.1} ms  p99 {:.1} ms\n\
         aggregation           {} s per version, fold rate {} GB/s\n\
         hub                   peak RSS {} MiB, CPU {} s\n\
         (connecting took {:.1} s; open files limit {}){}\n",
        r.params,
        r.trainers,
        r.min_updates,
        r.strategy,
        r.versions,
        r.update_dtype,
        r.seconds_per_version_median,
        r.seconds_per_version_min,
        r.seconds_per_version_max,
        r.versions_per_sec,
        r.update_bytes_in_per_sec / 1e6,
        r.model_bytes_out_per_sec / 1e6,
        r.ack_latency_p50_ms,
        r.ack_latency_p99_ms,
        opt(r.aggregation_seconds_median, 4),
        opt(r.fold_rate_gb_per_sec, 2),
        opt(r.hub_peak_rss_mib, 0),
        opt(r.hub_cpu_seconds, 1),
        r.connect_seconds,
        r.open_files_limit
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
        match (r.rejoin_seconds, r.rejoin_median_seconds, r.rejoin_refused_upgrades) {
            (Some(all), Some(median), Some(refused)) => format!(
                "\nrejoin after a restart  all {} trainers welcomed in {all:.1} s (median {median:.1} s), {refused} upgrades refused on the way",
                r.trainers
            ),
            _ => String::new(),
        },
    )
}
