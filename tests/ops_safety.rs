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

/// A config file truncated right after `[hub]` is valid TOML: applying it
/// would reopen registration and return limits to their defaults. SIGHUP and
/// the REST reload refuse it with the missing keys named; the operator can
/// apply it on purpose with `?allow_removed_keys=true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_config_file_is_refused_unless_the_operator_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let full =
        "[hub]\nopen_registration = false\nallowed_trainers = [\"alice\"]\nmax_fragments = 7\n";
    let mut hub = HubProc::start(dir.path(), full, &[]);
    let url = hub.url();
    let ws = hub.ws();
    let closed = |v: &Value| v["code"] == "not_allowed";
    let mut r = Raw::connect(&ws).await;
    r.send_json(json!({"type": "hello", "name": "mallory", "specialty": "s",
                       "token": "t", "model": "digits"}))
        .await;
    let v = r.expect_error().await;
    assert!(closed(&v), "registration is closed: {v}");
    std::fs::write(dir.path().join("hub.toml"), "[hub]\n").unwrap();

    // SIGHUP: refused, the keys named in the log, the old config in force.
    let pid = hub.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let log = hub.log.clone();
    wait_for(
        "the refusal logged",
        std::time::Duration::from_secs(10),
        || {
            let l = log.lock().unwrap().clone();
            async move {
                (l.contains("config reload refused") && l.contains("hub.open_registration"))
                    .then_some(())
            }
        },
    )
    .await;
    let mut m = Raw::connect(&ws).await;
    m.send_json(json!({"type": "hello", "name": "mallory", "specialty": "s",
                       "token": "t", "model": "digits"}))
        .await;
    let v = m.expect_error().await;
    assert!(closed(&v), "registration stays closed: {v}");

    // REST: 409 naming every key the file dropped.
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{url}/v1/admin/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    let msg = body["message"].as_str().unwrap();
    for k in [
        "hub.open_registration",
        "hub.allowed_trainers",
        "hub.max_fragments",
    ] {
        assert!(msg.contains(k), "{k}: {body}");
    }
    assert_eq!(body["code"], "conflict");
    // A file that keeps every key (and changes one) still reloads.
    std::fs::write(dir.path().join("hub.toml"), full.replace("= 7", "= 8")).unwrap();
    let r = c
        .post(format!("{url}/v1/admin/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Said on purpose: applied, the dropped keys back to their defaults.
    std::fs::write(dir.path().join("hub.toml"), "[hub]\n").unwrap();
    let r = c
        .post(format!("{url}/v1/admin/reload?allow_removed_keys=true"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["changed"]
            .to_string()
            .contains("hub.open_registration"),
        "{body}"
    );
    let (_, w, _) = Raw::hello(&ws, "mallory", "tok", "digits").await;
    assert_eq!(w["type"], "welcome");
    hub.kill9();
}
