//! Hostile and careless clients against a real hub: every attack of the
//! hardening issue, reproduced, with the hub refusing it with a stable code
//! while a well-behaved trainer keeps getting acks. Each test is named
//! after the defect it keeps fixed.

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post_json(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = client().post(url).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The flat delta of every value `v`, for the digits model.
fn digits_delta(v: f32) -> Vec<u8> {
    let layout = digits_layout();
    layout.encode(&vec![v; layout.num_params()], None).unwrap()
}

// ------------------------------------------------------------------ 1

/// Defect 1: three updates of values near 3e38 made the next version
/// non-finite. Now the norm bound refuses them; with the bound off, the
/// poisoned fold is abandoned and its updates refused; and an admin can
/// roll a model back to a kept checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_updates_never_reach_a_committed_version_and_rollback_restores() {
    let hub = start_hub(|c| {
        let d = c.models.get_mut("digits").unwrap();
        d.aggregation.min_updates = Some(3);
        d.aggregation.strategy = Some(kernal_hub::aggregation::Strategy::Fedavg);
    });
    let url = hub.url();
    let (mut mallory, _, _) = Raw::hello(&hub.ws(), "mallory", "m", "digits").await;
    for i in 0..3 {
        let id = format!("p{i}");
        mallory
            .send_update(&id, 0, 1_000_000, digits_delta(3e38))
            .await;
        let e = mallory.outcome(&id).await;
        assert_eq!(e["code"], "update_too_large_norm", "{e}");
        assert_eq!(e["fatal"], false);
    }
    let mut honest = Vec::new();
    for n in ["h1", "h2", "h3"] {
        honest.push(Raw::hello(&hub.ws(), n, "t", "digits").await.0);
    }
    for (i, h) in honest.iter_mut().enumerate() {
        h.send_update(&format!("u{i}"), 0, 10, digits_delta(0.01))
            .await;
        assert_eq!(h.outcome(&format!("u{i}")).await["type"], "ack");
    }
    let (v, bytes) = honest[0].wait_version(1).await;
    assert_eq!(v, 1);
    let w1 = digits_layout().decode(&bytes).unwrap();
    assert!(w1.iter().all(|x| x.is_finite()));

    // With the bound off, poisoned updates are accepted, but the fold they
    // would make is abandoned: they are refused, the honest one is kept.
    let (s, b) = post_json(
        &format!("{url}/v1/models"),
        Some(ADMIN),
        json!({"name": "open", "aggregation": {"strategy": "fedavg", "min_updates": 3,
               "max_update_norm": 0.0}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let mut conns = Vec::new();
    for (n, v) in [("o1", 3e38f32), ("o2", -3e38), ("o3", 0.01)] {
        let (mut r, _, _) = Raw::hello(&hub.ws(), n, "t", "open").await;
        r.send_update(&format!("{n}-0"), 0, 1000, digits_delta(v))
            .await;
        assert_eq!(r.outcome(&format!("{n}-0")).await["type"], "ack");
        conns.push(r);
    }
    let ledger = wait_for(
        "the poisoned updates refused",
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move {
                let l = get_json(&format!("{url}/v1/updates?model=open&status=refused")).await;
                (l["updates"].as_array()?.len() == 2).then_some(l)
            }
        },
    )
    .await;
    for u in ledger["updates"].as_array().unwrap() {
        assert_eq!(u["refusal_code"], "non_finite_result", "{u}");
        assert!(u["trainer"] == "o1" || u["trainer"] == "o2");
    }
    let m = get_json(&format!("{url}/v1/models/open")).await;
    assert_eq!(m["version"], 0, "nothing was committed");
    assert_eq!(
        m["waiting"]["buffered"], 1,
        "the honest update went back: {m}"
    );
    let status = get_json(&format!("{url}/v1/status")).await;
    assert!(
        status["metrics"]["recent_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "fold_abandoned" && e["model"] == "open"),
        "an event says so"
    );
    // Two more honest updates: version 1, finite, with the kept one in it.
    for n in ["o4", "o5"] {
        let (mut r, _, _) = Raw::hello(&hub.ws(), n, "t", "open").await;
        r.send_update(&format!("{n}-0"), 0, 10, digits_delta(0.02))
            .await;
        assert_eq!(r.outcome(&format!("{n}-0")).await["type"], "ack");
        conns.push(r);
    }
    let (_, bytes) = conns[2].wait_version(1).await;
    assert!(digits_layout()
        .decode(&bytes)
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
    let v1 = get_json(&format!("{url}/v1/models/open/versions/1")).await;
    let applied = v1["metrics"]["applied_update_ids"].to_string();
    assert!(applied.contains("o3/o3-0"), "{applied}");

    // Rollback: digits is at version 1; make version 2, then restore 1.
    for (i, h) in honest.iter_mut().enumerate() {
        h.send_update(&format!("v{i}"), 1, 10, digits_delta(0.5))
            .await;
        assert_eq!(h.outcome(&format!("v{i}")).await["type"], "ack");
    }
    honest[0].wait_version(2).await;
    let (s, e) = post_json(
        &format!("{url}/v1/models/digits/rollback"),
        None,
        json!({"version": 1}),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (401, Some("unauthorized")));
    let (s, e) = post_json(
        &format!("{url}/v1/models/digits/rollback"),
        Some(ADMIN),
        json!({"version": 2}),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (409, Some("conflict")),
        "not older than the current version: {e}"
    );
    let (s, r) = post_json(
        &format!("{url}/v1/models/digits/rollback"),
        Some(ADMIN),
        json!({"version": 1}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["version"].as_u64(), r["restored"].as_u64()),
        (Some(3), Some(1))
    );
    let (v, bytes) = honest[1].wait_version(3).await;
    assert_eq!(v, 3, "trainers get the restored version");
    assert_eq!(digits_layout().decode(&bytes).unwrap(), w1);
    let v3 = get_json(&format!("{url}/v1/models/digits/versions/3")).await;
    assert_eq!(v3["parent"], 2, "lineage kept: {v3}");
    assert_eq!(v3["metrics"]["rollback"]["restored_version"], 1);
    let (s, _) = post_json(
        &format!("{url}/v1/models/nope/rollback"),
        Some(ADMIN),
        json!({"version": 0}),
    )
    .await;
    assert_eq!(s, 404);
}

// ------------------------------------------------------------------ 2

/// Defect 2: `round_timeout_secs: 1e300` (or 1e19) panicked the hub actor
/// and left a zombie. Every numeric setting is range-checked where it
/// enters, with the key and the range in the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_settings_are_refused_naming_key_and_range_wherever_they_enter() {
    let hub = start_hub(|c| c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(1));
    let url = hub.url();
    for v in ["1e300", "1e19", "-1", "0"] {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"name": "t{}", "aggregation": {{"round_timeout_secs": {v}}}}}"#,
            v.len()
        ))
        .unwrap();
        let (s, e) = post_json(&format!("{url}/v1/models"), Some(ADMIN), body).await;
        assert_eq!(s, 400, "{v}: {e}");
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains("round_timeout_secs") && m.contains("604800"),
            "{m}"
        );
    }
    // The same through the query string of a safetensors upload.
    let weights = ModelLayoutExt::tiny();
    let r = client()
        .post(format!("{url}/v1/models?name=q&round_timeout_secs=1e300"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(weights)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("round_timeout_secs"));
    // The hub serves on: an update is acknowledged and folded.
    let (mut t, _, _) = Raw::hello(&hub.ws(), "after", "t", "digits").await;
    t.send_update("a", 0, 1, digits_delta(0.0)).await;
    assert_eq!(t.outcome("a").await["type"], "ack");
    t.wait_version(1).await;
    assert_eq!(get_json(&format!("{url}/healthz")).await["status"], "ok");

    // Through the environment and the config file: the hub does not start,
    // exit code 2, the key named.
    let dir = tempfile::tempdir().unwrap();
    for (config, env) in [
        (
            "",
            vec![("KERNAL__AGGREGATION__ROUND_TIMEOUT_SECS", "1e300")],
        ),
        ("[models.digits]\nround_timeout_secs = 1e19\n", vec![]),
        ("[hub]\nmax_message_bytes = 0\n", vec![]),
    ] {
        let mut p = HubProc::new(dir.path(), config, &env);
        let (code, log) = p.spawn("127.0.0.1:0").expect_err("refused");
        assert_eq!(code, Some(2), "{log}");
        assert!(
            log.contains("round_timeout_secs") || log.contains("max_message_bytes"),
            "{log}"
        );
        assert!(log.contains("must be"), "{log}");
    }
    // Through a scenario: exit code 2, the key named.
    let sc = dir.path().join("bad.toml");
    std::fs::write(
        &sc,
        "[hub]\nround_timeout_secs = 1e300\n[[trainers]]\nname = \"a\"\nspecialty = \"networking\"\n[stop]\nversions = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(kernal_bin())
        .args(["harness", sc.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hub.round_timeout_secs"), "{err}");
}

/// Helpers to build things the tests send.
struct ModelLayoutExt;

impl ModelLayoutExt {
    fn tiny() -> Vec<u8> {
        kernal_hub::protocol::ModelLayout::new(vec![("w".into(), vec![2])])
            .encode(&[0.0, 0.0], None)
            .unwrap()
    }
}

/// Defect 2, second half: a panic in any actor ends the process with a
/// failure status. The child run of this same test installs the hub's
/// panic hook, starts an actor that panics, and must exit 101 at once.
#[test]
fn a_panic_in_an_actor_ends_the_process() {
    if std::env::var_os("KERNAL_PANIC_CHILD").is_some() {
        kernal_hub::hub::daemon::exit_on_panic();
        use actix::prelude::*;
        struct Fragile;
        impl Actor for Fragile {
            type Context = Context<Self>;
        }
        #[derive(Message)]
        #[rtype(result = "()")]
        struct Boom;
        impl Handler<Boom> for Fragile {
            type Result = ();
            fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
                let v: Vec<u8> = Vec::new();
                let _ = v[std::hint::black_box(3)];
            }
        }
        let sys = actix::System::new();
        sys.block_on(async {
            Fragile.start().do_send(Boom);
            // Half alive: the system would run on without the hook.
            actix_rt::time::sleep(Duration::from_secs(60)).await;
        });
        std::process::exit(0);
    }
    let started = Instant::now();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panic_in_an_actor_ends_the_process",
            "--nocapture",
        ])
        .env("KERNAL_PANIC_CHILD", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// Defect 2, third half: recovery at start never stops on stored data. A
/// stored setting out of range falls back to the default; a pending update
/// that cannot be read back is refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_refuses_what_it_cannot_use_and_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = HubProc::start(dir.path(), "", &[]);
    let (s, b) = post_json(
        &format!("{}/v1/models", hub.url()),
        Some(ADMIN),
        json!({"name": "m", "aggregation": {"min_updates": 5}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (mut t, _, _) = Raw::hello(&hub.ws(), "t", "t", "m").await;
    t.send_update("u1", 0, 1, digits_delta(0.1)).await;
    assert_eq!(t.outcome("u1").await["type"], "ack");
    t.send_update("u2", 0, 1, digits_delta(0.1)).await;
    assert_eq!(t.outcome("u2").await["type"], "ack");
    drop(t);
    assert_eq!(hub.stop(), Some(0));
    // What an older hub (or a bad disk) may leave behind.
    {
        use diesel::connection::SimpleConnection;
        let mut conn = kernal_hub::db::connect(&dir.path().join("hub.db")).unwrap();
        conn.batch_execute(
            "UPDATE models SET settings = '{\"round_timeout_secs\": 1e300, \"min_updates\": 5}' WHERE name = 'm';
             UPDATE updates SET payload = x'00', payload_file = NULL WHERE update_id = 'u1';",
        )
        .unwrap();
    }
    hub.spawn("127.0.0.1:0")
        .expect("starts despite the stored data");
    let m = get_json(&format!("{}/v1/models/m", hub.url())).await;
    assert_eq!(m["settings"]["round_timeout_secs"], 30.0, "{m}");
    assert_eq!(m["settings"]["min_updates"], 5);
    assert_eq!(m["waiting"]["buffered"], 1, "u2 is back in the buffer");
    let l = get_json(&format!("{}/v1/updates?model=m&status=refused", hub.url())).await;
    assert_eq!(l["updates"][0]["update_id"], "u1");
    assert_eq!(l["updates"][0]["refusal_code"], "unreadable_update");
    assert!(hub.log().contains("round_timeout_secs"), "{}", hub.log());
    assert_eq!(
        get_json(&format!("{}/healthz", hub.url())).await["status"],
        "ok"
    );
}

// ------------------------------------------------------------------ 3-6

/// A well-behaved trainer that keeps sending updates (of `bytes` each) and
/// counting acks, until stopped.
struct Steady {
    acks: Arc<AtomicU64>,
    worst_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Steady {
    async fn start(ws: &str, model: &str, layout: kernal_hub::protocol::ModelLayout) -> Steady {
        let (acks, worst_ms, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a, w, s) = (acks.clone(), worst_ms.clone(), stop.clone());
        let (mut r, welcome, _) = Raw::hello(ws, "steady", "tok", model).await;
        let mut version = welcome["version"].as_u64().unwrap();
        let task = tokio::spawn(async move {
            let payload = layout
                .encode(&vec![0.0; layout.num_params()], None)
                .unwrap();
            for i in 0.. {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("s{i}");
                let t = Instant::now();
                r.send_update(&id, version, 1, payload.clone()).await;
                let o = r.outcome(&id).await;
                assert_eq!(o["type"], "ack", "the steady trainer was refused: {o}");
                w.fetch_max(t.elapsed().as_millis() as u64, Ordering::SeqCst);
                a.fetch_add(1, Ordering::SeqCst);
                if let Some((v, _)) = r.last_model.take() {
                    version = v;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Steady {
            acks,
            worst_ms,
            stop,
            task,
        }
    }

    /// Waits until `n` more acks arrive (the trainer is still served).
    async fn acks_continue(&self, n: u64, during: &str) {
        let from = self.acks.load(Ordering::SeqCst);
        let acks = self.acks.clone();
        wait_for(
            &format!("acks during {during}"),
            Duration::from_secs(30),
            || {
                let acks = acks.clone();
                async move { (acks.load(Ordering::SeqCst) >= from + n).then_some(()) }
            },
        )
        .await;
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the steady trainer never failed");
        self.worst_ms.load(Ordering::SeqCst)
    }
}

async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(-1.0)
}

/// Defects 3 to 6 against one hub process with a 64 MiB in-flight budget:
/// a client that never reads, fragments under 64 KiB, large bodies and
/// frames before authentication, one connection holding the budget, idle
/// pre-hello sockets from one address and a storm of hellos. Throughout,
/// a trainer sending 400 KB updates (which need budget) keeps getting acks,
/// and the hub's peak RSS stays under the budget + 256 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_and_starvation_attacks_leave_the_hub_serving_within_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let budget_mib = 64;
    let hub = HubProc::start(
        dir.path(),
        &format!(
            "[hub]\nmax_inflight_update_bytes = {}\nmax_inflight_share = 0.5\n\
             heartbeat_interval_secs = 1\nclient_timeout_secs = 5\nhello_timeout_secs = 3\n\
             max_prehello_per_ip = 32\nmax_outbound_bytes = 262144\nmin_upload_bytes_per_sec = 65536\n",
            budget_mib << 20
        ),
        &[],
    );
    let url = hub.url();
    let addr = hub.addr.clone();
    let (s, b) = post_json(
        &format!("{url}/v1/models"),
        Some(ADMIN),
        json!({"name": "big", "architecture": "flat", "params": 100_000,
               "aggregation": {"min_updates": 1}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let big = kernal_hub::protocol::ModelLayout::new(vec![("weights".into(), vec![100_000])]);
    let steady = Steady::start(&hub.ws(), "big", big.clone()).await;
    steady.acks_continue(3, "start").await;

    // 3a: a client floods tiny invalid frames and never reads its socket.
    // Its replies pile up to max_outbound_bytes, then it is dropped.
    let (mut s, status, _) = raw_ws(&addr, "/v1/trainers/ws", None, &[]).await;
    assert_eq!(status, 101);
    let junk = masked_frame(true, 0x1, b"x");
    let flood_until = Instant::now() + Duration::from_secs(20);
    let mut dropped = false;
    while Instant::now() < flood_until {
        let burst: Vec<u8> = junk
            .iter()
            .copied()
            .cycle()
            .take(junk.len() * 2000)
            .collect();
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), s.write_all(&burst)).await
        {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "a client that never reads is dropped");
    wait_for("slow consumer counted", Duration::from_secs(10), || {
        let url = url.clone();
        async move { (metric(&url, "kernal_slow_consumers_total").await >= 1.0).then_some(()) }
    })
    .await;
    steady.acks_continue(3, "the flood").await;

    // 3b: fragments under 64 KiB count against the budget. Before the
    // hello, a fragmented message past 64 KiB is refused; after it, four
    // registered clients each fragmenting 48 MiB in 16 KiB pieces can hold
    // at most half the budget each, so nothing past the budget is read.
    let (mut s, _, _) = raw_ws(&addr, "/v1/trainers/ws", None, &[]).await;
    let piece = vec![7u8; 16 * 1024];
    s.write_all(&masked_frame(false, 0x2, &piece))
        .await
        .unwrap();
    for _ in 0..5 {
        let _ = s.write_all(&masked_frame(false, 0x0, &piece)).await;
    }
    let mut rr = RawReader { buf: Vec::new() };
    let e = rr.json(&mut s).await.unwrap();
    assert_eq!(e["code"], "message_too_large", "{e}");
    let mut hogs = Vec::new();
    for i in 0..4 {
        let (mut r, _, _) = Raw::hello(&hub.ws(), &format!("hog{i}"), "t", "big").await;
        let piece = piece.clone();
        hogs.push(tokio::spawn(async move {
            use futures_util::SinkExt;
            use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
            use tokio_tungstenite::tungstenite::protocol::frame::Frame;
            use tokio_tungstenite::tungstenite::Message;
            let first = Frame::message(piece.clone(), OpCode::Data(Data::Binary), false);
            if r.ws.send(Message::Frame(first)).await.is_err() {
                return "closed".to_string();
            }
            for _ in 0..3 * 1024 {
                let f = Frame::message(piece.clone(), OpCode::Data(Data::Continue), false);
                if r.ws.send(Message::Frame(f)).await.is_err() {
                    break;
                }
            }
            match r.expect_error().await {
                v if v["type"] == "error" => v["code"].as_str().unwrap_or("").to_string(),
                v => v["type"].as_str().unwrap_or("").to_string(),
            }
        }));
    }
    steady.acks_continue(5, "fragment hogs").await;
    let mut codes = Vec::new();
    for h in hogs {
        codes.push(h.await.unwrap());
    }
    assert!(
        codes
            .iter()
            .all(|c| ["message_too_large", "busy", "too_slow", "closed"].contains(&c.as_str())),
        "{codes:?}"
    );
    assert!(codes.iter().any(|c| c == "message_too_large"), "{codes:?}");

    // 3c: a 200 MB body to an admin route without the token is refused on
    // its headers; the body is never read.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/models?name=x HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: 200000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&[0u8; 1000]).await.unwrap();
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head))
        .await
        .expect("answered without the body")
        .unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 401"));
    // ...and with the token, a body over the limit is refused on its length.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/models HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head))
        .await
        .expect("answered without the body")
        .unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"));

    // 3d: a 200 MB binary frame before the hello: refused on its header.
    let (mut s, _, _) = raw_ws(&addr, "/v1/trainers/ws", None, &[]).await;
    let mut f = kernal_hub::hub::ws::frame_header(0x2, 200_000_000, Some([1, 2, 3, 4]));
    f.extend_from_slice(&[0u8; 1000]);
    s.write_all(&f).await.unwrap();
    let mut rr = RawReader { buf: Vec::new() };
    let e = tokio::time::timeout(Duration::from_secs(5), rr.json(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["code"], "message_too_large", "{e}");
    assert!(e["message"].as_str().unwrap().contains("before the hello"));

    // 4: a registered client announces a frame of its whole share and
    // trickles it: it holds at most half the budget, the steady trainer's
    // 400 KB updates go on, and the trickler is dropped for being too slow.
    let (mut r, _, _) = Raw::hello(&hub.ws(), "trickler", "t", "big").await;
    let inner = r.ws.get_mut();
    let stream: &mut tokio::net::TcpStream = match inner {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    let mut f = kernal_hub::hub::ws::frame_header(0x2, 30 << 20, Some([1, 2, 3, 4]));
    f.extend_from_slice(&[0u8; 100]);
    stream.write_all(&f).await.unwrap();
    let t0 = Instant::now();
    steady.acks_continue(5, "a trickling budget holder").await;
    let mut dropped = false;
    while t0.elapsed() < Duration::from_secs(20) {
        if stream.write_all(&[0u8; 1]).await.is_err() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(dropped, "the trickler is dropped (too_slow)");

    // 5 is its own test. 6: idle pre-hello sockets from one address take at
    // most max_prehello_per_ip slots; a trainer from elsewhere joins at once.
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let (s, status, _) = raw_ws(&addr, "/v1/trainers/ws", Some(attacker), &[]).await;
        match status {
            101 => idle.push(s),
            503 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    assert_eq!((idle.len(), refused), (32, 28));
    let t = Instant::now();
    let (_joined, _, _) = Raw::hello(&hub.ws(), "newcomer", "t", "big").await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(idle);

    // 6: a storm of hellos from registered names: the hello deadline (3 s)
    // covers the client's sending, not the queue for the token checks.
    let names: Vec<String> = (0..30).map(|i| format!("fleet{i}")).collect();
    for n in &names {
        drop(Raw::hello(&hub.ws(), n, "fleet-token", "big").await);
    }
    let storm: Vec<_> = names
        .iter()
        .map(|n| {
            let (ws, n) = (hub.ws(), n.clone());
            tokio::spawn(async move {
                let mut r = Raw::connect(&ws).await;
                r.send_json(json!({"type": "hello", "name": n, "specialty": "s",
                                   "token": "fleet-token", "model": "big"}))
                    .await;
                r.next_json_skipping_models().await
            })
        })
        .collect();
    for s in storm {
        let w = s.await.unwrap();
        assert_eq!(w["type"], "welcome", "{w}");
    }
    steady.acks_continue(3, "the storm").await;
    let worst = steady.finish().await;
    let peak = hub.peak_rss_mib();
    eprintln!("steady trainer's slowest ack: {worst} ms; hub peak RSS {peak:.0} MiB");
    assert!(
        peak < (budget_mib + 256) as f64,
        "peak RSS {peak} MiB over the budget + 256 MiB"
    );
    assert_eq!(get_json(&format!("{url}/healthz")).await["status"], "ok");
}

/// Defect 5: a web page of another origin may not open the trainer or event
/// WebSocket; the dashboard's own origin and non-browser clients may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_pages_of_other_origins_are_refused() {
    let hub = start_hub(|c| c.hub.allowed_origins = vec!["https://team.example".into()]);
    let addr = hub.hub.handle.addr.to_string();
    for path in ["/v1/trainers/ws", "/v1/events"] {
        let (_, s, _) = raw_ws(&addr, path, None, &[("Origin", "https://evil.example")]).await;
        assert_eq!(s, 403, "{path}");
        let (_, s, _) = raw_ws(&addr, path, None, &[("Origin", &format!("http://{addr}"))]).await;
        assert_eq!(s, 101, "{path}: the hub's own origin");
        let (_, s, _) = raw_ws(&addr, path, None, &[("Origin", "https://team.example")]).await;
        assert_eq!(s, 101, "{path}: an allowed origin");
        let (_, s, _) = raw_ws(&addr, path, None, &[]).await;
        assert_eq!(s, 101, "{path}: no Origin, not a browser");
    }
    let r = reqwest::Client::new()
        .get(format!("{}/v1/trainers/ws", hub.url()))
        .header("Origin", "https://evil.example")
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "13")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "forbidden_origin");
}

// ------------------------------------------------------------------ 7, 8

/// Defect 7: one `POST /v1/harness/runs` with `"report": []` made every
/// later listing panic. Bodies are validated; runs can be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_run_bodies_are_validated_and_runs_can_be_deleted() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    let runs = format!("{url}/v1/harness/runs");
    let good = json!({"scenario": "s", "passed": true, "collective_accuracy": 0.9,
                      "started_at": "2026-12-01T10:00:00Z", "finished_at": "2026-12-01T10:01:00Z",
                      "report": {"summary": {"ok": true}}});
    for (field, bad) in [
        ("report", json!([])),
        ("report", json!("x")),
        ("collective_accuracy", json!(5.0)),
        ("started_at", json!("yesterday")),
        ("scenario", json!("../x")),
    ] {
        let mut b = good.clone();
        b[field] = bad;
        let (s, e) = post_json(&runs, Some(ADMIN), b).await;
        assert_eq!(s, 400, "{field}: {e}");
        assert!(e["message"].as_str().unwrap().contains(field), "{e}");
    }
    let (s, created) = post_json(&runs, Some(ADMIN), good.clone()).await;
    assert_eq!(s, 201);
    let id = created["id"].as_i64().unwrap();
    let list = get_json(&runs).await;
    assert_eq!(list["runs"][0]["summary"]["ok"], true);
    let mut events = Raw::connect(&format!("{}/v1/events", hub.hub.ws_url())).await;
    let r = client()
        .delete(format!("{runs}/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .delete(format!("{runs}/{id}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The deletion is published (it went through the hub actor).
    let deleted = loop {
        let v = events.next_json_skipping_models().await;
        assert_ne!(v["type"], "closed", "{v}");
        if v["type"] == "harness_run_deleted" {
            break v;
        }
    };
    assert_eq!(deleted["id"], id, "{deleted}");
    let r = client()
        .delete(format!("{runs}/{id}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(get_json(&runs).await["runs"].as_array().unwrap().len(), 0);
}

/// Defect 8: `classes: 1e15` tried to allocate 2.6e17 bytes. Model sizes
/// are bounded by `hub.max_model_params` with a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_model_sizes_are_refused_without_allocating() {
    let hub = start_hub(|c| c.hub.max_model_params = 1_000_000);
    let url = format!("{}/v1/models", hub.url());
    for body in [
        json!({"name": "h", "classes": 1_000_000_000_000_000u64}),
        json!({"name": "h", "inputs": 1_000_000, "hidden": 65_536}),
        json!({"name": "h", "architecture": "flat", "params": 1_000_000_000u64}),
        json!({"name": "h", "hidden": u64::MAX}),
    ] {
        let (s, e) = post_json(&url, Some(ADMIN), body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["code"], "model_too_large", "{body}: {e}");
    }
    // A safetensors header that claims huge shapes.
    let mut fake = Vec::new();
    let header = br#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#;
    fake.extend_from_slice(&(header.len() as u64).to_le_bytes());
    fake.extend_from_slice(header);
    let r = client()
        .post(format!("{url}?name=fake"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/octet-stream")
        .body(fake)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (s, _) = post_json(&url, Some(ADMIN), json!({"name": "ok", "hidden": 16})).await;
    assert_eq!(s, 201);
    assert_eq!(
        get_json(&format!("{}/healthz", hub.url())).await["status"],
        "ok"
    );
}

// ------------------------------------------------------------------ 9

/// The byte offsets and page size of a WAL's last commit frame written in
/// its current generation (same salts as its header).
fn last_wal_commit(wal: &[u8]) -> Option<usize> {
    if wal.len() < 32 {
        return None;
    }
    let page = u32::from_be_bytes(wal[8..12].try_into().ok()?) as usize;
    let salts = &wal[16..24];
    let mut off = 32;
    let mut last = None;
    while off + 24 + page <= wal.len() {
        let h = &wal[off..off + 24];
        if &h[8..16] != salts {
            break;
        }
        if u32::from_be_bytes(h[4..8].try_into().ok()?) != 0 {
            last = Some(off);
        }
        off += 24 + page;
    }
    last
}

/// Defect 9a: corrupting the newest WAL commit between kills lost an
/// acknowledged update without a word. The hub now compares the ledger with
/// its acknowledgement mark at start and says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_wal_commit_is_reported_not_silent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let mut hub = HubProc::start(dir.path(), "[models.digits]\nmin_updates = 1000\n", &[]);
    let mut reported = false;
    for round in 0..10 {
        let (mut t, _, _) = Raw::hello(&hub.ws(), &format!("t{round}"), "t", "digits").await;
        for i in 0..3 {
            let id = format!("r{round}-{i}");
            t.send_update(&id, 0, 1, digits_delta(0.0)).await;
            assert_eq!(t.outcome(&id).await["type"], "ack");
        }
        hub.kill9();
        let acked = std::fs::read(dir.path().join("hub.db.acked")).unwrap();
        let acked = i64::from_le_bytes(acked[..8].try_into().unwrap());
        // Only a commit still in the WAL (not yet copied into the database
        // by a checkpoint) can be lost this way.
        let main_only = dir.path().join("main-only.db");
        std::fs::copy(&db, &main_only).unwrap();
        let in_main = {
            use diesel::prelude::*;
            #[derive(QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let mut c = diesel::SqliteConnection::establish(main_only.to_str().unwrap()).unwrap();
            diesel::sql_query("SELECT coalesce(max(id), 0) AS n FROM updates")
                .get_result::<N>(&mut c)
                .map(|r| r.n)
                .unwrap_or(0)
        };
        let _ = std::fs::remove_file(&main_only);
        let wal_path = dir.path().join("hub.db-wal");
        let mut wal = std::fs::read(&wal_path).unwrap_or_default();
        let commit = last_wal_commit(&wal);
        if in_main < acked {
            if let Some(off) = commit {
                // Flip a byte of the commit frame's page: its checksum fails,
                // and recovery stops before it.
                wal[off + 24 + 100] ^= 0xFF;
                std::fs::write(&wal_path, &wal).unwrap();
                hub.spawn("127.0.0.1:0").unwrap();
                let h = get_json(&format!("{}/healthz", hub.url())).await;
                assert_eq!(h["status"], "degraded", "{h}");
                assert!(h["lost_acknowledged_updates"].as_u64().unwrap() >= 1, "{h}");
                assert!(
                    metric(&hub.url(), "kernal_storage_lost_acknowledged_updates").await >= 1.0
                );
                assert!(hub.log().contains("acknowledged"), "{}", hub.log());
                reported = true;
                break;
            }
        }
        hub.spawn("127.0.0.1:0").unwrap();
    }
    assert!(reported, "no round left its last commit only in the WAL");
}

/// Defect 9b: a storage failure logged "stored data is corrupt" ten times a
/// second while /healthz said ok. Now an I/O error is reported as such,
/// once, and /healthz and /metrics show the hub is not storing until it can
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_shows_in_health_and_metrics_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // Where the blob directory should be, a file: every blob write fails.
    let blobs = dir.path().join("hub.db.blobs");
    std::fs::write(&blobs, b"not a directory").unwrap();
    let hub = HubProc::start(
        dir.path(),
        "[hub]\nblob_file_threshold_bytes = 1\n[models.digits]\nmin_updates = 1\n",
        &[],
    );
    let url = hub.url();
    let (mut t, _, _) = Raw::hello(&hub.ws(), "t", "t", "digits").await;
    for i in 0..5 {
        let id = format!("u{i}");
        t.send_update(&id, 0, 1, digits_delta(0.0)).await;
        let e = t.outcome(&id).await;
        assert_eq!(e["code"], "storage_unavailable", "{e}");
        assert!(e["message"].as_str().unwrap().contains("I/O"), "{e}");
    }
    let r = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(r.status(), 503);
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "unhealthy");
    assert!(
        h["problems"][0].as_str().unwrap().contains("cannot write"),
        "{h}"
    );
    assert!(metric(&url, "kernal_storage_errors_total").await >= 5.0);
    assert_eq!(metric(&url, "kernal_storage_ok").await, 0.0);
    let log = hub.log();
    assert!(!log.contains("corrupt"), "{log}");
    assert_eq!(
        log.matches("cannot write to its storage").count(),
        1,
        "{log}"
    );
    // The disk is fixed: the next update is stored and the hub is healthy.
    std::fs::remove_file(&blobs).unwrap();
    t.send_update("fixed", 0, 1, digits_delta(0.0)).await;
    assert_eq!(t.outcome("fixed").await["type"], "ack");
    assert_eq!(get_json(&format!("{url}/healthz")).await["status"], "ok");
    assert_eq!(metric(&url, "kernal_storage_ok").await, 1.0);
}

// ------------------------------------------------------------------ 10

/// Defect 10: eval figures unvalidated; database files world-readable; a
/// revoked name could never return; the ledger could not be paged; `bearer`
/// in lower case refused; no warning for a non-loopback bind without TLS;
/// "database is locked" at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smaller_holes_are_closed() {
    use std::os::unix::fs::PermissionsExt;
    let hub = start_hub(|c| {
        c.hub.blob_file_threshold_bytes = 1;
        c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(1);
    });
    let url = hub.url();
    let (mut t, _, _) = Raw::hello(&hub.ws(), "t", "tok", "digits").await;
    for bad in [
        json!({"type": "eval", "version": u64::MAX, "global_accuracy": 0.5}),
        json!({"type": "eval", "version": 0, "global_accuracy": 5.0}),
        json!({"type": "eval", "version": 0, "loss": -1.0}),
        json!({"type": "eval", "version": 0, "num_examples": 1_000_000_000_000u64}),
    ] {
        t.send_json(bad.clone()).await;
        let e = t.expect_error().await;
        assert_eq!(e["code"], "bad_eval", "{bad}: {e}");
        assert_eq!(e["fatal"], false);
    }
    t.send_text(r#"{"type":"eval","version":0,"global_accuracy":NaN}"#)
        .await;
    assert_eq!(t.expect_error().await["code"], "bad_eval");
    t.send_json(json!({"type": "eval", "version": 0, "global_accuracy": 0.5}))
        .await;
    wait_for("the valid eval stored", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let e = get_json(&format!("{url}/v1/models/digits/evaluations")).await;
            (e["evaluations"].as_array()?.len() == 1).then_some(())
        }
    })
    .await;

    // Files: the database, its WAL and the blobs are the hub's user's only.
    for i in 0..3 {
        let id = format!("u{i}");
        t.send_update(&id, 0, 1, digits_delta(0.0)).await;
        assert_eq!(t.outcome(&id).await["type"], "ack");
    }
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    let db = hub.hub.handle.db_path.clone();
    assert_eq!(mode(db.clone()), 0o600);
    assert_eq!(mode(db.with_extension("db-wal")), 0o600);
    let blob_dir = db.with_extension("db.blobs");
    assert_eq!(mode(blob_dir.clone()), 0o700);
    for f in std::fs::read_dir(&blob_dir).unwrap() {
        assert_eq!(mode(f.unwrap().path()), 0o600);
    }

    // Revoke, then reinstate: the name joins again with its token.
    let admin = |r: reqwest::RequestBuilder| r.bearer_auth(ADMIN).send();
    assert_eq!(
        admin(client().delete(format!("{url}/v1/trainers/t")))
            .await
            .unwrap()
            .status(),
        200
    );
    let mut r = Raw::connect(&hub.ws()).await;
    r.send_json(json!({"type": "hello", "name": "t", "specialty": "s", "token": "tok"}))
        .await;
    assert_eq!(r.expect_error().await["code"], "revoked");
    let r2 = admin(client().post(format!("{url}/v1/trainers/t/unrevoke")))
        .await
        .unwrap();
    assert_eq!(r2.status(), 200);
    assert_eq!(r2.json::<Value>().await.unwrap()["revoked"], false);
    let (_t, w, _) = Raw::hello(&hub.ws(), "t", "tok", "digits").await;
    assert_eq!(w["type"], "welcome");
    let r3 = admin(client().post(format!("{url}/v1/trainers/ghost/unrevoke")))
        .await
        .unwrap();
    assert_eq!(r3.status(), 404);

    // The ledger, page by page with `after`, holds every row once.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let p = get_json(&format!("{url}/v1/updates?after={after}&limit=2")).await;
        for u in p["updates"].as_array().unwrap() {
            seen.push(u["id"].as_i64().unwrap());
        }
        match p["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    let all = get_json(&format!("{url}/v1/updates?limit=1000")).await;
    let ids: Vec<i64> = all["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, ids);
    assert!(seen.len() >= 3);
    let bad = reqwest::get(format!("{url}/v1/updates?limit=0"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // `bearer` in any case.
    let r = client()
        .post(format!("{url}/v1/admin/reload"))
        .header("Authorization", format!("bearer {ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A non-loopback bind without TLS warns; starts are not "locked".
    let dir = tempfile::tempdir().unwrap();
    let mut p = HubProc::start(dir.path(), "", &[]);
    for _ in 0..5 {
        p.stop();
        p.spawn("127.0.0.1:0").unwrap();
    }
    p.stop();
    p.spawn("0.0.0.0:0").unwrap();
    let log = p.log();
    assert!(log.contains("without TLS"), "{log}");
    assert!(!log.contains("database is locked"), "{log}");
}

/// Defect 10: the trainer's token need not be on the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trainer_token_can_come_from_a_file_or_the_environment() {
    let hub = start_hub(|c| c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(1));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-secret\n").unwrap();
    let run = |args: Vec<String>, env: Option<(&str, &str)>| {
        let mut c = std::process::Command::new(kernal_bin());
        c.arg("trainer").args(&args).env_remove("KERNAL_TOKEN");
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let hub_url = hub.hub.ws_url();
    let out = run(
        vec![
            "filer".into(),
            "networking".into(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--model".into(),
            "digits".into(),
            "--hub".into(),
            hub_url.clone(),
            "--max-versions".into(),
            "1".into(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        vec![
            "envy".into(),
            "graphics".into(),
            "--model".into(),
            "digits".into(),
            "--hub".into(),
            hub_url.clone(),
            "--max-versions".into(),
            "1".into(),
        ],
        Some(("KERNAL_TOKEN", "env-secret")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The registered tokens are those: a wrong one is refused.
    let mut r = Raw::connect(&hub.ws()).await;
    r.send_json(json!({"type": "hello", "name": "filer", "specialty": "s", "token": "wrong"}))
        .await;
    assert_eq!(r.expect_error().await["code"], "bad_token");
    let (_, w, _) = Raw::hello(&hub.ws(), "envy", "env-secret", "digits").await;
    assert_eq!(w["registered"], false);
    let out = run(
        vec![
            "nobody".into(),
            "s".into(),
            "--model".into(),
            "digits".into(),
            "--hub".into(),
            hub_url,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KERNAL_TOKEN"));
}

// ------------------------------------------------------------------ 11

/// Defect 11: what a client written from docs/PROTOCOL.md gets. An update
/// header that is not JSON (Python's bare NaN) is answered with its id and
/// its payload swallowed; ping and bye work before the hello; a resent id
/// with another payload is a duplicate of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_answers_match_the_page() {
    let hub =
        start_hub(|c| c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(100));
    let mut r = Raw::connect(&hub.ws()).await;
    r.send_json(json!({"type": "ping", "nonce": 3})).await;
    let p = r.expect_type("pong").await;
    assert_eq!(p["nonce"], 3);
    r.send_json(json!({"type": "bye"})).await;
    assert!(matches!(r.next().await, Frame::Closed(_)));

    let (mut t, _, _) = Raw::hello(&hub.ws(), "py", "tok", "digits").await;
    t.send_text(
        r#"{"type": "update", "update_id": "py-1", "base_version": 0, "num_examples": 10, "loss": NaN}"#,
    )
    .await;
    t.send_binary(digits_delta(0.0)).await;
    let e = t.outcome("py-1").await;
    assert_eq!(
        (e["code"].as_str(), e["fatal"].as_bool()),
        (Some("bad_loss"), Some(false))
    );
    // Its payload was swallowed: the next update is answered normally, with
    // no `unexpected_binary` in between.
    t.send_update("py-2", 0, 10, digits_delta(0.0)).await;
    let next = loop {
        let v = t.next_json_skipping_models().await;
        if v["type"] == "ack" || v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(next["type"], "ack", "{next}");
    assert_eq!(next["update_id"], "py-2");
    // A header missing a field: the error still names the update.
    t.send_json(json!({"type": "update", "update_id": "py-3", "num_examples": 1}))
        .await;
    t.send_binary(digits_delta(0.0)).await;
    let e = t.outcome("py-3").await;
    assert_eq!(e["code"], "bad_json");
    // The same id again with another payload: a duplicate of the first.
    t.send_update("py-2", 0, 99, digits_delta(0.5)).await;
    let d = t.outcome("py-2").await;
    assert_eq!(
        (d["type"].as_str(), d["duplicate"].as_bool()),
        (Some("ack"), Some(true))
    );
    let l = get_json(&format!(
        "{}/v1/updates?trainer=py&status=pending",
        hub.url()
    ))
    .await;
    assert_eq!(
        l["updates"][0]["num_examples"], 10,
        "the first payload stands"
    );
}

// ------------------------------------------------------------------ TLS

/// The hub over TLS: a trainer with `--ca` joins over wss:// and its update
/// is folded; REST answers over https://; a client that does not trust the
/// certificate is refused by its own TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_trains_over_tls_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("hub.crt"), dir.path().join("hub.key"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let hub = start_hub(|c| {
        c.hub.tls_cert = cert_pem.display().to_string();
        c.hub.tls_key = key_pem.display().to_string();
        c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(1);
    });
    assert!(hub.url().starts_with("https://"));
    let tls = kernal_client::tls::client_config(Some(&cert_pem)).unwrap();
    let http = kernal_client::tls::http_client(&tls, None).unwrap();
    let h: Value = http
        .get(format!("{}/healthz", hub.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let untrusted = kernal_client::tls::client_config(None).unwrap();
    let plain = kernal_client::tls::http_client(&untrusted, None).unwrap();
    assert!(plain
        .get(format!("{}/healthz", hub.url()))
        .send()
        .await
        .is_err());

    let spec = kernal_hub::model::MlpSpec {
        inputs: 64,
        hidden: 64,
        classes: 10,
    };
    let learner = kernal_client::MlpLearner::for_digits(
        spec,
        "networking",
        &kernal_hub::Config::builtin().specialties,
        kernal_hub::model::TrainSettings {
            epochs: 1,
            lr: 0.1,
            batch_size: 32,
            seed: 1,
        },
    )
    .unwrap();
    let mut opts = kernal_client::connection::ClientOptions::new(
        &hub.hub.ws_url(),
        "tls-trainer",
        "networking",
        "tok",
    );
    opts.tls = Some(tls);
    opts.max_versions = Some(2);
    opts.reconnect = false;
    let summary = kernal_client::connection::run(opts, learner, |_| {}, std::future::pending())
        .await
        .expect("trains over TLS");
    assert!(summary.acked >= 2, "{summary:?}");
    let m: Value = http
        .get(format!("{}/v1/models/digits", hub.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(m["version"].as_u64().unwrap() >= 1);
}
