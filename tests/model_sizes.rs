//! Sizes checked before anyone waits: a trainer whose update is larger than
//! the hub takes (`welcome.max_message_bytes`) stops at once with
//! `message_too_large` instead of sending it again and again; a model whose
//! full update could never fit is refused at creation.

mod common;

use std::time::Duration;

use common::*;
use kernal_client::connection::{self, ClientError, ClientEvent, ClientOptions};
use kernal_client::MlpLearner;
use kernal_hub::data;
use kernal_hub::model::{MlpSpec, TrainSettings};

const SPEC: MlpSpec = MlpSpec {
    inputs: 64,
    hidden: 64,
    classes: 10,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_whose_update_cannot_fit_stops_without_sending() {
    // The built-in digits MLP is 4874 float32 weights (19.5 KB) per update.
    let hub = start_hub(|c| c.hub.max_message_bytes = 8192);
    let cfg = kernal_hub::Config::builtin();
    let settings = TrainSettings {
        epochs: 1,
        lr: 0.1,
        batch_size: 32,
        seed: data::fnv1a("big"),
    };
    let learner = MlpLearner::for_digits(SPEC, "networking", &cfg.specialties, settings).unwrap();
    let opts = ClientOptions::new(&hub.hub.ws_url(), "big", "networking", "tok");
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let run = connection::run(
        opts,
        learner,
        move |e: &ClientEvent| seen.lock().unwrap().push(e.clone()),
        std::future::pending(),
    );
    let r = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the trainer stops by itself instead of resending");
    let err = r.expect_err("the update cannot be sent");
    match &err {
        ClientError::Refused { code, message } => {
            assert_eq!(code, "message_too_large");
            assert!(message.contains("at most 8192 bytes"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let events = events.lock().unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ClientEvent::Reconnect { .. })),
        "no reconnection: {events:?}"
    );
    // It trained, then stopped before sending: the hub never had to refuse.
    assert!(events
        .iter()
        .any(|e| matches!(e, ClientEvent::Trained { .. })));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ClientEvent::Error { .. })),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_no_trainer_could_send_is_refused_at_creation() {
    // 64 KiB per message, and a 256 KiB budget shared at most half by one
    // connection: 128 KiB. The effective limit is 64 KiB.
    let hub = start_hub(|c| {
        c.hub.max_message_bytes = 65536;
        c.hub.max_inflight_update_bytes = 262144;
        c.hub.max_inflight_share = 0.5;
    });
    let http = reqwest::Client::new();
    let create = |body: serde_json::Value| {
        http.post(format!("{}/v1/models", hub.url()))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    // 64·256 + 256 + 256·10 + 10 = 19210 parameters: 76.8 KB of float32.
    let r = create(serde_json::json!({"name": "big", "inputs": 64, "hidden": 256, "classes": 10}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "update_over_limit", "{e}");
    let m = e["message"].as_str().unwrap();
    for key in [
        "hub.max_message_bytes (65536)",
        "hub.max_inflight_update_bytes (262144)",
        "hub.max_inflight_share (0.5)",
        "at most 65536",
    ] {
        assert!(m.contains(key), "{key} in {m}");
    }
    let r = get_json(&format!("{}/v1/models", hub.url())).await;
    assert!(!r.to_string().contains("\"big\""), "not created: {r}");

    // The same through a safetensors body, and the share as the limit.
    let layout = kernal_hub::protocol::ModelLayout::new(vec![("w".into(), vec![20_000])]);
    let body = layout.encode(&vec![0.0; 20_000], None).unwrap();
    let hub2 = start_hub(|c| {
        c.hub.max_inflight_update_bytes = 131072;
        c.hub.max_inflight_share = 0.5;
    });
    let r = http
        .post(format!("{}/v1/models?name=flat", hub2.url()))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "update_over_limit", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("at most 65536"),
        "{e}"
    );

    // A model that fits is created as before.
    let r = create(serde_json::json!({"name": "small", "inputs": 64, "hidden": 64, "classes": 10}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
