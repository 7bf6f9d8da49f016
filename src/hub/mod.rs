//! The hub daemon: actors, HTTP server, startup recovery and shutdown.

pub mod api;
pub mod child;
pub mod daemon;
pub mod dashboard;
pub mod events;
pub mod hub_actor;
pub mod metrics;
pub mod outbox;
pub mod persister;
pub mod reload;
pub mod session;
pub mod state;
pub mod tls;
pub mod version_metrics;
pub mod ws;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use bytes::Bytes;

use crate::config::{CliOverrides, Config};
use crate::db;
use crate::error::DbError;
use crate::model::MlpSpec;
use crate::protocol::{ErrorCode, ModelLayout};
use hub_actor::Hub;
use metrics::MetricsAggregator;
use persister::Persister;
use state::{ModelState, TrainerInfo};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Config(#[from] crate::error::ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("stored model `{model}` is unreadable: {message}")]
    Corrupt { model: String, message: String },
    #[error("{0}")]
    Other(String),
}

pub fn validate_model_name(name: &str) -> Result<(), String> {
    crate::protocol::validate_name(name)
}

/// Where the hub's config came from, so SIGHUP and `/v1/admin/reload` can
/// read it again with the same layering.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub cli: CliOverrides,
    /// Tests pass a fixed config and no file; reload then re-applies it.
    pub use_env: bool,
}

/// A running hub: its address, admin token and the means to stop it.
#[derive(Clone)]
pub struct HubHandle {
    pub addr: SocketAddr,
    /// Whether it serves TLS (https/wss).
    pub tls: bool,
    pub admin_token: String,
    pub db_path: PathBuf,
    server: actix_web::dev::ServerHandle,
    hub: Addr<Hub>,
    persister: Addr<Persister>,
    shutdown_timeout: Duration,
    reloader: Arc<reload::Reloader>,
}

impl HubHandle {
    /// Clean shutdown: sessions are told the hub is going away, the server
    /// stops accepting, in-flight writes are flushed.
    pub async fn shutdown(&self) {
        let told = self.hub.send(hub_actor::Shutdown).await.unwrap_or(0);
        log::info!("shutting down: told {told} trainer session(s)");
        // Give the goodbye frames a moment to leave before sockets close.
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        let stop = self.server.stop(true);
        let _ = actix_web::rt::time::timeout(self.shutdown_timeout, stop).await;
        let _ = actix_web::rt::time::timeout(
            self.shutdown_timeout,
            self.persister.send(persister::Flush),
        )
        .await;
        log::info!("hub stopped; database consistent");
    }

    /// Re-reads the config and applies what can change live.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        self.reloader.reload()
    }
}

/// The connection threads for `hub.http_workers` (0: one per core).
fn http_workers(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// What a new trainer connection is held to, from the current settings.
pub fn session_limits_of(h: &crate::config::HubConfig) -> session::SessionLimits {
    session::SessionLimits {
        max_message_bytes: h.max_message_bytes,
        max_prehello_bytes: h.max_prehello_bytes,
        max_fragments: h.max_fragments,
        max_outbound_bytes: h.max_outbound_bytes,
        hello_timeout: Duration::from_secs(h.hello_timeout_secs),
        heartbeat_interval: Duration::from_secs(h.heartbeat_interval_secs),
        client_timeout: Duration::from_secs(h.client_timeout_secs),
        model_hold: Duration::from_millis(h.model_hold_ms),
        min_upload_bytes_per_sec: h.min_upload_bytes_per_sec,
        inflight_share: h.max_inflight_share,
    }
}

/// Loads or creates the admin token: config first, else a 0600 file in the
/// state directory (generated at first start; its path is logged, never the token).
pub fn admin_token(cfg: &Config) -> Result<String, HubError> {
    if !cfg.hub.admin_token.is_empty() {
        return Ok(cfg.hub.admin_token.clone());
    }
    let dir = cfg.state_dir();
    let path = dir.join("admin.token");
    if path.exists() {
        let t = std::fs::read_to_string(&path)
            .map_err(|e| HubError::Io(path.display().to_string(), e))?;
        let t = t.trim().to_string();
        if !t.is_empty() {
            log::info!("admin token read from {}", path.display());
            return Ok(t);
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| HubError::Io(dir.display().to_string(), e))?;
    use rand::RngCore;
    let mut raw = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &token).map_err(|e| HubError::Io(path.display().to_string(), e))?;
    log::warn!(
        "generated an admin token into {} (mode 0600); use it as `Authorization: Bearer <token>`",
        path.display()
    );
    Ok(token)
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(content.as_bytes())?;
        f.write_all(b"\n")
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, content)
    }
}

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
        let spec = MlpSpec {
            inputs: m.inputs.unwrap_or(64),
            hidden: m.hidden.unwrap_or(64),
            classes: m.classes.unwrap_or(10),
        };
        let layout = spec.layout();
        let weights = spec.init_weights(m.seed.unwrap_or(42));
        let mut meta = HashMap::new();
        meta.insert("version".to_string(), "0".to_string());
        let encoded = layout
            .encode(&weights, Some(&meta))
            .map_err(|e| HubError::Other(e.to_string()))?;
        let split = crate::data::digits_split().ok();
        let eval =
            state::evaluate_builtin(&layout, &weights, split.as_ref().map(|s| &s.test), None);
        let metrics = version_metrics::VersionMetrics::evaluated(eval.as_ref()).to_json();
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
        let weights = layout
            .decode(&bytes)
            .map_err(|e| corrupt(format!("version {version}: {e}")))?;
        let meta: Option<serde_json::Value> = db::get_version(&mut conn, &row.name, version)?
            .and_then(|v| serde_json::from_str(&v.metrics).ok());
        let mut st = ModelState::new(
            row.name.clone(),
            row.architecture.clone(),
            layout,
            settings,
            version as u64,
            weights,
            Bytes::from(bytes),
        );
        st.last_metrics = meta;
        st.overrides = overrides;
        st.norm = state::NormState::from_stored(row.normalisation.as_deref()).map_err(corrupt)?;
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
        for p in db::pending_updates(&mut conn, &row.name)? {
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

/// Starts the hub on `listener` inside the current actix system. Returns the
/// handle and the server future, which completes when the server stops.
pub async fn start_hub(
    listener: TcpListener,
    cfg: Config,
    source: ConfigSource,
) -> Result<(HubHandle, actix_web::dev::Server), HubError> {
    let db_path = cfg.db_path();
    let (load_cfg, load_db) = (cfg.clone(), db_path.clone());
    let loaded = actix_web::rt::task::spawn_blocking(move || load_state(&load_cfg, &load_db))
        .await
        .map_err(|e| HubError::Other(e.to_string()))??;
    if loaded.pending > 0 {
        log::info!(
            "{} acknowledged update(s) back in the buffers after restart",
            loaded.pending
        );
    }
    let token = admin_token(&cfg)?;
    let test_data = crate::data::digits_split().ok().map(|s| Arc::new(s.test));

    // Actors start once, here, outside the per-worker server closure.
    let aggregator = MetricsAggregator::default();
    let hot = aggregator.hot.clone();
    let metrics = aggregator.start();
    let (persister_metrics, persister_db) = (metrics.clone(), db_path.clone());
    // Handles of blob files kept open: at most 2048 and an eighth of the
    // open-files limit, which the connections need more.
    let handles = daemon::nofile_limit().map_or(128, |n| (n / 8).min(2048) as usize);
    let health = Arc::new(db::StorageHealth::default());
    health.set_lost_acknowledged(loaded.lost_acknowledged);
    let blobs = db::BlobStore::for_db(&db_path, cfg.hub.blob_file_threshold_bytes)
        .keep_open(handles)
        .with_health(health);
    let persister_blobs = blobs.clone();
    let persister = SyncArbiter::start(1, move || {
        Persister::new(
            persister_db.clone(),
            persister_blobs.clone(),
            Some(persister_metrics.clone()),
        )
    });
    let pool = db::pool(&db_path, 4)?;
    let hub = Hub::new(hub_actor::HubParts {
        cfg: cfg.clone(),
        models: loaded.models,
        trainers: loaded.trainers,
        persister: persister.clone(),
        metrics: metrics.clone(),
        hot: hot.clone(),
        test_data,
        blobs: blobs.clone(),
        pool: pool.clone(),
    })
    .start();
    let live = Arc::new(std::sync::RwLock::new(cfg.hub.clone()));
    let reloader = Arc::new(reload::Reloader::new(
        source,
        cfg.clone(),
        hub.clone(),
        live.clone(),
    ));
    let reload_handle = reloader.clone();
    let state = api::AppState {
        hub: hub.clone(),
        metrics: metrics.clone(),
        persister: persister.clone(),
        pool,
        blobs,
        admin_token: Arc::from(token.as_str()),
        config: live,
        handshakes: Arc::default(),
        budget: ws::Budget::new(cfg.hub.max_inflight_update_bytes),
        hot,
        started_at: db::now(),
        reload: Arc::new(move || reload_handle.reload()),
    };
    let addr = listener
        .local_addr()
        .map_err(|e| HubError::Io("listener".into(), e))?;
    let tls = if cfg.hub.tls_cert.is_empty() {
        None
    } else {
        Some(tls::server_config(
            Path::new(&cfg.hub.tls_cert),
            Path::new(&cfg.hub.tls_key),
        )?)
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        log::warn!(
            "listening on {addr}, reachable from other machines, without TLS: tokens and updates \
             cross the network in clear; set hub.tls_cert and hub.tls_key (or put a TLS proxy in front)"
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(api::configure)
    })
    .workers(http_workers(cfg.hub.http_workers))
    .max_connections(100_000)
    .backlog(4096)
    .disable_signals()
    .shutdown_timeout(cfg.hub.shutdown_timeout_secs)
    .on_connect(outbox::remember_socket);
    let server = match tls {
        Some(t) => server.listen_rustls_0_23(listener, t),
        None => server.listen(listener),
    }
    .map_err(|e| HubError::Io(format!("listen on {addr}"), e))?
    .run();
    let handle = HubHandle {
        addr,
        tls: scheme == "https",
        admin_token: token,
        db_path,
        server: server.handle(),
        hub,
        persister,
        shutdown_timeout: Duration::from_secs(cfg.hub.shutdown_timeout_secs),
        reloader,
    };
    log::info!("kernal hub listening on {scheme}://{addr}");
    Ok((handle, server))
}

/// A hub running on its own thread with its own actix system: what tests,
/// the harness and the benchmark use.
pub struct RunningHub {
    pub handle: HubHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningHub {
    pub fn url(&self) -> String {
        let s = if self.handle.tls { "https" } else { "http" };
        format!("{s}://{}", self.handle.addr)
    }
    pub fn ws_url(&self) -> String {
        let s = if self.handle.tls { "wss" } else { "ws" };
        format!("{s}://{}", self.handle.addr)
    }

    /// Clean shutdown (trainers told, writes flushed) and join.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningHub {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts a hub on a new thread. `listener` may be bound to port 0.
pub fn spawn_hub(listener: TcpListener, cfg: Config) -> Result<RunningHub, HubError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("kernal-hub".into())
        .spawn(move || {
            let sys = actix_rt::System::new();
            sys.block_on(async move {
                match start_hub(listener, cfg, ConfigSource::default()).await {
                    Ok((handle, server)) => {
                        let _ = tx.send(Ok(handle.clone()));
                        actix_rt::spawn(server);
                        let _ = stop_rx.await;
                        handle.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| HubError::Io("spawn hub thread".into(), e))?;
    let handle = rx
        .recv()
        .map_err(|_| HubError::Other("hub thread ended before starting".into()))??;
    Ok(RunningHub {
        handle,
        thread: Some(thread),
        stop_tx: Some(stop_tx),
    })
}
