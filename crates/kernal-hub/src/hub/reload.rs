//! Reloading the config of a running hub (SIGHUP, `POST /v1/admin/reload`):
//! the whole file is validated first; live keys change now, restart-only
//! keys ([`RESTART_ONLY`]) are reported and left as they were. A file that
//! no longer sets keys the running file set (a truncated save: `[hub]` and
//! nothing after it is valid TOML) is refused with the keys named, since
//! applying it would silently put them back to their defaults (registration
//! open, limits loosened), unless the operator says so
//! (`?allow_removed_keys=true`; for SIGHUP, a restart).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use actix::Addr;

use super::hub_actor::{self, Hub};
use crate::config::{CliOverrides, Config, HubConfig};

/// Where the hub's config came from, so SIGHUP and `/v1/admin/reload` can
/// read it again with the same layering.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub cli: CliOverrides,
    /// Tests pass a fixed config and no file; reload then re-applies it.
    pub use_env: bool,
}

/// `[hub]` keys that need a restart to change. Every other key of the hub,
/// the log level, aggregation and model settings changes live (limits apply
/// to new connections).
pub const RESTART_ONLY: &[&str] = &[
    "bind",
    "db",
    "state_dir",
    "admin_token",
    "tls_cert",
    "tls_key",
    "shutdown_timeout_secs",
    "blob_file_threshold_bytes",
    "max_inflight_update_bytes",
    "http_workers",
    "max_pending_updates",
    "db_cache_kib",
];

/// Keys whose values are never written to the log.
const SECRET: &[&str] = &["admin_token"];

/// Why a reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file (or environment) is not a valid configuration.
    #[error(transparent)]
    Invalid(#[from] crate::error::ConfigError),
    /// The file parses but no longer sets keys the running file set.
    #[error("the config file no longer sets {} (the running file sets them; a truncated save?); applying it would return them to their defaults. Fix the file, or apply it as it is with POST /v1/admin/reload?allow_removed_keys=true (or restart the hub)", .0.join(", "))]
    RemovedKeys(Vec<String>),
    /// The file could not be read for the keys it sets.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// A thread panicked holding the running config; nothing is applied.
    #[error("config lock poisoned")]
    Poisoned,
    /// The blocking thread could not wait for the hub's answer.
    #[error("cannot build a runtime for reload: {0}")]
    Runtime(std::io::Error),
    /// The running settings did not survive their round trip through JSON.
    #[error(transparent)]
    Settings(#[from] serde_json::Error),
    /// The hub actor is gone (shutting down).
    #[error("hub unavailable: {0}")]
    HubUnavailable(actix::MailboxError),
}

/// Why the keys a config file sets could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not TOML: {source}", path.display())]
    NotToml {
        path: PathBuf,
        source: toml::de::Error,
    },
}

/// The dotted names of every value a TOML file sets (`hub.max_models`,
/// `models.digits.min_updates`); an array counts as one value.
pub fn keys_set(path: &Path) -> Result<BTreeSet<String>, KeysError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| KeysError::NotToml {
        path: path.to_path_buf(),
        source,
    })?;
    fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeSet<String>) {
        for (k, v) in t {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(sub) => walk(&name, sub, out),
                _ => {
                    out.insert(name);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", &table, &mut out);
    Ok(out)
}

pub struct Reloader {
    source: ConfigSource,
    /// The keys the running config file sets (empty without a file).
    file_keys: Mutex<BTreeSet<String>>,
    current: Mutex<Config>,
    hub: Addr<Hub>,
    /// The hub settings the HTTP handlers read.
    live: Arc<RwLock<HubConfig>>,
}

/// The `[hub]` keys whose values differ, with their old and new values.
fn changed_hub_keys(old: &HubConfig, new: &HubConfig) -> Vec<(String, String, String)> {
    let as_map = |h: &HubConfig| match serde_json::to_value(h) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (o, n) = (as_map(old), as_map(new));
    n.iter()
        .filter(|(k, v)| o.get(*k) != Some(*v))
        .map(|(k, v)| {
            let shown = |x: Option<&serde_json::Value>| match (SECRET.contains(&k.as_str()), x) {
                (true, _) => "(not shown)".to_string(),
                (false, Some(x)) => x.to_string(),
                (false, None) => "none".to_string(),
            };
            (k.clone(), shown(o.get(k)), shown(Some(v)))
        })
        .collect()
}

impl Reloader {
    pub fn new(
        source: ConfigSource,
        current: Config,
        hub: Addr<Hub>,
        live: Arc<RwLock<HubConfig>>,
    ) -> Self {
        let file_keys = source
            .file
            .as_deref()
            .and_then(|f| keys_set(f).ok())
            .unwrap_or_default();
        Reloader {
            source,
            file_keys: Mutex::new(file_keys),
            current: Mutex::new(current),
            hub,
            live,
        }
    }

    /// Reloads, refusing a file that drops keys the running file set
    /// (what SIGHUP does).
    pub fn reload(&self) -> Result<Vec<String>, ReloadError> {
        self.reload_with(false)
    }

    /// Reloads; with `allow_removed_keys` a file that no longer sets some
    /// keys applies, and those keys return to their defaults.
    pub fn reload_with(&self, allow_removed_keys: bool) -> Result<Vec<String>, ReloadError> {
        let new = if self.source.file.is_some() || self.source.use_env {
            Config::from_sources(
                self.source.file.as_deref(),
                self.source.use_env,
                &self.source.cli,
            )?
        } else {
            self.current
                .lock()
                .map_err(|_| ReloadError::Poisoned)?
                .clone()
        };
        let new_keys = match self.source.file.as_deref() {
            Some(f) => keys_set(f)?,
            None => BTreeSet::new(),
        };
        let mut file_keys = self.file_keys.lock().map_err(|_| ReloadError::Poisoned)?;
        let removed: Vec<String> = file_keys.difference(&new_keys).cloned().collect();
        if !removed.is_empty() && !allow_removed_keys {
            return Err(ReloadError::RemovedKeys(removed));
        }
        let mut notes = self.apply(new)?;
        for k in &removed {
            let note = format!(
                "{k} no longer set in the file: back to its default (allowed by the operator)"
            );
            log::warn!("config reload: {note}");
            notes.push(note);
        }
        *file_keys = new_keys;
        Ok(notes)
    }

    fn apply(&self, new: Config) -> Result<Vec<String>, ReloadError> {
        let mut cur = self.current.lock().map_err(|_| ReloadError::Poisoned)?;
        let mut notes = Vec::new();
        if new.log.level != cur.log.level {
            if crate::logging::set_level(&new.log.level) {
                notes.push(format!("log.level changed to {}", new.log.level));
            } else {
                notes.push(format!(
                    "log.level changed to {} but RUST_LOG is set and wins",
                    new.log.level
                ));
            }
        }
        let mut applied = new.clone();
        // Restart-only keys stay as they were; the others apply now.
        let mut hub = serde_json::to_value(&new.hub)?;
        let old = serde_json::to_value(&cur.hub)?;
        for (key, was, now) in changed_hub_keys(&cur.hub, &new.hub) {
            if RESTART_ONLY.contains(&key.as_str()) {
                notes.push(format!(
                    "hub.{key} changed (needs a restart; left as it was)"
                ));
                hub[&key] = old[&key].clone();
            } else {
                notes.push(format!("hub.{key} changed from {was} to {now}"));
            }
        }
        applied.hub = serde_json::from_value(hub)?;
        if let Ok(mut l) = self.live.write() {
            *l = applied.hub.clone();
        }
        let changed =
            futures_executor_block(self.hub.send(hub_actor::ApplyConfig(applied.clone())))?
                .map_err(ReloadError::HubUnavailable)?;
        notes.extend(changed);
        for n in &notes {
            log::info!("config reload: {n}");
        }
        if notes.is_empty() {
            log::info!("config reload: nothing changed");
        }
        *cur = applied;
        Ok(notes)
    }
}

/// Waits for an actor reply from a blocking thread (reload runs in
/// `web::block` or the signal thread, never on the executor).
fn futures_executor_block<F: std::future::Future>(f: F) -> Result<F::Output, ReloadError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReloadError::Runtime)?;
    Ok(rt.block_on(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_changed_key_is_found_and_secrets_are_not_shown() {
        let a = Config::builtin().hub;
        let mut b = a.clone();
        b.max_fragments = 7;
        b.admin_token = "s3cret".into();
        b.bind = "127.0.0.1:9".into();
        let changed = changed_hub_keys(&a, &b);
        let keys: Vec<&str> = changed.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        for k in ["max_fragments", "admin_token", "bind"] {
            assert!(keys.contains(&k), "{k}");
        }
        assert!(!format!("{changed:?}").contains("s3cret"));
        for k in RESTART_ONLY {
            assert!(
                serde_json::to_value(&a).unwrap().get(*k).is_some(),
                "{k} is not a [hub] key"
            );
        }
    }
}
