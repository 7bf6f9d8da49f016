//! Attack cases (`[[attacks]]`): the scenario run again with lying members
//! added, each on a fresh hub of its own, against the honest run of the
//! same settings. A defence that costs the honest team its accuracy is not
//! a win, so both figures are reported and held to `max_attack_cost`.

use std::collections::HashMap;

use super::criterion::{crit, Criterion};
use super::error::HarnessError;
use super::flood::{self, Flood};
use super::hub::start_own_hub;
/// Kept here too: it was this module's before the report took it.
pub use super::report::AttackOutcome;
use super::run_once::{run_once, RunCtx};
use super::scenario::{AttackCase, Scenario};
use kernal_hub::aggregation::AggregationOverrides;

/// Runs every attack case of `sc` (and the honest runs they are measured
/// against; `main` is the honest run of the scenario's own settings).
pub(super) async fn run_attacks(
    sc: &Scenario,
    seed: u64,
    ctx: &RunCtx<'_>,
    main_accuracy: f64,
) -> Result<Vec<AttackOutcome>, HarnessError> {
    let mut honest: HashMap<String, f64> = HashMap::new();
    honest.insert(key(&AggregationOverrides::default()), main_accuracy);
    let mut out = Vec::new();
    for case in &sc.attacks {
        let aggregation = sc.hub.aggregation.then(&case.hub);
        let strategy = aggregation
            .strategy
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "the model's".into());
        let k = key(&case.hub);
        let base = match honest.get(&k) {
            Some(a) => *a,
            None => {
                let label = format!("{} honest ({strategy})", ctx.label);
                let a = run_case(sc, seed, ctx, &aggregation, None, label).await?.0;
                honest.insert(k, a);
                a
            }
        };
        let label = format!("{} attack {}", ctx.label, case.name);
        let (attacked, version, refusals) =
            run_case(sc, seed, ctx, &aggregation, Some(case), label).await?;
        out.push(AttackOutcome {
            name: case.name.clone(),
            description: case.description.clone(),
            strategy,
            honest_accuracy: base,
            attacked_accuracy: attacked,
            cost: base - attacked,
            final_version: version,
            attacker_refusals: refusals,
        });
    }
    Ok(out)
}

fn key(o: &AggregationOverrides) -> String {
    serde_json::to_string(o).unwrap_or_default()
}

/// The scenario on a fresh hub with `aggregation`, with the case's
/// attackers added when given: (accuracy, final version, attacker refusals).
async fn run_case(
    sc: &Scenario,
    seed: u64,
    ctx: &RunCtx<'_>,
    aggregation: &AggregationOverrides,
    case: Option<&AttackCase>,
    label: String,
) -> Result<(f64, u64, Vec<String>), HarnessError> {
    let mut scenario = sc.clone();
    scenario.hub.aggregation = aggregation.clone();
    scenario.attacks.clear();
    scenario.compare = None;
    // Flooding members run beside the scenario's trainers (see `flood`).
    let (flooders, attackers): (Vec<_>, Vec<_>) = case
        .map(|c| c.attackers.clone())
        .unwrap_or_default()
        .into_iter()
        .partition(|a| a.updates_per_version.is_some_and(|n| n > 1));
    scenario.trainers.extend(attackers);
    let mut hub = start_own_hub(&scenario, None)?;
    let url = hub.url();
    let floods: Vec<_> = flooders
        .iter()
        .map(|a| {
            let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let f = Flood {
                sent: sent.clone(),
                name: a.name.clone(),
                specialty: a.specialty.clone().unwrap_or_else(|| "networking".into()),
                model: scenario.hub.model.clone(),
                updates_per_version: a.updates_per_version.unwrap_or(1),
                norm: a.attack_norm,
                claim: a.claim_examples.unwrap_or(1),
            };
            let url = url.clone();
            let task = tokio::spawn(async move { flood::run(&url, f).await });
            (a.name.clone(), sent, task)
        })
        .collect();
    let token = hub.token.clone();
    let case_ctx = RunCtx {
        bar: ctx.bar,
        label,
        tls: ctx.tls,
        admin_token: Some(token.as_str()),
        prepared: ctx.prepared,
        aggregation: aggregation.clone(),
    };
    let run = run_once(&scenario, seed, &url, Some(&mut hub), &case_ctx).await;
    for (_, _, task) in &floods {
        task.abort();
    }
    hub.stop();
    let run = run?;
    let names: Vec<&str> = case
        .map(|c| c.attackers.iter().map(|a| a.name.as_str()).collect())
        .unwrap_or_default();
    let mut refusals: Vec<String> = run
        .trainers
        .iter()
        .filter(|t| names.contains(&t.name.as_str()))
        .flat_map(|t| {
            t.refusal_codes
                .iter()
                .map(|(c, n)| format!("{}: {c} x{n}", t.name))
        })
        .collect();
    // A flooding member's sends, so the report shows it did flood.
    for (name, sent, _) in &floods {
        refusals.push(format!(
            "{name}: sent {} updates",
            sent.load(std::sync::atomic::Ordering::Relaxed)
        ));
    }
    Ok((run.collective_accuracy, run.final_version, refusals))
}

/// One criterion per attack: its cost within `max`.
pub fn criteria(attacks: &[AttackOutcome], max: f64) -> Vec<Criterion> {
    attacks
        .iter()
        .map(|a| {
            crit(
                &format!("max_attack_cost[{}]", a.name),
                a.cost <= max,
                Some(a.cost),
                Some(max),
                format!(
                    "{} ({}): {:.3} with the attack, {:.3} honest: costs {:.3} {} {max:.2}",
                    a.name,
                    a.strategy,
                    a.attacked_accuracy,
                    a.honest_accuracy,
                    a.cost,
                    if a.cost <= max { "<=" } else { ">" }
                ),
            )
        })
        .collect()
}
