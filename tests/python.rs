//! The Python trainer package (`python/`) against a real hub: its own unit
//! tests, then its numpy example, its PyTorch example and a Rust reference
//! trainer on one model, each holding one class of UCI Wine.
//!
//! The package is installed into the tests' shared virtualenv
//! (`common::python`, pinned by `python/constraints.txt`). With `KERNAL_REQUIRE_TORCH=1` (CI)
//! a missing PyTorch fails the test; elsewhere the PyTorch example is
//! skipped with a message and the numpy and Rust trainers still run.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::python::{python, repo, run};
use common::*;
use kernal::data;
use kernal::model::{MlpSpec, TrainSettings};
use kernal_client::connection::{self, ClientOptions};
use kernal_client::MlpLearner;
use serde_json::{json, Value};

fn has_torch(py: &Path) -> bool {
    Command::new(py)
        .args(["-c", "import torch"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn the_package_unit_tests_pass() {
    let py = python();
    run(
        Command::new(py)
            .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
            .current_dir(repo().join("python")),
        "python -m unittest",
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// A Python example as a child process printing its events as JSON lines.
struct PyTrainer {
    name: String,
    child: std::process::Child,
}

impl PyTrainer {
    fn start(py: &Path, example: &str, hub: &str, name: &str, class: u32) -> PyTrainer {
        let child = Command::new(py)
            .arg(repo().join("python/examples").join(example))
            .args([
                "--hub", hub, "--name", name, "--token", "tok", "--model", "wine",
            ])
            .args(["--classes", &class.to_string(), "--versions", "6", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {example}: {e}"));
        PyTrainer {
            name: name.into(),
            child,
        }
    }

    /// Waits for the exit (killing it at the deadline); returns its events.
    fn finish(mut self, deadline: Instant) -> Vec<Value> {
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(
            status.success(),
            "{} exited {status}:\n{out}\n{err}",
            self.name
        );
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_trainers_improve_one_model() {
    let py = python().to_path_buf();
    let torch = has_torch(&py);
    if !torch {
        assert!(
            std::env::var("KERNAL_REQUIRE_TORCH").as_deref() != Ok("1"),
            "PyTorch is required here (KERNAL_REQUIRE_TORCH=1) but `import torch` fails in {}",
            py.display()
        );
        eprintln!("PyTorch is not installed: the PyTorch example is skipped here (CI runs it)");
    }
    let hub = start_hub(|_| {});
    let url = hub.url();
    let ws = hub.hub.ws_url();
    let trainers = if torch { 3 } else { 2 };
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/models"))
        .bearer_auth(ADMIN)
        .json(
            &json!({"name": "wine", "inputs": 13, "hidden": 16, "classes": 3,
                      "aggregation": {"min_updates": trainers, "round_timeout_secs": 20}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The held-out fifth of the shipped wine data is the evaluation set.
    let all = data::parse_dataset(include_str!("../data/wine.csv"), "wine").unwrap();
    let split = data::stratified_split(&all, 0.2, data::SPLIT_SEED);
    let r = reqwest::Client::new()
        .put(format!("{url}/v1/models/wine/evalset"))
        .bearer_auth(ADMIN)
        .header("content-type", "text/csv")
        .body(split.test.to_csv())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(240);
    let np = PyTrainer::start(&py, "numpy_trainer.py", &ws, "py_numpy", 0);
    let th = torch.then(|| PyTrainer::start(&py, "torch_trainer.py", &ws, "py_torch", 1));
    // The Rust reference trainer holds the third class.
    let spec = MlpSpec {
        inputs: 13,
        hidden: 16,
        classes: 3,
    };
    let settings = TrainSettings {
        epochs: 2,
        lr: 0.1,
        batch_size: 32,
        seed: 3,
    };
    let rust_class = if torch { 2 } else { 1 };
    let learner = MlpLearner::for_parts(
        spec,
        split.train.with_classes(&[rust_class]),
        split.test.with_classes(&[rust_class]),
        settings,
    );
    let mut opts = ClientOptions::new(&ws, "rust_ref", "class-2", "tok");
    opts.model = "wine".into();
    opts.max_versions = Some(6);
    let rust = tokio::spawn(connection::run(
        opts,
        learner,
        |_| {},
        std::future::pending(),
    ));

    let (np_events, th_events) =
        tokio::task::spawn_blocking(move || (np.finish(deadline), th.map(|t| t.finish(deadline))))
            .await
            .unwrap();
    let rust = tokio::time::timeout(Duration::from_secs(120), rust)
        .await
        .expect("the Rust trainer finishes")
        .unwrap()
        .expect("the Rust trainer runs");
    assert!(rust.acked >= 1, "{rust:?}");

    let mut python_ids = Vec::new();
    for (name, events) in [
        ("py_numpy", Some(&np_events)),
        ("py_torch", th_events.as_ref()),
    ] {
        let Some(events) = events else { continue };
        let acked: Vec<&str> = events
            .iter()
            .filter(|e| e["event"] == "ack")
            .filter_map(|e| e["update_id"].as_str())
            .collect();
        assert!(!acked.is_empty(), "{name} got no ack: {events:?}");
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "normalisation" && e["state"] == "frozen"),
            "{name} trained with the model's frozen normalisation: {events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "done" && e["versions_trained"] == 6),
            "{name}: {events:?}"
        );
        python_ids.extend(acked.iter().map(|id| format!("{name}/{id}")));
    }

    // Their updates were folded into versions, beside the Rust trainer's.
    let versions = get_json(&format!("{url}/v1/models/wine/versions")).await;
    let versions = versions["versions"].as_array().unwrap().clone();
    let applied: Vec<String> = versions
        .iter()
        .flat_map(|v| {
            v["metrics"]["applied_update_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|id| id.as_str().map(str::to_string))
        .collect();
    for id in &python_ids {
        assert!(applied.contains(id), "{id} not folded: {applied:?}");
    }
    assert!(applied.iter().any(|id| id.starts_with("rust_ref/")));

    // And the model improved on the held-out rows.
    let last = versions.last().unwrap()["version"].as_u64().unwrap();
    let scored = wait_for(
        "the newest version's evaluation",
        Duration::from_secs(30),
        || {
            let u = format!("{url}/v1/models/wine/versions/{last}");
            async move {
                let v = get_json(&u).await;
                v["metrics"]["eval"]["accuracy"].as_f64()
            }
        },
    )
    .await;
    let first = versions[0]["metrics"]["eval"]["accuracy"]
        .as_f64()
        .unwrap_or(0.0);
    println!("hub evaluation: version 0 {first:.3}, version {last} {scored:.3}");
    assert!(scored > first + 0.2, "{first} -> {scored}");
}
