//! What a run leaves on the hub: the ledger check (every acknowledged update
//! stored once, none applied twice) and the run's record
//! (`POST /v1/harness/runs`). Shared by every kind of scenario.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::error::HarnessError;
use super::hub::get_json;
use super::report::Report;
use super::scenario::Scenario;
use kernal_client::connection::Summary;

/// Every acknowledged update must be in the ledger, once, and no update may
/// be folded into two versions.
pub(super) async fn check_ledger(
    http: &reqwest::Client,
    hub_url: &str,
    model: &str,
    done: &HashMap<usize, Summary>,
    sc: &Scenario,
) -> Result<Vec<String>, HarnessError> {
    let mut problems = Vec::new();
    let mut ledger: HashMap<String, usize> = HashMap::new();
    for t in &sc.trainers {
        let rows = get_json(
            http,
            &format!(
                "{hub_url}/v1/updates?model={model}&trainer={}&limit=1000000",
                t.name
            ),
        )
        .await?;
        for u in rows["updates"].as_array().cloned().unwrap_or_default() {
            if u["status"] != "refused" {
                let id = format!(
                    "{}/{}",
                    u["trainer"].as_str().unwrap_or(""),
                    u["update_id"].as_str().unwrap_or("")
                );
                *ledger.entry(id).or_default() += 1;
            }
        }
    }
    for (i, s) in done {
        let name = &sc.trainers[*i].name;
        for id in &s.acked_ids {
            let key = format!("{name}/{id}");
            match ledger.get(&key) {
                None => problems.push(format!(
                    "acknowledged update {key} is missing from the ledger"
                )),
                Some(n) if *n > 1 => {
                    problems.push(format!("update {key} is in the ledger {n} times"))
                }
                _ => {}
            }
        }
    }
    let versions = get_json(
        http,
        &format!("{hub_url}/v1/models/{model}/versions?limit=100000"),
    )
    .await?;
    let mut applied: HashMap<String, u32> = HashMap::new();
    for v in versions["versions"].as_array().cloned().unwrap_or_default() {
        for id in v["metrics"]["applied_update_ids"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            *applied
                .entry(id.as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    let mut twice: Vec<_> = applied
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k.clone())
        .collect();
    twice.sort();
    for k in twice {
        problems.push(format!("update {k} was applied more than once"));
    }
    Ok(problems)
}

/// Records the run on the hub (needs its admin token); says in the report's
/// notes when it could not.
pub(super) async fn record_run(
    http: &reqwest::Client,
    hub_url: &str,
    token: Option<&str>,
    report: &mut Report,
) {
    if let Some(tok) = token {
        let body = json!({
            "scenario": report.scenario, "passed": report.passed,
            "collective_accuracy": report.run.collective_accuracy,
            "started_at": report.started_at, "finished_at": report.finished_at,
            "report": serde_json::to_value(&report).unwrap_or_default(),
        });
        match http
            .post(format!("{hub_url}/v1/harness/runs"))
            .bearer_auth(tok)
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                report.recorded_run_id =
                    r.json::<Value>().await.ok().and_then(|v| v["id"].as_i64());
            }
            Ok(r) => report.notes.push(format!(
                "could not record the run on the hub: {}",
                r.status()
            )),
            Err(e) => report
                .notes
                .push(format!("could not record the run on the hub: {e}")),
        }
    } else {
        report.notes.push("no admin token (--admin-token or KERNAL_ADMIN_TOKEN): the run was not recorded on the hub".into());
    }
}
