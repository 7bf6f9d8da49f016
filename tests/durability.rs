//! The durability rule against a real `kernal hub` process: SIGKILL after
//! acks loses nothing acknowledged and applies nothing twice; SIGTERM tells
//! trainers, exits 0 and leaves the database consistent.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;

/// A hub process on a port the kernel picks (it reports it in its address
/// file), every payload and checkpoint in blob files: the crash path of files,
/// spooled and written after receipt alike.
fn durable_hub(dir: &std::path::Path) -> HubProc {
    HubProc::new(
        dir,
        "",
        &[
            ("KERNAL__MODELS__DIGITS__MIN_UPDATES", "3"),
            ("KERNAL__MODELS__DIGITS__STRATEGY", "fedavg"),
            ("KERNAL__MODELS__DIGITS__ROUND_TIMEOUT_SECS", "1"),
            ("KERNAL__HUB__BLOB_FILE_THRESHOLD_BYTES", "1"),
            // The digits updates (19 KB) are spooled to their files as they
            // arrive; the side model's (a few bytes) are held in memory.
            ("KERNAL__HUB__SPOOL_MIN_BYTES", "8192"),
            ("RUST_LOG", "warn"),
        ],
    )
}

async fn wait_healthy(base: &str) {
    let url = format!("{base}/healthz");
    wait_for("hub health", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(r) if r.status().is_success() => Some(()),
                _ => None,
            }
        }
    })
    .await;
}

/// A trainer that keeps sending small updates, recording each ack.
async fn pump(ws: String, name: String, acked: Arc<Mutex<Vec<String>>>, count: Arc<AtomicUsize>) {
    let layout = digits_layout();
    let n = layout.num_params();
    let (mut r, w, _) = Raw::hello(&ws, &name, "tok", "digits").await;
    let mut version = w["version"].as_u64().unwrap();
    for i in 0.. {
        let id = format!("{name}-{i}");
        let payload = layout
            .encode(&vec![0.001 * (i % 7) as f32; n], None)
            .unwrap();
        r.send_json(
            json!({"type":"update","update_id":id,"base_version":version,"num_examples":10}),
        )
        .await;
        if r.ws_send_binary(payload).await.is_err() {
            return;
        }
        loop {
            let f = r.next_frame_opt().await;
            let Some(f) = f else { return };
            match f {
                Frame::Json(v) if v["type"] == "model" => {
                    version = version.max(v["version"].as_u64().unwrap());
                }
                Frame::Json(v) if v["type"] == "ack" && v["update_id"] == id.as_str() => {
                    acked.lock().unwrap().push(format!("{name}/{id}"));
                    count.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Frame::Json(v) if v["type"] == "error" => panic!("unexpected refusal {v}"),
                Frame::Closed(_) => return,
                _ => {}
            }
        }
    }
}

trait RawExt {
    async fn ws_send_binary(&mut self, b: Vec<u8>) -> Result<(), ()>;
    async fn next_frame_opt(&mut self) -> Option<Frame>;
}

impl RawExt for Raw {
    async fn ws_send_binary(&mut self, b: Vec<u8>) -> Result<(), ()> {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Binary(b))
            .await
            .map_err(|_| ())
    }
    async fn next_frame_opt(&mut self) -> Option<Frame> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).ok().map(Frame::Json),
                Ok(Message::Binary(b)) => return Some(Frame::Binary(b)),
                Ok(Message::Close(_)) | Err(_) => return None,
                _ => {}
            }
        }
    }
}

async fn ledger(base: &str) -> Vec<serde_json::Value> {
    get_json(&format!("{base}/v1/updates?model=digits&limit=100000")).await["updates"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_acks_loses_nothing_and_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = durable_hub(dir.path());
    hub.spawn("127.0.0.1:0").expect("hub starts");
    let base = hub.url();
    wait_healthy(&base).await;
    let ws = hub.ws();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in ["k1", "k2", "k3"] {
        tasks.push(tokio::spawn(pump(
            ws.clone(),
            t.into(),
            acked.clone(),
            count.clone(),
        )));
    }
    wait_for("20 acks", Duration::from_secs(60), || {
        let c = count.clone();
        async move { (c.load(Ordering::SeqCst) >= 20).then_some(()) }
    })
    .await;
    // A second model that only folds at 30 updates: what a trainer sends
    // to it right before the kill is acknowledged but certainly not applied.
    let r = reqwest::Client::new()
        .post(format!(
            "{base}/v1/models?name=side&min_updates=30&round_timeout_secs=3600"
        ))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(
            kernal_hub::protocol::ModelLayout::new(vec![("w".into(), vec![4])])
                .encode(&[0.0; 4], None)
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let side = kernal_hub::protocol::ModelLayout::new(vec![("w".into(), vec![4])]);
    let (mut s, _, _) = Raw::hello(&ws, "side-t", "tok", "side").await;
    let mut side_acked = Vec::new();
    for i in 0..10 {
        let id = format!("side-{i}");
        s.send_update(&id, 0, 1, side.encode(&[1.0; 4], None).unwrap())
            .await;
        assert_eq!(s.outcome(&id).await["type"], "ack");
        side_acked.push(id);
    }
    // SIGKILL while the digits trainers are still sending.
    hub.kill9();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20);

    // Restart on the same database (a new port: the old one may linger).
    hub.spawn("127.0.0.1:0").expect("hub restarts");
    let base2 = hub.url();
    wait_healthy(&base2).await;
    let rows = ledger(&base2).await;
    let by_id: HashMap<String, &serde_json::Value> = rows
        .iter()
        .filter(|u| u["status"] != "refused")
        .map(|u| {
            (
                format!(
                    "{}/{}",
                    u["trainer"].as_str().unwrap(),
                    u["update_id"].as_str().unwrap()
                ),
                u,
            )
        })
        .collect();
    for id in &acked {
        assert!(
            by_id.contains_key(id),
            "acknowledged update {id} is missing after SIGKILL"
        );
    }
    let pending_after_restart = rows.iter().filter(|u| u["status"] == "pending").count();
    let side_rows = get_json(&format!("{base2}/v1/updates?model=side")).await;
    let side_pending: Vec<&str> = side_rows["updates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["status"] == "pending")
        .map(|u| u["update_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        side_pending, side_acked,
        "acknowledged side updates are back, pending"
    );
    let status = get_json(&format!("{base2}/v1/models/side")).await;
    assert_eq!(
        status["waiting"]["buffered"], 10,
        "pending updates are back in the buffer: {status}"
    );
    eprintln!(
        "{} acks before SIGKILL; {} acknowledged updates were pending at restart",
        acked.len(),
        pending_after_restart
    );
    // Pending updates were reloaded; the round timeout folds them.
    wait_for("no pending updates", Duration::from_secs(30), || {
        let base2 = base2.clone();
        async move {
            let rows = ledger(&base2).await;
            rows.iter().all(|u| u["status"] != "pending").then_some(())
        }
    })
    .await;
    let rows = ledger(&base2).await;
    let mut seen = HashSet::new();
    for u in rows.iter().filter(|u| u["status"] != "refused") {
        let id = format!(
            "{}/{}",
            u["trainer"].as_str().unwrap(),
            u["update_id"].as_str().unwrap()
        );
        assert!(seen.insert(id.clone()), "{id} is in the ledger twice");
        assert_eq!(u["status"], "applied");
        assert!(u["applied_in_version"].as_i64().unwrap() >= 1);
    }
    // Every version's lists of consumed updates (folded, or replaced by a
    // newer update of the same trainer before the fold: one vote per
    // trainer): each id exactly once overall.
    let versions = get_json(&format!("{base2}/v1/models/digits/versions")).await;
    let mut applied_count: HashMap<String, usize> = HashMap::new();
    let mut last = 0;
    for v in versions["versions"].as_array().unwrap() {
        let ver = v["version"].as_i64().unwrap();
        assert_eq!(
            ver,
            last + if ver == 0 { 0 } else { 1 },
            "versions are contiguous"
        );
        last = ver;
        for list in [
            "applied_update_ids",
            "superseded_update_ids",
            "screened_update_ids",
        ] {
            if let Some(ids) = v["metrics"][list].as_array() {
                for id in ids {
                    *applied_count
                        .entry(id.as_str().unwrap().to_string())
                        .or_default() += 1;
                }
            }
        }
    }
    for id in &acked {
        assert_eq!(
            applied_count.get(id),
            Some(&1),
            "{id} applied {:?} times",
            applied_count.get(id)
        );
    }
    assert!(applied_count.values().all(|c| *c == 1));

    // SIGTERM: the trainer is told, the hub exits 0, the database is consistent.
    let (mut t, _, _) = Raw::hello(&hub.ws(), "k1", "tok", "digits").await;
    let mut child = hub.child.take().expect("running");
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let bye = t.expect_type("goodbye").await;
    assert!(bye["reason"].as_str().unwrap().contains("shutting down"));
    let status = wait_for("hub exit", Duration::from_secs(30), || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    let mut conn = kernal_hub::db::connect(&dir.path().join("hub.db")).unwrap();
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Check {
        #[diesel(sql_type = diesel::sql_types::Text)]
        integrity_check: String,
    }
    let c: Check = diesel::sql_query("PRAGMA integrity_check")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(c.integrity_check, "ok");
    let open_sessions = kernal_hub::db::close_stale_sessions(&mut conn).unwrap();
    assert_eq!(open_sessions, 0, "every session was closed on SIGTERM");
}
