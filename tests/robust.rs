//! One member cannot buy the model: against a real hub, a trainer that
//! floods a round has one vote, a revoked trainer's buffered updates are
//! dropped, and the member bounds (capped claims, adaptive clipping) are on
//! by default and reported with every version.

mod common;

use common::*;
use kernal_hub::protocol::ModelLayout;
use serde_json::Value;

fn tiny() -> ModelLayout {
    ModelLayout::new(vec![("w".into(), vec![2])])
}

async fn create(url: &str, name: &str, query: &str) {
    let body = tiny().encode(&[0.0, 0.0], None).unwrap();
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

async fn update(r: &mut Raw, id: &str, n: u64, d: [f32; 2]) -> Value {
    r.send_update(id, 0, n, tiny().encode(&d, None).unwrap())
        .await;
    r.outcome(id).await
}

fn close(got: &[f32], want: [f32; 2]) -> bool {
    got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-4)
}

/// Three updates from one trainer before the fold are one member: they do
/// not make a round of `min_updates = 2` due, only the newest counts, and
/// the version lists the replaced ones (consumed, so nothing acknowledged
/// is left pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_flooding_a_round_has_one_vote() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    create(
        &url,
        "flood",
        "strategy=fedavg&min_updates=2&round_timeout_secs=600&staleness_exponent=0&max_weight_ratio=0&clip_quantile=0",
    )
    .await;
    let (mut liar, _, _) = Raw::hello(&hub.ws(), "liar", "tok", "flood").await;
    for (i, d) in [[100.0, 100.0], [100.0, 100.0], [-2.0, -2.0]]
        .iter()
        .enumerate()
    {
        let ack = update(&mut liar, &format!("l{i}"), 1_000, *d).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let status = get_json(&format!("{url}/v1/models/flood")).await;
    assert_eq!(status["version"], 0, "one trainer is one member: {status}");
    let (mut honest, _, _) = Raw::hello(&hub.ws(), "honest", "tok", "flood").await;
    assert_eq!(
        update(&mut honest, "h0", 1, [2.0, 4.0]).await["type"],
        "ack"
    );
    let (_, bytes) = honest.wait_version(1).await;
    let w = tiny().decode(&bytes).unwrap();
    // (liar's newest x 1000 + honest x 1) / 1001: the flood adds nothing.
    let want = [(-2000.0 + 2.0) / 1001.0, (-2000.0 + 4.0) / 1001.0];
    assert!(close(&w, want), "{w:?} vs {want:?}");
    let v = get_json(&format!("{url}/v1/models/flood/versions/latest")).await;
    let m = &v["metrics"];
    assert_eq!(m["aggregation"]["members"], 2, "{m}");
    assert_eq!(m["aggregation"]["superseded"], 2);
    assert_eq!(
        m["superseded_update_ids"],
        serde_json::json!(["liar/l0", "liar/l1"])
    );
    assert_eq!(
        m["applied_update_ids"],
        serde_json::json!(["liar/l2", "honest/h0"])
    );
    let ledger = get_json(&format!("{url}/v1/updates?model=flood")).await;
    let ups = ledger["updates"].as_array().unwrap();
    assert_eq!(ups.len(), 4);
    assert!(ups.iter().all(|u| u["applied_in_version"] == 1), "{ledger}");
}

/// Revoking a trainer drops its buffered update: the next version is made
/// from the others, and the ledger refuses it with `revoked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_trainer_drops_its_buffered_updates() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    create(
        &url,
        "rev",
        "strategy=fedavg&min_updates=2&round_timeout_secs=600&staleness_exponent=0&max_weight_ratio=0&clip_quantile=0",
    )
    .await;
    let (mut bad, _, _) = Raw::hello(&hub.ws(), "bad", "tok", "rev").await;
    assert_eq!(update(&mut bad, "b0", 1, [50.0, 50.0]).await["type"], "ack");
    let (mut a, _, _) = Raw::hello(&hub.ws(), "a", "tok", "rev").await;
    let r = reqwest::Client::new()
        .delete(format!("{url}/v1/trainers/bad"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(update(&mut a, "a0", 1, [1.0, 1.0]).await["type"], "ack");
    let (mut b, _, _) = Raw::hello(&hub.ws(), "b", "tok", "rev").await;
    assert_eq!(update(&mut b, "b0", 1, [3.0, 3.0]).await["type"], "ack");
    let (_, bytes) = b.wait_version(1).await;
    let w = tiny().decode(&bytes).unwrap();
    assert!(
        close(&w, [2.0, 2.0]),
        "the revoked update was folded: {w:?}"
    );
    let v = get_json(&format!("{url}/v1/models/rev/versions/latest")).await;
    assert_eq!(
        v["metrics"]["dropped_update_ids"],
        serde_json::json!(["bad/b0"])
    );
    let ledger = get_json(&format!("{url}/v1/updates?model=rev&trainer=bad")).await;
    let row = ledger["updates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["trainer"] == "bad")
        .cloned()
        .unwrap();
    assert_eq!(row["status"], "refused", "{row}");
    assert_eq!(row["refusal_code"], "revoked", "{row}");
}

/// With the hub's defaults, a member claiming 1e8 examples and sending an
/// update of norm 999 (within `max_update_norm`) moves the model as much
/// as a typical member: its claim counts as the median claim, its delta is
/// clipped to the members' median norm; every version reports the bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_lying_member_weighs_what_a_typical_member_weighs() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    create(
        &url,
        "lie",
        "strategy=fedavg&min_updates=4&round_timeout_secs=600&staleness_exponent=0",
    )
    .await;
    let deltas = [[0.3f32, 0.4], [0.0, 0.5], [0.6, 0.0], [-999.0, 0.0]];
    let claims = [400u64, 450, 500, 100_000_000];
    let mut conns = Vec::new();
    for (i, (d, n)) in deltas.iter().zip(claims).enumerate() {
        let (mut r, _, _) = Raw::hello(&hub.ws(), &format!("m{i}"), "tok", "lie").await;
        assert_eq!(update(&mut r, "u", n, *d).await["type"], "ack");
        conns.push(r);
    }
    let (_, bytes) = conns[0].wait_version(1).await;
    let w = tiny().decode(&bytes).unwrap();
    // Claims capped at the lower median (450); deltas clipped to the median
    // member norm (0.5): the liar's and the third member's (0.6).
    let want = [
        (400.0 * 0.3 + 450.0 * 0.5 - 450.0 * 0.5) / 1750.0,
        (400.0 * 0.4 + 450.0 * 0.5) / 1750.0,
    ];
    assert!(close(&w, want), "{w:?} vs {want:?}");
    let v = get_json(&format!("{url}/v1/models/lie/versions/latest")).await;
    let a = &v["metrics"]["aggregation"];
    assert_eq!(a["examples_cap"], 450.0, "{a}");
    assert!(
        (a["clip_bound"].as_f64().unwrap() - 0.5).abs() < 1e-6,
        "{a}"
    );
    assert_eq!(a["clipped"], 2, "{a}");
    assert!(a["norm_quantile"].as_f64().unwrap() > 0.0, "{a}");
}

fn two_tensors() -> ModelLayout {
    ModelLayout::new(vec![("a".into(), vec![2]), ("b".into(), vec![2])])
}

/// With `tensor_clip_multiplier`, a member that puts its whole step into
/// one tensor (as the label-rotation attack does with the output layer)
/// moves that tensor no further than the round's median member: each
/// tensor is clipped to the lower median of its members' norms, on the
/// streamed (fedavg) path, and the version reports how many were clipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tensor_clipping_bounds_a_member_that_spends_its_step_on_one_tensor() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    let body = two_tensors().encode(&[0.0; 4], None).unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "{url}/v1/models?name=layers&strategy=fedavg&min_updates=3&round_timeout_secs=600&staleness_exponent=0&clip_quantile=0&tensor_clip_multiplier=1"
        ))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // Tensor norms: (0.5, 0.5), (0.5, 0.6), (0, 3).
    let deltas = [
        [0.0f32, 0.5, 0.3, 0.4],
        [0.0, 0.5, 0.6, 0.0],
        [0.0, 0.0, 0.0, 3.0],
    ];
    let mut conns = Vec::new();
    for (i, d) in deltas.iter().enumerate() {
        let (mut c, _, _) = Raw::hello(&hub.ws(), &format!("t{i}"), "tok", "layers").await;
        c.send_update("u", 0, 100, two_tensors().encode(d, None).unwrap())
            .await;
        assert_eq!(c.outcome("u").await["type"], "ack");
        conns.push(c);
    }
    let (_, bytes) = conns[0].wait_version(1).await;
    let w = two_tensors().decode(&bytes).unwrap();
    // Bounds: tensor a 0.5, tensor b 0.6; the third member's b becomes
    // (0, 0.6). Without the per-tensor bound w[3] would be 3.4 / 3.
    let want = [0.0f32, 1.0 / 3.0, 0.3, 1.0 / 3.0];
    assert!(
        w.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
        "{w:?} vs {want:?}"
    );
    let v = get_json(&format!("{url}/v1/models/layers/versions/latest")).await;
    assert_eq!(v["metrics"]["aggregation"]["tensor_clipped"], 1, "{v}");
}
