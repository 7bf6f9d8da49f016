//! Memory over many versions: a `kernal hub` child process folds thousands
//! of versions of a tiny model (one raw trainer, `min_updates = 1`) and its
//! resident set, read from /proc, stays flat once warmed up. Hub RSS used to
//! grow by about 2 KB per version with nothing to show for it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Resident set (VmRSS) of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Trainers folded into each version; each sends one update per version.
const TRAINERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_memory_stays_flat_over_many_versions() {
    // Overridable for longer runs by hand: KERNAL_SOAK_VERSIONS=20000.
    let total = env_or("KERNAL_SOAK_VERSIONS", 400);
    let warm = total / 2;
    let dir = tempfile::tempdir().unwrap();
    // A small page cache, so that the warm-up (the cache filling with the
    // ledger's newest pages) is over within a few hundred versions; the
    // default (2 MiB) fills the same way, only later.
    let hub = HubProc::start(
        dir.path(),
        "[hub]\ndb_cache_kib = 256\n",
        &[("RUST_LOG", "warn")],
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/models", hub.url()))
        .bearer_auth(ADMIN)
        .json(
            &json!({"name": "soak", "inputs": 4, "hidden": 4, "classes": 2,
                      "normalisation": "off",
                      "aggregation": {"min_updates": TRAINERS, "round_timeout_secs": 5.0}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let layout = kernal_hub::model::MlpSpec {
        inputs: 4,
        hidden: 4,
        classes: 2,
    }
    .layout();
    let delta = layout
        .encode(&vec![0.0001; layout.num_params()], None)
        .unwrap();
    let pid = hub.pid();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..TRAINERS {
        let (ws, delta) = (hub.ws(), delta.clone());
        tasks.push(tokio::spawn(async move {
            let (mut t, w, _) = Raw::hello(&ws, &format!("soaker{i}"), "tok", "soak").await;
            let mut version = w["version"].as_u64().unwrap();
            let mut samples = Vec::new();
            for k in 0..total {
                // Long ids: more ledger bytes per version, so a cache that
                // keeps them shows sooner.
                let id = format!("{k:0>96}");
                t.send_update(&id, version, 1, delta.clone()).await;
                let o = t.outcome(&id).await;
                assert_eq!(o["type"], "ack", "{o}");
                version =
                    tokio::time::timeout(Duration::from_secs(30), t.wait_version(version + 1))
                        .await
                        .expect("a version within 30 s")
                        .0;
                if i == 0 && (k % 50 == 0 || k + 1 == total) {
                    samples.push((k, rss_kib(pid)));
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    for (k, kib) in &samples {
        println!("version {k:>6}: VmRSS {kib} KiB");
    }
    println!("{total} versions of {TRAINERS} updates in {secs:.1} s");
    let at_warm = samples
        .iter()
        .find(|(k, _)| *k >= warm)
        .map(|s| s.1)
        .unwrap();
    let end = samples.last().unwrap().1;
    let grown = end.saturating_sub(at_warm);
    let per_version = grown as f64 * 1024.0 / (total - warm) as f64;
    println!(
        "after warm-up (version {warm}): {at_warm} -> {end} KiB, {per_version:.0} bytes per version"
    );
    // Before the page cache was bounded this run grew by about 4 KB per
    // version (a 16 MiB cache filling with the ledger).
    assert!(
        per_version < 400.0,
        "the hub's resident set grew by {grown} KiB over {} versions after warm-up ({per_version:.0} bytes per version)",
        total - warm
    );
}
