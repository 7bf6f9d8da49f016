//! The hub over real WebSocket and HTTP: hello/welcome, acks after
//! durability, versions pushed to every trainer, strategies on
//! hand-checkable numbers, and every bad input refused with its code while
//! another trainer keeps working.

mod common;

use std::time::Duration;

use common::*;
use kernal_hub::protocol::ModelLayout;
use serde_json::json;

fn tiny_layout() -> ModelLayout {
    ModelLayout::new(vec![("w".into(), vec![2])])
}

/// Creates a 2-parameter model with the given strategy through the admin API.
async fn create_tiny(url: &str, name: &str, query: &str, w0: [f32; 2]) {
    let body = tiny_layout().encode(&w0, None).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/models?name={name}&{query}"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_updates_acks_and_versions_reach_every_trainer() {
    let hub = start_hub(|c| {
        c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(2);
        c.models.get_mut("digits").unwrap().aggregation.strategy =
            Some(kernal_hub::aggregation::Strategy::Fedavg);
        // Plain FedAvg arithmetic: no weight cap, no clipping.
        c.models
            .get_mut("digits")
            .unwrap()
            .aggregation
            .max_weight_ratio = Some(0.0);
        c.models
            .get_mut("digits")
            .unwrap()
            .aggregation
            .clip_quantile = Some(0.0);
    });
    let health = get_json(&format!("{}/healthz", hub.url())).await;
    assert_eq!(health["status"], "ok");
    let models = get_json(&format!("{}/v1/models", hub.url())).await;
    assert_eq!(models["models"][0]["name"], "digits");

    let (mut a, wa, w0) = Raw::hello(&hub.ws(), "alice", "tok-a", "digits").await;
    let (mut b, wb, _) = Raw::hello(&hub.ws(), "bob", "tok-b", "digits").await;
    assert_eq!(wa["version"], 0);
    assert_eq!(wa["registered"], true);
    assert_eq!(wb["tensors"][0]["name"], "fc1.weight");
    let layout = digits_layout();
    let n = layout.num_params();
    // alice: delta 1.0 everywhere from 1 example; bob: 4.0 from 3 examples
    // -> fedavg: (1*1 + 3*4)/4 = 3.25 added to every weight.
    a.send_update("a1", 0, 1, layout.encode(&vec![1.0; n], None).unwrap())
        .await;
    let ack = a.outcome("a1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["duplicate"], false);
    b.send_update("b1", 0, 3, layout.encode(&vec![4.0; n], None).unwrap())
        .await;
    assert_eq!(b.outcome("b1").await["type"], "ack");
    let (va, bytes_a) = a.wait_version(1).await;
    let (vb, bytes_b) = b.wait_version(1).await;
    assert_eq!((va, vb), (1, 1));
    assert_eq!(
        bytes_a, bytes_b,
        "every trainer gets the same encoded version"
    );
    let w1 = layout.decode(&bytes_a).unwrap();
    for (x1, x0) in w1.iter().zip(&w0) {
        assert!((x1 - x0 - 3.25).abs() < 1e-4, "{x1} vs {x0}");
    }
    // The ledger shows both applied in version 1; the version has metrics.
    let ledger = get_json(&format!("{}/v1/updates?model=digits", hub.url())).await;
    let ups = ledger["updates"].as_array().unwrap();
    assert_eq!(ups.len(), 2);
    assert!(ups
        .iter()
        .all(|u| u["status"] == "applied" && u["applied_in_version"] == 1));
    let latest = get_json(&format!("{}/v1/models/digits/versions/latest", hub.url())).await;
    assert_eq!(latest["version"], 1);
    assert_eq!(latest["metrics"]["aggregation"]["num_updates"], 2);
    assert!(latest["metrics"]["eval"]["accuracy"].as_f64().is_some());
    // A reconnect with the same name and token is accepted, not re-registered.
    let (_a2, wa2, _) = Raw::hello(&hub.ws(), "alice", "tok-a", "digits").await;
    assert_eq!(wa2["registered"], false);
    assert_eq!(wa2["version"], 1);
    // ...and replaced the first connection.
    let e = a.expect_error().await;
    assert_eq!(e["code"], "replaced", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_on_hand_checkable_numbers() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    // Three updates: deltas (1,1) (2,4) (30,-30), examples 1, 1, 2. The
    // plain strategies are checked with the member bounds off; "defaults"
    // with them on.
    let plain = "max_weight_ratio=0&clip_quantile=0";
    let cases: Vec<(&str, String, [f32; 2])> = vec![
        // weighted mean: ((1+2+60)/4, (1+4-60)/4)
        ("fedavg", format!("strategy=fedavg&min_updates=3&staleness_exponent=0&{plain}"), [15.75, -13.75]),
        // momentum 0.5, first step: m = mean delta
        ("fedavgm", format!("strategy=fedavgm&min_updates=3&momentum=0.5&staleness_exponent=0&{plain}"), [15.75, -13.75]),
        // adam first step: m=(1-b1)d, v=(1-b2)d^2, step = lr*m/(sqrt(v)+tau)
        ("fedadam", format!("strategy=fedadam&min_updates=3&momentum=0.5&beta2=0.75&tau=1&server_lr=1&staleness_exponent=0&{plain}"), [f32::NAN, f32::NAN]),
        ("median", format!("strategy=median&min_updates=3&{plain}"), [2.0, 1.0]),
        // 0.2 x 3 is 0.6, but a trimmed mean trims at least one from each
        // end of three: the middle value
        ("trimmed_mean", format!("strategy=trimmed_mean&min_updates=3&trim_fraction=0.2&{plain}"), [2.0, 1.0]),
        // clip each delta to norm 1 then weighted mean
        ("clipped", format!("strategy=fedavg&min_updates=3&clip_norm=1&staleness_exponent=0&{plain}"), [f32::NAN, f32::NAN]),
        // The defaults: every claim counts at most the lower median claim (1),
        // and every delta is clipped to the median member norm (b = |(2,4)|):
        // (1,1) and (2,4) as sent, (30,-30) x b/|(30,-30)|.
        ("defaults", "strategy=fedavg&min_updates=3&staleness_exponent=0".to_string(), [f32::NAN, f32::NAN]),
    ];
    let deltas = [[1.0f32, 1.0], [2.0, 4.0], [30.0, -30.0]];
    let examples = [1u64, 1, 2];
    for (name, q, expect) in cases {
        create_tiny(&url, name, &q, [0.0, 0.0]).await;
        let mut conns = Vec::new();
        for (i, d) in deltas.iter().enumerate() {
            let (mut r, _, _) = Raw::hello(&hub.ws(), &format!("{name}-t{i}"), "tok", name).await;
            r.send_update(
                &format!("u{i}"),
                0,
                examples[i],
                tiny_layout().encode(d, None).unwrap(),
            )
            .await;
            assert_eq!(r.outcome(&format!("u{i}")).await["type"], "ack");
            conns.push(r);
        }
        let (_, bytes) = conns[0].wait_version(1).await;
        let w = tiny_layout().decode(&bytes).unwrap();
        let expect: Vec<f32> = match name {
            "fedadam" => {
                let mean = [15.75f32, -13.75];
                mean.iter()
                    .map(|d| {
                        let m = 0.5 * d;
                        let v = 0.25 * d * d;
                        m / (v.sqrt() + 1.0)
                    })
                    .collect()
            }
            "clipped" => {
                let clip = |d: [f32; 2]| {
                    let n = (d[0] * d[0] + d[1] * d[1]).sqrt();
                    let f = if n > 1.0 { 1.0 / n } else { 1.0 };
                    [d[0] * f, d[1] * f]
                };
                let c: Vec<[f32; 2]> = deltas.iter().map(|d| clip(*d)).collect();
                vec![
                    (c[0][0] + c[1][0] + 2.0 * c[2][0]) / 4.0,
                    (c[0][1] + c[1][1] + 2.0 * c[2][1]) / 4.0,
                ]
            }
            "defaults" => {
                let c = (20.0f32).sqrt() / (1800.0f32).sqrt();
                vec![(1.0 + 2.0 + 30.0 * c) / 3.0, (1.0 + 4.0 - 30.0 * c) / 3.0]
            }
            _ => expect.to_vec(),
        };
        for (a, b) in w.iter().zip(&expect) {
            assert!(
                (a - b).abs() < 1e-4,
                "{name}: got {w:?}, expected {expect:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_with_codes_while_others_keep_working() {
    let hub = start_hub(|c| {
        c.hub.hello_timeout_secs = 2;
        c.hub.max_message_bytes = 200_000;
        c.hub.max_pending_handshakes = 4;
        let d = c.models.get_mut("digits").unwrap();
        d.aggregation.min_updates = Some(1);
        d.aggregation.max_staleness = Some(1);
        d.aggregation.max_num_examples = Some(10_000);
    });
    let ws = hub.ws();
    let layout = digits_layout();
    let n = layout.num_params();
    let good = || layout.encode(&vec![0.001; n], None).unwrap();
    // The well-behaved trainer that must keep working throughout.
    let (mut ok, _, _) = Raw::hello(&ws, "steady", "tok-steady", "digits").await;

    // Not JSON, unknown type, no hello first.
    let mut r = Raw::connect(&ws).await;
    r.send_text("this is not json").await;
    assert_eq!(r.expect_error().await["code"], "bad_json");
    r.send_json(json!({"type": "dance"})).await;
    assert_eq!(r.expect_error().await["code"], "unknown_type");
    r.send_json(json!({"type": "update", "update_id": "x", "base_version": 0, "num_examples": 1}))
        .await;
    let e = r.expect_error().await;
    assert_eq!(e["code"], "hello_required");
    assert_eq!(e["fatal"], false);
    // Hello too late: the deadline closes it.
    let e = r.expect_error().await;
    assert_eq!(e["code"], "hello_timeout", "{e}");

    // Wrong token for a registered name; unknown model; bad name.
    let mut r = Raw::connect(&ws).await;
    r.send_json(json!({"type":"hello","name":"steady","specialty":"s","token":"wrong"}))
        .await;
    let e = r.expect_error().await;
    assert_eq!(e["code"], "bad_token", "{e}");
    assert_eq!(e["fatal"], true);
    let mut r = Raw::connect(&ws).await;
    r.send_json(json!({"type":"hello","name":"x","specialty":"s","token":"t","model":"nope"}))
        .await;
    assert_eq!(r.expect_error().await["code"], "unknown_model");
    let mut r = Raw::connect(&ws).await;
    r.send_json(json!({"type":"hello","name":"../etc","specialty":"s","token":"t"}))
        .await;
    assert_eq!(r.expect_error().await["code"], "bad_name");

    // A connected trainer sending bad frames.
    let (mut bad, _, _) = Raw::hello(&ws, "mallory", "tok-m", "digits").await;
    bad.send_binary(good()).await;
    assert_eq!(bad.expect_error().await["code"], "unexpected_binary");
    bad.send_update("garbage", 0, 10, b"not safetensors".to_vec())
        .await;
    let e = bad.outcome("garbage").await;
    assert_eq!(e["code"], "bad_safetensors", "{e}");
    let wrong_shape = ModelLayout::new(vec![("fc1.weight".into(), vec![3, 3])])
        .encode(&[0.0; 9], None)
        .unwrap();
    bad.send_update("shape", 0, 10, wrong_shape).await;
    assert_eq!(bad.outcome("shape").await["code"], "tensor_mismatch");
    let mut nan = vec![0.0f32; n];
    nan[17] = f32::NAN;
    bad.send_update("nan", 0, 10, layout.encode(&nan, None).unwrap())
        .await;
    assert_eq!(bad.outcome("nan").await["code"], "non_finite");
    let mut inf = vec![0.0f32; n];
    inf[3] = f32::INFINITY;
    bad.send_update("inf", 0, 10, layout.encode(&inf, None).unwrap())
        .await;
    assert_eq!(bad.outcome("inf").await["code"], "non_finite");
    bad.send_update("zero", 0, 0, good()).await;
    assert_eq!(bad.outcome("zero").await["code"], "bad_num_examples");
    bad.send_update("absurd", 0, 10_000_000, good()).await;
    assert_eq!(bad.outcome("absurd").await["code"], "bad_num_examples");
    bad.send_update("future", 99, 10, good()).await;
    assert_eq!(bad.outcome("future").await["code"], "future_base_version");

    // The steady trainer still works, and advances the version twice.
    for (i, base) in [(1, 0u64), (2, 1)] {
        let id = format!("s{i}");
        ok.send_update(&id, base, 10, good()).await;
        let a = ok.outcome(&id).await;
        assert_eq!(a["type"], "ack", "{a}");
        ok.wait_version(base + 1).await;
    }
    // Now version 2: base 0 is staler than max_staleness 1.
    bad.send_update("stale", 0, 10, good()).await;
    let e = bad.outcome("stale").await;
    assert_eq!(e["code"], "stale_update", "{e}");
    assert_eq!(e["fatal"], false);

    // Duplicate update_id: acknowledged again, applied once.
    ok.send_update("dup", 2, 10, good()).await;
    assert_eq!(ok.outcome("dup").await["duplicate"], false);
    ok.wait_version(3).await;
    ok.send_update("dup", 3, 10, good()).await;
    let a = ok.outcome("dup").await;
    assert_eq!(a["type"], "ack");
    assert_eq!(a["duplicate"], true);
    let dups = get_json(&format!("{}/v1/updates?trainer=steady", hub.url())).await;
    let dup_rows: Vec<_> = dups["updates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["update_id"] == "dup")
        .collect();
    assert_eq!(dup_rows.len(), 1);
    assert_eq!(dup_rows[0]["status"], "applied");

    // Refusals are in the ledger with their codes.
    let refused = get_json(&format!(
        "{}/v1/updates?trainer=mallory&status=refused",
        hub.url()
    ))
    .await;
    let codes: Vec<String> = refused["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["refusal_code"].as_str().unwrap().to_string())
        .collect();
    for c in [
        "bad_safetensors",
        "tensor_mismatch",
        "non_finite",
        "bad_num_examples",
        "future_base_version",
        "stale_update",
    ] {
        assert!(codes.iter().any(|x| x == c), "{c} missing from {codes:?}");
    }

    // A message over the size limit closes that connection only.
    bad.send_update("huge", 3, 10, vec![0u8; 300_000]).await;
    let e = bad.expect_error().await;
    assert_eq!(e["code"], "message_too_large", "{e}");

    // Revoked trainer: disconnected now, refused later.
    let (mut eve, _, _) = Raw::hello(&ws, "eve", "tok-e", "digits").await;
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/trainers/eve", hub.url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(eve.expect_error().await["code"], "revoked");
    let mut r = Raw::connect(&ws).await;
    r.send_json(json!({"type":"hello","name":"eve","specialty":"s","token":"tok-e"}))
        .await;
    assert_eq!(r.expect_error().await["code"], "revoked");

    // A flood of connections that never say hello: the excess is refused.
    let mut idle = Vec::new();
    let mut refused_flood = 0;
    for _ in 0..8 {
        match tokio_tungstenite::connect_async(ws.as_str()).await {
            Ok((s, _)) => idle.push(s),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                let body =
                    String::from_utf8_lossy(resp.body().as_deref().unwrap_or(b"")).to_string();
                assert!(body.contains("too_many_handshakes"), "{body}");
                refused_flood += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused_flood >= 4, "{refused_flood}");

    // Through all of it the steady trainer keeps being served.
    ok.send_update("after", 3, 10, good()).await;
    assert_eq!(ok.outcome("after").await["type"], "ack");
    ok.wait_version(4).await;
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_have_codes_and_statuses() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    let c = reqwest::Client::new();
    let r = c.get(format!("{url}/v1/models/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["code"], "unknown_model");
    assert!(j["message"].as_str().unwrap().contains("nope"));
    let r = c
        .get(format!("{url}/v1/models/digits/versions/77"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{url}/v1/models/digits/versions/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{url}/v1/models/nope/versions/latest/weights"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Admin calls.
    let r = c
        .post(format!("{url}/v1/models"))
        .json(&json!({"name": "m2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "unauthorized"
    );
    let r = c
        .post(format!("{url}/v1/models"))
        .bearer_auth("wrong")
        .json(&json!({"name": "m2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .delete(format!("{url}/v1/trainers/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{url}/v1/models"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "bad_request"
    );
    let r = c
        .post(format!("{url}/v1/models"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "m2", "colour": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{url}/v1/models?name=m3"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body("junk")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "bad_safetensors"
    );
    let r = c
        .get(format!("{url}/v1/updates?status=weird"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{url}/v1/updates?limit=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A good admin call creates a model that trainers can join.
    let r = c.post(format!("{url}/v1/models")).bearer_auth(ADMIN)
        .json(&json!({"name": "m2", "inputs": 4, "hidden": 8, "classes": 3, "aggregation": {"min_updates": 1}}))
        .send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(format!("{url}/v1/models"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "m2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let m = get_json(&format!("{url}/v1/models/m2")).await;
    assert_eq!(m["num_params"], 4 * 8 + 8 + 8 * 3 + 3);
    assert_eq!(m["settings"]["min_updates"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_fragmented_messages() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    // A 300,000-parameter model: 1.2 MB frames, far over actix's 64 KiB default.
    let layout = ModelLayout::new(vec![("big".into(), vec![300_000])]);
    let r = reqwest::Client::new()
        .post(format!(
            "{url}/v1/models?name=big&min_updates=1&clip_quantile=0"
        ))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(layout.encode(&vec![0.0; 300_000], None).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (mut t, _, w0) = Raw::hello(&hub.ws(), "big-t", "tok", "big").await;
    assert_eq!(w0.len(), 300_000);
    t.send_update(
        "b1",
        0,
        5,
        layout.encode(&vec![0.5; 300_000], None).unwrap(),
    )
    .await;
    assert_eq!(t.outcome("b1").await["type"], "ack");
    let (_, bytes) = t.wait_version(1).await;
    assert!(layout
        .decode(&bytes)
        .unwrap()
        .iter()
        .all(|v| (*v - 0.5).abs() < 1e-6));

    // A hello split into three WebSocket fragments is reassembled.
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    use tokio_tungstenite::tungstenite::Message;
    let mut r = Raw::connect(&hub.ws()).await;
    let hello = json!({"type":"hello","name":"frag","specialty":"s","token":"t"}).to_string();
    let (a, rest) = hello.split_at(10);
    let (b, c) = rest.split_at(10);
    r.ws.send(Message::Frame(WsFrame::message(
        a.as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    r.ws.send(Message::Frame(WsFrame::message(
        b.as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    r.ws.send(Message::Frame(WsFrame::message(
        c.as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    let w = r.expect_type("welcome").await;
    assert_eq!(w["trainer"], "frag");

    // A stream of empty continuation frames is cut off at the fragment limit.
    r.ws.send(Message::Frame(WsFrame::message(
        Vec::new(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    let mut closed_with = None;
    for _ in 0..5000 {
        if r.ws
            .send(Message::Frame(WsFrame::message(
                Vec::new(),
                OpCode::Data(Data::Continue),
                false,
            )))
            .await
            .is_err()
        {
            break;
        }
    }
    for _ in 0..10 {
        let v = r.next_json_skipping_models().await;
        if v["type"] == "error" {
            closed_with = Some(v["code"].as_str().unwrap().to_string());
            break;
        }
        if v["type"] == "closed" {
            break;
        }
    }
    assert_eq!(closed_with.as_deref(), Some("too_many_fragments"));
    // The hub still serves.
    let h = get_json(&format!("{url}/healthz")).await;
    assert_eq!(h["status"], "ok");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_download_loads_in_python_safetensors() {
    let hub = start_hub(|_| {});
    let r = reqwest::get(format!(
        "{}/v1/models/digits/versions/latest/weights",
        hub.url()
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let path = hub.dir.path().join("w.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    // The pinned safetensors of the Python package's virtualenv; the format
    // itself is checked byte for byte without Python (kernal-core's
    // tests/golden.rs).
    let out = std::process::Command::new(common::python::python())
        .arg("-c")
        .arg(
            "import sys; from safetensors.numpy import load_file; t = load_file(sys.argv[1]); \
             print(sorted((k, v.shape, str(v.dtype)) for k, v in t.items()))",
        )
        .arg(&path)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("('fc1.weight', (64, 64), 'float32')"),
        "{stdout}"
    );
    assert!(
        stdout.contains("('fc2.bias', (10,), 'float32')"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_checkpoints_are_pruned_but_versions_stay() {
    let hub = start_hub(|c| {
        c.hub.keep_weights_versions = 2;
        // Checkpoints and payloads in files, so pruning retires files too.
        c.hub.blob_file_threshold_bytes = 1024;
        c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(1);
    });
    let (mut a, _, _) = Raw::hello(&hub.ws(), "alice", "tok-a", "digits").await;
    let layout = digits_layout();
    let n = layout.num_params();
    for v in 0..4u64 {
        let id = format!("a{v}");
        a.send_update(&id, v, 1, layout.encode(&vec![0.01; n], None).unwrap())
            .await;
        assert_eq!(a.outcome(&id).await["type"], "ack");
        a.wait_version(v + 1).await;
    }
    let c = reqwest::Client::new();
    let weights = |v: u64| {
        let c = c.clone();
        let url = format!("{}/v1/models/digits/versions/{v}/weights", hub.url());
        async move { c.get(url).send().await.unwrap() }
    };
    // Versions 3 and 4 keep their checkpoints...
    for v in [3, 4] {
        let r = weights(v).await;
        assert_eq!(r.status(), 200, "version {v}");
        let body = r.bytes().await.unwrap();
        assert_eq!(layout.decode(&body).unwrap().len(), n);
    }
    // ...older ones answer 410 with a code, and keep their record.
    for v in [0, 1, 2] {
        let r = weights(v).await;
        assert_eq!(r.status(), 410, "version {v}");
        let j: serde_json::Value = r.json().await.unwrap();
        assert_eq!(j["code"], "weights_pruned");
        let meta = get_json(&format!("{}/v1/models/digits/versions/{v}", hub.url())).await;
        assert_eq!(meta["version"], v);
    }
}

/// Reads one server frame (unmasked) from a raw socket: (opcode, payload).
async fn raw_frame(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if buf.len() >= 2 {
            let len7 = (buf[1] & 0x7F) as usize;
            let (head, len) = match len7 {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                127 if buf.len() >= 10 => (
                    10,
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                ),
                126 | 127 => (usize::MAX, 0),
                n => (2, n),
            };
            if head != usize::MAX && buf.len() >= head + len {
                let op = buf[0] & 0x0F;
                let payload = buf[head..head + len].to_vec();
                buf.drain(..head + len);
                return (op, payload);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("a frame within 20 s")
            .unwrap();
        assert!(n > 0, "connection closed before a frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_break_rfc6455_are_refused_while_others_keep_working() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub =
        start_hub(|c| c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(100));
    let (mut steady, _, _) = Raw::hello(&hub.ws(), "steady", "tok", "digits").await;
    let layout = digits_layout();
    let n = layout.num_params();
    let addr = hub.url().trim_start_matches("http://").to_string();
    // An unmasked frame, reserved bits, an unknown opcode: each ends its
    // connection with `bad_frame` and a close frame.
    for (what, frame) in [
        ("unmasked", vec![0x81u8, 0x02, b'h', b'i']),
        ("reserved bits", vec![0xC1, 0x80, 0, 0, 0, 0]),
        ("unknown opcode", vec![0x83, 0x80, 0, 0, 0, 0]),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            format!(
                "GET /v1/trainers/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(buf.starts_with(b"HTTP/1.1 101"), "{what}");
        buf.drain(..end);
        s.write_all(&frame).await.unwrap();
        let (op, payload) = raw_frame(&mut s, &mut buf).await;
        assert_eq!(op, 0x1, "{what}: an error message first");
        let e: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(e["code"], "bad_frame", "{what}: {e}");
        assert_eq!(e["fatal"], true);
        let (op, _) = raw_frame(&mut s, &mut buf).await;
        assert_eq!(op, 0x8, "{what}: then a close frame");
    }
    // The steady trainer was served throughout.
    steady
        .send_update("s1", 0, 1, layout.encode(&vec![0.5; n], None).unwrap())
        .await;
    assert_eq!(steady.outcome("s1").await["type"], "ack");
}
