//! A classifier scenario end to end: the harness's own hub (or `--hub`),
//! the run, each specialist alone, the comparison and attack runs, the
//! criteria, the report, the kept checkpoints and the run's record.

use std::collections::BTreeMap;

use serde_json::json;

use super::args::HarnessArgs;
use super::dataset::{centralised_accuracy, prepare_dataset, Prepared};
use super::error::{run_err, HarnessError};
use super::hub::start_own_hub;
use super::keep;
use super::kernel;
use super::learners::solo_accuracy;
use super::poisoning;
use super::progress;
use super::record::record_run;
use super::regression;
use super::report::Report;
use super::run_once::{run_once, RunCtx};
use super::scenario;
use super::scoring::{self, Measured};
use kernal_client::connection;
use kernal_core::model::MlpSpec;
use kernal_hub::config::Config;

/// Runs a scenario end to end. `Err` is a problem with the scenario or the
/// run (exit 2); a failed criterion is an `Ok` report with `passed: false`.
pub async fn run(args: &HarnessArgs) -> Result<Report, HarnessError> {
    let (sc, name, path) = scenario::load(&args.scenario)?;
    let seed = args.seed.unwrap_or(sc.seed);
    let tls = kernal_client::tls::client_config(args.ca.as_deref()).map_err(run_err)?;
    let started_at = kernal_hub::db::now();
    let mut notes = Vec::new();
    let bar = progress::bar(args.progress, sc.stop.versions);
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

    // What the criteria need besides the run: the centralised baseline of
    // a [dataset] run and the earlier runs recorded on the same hub.
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
    }
    let http = kernal_client::tls::http_client(&tls, None).map_err(run_err)?;
    let earlier = regression::earlier_runs(&http, &hub_url, &name).await;
    let criteria = scoring::criteria(
        &Measured {
            sc: &sc,
            cfg: &cfg,
            run: &run,
            solo: &solo,
            compare: compare.as_ref(),
            attacks: &attacks,
            earlier,
        },
        &mut notes,
    );
    let acc = run.collective_accuracy;
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
