//! Configuration: built-in defaults (the embedded `config/default.toml`), then an
//! optional file, then `KERNAL__SECTION__KEY` environment variables, then CLI flags.
//!
//! Every struct denies unknown fields so that a typo in a config file is an error
//! that names the key instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aggregation::{AggregationSettings, Strategy};
use crate::error::ConfigError;

/// The documented defaults, embedded so the binary needs no file to start.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hub: HubConfig,
    pub log: LogConfig,
    pub aggregation: AggregationDefaults,
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
    pub open_registration: bool,
    pub allowed_trainers: Vec<String>,
    pub hello_timeout_secs: u64,
    pub heartbeat_interval_secs: u64,
    pub client_timeout_secs: u64,
    pub model_hold_ms: u64,
    pub max_message_bytes: usize,
    pub max_fragments: usize,
    pub max_pending_handshakes: usize,
    pub blob_file_threshold_bytes: usize,
    pub max_inflight_update_bytes: usize,
    pub keep_weights_versions: u64,
    pub shutdown_timeout_secs: u64,
    pub http_workers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregationDefaults {
    pub strategy: Strategy,
    pub min_updates: usize,
    pub round_timeout_secs: f64,
    pub max_staleness: u64,
    pub staleness_exponent: f64,
    pub server_lr: f32,
    pub momentum: f32,
    pub beta2: f32,
    pub tau: f32,
    pub trim_fraction: f32,
    pub clip_norm: f32,
    pub max_num_examples: u64,
}

/// One model declared in config. Aggregation keys are optional overrides of
/// `[aggregation]`; they are listed explicitly because `deny_unknown_fields`
/// does not work through `#[serde(flatten)]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub hidden: Option<usize>,
    #[serde(default)]
    pub inputs: Option<usize>,
    #[serde(default)]
    pub classes: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub min_updates: Option<usize>,
    #[serde(default)]
    pub round_timeout_secs: Option<f64>,
    #[serde(default)]
    pub max_staleness: Option<u64>,
    #[serde(default)]
    pub staleness_exponent: Option<f64>,
    #[serde(default)]
    pub server_lr: Option<f32>,
    #[serde(default)]
    pub momentum: Option<f32>,
    #[serde(default)]
    pub beta2: Option<f32>,
    #[serde(default)]
    pub tau: Option<f32>,
    #[serde(default)]
    pub trim_fraction: Option<f32>,
    #[serde(default)]
    pub clip_norm: Option<f32>,
    #[serde(default)]
    pub max_num_examples: Option<u64>,
}

/// Overrides given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub bind: Option<String>,
    pub db: Option<String>,
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
            message: m,
        })?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense; names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.hub.max_message_bytes < 1024 {
            return Err("hub.max_message_bytes: must be at least 1024".into());
        }
        if self.hub.max_inflight_update_bytes < 1 << 20 {
            return Err("hub.max_inflight_update_bytes: must be at least 1048576".into());
        }
        if self.hub.max_fragments == 0 {
            return Err("hub.max_fragments: must be at least 1".into());
        }
        if self.hub.hello_timeout_secs == 0 {
            return Err("hub.hello_timeout_secs: must be at least 1".into());
        }
        if self.hub.heartbeat_interval_secs == 0 {
            return Err("hub.heartbeat_interval_secs: must be at least 1".into());
        }
        if self.hub.client_timeout_secs <= self.hub.heartbeat_interval_secs {
            return Err(
                "hub.client_timeout_secs: must be larger than hub.heartbeat_interval_secs".into(),
            );
        }
        for (name, m) in &self.models {
            crate::hub::validate_model_name(name).map_err(|e| format!("models.{name}: {e}"))?;
            let s = self.aggregation_for(name);
            s.validate().map_err(|e| format!("models.{name}.{e}"))?;
            if let Some(arch) = &m.architecture {
                if arch != "digits" {
                    return Err(format!(
                        "models.{name}.architecture: unknown architecture `{arch}` (known: digits)"
                    ));
                }
            }
        }
        self.aggregation_settings(&ModelConfig::default())
            .validate()
            .map_err(|e| format!("aggregation.{e}"))?;
        for (name, classes) in &self.specialties {
            if classes.is_empty() {
                return Err(format!("specialties.{name}: needs at least one class"));
            }
        }
        Ok(())
    }

    /// The effective aggregation settings of a model declared in config, or
    /// the defaults for a model that is not.
    pub fn aggregation_for(&self, model: &str) -> AggregationSettings {
        match self.models.get(model) {
            Some(m) => self.aggregation_settings(m),
            None => self.aggregation_settings(&ModelConfig::default()),
        }
    }

    pub fn aggregation_settings(&self, m: &ModelConfig) -> AggregationSettings {
        let d = &self.aggregation;
        AggregationSettings {
            strategy: m.strategy.unwrap_or(d.strategy),
            min_updates: m.min_updates.unwrap_or(d.min_updates),
            round_timeout_secs: m.round_timeout_secs.unwrap_or(d.round_timeout_secs),
            max_staleness: m.max_staleness.unwrap_or(d.max_staleness),
            staleness_exponent: m.staleness_exponent.unwrap_or(d.staleness_exponent),
            server_lr: m.server_lr.unwrap_or(d.server_lr),
            momentum: m.momentum.unwrap_or(d.momentum),
            beta2: m.beta2.unwrap_or(d.beta2),
            tau: m.tau.unwrap_or(d.tau),
            trim_fraction: m.trim_fraction.unwrap_or(d.trim_fraction),
            clip_norm: m.clip_norm.unwrap_or(d.clip_norm),
            max_num_examples: m.max_num_examples.unwrap_or(d.max_num_examples),
        }
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
pub fn by_name<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
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
