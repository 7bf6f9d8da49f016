//! The evaluator role against a real hub: admin-issued evaluator tokens
//! (issue, list, revoke), an evaluator's report becoming the version's hub
//! evaluation (in `/v1/models/{m}/versions`, as the model's current
//! figures, after a restart), hostile reports refused with codes, and the
//! roles kept apart (an evaluator sends no updates, a trainer no reports).
//! The Rust client's evaluator and `kernal evaluator` run against it too,
//! and a client that never reached the hub says so once.

mod common;

use std::time::Duration;

use common::*;
use kernal_hub::protocol::ModelLayout;
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

async fn delete(url: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .delete(url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn tiny_layout() -> ModelLayout {
    ModelLayout::new(vec![("w".into(), vec![8])])
}

/// A custom model (one tensor the hub cannot evaluate), folded from one update.
async fn create_tiny(url: &str) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/models?name=tiny&min_updates=1"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(tiny_layout().encode(&[0.5; 8], None).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

async fn issue(url: &str, model: &str, name: &str) -> String {
    let (s, b) = post(
        &format!("{url}/v1/models/{model}/evaluators"),
        Some(ADMIN),
        json!({ "name": name }),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    b["token"].as_str().expect("a token").to_string()
}

/// An evaluator's hello; returns the connection after its welcome and weights.
async fn evaluator(ws: &str, model: &str, name: &str, token: &str) -> (Raw, Value) {
    let mut r = Raw::connect(ws).await;
    r.send_json(
        json!({"type": "hello", "role": "evaluator", "name": name, "token": token, "model": model}),
    )
    .await;
    let w = r.next_json_skipping_models().await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert!(matches!(r.next().await, Frame::Binary(_)), "weights follow");
    (r, w)
}

fn report(version: u64, accuracy: f64) -> Value {
    json!({"type": "evaluator_report", "version": version, "accuracy": accuracy,
           "loss": 1.0 - accuracy, "num_examples": 40, "metrics": {"f1": accuracy / 2.0}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluator_tokens_are_issued_once_listed_and_revoked() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    create_tiny(&url).await;
    let evals = format!("{url}/v1/models/tiny/evaluators");

    let (s, e) = post(&evals, None, json!({"name": "judge"})).await;
    assert_eq!((s, e["code"].as_str()), (401, Some("unauthorized")), "{e}");
    let (s, e) = post(&evals, Some(ADMIN), json!({"name": "no way"})).await;
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")), "{e}");
    let (s, e) = post(&evals, Some(ADMIN), json!({"name": "j", "extra": 1})).await;
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")), "{e}");
    let (s, e) = post(
        &format!("{url}/v1/models/nope/evaluators"),
        Some(ADMIN),
        json!({"name": "judge"}),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (404, Some("unknown_model")), "{e}");

    let token = issue(&url, "tiny", "judge").await;
    assert!(token.starts_with("kev_") && token.len() >= 64, "{token}");
    let (s, e) = post(&evals, Some(ADMIN), json!({"name": "judge"})).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("conflict")), "{e}");

    let list = get_json(&evals).await;
    assert_eq!(list["evaluators"][0]["name"], "judge", "{list}");
    assert_eq!(list["evaluators"][0]["online"], false);
    assert!(list["evaluators"][0]["revoked_at"].is_null());
    assert!(
        !list.to_string().contains(&token),
        "the token is shown once"
    );

    // Only a hash is stored.
    let db = std::fs::read(hub.dir.path().join("hub.db")).unwrap_or_default();
    let wal = std::fs::read(hub.dir.path().join("hub.db-wal")).unwrap_or_default();
    let needle = token.as_bytes();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }

    let (mut judge, w) = evaluator(&hub.ws(), "tiny", "judge", &token).await;
    assert_eq!(w["version"], 0);
    wait_for(
        "the evaluator listed online",
        Duration::from_secs(10),
        || async {
            let l = get_json(&evals).await;
            (l["evaluators"][0]["online"] == true).then_some(())
        },
    )
    .await;
    // Not a trainer: not in the trainers' list, not a connected trainer.
    let t = get_json(&format!("{url}/v1/trainers")).await;
    assert!(!t.to_string().contains("judge"), "{t}");
    let m = get_json(&format!("{url}/v1/models/tiny")).await;
    assert_eq!(m["connected_trainers"], 0, "{m}");

    let (s, v) = delete(&format!("{evals}/judge")).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["revoked_at"].is_string(), "{v}");
    let e = judge.expect_error().await;
    assert_eq!(e["code"], "revoked", "{e}");
    let mut again = Raw::connect(&hub.ws()).await;
    again
        .send_json(json!({"type": "hello", "role": "evaluator", "name": "judge", "token": token, "model": "tiny"}))
        .await;
    assert_eq!(again.expect_error().await["code"], "revoked");
    let (s, e) = delete(&format!("{evals}/nobody")).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (404, Some("unknown_evaluator")),
        "{e}"
    );
    let list = get_json(&evals).await;
    assert!(
        list["evaluators"][0]["revoked_at"].is_string(),
        "kept on record: {list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evaluators_report_is_the_versions_hub_evaluation_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("[hub]\nadmin_token = \"{ADMIN}\"\n");
    let mut hub = HubProc::start(dir.path(), &cfg, &[]);
    let url = hub.url();
    create_tiny(&url).await;
    let token = issue(&url, "tiny", "judge").await;
    let (mut judge, _) = evaluator(&hub.ws(), "tiny", "judge", &token).await;
    judge.send_json(report(0, 0.25)).await;
    let r = judge.expect_type("evaluation_recorded").await;
    assert_eq!(
        (r["version"].as_u64(), r["current"].as_bool()),
        (Some(0), Some(true)),
        "{r}"
    );

    // A trainer makes version 1; the evaluator receives it and scores it.
    let (mut t, _, _) = Raw::hello(&hub.ws(), "alice", "tok-a", "tiny").await;
    t.send_update("u1", 0, 10, tiny_layout().encode(&[0.1; 8], None).unwrap())
        .await;
    assert_eq!(t.outcome("u1").await["type"], "ack");
    let (v, _) = judge.wait_version(1).await;
    assert_eq!(v, 1);
    judge.send_json(report(1, 0.75)).await;
    judge.expect_type("evaluation_recorded").await;

    let check = |url: String| async move {
        let vs = get_json(&format!("{url}/v1/models/tiny/versions")).await;
        let find = |n: u64| {
            vs["versions"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["version"] == n).cloned())
                .unwrap_or(Value::Null)
        };
        let (v0, v1) = (find(0), find(1));
        assert_eq!(v0["metrics"]["eval"]["accuracy"], 0.25, "{v0}");
        assert_eq!(v1["metrics"]["eval"]["accuracy"], 0.75, "{v1}");
        assert_eq!(v1["metrics"]["eval"]["evaluator"], "judge", "{v1}");
        assert_eq!(v1["metrics"]["eval"]["examples"], 40, "{v1}");
        assert_eq!(v1["metrics"]["eval"]["metrics"]["f1"], 0.375, "{v1}");
        assert_eq!(v1["metrics"]["evaluators"]["judge"]["accuracy"], 0.75);
        let m = get_json(&format!("{url}/v1/models/tiny")).await;
        assert_eq!(m["last_metrics"]["eval"]["accuracy"], 0.75, "{m}");
        let l = get_json(&format!("{url}/v1/models/tiny/evaluators")).await;
        assert_eq!(l["evaluators"][0]["reports"], 2, "{l}");
    };
    check(url.clone()).await;

    // A built-in model keeps its own evaluation; the report is kept beside it.
    let dtoken = issue(&url, "digits", "judge").await;
    let (mut d, _) = evaluator(&hub.ws(), "digits", "judge", &dtoken).await;
    d.send_json(report(0, 0.5)).await;
    let r = d.expect_type("evaluation_recorded").await;
    assert_eq!(r["current"], false, "{r}");
    let v0 = get_json(&format!("{url}/v1/models/digits/versions/0")).await;
    assert_eq!(v0["metrics"]["eval"]["dataset"], "digits-test", "{v0}");
    assert_eq!(
        v0["metrics"]["evaluators"]["judge"]["accuracy"], 0.5,
        "{v0}"
    );

    hub.kill9();
    hub.spawn("127.0.0.1:0").expect("restart");
    check(hub.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reports_are_refused_and_the_roles_stay_apart() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    create_tiny(&url).await;
    let token = issue(&url, "tiny", "judge").await;
    let (mut judge, _) = evaluator(&hub.ws(), "tiny", "judge", &token).await;

    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("m{i}"), json!(1.0))).collect();
    let hostile = [
        r#"{"type":"evaluator_report","version":0,"accuracy":NaN,"num_examples":4}"#.to_string(),
        json!({"type":"evaluator_report","version":0,"accuracy":1.5,"num_examples":4}).to_string(),
        json!({"type":"evaluator_report","version":0,"loss":-1.0,"num_examples":4}).to_string(),
        json!({"type":"evaluator_report","version":0,"bits_per_byte":65.0,"num_examples":4})
            .to_string(),
        json!({"type":"evaluator_report","version":99,"accuracy":0.5,"num_examples":4})
            .to_string(),
        json!({"type":"evaluator_report","version":0,"accuracy":0.5,"num_examples":0}).to_string(),
        json!({"type":"evaluator_report","version":0,"num_examples":4}).to_string(),
        json!({"type":"evaluator_report","version":0,"accuracy":0.5,"num_examples":4,"metrics":many})
            .to_string(),
        json!({"type":"evaluator_report","version":0,"accuracy":0.5,"num_examples":4,"metrics":{"f1":1e300}})
            .to_string(),
        json!({"type":"evaluator_report","version":"zero","accuracy":0.5,"num_examples":4})
            .to_string(),
    ];
    for h in &hostile {
        judge.send_text(h).await;
        let e = judge.expect_error().await;
        assert_eq!(e["code"], "bad_eval", "{h}: {e}");
        assert_eq!(e["fatal"], false, "{h}: {e}");
    }
    // An evaluator is not a trainer; an update's payload frame is dropped
    // without a second error.
    judge
        .send_update(
            "sneak",
            0,
            10,
            tiny_layout().encode(&[1.0; 8], None).unwrap(),
        )
        .await;
    let e = judge.expect_error().await;
    assert_eq!(
        (e["code"].as_str(), e["update_id"].as_str()),
        (Some("not_trainer"), Some("sneak")),
        "{e}"
    );
    judge.send_json(json!({"type": "ping", "nonce": 5})).await;
    assert_eq!(judge.expect_type("pong").await["nonce"], 5);
    judge
        .send_json(json!({"type": "stats", "count": 1, "sum": [1.0], "sumsq": [1.0]}))
        .await;
    assert_eq!(judge.expect_error().await["code"], "not_trainer");
    judge
        .send_json(json!({"type": "eval", "version": 0, "global_accuracy": 0.5}))
        .await;
    assert_eq!(judge.expect_error().await["code"], "not_trainer");
    let ledger = get_json(&format!("{url}/v1/updates?model=tiny")).await;
    assert!(!ledger.to_string().contains("sneak"), "{ledger}");
    // Still connected and heard.
    judge.send_json(report(0, 0.5)).await;
    assert_eq!(
        judge.expect_type("evaluation_recorded").await["current"],
        true
    );

    // A trainer cannot report as an evaluator, on its connection or with
    // its token; a wrong evaluator token is refused.
    let (mut t, _, _) = Raw::hello(&hub.ws(), "alice", "tok-a", "tiny").await;
    t.send_json(report(0, 0.99)).await;
    let e = t.expect_error().await;
    assert_eq!(
        (e["code"].as_str(), e["fatal"].as_bool()),
        (Some("not_evaluator"), Some(false)),
        "{e}"
    );
    for (name, tok) in [("alice", "tok-a"), ("judge", "tok-a"), ("judge", "")] {
        let mut r = Raw::connect(&hub.ws()).await;
        r.send_json(json!({"type": "hello", "role": "evaluator", "name": name, "token": tok, "model": "tiny"}))
            .await;
        let e = r.expect_error().await;
        assert_eq!(e["code"], "bad_token", "{name}/{tok}: {e}");
    }
    let v0 = get_json(&format!("{url}/v1/models/tiny/versions/0")).await;
    assert_eq!(v0["metrics"]["eval"]["accuracy"], 0.5, "{v0}");
    // A trainer's hello still needs its specialty.
    let mut r = Raw::connect(&hub.ws()).await;
    r.send_json(json!({"type": "hello", "name": "bob", "token": "t", "model": "tiny"}))
        .await;
    assert_eq!(r.expect_error().await["code"], "bad_json");
}

/// The Rust client's evaluator with a closure, and `kernal evaluator` on
/// the built-in digits with its held-out test split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_evaluator_and_the_cli_report_versions() {
    use kernal_client::evaluator::{run_evaluator, EvaluatorOptions, Score};
    let hub = start_hub(|_| {});
    let url = hub.url();
    create_tiny(&url).await;
    let token = issue(&url, "tiny", "rusty").await;
    let mut opts = EvaluatorOptions::new(&hub.hub.ws_url(), "rusty", &token, "tiny");
    opts.max_versions = Some(2);
    // The mean weight as a made-up "accuracy": a figure the hub must show.
    let scorer = |w: &[f32], _v: u64| -> Result<Score, String> {
        Ok(Score {
            accuracy: Some((w.iter().sum::<f32>() / w.len() as f32) as f64),
            num_examples: 8,
            ..Default::default()
        })
    };
    let eval = tokio::spawn(run_evaluator(opts, scorer, |_| {}, std::future::pending()));
    wait_for("version 0 scored", Duration::from_secs(20), || async {
        let v = get_json(&format!("{url}/v1/models/tiny/versions/0")).await;
        (v["metrics"]["eval"]["accuracy"] == 0.5).then_some(())
    })
    .await;
    let (mut t, _, _) = Raw::hello(&hub.ws(), "alice", "tok-a", "tiny").await;
    t.send_update("u1", 0, 10, tiny_layout().encode(&[0.25; 8], None).unwrap())
        .await;
    assert_eq!(t.outcome("u1").await["type"], "ack");
    let summary = tokio::time::timeout(Duration::from_secs(30), eval)
        .await
        .expect("the evaluator stops after 2 reports")
        .unwrap()
        .expect("no error");
    assert_eq!((summary.recorded, summary.last_version), (2, Some(1)));
    let v1 = get_json(&format!("{url}/v1/models/tiny/versions/1")).await;
    assert_eq!(v1["metrics"]["eval"]["accuracy"], 0.75, "{v1}");
    assert_eq!(v1["metrics"]["eval"]["evaluator"], "rusty", "{v1}");

    // The CLI on the built-in digits.
    let dtoken = issue(&url, "digits", "cli").await;
    let out = tokio::process::Command::new(kernal_bin())
        .args([
            "evaluator",
            "cli",
            &dtoken,
            "--model",
            "digits",
            "--max-versions",
            "1",
            "--json",
        ])
        .args(["--hub", &hub.hub.ws_url()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""event":"reported""#), "{stdout}");
    let v0 = get_json(&format!("{url}/v1/models/digits/versions/0")).await;
    let theirs = v0["metrics"]["evaluators"]["cli"]["accuracy"]
        .as_f64()
        .expect("stored");
    let hubs = v0["metrics"]["eval"]["accuracy"].as_f64().unwrap();
    assert!(
        (theirs - hubs).abs() < 1e-6,
        "same held-out digits: {theirs} vs {hubs}"
    );
    let out = tokio::process::Command::new(kernal_bin())
        .args([
            "evaluator",
            "cli",
            "wrong-token",
            "--model",
            "digits",
            "--hub",
            &hub.hub.ws_url(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_token"));
}

/// A trainer pointed at a port where no hub listens says once that the hub
/// was never reached, naming the address and the OS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reached_the_hub_says_so_once() {
    use kernal_client::connection::{run, ClientError, ClientEvent, ClientOptions};
    let port = free_port();
    let mut opts = ClientOptions::new(&format!("ws://127.0.0.1:{port}"), "lost", "s", "t");
    opts.max_attempts = Some(4);
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let learner = kernal_client::MlpLearner::for_digits(
        kernal_hub::model::MlpSpec {
            inputs: 64,
            hidden: 4,
            classes: 10,
        },
        "s",
        &Default::default(),
        kernal_hub::model::TrainSettings {
            epochs: 1,
            lr: 0.1,
            batch_size: 32,
            seed: 1,
        },
    )
    .unwrap();
    let r = run(
        opts,
        learner,
        move |e| seen.lock().unwrap().push(e.clone()),
        std::future::pending(),
    )
    .await;
    assert!(matches!(r, Err(ClientError::Unreachable { .. })), "{r:?}");
    let events = events.lock().unwrap();
    let said: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::NeverReached {
                address, message, ..
            } => Some((address.clone(), message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(said.len(), 1, "{events:?}");
    assert_eq!(said[0].0, format!("127.0.0.1:{port}"));
    assert!(
        said[0].1.contains("never reached the hub") && said[0].1.contains("refused"),
        "{}",
        said[0].1
    );
}
