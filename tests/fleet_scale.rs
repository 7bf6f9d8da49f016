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
