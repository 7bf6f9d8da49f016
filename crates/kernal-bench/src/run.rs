//! One benchmark run: the hub (its own or `--hub`), the model, the fleet of
//! synthetic trainers, then the figures from the hub's record and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::args::BenchArgs;
use super::error::{err, BenchError};
use super::hub::start_own_hub;
use super::measure::{percentile, sample_traffic, traffic_rates};
use super::rejoin::{measure_rejoin, trainer_tokens};
use super::report::BenchReport;
use super::trainer::{trainer, Shared, TrainerRun};
use super::wire::Wire;
use kernal_client::connection;
use kernal_core::protocol::ModelLayout;

pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    let nofile = kernal_hub::hub::daemon::raise_nofile_limit();
    let mut own = match &args.hub {
        Some(_) => None,
        None => Some(start_own_hub(args)?),
    };
    let (base, token) = match (&args.hub, &own) {
        (Some(u), _) => (connection::http_url(u), args.admin_token.clone()),
        (None, Some(h)) => (h.url(), Some(h.token.clone())),
        _ => return Err(BenchError("no hub".into())),
    };
    let tls = kernal_client::tls::client_config(args.ca.as_deref()).map_err(err)?;
    let http = kernal_client::tls::http_client(&tls, None).map_err(err)?;
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
    let tokens = trainer_tokens(&http, &base, &token, args.trainers, own.is_some()).await?;
    let layout = ModelLayout::new(vec![("weights".into(), vec![args.params])]);
    let delta = vec![1e-4f32; args.params];
    let dtype = if args.half {
        safetensors::Dtype::F16
    } else {
        safetensors::Dtype::F32
    };
    let payload = layout.encode_as(&delta, None, dtype).map_err(err)?;
    drop(delta);
    let wire = Arc::new(Wire {
        payload: Arc::new(payload),
    });
    let ws_url = connection::ws_url(&base);
    let total = args.warmup + args.versions;
    let shared = Arc::new(Shared {
        latencies: Mutex::new(Vec::new()),
        arrivals: Mutex::new(Vec::new()),
        highest: AtomicU64::new(0),
    });
    let ready = Arc::new(tokio::sync::Barrier::new(args.trainers));
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_traffic(
        http.clone(),
        format!("{base}/metrics"),
        stop_sampling.clone(),
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.trainers {
        let (u, m, p, s, r) = (
            ws_url.clone(),
            model.clone(),
            wire.clone(),
            shared.clone(),
            ready.clone(),
        );
        tasks.push(tokio::spawn(trainer(TrainerRun {
            i,
            token: tokens.clone(),
            ws_url: u,
            model: m,
            wire: p,
            last_version: total,
            measure_from: args.warmup,
            shared: s,
            ready: r,
            tls: tls.clone(),
        })));
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
    // Seconds per version from the hub's own record of when each version
    // was made: what a trainer sees is bunched by its own scheduling.
    let made: Vec<(u64, f64)> = versions["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|v| v["version"].as_u64().unwrap_or(0) >= args.warmup)
        .filter_map(|v| {
            let t = chrono::DateTime::parse_from_rfc3339(v["created_at"].as_str()?).ok()?;
            Some((v["version"].as_u64()?, t.timestamp_micros() as f64 / 1e6))
        })
        .collect();
    let mut made = made;
    made.sort_by_key(|(v, _)| *v);
    let mut per_version: Vec<f64> = made.windows(2).map(|w| w[1].1 - w[0].1).collect();
    per_version.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&per_version, 0.5);
    stop_sampling.store(true, Ordering::SeqCst);
    let samples = sampler.await.map_err(err)?;
    let window = match (made.first(), made.last()) {
        (Some(a), Some(b)) if b.1 > a.1 => Some((a.1, b.1)),
        _ => None,
    };
    let (bytes_in_rate, bytes_out_rate) = window
        .map(|(t0, t1)| traffic_rates(&samples, t0, t1))
        .unwrap_or((0.0, 0.0));
    let f32_bytes_per_version = (k * args.params * 4) as f64;
    let (rss, cpu) = own.as_ref().map(|h| h.usage()).unwrap_or((None, None));
    let rejoin = match (&mut own, args.rejoin) {
        (Some(h), true) => Some(measure_rejoin(h, &tokens, &ws_url, &model, &tls, &http).await?),
        (None, true) => {
            return Err(BenchError(
                "--rejoin restarts the bench's own hub; it cannot be used with --hub".into(),
            ))
        }
        _ => None,
    };
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
        update_bytes_in_per_sec: bytes_in_rate,
        model_bytes_out_per_sec: bytes_out_rate,
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
        rejoin_seconds: rejoin.as_ref().map(|r| r.0),
        rejoin_median_seconds: rejoin.as_ref().map(|r| r.1),
        rejoin_refused_upgrades: rejoin.as_ref().map(|r| r.2),
    };
    Ok(report)
}
