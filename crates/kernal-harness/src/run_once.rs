//! One run of a classifier scenario against one hub: its trainers joining
//! and leaving on their plan, the hub killed and restarted if the scenario
//! says so, then the collective model scored and the ledger checked.
//! Attack cases and the comparison run it again on hubs of their own.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};

use super::attack::FaultyLearner;
use super::dataset::{ensure_dataset_model, hub_evaluation, Prepared};
use super::error::{run_err, HarnessError};
use super::hub::{get_json, wait_healthy};
use super::learners::make_learner;
use super::record::check_ledger;
use super::report::{RunOutcome, TrainerRow};
use super::scenario::Scenario;
use kernal_client::connection::{self, ClientOptions, Summary};
use kernal_core::data;
use kernal_core::model::MlpSpec;
use kernal_core::protocol::ModelLayout;
use kernal_hub::config::Config;
use kernal_hub::hub::child::ChildHub;

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

/// What one run of a scenario needs besides the scenario and its hub.
pub(crate) struct RunCtx<'a> {
    pub(crate) bar: &'a ProgressBar,
    pub(crate) label: String,
    pub(crate) tls: &'a std::sync::Arc<rustls::ClientConfig>,
    /// To create a `[dataset]` scenario's model and attach its evaluation set.
    pub(crate) admin_token: Option<&'a str>,
    pub(crate) prepared: Option<&'a Prepared>,
    /// The aggregation settings of a model the harness creates.
    pub(crate) aggregation: kernal_hub::aggregation::AggregationOverrides,
}

/// Runs the scenario once against `hub_url` and evaluates the final model.
pub(crate) async fn run_once(
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
        ensure_dataset_model(
            &http,
            hub_url,
            &model,
            d,
            ctx.admin_token,
            &ctx.aggregation,
            p,
        )
        .await?;
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
        Some(kernal_core::protocol::Normalisation::frozen(
            mean, std, 0, 0,
        )),
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
