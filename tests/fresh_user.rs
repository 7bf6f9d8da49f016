//! Defects a new user met trying the hub (issue 24): model names that are
//! path components or device names, evaluation sets with values beyond f32,
//! and a resend of an accepted update refused for its payload.

mod common;

use common::*;
use serde_json::{json, Value};

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn put_csv(url: &str, csv: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(url)
        .bearer_auth(ADMIN)
        .header("content-type", "text/csv")
        .body(csv.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn tiny(name: &str, min_updates: u64) -> Value {
    json!({"name": name, "inputs": 2, "hidden": 2, "classes": 2, "normalisation": "off",
           "aggregation": {"min_updates": min_updates, "round_timeout_secs": 60.0}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_names_that_are_path_components_or_device_names_are_refused() {
    let hub = start_hub(|_| {});
    let url = format!("{}/v1/models", hub.url());
    for name in [
        ".", "..", "CON", "con", "Con.txt", "nul", "NUL.csv", "prn", "aux.x.y", "COM1", "com9",
        "LPT1", "lpt9.log",
    ] {
        let (s, e) = post_json(&url, tiny(name, 1)).await;
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("bad_request")),
            "{name}: {e}"
        );
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains("path component") || m.contains("reserved device name"),
            "{name}: {m}"
        );
    }
    // Also as a safetensors upload's `name`.
    let layout = kernal_hub::model::MlpSpec {
        inputs: 2,
        hidden: 2,
        classes: 2,
    }
    .layout();
    let body = layout
        .encode(&vec![0.0; layout.num_params()], None)
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!("{url}?name=..", url = url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Names that only look alike are fine.
    for name in [
        "...x",
        "CONSOLE",
        "com10",
        "lpt",
        "my.con",
        "nul_model",
        "a..b",
    ] {
        let (s, e) = post_json(&url, tiny(name, 1)).await;
        assert_eq!(s, 201, "{name}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_sets_beyond_the_f32_range_are_refused_with_bad_eval() {
    let hub = start_hub(|_| {});
    let (s, e) = post_json(&format!("{}/v1/models", hub.url()), tiny("ev", 1)).await;
    assert_eq!(s, 201, "{e}");
    let evalset = format!("{}/v1/models/ev/evalset", hub.url());
    for (cell, column) in [("1e39", 1), ("1e308", 2), ("-1e39", 1), ("NaN", 2)] {
        let row = if column == 1 {
            format!("{cell},0,1")
        } else {
            format!("0,{cell},1")
        };
        let csv = format!("x,y,label\n1,0,0\n{row}\n");
        let (s, e) = put_csv(&evalset, &csv).await;
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("bad_eval")),
            "{cell}: {e}"
        );
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains(&format!("line 3, column {column}")),
            "{cell}: {m}"
        );
    }
    // f32::MAX itself is a value; the model scores on it.
    let (s, r) = put_csv(&evalset, "x,y,label\n1,0,0\n3.4e38,0,1\n").await;
    assert_eq!(s, 200, "{r}");
}

/// The ledger rows of `trainer` on `model`: (update_id, status, refusal code).
async fn ledger(base: &str, model: &str, trainer: &str) -> Vec<(String, String, Value)> {
    let v = get_json(&format!(
        "{base}/v1/updates?model={model}&trainer={trainer}&after=0"
    ))
    .await;
    v["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["update_id"].as_str().unwrap().to_string(),
                u["status"].as_str().unwrap().to_string(),
                u["refusal_code"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_of_an_accepted_update_is_a_duplicate_whatever_it_carries() {
    let hub = start_hub(|_| {});
    let base = hub.url();
    let (s, e) = post_json(&format!("{base}/v1/models"), tiny("dup", 2)).await;
    assert_eq!(s, 201, "{e}");
    let layout = kernal_hub::model::MlpSpec {
        inputs: 2,
        hidden: 2,
        classes: 2,
    }
    .layout();
    let n = layout.num_params();
    let good = layout.encode(&vec![0.01; n], None).unwrap();
    let mut nan = vec![0.01; n];
    nan[0] = f32::NAN;
    let nan = layout.encode(&nan, None).unwrap();
    let wrong_shape = kernal_hub::model::MlpSpec {
        inputs: 3,
        hidden: 2,
        classes: 2,
    }
    .layout();
    let wrong_shape = wrong_shape
        .encode(&vec![0.0; wrong_shape.num_params()], None)
        .unwrap();
    let (mut a, _, _) = Raw::hello(&hub.ws(), "alice", "tok", "dup").await;
    a.send_update("u1", 0, 5, good.clone()).await;
    let o = a.outcome("u1").await;
    assert_eq!(
        (o["type"].as_str(), o["duplicate"].as_bool()),
        (Some("ack"), Some(false)),
        "{o}"
    );

    // Pending: each resend is the duplicate, whatever is wrong with it.
    let resends: [(&str, u64, u64, &[u8]); 5] = [
        ("NaN", 0, 5, &nan),
        ("a wrong shape", 0, 5, &wrong_shape),
        ("not safetensors", 0, 5, b"garbage"),
        ("num_examples 0", 0, 0, &good),
        ("a future base", 99, 5, &good),
    ];
    for (what, b, ne, payload) in resends {
        a.send_update("u1", b, ne, payload.to_vec()).await;
        let o = a.outcome("u1").await;
        assert_eq!(o["type"], "ack", "resend with {what}: {o}");
        assert_eq!(o["duplicate"], true, "resend with {what}: {o}");
        assert_eq!(o["status"], "pending", "resend with {what}: {o}");
    }

    // Applied: a second trainer completes the round.
    let (mut b, _, _) = Raw::hello(&hub.ws(), "bob", "tok", "dup").await;
    b.send_update("b1", 0, 5, good.clone()).await;
    assert_eq!(b.outcome("b1").await["type"], "ack");
    a.wait_version(1).await;
    for (what, payload) in [("NaN", &nan), ("a wrong shape", &wrong_shape)] {
        a.send_update("u1", 0, 5, payload.clone()).await;
        let o = a.outcome("u1").await;
        assert_eq!(
            (
                o["type"].as_str(),
                o["duplicate"].as_bool(),
                o["status"].as_str()
            ),
            (Some("ack"), Some(true), Some("applied")),
            "resend with {what} after the fold: {o}"
        );
        assert_eq!(o["base_version"], 0, "{o}");
    }

    // A new id with NaN is still refused, and only it is in the ledger as such.
    a.send_update("u2", 1, 5, nan.clone()).await;
    let o = a.outcome("u2").await;
    assert_eq!(
        (o["type"].as_str(), o["code"].as_str()),
        (Some("error"), Some("non_finite")),
        "{o}"
    );
    let rows = wait_for(
        "the refusal of u2 in the ledger",
        std::time::Duration::from_secs(10),
        || {
            let base = base.clone();
            async move {
                let rows = ledger(&base, "dup", "alice").await;
                rows.iter().any(|r| r.0 == "u2").then_some(rows)
            }
        },
    )
    .await;
    assert_eq!(
        rows,
        vec![
            ("u1".to_string(), "applied".to_string(), Value::Null),
            ("u2".to_string(), "refused".to_string(), json!("non_finite")),
        ],
        "the resends left the ledger as it was"
    );
}
