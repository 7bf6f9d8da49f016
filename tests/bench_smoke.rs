//! CI keeps `kernal bench` working with a few-second smoke run; the figures
//! in the README come from the full runs documented there.

mod common;

use std::process::Command;

use common::kernal_bin;

#[test]
fn bench_smoke_run_reports_every_figure() {
    let out = Command::new(kernal_bin())
        .args([
            "bench",
            "--params",
            "20000",
            "--trainers",
            "3",
            "--versions",
            "5",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    for k in [
        "seconds_per_version_median",
        "seconds_per_version_min",
        "seconds_per_version_max",
        "versions_per_sec",
        "update_bytes_in_per_sec",
        "model_bytes_out_per_sec",
        "ack_latency_p50_ms",
        "ack_latency_p99_ms",
        "aggregation_seconds_median",
        "fold_rate_gb_per_sec",
        "hub_peak_rss_mib",
        "hub_cpu_seconds",
    ] {
        assert!(r[k].as_f64().is_some(), "{k} missing in {r}");
    }
    assert_eq!(r["trainers"], 3);
    assert!(r["seconds_per_version_median"].as_f64().unwrap() > 0.0);
    let table = Command::new(kernal_bin())
        .args([
            "bench",
            "--params",
            "1000",
            "--trainers",
            "2",
            "--versions",
            "2",
        ])
        .output()
        .unwrap();
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("seconds per version"));
}
