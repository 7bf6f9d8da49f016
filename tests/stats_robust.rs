//! Pooled input normalisation that one member cannot break, against a real
//! hub: an absurd `stats` report (issue 19's: mean 9e8, mean square 0.99e18,
//! count 1e8, all within bounds) is left out with `stats_rejected`, an
//! administrator can reset a model's statistics to pooling, and the
//! reference trainer sends its statistics again after a reset instead of
//! training on raw inputs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kernal_client::connection::{self, ClientEvent, ClientOptions};
use kernal_client::MlpLearner;
use kernal_hub::model::{MlpSpec, TrainSettings};
use kernal_hub::protocol::FeatureStats;
use serde_json::{json, Value};

async fn post(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(url).json(&json!({}));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn stats_msg(rows: &[[f32; 2]]) -> Value {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let s = FeatureStats::of(&flat, 2);
    json!({"type": "stats", "count": s.count, "sum": s.sum, "sumsq": s.sumsq})
}

async fn join(url: &str, name: &str, model: &str) -> Raw {
    let mut r = Raw::connect(url).await;
    r.send_json(json!({"type": "hello", "protocol": 2, "name": name,
                       "specialty": "s", "token": "t", "model": model}))
        .await;
    let w = r.next_json_skipping_models().await;
    assert_eq!(w["type"], "welcome", "{w}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_report_is_left_out_and_an_admin_can_reset_the_statistics() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    let create = |body: Value| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/models"))
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201);
        }
    };
    create(
        json!({"name": "tab", "inputs": 2, "hidden": 4, "classes": 2,
                  "aggregation": {"min_updates": 4, "round_timeout_secs": 600,
                                  "normalisation_wait_secs": 600}}),
    )
    .await;
    create(
        json!({"name": "plain", "inputs": 2, "hidden": 4, "classes": 2,
                  "normalisation": "off"}),
    )
    .await;

    let mut honest = Vec::new();
    for (name, rows) in [
        ("a", [[0.0, 5.0], [2.0, 5.0]]),
        ("b", [[4.0, 5.0], [6.0, 5.0]]),
        ("c", [[1.0, 5.0], [3.0, 5.0]]),
    ] {
        let mut t = join(&hub.ws(), name, "tab").await;
        t.send_json(stats_msg(&rows)).await;
        assert_eq!(t.expect_type("stats_received").await["frozen"], false);
        honest.push(t);
    }
    // The fourth report reaches min_updates: mean 9e8, mean square
    // 0.99e18 over 1e8 rows, every value within the documented bounds.
    let mut mallory = join(&hub.ws(), "mallory", "tab").await;
    let n = 1e8f64;
    mallory
        .send_json(json!({"type": "stats", "count": 100_000_000u64,
                          "sum": [9e8 * n, 9e8 * n], "sumsq": [0.99e18 * n, 0.99e18 * n]}))
        .await;
    let e = mallory.expect_error().await;
    assert_eq!(e["code"], "stats_rejected", "{e}");
    assert!(e["message"].as_str().unwrap().contains("feature"), "{e}");
    assert_eq!(e["fatal"], false);
    // Everyone, mallory included, gets the statistics of the three others.
    for t in honest.iter_mut().chain([&mut mallory]) {
        let m = t.expect_type("normalisation").await;
        let norm = &m["normalisation"];
        assert_eq!(norm["state"], "frozen", "{m}");
        let mean: Vec<f64> = serde_json::from_value(norm["mean"].clone()).unwrap();
        assert!((mean[0] - 16.0 / 6.0).abs() < 1e-5 && mean[1] == 5.0, "{m}");
        assert_eq!(
            (norm["trainers"].as_u64(), norm["count"].as_u64()),
            (Some(3), Some(6))
        );
    }

    // The reset route: admin only, 404 and 409 where there is nothing to reset.
    let reset = format!("{url}/v1/models/tab/normalisation/reset");
    assert_eq!(post(&reset, None).await.0, 401);
    let (s, e) = post(
        &format!("{url}/v1/models/plain/normalisation/reset"),
        Some(ADMIN),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("conflict")), "{e}");
    let (s, e) = post(
        &format!("{url}/v1/models/nope/normalisation/reset"),
        Some(ADMIN),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (404, Some("unknown_model")), "{e}");
    let (s, r) = post(&reset, Some(ADMIN)).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["normalisation"]["state"], "pooling", "{r}");
    assert_eq!(r["normalisation"]["trainers"], 0, "{r}");
    let m = get_json(&format!("{url}/v1/models/tab")).await;
    assert_eq!(m["normalisation"]["state"], "pooling", "{m}");
    // Connected trainers are told as they are told of a freeze.
    for t in honest.iter_mut() {
        let m = t.expect_type("normalisation").await;
        assert_eq!(m["normalisation"]["state"], "pooling", "{m}");
    }
    // Fresh reports pool from scratch; the freeze uses only them.
    honest[0]
        .send_json(stats_msg(&[[10.0, 1.0], [12.0, 3.0]]))
        .await;
    assert_eq!(honest[0].expect_type("stats_received").await["trainers"], 1);
    honest[1]
        .send_json(stats_msg(&[[14.0, 1.0], [16.0, 3.0]]))
        .await;
    assert_eq!(honest[1].expect_type("stats_received").await["trainers"], 2);
    let (s, f) = post(
        &format!("{url}/v1/models/tab/normalisation/freeze"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["normalisation"]["mean"], json!([13.0, 2.0]), "{f}");
    let m = honest[2].expect_type("normalisation").await;
    assert_eq!(m["normalisation"]["mean"], json!([13.0, 2.0]), "{m}");
}

/// A reset reaches a running reference trainer: it sends its statistics
/// again, waits for the new freeze and keeps training on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_trainer_pools_again_after_a_reset() {
    let hub = start_hub(|c| {
        c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(1);
    });
    let url = hub.url();
    let cfg = kernal_hub::Config::builtin();
    let spec = MlpSpec {
        inputs: 64,
        hidden: 64,
        classes: 10,
    };
    let settings = TrainSettings {
        epochs: 1,
        lr: 0.1,
        batch_size: 32,
        seed: 1,
    };
    let learner = MlpLearner::for_digits(spec, "graphics", &cfg.specialties, settings).unwrap();
    let opts = ClientOptions::new(&hub.hub.ws_url(), "solo", "graphics", "tok");
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = events.clone();
    let (at_two, mut reached) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(connection::run(
        opts,
        learner,
        move |e| match e {
            ClientEvent::Normalisation { state, .. } => seen.lock().unwrap().push(state.clone()),
            ClientEvent::Version { version, .. } if *version >= 2 => {
                let _ = at_two.send(());
            }
            _ => {}
        },
        async move {
            let _ = stopped.await;
        },
    ));
    // Mid-run (the trainer runs until told to stop), reset.
    reached.recv().await.expect("the trainer reaches version 2");
    let (s, r) = post(
        &format!("{url}/v1/models/digits/normalisation/reset"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let reset_at = r["normalisation"]["count"].as_u64();
    assert_eq!(reset_at, Some(0), "{r}");
    let version_at_reset = get_json(&format!("{url}/v1/models/digits")).await["version"]
        .as_u64()
        .unwrap();
    // The trainer's fresh report freezes the pool again (min_updates 1),
    // and it trains on.
    wait_for(
        "the statistics frozen again",
        Duration::from_secs(60),
        || async {
            let m = get_json(&format!("{url}/v1/models/digits")).await;
            (m["normalisation"]["state"] == "frozen" && m["normalisation"]["trainers"] == 1)
                .then_some(())
        },
    )
    .await;
    wait_for(
        "training after the new freeze",
        Duration::from_secs(60),
        || async {
            let m = get_json(&format!("{url}/v1/models/digits")).await;
            (m["version"].as_u64()? >= version_at_reset + 3).then_some(())
        },
    )
    .await;
    let _ = stop.send(());
    let summary = run.await.unwrap().unwrap();
    assert!(summary.versions_trained >= 3, "{summary:?}");
    let states = events.lock().unwrap().clone();
    let pooled = states.iter().filter(|s| *s == "pooling").count();
    let frozen = states.iter().filter(|s| *s == "frozen").count();
    assert!(pooled >= 2 && frozen >= 2, "{states:?}");
    assert!(!states.iter().any(|s| s == "none"), "{states:?}");
}
