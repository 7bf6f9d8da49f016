//! Startup recovery: migrations, config models created, and every model
//! reloaded at its last committed version with its acknowledged but
//! unapplied updates back in the buffer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::encoded::Encoded;

use super::state::{self, ModelState, TrainerInfo};
use super::version_metrics;
use crate::config::Config;
use crate::db;
use crate::error::HubError;
use crate::protocol::{ErrorCode, ModelLayout};

/// The aggregation overrides stored with an API-created model. Read
/// leniently: rows written by older versions carry architecture keys and
/// nulls, and a value outside today's ranges (stored before they were
/// checked, such as a round timeout of 1e300) is dropped with a warning
/// instead of stopping the hub at every start.
pub fn stored_overrides(
    model: &str,
    text: Option<&str>,
) -> crate::aggregation::AggregationOverrides {
    use crate::aggregation::{AggregationOverrides, AggregationSettings};
    let Some(text) = text else {
        return AggregationOverrides::default();
    };
    let map: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            log::warn!("model {model}: stored settings unreadable ({e}); using the defaults");
            return AggregationOverrides::default();
        }
    };
    let mut good = serde_json::Map::new();
    for (k, v) in map {
        if v.is_null() || !AggregationSettings::KEYS.contains(&k.as_str()) {
            continue;
        }
        let one = serde_json::Map::from_iter([(k.clone(), v.clone())]);
        match crate::config::from_map_naming_key::<AggregationOverrides>(one)
            .and_then(|o| o.validate())
        {
            Ok(()) => {
                good.insert(k, v);
            }
            Err(e) => log::warn!("model {model}: stored setting {e}; using the default instead"),
        }
    }
    crate::config::from_map_naming_key(good).unwrap_or_default()
}

/// Everything loaded from the database at start.
pub struct Loaded {
    pub models: Vec<ModelState>,
    pub trainers: HashMap<String, TrainerInfo>,
    pub pending: usize,
    /// Acknowledged updates the ledger no longer has (at most this many).
    pub lost_acknowledged: u64,
}

/// Runs migrations, creates config models that do not exist yet, and loads
/// every model at its last committed version with its pending updates back
/// in the buffer. Blocking: call it off the executor.
pub fn load_state(cfg: &Config, path: &Path) -> Result<Loaded, HubError> {
    let blobs = db::BlobStore::for_db(path, cfg.hub.blob_file_threshold_bytes);
    if !path.exists() {
        // A new database: a mark left by an older one means nothing.
        db::acked::reset(path);
    }
    let mut conn = db::connect(path)?;
    // Opening the database recovered its WAL. Refuse to serve from a
    // damaged one, and say so if the recovery lost acknowledged updates.
    db::quick_check(&mut conn).map_err(|e| {
        HubError::Other(format!(
            "the database {} is damaged ({e}); restore a backup, or salvage it with `sqlite3 {} .recover`",
            path.display(),
            path.display()
        ))
    })?;
    db::run_migrations(&mut conn)?;
    let newest = db::max_update_id(&mut conn)?;
    let lost_acknowledged = match db::acked::lost(db::acked::read(path), newest) {
        Some((newest, acked)) => {
            log::error!(
                "the ledger ends at id {newest} but updates up to id {acked} were acknowledged: \
                 the database lost its newest commits (a damaged WAL?); up to {} acknowledged \
                 update(s) are missing and their trainers will not resend them",
                acked - newest
            );
            (acked - newest) as u64
        }
        None => 0,
    };
    let swept = blobs.sweep(&db::referenced_blobs(&mut conn)?);
    if swept > 0 {
        log::info!("removed {swept} blob file(s) no row refers to (left by an unclean stop)");
    }
    let closed = db::close_stale_sessions(&mut conn)?;
    if closed > 0 {
        log::info!("closed {closed} session(s) left open by an unclean stop");
    }
    for (name, m) in &cfg.models {
        if db::get_model(&mut conn, name)?.is_some() {
            continue;
        }
        let spec = m.mlp_spec();
        let (layout, weights) = if m.is_kernel() {
            let k = m.kernel_spec();
            (k.layout(), k.init_weights(m.seed.unwrap_or(42)))
        } else {
            (spec.layout(), spec.init_weights(m.seed.unwrap_or(42)))
        };
        let mut meta = HashMap::new();
        meta.insert("version".to_string(), "0".to_string());
        let encoded = layout
            .encode(&weights, Some(&meta))
            .map_err(|e| HubError::Other(e.to_string()))?;
        let metrics = if m.is_kernel() {
            // A few windows per held-out part: cheap enough for every start.
            let eval = super::kernel_eval::evaluate_kernel(&layout, &weights);
            serde_json::json!({ "eval": eval })
        } else {
            let split = crate::data::digits_split().ok();
            let eval =
                state::evaluate_builtin(&layout, &weights, split.as_ref().map(|s| &s.test), None);
            version_metrics::VersionMetrics::evaluated(eval.as_ref()).to_json()
        };
        db::insert_model(
            &mut conn,
            &db::ModelRow {
                name: name.clone(),
                architecture: m.architecture.clone().unwrap_or_else(|| "digits".into()),
                layout: serde_json::to_string(&layout).unwrap_or_default(),
                settings: None,
                created_at: db::now(),
                normalisation: match m.normalisation {
                    Some(crate::config::NormalisationMode::Federated) => {
                        state::NormState::Pooling {
                            pool: crate::protocol::StatsPool::new(spec.inputs),
                        }
                        .to_stored()
                    }
                    _ => None,
                },
                evalset: None,
            },
            &db::NewVersion {
                model: name,
                version: 0,
                parent: None,
                num_updates: 0,
                weights: &encoded,
                metrics: metrics.to_string(),
                created_at: db::now(),
                weights_file: None,
            },
        )?;
        log::info!("created model {name} ({} parameters)", layout.num_params());
    }
    let mut models = Vec::new();
    // Updates of trainers revoked before their fold never count.
    let revoked: std::collections::HashSet<String> = db::list_trainers(&mut conn)?
        .into_iter()
        .filter(|t| t.revoked)
        .map(|t| t.name)
        .collect();
    let mut pending_total = 0;
    let now = Instant::now();
    for row in db::list_models(&mut conn)? {
        let corrupt = |message: String| HubError::Corrupt {
            model: row.name.clone(),
            message,
        };
        let layout: ModelLayout =
            serde_json::from_str(&row.layout).map_err(|e| corrupt(e.to_string()))?;
        let overrides = (!cfg.models.contains_key(&row.name))
            .then(|| stored_overrides(&row.name, row.settings.as_deref()));
        let settings = match &overrides {
            Some(o) => cfg.aggregation_settings(o),
            None => cfg.aggregation_for(&row.name),
        };
        let version = db::latest_version(&mut conn, &row.name)?
            .ok_or_else(|| corrupt("no version stored".into()))?;
        let bytes = db::get_weights(&mut conn, &blobs, &row.name, version)?
            .ok_or_else(|| corrupt(format!("version {version} has no weights")))?;
        let weights = Arc::new(
            layout
                .decode(&bytes)
                .map_err(|e| corrupt(format!("version {version}: {e}")))?,
        );
        // The checkpoint's bytes are not kept beside the weights they hold.
        let encoded = Encoded::from_stored(&layout, bytes, &weights);
        let meta: Option<serde_json::Value> = db::get_version(&mut conn, &row.name, version)?
            .and_then(|v| serde_json::from_str(&v.metrics).ok());
        let mut st = ModelState::new(
            row.name.clone(),
            row.architecture.clone(),
            layout,
            settings,
            version as u64,
            weights,
            encoded,
        );
        // The bounds the next fold starts from, as the last fold left them.
        if let Some(report) = meta
            .as_ref()
            .and_then(|m| m.get("aggregation"))
            .and_then(|a| {
                serde_json::from_value::<crate::aggregation::AggregateReport>(a.clone()).ok()
            })
        {
            st.robust = crate::aggregation::robust::RobustState {
                norm_quantile: report.norm_quantile,
                median_examples: report.median_examples,
            };
        }
        st.last_metrics = meta;
        st.overrides = overrides;
        st.norm = state::NormState::from_stored(row.normalisation.as_deref())
            .map_err(|e| corrupt(e.to_string()))?;
        if matches!(&st.norm, state::NormState::Pooling { pool } if !pool.reports.is_empty()) {
            // Statistics were pooled before the stop: the pool's deadline
            // starts again rather than waiting for a report that may not come.
            st.norm_since = Some(now);
        }
        if let Some(csv) = &row.evalset {
            st.evalset = Some(std::sync::Arc::new(
                crate::data::parse_dataset(csv, "stored evaluation set")
                    .map_err(|e| corrupt(e.to_string()))?,
            ));
        }
        // A pending update that cannot be read back is refused with the
        // reason, never a reason not to start.
        let mut unreadable = Vec::new();
        let mut of_revoked = Vec::new();
        for p in db::pending_updates(&mut conn, &row.name)? {
            if revoked.contains(&p.trainer) {
                of_revoked.push(p.id);
                continue;
            }
            let payload = match (p.payload, &p.payload_file) {
                (_, Some(f)) => blobs.get(f).map_err(|e| e.to_string()),
                (Some(b), None) => Ok(b),
                (None, None) => Err("no payload is stored".to_string()),
            };
            let arrival = state::Arrival {
                row_id: p.id,
                update_id: p.update_id.clone(),
                trainer: p.trainer,
                base_version: p.base_version.max(0) as u64,
                num_examples: p.num_examples.max(1) as u64,
                staleness: Some(p.staleness.max(0) as u64),
                norm: None,
            };
            let pushed = payload.and_then(|bytes| {
                st.push_payload(arrival, &bytes, now)
                    .map_err(|e| e.to_string())
            });
            match pushed {
                Ok(()) => pending_total += 1,
                Err(e) => {
                    log::error!(
                        "model {}: pending update {} (ledger id {}) cannot be read back: {e}; refusing it ({})",
                        row.name,
                        p.update_id,
                        p.id,
                        ErrorCode::UnreadableUpdate
                    );
                    unreadable.push(p.id);
                }
            }
        }
        if !of_revoked.is_empty() {
            log::warn!(
                "model {}: {} pending update(s) of revoked trainers refused ({})",
                row.name,
                of_revoked.len(),
                ErrorCode::Revoked
            );
            let files = db::refuse_pending(
                &mut conn,
                &of_revoked,
                ErrorCode::Revoked.as_str(),
                "its trainer was revoked by an administrator before it was folded",
            )?;
            for (f, _) in files {
                blobs.remove(&f);
            }
        }
        if !unreadable.is_empty() {
            let files = db::refuse_pending(
                &mut conn,
                &unreadable,
                ErrorCode::UnreadableUpdate.as_str(),
                "the hub could not read this acknowledged update back at start (payload missing or damaged)",
            )?;
            for (f, _) in files {
                blobs.remove(&f);
            }
        }
        log::info!(
            "model {}: version {}, {} pending update(s), strategy {}",
            st.name,
            st.version,
            st.buffer.len(),
            st.settings.strategy.as_str()
        );
        models.push(st);
    }
    let trainers = db::list_trainers(&mut conn)?
        .into_iter()
        .map(|t| {
            (
                t.name,
                TrainerInfo {
                    specialty: t.specialty,
                    token_hash: t.token_hash,
                    revoked: t.revoked,
                },
            )
        })
        .collect();
    Ok(Loaded {
        models,
        trainers,
        pending: pending_total,
        lost_acknowledged,
    })
}
