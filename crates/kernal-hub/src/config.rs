//! Configuration: built-in defaults (the embedded `config/default.toml`), then an
//! optional file, then `KERNAL__SECTION__KEY` environment variables, then CLI flags.
//!
//! Every struct denies unknown fields so that a typo in a config file is an error
//! that names the key instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aggregation::{AggregationOverrides, AggregationSettings};
use crate::error::ConfigError;
use crate::range::{self, Ends};

/// The documented defaults, embedded so the binary needs no file to start.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hub: HubConfig,
    pub log: LogConfig,
    pub aggregation: AggregationSettings,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    #[serde(default)]
    pub specialties: BTreeMap<String, Vec<u32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub bind: String,
    pub db: String,
    pub state_dir: String,
    pub admin_token: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub open_registration: bool,
    pub allowed_trainers: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub hello_timeout_secs: u64,
    pub heartbeat_interval_secs: u64,
    pub client_timeout_secs: u64,
    pub model_hold_ms: u64,
    pub max_message_bytes: usize,
    pub max_prehello_bytes: usize,
    pub max_fragments: usize,
    pub max_pending_handshakes: usize,
    pub max_prehello_per_ip: usize,
    pub max_outbound_bytes: usize,
    pub blob_file_threshold_bytes: usize,
    pub spool_min_bytes: usize,
    pub max_inflight_update_bytes: usize,
    pub max_inflight_share: f64,
    pub min_upload_bytes_per_sec: u64,
    pub max_model_params: u64,
    pub max_models: usize,
    pub max_trainers: usize,
    pub registrations_per_ip_per_hour: u32,
    pub keep_weights_versions: u64,
    pub db_cache_kib: u64,
    pub shutdown_timeout_secs: u64,
    pub http_workers: usize,
    pub max_pending_updates: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
}

/// One model declared in config: its architecture, then any aggregation key
/// overriding `[aggregation]` for this model only.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ModelConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Sizes of the `kernel` architecture (width, blocks, context bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_model: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<usize>,
    /// Input normalisation of a model created from this table: `federated`
    /// or `off` (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalisation: Option<NormalisationMode>,
    #[serde(flatten)]
    pub aggregation: AggregationOverrides,
}

/// How a model declared in config normalises its inputs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NormalisationMode {
    Federated,
    Off,
}

/// The architecture keys of a `[models.NAME]` table (the rest are aggregation keys).
const MODEL_KEYS: &[&str] = &[
    "architecture",
    "hidden",
    "inputs",
    "classes",
    "seed",
    "d_model",
    "layers",
    "context",
    "normalisation",
];

impl<'de> Deserialize<'de> for ModelConfig {
    /// Strict like every other table: serde cannot deny unknown fields
    /// through `flatten`, so the keys are checked against both lists here.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        struct Arch {
            architecture: Option<String>,
            hidden: Option<usize>,
            inputs: Option<usize>,
            classes: Option<usize>,
            seed: Option<u64>,
            d_model: Option<usize>,
            layers: Option<usize>,
            context: Option<usize>,
            normalisation: Option<NormalisationMode>,
        }
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let (mut arch, mut agg) = (serde_json::Map::new(), serde_json::Map::new());
        for (k, v) in map {
            if MODEL_KEYS.contains(&k.as_str()) {
                arch.insert(k, v);
            } else if AggregationSettings::KEYS.contains(&k.as_str()) {
                agg.insert(k, v);
            } else {
                return Err(D::Error::custom(format!(
                    "unknown key `{k}` (known: {}, {})",
                    MODEL_KEYS.join(", "),
                    AggregationSettings::KEYS.join(", ")
                )));
            }
        }
        let a: Arch = from_map_naming_key(arch).map_err(D::Error::custom)?;
        let aggregation: AggregationOverrides =
            from_map_naming_key(agg).map_err(D::Error::custom)?;
        Ok(ModelConfig {
            architecture: a.architecture,
            hidden: a.hidden,
            inputs: a.inputs,
            classes: a.classes,
            seed: a.seed,
            d_model: a.d_model,
            layers: a.layers,
            context: a.context,
            normalisation: a.normalisation,
            aggregation,
        })
    }
}

/// Deserializes a table; a bad value's error names its key (serde's message
/// alone says only which type it expected).
pub fn from_map_naming_key<T: serde::de::DeserializeOwned>(
    map: serde_json::Map<String, serde_json::Value>,
) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::Object(map.clone())).map_err(|e| {
        let bad = map.iter().find(|(k, v)| {
            let one = serde_json::Map::from_iter([((*k).clone(), (*v).clone())]);
            serde_json::from_value::<T>(serde_json::Value::Object(one)).is_err()
        });
        match bad {
            Some((k, _)) => format!("{k}: {e}"),
            None => e.to_string(),
        }
    })
}

/// Why a config that parses is refused: each names the key at fault, and
/// its text is what the operator reads (tests match on it).
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    /// A number out of its range; `range::key` names the key and the range.
    #[error("{0}")]
    Range(String),
    #[error("hub.client_timeout_secs: must be larger than hub.heartbeat_interval_secs")]
    ClientTimeout,
    #[error("hub.tls_cert, hub.tls_key: give both (TLS) or neither (plain HTTP)")]
    TlsHalf,
    #[error("hub.allowed_origins: `{0}` is not an origin like `https://dashboard.example:8443`")]
    Origin(String),
    /// The `[aggregation]` defaults; the message starts with the key.
    #[error("aggregation.{0}")]
    Aggregation(String),
    #[error("models.{model}: {source}")]
    ModelName {
        model: String,
        source: kernal_core::protocol::names::NameError,
    },
    /// A model's own aggregation settings; the message starts with the key.
    #[error("models.{model}.{message}")]
    ModelAggregation { model: String, message: String },
    #[error("models.{model}.architecture: unknown architecture `{arch}` (known: digits, kernel)")]
    Architecture { model: String, arch: String },
    /// The network a model declares is malformed or over `hub.max_model_params`.
    #[error("models.{model}: {message}")]
    Model { model: String, message: String },
    #[error("models.{model}.normalisation: the kernel model has no input features to normalise")]
    KernelNormalisation { model: String },
    #[error("specialties.{0}: needs at least one class")]
    EmptySpecialty(String),
}

/// Overrides given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub bind: Option<String>,
    pub db: Option<String>,
}

impl ModelConfig {
    /// The reference network this entry declares (64-64-10 unless set).
    pub fn mlp_spec(&self) -> crate::model::MlpSpec {
        crate::model::MlpSpec {
            inputs: self.inputs.unwrap_or(64),
            hidden: self.hidden.unwrap_or(64),
            classes: self.classes.unwrap_or(10),
        }
    }

    /// Whether this entry declares the byte-level `kernel` language model.
    pub fn is_kernel(&self) -> bool {
        self.architecture.as_deref() == Some("kernel")
    }

    /// The kernel model this entry declares (the built-in sizes unless set).
    pub fn kernel_spec(&self) -> kernal_core::kernel::KernelSpec {
        let d = kernal_core::kernel::model::DEFAULT_SPEC;
        kernal_core::kernel::KernelSpec {
            d_model: self.d_model.unwrap_or(d.d_model),
            layers: self.layers.unwrap_or(d.layers),
            context: self.context.unwrap_or(d.context),
        }
    }
}

impl Config {
    /// Built-in defaults only (no file, no environment): what tests start from.
    pub fn builtin() -> Config {
        // The embedded file is part of the binary and covered by tests; failing
        // here means the build itself is broken.
        Self::from_sources(None, false, &CliOverrides::default())
            .expect("embedded config/default.toml is valid")
    }

    /// Loads the full layering: defaults, file, environment, CLI.
    pub fn load(file: Option<&Path>, cli: &CliOverrides) -> Result<Config, ConfigError> {
        Self::from_sources(file, true, cli)
    }

    pub fn from_sources(
        file: Option<&Path>,
        use_env: bool,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    source_name: path.display().to_string(),
                    message: "file does not exist".into(),
                });
            }
            builder = builder.add_source(
                config::File::from(path.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        if use_env {
            builder = builder.add_source(
                config::Environment::with_prefix("KERNAL")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("hub.allowed_trainers")
                    .try_parsing(true),
            );
        }
        if let Some(bind) = &cli.bind {
            builder = builder
                .set_override("hub.bind", bind.clone())
                .map_err(|e| ConfigError::invalid("--bind", e))?;
        }
        if let Some(db) = &cli.db {
            builder = builder
                .set_override("hub.db", db.clone())
                .map_err(|e| ConfigError::invalid("--db", e))?;
        }
        let name = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".to_string());
        let built = builder
            .build()
            .map_err(|e| ConfigError::invalid(&name, e))?;
        let cfg: Config = built
            .try_deserialize()
            .map_err(|e| ConfigError::invalid(&name, e))?;
        cfg.validate().map_err(|m| ConfigError::Invalid {
            source_name: name,
            message: m.to_string(),
        })?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense; names the offending key
    /// and its range.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let h = &self.hub;
        const GIB: f64 = (1u64 << 30) as f64;
        range::key(
            "hub.hello_timeout_secs",
            h.hello_timeout_secs,
            1.0,
            3600.0,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.heartbeat_interval_secs",
            h.heartbeat_interval_secs,
            1.0,
            3600.0,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.client_timeout_secs",
            h.client_timeout_secs,
            2.0,
            86_400.0,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        if h.client_timeout_secs <= h.heartbeat_interval_secs {
            return Err(InvalidConfig::ClientTimeout);
        }
        range::key(
            "hub.model_hold_ms",
            h.model_hold_ms,
            0.0,
            60_000.0,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.max_message_bytes",
            h.max_message_bytes,
            1024.0,
            4.0 * GIB,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.max_prehello_bytes",
            h.max_prehello_bytes,
            1024.0,
            16.0 * 1048576.0,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key("hub.max_fragments", h.max_fragments, 1.0, 1e6, Ends::Closed)
            .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.max_pending_handshakes",
            h.max_pending_handshakes,
            1.0,
            1e6,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key("hub.max_trainers", h.max_trainers, 1.0, 1e7, Ends::Closed)
            .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.registrations_per_ip_per_hour",
            h.registrations_per_ip_per_hour,
            1.0,
            1e9,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.max_prehello_per_ip",
            h.max_prehello_per_ip,
            1.0,
            1e6,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.max_outbound_bytes",
            h.max_outbound_bytes,
            65_536.0,
            GIB,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.blob_file_threshold_bytes",
            h.blob_file_threshold_bytes,
            0.0,
            GIB,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.max_pending_updates",
            h.max_pending_updates,
            0.0,
            1e9,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.spool_min_bytes",
            h.spool_min_bytes,
            0.0,
            1024.0 * GIB,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.max_inflight_update_bytes",
            h.max_inflight_update_bytes,
            1048576.0,
            1024.0 * GIB,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.max_inflight_share",
            h.max_inflight_share,
            0.0,
            1.0,
            Ends::OpenLow,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.min_upload_bytes_per_sec",
            h.min_upload_bytes_per_sec,
            0.0,
            1e12,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.max_model_params",
            h.max_model_params,
            1.0,
            4e9,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key("hub.max_models", h.max_models, 1.0, 1e6, Ends::Closed)
            .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.keep_weights_versions",
            h.keep_weights_versions,
            0.0,
            1e9,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.db_cache_kib",
            h.db_cache_kib,
            64.0,
            1048576.0,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.shutdown_timeout_secs",
            h.shutdown_timeout_secs,
            0.0,
            3600.0,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        range::key(
            "hub.http_workers",
            h.http_workers,
            0.0,
            1024.0,
            Ends::Closed,
        )
        .map_err(InvalidConfig::Range)?;
        if h.tls_cert.is_empty() != h.tls_key.is_empty() {
            return Err(InvalidConfig::TlsHalf);
        }
        for o in &h.allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(InvalidConfig::Origin(o.clone()));
            }
        }
        self.aggregation
            .validate()
            .map_err(InvalidConfig::Aggregation)?;
        for (name, m) in &self.models {
            kernal_core::protocol::names::validate_model_name(name).map_err(|source| {
                InvalidConfig::ModelName {
                    model: name.clone(),
                    source,
                }
            })?;
            self.aggregation_for(name).validate().map_err(|message| {
                InvalidConfig::ModelAggregation {
                    model: name.clone(),
                    message,
                }
            })?;
            if let Some(arch) = &m.architecture {
                if arch != "digits" && arch != "kernel" {
                    return Err(InvalidConfig::Architecture {
                        model: name.clone(),
                        arch: arch.clone(),
                    });
                }
            }
            if m.is_kernel() {
                m.kernel_spec()
                    .check(h.max_model_params)
                    .map_err(|e| InvalidConfig::Model {
                        model: name.clone(),
                        message: e.to_string(),
                    })?;
                if m.normalisation == Some(NormalisationMode::Federated) {
                    return Err(InvalidConfig::KernelNormalisation {
                        model: name.clone(),
                    });
                }
            } else {
                let spec = m.mlp_spec();
                spec.check(h.max_model_params)
                    .map_err(|message| InvalidConfig::Model {
                        model: name.clone(),
                        message,
                    })?;
            }
        }
        for (name, classes) in &self.specialties {
            if classes.is_empty() {
                return Err(InvalidConfig::EmptySpecialty(name.clone()));
            }
        }
        Ok(())
    }

    /// The effective aggregation settings of a model declared in config, or
    /// the defaults for a model that is not.
    pub fn aggregation_for(&self, model: &str) -> AggregationSettings {
        match self.models.get(model) {
            Some(m) => self.aggregation.with(&m.aggregation),
            None => self.aggregation.clone(),
        }
    }

    /// The defaults with a model's own overrides applied.
    pub fn aggregation_settings(&self, o: &AggregationOverrides) -> AggregationSettings {
        self.aggregation.with(o)
    }

    /// Directory for hub-created state: config, then systemd's
    /// `STATE_DIRECTORY`, then the working directory.
    pub fn state_dir(&self) -> PathBuf {
        if !self.hub.state_dir.is_empty() {
            return PathBuf::from(&self.hub.state_dir);
        }
        if let Ok(dir) = std::env::var("STATE_DIRECTORY") {
            // systemd may pass several colon-separated directories.
            if let Some(first) = dir.split(':').next() {
                if !first.is_empty() {
                    return PathBuf::from(first);
                }
            }
        }
        PathBuf::from(".")
    }

    /// The database path; relative paths live in the state directory when
    /// running under systemd, so the service needs no writable working dir.
    pub fn db_path(&self) -> PathBuf {
        let p = PathBuf::from(&self.hub.db);
        if p.is_absolute() || std::env::var("STATE_DIRECTORY").is_err() {
            p
        } else {
            self.state_dir().join(p)
        }
    }
}

/// Parses a CLI value by the same snake_case names the config and scenario
/// files use, so there is one list of names (the serde one).
pub fn by_name<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, serde_json::Error> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn builtin_defaults_parse() {
        let c = Config::builtin();
        assert_eq!(c.hub.bind, "127.0.0.1:5001");
        assert!(c.models.contains_key("digits"));
        assert_eq!(c.specialties["graphics"], vec![4, 5, 6]);
        assert_eq!(c.aggregation_for("digits").min_updates, 3);
    }

    #[test]
    fn file_layer_overrides_and_unknown_key_is_named() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[models.digits]\nmin_updates = 7\n").unwrap();
        let c = Config::from_sources(Some(f.path()), false, &CliOverrides::default()).unwrap();
        assert_eq!(c.aggregation_for("digits").min_updates, 7);

        let mut g = tempfile::NamedTempFile::new().unwrap();
        writeln!(g, "[hub]\nbindd = \"x\"\n").unwrap();
        let err = Config::from_sources(Some(g.path()), false, &CliOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bindd"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let mut g = tempfile::NamedTempFile::new().unwrap();
        writeln!(g, "[aggregation]\nstrategy = \"fedfoo\"\n").unwrap();
        let err = Config::from_sources(Some(g.path()), false, &CliOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("fedfoo"), "{err}");
        let mut h = tempfile::NamedTempFile::new().unwrap();
        writeln!(h, "[models.digits]\nmin_updates = 0\n").unwrap();
        let err = Config::from_sources(Some(h.path()), false, &CliOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("models.digits.min_updates"), "{err}");
    }

    #[test]
    fn cli_wins() {
        let c = Config::from_sources(
            None,
            false,
            &CliOverrides {
                bind: Some("127.0.0.1:9".into()),
                db: Some("x.db".into()),
            },
        )
        .unwrap();
        assert_eq!(c.hub.bind, "127.0.0.1:9");
        assert_eq!(c.hub.db, "x.db");
    }
}
