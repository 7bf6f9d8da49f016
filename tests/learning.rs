//! Learning on a team's own data, against a real hub: federated input
//! normalisation (stats, freeze, welcome, refusals, old trainers), the hub's
//! evaluation set, pooled federated evaluation, and checkpoints that carry
//! their normalisation. The class-disjoint accuracy runs are in
//! tests/harness.rs and tests/python.rs.

mod common;

use std::time::Duration;

use common::*;
use kernal_hub::protocol::FeatureStats;
use serde_json::{json, Value};

async fn post(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(url).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn put_csv(url: &str, token: Option<&str>, body: String) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .put(url)
        .header("content-type", "text/csv")
        .body(body);
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

async fn hello_v(url: &str, name: &str, model: &str, protocol: u32) -> (Raw, Value) {
    let mut r = Raw::connect(url).await;
    r.send_json(json!({"type": "hello", "protocol": protocol, "name": name,
                       "specialty": "s", "token": "t", "model": model}))
        .await;
    let v = r.next_json_skipping_models().await;
    (r, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainers_pool_statistics_and_all_get_the_frozen_normalisation() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    // Two inputs, pooled from two trainers (min_updates 2).
    let (s, e) = post(
        &format!("{url}/v1/models"),
        Some(ADMIN),
        json!({"name": "tab", "inputs": 2, "hidden": 4, "classes": 2,
               "aggregation": {"min_updates": 2, "round_timeout_secs": 600}}),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    let m = get_json(&format!("{url}/v1/models/tab")).await;
    assert_eq!(m["normalisation"]["state"], "pooling", "{m}");
    let (s, _) = post(
        &format!("{url}/v1/models"),
        Some(ADMIN),
        json!({"name": "plain", "inputs": 2, "hidden": 4, "classes": 2, "normalisation": "off"}),
    )
    .await;
    assert_eq!(s, 201);

    // A trainer of protocol 1 would not scale its inputs: refused here, but
    // it still joins a model without normalisation.
    let (_, v) = hello_v(&hub.ws(), "old", "tab", 1).await;
    assert_eq!(v["code"], "protocol_version", "{v}");
    assert!(v["message"].as_str().unwrap().contains("normalises"), "{v}");
    let (_, v) = hello_v(&hub.ws(), "old", "plain", 1).await;
    assert_eq!(v["type"], "welcome", "{v}");
    assert!(v.get("normalisation").is_none(), "{v}");

    let (mut a, w) = hello_v(&hub.ws(), "a", "tab", 2).await;
    assert_eq!(w["normalisation"]["state"], "pooling", "{w}");
    assert_eq!(w["normalisation"]["features"], 2);

    // Bad statistics are refused with bad_stats; the connection stays.
    for bad in [
        json!({"type": "stats", "count": 2, "sum": [1.0], "sumsq": [1.0]}),
        json!({"type": "stats", "count": 0, "sum": [0.0, 0.0], "sumsq": [0.0, 0.0]}),
        json!({"type": "stats", "count": 2, "sum": [4.0, 0.0], "sumsq": [1.0, 0.0]}),
        json!({"type": "stats", "count": 2, "sum": [3e38, 0.0], "sumsq": [1e300, 0.0]}),
    ] {
        a.send_json(bad.clone()).await;
        let e = a.expect_error().await;
        assert_eq!(e["code"], "bad_stats", "{bad} -> {e}");
    }
    a.send_text(r#"{"type":"stats","count":2,"sum":[NaN,0],"sumsq":[1,0]}"#)
        .await;
    assert_eq!(a.expect_error().await["code"], "bad_stats");

    // a: feature 0 is 0 or 2; b: feature 0 is 4 or 6. Feature 1 constant.
    a.send_json(stats_msg(&[[0.0, 5.0], [2.0, 5.0]])).await;
    let r = a.expect_type("stats_received").await;
    assert_eq!(
        (r["trainers"].as_u64(), r["frozen"].as_bool()),
        (Some(1), Some(false))
    );
    // Reporting again replaces: still one trainer.
    a.send_json(stats_msg(&[[0.0, 5.0], [2.0, 5.0]])).await;
    assert_eq!(a.expect_type("stats_received").await["trainers"], 1);

    let (mut b, _) = hello_v(&hub.ws(), "b", "tab", 2).await;
    b.send_json(stats_msg(&[[4.0, 5.0], [6.0, 5.0]])).await;
    // The second report reaches min_updates: frozen, everyone told.
    for t in [&mut a, &mut b] {
        let n = t.expect_type("normalisation").await;
        let norm = &n["normalisation"];
        assert_eq!(norm["state"], "frozen", "{n}");
        assert_eq!(norm["mean"], json!([3.0, 5.0]));
        assert!((norm["std"][0].as_f64().unwrap() - 5f64.sqrt()).abs() < 1e-5);
        assert_eq!(norm["std"][1], 1.0, "a constant feature keeps std 1");
        assert_eq!(
            (norm["trainers"].as_u64(), norm["count"].as_u64()),
            (Some(2), Some(4))
        );
    }
    // A late trainer gets it in its welcome; its report is not pooled.
    let (mut c, w) = hello_v(&hub.ws(), "c", "tab", 2).await;
    assert_eq!(w["normalisation"]["state"], "frozen");
    c.send_json(stats_msg(&[[100.0, 5.0]])).await;
    assert_eq!(c.expect_type("stats_received").await["frozen"], true);
    let m = get_json(&format!("{url}/v1/models/tab")).await;
    assert_eq!(m["normalisation"]["mean"], json!([3.0, 5.0]));

    // Admin freeze: already frozen -> 409; no auth -> 401.
    let freeze = format!("{url}/v1/models/tab/normalisation/freeze");
    let (s, _) = post(&freeze, None, json!({})).await;
    assert_eq!(s, 401);
    let (s, e) = post(&freeze, Some(ADMIN), json!({})).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("conflict")));
    let (s, _) = post(
        &format!("{url}/v1/models/plain/normalisation/freeze"),
        Some(ADMIN),
        json!({}),
    )
    .await;
    assert_eq!(s, 409, "plain has no normalisation");

    // The checkpoint carries the statistics as two more tensors.
    let bytes = reqwest::get(format!("{url}/v1/models/tab/versions/0/weights"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mean = st.tensor("normalisation.mean").unwrap();
    assert_eq!(mean.shape(), &[2]);
    assert!(st.tensor("fc1.weight").is_ok());

    // Statistics on a model without normalisation are refused.
    let (mut d, _) = hello_v(&hub.ws(), "d", "plain", 2).await;
    d.send_json(stats_msg(&[[1.0, 2.0]])).await;
    assert_eq!(d.expect_error().await["code"], "bad_stats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_statistics_survive_a_restart_and_admin_freeze_ends_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("[hub]\nadmin_token = \"{ADMIN}\"\n");
    let mut hub = HubProc::start(dir.path(), &cfg, &[]);
    let url = hub.url();
    let (s, e) = post(
        &format!("{url}/v1/models"),
        Some(ADMIN),
        json!({"name": "tab", "inputs": 2, "hidden": 4, "classes": 2,
               "aggregation": {"min_updates": 3, "round_timeout_secs": 600}}),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    let (mut a, _) = hello_v(&hub.ws(), "a", "tab", 2).await;
    a.send_json(stats_msg(&[[1.0, 2.0], [3.0, 2.0]])).await;
    a.expect_type("stats_received").await;
    hub.kill9();
    hub.spawn("127.0.0.1:0").expect("restart");
    let url = hub.url();
    let m = get_json(&format!("{url}/v1/models/tab")).await;
    assert_eq!(m["normalisation"]["state"], "pooling", "{m}");
    assert_eq!(m["normalisation"]["trainers"], 1, "the report was stored");
    let (mut b, _) = hello_v(&hub.ws(), "b", "tab", 2).await;
    let (s, f) = post(
        &format!("{url}/v1/models/tab/normalisation/freeze"),
        Some(ADMIN),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["normalisation"]["mean"], json!([2.0, 2.0]));
    let n = b.expect_type("normalisation").await;
    assert_eq!(n["normalisation"]["mean"], json!([2.0, 2.0]));
    hub.kill9();
    hub.spawn("127.0.0.1:0").expect("restart");
    let m = get_json(&format!("{}/v1/models/tab", hub.url())).await;
    assert_eq!(m["normalisation"]["state"], "frozen", "{m}");
    assert_eq!(m["normalisation"]["mean"], json!([2.0, 2.0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_or_off_normalisation_and_bad_requests_are_clear() {
    let hub = start_hub(|_| {});
    let url = format!("{}/v1/models", hub.url());
    let (s, e) = post(
        &url,
        Some(ADMIN),
        json!({"name": "g", "inputs": 2, "hidden": 2, "classes": 2,
        "normalisation": {"mean": [1.0, 2.0], "std": [0.5, 0.0]}}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("normalisation.std"),
        "{e}"
    );
    let (s, e) = post(
        &url,
        Some(ADMIN),
        json!({"name": "g", "inputs": 2, "hidden": 2, "classes": 2,
        "normalisation": {"mean": [1.0], "std": [1.0]}}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = post(
        &url,
        Some(ADMIN),
        json!({"name": "f", "architecture": "flat", "params": 4,
        "normalisation": "federated"}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, _) = post(
        &url,
        Some(ADMIN),
        json!({"name": "g", "inputs": 2, "hidden": 2, "classes": 2,
        "normalisation": {"mean": [1.0, 2.0], "std": [0.5, 2.0]}}),
    )
    .await;
    assert_eq!(s, 201);
    let (_, w) = hello_v(&hub.ws(), "a", "g", 2).await;
    assert_eq!(w["normalisation"]["state"], "frozen");
    assert_eq!(w["normalisation"]["std"], json!([0.5, 2.0]));
    let (s, _) = post(
        &url,
        Some(ADMIN),
        json!({"name": "o", "inputs": 2, "hidden": 2, "classes": 2,
        "normalisation": "off"}),
    )
    .await;
    assert_eq!(s, 201);
    // A model without normalisation: protocol 1 joins, no field in welcome.
    let (_, w) = hello_v(&hub.ws(), "b", "o", 1).await;
    assert_eq!(w["type"], "welcome");
    assert!(w.get("normalisation").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_scores_every_version_on_an_attached_evaluation_set() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    let (s, _) = post(
        &format!("{url}/v1/models"),
        Some(ADMIN),
        json!({"name": "tab", "inputs": 2, "hidden": 4, "classes": 2,
               "normalisation": {"mean": [0.0, 0.0], "std": [1.0, 1.0]},
               "aggregation": {"min_updates": 1}}),
    )
    .await;
    assert_eq!(s, 201);
    let evalset = format!("{url}/v1/models/tab/evalset");
    let csv = "x,y,label\n1,0,0\n2,0,0\n0,1,1\n0,2,1\n".to_string();
    let (s, _) = put_csv(&evalset, None, csv.clone()).await;
    assert_eq!(s, 401);
    let (s, e) = put_csv(&evalset, Some(ADMIN), "1,2,3,0\n".into()).await;
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("3 features"), "{e}");
    let (s, e) = put_csv(&evalset, Some(ADMIN), "1,2,7\n".into()).await;
    assert_eq!(s, 400, "label beyond the classes: {e}");
    let (s, e) = put_csv(&evalset, Some(ADMIN), "not,a,number\n1,x,0\n".into()).await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = put_csv(
        &format!("{url}/v1/models/nope/evalset"),
        Some(ADMIN),
        csv.clone(),
    )
    .await;
    assert_eq!(s, 404, "{e}");
    let (s, r) = put_csv(&evalset, Some(ADMIN), csv).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["rows"].as_u64(), r["features"].as_u64()),
        (Some(4), Some(2))
    );
    // Version 0 is scored right away, off the fold.
    let v0 = wait_for("version 0's evaluation", Duration::from_secs(20), || {
        let u = format!("{url}/v1/models/tab/versions/0");
        async move {
            let v = get_json(&u).await;
            (v["metrics"]["eval"]["dataset"] == "evalset").then_some(v)
        }
    })
    .await;
    assert_eq!(v0["metrics"]["eval"]["examples"], 4);

    // An update and an eval report: version 1 is scored too, and the
    // trainers' reports of version 0 are pooled.
    let layout = kernal_hub::model::MlpSpec {
        inputs: 2,
        hidden: 4,
        classes: 2,
    }
    .layout();
    let (mut a, _) = hello_v(&hub.ws(), "a", "tab", 2).await;
    let _ = a.next().await; // weights
    a.send_json(json!({"type": "eval", "version": 0, "global_accuracy": 0.5, "loss": 1.0, "num_examples": 30})).await;
    let (mut b, _) = hello_v(&hub.ws(), "b", "tab", 2).await;
    b.send_json(json!({"type": "eval", "version": 0, "global_accuracy": 1.0, "loss": 0.0, "num_examples": 10})).await;
    let delta = layout
        .encode(&vec![0.01; layout.num_params()], None)
        .unwrap();
    a.send_update("u1", 0, 10, delta).await;
    assert_eq!(a.outcome("u1").await["type"], "ack");
    let versions = wait_for(
        "version 1 scored and reports pooled",
        Duration::from_secs(20),
        || {
            let u = format!("{url}/v1/models/tab/versions");
            async move {
                let v = get_json(&u).await;
                let vs = v["versions"].as_array()?.clone();
                let ok = vs.len() >= 2
                    && vs[1]["metrics"]["eval"]["dataset"] == "evalset"
                    && vs[0]["federated_eval"]["reports"] == 2;
                ok.then_some(vs)
            }
        },
    )
    .await;
    let fe = &versions[0]["federated_eval"];
    assert!(
        (fe["accuracy"].as_f64().unwrap() - 0.625).abs() < 1e-9,
        "example-weighted: {fe}"
    );
    assert_eq!(fe["examples"], 40);
    let m = get_json(&format!("{url}/v1/models/tab")).await;
    assert_eq!(m["evalset"]["rows"], 4, "{m}");
    assert_eq!(m["last_metrics"]["eval"]["dataset"], "evalset", "{m}");
    let one = get_json(&format!("{url}/v1/models/tab/versions/0")).await;
    assert_eq!(one["federated_eval"]["reports"], 2, "{one}");
}

/// Anyone may register names: a flood of reports under fresh names ends
/// the pool at its cap (256) instead of growing a record rewritten on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_statistics_under_fresh_names_freezes_the_pool_at_its_cap() {
    let hub = start_hub(|c| c.hub.open_registration = true);
    let url = hub.url();
    let (s, _) = post(
        &format!("{url}/v1/models"),
        Some(ADMIN),
        json!({"name": "tab", "inputs": 2, "hidden": 4, "classes": 2,
               "aggregation": {"min_updates": 100000, "round_timeout_secs": 600,
                               "normalisation_wait_secs": 86400}}),
    )
    .await;
    assert_eq!(s, 201);
    let mut frozen_at = None;
    for i in 0..300 {
        let (mut t, _) = hello_v(&hub.ws(), &format!("flood{i}"), "tab", 2).await;
        t.send_json(stats_msg(&[[1e9, 0.0], [-1e9, 0.0]])).await;
        let r = t.expect_type("stats_received").await;
        if r["frozen"] == true {
            frozen_at = Some(i);
            break;
        }
    }
    assert_eq!(frozen_at, Some(255), "frozen at the 256th report");
    let m = get_json(&format!("{url}/v1/models/tab")).await;
    assert_eq!(m["normalisation"]["trainers"], 256, "{m}");
    // An honest trainer still joins and gets the frozen statistics.
    let (_, w) = hello_v(&hub.ws(), "honest", "tab", 2).await;
    assert_eq!(w["normalisation"]["state"], "frozen");
}
