//! Updates spooled to their blob file as they arrive (`hub.spool_min_bytes`):
//! checked and folded from the file like any other, refused ones leave no
//! file behind, and the version they make is what the same updates make in
//! memory. (Their survival of `kill -9` is in tests/durability.rs, whose hub
//! spools the digits updates.)

mod common;

use std::time::Duration;

use common::*;

/// Files in the hub's blob directory.
fn blob_files(hub: &TestHub) -> usize {
    std::fs::read_dir(hub.dir.path().join("hub.db.blobs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Two trainers' updates folded into version 1; returns its weights and the
/// outcome of a NaN update sent first.
async fn fold_two(spool_min_bytes: usize) -> (Vec<f32>, serde_json::Value, usize) {
    // (The files count of the blob directory before the refused update.)
    let hub = start_hub(|c| {
        c.hub.blob_file_threshold_bytes = 1024;
        c.hub.spool_min_bytes = spool_min_bytes;
        let m = c.models.get_mut("digits").unwrap();
        m.aggregation.min_updates = Some(2);
        m.aggregation.screen_max_share = Some(0.0);
    });
    let layout = digits_layout();
    let n = layout.num_params();
    let (mut a, _, w0) = Raw::hello(&hub.ws(), "alice", "tok-a", "digits").await;
    let (mut b, _, _) = Raw::hello(&hub.ws(), "bob", "tok-b", "digits").await;
    let before = blob_files(&hub);
    let mut bad = vec![0.01f32; n];
    bad[n / 2] = f32::NAN;
    a.send_update("bad", 0, 10, layout.encode(&bad, None).unwrap())
        .await;
    let refused = a.outcome("bad").await;
    // A refused update's file goes with it.
    wait_for(
        "no file left by the refused update",
        Duration::from_secs(10),
        || {
            let now = blob_files(&hub);
            async move { (now == before).then_some(()) }
        },
    )
    .await;
    let da: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 1e-3).collect();
    let db: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 2e-3).collect();
    a.send_update("a1", 0, 10, layout.encode(&da, None).unwrap())
        .await;
    assert_eq!(a.outcome("a1").await["type"], "ack");
    b.send_update("b1", 0, 30, layout.encode(&db, None).unwrap())
        .await;
    assert_eq!(b.outcome("b1").await["type"], "ack");
    let (v, bytes) = a.wait_version(1).await;
    assert_eq!(v, 1);
    let w1 = layout.decode(&bytes).unwrap();
    // The version a trainer is sent is the one stored.
    let stored = reqwest::get(format!("{}/v1/models/digits/versions/1/weights", hub.url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(layout.decode(&stored).unwrap(), w1);
    let _ = w0;
    (w1, refused, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_updates_are_checked_and_folded_like_updates_in_memory() {
    // The digits model's updates are about 19 KB: spooled from 8 KiB, held
    // in memory with spooling off.
    let (spooled, refused, _) = fold_two(8192).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "non_finite", "{refused}");
    let (in_memory, refused, _) = fold_two(0).await;
    assert_eq!(refused["code"], "non_finite", "{refused}");
    assert_eq!(spooled.len(), in_memory.len());
    for (i, (s, m)) in spooled.iter().zip(&in_memory).enumerate() {
        assert!(
            (s - m).abs() <= 1e-7 * m.abs().max(1.0),
            "weight {i}: {s} vs {m}"
        );
    }
}
