//! `DELETE /v1/models/{m}` (admin): refused while trainers are connected
//! unless forced; then they are told `model_deleted` and disconnected, the
//! model's versions, ledger rows and blob files are gone, the deletion is
//! recorded and published, and the name can be used again.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use kernal_hub::protocol::ModelLayout;
use serde_json::{json, Value};

fn blob_files(hub: &TestHub) -> BTreeSet<String> {
    std::fs::read_dir(hub.dir.path().join("hub.db.blobs"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn delete(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().delete(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_model_removes_it_and_leaves_a_record() {
    // Every checkpoint and payload of the 19 KB model goes to a blob file.
    let hub = start_hub(|c| c.hub.blob_file_threshold_bytes = 1024);
    let url = hub.url();
    let before = blob_files(&hub);
    let http = reqwest::Client::new();
    let create = || {
        http.post(format!("{url}/v1/models"))
            .bearer_auth(ADMIN)
            .json(
                &json!({"name": "exp", "inputs": 64, "hidden": 64, "classes": 10,
                          "aggregation": {"min_updates": 1}}),
            )
            .send()
    };
    assert_eq!(create().await.unwrap().status(), 201);
    let mut events = Raw::connect(&format!("{}/v1/events", hub.hub.ws_url())).await;

    let (mut t, welcome, w) = Raw::hello(&hub.ws(), "alice", "tok", "exp").await;
    let layout = ModelLayout {
        tensors: serde_json::from_value(welcome["tensors"].clone()).unwrap(),
    };
    let delta = vec![0.01f32; w.len()];
    t.send_update("u1", 0, 10, layout.encode(&delta, None).unwrap())
        .await;
    assert_eq!(t.outcome("u1").await["type"], "ack");
    t.wait_version(1).await;
    assert!(
        blob_files(&hub).len() > before.len(),
        "the model has blob files"
    );

    let m = format!("{url}/v1/models/exp");
    let (s, _) = delete(&m, None).await;
    assert_eq!(s, 401);
    let (s, e) = delete(&m, Some(ADMIN)).await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(e["code"], "model_in_use");
    assert!(e["message"].as_str().unwrap().contains("alice"), "{e}");
    assert!(e["message"].as_str().unwrap().contains("force=true"), "{e}");
    assert_eq!(get_json(&m).await["name"], "exp", "still there");

    let (s, rec) = delete(&format!("{m}?force=true"), Some(ADMIN)).await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["model"], "exp");
    assert_eq!(rec["forced"], true);
    assert_eq!(rec["disconnected"], 1);
    assert_eq!(rec["last_version"], 1);
    assert_eq!(rec["versions"], 2, "{rec}");
    assert_eq!(rec["updates"], 1, "{rec}");
    assert!(rec["files"].as_i64().unwrap() >= 1, "{rec}");

    // The trainer was told, and disconnected.
    let e = t.expect_error().await;
    assert_eq!(e["code"], "model_deleted", "{e}");
    assert_eq!(e["fatal"], true);
    // Gone from the API, the ledger and the disk; published; recorded.
    let r = http.get(&m).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{m}/versions/0/weights"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let ledger = get_json(&format!("{url}/v1/updates")).await;
    assert!(
        !ledger.to_string().contains("\"exp\""),
        "no ledger row: {ledger}"
    );
    assert_eq!(blob_files(&hub), before, "its blob files are removed");
    let deleted = loop {
        let v = events.next_json_skipping_models().await;
        if v["type"] == "model_deleted" || v.to_string().contains("model_deleted") {
            break v;
        }
        assert_ne!(v["type"], "closed");
    };
    assert!(deleted.to_string().contains("\"exp\""), "{deleted}");
    let audit = get_json(&format!("{url}/v1/deleted-models")).await;
    assert_eq!(audit["deletions"][0]["model"], "exp", "{audit}");
    assert_eq!(audit["deletions"][0]["updates"], 1);
    // A hello for it is refused; the name can be used again, from version 0.
    let mut r = Raw::connect(&hub.ws()).await;
    r.send_json(
        json!({"type": "hello", "name": "bob", "specialty": "s", "token": "t", "model": "exp"}),
    )
    .await;
    assert_eq!(r.expect_error().await["code"], "unknown_model");
    assert_eq!(create().await.unwrap().status(), 201);
    let v = wait_for("the new model", Duration::from_secs(10), || {
        let u = m.clone();
        async move { get_json(&u).await["version"].as_u64() }
    })
    .await;
    assert_eq!(v, 0);

    // Without trainers no force is needed; unknown and configured models.
    let (s, rec) = delete(&m, Some(ADMIN)).await;
    assert_eq!(
        (s, rec["forced"].clone(), rec["disconnected"].clone()),
        (200, json!(false), json!(0))
    );
    let (s, e) = delete(&m, Some(ADMIN)).await;
    assert_eq!((s, e["code"].clone()), (404, json!("not_found")));
    let (s, e) = delete(&format!("{url}/v1/models/digits"), Some(ADMIN)).await;
    assert_eq!((s, e["code"].clone()), (409, json!("conflict")), "{e}");
    assert_eq!(
        get_json(&format!("{url}/v1/deleted-models")).await["deletions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
