//! What lets one hub serve a fleet of 10,000 trainers under a 20,000
//! open-files limit: one descriptor per connection (the hub used to keep a
//! duplicate of every trainer's socket, two per trainer), and hub-issued
//! tokens checked without argon2.

mod common;

use common::*;
use serde_json::Value;

/// Sockets the process holds open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_descriptor_per_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(dir.path(), "", &[]);
    let n = 60;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/trainer-tokens?count={n}", hub.url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let before = sockets(hub.pid());
    let mut fleet = Vec::new();
    for (i, t) in v["tokens"].as_array().unwrap().iter().enumerate() {
        let (raw, _, _) = Raw::hello(
            &hub.ws(),
            &format!("fleet{i}"),
            t.as_str().unwrap(),
            "digits",
        )
        .await;
        fleet.push(raw);
    }
    let held = sockets(hub.pid()).saturating_sub(before);
    // One socket per trainer (give or take the admin call's connection and
    // a few the hub opens meanwhile); a duplicate per connection made it 2n
    // (127 sockets for 60 trainers before).
    assert!(
        held > n * 9 / 10 && held < n + n / 2,
        "{held} sockets for {n} trainers"
    );
}

/// Past `hub.max_pending_updates` new work waits for a place: with room for
/// two unanswered updates, eight trainers that answer every version at once
/// are all still served (every update acked, every trainer given newer
/// versions), none left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pacer_serves_every_trainer_in_turn() {
    let hub = start_hub(|c| {
        c.hub.max_pending_updates = 2;
        c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(3);
    });
    let layout = digits_layout();
    let n = layout.num_params();
    let mut fleet = Vec::new();
    for i in 0..8 {
        let ws = hub.ws();
        let layout = layout.clone();
        fleet.push(tokio::spawn(async move {
            let name = format!("fast{i}");
            let (mut r, w, _) = Raw::hello(&ws, &name, "tok", "digits").await;
            let mut base = w["version"].as_u64().unwrap();
            let mut seen = vec![base];
            for k in 0..4 {
                let id = format!("{name}-{k}");
                let delta = vec![1e-3 * (i + 1) as f32; n];
                r.send_update(&id, base, 10, layout.encode(&delta, None).unwrap())
                    .await;
                assert_eq!(r.outcome(&id).await["type"], "ack", "{id}");
                if k < 3 {
                    base = r.wait_version(base + 1).await.0;
                    seen.push(base);
                }
            }
            seen
        }));
    }
    for t in fleet {
        let seen = tokio::time::timeout(std::time::Duration::from_secs(60), t)
            .await
            .expect("every trainer is served within a minute")
            .unwrap();
        assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
    }
}
