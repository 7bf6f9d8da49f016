//! The dashboard in a real headless browser (Debian's chromium driven through
//! chromedriver's WebDriver API): trainer rows appear, the version and the
//! accuracy chart advance without a reload, a refused update shows in the
//! event log; then 50 trainers and a version a second, with the feed batched
//! server-side. Saves a screenshot to target/artifacts/dashboard.png.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use futures_util::StreamExt;
use kernal_client::connection::{self, ClientOptions};
use kernal_client::{EvalReport, Learner, MlpLearner, Trained};
use kernal_hub::model::{MlpSpec, TrainSettings};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The reference learner, slowed down so a person (and the test) can watch
/// versions go by.
struct Slow(MlpLearner);

impl Learner for Slow {
    fn check_layout(&self, l: &kernal_hub::protocol::ModelLayout) -> Result<(), String> {
        self.0.check_layout(l)
    }
    fn train(&mut self, g: &[f32], v: u64) -> Result<Trained, String> {
        std::thread::sleep(Duration::from_millis(250));
        self.0.train(g, v)
    }
    fn evaluate(&mut self, g: &[f32], v: u64) -> Result<Option<EvalReport>, String> {
        self.0.evaluate(g, v)
    }
}

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browsers it starts go with it.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let b2 = base.clone();
        wait_for("chromedriver", Duration::from_secs(30), || {
            let (b, h) = (b2.clone(), http.clone());
            async move {
                let r = h.get(format!("{b}/status")).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                (v["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1400,1100",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Driver {
            child,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn screenshot(&self, path: &Path) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Killing chromedriver alone left its chromium processes running
        // after every test run; the whole group goes.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artifacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs chromium and chromium-driver; the README's test command (./test.sh) installs them and runs it"]
async fn dashboard_updates_live_in_a_real_browser() {
    // Run on purpose, so it fails rather than skips when the browser is missing.
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "the browser test needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver"
    );
    let hub = start_hub(|c| {
        let d = c.models.get_mut("digits").unwrap();
        d.aggregation.min_updates = Some(2);
        d.aggregation.round_timeout_secs = Some(30.0);
    });
    let url = hub.url();
    let driver = Driver::start().await;
    driver.goto(&format!("{url}/?model=digits")).await;
    driver.js("window.__noReload = 42; return 1;").await;
    wait_for("the feed is live", Duration::from_secs(20), || async {
        (driver
            .js("return document.getElementById('hub-state').textContent")
            .await
            == "live")
            .then_some(())
    })
    .await;

    // Two trainers start after the page loaded: everything below is live.
    let cfg = kernal_hub::Config::builtin();
    let spec = MlpSpec {
        inputs: 64,
        hidden: 64,
        classes: 10,
    };
    let mut tasks = Vec::new();
    for (name, s) in [("AI_Alice", "networking"), ("AI_Bob", "graphics")] {
        let l = MlpLearner::for_digits(
            spec,
            s,
            &cfg.specialties,
            TrainSettings {
                epochs: 2,
                lr: 0.1,
                batch_size: 32,
                seed: 1,
            },
        )
        .unwrap();
        let mut o = ClientOptions::new(&hub.hub.ws_url(), name, s, "tok");
        o.max_versions = Some(30);
        tasks.push(tokio::spawn(connection::run(
            o,
            Slow(l),
            |_| {},
            std::future::pending(),
        )));
    }
    wait_for("trainer rows", Duration::from_secs(30), || async {
        let rows = driver
            .js("return [...document.querySelectorAll('#trainers tbody tr')].map(r => r.dataset.trainer)")
            .await;
        let names: Vec<String> = serde_json::from_value(rows).unwrap_or_default();
        (names.contains(&"AI_Alice".to_string()) && names.contains(&"AI_Bob".to_string())).then_some(())
    })
    .await;
    let read_version = || async {
        driver
            .js("return document.getElementById('version').textContent")
            .await
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
    };
    let first = wait_for("a first version", Duration::from_secs(30), || async {
        read_version().await.filter(|v| *v >= 2)
    })
    .await;
    let first_points = driver
        .js("return window.kernalDash.charts.acc.data[0].length")
        .await
        .as_u64()
        .unwrap();
    let later = wait_for(
        "the version to advance",
        Duration::from_secs(60),
        || async { read_version().await.filter(|v| *v >= first + 3) },
    )
    .await;
    let later_points = wait_for(
        "the accuracy chart to advance",
        Duration::from_secs(30),
        || async {
            driver
                .js("return window.kernalDash.charts.acc.data[0].length")
                .await
                .as_u64()
                .filter(|n| *n > first_points)
        },
    )
    .await;
    println!("version {first} -> {later}; accuracy chart points {first_points} -> {later_points}");

    // The accuracy axis labels each tick as itself, however narrow the
    // range: the chart's own `values` on the ticks of a range within a
    // point (a fresh model's) used to print "10%", "10%", "9%".
    let labels = driver
        .js("const c = window.kernalDash.charts.acc; const f = c.axes[1].values; \
             return [[0.09, 0.095, 0.1, 0.105], [0.0975, 0.1, 0.1025], [0, 0.5, 1]].map(s => f(c, s)) \
             .concat([c.axes[1]._values || []]);")
        .await;
    let labels: Vec<Vec<String>> = serde_json::from_value(labels).unwrap();
    assert_eq!(
        labels[..3],
        [
            vec!["9.0%", "9.5%", "10.0%", "10.5%"],
            vec!["9.75%", "10.00%", "10.25%"],
            vec!["0%", "50%", "100%"],
        ]
    );
    let drawn = &labels[3];
    let distinct: std::collections::BTreeSet<_> = drawn.iter().collect();
    assert_eq!(
        distinct.len(),
        drawn.len(),
        "repeated tick labels: {drawn:?}"
    );

    // A refused update shows in the event log with its code.
    let (mut bad, _, _) = Raw::hello(&hub.ws(), "mallory", "tok", "digits").await;
    let layout = digits_layout();
    let mut nan = vec![0.0f32; layout.num_params()];
    nan[0] = f32::NAN;
    bad.send_update("nan-1", 0, 5, layout.encode(&nan, None).unwrap())
        .await;
    assert_eq!(bad.outcome("nan-1").await["code"], "non_finite");
    wait_for(
        "the refusal in the event log",
        Duration::from_secs(20),
        || async {
            (driver
            .js("return document.querySelectorAll('#events li[data-code=\"non_finite\"]').length")
            .await
            .as_u64()
            .unwrap_or(0)
            > 0)
        .then_some(())
        },
    )
    .await;
    wait_for("the refusal in the trainers table", Duration::from_secs(20), || async {
        let t = driver
            .js("return document.querySelector('#trainers tr[data-trainer=\"mallory\"] .refusal')?.textContent || ''")
            .await;
        t.as_str().filter(|s| s.contains("non_finite")).map(|_| ())
    })
    .await;
    assert_eq!(
        driver.js("return window.__noReload").await,
        42,
        "the page never reloaded"
    );
    let shot = artifacts().join("dashboard.png");
    driver.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_trainers_feed_is_batched() {
    let hub = start_hub(|_| {});
    // A model that folds 50 updates (or whatever arrived within a second).
    let r = reqwest::Client::new()
        .post(format!("{}/v1/models", hub.url()))
        .bearer_auth(ADMIN)
        .json(
            &json!({"name": "load", "inputs": 8, "hidden": 8, "classes": 2,
                       "aggregation": {"min_updates": 50, "round_timeout_secs": 1.0}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (feed, _) = tokio_tungstenite::connect_async(format!("{}/v1/events", hub.hub.ws_url()))
        .await
        .unwrap();
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f2 = frames.clone();
    let counter = tokio::spawn(async move {
        let mut feed = feed;
        while let Some(Ok(m)) = feed.next().await {
            if m.is_text() {
                f2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let layout = kernal_hub::model::MlpSpec {
        inputs: 8,
        hidden: 8,
        classes: 2,
    }
    .layout();
    let mut tasks = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..50 {
        let ws = hub.ws();
        let layout = layout.clone();
        tasks.push(tokio::spawn(async move {
            let (mut r, w, _) = Raw::hello(&ws, &format!("load{i}"), "tok", "load").await;
            let mut version = w["version"].as_u64().unwrap();
            for k in 0..5 {
                let id = format!("u{k}");
                r.send_update(
                    &id,
                    version,
                    1,
                    layout
                        .encode(&vec![0.001; layout.num_params()], None)
                        .unwrap(),
                )
                .await;
                assert_eq!(r.outcome(&id).await["type"], "ack");
                version = r.wait_version(version + 1).await.0;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(kernal_hub::hub::metrics::FLUSH_EVERY * 2).await;
    let n = frames.load(std::sync::atomic::Ordering::SeqCst);
    counter.abort();
    // 250 updates, 5 versions, 50 joins: at most MAX_EVENTS_PER_FLUSH frames
    // per 250 ms flush, whatever the load.
    let flushes = (secs / kernal_hub::hub::metrics::FLUSH_EVERY.as_secs_f64()).ceil() as usize + 2;
    let bound = flushes * kernal_hub::hub::metrics::MAX_EVENTS_PER_FLUSH;
    println!("{n} feed frames in {secs:.1} s for 50 trainers (bound {bound})");
    assert!(n <= bound, "{n} frames > {bound}");
    assert!(n > 0);
    let status = get_json(&format!("{}/v1/models/load", hub.url())).await;
    assert!(status["version"].as_u64().unwrap() >= 5);
}

/// `/?model=NAME` opens that model, and the header's accuracy is always the
/// shown model's own newest hub evaluation ("no evaluation yet" for a model
/// the hub cannot evaluate), never the previous model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs chromium and chromium-driver; the README's test command (cargo test -- --include-ignored) runs it"]
async fn dashboard_opens_the_model_in_its_url_with_its_own_evaluation() {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "the browser test needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver"
    );
    let hub = start_hub(|_| {});
    let url = hub.url();
    // A custom model the hub has no evaluation for.
    let layout = kernal_hub::protocol::ModelLayout::new(vec![("w".into(), vec![8])]);
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/models?name=custom"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(layout.encode(&[0.5; 8], None).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let digits = get_json(&format!("{url}/v1/models/digits/versions/0")).await;
    let digits_acc = digits["metrics"]["eval"]["accuracy"]
        .as_f64()
        .expect("the hub evaluates the built-in model");
    let digits_text = format!("{:.1}%", digits_acc * 100.0);

    let driver = Driver::start().await;
    let header = || async {
        let v = driver
            .js("return [document.getElementById('model-select').value, document.getElementById('accuracy').textContent, window.location.search]")
            .await;
        (
            v[0].as_str().unwrap_or("").to_string(),
            v[1].as_str().unwrap_or("").to_string(),
            v[2].as_str().unwrap_or("").to_string(),
        )
    };
    let shows = |model: &'static str, acc: String| {
        let header = &header;
        async move {
            wait_for(
                &format!("the page shows {model} at {acc}"),
                Duration::from_secs(20),
                || {
                    let acc = acc.clone();
                    async move {
                        let (m, a, _) = header().await;
                        (m == model && a == acc).then_some(())
                    }
                },
            )
            .await
        }
    };

    driver.goto(&format!("{url}/?model=custom")).await;
    shows("custom", "no evaluation yet".into()).await;
    driver.goto(&format!("{url}/?model=digits")).await;
    shows("digits", digits_text.clone()).await;
    // Choosing the other model in the page: its own (absent) evaluation,
    // and a URL that opens it again.
    driver
        .js("const s = document.getElementById('model-select'); s.value = 'custom'; s.dispatchEvent(new Event('change')); return 1;")
        .await;
    shows("custom", "no evaluation yet".into()).await;
    assert_eq!(header().await.2, "?model=custom");
    driver.goto(&format!("{url}/?model=digits")).await;
    shows("digits", digits_text).await;

    // An evaluator's report gives the custom model its hub evaluation: the
    // header shows it and the chart plots it, like the hub's own.
    let r: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/v1/models/custom/evaluators"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "judge"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["token"].as_str().expect("a token");
    driver.goto(&format!("{url}/?model=custom")).await;
    shows("custom", "no evaluation yet".into()).await;
    let mut judge = Raw::connect(&hub.ws()).await;
    judge
        .send_json(serde_json::json!({"type": "hello", "role": "evaluator", "name": "judge", "token": token, "model": "custom"}))
        .await;
    judge.expect_type("welcome").await;
    judge
        .send_json(serde_json::json!({"type": "evaluator_report", "version": 0, "accuracy": 0.625, "num_examples": 8}))
        .await;
    judge.expect_type("evaluation_recorded").await;
    shows("custom", "62.5%".into()).await;
    // The report reaches the chart by the event stream or, if the page
    // subscribed after it, with the status that the header shows it from.
    wait_for("the chart's point", Duration::from_secs(20), || async {
        let charted = driver
            .js("const v = window.kernalDash.versions.get(0); return v ? [v.acc, v.by] : null;")
            .await;
        (charted == serde_json::json!([0.625, "judge"])).then_some(())
    })
    .await;
    // And after a reload, from the stored history.
    driver.goto(&format!("{url}/?model=custom")).await;
    shows("custom", "62.5%".into()).await;
}

/// A language model on the dashboard (the default page when the hub has
/// `kernel`): the bits-per-byte chart gains a point per scored version with
/// one line per specialty and one for unseen subsystems, and the completion
/// panel shows the newest scored version continuing `static int tcp_`.
/// A classifier's page does not show them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs chromium and chromium-driver; the README's test command (./test.sh) installs them and runs it"]
async fn kernel_bits_per_byte_chart_and_completion_panel() {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "the browser test needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver"
    );
    let hub = start_hub(|c| {
        c.models.get_mut("kernel").unwrap().aggregation.min_updates = Some(1);
    });
    let url = hub.url();
    let driver = Driver::start().await;
    driver.goto(&format!("{url}/")).await;
    let read = || async {
        driver
            .js("const k = window.kernalKernel || {}; const c = k.chart; \
                 return {model: document.getElementById('model-select').value, \
                 hidden: document.getElementById('kernel-bpb-card').hidden, \
                 acc_hidden: document.getElementById('chart-acc').closest('section').hidden, \
                 points: c ? c.data[0].length : 0, \
                 lines: c ? c.series.slice(1).map(s => s.label) : [], \
                 last: c && c.data[0].length ? c.data.slice(1).map(d => d[d.length - 1]) : [], \
                 prompt: document.getElementById('kernel-prompt').textContent, \
                 text: document.getElementById('kernel-completion').textContent, \
                 version: document.getElementById('kernel-completion-version').textContent, \
                 header: document.getElementById('accuracy').textContent}")
            .await
    };
    // Version 0 is scored at start: one point, every line, a completion.
    let first = wait_for("the kernel panels", Duration::from_secs(30), || async {
        let v = read().await;
        (v["model"] == "kernel" && v["hidden"] == false && v["points"].as_u64() >= Some(1))
            .then_some(v)
    })
    .await;
    assert_eq!(
        first["lines"],
        json!(["graphics", "networking", "security", "unseen subsystems"]),
        "{first}"
    );
    for b in first["last"].as_array().unwrap() {
        let b = b.as_f64().unwrap();
        assert!((7.0..9.0).contains(&b), "an untrained model: {first}");
    }
    assert_eq!(first["prompt"], "static int tcp_", "{first}");
    assert_eq!(
        first["acc_hidden"], true,
        "no accuracy chart for a language model"
    );
    assert!(
        first["header"].as_str().unwrap().ends_with("bits/byte"),
        "{first}"
    );

    // A trainer makes versions; the chart and the completion follow them.
    let spec = kernal_hub::kernel::DEFAULT_SPEC;
    let learner = kernal_client::kernel::KernelLearner::new(
        spec,
        kernal_client::kernel::KernelTexts::for_specialty("networking").unwrap(),
        kernal_hub::kernel::KernelTrainSettings {
            steps: 15,
            batch: 8,
            window: spec.context,
            lr: 0.01,
            weight_decay: 0.0,
            seed: 1,
        },
    )
    .unwrap();
    let mut o = ClientOptions::new(&hub.hub.ws_url(), "AI_Alice", "networking", "tok");
    o.model = "kernel".into();
    o.max_versions = Some(20);
    let task = tokio::spawn(connection::run(o, learner, |_| {}, std::future::pending()));
    let later = wait_for(
        "three more scored versions on the chart",
        Duration::from_secs(120),
        || async {
            let v = read().await;
            (v["points"].as_u64().unwrap_or(0) >= 4).then_some(v)
        },
    )
    .await;
    let newest: Vec<f64> = serde_json::from_value(later["last"].clone()).unwrap();
    assert!(
        later["header"].as_str().unwrap().ends_with("bits/byte"),
        "the header keeps the newest figure between versions: {later}"
    );
    assert!(
        newest.iter().all(|b| *b < 7.0),
        "the trained versions score better than the initial one: {later}"
    );
    assert!(
        later["version"].as_str().unwrap() != first["version"].as_str().unwrap()
            && !later["text"].as_str().unwrap().is_empty(),
        "the completion follows the versions: {first} -> {later}"
    );
    let shot = artifacts().join("dashboard-kernel.png");
    driver.screenshot(&shot).await;
    println!("{later}\nscreenshot: {}", shot.display());
    // A classifier's page has no language-model panels.
    driver.goto(&format!("{url}/?model=digits")).await;
    wait_for(
        "the kernel panels hidden",
        Duration::from_secs(20),
        || async {
            let v = read().await;
            (v["hidden"] == true && v["acc_hidden"] == false).then_some(())
        },
    )
    .await;
    task.abort();
}
