//! The hub daemon: actors, HTTP server, startup recovery and shutdown.

pub mod child;
pub mod daemon;
pub mod dashboard;
pub mod events;
pub mod http;
pub mod hub_actor;
pub mod metrics;
pub mod persister;
pub mod session;
pub mod state;
pub mod ws;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use bytes::Bytes;

use crate::config::{CliOverrides, Config};
use crate::db;
use crate::error::DbError;
use crate::protocol::ModelLayout;
use crate::trainer::net::MlpSpec;
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
    pub admin_token: String,
    pub db_path: PathBuf,
    server: actix_web::dev::ServerHandle,
    hub: Addr<Hub>,
    persister: Addr<Persister>,
    shutdown_timeout: Duration,
    reloader: Arc<Reloader>,
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

/// Re-reads configuration: validates the whole file first, applies live keys,
/// reports restart-only keys as such.
pub struct Reloader {
    source: ConfigSource,
    current: Mutex<Config>,
    hub: Addr<Hub>,
    limits: Arc<std::sync::RwLock<session::SessionLimits>>,
    max_pending: Arc<AtomicUsize>,
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

fn session_limits(cfg: &Config) -> session::SessionLimits {
    session::SessionLimits {
        max_message_bytes: cfg.hub.max_message_bytes,
        max_fragments: cfg.hub.max_fragments,
        hello_timeout: Duration::from_secs(cfg.hub.hello_timeout_secs),
        heartbeat_interval: Duration::from_secs(cfg.hub.heartbeat_interval_secs),
        client_timeout: Duration::from_secs(cfg.hub.client_timeout_secs),
        model_hold: Duration::from_millis(cfg.hub.model_hold_ms),
    }
}

impl Reloader {
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let new = if self.source.file.is_some() || self.source.use_env {
            Config::from_sources(
                self.source.file.as_deref(),
                self.source.use_env,
                &self.source.cli,
            )
            .map_err(|e| e.to_string())?
        } else {
            self.current
                .lock()
                .map_err(|_| "config lock poisoned".to_string())?
                .clone()
        };
        let mut cur = self
            .current
            .lock()
            .map_err(|_| "config lock poisoned".to_string())?;
        let mut notes = Vec::new();
        if new.hub.bind != cur.hub.bind {
            notes.push(format!(
                "hub.bind changed to {} (needs a restart; still serving on {})",
                new.hub.bind, cur.hub.bind
            ));
        }
        if new.hub.db != cur.hub.db {
            notes.push(format!(
                "hub.db changed to {} (needs a restart; still using {})",
                new.hub.db, cur.hub.db
            ));
        }
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
        for (key, old, newv) in [
            (
                "hub.max_message_bytes",
                cur.hub.max_message_bytes.to_string(),
                new.hub.max_message_bytes.to_string(),
            ),
            (
                "hub.max_fragments",
                cur.hub.max_fragments.to_string(),
                new.hub.max_fragments.to_string(),
            ),
            (
                "hub.hello_timeout_secs",
                cur.hub.hello_timeout_secs.to_string(),
                new.hub.hello_timeout_secs.to_string(),
            ),
            (
                "hub.heartbeat_interval_secs",
                cur.hub.heartbeat_interval_secs.to_string(),
                new.hub.heartbeat_interval_secs.to_string(),
            ),
            (
                "hub.client_timeout_secs",
                cur.hub.client_timeout_secs.to_string(),
                new.hub.client_timeout_secs.to_string(),
            ),
            (
                "hub.max_pending_handshakes",
                cur.hub.max_pending_handshakes.to_string(),
                new.hub.max_pending_handshakes.to_string(),
            ),
            (
                "hub.model_hold_ms",
                cur.hub.model_hold_ms.to_string(),
                new.hub.model_hold_ms.to_string(),
            ),
        ] {
            if old != newv {
                notes.push(format!(
                    "{key} changed from {old} to {newv} (new connections)"
                ));
            }
        }
        if new.hub.keep_weights_versions != cur.hub.keep_weights_versions {
            notes.push(format!(
                "hub.keep_weights_versions changed from {} to {} (from the next version)",
                cur.hub.keep_weights_versions, new.hub.keep_weights_versions
            ));
        }
        for (key, changed) in [
            ("hub.state_dir", new.hub.state_dir != cur.hub.state_dir),
            (
                "hub.admin_token",
                new.hub.admin_token != cur.hub.admin_token,
            ),
            (
                "hub.shutdown_timeout_secs",
                new.hub.shutdown_timeout_secs != cur.hub.shutdown_timeout_secs,
            ),
            (
                "hub.blob_file_threshold_bytes",
                new.hub.blob_file_threshold_bytes != cur.hub.blob_file_threshold_bytes,
            ),
            (
                "hub.max_inflight_update_bytes",
                new.hub.max_inflight_update_bytes != cur.hub.max_inflight_update_bytes,
            ),
            (
                "hub.http_workers",
                new.hub.http_workers != cur.hub.http_workers,
            ),
        ] {
            if changed {
                notes.push(format!("{key} changed (needs a restart; left as it was)"));
            }
        }
        if let Ok(mut l) = self.limits.write() {
            *l = session_limits(&new);
        }
        self.max_pending.store(
            new.hub.max_pending_handshakes,
            std::sync::atomic::Ordering::SeqCst,
        );
        let mut applied = new.clone();
        // Restart-only keys stay as they were.
        applied.hub.bind = cur.hub.bind.clone();
        applied.hub.db = cur.hub.db.clone();
        applied.hub.state_dir = cur.hub.state_dir.clone();
        applied.hub.admin_token = cur.hub.admin_token.clone();
        applied.hub.shutdown_timeout_secs = cur.hub.shutdown_timeout_secs;
        applied.hub.blob_file_threshold_bytes = cur.hub.blob_file_threshold_bytes;
        applied.hub.max_inflight_update_bytes = cur.hub.max_inflight_update_bytes;
        applied.hub.http_workers = cur.hub.http_workers;
        let changed =
            futures_executor_block(self.hub.send(hub_actor::ApplyConfig(applied.clone())))?
                .map_err(|e| format!("hub unavailable: {e}"))?;
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
fn futures_executor_block<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a runtime for reload: {e}"))?;
    Ok(rt.block_on(f))
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

/// Everything loaded from the database at start.
pub struct Loaded {
    pub models: Vec<ModelState>,
    pub trainers: HashMap<String, TrainerInfo>,
    pub pending: usize,
}

/// Runs migrations, creates config models that do not exist yet, and loads
/// every model at its last committed version with its pending updates back
/// in the buffer. Blocking: call it off the executor.
pub fn load_state(cfg: &Config, path: &Path) -> Result<Loaded, HubError> {
    let blobs = db::BlobStore::for_db(path, cfg.hub.blob_file_threshold_bytes);
    let mut conn = db::connect(path)?;
    db::run_migrations(&mut conn)?;
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
        let split = crate::trainer::data::digits_split().ok();
        let eval = state::evaluate_builtin(&layout, &weights, split.as_ref().map(|s| &s.test));
        let metrics = serde_json::json!({"eval": eval.map(|e| serde_json::json!({"accuracy": e.accuracy, "loss": e.loss, "examples": e.examples, "dataset": "digits-test"}))});
        db::insert_model(
            &mut conn,
            &db::ModelRow {
                name: name.clone(),
                architecture: m.architecture.clone().unwrap_or_else(|| "digits".into()),
                layout: serde_json::to_string(&layout).unwrap_or_default(),
                settings: None,
                created_at: db::now(),
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
        let settings = if cfg.models.contains_key(&row.name) {
            cfg.aggregation_for(&row.name)
        } else {
            let overrides: crate::config::ModelConfig = row
                .settings
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            cfg.aggregation_settings(&overrides)
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
        for p in db::pending_updates(&mut conn, &row.name)? {
            let payload = match (p.payload, &p.payload_file) {
                (_, Some(f)) => blobs.get(f)?,
                (Some(b), None) => b,
                (None, None) => {
                    log::error!(
                        "pending update {} of {} has no payload",
                        p.update_id,
                        row.name
                    );
                    continue;
                }
            };
            st.push_payload(
                p.id,
                p.update_id.clone(),
                p.trainer,
                p.base_version as u64,
                p.num_examples as u64,
                &payload,
                now,
            )
            .map_err(|e| corrupt(format!("pending update {}: {e}", p.update_id)))?;
            // Keep the staleness recorded when it was accepted.
            if let Some(b) = st.buffer.last_mut() {
                b.staleness = p.staleness as u64;
            }
            pending_total += 1;
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
    let cfg2 = cfg.clone();
    let p2 = db_path.clone();
    let loaded = actix_web::rt::task::spawn_blocking(move || load_state(&cfg2, &p2))
        .await
        .map_err(|e| HubError::Other(e.to_string()))??;
    if loaded.pending > 0 {
        log::info!(
            "{} acknowledged update(s) back in the buffers after restart",
            loaded.pending
        );
    }
    let token = admin_token(&cfg)?;
    let test_data = crate::trainer::data::digits_split()
        .ok()
        .map(|s| Arc::new(s.test));

    // Actors start once, here, outside the per-worker server closure.
    let aggregator = MetricsAggregator::default();
    let hot = aggregator.hot.clone();
    let metrics = aggregator.start();
    let m2 = metrics.clone();
    let p3 = db_path.clone();
    // Handles of blob files kept open: at most 2048 and an eighth of the
    // open-files limit, which the connections need more.
    let handles = daemon::nofile_limit().map_or(128, |n| (n / 8).min(2048) as usize);
    let blobs =
        db::BlobStore::for_db(&db_path, cfg.hub.blob_file_threshold_bytes).keep_open(handles);
    let b2 = blobs.clone();
    let persister = SyncArbiter::start(1, move || {
        Persister::new(p3.clone(), b2.clone(), Some(m2.clone()))
    });
    let hub = Hub::new(
        cfg.clone(),
        loaded.models,
        loaded.trainers,
        persister.clone(),
        metrics.clone(),
        hot.clone(),
        test_data,
        blobs.clone(),
    )
    .start();
    let pool = db::pool(&db_path, 4)?;
    let limits = Arc::new(std::sync::RwLock::new(session_limits(&cfg)));
    let max_pending = Arc::new(AtomicUsize::new(cfg.hub.max_pending_handshakes));
    let reloader = Arc::new(Reloader {
        source,
        current: Mutex::new(cfg.clone()),
        hub: hub.clone(),
        limits: limits.clone(),
        max_pending: max_pending.clone(),
    });
    let r2 = reloader.clone();
    let state = http::AppState {
        hub: hub.clone(),
        metrics: metrics.clone(),
        pool,
        blobs,
        admin_token: Arc::from(token.as_str()),
        limits,
        handshakes: Arc::new(AtomicUsize::new(0)),
        max_pending_handshakes: max_pending,
        budget: ws::Budget::new(cfg.hub.max_inflight_update_bytes),
        hot,
        started_at: db::now(),
        reload: Arc::new(move || r2.reload()),
    };
    let max_body = cfg.hub.max_message_bytes;
    let addr = listener
        .local_addr()
        .map_err(|e| HubError::Io("listener".into(), e))?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(|c| http::configure(c, max_body))
    })
    .workers(http_workers(cfg.hub.http_workers))
    .max_connections(100_000)
    .backlog(4096)
    .disable_signals()
    .shutdown_timeout(cfg.hub.shutdown_timeout_secs)
    .listen(listener)
    .map_err(|e| HubError::Io(format!("listen on {addr}"), e))?
    .run();
    let handle = HubHandle {
        addr,
        admin_token: token,
        db_path,
        server: server.handle(),
        hub,
        persister,
        shutdown_timeout: Duration::from_secs(cfg.hub.shutdown_timeout_secs),
        reloader,
    };
    log::info!("kernal hub listening on http://{addr}");
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
        format!("http://{}", self.handle.addr)
    }
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.handle.addr)
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
