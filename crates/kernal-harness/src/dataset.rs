//! `[dataset]` scenarios: the shipped or given data split into the
//! trainers' shards, the hub model and evaluation set made for it, the hub's
//! score, and the centralised baseline trained on the union of the shards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::error::{run_err, HarnessError};
use super::hub::get_json;
use super::scenario::{DatasetSpec, Scenario, TrainerSpec};
use kernal_core::data;
use kernal_core::model::{MlpSpec, TrainSettings};
use kernal_core::protocol::ModelLayout;
use kernal_hub::aggregation::AggregationOverrides;

/// A `[dataset]` scenario's data: raw features, split once.
pub struct Prepared {
    pub split: data::Split,
    pub spec: MlpSpec,
}

/// Loads and splits a scenario's data set (shipped by name, or a CSV path
/// relative to the scenario file).
pub(crate) fn prepare_dataset(
    d: &DatasetSpec,
    scenario_path: Option<&std::path::Path>,
) -> Result<Prepared, HarnessError> {
    let text = match data::BUILTIN_CSV.iter().find(|(n, _)| *n == d.csv) {
        Some((_, t)) => t.to_string(),
        None => {
            let p = scenario_path
                .and_then(|p| p.parent())
                .map(|dir| dir.join(&d.csv))
                .unwrap_or_else(|| PathBuf::from(&d.csv));
            std::fs::read_to_string(&p).map_err(|e| {
                HarnessError::Run(format!(
                    "dataset.csv: `{}` is neither a shipped data set ({}) nor a readable file: {e}",
                    d.csv,
                    data::BUILTIN_CSV
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?
        }
    };
    let ds = data::parse_dataset(&text, &d.csv).map_err(run_err)?;
    let split = data::stratified_split(&ds, d.test_fraction, data::SPLIT_SEED);
    Ok(Prepared {
        spec: MlpSpec {
            inputs: ds.dim,
            hidden: d.hidden,
            classes: ds.classes.max(2),
        },
        split,
    })
}

/// The rows a trainer holds: its classes, then its part of them.
pub(crate) fn shard(ds: &data::Dataset, t: &TrainerSpec) -> data::Dataset {
    let d = match &t.classes {
        Some(c) => ds.with_classes(c),
        None => ds.clone(),
    };
    match t.part {
        Some([k, n]) => {
            let idx: Vec<usize> = (0..d.len()).filter(|i| i % n == k - 1).collect();
            d.subset(&idx)
        }
        None => d,
    }
}

/// Creates a `[dataset]` scenario's model if the hub lacks it and attaches
/// the held-out rows as its evaluation set.
pub(crate) async fn ensure_dataset_model(
    http: &reqwest::Client,
    hub_url: &str,
    model: &str,
    d: &DatasetSpec,
    admin_token: Option<&str>,
    aggregation: &AggregationOverrides,
    p: &Prepared,
) -> Result<(), HarnessError> {
    let token = admin_token.ok_or_else(|| {
        HarnessError::Run(
            "a [dataset] scenario creates its model and evaluation set: give --admin-token".into(),
        )
    })?;
    let exists = http
        .get(format!("{hub_url}/v1/models/{model}"))
        .send()
        .await
        .map_err(run_err)?
        .status()
        .is_success();
    if !exists {
        let body = json!({
            "name": model, "inputs": p.spec.inputs, "hidden": p.spec.hidden,
            "classes": p.spec.classes, "normalisation": d.normalisation,
            "aggregation": aggregation,
        });
        let r = http
            .post(format!("{hub_url}/v1/models"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(run_err)?;
        if !r.status().is_success() {
            let t = r.text().await.unwrap_or_default();
            return Err(HarnessError::Run(format!("creating model `{model}`: {t}")));
        }
    }
    // Without normalisation the hub scores the rows as given, and each
    // trainer scales its own file by its own statistics: the held-out file
    // is scaled the same way, as `--data` would scale it.
    let mut test = p.split.test.clone();
    if d.normalisation == "off" {
        data::standardise(&mut test.features, test.dim);
    }
    let r = http
        .put(format!("{hub_url}/v1/models/{model}/evalset"))
        .bearer_auth(token)
        .header("content-type", "text/csv")
        .body(test.to_csv())
        .send()
        .await
        .map_err(run_err)?;
    if !r.status().is_success() {
        let t = r.text().await.unwrap_or_default();
        return Err(HarnessError::Run(format!(
            "attaching the evaluation set of `{model}`: {t}"
        )));
    }
    Ok(())
}

/// The hub's evaluation of `version` on the model's evaluation set (it is
/// computed after the version is committed, so it may take a moment).
pub(crate) async fn hub_evaluation(
    http: &reqwest::Client,
    hub_url: &str,
    model: &str,
    version: u64,
) -> Result<f64, HarnessError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get_json(
            http,
            &format!("{hub_url}/v1/models/{model}/versions/{version}"),
        )
        .await?;
        if v["metrics"]["eval"]["dataset"] == "evalset" {
            if let Some(a) = v["metrics"]["eval"]["accuracy"].as_f64() {
                return Ok(a);
            }
        }
        if Instant::now() > deadline {
            return Err(HarnessError::Run(format!(
                "the hub did not evaluate version {version} of `{model}` on its evaluation set within 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A centralised model of the same network on the union of the trainers'
/// rows, inputs scaled with the union's statistics, trained for as many
/// epochs as each trainer ran in the collective run and at least as many
/// steps (`min_steps` per round).
pub(crate) fn centralised_accuracy(
    p: &Prepared,
    sc: &Scenario,
    rounds: u64,
    seed: u64,
) -> Result<(f64, Vec<u8>), HarnessError> {
    let mut union = data::Dataset {
        features: Vec::new(),
        labels: Vec::new(),
        dim: p.split.train.dim,
        classes: p.split.train.classes,
    };
    for t in sc.trainers.iter().filter(|t| t.is_honest()) {
        let s = shard(&p.split.train, t);
        union.features.extend_from_slice(&s.features);
        union.labels.extend_from_slice(&s.labels);
    }
    let mut pool = kernal_core::protocol::StatsPool::new(union.dim);
    pool.add(
        "union",
        kernal_core::protocol::FeatureStats::of(&union.features, union.dim),
    );
    let mut test = p.split.test.clone();
    let norm = pool.freeze();
    if let Some(n) = &norm {
        n.apply(&mut union.features);
        n.apply(&mut test.features);
    }
    let settings = TrainSettings {
        epochs: (rounds as usize)
            .saturating_mul(sc.training.local_epochs)
            .max(1),
        lr: sc.training.lr,
        batch_size: sc.training.batch_size,
        seed,
    };
    let (w, _) = p
        .spec
        .train_min_steps(
            &p.spec.init_weights(42),
            &union,
            &settings,
            (rounds as usize).saturating_mul(sc.training.min_steps),
        )
        .map_err(run_err)?;
    let accuracy = p.spec.evaluate(&w, &test).map_err(run_err)?.accuracy;
    Ok((accuracy, checkpoint(p.spec, &w, norm.as_ref())?))
}

/// A checkpoint as the hub serves one: the network's tensors and, for
/// inputs scaled by statistics, `normalisation.mean` and `.std` after them.
fn checkpoint(
    spec: MlpSpec,
    w: &[f32],
    norm: Option<&kernal_core::protocol::Normalisation>,
) -> Result<Vec<u8>, HarnessError> {
    let layout = spec.layout();
    let (Some(n), Some(mean), Some(std)) = (
        norm,
        norm.and_then(|n| n.mean.clone()),
        norm.and_then(|n| n.std.clone()),
    ) else {
        return layout.encode(w, None).map_err(run_err);
    };
    let mut tensors: Vec<(String, Vec<usize>)> = layout
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    tensors.push(("normalisation.mean".into(), vec![n.features]));
    tensors.push(("normalisation.std".into(), vec![n.features]));
    let flat: Vec<f32> = w.iter().chain(&mean).chain(&std).copied().collect();
    ModelLayout::new(tensors)
        .encode(&flat, None)
        .map_err(run_err)
}
