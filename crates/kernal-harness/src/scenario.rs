//! Scenario files: `config/scenarios/NAME.toml`. Every key is documented in
//! the README ("Writing a scenario"); unknown keys and bad values are errors
//! that name the file, the key and the problem.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::kernel_training::KernelTraining;
use crate::attack::Behaviour;
use kernal_client::connection::Compression;
use kernal_hub::aggregation::{AggregationOverrides, AggregationSettings, Strategy};

/// The scenarios shipped with kernal, embedded so `kernal harness NAME` works
/// from any directory. A file in `config/scenarios/` of the working directory
/// with the same name takes precedence.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "multi_spec",
        include_str!("../../../config/scenarios/multi_spec.toml"),
    ),
    (
        "churn",
        include_str!("../../../config/scenarios/churn.toml"),
    ),
    (
        "byzantine",
        include_str!("../../../config/scenarios/byzantine.toml"),
    ),
    (
        "restart",
        include_str!("../../../config/scenarios/restart.toml"),
    ),
    ("wine", include_str!("../../../config/scenarios/wine.toml")),
    (
        "breast_cancer",
        include_str!("../../../config/scenarios/breast_cancer.toml"),
    ),
    ("iris", include_str!("../../../config/scenarios/iris.toml")),
    (
        "penguins",
        include_str!("../../../config/scenarios/penguins.toml"),
    ),
    (
        "crabs",
        include_str!("../../../config/scenarios/crabs.toml"),
    ),
    (
        "kernel",
        include_str!("../../../config/scenarios/kernel.toml"),
    ),
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub hub: HubSettings,
    #[serde(default)]
    pub training: TrainingDefaults,
    pub trainers: Vec<TrainerSpec>,
    /// Assign random join/leave versions (from the seed) to trainers that do
    /// not give their own.
    #[serde(default)]
    pub random_churn: bool,
    pub stop: StopCondition,
    #[serde(default)]
    pub pass: PassCriteria,
    #[serde(default)]
    pub restart: Option<RestartSpec>,
    #[serde(default)]
    pub compare: Option<CompareSpec>,
    /// Train on a tabular data set instead of the built-in digits.
    #[serde(default)]
    pub dataset: Option<DatasetSpec>,
    /// Lying members: each case runs the scenario again with them added
    /// (own hub only) and is held to `max_attack_cost`.
    #[serde(default)]
    pub attacks: Vec<AttackCase>,
    /// A kernel scenario's local training (`[kernel]`); `[hub] model =
    /// "kernel"` alone takes the trainer's defaults.
    #[serde(default)]
    pub kernel: Option<KernelTraining>,
    /// Extra held-out source directories (or files) every model of a kernel
    /// scenario is scored on: relative to the scenario file, or absolute.
    #[serde(default)]
    pub eval_source: Vec<PathBuf>,
}

/// One attack of a poisoning scenario.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttackCase {
    pub name: String,
    /// What it shows (in the report).
    #[serde(default)]
    pub description: String,
    /// Aggregation settings of this case and of the honest run it is
    /// measured against, over the scenario's `[hub]`.
    #[serde(default)]
    pub hub: AggregationOverrides,
    /// The members that attack, joining the scenario's trainers.
    pub attackers: Vec<TrainerSpec>,
}

/// A team's own data: one CSV split into training rows (shared out to the
/// trainers by class) and held-out rows (the hub's evaluation set).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// `wine` or `breast_cancer` (shipped in `data/`), or a CSV path
    /// relative to the scenario file (numeric features, integer label last).
    pub csv: String,
    /// Hidden units of the MLP (inputs and classes come from the data).
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Share of each class held out as the evaluation set.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// The model's input normalisation: `federated` or `off`.
    #[serde(default = "default_normalisation")]
    pub normalisation: String,
}

fn default_hidden() -> usize {
    32
}
fn default_test_fraction() -> f64 {
    0.2
}
fn default_normalisation() -> String {
    "federated".into()
}

fn default_seed() -> u64 {
    1
}

/// The run's model and its aggregation settings (own hub only): `model`,
/// then any aggregation key (`strategy`, `min_updates`, ...; see
/// [`AggregationSettings::KEYS`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HubSettings {
    pub model: String,
    #[serde(flatten)]
    pub aggregation: AggregationOverrides,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            model: default_model(),
            aggregation: AggregationOverrides::default(),
        }
    }
}

impl<'de> Deserialize<'de> for HubSettings {
    /// Strict: an unknown key is an error that names it (serde cannot deny
    /// unknown fields through `flatten`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let model = match map.remove("model") {
            Some(serde_json::Value::String(m)) => m,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "model: expected a model name, got {other}"
                )))
            }
            None => default_model(),
        };
        if let Some(k) = map
            .keys()
            .find(|k| !AggregationSettings::KEYS.contains(&k.as_str()))
        {
            return Err(D::Error::custom(format!(
                "unknown key `{k}` in [hub] (known: model, {})",
                AggregationSettings::KEYS.join(", ")
            )));
        }
        let aggregation = kernal_hub::config::from_map_naming_key(map).map_err(D::Error::custom)?;
        Ok(HubSettings { model, aggregation })
    }
}

fn default_model() -> String {
    "digits".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainingDefaults {
    #[serde(default = "default_epochs")]
    pub local_epochs: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Fewest mini-batch steps per version, past `local_epochs` on a small
    /// shard (the reference trainer's `--min-steps`; 0: epochs only).
    #[serde(default = "default_min_steps")]
    pub min_steps: usize,
}

impl Default for TrainingDefaults {
    fn default() -> Self {
        TrainingDefaults {
            local_epochs: default_epochs(),
            lr: default_lr(),
            batch_size: default_batch(),
            min_steps: default_min_steps(),
        }
    }
}

fn default_min_steps() -> usize {
    kernal_client::DEFAULT_MIN_STEPS
}

fn default_epochs() -> usize {
    2
}
fn default_lr() -> f64 {
    0.1
}
fn default_batch() -> usize {
    32
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainerSpec {
    pub name: String,
    #[serde(default)]
    pub specialty: Option<String>,
    /// A CSV file (relative to the scenario file) instead of a specialty slice.
    #[serde(default)]
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub behaviour: Behaviour,
    /// A lying member's attack (`rotate_labels`, `stats_outlier`), made by
    /// the harness around the honest learner.
    #[serde(default)]
    pub attack: Option<super::attack::Attack>,
    /// The L2 norm a `rotate_labels` delta is scaled to.
    #[serde(default)]
    pub attack_norm: Option<f32>,
    /// The num_examples this trainer claims instead of its real count.
    #[serde(default)]
    pub claim_examples: Option<u64>,
    /// A flooding member (attack cases only): sends this many distinct
    /// `rotate_labels` updates for every version, over its own WebSocket
    /// (`harness::flood`), instead of training.
    #[serde(default)]
    pub updates_per_version: Option<u32>,
    #[serde(default)]
    pub join_at_version: Option<u64>,
    #[serde(default)]
    pub leave_at_version: Option<u64>,
    #[serde(default)]
    pub local_epochs: Option<usize>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub compression: Compression,
    /// With a `[dataset]`: the classes whose training rows this trainer
    /// holds (all rows when absent).
    #[serde(default)]
    pub classes: Option<Vec<u32>>,
    /// With a `[dataset]`: `[k, n]` keeps the k-th (1-based) of n
    /// interleaved parts of those rows, so two trainers can split a class.
    #[serde(default)]
    pub part: Option<[usize; 2]>,
}

impl TrainerSpec {
    /// Whether the trainer sends what it learned and says what it has.
    pub fn is_honest(&self) -> bool {
        self.behaviour == Behaviour::Honest
            && self.attack.is_none()
            && self.claim_examples.is_none()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StopCondition {
    /// Stop when the model reaches this version.
    pub versions: u64,
    /// ...or when the hub's evaluation reaches this accuracy.
    #[serde(default)]
    pub accuracy: Option<f64>,
    /// ...or after this many seconds (the run then fails).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    600
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PassCriteria {
    /// Collective accuracy on the whole test set, at least.
    pub min_accuracy: Option<f64>,
    /// Collective accuracy on each specialty's own test slice, at least.
    pub min_specialty_accuracy: Option<f64>,
    /// Each specialist trained alone with the same budget scores at most this.
    pub max_solo_accuracy: Option<f64>,
    /// The collective beats every specialist alone by at least this much.
    pub min_gain_over_solo: Option<f64>,
    /// Every acknowledged update is in the ledger, applied at most once.
    #[serde(default = "yes")]
    pub no_lost_updates: bool,
    /// Every faulty trainer's updates were refused, or the collective still
    /// met `min_accuracy` (they were outvoted).
    #[serde(default = "yes")]
    pub faulty_refused_or_outvoted: bool,
    /// With a `[dataset]`: the collective scores at most this much below a
    /// centralised model of the same network trained on the union of the
    /// trainers' rows with the same budget.
    #[serde(default)]
    pub max_gap_to_centralised: Option<f64>,
    /// Fail when accuracy drops more than this below the last passing run of
    /// the same scenario recorded on the hub.
    #[serde(default = "default_tolerance")]
    pub regression_tolerance: f64,
    /// With `[[attacks]]`: each attack may cost the collective at most this
    /// much accuracy against the honest run of the same settings.
    #[serde(default)]
    pub max_attack_cost: Option<f64>,
    /// Kernel scenarios: on each specialty's held-out code the collective
    /// scores at most this many bits per byte above that specialty's
    /// specialist trained alone.
    #[serde(default)]
    pub max_bits_over_specialist: Option<f64>,
    /// ...and at least this many below every other specialist alone.
    #[serde(default)]
    pub min_bits_under_other_specialists: Option<f64>,
    /// ...and on code of subsystems nobody trained on, at most this many
    /// above any specialist alone (0: no worse).
    #[serde(default)]
    pub max_unseen_bits_over_specialists: Option<f64>,
}

fn yes() -> bool {
    true
}
fn default_tolerance() -> f64 {
    0.03
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// SIGKILL the hub when it reaches this version, then restart it on the
    /// same database.
    pub at_version: u64,
}

/// Run the same scenario again with other aggregation settings (own hub
/// only): `strategy` (required), any other aggregation key, and
/// `min_accuracy_drop`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompareSpec {
    pub strategy: Strategy,
    /// Settings of the comparison run, over the scenario's `[hub]`.
    #[serde(flatten)]
    pub aggregation: AggregationOverrides,
    /// Require the comparison run to score at least this much lower
    /// (shows that the scenario's own settings matter).
    pub min_accuracy_drop: Option<f64>,
}

impl<'de> Deserialize<'de> for CompareSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let drop = match map.remove("min_accuracy_drop") {
            None => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| {
                D::Error::custom(format!("min_accuracy_drop: expected a number, got {v}"))
            })?),
        };
        if let Some(k) = map
            .keys()
            .find(|k| !AggregationSettings::KEYS.contains(&k.as_str()))
        {
            return Err(D::Error::custom(format!(
                "unknown key `{k}` in [compare] (known: min_accuracy_drop, {})",
                AggregationSettings::KEYS.join(", ")
            )));
        }
        let aggregation: AggregationOverrides =
            kernal_hub::config::from_map_naming_key(map).map_err(D::Error::custom)?;
        let strategy = aggregation.strategy.ok_or_else(|| {
            D::Error::custom("strategy: [compare] needs the strategy to compare with")
        })?;
        Ok(CompareSpec {
            strategy,
            aggregation,
            min_accuracy_drop: drop,
        })
    }
}

/// Why a scenario breaks a rule beyond its shape (checked at load, so a bad
/// file is refused before any hub starts): the key at fault and what is
/// wrong with its value, or a rule about the scenario as a whole.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{key}: {problem}")]
    Key { key: String, problem: String },
    /// An aggregation setting of `[hub]` or `[compare]`, as the hub's own
    /// check names it.
    #[error("{section}.{problem}")]
    Aggregation {
        section: &'static str,
        problem: String,
    },
    #[error("{0}")]
    Scenario(&'static str),
}

impl RuleError {
    pub(crate) fn key(key: impl Into<String>, problem: impl Into<String>) -> Self {
        RuleError::Key {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub message: String,
}

impl Scenario {
    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError {
            file: file.to_string(),
            message: e.to_string().trim().replace('\n', " | "),
        })?;
        s.validate().map_err(|e| ScenarioError {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        Ok(s)
    }
}

/// Finds a scenario: `config/scenarios/NAME.toml` under the working
/// directory, else a shipped one. A path ending in `.toml` is read as is.
pub fn load(name: &str) -> Result<(Scenario, String, Option<PathBuf>), ScenarioError> {
    let direct = Path::new(name);
    let path = if name.ends_with(".toml") {
        Some(direct.to_path_buf())
    } else {
        let p = Path::new("config/scenarios").join(format!("{name}.toml"));
        p.exists().then_some(p)
    };
    if let Some(p) = path {
        let text = std::fs::read_to_string(&p).map_err(|e| ScenarioError {
            file: p.display().to_string(),
            message: e.to_string(),
        })?;
        let s = Scenario::parse(&text, &p.display().to_string())?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| name.to_string());
        return Ok((s, stem, Some(p)));
    }
    match BUILTIN.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => Ok((
            Scenario::parse(text, &format!("config/scenarios/{n}.toml"))?,
            n.to_string(),
            None,
        )),
        None => Err(ScenarioError {
            file: format!("config/scenarios/{name}.toml"),
            message: format!(
                "no such scenario (shipped: {})",
                BUILTIN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Names of the scenarios available here (files, then shipped ones).
pub fn list() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("config/scenarios") {
        let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for p in files {
            if p.extension().map(|e| e == "toml").unwrap_or(false) {
                let name = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                let desc = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| Scenario::parse(&t, "").ok())
                    .map(|s| s.description)
                    .unwrap_or_else(|| "(invalid file)".into());
                out.push((name, desc));
            }
        }
    }
    for (n, text) in BUILTIN {
        if !out.iter().any(|(m, _)| m == n) {
            let desc = Scenario::parse(text, n)
                .map(|s| s.description)
                .unwrap_or_default();
            out.push((n.to_string(), desc));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        for (n, t) in BUILTIN {
            Scenario::parse(t, n).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn unknown_key_and_bad_value_are_named() {
        let base = "[stop]\nversions = 5\n[[trainers]]\nname = \"a\"\nspecialty = \"graphics\"\n";
        let e = Scenario::parse(&format!("{base}colour = 1\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml") && e.contains("colour"), "{e}");
        let e = Scenario::parse(&format!("{base}behaviour = \"evil\"\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("behaviour") && e.contains("evil"), "{e}");
        let e = Scenario::parse(&format!("{base}[pass]\nmin_accuracy = 3.0\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pass.min_accuracy"), "{e}");
    }

    #[test]
    fn rule_messages_name_the_key_as_before() {
        let base = "[stop]\nversions = 5\n[[trainers]]\nname = \"a\"\nspecialty = \"graphics\"\n";
        let msg = |extra: &str| match Scenario::parse(&format!("{base}{extra}"), "x.toml") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            msg("[training]\nlr = 0.0\n"),
            "x.toml: training.lr: must be a positive number"
        );
        assert_eq!(
            msg("[kernel]\nsteps = 0\n"),
            "x.toml: kernel.steps: 0 is not 1 to 100000"
        );
        assert_eq!(
            Scenario::parse(
                &format!("random_churn = true\n{base}[hub]\nmodel = \"kernel\"\n"),
                "x.toml"
            )
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string()),
            "x.toml: a kernel scenario has no [[attacks]] and no random_churn"
        );
        assert_eq!(
            msg("part = [3, 2]\n"),
            "x.toml: trainers[0]: `classes` and `part` only with a [dataset]"
        );
    }
}
