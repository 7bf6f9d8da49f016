//! Starting a hub: its actors and HTTP server wired together, and the
//! handles that stop it ([`HubHandle`] inside an actix system, [`RunningHub`]
//! on its own thread).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};

use super::api;
use super::hub_actor::{self, Hub};
use super::limits::{http_workers, nofile_limit};
use super::metrics::MetricsAggregator;
use super::outbox;
use super::persister::{self, Persister};
use super::recovery::load_state;
use super::reload::{self, ConfigSource};
use super::secrets::{self, admin_token};
use super::tls;
use super::ws;
use crate::config::Config;
use crate::db;
use crate::error::HubError;

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
    pub fn reload(&self) -> Result<Vec<String>, reload::ReloadError> {
        self.reloader.reload()
    }
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
    let tokens =
        secrets::TokenKey::load_or_create(&cfg).map_err(|e| HubError::Other(e.to_string()))?;
    let test_data = crate::data::digits_split().ok().map(|s| Arc::new(s.test));

    // Actors start once, here, outside the per-worker server closure.
    let aggregator = MetricsAggregator::default();
    let hot = aggregator.hot.clone();
    let metrics = aggregator.start();
    let (persister_metrics, persister_db) = (metrics.clone(), db_path.clone());
    // Handles of blob files kept open: at most 2048 and an eighth of the
    // open-files limit, which the connections need more.
    let handles = nofile_limit().map_or(128, |n| (n / 8).min(2048) as usize);
    let health = Arc::new(db::StorageHealth::default());
    health.set_lost_acknowledged(loaded.lost_acknowledged);
    let blobs = db::BlobStore::for_db(&db_path, cfg.hub.blob_file_threshold_bytes)
        .keep_open(handles)
        .with_health(health);
    let persister_blobs = blobs.clone();
    let cache_kib = cfg.hub.db_cache_kib;
    let persister = SyncArbiter::start(1, move || {
        Persister::new(
            persister_db.clone(),
            persister_blobs.clone(),
            Some(persister_metrics.clone()),
        )
        .with_cache_kib(cache_kib)
    });
    let pool = db::pool(&db_path, 4, cache_kib)?;
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
    let pacer = crate::hub::pacer::Pacer::new(cfg.hub.max_pending_updates);
    pacer.spawn_ticker(std::time::Duration::from_millis(10));
    let state = api::AppState {
        hub: hub.clone(),
        metrics: metrics.clone(),
        persister: persister.clone(),
        pool,
        blobs,
        admin_token: Arc::from(token.as_str()),
        tokens,
        config: live,
        handshakes: Arc::default(),
        budget: ws::Budget::new(cfg.hub.max_inflight_update_bytes),
        hot,
        pacer,
        started_at: db::now(),
        reload: Arc::new(move |allow_removed_keys| reload_handle.reload_with(allow_removed_keys)),
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
    // The dispatcher keeps a connection's write buffer (up to 128 KiB) for
    // its next response: filled to 8 KiB at a time from small slices (see
    // `outbox::queue::SMALL_SLICE`), it stays at about 16 KiB; 10,000
    // trainers' connections held 640 MB in 64 KiB ones.
    .h1_write_buffer_size(8 * 1024)
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
