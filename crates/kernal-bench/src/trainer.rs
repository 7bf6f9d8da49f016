//! One synthetic trainer: hello, then an update answering every version
//! (one in flight, like a real trainer), timing each acknowledgement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::connect::connect;
use super::error::{err, BenchError};
use super::frames::{FrameIn, In, Reply};
use super::rejoin::hello_frame;
use super::wire::Wire;

/// What the trainers measure together.
pub(crate) struct Shared {
    pub(crate) latencies: Mutex<Vec<f64>>,
    pub(crate) arrivals: Mutex<Vec<(u64, Instant)>>,
    pub(crate) highest: AtomicU64,
}

enum Out {
    Frame(Vec<u8>),
    Update { header: Vec<u8> },
    Close,
}

/// What one synthetic trainer needs to run.
pub(crate) struct TrainerRun {
    pub(crate) i: usize,
    pub(crate) token: Arc<Vec<String>>,
    pub(crate) ws_url: String,
    pub(crate) model: String,
    pub(crate) wire: Arc<Wire>,
    pub(crate) last_version: u64,
    pub(crate) measure_from: u64,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ready: Arc<tokio::sync::Barrier>,
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

pub(crate) async fn trainer(t: TrainerRun) -> Result<(), BenchError> {
    let TrainerRun {
        i,
        token,
        ws_url,
        model,
        wire,
        last_version,
        measure_from,
        shared,
        ready,
        tls,
    } = t;
    let (sock, rest) = connect(&ws_url, &tls)
        .await
        .map_err(|e| BenchError(format!("trainer {i}: connect: {e}")))?;
    let (rd, mut wr) = sock.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Out>();
    // Writes in their own task: a 4 MB update going out never stops this
    // trainer from reading the model coming in.
    let writer_wire = wire.clone();
    let writer = tokio::spawn(async move {
        let mut scratch = Vec::new();
        while let Some(o) = rx.recv().await {
            let r = match o {
                Out::Frame(f) => wr.write_all(&f).await,
                Out::Update { header } => {
                    writer_wire
                        .send_update(&mut wr, &header, &mut scratch)
                        .await
                }
                Out::Close => {
                    let _ = wr
                        .write_all(&Wire::frame(0x8, &1000u16.to_be_bytes()))
                        .await;
                    break;
                }
            };
            if r.is_err() {
                break;
            }
        }
    });
    let mut frames = FrameIn {
        sock: rd,
        buf: rest,
    };
    let send = |o: Out| {
        tx.send(o)
            .map_err(|_| BenchError(format!("trainer {i}: writer gone")))
    };
    send(Out::Frame(hello_frame(i, &model, &token[i])))?;
    let mut version = None;
    let mut expect_weights = false;
    let mut pending: std::collections::HashMap<String, (u64, Instant)> =
        std::collections::HashMap::new();
    let mut first = true;
    let mut unanswered: Option<u64> = None;
    let update = |v: u64, pending: &mut std::collections::HashMap<String, (u64, Instant)>| {
        let id = format!("b{i}-{v}");
        let header =
            json!({"type": "update", "update_id": id, "base_version": v, "num_examples": 1});
        pending.insert(id, (v, Instant::now()));
        Out::Update {
            header: Wire::frame(0x1, header.to_string().as_bytes()),
        }
    };
    let result = loop {
        let m = match frames.next().await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match m {
            In::Text(t) => {
                let v: Reply<'_> = serde_json::from_slice(&t).map_err(err)?;
                match v.kind {
                    "welcome" | "model" => {
                        version = v.version;
                        expect_weights = true;
                    }
                    "ack" => {
                        let id = v.update_id.unwrap_or("");
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
                                send(update(v, &mut pending))?;
                            }
                        }
                    }
                    "error" => {
                        break Err(BenchError(format!(
                            "trainer {i}: {}",
                            String::from_utf8_lossy(&t)
                        )))
                    }
                    "goodbye" => break Ok(()),
                    _ => {}
                }
            }
            In::Binary if expect_weights => {
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
                    break Ok(());
                }
                // Like a real trainer: one update in flight; answer the
                // newest version once the previous update is acknowledged.
                if pending.is_empty() {
                    send(update(v, &mut pending))?;
                } else {
                    unanswered = Some(v);
                }
            }
            In::Binary => {}
            In::Ping(p) => send(Out::Frame(Wire::frame(0xA, &p)))?,
            In::Close => break Ok(()),
        }
    };
    let _ = tx.send(Out::Close);
    drop(tx);
    let _ = writer.await;
    result
}
