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
    fn start(
        py: &Path,
        example: &str,
        hub: &str,
        name: &str,
        class: u32,
        extra: &[&str],
    ) -> PyTrainer {
        let child = Command::new(py)
            .arg(repo().join("python/examples").join(example))
            .args([
                "--hub", hub, "--name", name, "--token", "tok", "--model", "wine",
            ])
            .args(["--classes", &class.to_string(), "--versions", "6", "--json"])
            .args(extra)
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
    // Their deltas go compressed: bf16 from numpy, f16 from PyTorch.
    let np = PyTrainer::start(
        &py,
        "numpy_trainer.py",
        &ws,
        "py_numpy",
        0,
        &["--compress", "bf16"],
    );
    let th = torch.then(|| {
        PyTrainer::start(
            &py,
            "torch_trainer.py",
            &ws,
            "py_torch",
            1,
            &["--compress", "f16"],
        )
    });
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
        // Each reports its own class's accuracy as its specialty's and every
        // class's as global, under a specialty named after its classes.
        let evals: Vec<(f64, f64)> = events
            .iter()
            .filter(|e| e["event"] == "evaluation")
            .map(|e| {
                let own = e["specialty_accuracy"].as_f64();
                let all = e["global_accuracy"].as_f64();
                (
                    own.expect("specialty_accuracy"),
                    all.expect("global_accuracy"),
                )
            })
            .collect();
        assert!(
            evals.iter().any(|(own, all)| own != all),
            "{name}: its own class and every class scored alike at every version: {evals:?}"
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

    // The newest version downloads into a module (strict) and to a file.
    let out = hub.dir.path().join("wine.safetensors");
    let (code, text, _) = run_to_end(
        &py,
        &[
            "-m",
            "kernal_trainer",
            "download",
            "--hub",
            &url,
            "--model",
            "wine",
            "--out",
        ]
        .into_iter()
        .chain([out.to_str().unwrap()])
        .collect::<Vec<_>>(),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("wine version {last}")), "{text}");
    assert!(std::fs::metadata(&out).unwrap().len() > 275 * 4);
    if torch {
        let script = format!(
            "from torch_trainer import Mlp\n\
             from kernal_trainer.torch_utils import load_version\n\
             m = load_version(Mlp(13, 16, 3), {url:?}, 'wine', {last})\n\
             print('loaded', sum(p.numel() for p in m.parameters()))\n"
        );
        let (code, text, _) = run_to_end(&py, &["-c", &script], Duration::from_secs(60));
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains("loaded 275"), "{text}");
    }
    assert!(scored > first + 0.2, "{first} -> {scored}");
}

/// Runs a Python example (or `-c` script) to its end within `limit`;
/// returns (exit code, stdout + stderr, seconds).
fn run_to_end(py: &Path, args: &[&str], limit: Duration) -> (Option<i32>, String, f64) {
    let started = Instant::now();
    let mut child = Command::new(py)
        .args(args)
        .current_dir(repo().join("python/examples"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after {limit:?}: it should have stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut out);
    }
    (status.code(), out, started.elapsed().as_secs_f64())
}

/// What no retry can change stops a Python trainer at once with the
/// documented exit code and a sentence, never a traceback or a loop: a
/// wrong token or unknown model (2), an update larger than the hub takes
/// (2, nothing sent), a hub never reached (1, said as such).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_trainers_stop_on_what_no_retry_changes() {
    let py = python().to_path_buf();
    // The built-in digits MLP's update is 19.5 KB: over this limit.
    let hub = start_hub(|c| c.hub.max_message_bytes = 8192);
    let ws = hub.hub.ws_url();
    let limit = Duration::from_secs(60);
    let example = |name: &str, token: &str, model: &str| -> Vec<String> {
        [
            "numpy_trainer.py",
            "--hub",
            &ws,
            "--name",
            name,
            "--token",
            token,
            "--model",
            model,
            "--classes",
            "0",
            "--versions",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run_example = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_to_end(&py, &args, limit)
    };

    let (code, out, _) = run_example(example("py_x", "tok", "no_such_model"));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("unknown_model") && !out.contains("Traceback"),
        "{out}"
    );

    // The name registers with its first token; another token is refused.
    let script = |token: &str| {
        format!(
            "import numpy as np\n\
             from kernal_trainer import Trainer\n\
             t = Trainer({ws:?}, 'py_big', 'digits-all', {token:?}, model='digits', max_versions=1,\n\
                 train=lambda w, v: ({{k: np.zeros_like(a) for k, a in w.items()}}, 10, 0.5))\n\
             t.run()\n"
        )
    };
    let (code, out, secs) = run_to_end(&py, &["-c", &script("tok")], limit);
    assert_eq!(code, Some(1), "TrainerRefused escapes a bare script: {out}");
    assert!(
        out.contains("TrainerRefused")
            && out.contains("message_too_large")
            && out.contains("at most 8192 bytes"),
        "{out}"
    );
    println!("an update over the limit stopped its trainer in {secs:.1} s");
    // Refused before sending: the hub saw no update of it.
    let ledger = get_json(&format!("{}/v1/updates", hub.url())).await;
    assert_eq!(
        ledger["updates"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{ledger}"
    );

    let (code, out, _) = run_example(example("py_big", "wrong", "digits"));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("bad_token") && !out.contains("Traceback"),
        "{out}"
    );

    // A port nobody listens on: said within the first attempts.
    let nobody = format!("ws://127.0.0.1:{}", free_port());
    let mut args = example("py_lost", "tok", "wine");
    args[2] = nobody.clone();
    let (code, out, secs) = run_example(args);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("could not reach the hub at {nobody}")) && !out.contains("Traceback"),
        "{out}"
    );
    println!("a hub never reached was reported after {secs:.1} s");
}

/// The CNN-with-BatchNorm example (issue 20's acceptance): created on the
/// hub from the module's whole state_dict (int64 `num_batches_tracked`
/// included), three class-disjoint `TorchTrainer`s for 20 versions, then
/// downloaded into a fresh module with `strict=True` and scored on held-out
/// digits. The checkpoint keeps every tensor's dtype and shape, and the
/// counters are counts (the `sum` rule), not averages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cnn_with_batchnorm_example_scores_on_held_out_digits() {
    let py = python().to_path_buf();
    if !has_torch(&py) {
        assert!(
            std::env::var("KERNAL_REQUIRE_TORCH").as_deref() != Ok("1"),
            "PyTorch is required here (KERNAL_REQUIRE_TORCH=1) but `import torch` fails in {}",
            py.display()
        );
        eprintln!("PyTorch is not installed: the CNN example is skipped here (CI runs it)");
        return;
    }
    let hub = start_hub(|_| {});
    let ws = hub.hub.ws_url();
    let (code, out, secs) = run_to_end(
        &py,
        &[
            "cnn_batchnorm.py",
            "--hub",
            &ws,
            "--admin-token",
            ADMIN,
            "--versions",
            "20",
        ],
        Duration::from_secs(300),
    );
    assert_eq!(code, Some(0), "{out}");
    let result: Value = out
        .lines()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["accuracy"].is_number())
        })
        .unwrap_or_else(|| panic!("no result line: {out}"));
    let accuracy = result["accuracy"].as_f64().unwrap();
    println!("CNN with BatchNorm: {result} ({secs:.1} s with Python's start)");
    assert!(result["version"].as_u64().unwrap() >= 18, "{result}");
    assert!(accuracy >= 0.95, "{result}");
    let r = reqwest::get(format!(
        "{}/v1/models/cnn/versions/latest/weights",
        hub.url()
    ))
    .await
    .unwrap();
    let bytes = r.bytes().await.unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let nbt = st.tensor("bn1.num_batches_tracked").unwrap();
    assert_eq!(nbt.dtype(), safetensors::Dtype::I64);
    assert!(nbt.shape().is_empty());
    let batches = i64::from_le_bytes(nbt.data().try_into().unwrap());
    // Every member runs at least 11 batches of 32 per version: a sum over
    // members and versions, where a mean would stay below 20 x 16.
    assert!(batches > 20 * 3 * 11, "{batches}");
    assert_eq!(
        st.tensor("conv1.weight").unwrap().dtype(),
        safetensors::Dtype::F32
    );
}
