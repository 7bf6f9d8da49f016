//! `kernal bench`: a load benchmark of the hub. Starts its own hub (a child
//! process, so its peak RSS and CPU time can be read from /proc) or uses
//! `--hub`, connects N synthetic trainers as real WebSocket clients in this
//! process (no learning: each answers every version with a fixed delta),
//! runs R versions after a warm-up and prints the figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::aggregation::Strategy;
use crate::hub::child::ChildHub;
use crate::protocol::ModelLayout;
use crate::trainer::client;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub hub: Option<String>,
    pub admin_token: Option<String>,
    pub params: usize,
    pub trainers: usize,
    pub versions: u64,
    pub warmup: u64,
    pub min_updates: Option<usize>,
    pub strategy: Strategy,
    pub half: bool,
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub params: usize,
    pub trainers: usize,
    pub min_updates: usize,
    pub strategy: String,
    pub versions: u64,
    pub update_dtype: String,
    pub seconds_per_version_median: f64,
    pub seconds_per_version_min: f64,
    pub seconds_per_version_max: f64,
    pub versions_per_sec: f64,
    pub update_bytes_in_per_sec: f64,
    pub model_bytes_out_per_sec: f64,
    pub ack_latency_p50_ms: f64,
    pub ack_latency_p99_ms: f64,
    pub aggregation_seconds_median: Option<f64>,
    pub fold_rate_gb_per_sec: Option<f64>,
    pub hub_peak_rss_mib: Option<f64>,
    pub hub_cpu_seconds: Option<f64>,
    pub connect_seconds: f64,
    pub open_files_limit: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(String);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// The benchmark's own hub: limits sized for the run.
fn start_own_hub(args: &BenchArgs) -> Result<ChildHub, BenchError> {
    let mut hub = toml::Table::new();
    let max_msg = (args.params * 4 + (1 << 20)).max(256 << 20);
    hub.insert("max_message_bytes".into(), (max_msg as i64).into());
    hub.insert(
        "max_pending_handshakes".into(),
        ((args.trainers + 16) as i64).into(),
    );
    hub.insert("client_timeout_secs".into(), 120i64.into());
    // A thousand registrations queue for argon2; give them time.
    hub.insert("hello_timeout_secs".into(), 300i64.into());
    let mut root = toml::Table::new();
    root.insert("hub".into(), toml::Value::Table(hub));
    ChildHub::start(root).map_err(BenchError)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Shared {
    latencies: Mutex<Vec<f64>>,
    arrivals: Mutex<Vec<(u64, Instant)>>,
    highest: AtomicU64,
}

#[allow(clippy::too_many_arguments)]
async fn trainer(
    i: usize,
    ws_url: String,
    model: String,
    payload: Arc<Vec<u8>>,
    last_version: u64,
    measure_from: u64,
    shared: Arc<Shared>,
    ready: Arc<tokio::sync::Barrier>,
) -> Result<(), BenchError> {
    let cfg = WebSocketConfig {
        max_message_size: None,
        max_frame_size: None,
        ..Default::default()
    };
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(ws_url.as_str(), Some(cfg), true)
            .await
            .map_err(|e| BenchError(format!("trainer {i}: connect: {e}")))?;
    let hello = json!({"type": "hello", "name": format!("bench{i}"), "specialty": "bench",
                       "token": format!("bench-token-{i}"), "model": model});
    ws.send(Message::Text(hello.to_string()))
        .await
        .map_err(err)?;
    let mut version = None;
    let mut expect_weights = false;
    let mut pending: std::collections::HashMap<String, (u64, Instant)> =
        std::collections::HashMap::new();
    let mut first = true;
    let mut unanswered: Option<u64> = None;
    while let Some(m) = ws.next().await {
        let m = m.map_err(err)?;
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).map_err(err)?;
                match v["type"].as_str() {
                    Some("welcome") | Some("model") => {
                        version = v["version"].as_u64();
                        expect_weights = true;
                    }
                    Some("ack") => {
                        let id = v["update_id"].as_str().unwrap_or("");
                        if let Some((base, at)) = pending.remove(id) {
                            if base >= measure_from {
                                shared
                                    .latencies
                                    .lock()
                                    .map_err(err)?
                                    .push(at.elapsed().as_secs_f64() * 1000.0);
                            }
                        }
                        if pending.is_empty() {
                            if let Some(v) = unanswered.take() {
                                send_update(&mut ws, i, v, &payload, &mut pending).await?;
                            }
                        }
                    }
                    Some("error") => return Err(BenchError(format!("trainer {i}: {t}"))),
                    Some("goodbye") => return Ok(()),
                    _ => {}
                }
            }
            Message::Binary(_) if expect_weights => {
                expect_weights = false;
                let v = version.unwrap_or(0);
                if first {
                    first = false;
                    ready.wait().await;
                }
                if i == 0 {
                    shared
                        .arrivals
                        .lock()
                        .map_err(err)?
                        .push((v, Instant::now()));
                }
                shared.highest.fetch_max(v, Ordering::SeqCst);
                if v >= last_version {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                // Like a real trainer: one update in flight; answer the
                // newest version once the previous update is acknowledged.
                if pending.is_empty() {
                    send_update(&mut ws, i, v, &payload, &mut pending).await?;
                } else {
                    unanswered = Some(v);
                }
            }
            Message::Close(_) => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

type BenchWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends a delta against version `v` (the same bytes every time: no learning).
async fn send_update(
    ws: &mut BenchWs,
    i: usize,
    v: u64,
    payload: &Arc<Vec<u8>>,
    pending: &mut std::collections::HashMap<String, (u64, Instant)>,
) -> Result<(), BenchError> {
    let id = format!("b{i}-{v}");
    let header = json!({"type": "update", "update_id": id, "base_version": v, "num_examples": 1});
    pending.insert(id, (v, Instant::now()));
    ws.send(Message::Text(header.to_string()))
        .await
        .map_err(err)?;
    ws.send(Message::Binary(payload.as_ref().clone()))
        .await
        .map_err(err)
}

pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    let nofile = crate::hub::daemon::raise_nofile_limit();
    let own = match &args.hub {
        Some(_) => None,
        None => Some(start_own_hub(args)?),
    };
    let (base, token) = match (&args.hub, &own) {
        (Some(u), _) => (client::http_url(u), args.admin_token.clone()),
        (None, Some(h)) => (h.url(), Some(h.token.clone())),
        _ => return Err(BenchError("no hub".into())),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError(format!("hub at {base} not reachable")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let model = format!("bench-{}-{}", args.params, uuid::Uuid::new_v4().simple());
    let k = args.min_updates.unwrap_or(args.trainers).max(1);
    let token = token.ok_or_else(|| {
        BenchError(
            "--hub needs --admin-token (or KERNAL_ADMIN_TOKEN) to create the benchmark model"
                .into(),
        )
    })?;
    let r = http
        .post(format!("{base}/v1/models"))
        .bearer_auth(&token)
        .json(
            &json!({"name": model, "architecture": "flat", "params": args.params,
                      "aggregation": {"strategy": args.strategy.as_str(), "min_updates": k,
                                      "round_timeout_secs": 600.0, "max_staleness": 1000000,
                                      "staleness_exponent": 0.0}}),
        )
        .send()
        .await
        .map_err(err)?;
    if !r.status().is_success() {
        return Err(BenchError(format!(
            "create model: {}",
            r.text().await.unwrap_or_default()
        )));
    }
    let layout = ModelLayout::new(vec![("weights".into(), vec![args.params])]);
    let delta = vec![1e-4f32; args.params];
    let dtype = if args.half {
        safetensors::Dtype::F16
    } else {
        safetensors::Dtype::F32
    };
    let payload = Arc::new(layout.encode_as(&delta, None, dtype).map_err(err)?);
    drop(delta);
    let ws_url = client::ws_url(&base);
    let total = args.warmup + args.versions;
    let shared = Arc::new(Shared {
        latencies: Mutex::new(Vec::new()),
        arrivals: Mutex::new(Vec::new()),
        highest: AtomicU64::new(0),
    });
    let ready = Arc::new(tokio::sync::Barrier::new(args.trainers));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.trainers {
        let (u, m, p, s, r) = (
            ws_url.clone(),
            model.clone(),
            payload.clone(),
            shared.clone(),
            ready.clone(),
        );
        tasks.push(tokio::spawn(trainer(i, u, m, p, total, args.warmup, s, r)));
        if i % 50 == 49 {
            // Let the hub hash tokens for a batch before opening more.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for t in tasks {
        t.await.map_err(err)??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let arrivals = shared.arrivals.lock().map_err(err)?.clone();
    let connect_seconds = arrivals
        .first()
        .map(|(_, t)| t.duration_since(started).as_secs_f64())
        .unwrap_or(elapsed);
    let measured: Vec<&(u64, Instant)> =
        arrivals.iter().filter(|(v, _)| *v >= args.warmup).collect();
    let mut per_version: Vec<f64> = measured
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1).as_secs_f64() / (w[1].0 - w[0].0).max(1) as f64)
        .collect();
    per_version.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&per_version, 0.5);
    let mut lat = shared.latencies.lock().map_err(err)?.clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    let versions: Value = http
        .get(format!("{base}/v1/models/{model}/versions?limit=100000"))
        .send()
        .await
        .map_err(err)?
        .json()
        .await
        .map_err(err)?;
    let mut agg: Vec<f64> = versions["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|v| v["version"].as_u64().unwrap_or(0) > args.warmup)
        .filter_map(|v| v["metrics"]["aggregation_seconds"].as_f64())
        .collect();
    agg.sort_by(|a, b| a.total_cmp(b));
    let agg_median = (!agg.is_empty()).then(|| percentile(&agg, 0.5));
    let update_bytes = payload.len() as f64;
    let model_bytes = (args.params * 4) as f64;
    let f32_bytes_per_version = (k * args.params * 4) as f64;
    let (rss, cpu) = own.as_ref().map(|h| h.usage()).unwrap_or((None, None));
    let report = BenchReport {
        params: args.params,
        trainers: args.trainers,
        min_updates: k,
        strategy: args.strategy.as_str().into(),
        versions: args.versions,
        update_dtype: if args.half {
            "F16".into()
        } else {
            "F32".into()
        },
        seconds_per_version_median: median,
        seconds_per_version_min: per_version.first().copied().unwrap_or(0.0),
        seconds_per_version_max: per_version.last().copied().unwrap_or(0.0),
        versions_per_sec: if median > 0.0 { 1.0 / median } else { 0.0 },
        update_bytes_in_per_sec: if median > 0.0 {
            update_bytes * k as f64 / median
        } else {
            0.0
        },
        model_bytes_out_per_sec: if median > 0.0 {
            model_bytes * args.trainers as f64 / median
        } else {
            0.0
        },
        ack_latency_p50_ms: percentile(&lat, 0.5),
        ack_latency_p99_ms: percentile(&lat, 0.99),
        aggregation_seconds_median: agg_median,
        fold_rate_gb_per_sec: agg_median
            .filter(|a| *a > 0.0)
            .map(|a| f32_bytes_per_version / a / 1e9),
        hub_peak_rss_mib: rss,
        hub_cpu_seconds: cpu,
        connect_seconds,
        open_files_limit: nofile,
    };
    Ok(report)
}

pub fn render(r: &BenchReport) -> String {
    let opt =
        |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
    format!(
        "kernal bench: {} params, {} trainers, min_updates {}, {}, {} versions, {} updates\n\
         seconds per version   median {:.4}  min {:.4}  max {:.4}  ({:.1} versions/s)\n\
         update bytes in       {:.1} MB/s\n\
         model bytes out       {:.1} MB/s\n\
         ack latency           p50 {:.1} ms  p99 {:.1} ms\n\
         aggregation           {} s per version, fold rate {} GB/s\n\
         hub                   peak RSS {} MiB, CPU {} s\n\
         (connecting took {:.1} s; open files limit {})\n",
        r.params,
        r.trainers,
        r.min_updates,
        r.strategy,
        r.versions,
        r.update_dtype,
        r.seconds_per_version_median,
        r.seconds_per_version_min,
        r.seconds_per_version_max,
        r.versions_per_sec,
        r.update_bytes_in_per_sec / 1e6,
        r.model_bytes_out_per_sec / 1e6,
        r.ack_latency_p50_ms,
        r.ack_latency_p99_ms,
        opt(r.aggregation_seconds_median, 4),
        opt(r.fold_rate_gb_per_sec, 2),
        opt(r.hub_peak_rss_mib, 0),
        opt(r.hub_cpu_seconds, 1),
        r.connect_seconds,
        r.open_files_limit
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
    )
}

/// The CLI: prints the figures (or one JSON object), returns the exit code.
pub fn run_cli(args: BenchArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kernal bench: {e}");
            return 1;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print!("{}", render(&r));
            }
            0
        }
        Err(e) => {
            eprintln!("kernal bench: {e}");
            1
        }
    }
}
