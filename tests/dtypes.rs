//! Tensors as PyTorch has them: a model with a 0-d tensor, F16, BF16, F64,
//! I64 and BOOL tensors is created from safetensors, takes updates in mixed
//! dtypes, folds (floats by the strategy, integers by their rules) and is
//! downloaded with every tensor in its own dtype and exact shape; a
//! fractional integer delta, a 0-d/1-d mismatch and an integer too large to
//! hold exactly are refused with their codes.

mod common;

use std::time::Duration;

use common::*;
use kernal_hub::protocol::{ModelLayout, TensorDtype};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;

/// In the order the hub gives an uploaded model's tensors (by name).
fn layout() -> ModelLayout {
    use TensorDtype::*;
    ModelLayout::with_dtypes(vec![
        ("bn.num_batches_tracked".into(), vec![], I64),
        ("bn.running_mean".into(), vec![2], F64),
        ("brain".into(), vec![2], BF16),
        ("half".into(), vec![2], F16),
        ("mask".into(), vec![2], Bool),
        ("scale".into(), vec![], F32),
    ])
}

const INIT: [f32; 10] = [7.0, 0.1, 0.5, 1.0, 2.0, 0.5, -1.0, 1.0, 0.0, 1.5];

/// `(name, dtype, shape, values)`.
type Tensor = (&'static str, TensorDtype, Vec<usize>, Vec<f64>);

/// A safetensors file of tensors, each value written in its dtype.
fn file(tensors: &[Tensor]) -> Vec<u8> {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dt, _, vals)| {
            if *dt == TensorDtype::F64 {
                vals.iter().flat_map(|v| v.to_le_bytes()).collect()
            } else if *dt == TensorDtype::I64 {
                // Not through `write`, which saturates at ±2^24.
                vals.iter()
                    .flat_map(|v| (*v as i64).to_le_bytes())
                    .collect()
            } else {
                let mut out = Vec::new();
                let v32: Vec<f32> = vals.iter().map(|v| *v as f32).collect();
                dt.write(&v32, &mut out);
                out
            }
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&data)
        .map(|((name, dt, shape, _), bytes)| {
            let dtype = match dt {
                TensorDtype::F32 => Dtype::F32,
                TensorDtype::F16 => Dtype::F16,
                TensorDtype::BF16 => Dtype::BF16,
                TensorDtype::F64 => Dtype::F64,
                TensorDtype::I64 => Dtype::I64,
                TensorDtype::Bool => Dtype::BOOL,
                other => panic!("{other}"),
            };
            (
                name.to_string(),
                TensorView::new(dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

async fn create(url: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "{url}/v1/models?name=dt&min_updates=2&round_timeout_secs=60&clip_quantile=0"
        ))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn weights(url: &str, version: u64) -> Vec<u8> {
    let r = reqwest::get(format!("{url}/v1/models/dt/versions/{version}/weights"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

/// Every tensor of a checkpoint has the model's dtype and exact shape.
fn assert_dtypes(bytes: &[u8]) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let want = [
        ("bn.num_batches_tracked", Dtype::I64, vec![]),
        ("bn.running_mean", Dtype::F64, vec![2]),
        ("brain", Dtype::BF16, vec![2]),
        ("half", Dtype::F16, vec![2]),
        ("mask", Dtype::BOOL, vec![2]),
        ("scale", Dtype::F32, vec![]),
    ];
    assert_eq!(st.len(), want.len());
    for (name, dtype, shape) in want {
        let t = st.tensor(name).unwrap();
        assert_eq!((t.dtype(), t.shape().to_vec()), (dtype, shape), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dtype_round_trips_through_create_update_fold_and_download() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    let l = layout();
    let (status, body) = create(&url, l.encode(&INIT, None).unwrap()).await;
    assert_eq!(status, 201, "{body}");
    let m = get_json(&format!("{url}/v1/models/dt")).await;
    let tensors: Vec<(String, Vec<usize>, String)> = serde_json::from_value(
        m["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| serde_json::json!([t["name"], t["shape"], t["dtype"]]))
            .collect(),
    )
    .unwrap();
    assert_eq!(
        tensors[0],
        ("bn.num_batches_tracked".into(), vec![], "I64".into())
    );
    assert_eq!(tensors[4].2, "BOOL");
    let v0 = weights(&url, 0).await;
    assert_dtypes(&v0);
    assert_eq!(l.decode(&v0).unwrap()[..2], [7.0, 0.1]);

    let (mut a, welcome, w) = Raw::hello(&hub.ws(), "a", "tok", "dt").await;
    assert_eq!(welcome["tensors"][1]["dtype"], "F64");
    assert_eq!(welcome["tensors"][5]["shape"], serde_json::json!([]));
    assert_eq!(w[0], 7.0);
    let (mut b, _, _) = Raw::hello(&hub.ws(), "b", "tok", "dt").await;
    use TensorDtype::*;
    // Deltas in whatever dtype each trainer likes: integers as I64 or as
    // integral floats, floats in any float dtype.
    let da = file(&[
        ("bn.num_batches_tracked", I64, vec![], vec![5.0]),
        ("bn.running_mean", F64, vec![2], vec![0.5, 0.25]),
        ("brain", BF16, vec![2], vec![1.0, 1.0]),
        ("half", F16, vec![2], vec![0.5, 0.5]),
        ("mask", I64, vec![2], vec![0.0, 1.0]),
        ("scale", F32, vec![], vec![0.5]),
    ]);
    let db = file(&[
        ("bn.num_batches_tracked", F32, vec![], vec![3.0]),
        ("bn.running_mean", F32, vec![2], vec![1.5, 0.75]),
        ("brain", F32, vec![2], vec![3.0, 3.0]),
        ("half", F16, vec![2], vec![1.5, 1.5]),
        ("mask", F16, vec![2], vec![-1.0, 1.0]),
        ("scale", BF16, vec![], vec![1.5]),
    ]);
    a.send_update("a1", 0, 10, da).await;
    assert_eq!(a.outcome("a1").await["type"], "ack");
    b.send_update("b1", 0, 10, db).await;
    assert_eq!(b.outcome("b1").await["type"], "ack");
    let (v, pushed) = a.wait_version(1).await;
    assert_eq!(v, 1);
    assert_dtypes(&pushed);
    let v1 = weights(&url, 1).await;
    assert_eq!(v1, pushed, "the download is the pushed checkpoint");
    assert_dtypes(&v1);
    let got = l.decode(&v1).unwrap();
    // num_batches_tracked: a count, 7 + 5 + 3 (the built-in `sum` rule).
    assert_eq!(got[0], 15.0);
    // F64: 0.1 + mean(0.5, 1.5), aggregated in f32.
    assert!(
        (got[1] - 1.1).abs() < 1e-6 && (got[2] - 1.0).abs() < 1e-6,
        "{got:?}"
    );
    assert_eq!(&got[3..7], &[3.0, 4.0, 1.5, 0.0], "BF16 and F16 by fedavg");
    // BOOL by round_mean: 1 + round(-0.5) = 0, 0 + round(1) = 1.
    assert_eq!(&got[7..9], &[0.0, 1.0]);
    assert_eq!(got[9], 2.5, "the 0-d F32 tensor");
    let st = SafeTensors::deserialize(&v1).unwrap();
    assert_eq!(
        st.tensor("bn.num_batches_tracked").unwrap().data(),
        15i64.to_le_bytes()
    );
    assert_eq!(st.tensor("mask").unwrap().data(), [0u8, 1]);

    // Refusals, each with its code, the connection kept.
    let mut good = vec![
        ("bn.num_batches_tracked", I64, vec![], vec![1.0]),
        ("bn.running_mean", F64, vec![2], vec![0.0, 0.0]),
        ("brain", BF16, vec![2], vec![0.0, 0.0]),
        ("half", F16, vec![2], vec![0.0, 0.0]),
        ("mask", I64, vec![2], vec![0.0, 0.0]),
        ("scale", F32, vec![], vec![0.0]),
    ];
    let cases: Vec<(usize, Tensor, &str, &str)> = vec![
        (
            0,
            ("bn.num_batches_tracked", F32, vec![], vec![2.5]),
            "non_integer_delta",
            "index 0 holds 2.5",
        ),
        (
            0,
            (
                "bn.num_batches_tracked",
                I64,
                vec![],
                vec![(1u64 << 25) as f64],
            ),
            "non_integer_delta",
            "2^24",
        ),
        (
            5,
            ("scale", F32, vec![1], vec![0.0]),
            "tensor_mismatch",
            "keep it 0-d",
        ),
        (
            0,
            ("bn.num_batches_tracked", I64, vec![1], vec![1.0]),
            "tensor_mismatch",
            "the model needs []",
        ),
        (
            3,
            ("half", I64, vec![2], vec![0.0, 0.0]),
            "tensor_mismatch",
            "F16",
        ),
        (
            1,
            ("bn.running_mean", F64, vec![2], vec![1e300, 0.0]),
            "non_finite",
            "beyond the f32 range",
        ),
    ];
    for (i, (slot, bad, code, says)) in cases.into_iter().enumerate() {
        let keep = std::mem::replace(&mut good[slot], bad);
        let id = format!("bad{i}");
        a.send_update(&id, 1, 10, file(&good)).await;
        let e = a.outcome(&id).await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["fatal"], false, "{e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{e}");
        good[slot] = keep;
    }
    a.send_update("fine", 1, 10, file(&good)).await;
    assert_eq!(a.outcome("fine").await["type"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_refuses_integers_the_hub_cannot_hold_exactly() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    let big = file(&[
        ("w", TensorDtype::F32, vec![2], vec![0.0, 0.0]),
        ("count", TensorDtype::I64, vec![], vec![(1u64 << 25) as f64]),
    ]);
    let (status, body) = create(&url, big).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "integer_out_of_range", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("count"),
        "{body}"
    );
    // At the limit it is taken, and the rules setting is checked.
    let ok = file(&[
        ("w", TensorDtype::F32, vec![2], vec![0.0, 0.0]),
        ("count", TensorDtype::I64, vec![], vec![16_777_216.0]),
    ]);
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/models?name=dt&integer_rules=count:avg"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(ok.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("integer_rules"),
        "{body}"
    );
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/models?name=dt&integer_rules=count:keep"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let m = wait_for("the model", Duration::from_secs(10), || async {
        let m = get_json(&format!("{url}/v1/models/dt")).await;
        m["settings"].is_object().then_some(m)
    })
    .await;
    assert_eq!(
        m["settings"]["integer_rules"],
        serde_json::json!([{"pattern": "count", "rule": "keep"}])
    );
}
