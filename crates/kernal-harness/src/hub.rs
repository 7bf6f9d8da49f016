//! The hub a run talks to: the harness's own (a `kernal hub` child process
//! with the scenario's settings) and the few HTTP calls every kind of run
//! makes to it.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::error::{run_err, HarnessError};
use super::scenario::{CompareSpec, Scenario};
use kernal_hub::hub::child::ChildHub;

/// The harness's own hub: the scenario's `[hub]` settings (or the
/// comparison's strategy) applied to its model.
pub(crate) fn start_own_hub(
    sc: &Scenario,
    strategy_override: Option<&CompareSpec>,
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

pub(crate) async fn wait_healthy(
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

pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, HarnessError> {
    let r = http.get(url).send().await.map_err(run_err)?;
    if !r.status().is_success() {
        return Err(HarnessError::Run(format!("GET {url}: {}", r.status())));
    }
    r.json().await.map_err(run_err)
}
