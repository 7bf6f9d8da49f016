//! `kernal harness kernel`: the built-in `kernel` language model proves that
//! each specialist learns from all the others. The specialists train the
//! hub's model together; each one also trains alone with the same budget
//! (as many versions of as many steps, from the same initial weights); one
//! centralised run trains on the union of their code with the same total
//! budget (steps x windows). Every model is then scored in bits per byte on
//! each specialty's held-out code, on subsystems nobody trained on, and on
//! the scenario's `eval_source` directories. Its own file so the harness's
//! accuracy-scored runs (run.rs) stay as they are.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::args::HarnessArgs;
use super::attack::FaultyLearner;
use super::error::{run_err, HarnessError};
use super::hub::{get_json, start_own_hub, wait_healthy};
use super::keep;
use super::kernel_baseline::{
    baselines, score_all, texts_for, trainer_settings, Baselines, ScoredModel,
};
use super::kernel_report::criteria;
pub use super::kernel_report::{render_table, KernelModelRow, KernelOutcome};
pub use super::kernel_training::KernelTraining;
use super::record::{check_ledger, record_run};
use super::report::{Report, RunOutcome, TrainerRow};
use super::scenario::{RuleError, Scenario};
use kernal_client::connection::{self, ClientOptions, Summary};
use kernal_client::kernel::KernelLearner;
use kernal_core::kernel::{checkpoint, corpus, KernelSpec};

/// Whether the scenario trains the `kernel` language model (scored in bits
/// per byte) rather than a classifier (scored in accuracy).
pub fn is_kernel(sc: &Scenario) -> bool {
    sc.kernel.is_some() || sc.hub.model == "kernel"
}

/// The checks of a kernel scenario that the generic ones do not make.
pub fn validate(sc: &Scenario) -> Result<(), RuleError> {
    if !is_kernel(sc) {
        if !sc.eval_source.is_empty() {
            return Err(RuleError::key(
                "eval_source",
                "only a kernel scenario is scored on source code",
            ));
        }
        let p = &sc.pass;
        if p.max_bits_over_specialist.is_some()
            || p.min_bits_under_other_specialists.is_some()
            || p.max_unseen_bits_over_specialists.is_some()
        {
            return Err(RuleError::key(
                "pass",
                "the bits-per-byte criteria need a kernel scenario",
            ));
        }
        return Ok(());
    }
    let k = sc.kernel.clone().unwrap_or_default();
    if !(1..=100_000).contains(&k.steps) {
        return Err(RuleError::key(
            "kernel.steps",
            format!("{} is not 1 to 100000", k.steps),
        ));
    }
    if !(1..=4096).contains(&k.batch) {
        return Err(RuleError::key(
            "kernel.batch",
            format!("{} is not 1 to 4096", k.batch),
        ));
    }
    if !(k.lr.is_finite() && k.lr > 0.0 && k.lr <= 1.0) {
        return Err(RuleError::key(
            "kernel.lr",
            format!("{} is not above 0 and at most 1", k.lr),
        ));
    }
    if !(1..=1_000_000).contains(&k.eval_windows) {
        return Err(RuleError::key(
            "kernel.eval_windows",
            format!("{} is not 1 to 1000000", k.eval_windows),
        ));
    }
    if sc.dataset.is_some() || sc.restart.is_some() || sc.compare.is_some() {
        return Err(RuleError::Scenario(
            "a kernel scenario has no [dataset], [restart] or [compare] (its baselines are the specialists alone and the centralised run)",
        ));
    }
    if !sc.attacks.is_empty() || sc.random_churn {
        return Err(RuleError::Scenario(
            "a kernel scenario has no [[attacks]] and no random_churn",
        ));
    }
    let p = &sc.pass;
    if p.min_accuracy.is_some()
        || p.min_specialty_accuracy.is_some()
        || p.max_solo_accuracy.is_some()
        || p.min_gain_over_solo.is_some()
    {
        return Err(RuleError::key("pass", "a kernel scenario is scored in bits per byte: use max_bits_over_specialist, min_bits_under_other_specialists, max_unseen_bits_over_specialists"));
    }
    for (key, v) in [
        ("pass.max_bits_over_specialist", p.max_bits_over_specialist),
        (
            "pass.min_bits_under_other_specialists",
            p.min_bits_under_other_specialists,
        ),
        (
            "pass.max_unseen_bits_over_specialists",
            p.max_unseen_bits_over_specialists,
        ),
    ] {
        if let Some(x) = v {
            if !(x.is_finite() && (-8.0..=8.0).contains(&x)) {
                return Err(RuleError::key(
                    key,
                    format!("{x} is not between -8 and 8 bits per byte"),
                ));
            }
        }
    }
    for (i, t) in sc.trainers.iter().enumerate() {
        if t.data.is_some() || t.attack.is_some() || t.claim_examples.is_some() {
            return Err(RuleError::key(
                format!("trainers[{i}]"),
                "a kernel trainer takes its code by `specialty` (no data, attack or claim_examples)",
            ));
        }
        if t.join_at_version.is_some() || t.leave_at_version.is_some() {
            return Err(RuleError::key(
                format!("trainers[{i}]"),
                "kernel trainers train every version (no join or leave)",
            ));
        }
        if let Some(lr) = t.lr {
            if !(lr.is_finite() && lr > 0.0 && lr <= 1.0) {
                return Err(RuleError::key(
                    format!("trainers[{i}].lr"),
                    format!("{lr} is not above 0 and at most 1"),
                ));
            }
        }
    }
    Ok(())
}

/// CPU seconds (user + system) of this process so far, every thread.
fn own_cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer it is given.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } == 0;
    if !ok {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let u = unsafe { u.assume_init() };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// The held-out sets every model is scored on: each trainer's built-in
/// specialty, the unseen subsystems, then the scenario's `eval_source`.
fn held_out_sets(
    sc: &Scenario,
    scenario_path: Option<&Path>,
) -> Result<Vec<(String, Vec<u8>)>, HarnessError> {
    let mut sets: Vec<(String, Vec<u8>)> = Vec::new();
    for t in &sc.trainers {
        let s = t.specialty.as_deref().unwrap_or_default();
        if corpus::is_builtin_specialty(s) && !sets.iter().any(|(n, _)| n == s) {
            sets.push((s.to_string(), corpus::heldout_text(s).map_err(run_err)?));
        }
    }
    sets.push((
        corpus::UNSEEN.to_string(),
        corpus::heldout_text(corpus::UNSEEN).map_err(run_err)?,
    ));
    let base = scenario_path.and_then(Path::parent);
    let exts = [".c".to_string(), ".h".to_string()];
    for given in &sc.eval_source {
        let p = match base {
            Some(dir) if given.is_relative() => dir.join(given),
            _ => given.clone(),
        };
        let files = corpus::source_files(std::slice::from_ref(&p), &exts)
            .map_err(|e| HarnessError::Run(format!("eval_source `{}`: {e}", given.display())))?;
        let text: Vec<u8> = files.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        if text.len() < 2 {
            return Err(HarnessError::Run(format!(
                "eval_source `{}`: no .c or .h code there",
                given.display()
            )));
        }
        sets.push((format!("eval_source:{}", given.display()), text));
    }
    Ok(sets)
}

/// What the collective run left: the final checkpoint and each trainer's
/// summary.
struct Collective {
    version: u64,
    bytes: Vec<u8>,
    weights: Vec<f32>,
    done: HashMap<usize, Summary>,
    seconds: f64,
    timed_out: bool,
}

/// The specialists train the hub's model together for `stop.versions`
/// versions; returns the checkpoint of exactly that version.
async fn run_collective(
    sc: &Scenario,
    k: &KernelTraining,
    seed: u64,
    hub_url: &str,
    ctx: &Ctx<'_>,
) -> Result<Collective, HarnessError> {
    let http = &ctx.http;
    let model = &sc.hub.model;
    let m = get_json(http, &format!("{hub_url}/v1/models/{model}")).await?;
    let layout = kernal_core::protocol::ModelLayout {
        tensors: serde_json::from_value(m["tensors"].clone()).map_err(run_err)?,
    };
    let spec = KernelSpec::from_layout(&layout).ok_or_else(|| {
        HarnessError::Run(format!("model `{model}` is not a kernel language model"))
    })?;
    let deadline = Instant::now() + Duration::from_secs(sc.stop.timeout_secs);
    let mut m = m;
    while m["waiting"]["buffered"].as_u64().unwrap_or(0) > 0 {
        if Instant::now() > deadline {
            return Err(HarnessError::Run(format!(
                "model `{model}` still has buffered updates from before the run"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = get_json(http, &format!("{hub_url}/v1/models/{model}")).await?;
    }
    let start = m["version"].as_u64().unwrap_or(0);
    let target = start + sc.stop.versions;
    let mut running = Vec::new();
    for (i, t) in sc.trainers.iter().enumerate() {
        let learner = KernelLearner::new(spec, texts_for(t)?, trainer_settings(k, t, spec, seed))
            .map_err(HarnessError::Run)?;
        let learner = FaultyLearner::new(learner, t.behaviour);
        let mut opts = ClientOptions::new(
            hub_url,
            &t.name,
            t.specialty.as_deref().unwrap_or("custom"),
            &format!("harness-token-{}", t.name),
        );
        opts.model = model.clone();
        opts.tls = Some(ctx.tls.clone());
        opts.compression = t.compression;
        opts.max_backoff = Duration::from_secs(2);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(connection::run(opts, learner, |_| {}, async move {
            let _ = rx.await;
        }));
        running.push((i, tx, task));
    }
    let started = Instant::now();
    let (mut version, mut timed_out) = (start, false);
    ctx.bar.set_length(sc.stop.versions);
    loop {
        if let Ok(m) = get_json(http, &format!("{hub_url}/v1/models/{model}")).await {
            version = m["version"].as_u64().unwrap_or(version);
            let bpb = m["last_metrics"]["eval"]["bits_per_byte"].as_f64();
            ctx.bar.set_position(version.saturating_sub(start));
            ctx.bar.set_message(format!(
                "{}: version {version}, hub's score {} bits per byte, {:.0} s",
                ctx.label,
                bpb.map(|b| format!("{b:.3}")).unwrap_or_else(|| "-".into()),
                started.elapsed().as_secs_f64()
            ));
        }
        if version >= target {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut done = HashMap::new();
    for (i, tx, task) in running {
        let _ = tx.send(());
        let s = match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(Ok(s))) => s,
            _ => Summary::default(),
        };
        done.insert(i, s);
    }
    let at = version.min(target);
    let url = format!("{hub_url}/v1/models/{model}/versions/{at}/weights");
    let r = http.get(&url).send().await.map_err(run_err)?;
    if !r.status().is_success() {
        return Err(HarnessError::Run(format!("GET {url}: {}", r.status())));
    }
    let bytes = r.bytes().await.map_err(run_err)?.to_vec();
    let (got, weights) = checkpoint::load(&bytes).map_err(run_err)?;
    if got != spec {
        return Err(HarnessError::Run(format!(
            "version {at} of `{model}` is {got:?}, not {spec:?}"
        )));
    }
    Ok(Collective {
        version: at,
        bytes,
        weights,
        done,
        seconds,
        timed_out,
    })
}

/// What the kernel run needs from the harness around it.
struct Ctx<'a> {
    bar: &'a indicatif::ProgressBar,
    label: String,
    tls: std::sync::Arc<rustls::ClientConfig>,
    http: reqwest::Client,
}

/// Runs a kernel scenario end to end (see the module's doc). `Err` is a
/// problem with the scenario or the run (exit 2).
pub async fn run(
    args: &HarnessArgs,
    sc: Scenario,
    name: String,
    path: Option<PathBuf>,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Result<Report, HarnessError> {
    let t0 = Instant::now();
    let cpu0 = own_cpu_seconds();
    let k = sc.kernel.clone().unwrap_or_default();
    let started_at = kernal_hub::db::now();
    let sets = held_out_sets(&sc, path.as_deref())?;
    let tls = kernal_client::tls::client_config(args.ca.as_deref()).map_err(run_err)?;
    let http =
        kernal_client::tls::http_client(&tls, Some(Duration::from_secs(60))).map_err(run_err)?;
    let mut notes = Vec::new();
    let mut own = None;
    let (hub_url, token) = match &args.hub {
        Some(u) => {
            notes.push("ran against an existing hub: the scenario's [hub] settings were not applied; the hub's own are in force".to_string());
            (connection::http_url(u), args.admin_token.clone())
        }
        None => {
            let h = start_own_hub(&sc, None)?;
            let (u, t) = (h.url(), h.token.clone());
            own = Some(h);
            (u, Some(t))
        }
    };
    wait_healthy(&http, &hub_url, Duration::from_secs(60)).await?;
    let ctx = Ctx {
        bar,
        label: name.clone(),
        tls: tls.clone(),
        http: http.clone(),
    };
    let coll = match run_collective(&sc, &k, seed, &hub_url, &ctx).await {
        Ok(c) => c,
        Err(e) => {
            let tail = own.as_ref().map(|h| h.log_tail(5)).unwrap_or_default();
            return Err(HarnessError::Run(if tail.is_empty() {
                e.to_string()
            } else {
                format!("{e} (hub log: {tail})")
            }));
        }
    };
    let ledger_problems = check_ledger(&http, &hub_url, &sc.hub.model, &coll.done, &sc).await?;
    let (spec, _) = checkpoint::load(&coll.bytes).map_err(run_err)?;

    // The baselines, then every model on every held-out set.
    bar.set_message(format!(
        "{name}: each specialist alone and the centralised run, {} versions of {} steps",
        sc.stop.versions, k.steps
    ));
    let b0 = Instant::now();
    let base: Baselines = {
        let (sc2, k2) = (sc.clone(), k.clone());
        tokio::task::spawn_blocking(move || baselines(&sc2, &k2, spec, seed))
            .await
            .map_err(run_err)??
    };
    bar.set_message(format!("{name}: scoring every model on the held-out code"));
    let mut models = vec![ScoredModel {
        row: KernelModelRow {
            model: "collective".into(),
            trainer: None,
            specialty: None,
            bits_per_byte: BTreeMap::new(),
        },
        weights: coll.weights.clone(),
    }];
    models.extend(base.models);
    let (models, set_bytes) = {
        let sets = sets.clone();
        let windows = k.eval_windows;
        tokio::task::spawn_blocking(move || score_all(spec, models, &sets, windows))
            .await
            .map_err(run_err)??
    };
    let baseline_seconds = b0.elapsed().as_secs_f64();

    // --keep-weights: the checkpoints, scored above on the same sets.
    let mut kept = Vec::new();
    if let Some(dir) = &args.keep_weights {
        let files: Vec<(String, Vec<u8>)> =
            std::iter::once(Ok(("collective".to_string(), coll.bytes.clone())))
                .chain(models.iter().skip(1).map(|m| {
                    spec.layout()
                        .encode(&m.weights, None)
                        .map(|b| (m.row.model.clone(), b))
                        .map_err(run_err)
                }))
                .collect::<Result<_, HarnessError>>()?;
        kept = keep::write_all(dir, &files)?;
    }

    let rows: Vec<KernelModelRow> = models.into_iter().map(|m| m.row).collect();
    let criteria = criteria(&sc, &rows, coll.timed_out, &ledger_problems, coll.version);
    let passed = criteria.iter().all(|c| c.passed);
    let hub_cpu = own.as_ref().and_then(|h| h.usage().1);
    let outcome = KernelOutcome {
        parameters: spec.layout().num_params() as u64,
        versions: coll.version,
        steps_per_version: k.steps,
        batch: k.batch,
        lr: k.lr,
        collective_seconds: coll.seconds,
        seconds_per_version: coll.seconds / sc.stop.versions.max(1) as f64,
        baseline_seconds,
        total_seconds: t0.elapsed().as_secs_f64(),
        harness_cpu_seconds: own_cpu_seconds() - cpu0,
        hub_cpu_seconds: hub_cpu,
        sets: set_bytes,
        models: rows,
        kept,
    };
    let trainers = sc
        .trainers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let s = coll.done.get(&i).cloned().unwrap_or_default();
            TrainerRow {
                name: t.name.clone(),
                specialty: t.specialty.clone().unwrap_or_default(),
                behaviour: t.behaviour,
                solo_accuracy: None,
                collective_specialty_accuracy: None,
                collective_accuracy: f64::NAN,
                versions_trained: s.versions_trained,
                sent: s.sent,
                acknowledged: s.acked,
                refused: s.refused,
                refusal_codes: s.refusal_codes,
            }
        })
        .collect();
    notes.push("a kernel scenario is scored in bits per byte: the accuracy fields are empty and no regression check against earlier runs is made".into());
    let collective_bpb = outcome
        .models
        .first()
        .map(|m| m.bits_per_byte.clone())
        .unwrap_or_default();
    let summary = json!({
        "collective_bits_per_byte": collective_bpb,
        "final_version": coll.version,
        "seconds": outcome.total_seconds,
        "failed": criteria.iter().filter(|c| !c.passed).map(|c| c.name.clone()).collect::<Vec<_>>(),
    });
    let mut report = Report {
        scenario: name.clone(),
        description: sc.description.clone(),
        seed,
        passed,
        hub: hub_url.clone(),
        started_at,
        finished_at: kernal_hub::db::now(),
        summary,
        criteria,
        run: RunOutcome {
            strategy: sc.hub.aggregation.strategy.map(|s| s.as_str().to_string()),
            final_version: coll.version,
            collective_accuracy: f64::NAN,
            specialty_accuracy: BTreeMap::new(),
            trainers,
            seconds: coll.seconds,
            restarted_at: None,
            ledger_problems,
            timed_out: coll.timed_out,
            centralised_accuracy: None,
            checkpoint: Vec::new(),
        },
        solo: BTreeMap::new(),
        compare: None,
        attacks: Vec::new(),
        kernel: Some(outcome),
        recorded_run_id: None,
        notes,
    };
    record_run(&http, &hub_url, token.as_deref(), &mut report).await;
    if let Some(mut h) = own {
        h.stop();
    }
    Ok(report)
}
