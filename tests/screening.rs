//! Screening on the hub's own data, against a real hub: a member whose
//! update makes the folded model worse on the hub's data is left out of
//! the fold (listed in `screened_update_ids`, consumed with no weight),
//! honest specialists are kept, and `screen_max_share = 0` turns it off.

mod common;

use common::*;
use kernal_hub::data::digits_split;
use kernal_hub::model::{MlpSpec, TrainSettings};
use kernal_hub::protocol::ModelLayout;
use serde_json::{json, Value};

async fn create(url: &str, name: &str, share: f64) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/models"))
        .bearer_auth(ADMIN)
        .json(&json!({
            "name": name, "inputs": 64, "hidden": 32, "classes": 10, "normalisation": "off",
            "aggregation": {"strategy": "fedavg", "min_updates": 4, "round_timeout_secs": 600,
                            "staleness_exponent": 0, "screen_max_share": share}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// Three class-disjoint specialists train one step each from the model's
/// weights; the fourth member sends the opposite of their summed steps
/// (within every limit: its norm is clipped to a typical member's).
async fn one_round(url: &str, ws: &str, model: &str) -> Value {
    create(url, model, if model == "open" { 0.0 } else { 0.34 }).await;
    let train = digits_split().unwrap().train;
    let mut conns = Vec::new();
    let mut deltas = Vec::new();
    let mut layout = None;
    for (name, classes) in [
        ("alice", vec![0u32, 1, 2, 3]),
        ("bob", vec![4, 5, 6]),
        ("carol", vec![7, 8, 9]),
    ] {
        let (r, welcome, w) = Raw::hello(ws, name, "tok", model).await;
        let l = ModelLayout {
            tensors: serde_json::from_value(welcome["tensors"].clone()).unwrap(),
        };
        let spec = MlpSpec::from_layout(&l).unwrap();
        let s = TrainSettings {
            epochs: 2,
            lr: 0.1,
            batch_size: 32,
            seed: 1,
        };
        let (trained, _) = spec.train(&w, &train.with_classes(&classes), &s).unwrap();
        let d: Vec<f32> = trained.iter().zip(&w).map(|(t, w)| t - w).collect();
        deltas.push(d);
        conns.push(r);
        layout = Some(l);
    }
    let layout = layout.unwrap();
    let n = deltas[0].len();
    let liar: Vec<f32> = (0..n)
        .map(|i| -deltas.iter().map(|d| d[i]).sum::<f32>())
        .collect();
    let (liar_conn, _, _) = Raw::hello(ws, "mallory", "tok", model).await;
    conns.push(liar_conn);
    deltas.push(liar);
    for (r, d) in conns.iter_mut().zip(&deltas) {
        r.send_update("u1", 0, 300, layout.encode(d, None).unwrap())
            .await;
        assert_eq!(r.outcome("u1").await["type"], "ack");
    }
    conns[0].wait_version(1).await;
    get_json(&format!("{url}/v1/models/{model}/versions/latest")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_makes_the_model_worse_on_the_hubs_data_is_left_out() {
    let hub = start_hub(|_| {});
    let (url, ws) = (hub.url(), hub.ws());

    let v = one_round(&url, &ws, "screened").await;
    let m = &v["metrics"];
    assert_eq!(m["screened_update_ids"], json!(["mallory/u1"]), "{m}");
    assert_eq!(m["aggregation"]["screened"], 1, "{m}");
    assert_eq!(m["aggregation"]["members"], 3, "{m}");
    let applied = m["applied_update_ids"].to_string();
    for honest in ["alice/u1", "bob/u1", "carol/u1"] {
        assert!(applied.contains(honest), "{honest} kept: {m}");
    }
    // Consumed, not pending: nothing acknowledged is left behind.
    let ledger = get_json(&format!("{url}/v1/updates?model=screened")).await;
    assert!(!ledger.to_string().contains("pending"), "{ledger}");

    let v = one_round(&url, &ws, "open").await;
    let m = &v["metrics"];
    assert!(m.get("screened_update_ids").is_none(), "{m}");
    assert_eq!(m["aggregation"]["members"], 4, "{m}");
}
