// Over 600 lines: one run of a scenario is one sequence (start hub, run trainers, faults, restart, score, ledger check, compare); its steps share the run's context and read best in order.
//! `kernal harness SCENARIO`: automated multi-trainer scenarios as regression
//! tests of the collective model. Starts its own hub (a `kernal hub` child
//! process on a free loopback port with a fresh database) or uses `--hub`,
//! runs real WebSocket trainers concurrently, evaluates the collective model,
//! compares it with specialists trained alone, checks the ledger, prints a
//! table and a verdict, writes a JSON report and records the run on the hub.

pub mod attack;
mod dataset;
mod flood;
mod keep;
pub mod kernel;
mod kernel_baseline;
mod kernel_report;
pub mod poisoning;
mod record;
pub mod report;
pub mod scenario;
mod scenario_check;

use dataset::{
    centralised_accuracy, ensure_dataset_model, hub_evaluation, prepare_dataset, shard, Prepared,
};
use record::{check_ledger, record_run};
pub use report::{render, Criterion, Report, RunOutcome, TrainerRow};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use kernal_hub::config::Config;
use kernal_core::data;
use kernal_hub::hub::child::ChildHub;
use kernal_core::model::{MlpSpec, TrainSettings};
use kernal_core::protocol::ModelLayout;
use attack::{Behaviour, FaultyLearner};
use kernal_client::connection::{self, ClientOptions, Summary};
use kernal_client::MlpLearner;
use scenario::{Scenario, ScenarioError};

#[derive(Debug, Clone, Default)]
pub struct HarnessArgs {
    pub scenario: String,
    pub hub: Option<String>,
    pub report: Option<PathBuf>,
    pub seed: Option<u64>,
    pub admin_token: Option<String>,
    /// Extra trust for an `https://` hub (PEM).
    pub ca: Option<PathBuf>,
    pub progress: bool,
    /// Write the run's models here as checkpoints (`--keep-weights`).
    pub keep_weights: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("{0}")]
    Run(String),
}

fn run_err(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Run(e.to_string())
}

/// The harness's own hub: the scenario's `[hub]` settings (or the
/// comparison's strategy) applied to its model.
fn start_own_hub(
    sc: &Scenario,
    strategy_override: Option<&scenario::CompareSpec>,
) -> Result<ChildHub, HarnessError> {
    // Only what the scenario sets: the hub's own file supplies the rest.
    let aggregation = match strategy_override {
        Some(c) => sc.hub.aggregation.then(&c.aggregation),
        None => sc.hub.aggregation.clone(),
    };
    let model = kernal_hub::config::ModelConfig {
        aggregation,
        ..Default::default()
    };
    let mut models = toml::Table::new();
    // A [dataset] scenario's model is created through the API once the hub
    // runs (with its data's shape and normalisation).
    if sc.dataset.is_none() {
        models.insert(
            sc.hub.model.clone(),
            toml::Value::try_from(&model).map_err(run_err)?,
        );
    }
    let mut root = toml::Table::new();
    root.insert("models".into(), toml::Value::Table(models));
    ChildHub::start(root).map_err(HarnessError::Run)
}

async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(HarnessError::Run(format!(
                "the hub at {url} did not become healthy"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, HarnessError> {
    let r = http.get(url).send().await.map_err(run_err)?;
    if !r.status().is_success() {
        return Err(HarnessError::Run(format!("GET {url}: {}", r.status())));
    }
    r.json().await.map_err(run_err)
}

/// Join and leave versions per trainer, random ones drawn from the seed.
fn plan(sc: &Scenario, seed: u64) -> Vec<(u64, Option<u64>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v = sc.stop.versions;
    sc.trainers
        .iter()
        .map(|t| {
            // Trainers that give a join or leave version keep their plan;
            // only the others churn.
            if !sc.random_churn || t.join_at_version.is_some() || t.leave_at_version.is_some() {
                return (t.join_at_version.unwrap_or(0), t.leave_at_version);
            }
            let join = rng.gen_range(0..=(v / 2).max(1));
            // About half the churning trainers leave before the end.
            let leave = if rng.gen_bool(0.5) {
                Some(join + rng.gen_range((v / 6).max(1)..=(v / 2).max(2)))
            } else {
                None
            };
            (join, leave)
        })
        .collect()
}

struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Summary, connection::ClientError>>,
}

/// Runs the scenario once against `hub_url` and evaluates the final model.
/// What one run of a scenario needs besides the scenario and its hub.
struct RunCtx<'a> {
    bar: &'a ProgressBar,
    label: String,
    tls: &'a std::sync::Arc<rustls::ClientConfig>,
    /// To create a `[dataset]` scenario's model and attach its evaluation set.
    admin_token: Option<&'a str>,
    prepared: Option<&'a Prepared>,
    /// The aggregation settings of a model the harness creates.
    aggregation: kernal_hub::aggregation::AggregationOverrides,
}

async fn run_once(
    sc: &Scenario,
    seed: u64,
    hub_url: &str,
    own: Option<&mut ChildHub>,
    ctx: &RunCtx<'_>,
) -> Result<RunOutcome, HarnessError> {
    let (bar, label, tls) = (ctx.bar, ctx.label.as_str(), ctx.tls);
    let http =
        kernal_client::tls::http_client(tls, Some(Duration::from_secs(30))).map_err(run_err)?;
    wait_healthy(&http, hub_url, Duration::from_secs(60)).await?;
    let cfg = Config::builtin();
    let model = sc.hub.model.clone();
    if let (Some(d), Some(p)) = (&sc.dataset, ctx.prepared) {
        ensure_dataset_model(&http, hub_url, &model, d, ctx, p).await?;
    }
    let m = get_json(&http, &format!("{hub_url}/v1/models/{model}")).await?;
    let layout = ModelLayout {
        tensors: serde_json::from_value(m["tensors"].clone()).map_err(run_err)?,
    };
    let spec = MlpSpec::from_layout(&layout).ok_or_else(|| {
        HarnessError::Run(format!(
            "model `{model}` is not an MLP the reference trainer can train"
        ))
    })?;
    // Start from a settled model: updates left in the buffer by earlier
    // trainers would otherwise share folds with this run's first round.
    let mut m = m;
    let settle_deadline = Instant::now() + Duration::from_secs(sc.stop.timeout_secs);
    while m["waiting"]["buffered"].as_u64().unwrap_or(0) > 0 {
        if Instant::now() > settle_deadline {
            return Err(HarnessError::Run(format!(
                "model `{model}` still has buffered updates from before the run"
            )));
        }
        bar.set_message(format!(
            "{label}: waiting for the hub to fold updates left from before the run"
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = get_json(&http, &format!("{hub_url}/v1/models/{model}")).await?;
    }
    let start_version = m["version"].as_u64().unwrap_or(0);
    let schedule = plan(sc, seed);
    let mut running: HashMap<usize, Running> = HashMap::new();
    let mut done: HashMap<usize, Summary> = HashMap::new();
    let mut own = own;
    let mut restarted_at = None;
    let started = Instant::now();
    let timeout = Duration::from_secs(sc.stop.timeout_secs);
    let mut version = start_version;
    let mut accuracy = 0.0;
    let mut timed_out = false;
    bar.set_length(sc.stop.versions);
    bar.set_position(0);
    loop {
        // Who should be online now?
        for (i, t) in sc.trainers.iter().enumerate() {
            let (join, leave) = schedule[i];
            let rel = version - start_version;
            let should = rel >= join && leave.map(|l| rel < l).unwrap_or(true);
            if should && !running.contains_key(&i) && !done.contains_key(&i) {
                let learner = FaultyLearner::new(
                    make_learner(sc, t, spec, &cfg, seed, ctx.prepared)?,
                    t.behaviour,
                );
                let mut opts = ClientOptions::new(
                    hub_url,
                    &t.name,
                    t.specialty.as_deref().unwrap_or("custom"),
                    &format!("harness-token-{}", t.name),
                );
                opts.model = model.clone();
                opts.tls = Some(tls.clone());
                opts.compression = t.compression;
                opts.max_backoff = Duration::from_secs(2);
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(connection::run(opts, learner, |_| {}, async move {
                    let _ = rx.await;
                }));
                running.insert(
                    i,
                    Running {
                        stop: Some(tx),
                        task,
                    },
                );
            } else if !should && running.contains_key(&i) {
                if let Some(mut r) = running.remove(&i) {
                    if let Some(tx) = r.stop.take() {
                        let _ = tx.send(());
                    }
                    let s = r.task.await.map_err(run_err)?.unwrap_or_default();
                    done.insert(i, s);
                }
            }
        }
        // Crash and restart the hub once, if the scenario says so.
        if let (Some(r), Some(h)) = (&sc.restart, own.as_deref_mut()) {
            if restarted_at.is_none() && version - start_version >= r.at_version {
                bar.println(format!("{label}: SIGKILL the hub at version {version}, restarting on the same database"));
                h.kill9();
                tokio::time::sleep(Duration::from_millis(200)).await;
                h.spawn().map_err(HarnessError::Run)?;
                wait_healthy(&http, hub_url, Duration::from_secs(60)).await?;
                restarted_at = Some(version);
            }
        }
        if let Ok(m) = get_json(&http, &format!("{hub_url}/v1/models/{model}")).await {
            version = m["version"].as_u64().unwrap_or(version);
            accuracy = m["last_metrics"]["eval"]["accuracy"]
                .as_f64()
                .unwrap_or(accuracy);
        }
        bar.set_position(version - start_version);
        bar.set_message(format!(
            "{label}: version {version}, hub accuracy {accuracy:.3}, {} trainers online",
            running.len()
        ));
        if version - start_version >= sc.stop.versions {
            break;
        }
        if let Some(a) = sc.stop.accuracy {
            if accuracy >= a {
                break;
            }
        }
        if started.elapsed() > timeout {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, mut r) in running.drain() {
        if let Some(tx) = r.stop.take() {
            let _ = tx.send(());
        }
        let s = match tokio::time::timeout(Duration::from_secs(30), r.task).await {
            Ok(Ok(Ok(s))) => s,
            _ => Summary::default(),
        };
        done.insert(i, s);
    }
    // Evaluate the final collective model on the whole test set and slices.
    let weights_url = format!("{hub_url}/v1/models/{model}/versions/latest/weights");
    let bytes = http
        .get(&weights_url)
        .send()
        .await
        .map_err(run_err)?
        .bytes()
        .await
        .map_err(run_err)?;
    let mut specialty_accuracy = BTreeMap::new();
    let collective = if ctx.prepared.is_some() {
        // The model's own held-out rows, as the hub scored them, at the
        // version the scenario stops at (the run may have seen one or two
        // more by the time it stopped its trainers).
        let at = version.min(start_version + sc.stop.versions);
        hub_evaluation(&http, hub_url, &model, at).await?
    } else {
        let (weights, norm) = decode_checkpoint(&layout, &bytes)?;
        let mut split = data::digits_split().map_err(run_err)?;
        if let Some(n) = &norm {
            // The collective model takes inputs scaled by the model's
            // statistics; the checkpoint carries them.
            n.apply(&mut split.test.features);
        }
        let collective = spec
            .evaluate(&weights, &split.test)
            .map_err(run_err)?
            .accuracy;
        collective_slices(sc, &cfg, spec, &weights, &split, &mut specialty_accuracy)?;
        collective
    };
    let ledger_problems = check_ledger(&http, hub_url, &model, &done, sc).await?;
    let trainers = sc
        .trainers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let s = done.get(&i).cloned().unwrap_or_default();
            TrainerRow {
                name: t.name.clone(),
                specialty: t.specialty.clone().unwrap_or_else(|| "custom data".into()),
                behaviour: t.behaviour,
                solo_accuracy: None,
                collective_specialty_accuracy: t
                    .specialty
                    .as_ref()
                    .and_then(|s| specialty_accuracy.get(s).copied()),
                collective_accuracy: collective,
                versions_trained: s.versions_trained,
                sent: s.sent,
                acknowledged: s.acked,
                refused: s.refused,
                refusal_codes: s.refusal_codes,
            }
        })
        .collect();
    Ok(RunOutcome {
        strategy: None,
        final_version: version,
        collective_accuracy: collective,
        specialty_accuracy,
        trainers,
        seconds: started.elapsed().as_secs_f64(),
        restarted_at,
        ledger_problems,
        timed_out,
        centralised_accuracy: None,
        checkpoint: bytes.to_vec(),
    })
}

/// A downloaded checkpoint's weights and, for a model that normalises its
/// inputs, the statistics it carries (`normalisation.mean`, `.std`).
fn decode_checkpoint(
    layout: &ModelLayout,
    bytes: &[u8],
) -> Result<(Vec<f32>, Option<kernal_core::protocol::Normalisation>), HarnessError> {
    if let Ok(w) = layout.decode(bytes) {
        return Ok((w, None));
    }
    // fc1.weight is [hidden, inputs].
    let dim = layout
        .tensors
        .first()
        .and_then(|t| t.shape.get(1))
        .copied()
        .unwrap_or(0);
    let mut tensors: Vec<(String, Vec<usize>)> = layout
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    tensors.push(("normalisation.mean".into(), vec![dim]));
    tensors.push(("normalisation.std".into(), vec![dim]));
    let mut all = ModelLayout::new(tensors).decode(bytes).map_err(run_err)?;
    let std = all.split_off(all.len() - dim);
    let mean = all.split_off(all.len() - dim);
    Ok((
        all,
        Some(kernal_core::protocol::Normalisation::frozen(mean, std, 0, 0)),
    ))
}

/// The collective model's accuracy on each digits specialty's test slice.
fn collective_slices(
    sc: &Scenario,
    cfg: &Config,
    spec: MlpSpec,
    weights: &[f32],
    split: &data::Split,
    out: &mut BTreeMap<String, f64>,
) -> Result<(), HarnessError> {
    for t in &sc.trainers {
        if let Some(s) = &t.specialty {
            if t.data.is_none() && !out.contains_key(s) {
                let slice = data::specialty_slice(&split.test, s, &cfg.specialties);
                let a = spec.evaluate(weights, &slice).map_err(run_err)?.accuracy;
                out.insert(s.clone(), a);
            }
        }
    }
    Ok(())
}

/// The trainer's learner: the reference one, wrapped in its attack if the
/// scenario gives it one.
fn make_learner(
    sc: &Scenario,
    t: &scenario::TrainerSpec,
    spec: MlpSpec,
    cfg: &Config,
    seed: u64,
    prepared: Option<&Prepared>,
) -> Result<attack::Attacker<MlpLearner>, HarnessError> {
    let honest = make_honest_learner(sc, t, spec, cfg, seed, prepared)?
        .with_min_steps(sc.training.min_steps);
    let mut a = attack::Attacker::new(honest, t.attack, t.attack_norm, t.claim_examples);
    a.locate(&spec.layout());
    Ok(a)
}

fn make_honest_learner(
    sc: &Scenario,
    t: &scenario::TrainerSpec,
    spec: MlpSpec,
    cfg: &Config,
    seed: u64,
    prepared: Option<&Prepared>,
) -> Result<MlpLearner, HarnessError> {
    let settings = TrainSettings {
        epochs: t.local_epochs.unwrap_or(sc.training.local_epochs),
        lr: t.lr.unwrap_or(sc.training.lr),
        batch_size: sc.training.batch_size,
        seed: data::fnv1a(&t.name) ^ seed,
    };
    if let Some(p) = prepared {
        return Ok(MlpLearner::for_parts(
            spec,
            shard(&p.split.train, t),
            shard(&p.split.test, t),
            settings,
        ));
    }
    match &t.data {
        Some(p) => {
            let ds = data::load_csv(p).map_err(run_err)?;
            Ok(MlpLearner::for_csv(spec, &ds, settings))
        }
        None => MlpLearner::for_digits(
            spec,
            t.specialty.as_deref().unwrap_or("custom"),
            &cfg.specialties,
            settings,
        )
        .map_err(HarnessError::Run),
    }
}

/// Trains one specialty alone with the same budget as the collective run.
fn solo_accuracy(
    spec: MlpSpec,
    specialty: &str,
    rounds: u64,
    sc: &Scenario,
    seed: u64,
) -> Result<(f64, Vec<f32>), HarnessError> {
    let cfg = Config::builtin();
    let settings = TrainSettings {
        epochs: sc.training.local_epochs,
        lr: sc.training.lr,
        batch_size: sc.training.batch_size,
        seed: data::fnv1a(specialty) ^ seed,
    };
    let mut l = MlpLearner::for_digits(spec, specialty, &cfg.specialties, settings)
        .map_err(HarnessError::Run)?
        .with_min_steps(sc.training.min_steps);
    let mut w = spec.init_weights(42);
    for v in 0..rounds {
        w = kernal_client::Learner::train(&mut l, &w, v)
            .map_err(HarnessError::Run)?
            .weights;
    }
    let test = data::digits_split().map_err(run_err)?.test;
    Ok((spec.evaluate(&w, &test).map_err(run_err)?.accuracy, w))
}

fn crit(
    name: &str,
    passed: bool,
    value: Option<f64>,
    bound: Option<f64>,
    message: String,
) -> Criterion {
    Criterion {
        name: name.into(),
        passed,
        value,
        bound,
        message,
    }
}

/// Runs a scenario end to end. `Err` is a problem with the scenario or the
/// run (exit 2); a failed criterion is an `Ok` report with `passed: false`.
pub async fn run(args: &HarnessArgs) -> Result<Report, HarnessError> {
    let (sc, name, path) = scenario::load(&args.scenario)?;
    let seed = args.seed.unwrap_or(sc.seed);
    let tls = kernal_client::tls::client_config(args.ca.as_deref()).map_err(run_err)?;
    let started_at = kernal_hub::db::now();
    let mut notes = Vec::new();
    let bar = if args.progress {
        let b = ProgressBar::new(sc.stop.versions);
        b.set_style(
            ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} versions {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    if kernel::is_kernel(&sc) {
        let r = kernel::run(args, sc, name, path, seed, &bar).await;
        bar.finish_and_clear();
        return r;
    }
    let mut own = None;
    let (hub_url, token) = match &args.hub {
        Some(u) => {
            if sc.restart.is_some() {
                return Err(HarnessError::Run(
                    "this scenario kills and restarts its hub; run it without --hub".into(),
                ));
            }
            notes.push("ran against an existing hub: the scenario's [hub] settings were not applied; the hub's own are in force".into());
            (connection::http_url(u), args.admin_token.clone())
        }
        None => {
            let h = start_own_hub(&sc, None)?;
            let u = h.url();
            let t = h.token.clone();
            own = Some(h);
            (u, Some(t))
        }
    };
    let prepared = match &sc.dataset {
        Some(d) => Some(prepare_dataset(d, path.as_deref())?),
        None => None,
    };
    let ctx = RunCtx {
        bar: &bar,
        label: name.clone(),
        tls: &tls,
        admin_token: token.as_deref(),
        prepared: prepared.as_ref(),
        aggregation: sc.hub.aggregation.clone(),
    };
    let mut run = match run_once(&sc, seed, &hub_url, own.as_mut(), &ctx).await {
        Ok(r) => r,
        Err(e) => {
            let mut msg = e.to_string();
            if let Some(h) = &own {
                let tail = h.log_tail(5);
                if !tail.is_empty() {
                    msg.push_str(&format!(" (hub log: {tail})"));
                }
            }
            return Err(HarnessError::Run(msg));
        }
    };
    run.strategy = sc.hub.aggregation.strategy.map(|s| s.as_str().to_string());
    let cfg = Config::builtin();
    let spec = MlpSpec {
        inputs: 64,
        hidden: cfg
            .models
            .get("digits")
            .and_then(|m| m.hidden)
            .unwrap_or(64),
        classes: 10,
    };
    // Solo baselines for each specialty, with the collective's budget.
    let rounds = run.final_version.max(1);
    let mut solo = BTreeMap::new();
    let mut solo_weights = BTreeMap::new();
    for t in sc.trainers.iter().filter(|_| sc.dataset.is_none()) {
        if let (Some(s), None) = (&t.specialty, &t.data) {
            if !solo.contains_key(s) {
                let (specialty, scenario) = (s.clone(), sc.clone());
                let (a, w) = tokio::task::spawn_blocking(move || {
                    solo_accuracy(spec, &specialty, rounds, &scenario, seed)
                })
                .await
                .map_err(run_err)??;
                solo.insert(s.clone(), a);
                solo_weights.insert(s.clone(), w);
            }
        }
    }
    for row in run.trainers.iter_mut() {
        row.solo_accuracy = solo.get(&row.specialty).copied();
    }
    // The comparison run (for example the same faults under plain fedavg).
    let mut compare = None;
    if let Some(c) = &sc.compare {
        if args.hub.is_none() {
            let mut compare_hub = start_own_hub(&sc, Some(c))?;
            let compare_url = compare_hub.url();
            let compare_token = compare_hub.token.clone();
            let compare_ctx = RunCtx {
                label: format!("{name} with {}", c.strategy.as_str()),
                admin_token: Some(compare_token.as_str()),
                aggregation: sc.hub.aggregation.then(&c.aggregation),
                ..ctx
            };
            let mut compare_run = run_once(
                &sc,
                seed,
                &compare_url,
                Some(&mut compare_hub),
                &compare_ctx,
            )
            .await?;
            compare_run.strategy = Some(c.strategy.as_str().to_string());
            compare_hub.stop();
            compare = Some(compare_run);
        } else {
            notes.push("comparison run skipped: it needs the harness's own hub".into());
        }
    }
    // Lying members, each case on a hub of its own.
    let mut attacks = Vec::new();
    if !sc.attacks.is_empty() {
        if args.hub.is_none() {
            attacks = poisoning::run_attacks(&sc, seed, &ctx, run.collective_accuracy).await?;
        } else {
            notes.push("attack cases skipped: they need the harness's own hub".into());
        }
    }
    bar.finish_and_clear();

    // Criteria.
    let cfg_specialties = &cfg.specialties;
    let specialists: Vec<(&String, f64)> = solo
        .iter()
        .filter(|(s, _)| cfg_specialties.contains_key(*s))
        .map(|(s, a)| (s, *a))
        .collect();
    let acc = run.collective_accuracy;
    let p = &sc.pass;
    let mut criteria = Vec::new();
    if run.timed_out {
        criteria.push(crit(
            "stop",
            false,
            Some(run.final_version as f64),
            Some(sc.stop.versions as f64),
            format!(
                "timed out after {} s at version {}",
                sc.stop.timeout_secs, run.final_version
            ),
        ));
    }
    if let Some(min) = p.min_accuracy {
        criteria.push(crit(
            "min_accuracy",
            acc >= min,
            Some(acc),
            Some(min),
            format!(
                "collective accuracy on the whole test set {acc:.3} {} {min:.2}",
                if acc >= min { ">=" } else { "<" }
            ),
        ));
    }
    if let Some(min) = p.min_specialty_accuracy {
        for (s, a) in &run.specialty_accuracy {
            criteria.push(crit(
                &format!("min_specialty_accuracy[{s}]"),
                *a >= min,
                Some(*a),
                Some(min),
                format!(
                    "collective accuracy on {s}'s test slice {a:.3} {} {min:.2}",
                    if *a >= min { ">=" } else { "<" }
                ),
            ));
        }
    }
    if let Some(max) = p.max_solo_accuracy {
        for (s, a) in &specialists {
            criteria.push(crit(
                &format!("max_solo_accuracy[{s}]"),
                *a <= max,
                Some(*a),
                Some(max),
                format!(
                    "{s} trained alone scores {a:.3} {} {max:.2}",
                    if *a <= max { "<=" } else { ">" }
                ),
            ));
        }
    }
    if let Some(gain) = p.min_gain_over_solo {
        for (s, a) in &specialists {
            let g = acc - a;
            criteria.push(crit(
                &format!("min_gain_over_solo[{s}]"),
                g >= gain,
                Some(g),
                Some(gain),
                format!(
                    "collective beats {s} alone by {g:.3} {} {gain:.2}",
                    if g >= gain { ">=" } else { "<" }
                ),
            ));
        }
    }
    let mut central_kept = None;
    if let Some(prep) = &prepared {
        let (split, scenario, net_spec) = (prep.split.clone(), sc.clone(), prep.spec);
        let (central, central_checkpoint) = tokio::task::spawn_blocking(move || {
            centralised_accuracy(
                &Prepared {
                    split,
                    spec: net_spec,
                },
                &scenario,
                rounds,
                seed,
            )
        })
        .await
        .map_err(run_err)??;
        run.centralised_accuracy = Some(central);
        central_kept = Some(central_checkpoint);
        let gap = central - acc;
        match p.max_gap_to_centralised {
            Some(max) => criteria.push(crit(
                "max_gap_to_centralised",
                gap <= max,
                Some(gap),
                Some(max),
                format!(
                    "a centralised model on the union of the trainers' rows scores {central:.3}; the collective {acc:.3} is {gap:.3} below it ({} {max:.2})",
                    if gap <= max { "<=" } else { ">" }
                ),
            )),
            None => notes.push(format!(
                "a centralised model on the union of the trainers' rows scores {central:.3}"
            )),
        }
    }
    if p.no_lost_updates {
        let ok = run.ledger_problems.is_empty();
        let acked: u64 = run.trainers.iter().map(|t| t.acknowledged).sum();
        criteria.push(crit(
            "no_lost_updates",
            ok,
            Some(run.ledger_problems.len() as f64),
            Some(0.0),
            if ok {
                format!("all {acked} acknowledged updates are in the ledger, none applied twice")
            } else {
                run.ledger_problems.join("; ")
            },
        ));
    }
    if p.faulty_refused_or_outvoted {
        for t in run
            .trainers
            .iter()
            .filter(|t| !matches!(t.behaviour, Behaviour::Honest | Behaviour::Silent))
        {
            let outvoted = p.min_accuracy.map(|m| acc >= m).unwrap_or(true);
            let (ok, how) = if t.refused > 0 && t.acknowledged == 0 {
                (
                    true,
                    format!(
                        "all {} of its updates were refused ({:?})",
                        t.refused, t.refusal_codes
                    ),
                )
            } else if outvoted {
                (true, format!("{} of its updates were accepted and outvoted: the collective still scores {acc:.3}", t.acknowledged))
            } else {
                (
                    false,
                    format!(
                        "{} of its updates were accepted and the collective scores only {acc:.3}",
                        t.acknowledged
                    ),
                )
            };
            criteria.push(crit(
                &format!("faulty_refused_or_outvoted[{}]", t.name),
                ok,
                None,
                None,
                format!("{} ({:?}): {how}", t.name, t.behaviour),
            ));
        }
    }
    if let (Some(c), Some(cs)) = (&compare, &sc.compare) {
        let drop = acc - c.collective_accuracy;
        if let Some(min_drop) = cs.min_accuracy_drop {
            criteria.push(crit("compare", drop >= min_drop, Some(drop), Some(min_drop),
                format!("with {} the collective scores {:.3}, {drop:.3} below {acc:.3} {} {min_drop:.2}",
                    cs.strategy.as_str(), c.collective_accuracy, if drop >= min_drop { ">=" } else { "<" })));
        } else {
            notes.push(format!(
                "with {} the collective scores {:.3}",
                cs.strategy.as_str(),
                c.collective_accuracy
            ));
        }
    }
    // Regression against the last passing run recorded on the same hub.
    let http = kernal_client::tls::http_client(&tls, None).map_err(run_err)?;
    if let Ok(v) = get_json(
        &http,
        &format!("{hub_url}/v1/harness/runs?scenario={name}&limit=100"),
    )
    .await
    {
        let prev = v["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|r| r["passed"] == true)
            .and_then(|r| r["collective_accuracy"].as_f64());
        if let Some(prev) = prev {
            let floor = prev - p.regression_tolerance;
            criteria.push(crit(
                "regression",
                acc >= floor,
                Some(acc),
                Some(floor),
                format!(
                    "collective {acc:.3} vs last passing run {prev:.3} (tolerance {:.3})",
                    p.regression_tolerance
                ),
            ));
        } else {
            notes.push(
                "no earlier passing run of this scenario on this hub: regression check skipped"
                    .into(),
            );
        }
    }
    if let Some(max) = p.max_attack_cost {
        criteria.extend(poisoning::criteria(&attacks, max));
    }
    let passed = criteria.iter().all(|c| c.passed);
    let finished_at = kernal_hub::db::now();
    let summary = json!({
        "collective_accuracy": acc,
        "final_version": run.final_version,
        "seconds": run.seconds,
        "solo": solo,
        "compare_accuracy": compare.as_ref().map(|c| c.collective_accuracy),
        "failed": criteria.iter().filter(|c| !c.passed).map(|c| c.name.clone()).collect::<Vec<_>>(),
    });
    let mut report = Report {
        scenario: name.clone(),
        description: sc.description.clone(),
        seed,
        passed,
        hub: hub_url.clone(),
        started_at,
        finished_at,
        summary,
        criteria,
        run,
        solo,
        compare,
        attacks,
        kernel: None,
        recorded_run_id: None,
        notes,
    };
    if let Some(dir) = &args.keep_weights {
        let mut files = vec![("collective".to_string(), report.run.checkpoint.clone())];
        for t in &sc.trainers {
            if let Some(w) = t.specialty.as_ref().and_then(|s| solo_weights.get(s)) {
                let b = spec.layout().encode(w, None).map_err(run_err)?;
                files.push((format!("solo-{}", t.name), b));
            }
        }
        files.extend(central_kept.map(|b| ("centralised".to_string(), b)));
        for f in keep::write_all(dir, &files)? {
            report.notes.push(format!("kept {f}"));
        }
    }
    record_run(&http, &hub_url, token.as_deref(), &mut report).await;
    if let Some(mut h) = own {
        h.stop();
    }
    Ok(report)
}

/// The CLI: prints the table, writes the report, returns the exit code
/// (0 pass, 1 a criterion failed, 2 scenario or run error).
pub fn run_cli(args: HarnessArgs) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kernal harness: {e}");
            return 2;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(report) => {
            print!("{}", render(&report));
            if let Some(path) = &args.report {
                let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("kernal harness: cannot write {}: {e}", path.display());
                    return 2;
                }
            }
            if report.passed {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("kernal harness: {e}");
            2
        }
    }
}

/// `kernal harness --list`.
pub fn list_cli() -> i32 {
    for (n, d) in scenario::list() {
        println!("{n:<16} {d}");
    }
    0
}
