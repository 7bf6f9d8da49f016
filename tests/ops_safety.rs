//! Operating a hub safely, against real hubs: `/healthz` tells the truth
//! when updates are refused for storage (a database that cannot grow, as on
//! a full disk).

mod common;

use common::*;
use serde_json::{json, Value};

fn digits_delta(v: f32) -> Vec<u8> {
    let layout = digits_layout();
    layout.encode(&vec![v; layout.num_params()], None).unwrap()
}

async fn healthz(url: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/healthz")).await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// A database held at its size (SQLite's `max_page_count`, through the
/// test hook `KERNAL_TEST_DB_MAX_PAGES`) refuses update rows with "database
/// or disk is full" while smaller writes still fit in free pages: each
/// refused update must show in `/healthz`, not be hidden by the batch's
/// fallback "succeeding" or by the next write that fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_storage_trouble_while_updates_are_refused_for_storage() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[hub]\nadmin_token = \"{ADMIN}\"\n[models.digits]\nnormalisation = \"off\"\n\
         min_updates = 100000\nround_timeout_secs = 86400\n"
    );
    let mut hub = HubProc::start(dir.path(), &cfg, &[("KERNAL_TEST_DB_MAX_PAGES", "1")]);
    let url = hub.url();
    let (s, h) = healthz(&url).await;
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")), "{h}");
    let (mut t, _, _) = Raw::hello(&hub.ws(), "filler", "tok", "digits").await;
    // Updates until one is refused for storage (the database cannot grow).
    let mut refused = None;
    for i in 0..2000 {
        let id = format!("u{i}");
        t.send_update(&id, 0, 10, digits_delta(0.001)).await;
        let o = t.outcome(&id).await;
        if o["type"] == "error" {
            refused = Some(o);
            break;
        }
    }
    let refused = refused.expect("the capped database refuses an update");
    assert_eq!(refused["code"], "internal", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("full"),
        "{refused}"
    );
    let (s, h) = healthz(&url).await;
    assert_eq!(s, 503, "{h}");
    assert_eq!(h["status"], "unhealthy", "{h}");
    assert!(
        h["problems"][0].as_str().unwrap().contains("storage"),
        "{h}"
    );
    assert!(h["storage_errors"].as_u64().unwrap() >= 1, "{h}");
    // A write that still fits (a refused update's ledger row may, a ping's
    // nothing) does not end the trouble.
    t.send_json(json!({"type": "ping", "nonce": 1})).await;
    t.expect_type("pong").await;
    let (s, _) = healthz(&url).await;
    assert_eq!(s, 503);
    let log = hub.log();
    let errors = log
        .lines()
        .filter(|l| l.contains("cannot write to its storage"))
        .count();
    assert_eq!(
        errors, 1,
        "the trouble is logged once when it starts:\n{log}"
    );
    hub.kill9();
}
