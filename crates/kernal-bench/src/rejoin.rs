//! The fleet's credentials and its rejoining after a hub restart
//! (`kernal bench --rejoin`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::connect::{connect, Upgrade};
use super::error::{err, BenchError};
use super::frames::{FrameIn, In, Reply};
use super::measure::percentile;
use super::wire::Wire;
use kernal_hub::hub::child::ChildHub;

/// Trainer `i`'s hello with its token.
pub(super) fn hello_frame(i: usize, model: &str, token: &str) -> Vec<u8> {
    let hello = json!({"type": "hello", "name": format!("bench{i}"), "specialty": "bench",
                       "token": token, "model": model});
    Wire::frame(0x1, hello.to_string().as_bytes())
}

/// The trainers' tokens. The bench's own hub issues them
/// (`POST /v1/trainer-tokens`: checked with a fast keyed hash, as a fleet
/// would be given); against `--hub` the names `bench{i}` may be registered
/// from an earlier run, so they keep fixed tokens (argon2, checked slowly).
pub(super) async fn trainer_tokens(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    trainers: usize,
    own_hub: bool,
) -> Result<Arc<Vec<String>>, BenchError> {
    if !own_hub {
        return Ok(Arc::new(
            (0..trainers).map(|i| format!("bench-token-{i}")).collect(),
        ));
    }
    let mut tokens = Vec::with_capacity(trainers);
    while tokens.len() < trainers {
        let count = (trainers - tokens.len()).min(10_000);
        let r = http
            .post(format!("{base}/v1/trainer-tokens?count={count}"))
            .bearer_auth(admin)
            .send()
            .await
            .map_err(err)?;
        if !r.status().is_success() {
            return Err(BenchError(format!(
                "issue trainer tokens: {}",
                r.text().await.unwrap_or_default()
            )));
        }
        let v: Value = r.json().await.map_err(err)?;
        let got = v["tokens"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if got.is_empty() {
            return Err(BenchError(
                "issue trainer tokens: none in the answer".into(),
            ));
        }
        tokens.extend(got.iter().filter_map(|t| t.as_str().map(str::to_string)));
    }
    tokens.truncate(trainers);
    Ok(Arc::new(tokens))
}

/// One trainer of a fleet reconnecting after a hub restart: retries a
/// refused upgrade like the reference trainer (exponential backoff with
/// jitter) until the hub welcomes it; returns when, and how many refusals.
async fn rejoin_one(
    i: usize,
    token: &str,
    ws_url: &str,
    model: &str,
    tls: &Arc<rustls::ClientConfig>,
    start: Instant,
) -> Result<(f64, u64), BenchError> {
    use rand::Rng;
    let mut refused = 0u64;
    for attempt in 1..=200u32 {
        match connect(ws_url, tls).await {
            Ok((conn, rest)) => {
                let (rd, mut wr) = conn.split();
                wr.write_all(&hello_frame(i, model, token))
                    .await
                    .map_err(err)?;
                let mut frames = FrameIn {
                    sock: rd,
                    buf: rest,
                };
                while let Some(m) = frames.next().await? {
                    if let In::Text(t) = m {
                        let v: Reply<'_> = serde_json::from_slice(&t).map_err(err)?;
                        match v.kind {
                            "welcome" => {
                                let at = start.elapsed().as_secs_f64();
                                let _ = wr
                                    .write_all(&Wire::frame(0x8, &1000u16.to_be_bytes()))
                                    .await;
                                return Ok((at, refused));
                            }
                            "error" => {
                                return Err(BenchError(format!(
                                    "trainer {i} rejoining: {}",
                                    String::from_utf8_lossy(&t)
                                )))
                            }
                            _ => {}
                        }
                    }
                }
            }
            Err(Upgrade::Refused(503, _)) => refused += 1,
            Err(e) if attempt > 20 => {
                return Err(BenchError(format!("trainer {i} rejoining: {e}")))
            }
            Err(_) => {}
        }
        let base = 0.25f64 * 2f64.powi(attempt.min(10) as i32 - 1);
        let wait = base.min(10.0) * rand::thread_rng().gen_range(0.5..1.5);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    Err(BenchError(format!("trainer {i} never rejoined")))
}

/// SIGKILLs the own hub, restarts it on the same database and port, and lets
/// every trainer reconnect at once: (seconds until the last is welcomed,
/// the median, refused upgrades).
pub(super) async fn measure_rejoin(
    hub: &mut ChildHub,
    tokens: &Arc<Vec<String>>,
    ws_url: &str,
    model: &str,
    tls: &Arc<rustls::ClientConfig>,
    http: &reqwest::Client,
) -> Result<(f64, f64, u64), BenchError> {
    hub.kill9();
    hub.spawn().map_err(BenchError)?;
    let base = hub.url();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError(format!(
                "the restarted hub did not answer: {}",
                hub.log_tail(5)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..tokens.len())
        .map(|i| {
            let (u, m, t) = (ws_url.to_string(), model.to_string(), tls.clone());
            let tokens = tokens.clone();
            tokio::spawn(async move { rejoin_one(i, &tokens[i], &u, &m, &t, start).await })
        })
        .collect();
    let mut times = Vec::with_capacity(tokens.len());
    let mut refused = 0;
    for t in tasks {
        let (at, r) = t.await.map_err(err)??;
        times.push(at);
        refused += r;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((
        times.last().copied().unwrap_or(0.0),
        percentile(&times, 0.5),
        refused,
    ))
}
