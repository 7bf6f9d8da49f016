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
    assert_eq!(refused["code"], "storage_full", "{refused}");
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

/// The first message a hello gets: a welcome or an error.
async fn hello_answer(ws: &str, name: &str) -> Value {
    let mut r = Raw::connect(ws).await;
    r.send_json(
        json!({"type": "hello", "protocol": 2, "name": name, "specialty": "s",
                       "token": "tok", "model": "digits"}),
    )
    .await;
    r.next_json_skipping_models().await
}

/// Registration is bounded: a cap on registered trainers and a rate per
/// address (both live-reloadable, range-checked, with their own codes), and
/// `GET /v1/trainers` pages like `/v1/updates`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_capped_and_rate_limited_and_the_list_is_paged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |cap: u32, rate: u32| {
        format!("[hub]\nmax_trainers = {cap}\nregistrations_per_ip_per_hour = {rate}\n")
    };
    let mut hub = HubProc::start(dir.path(), &cfg(2, 100), &[]);
    let (url, ws) = (hub.url(), hub.ws());
    for name in ["t1", "t2"] {
        assert_eq!(hello_answer(&ws, name).await["type"], "welcome");
    }
    let e = hello_answer(&ws, "t3").await;
    assert_eq!(e["code"], "too_many_trainers", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("hub.max_trainers"),
        "{e}"
    );
    assert_eq!(
        hello_answer(&ws, "t1").await["type"],
        "welcome",
        "registered names join"
    );

    let c = reqwest::Client::new();
    let reload = || {
        c.post(format!("{url}/v1/admin/reload"))
            .bearer_auth(ADMIN)
            .send()
    };
    // Range-checked on reload, naming the key.
    std::fs::write(dir.path().join("hub.toml"), cfg(0, 100)).unwrap();
    let r = reload().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("hub.max_trainers"),
        "{body}"
    );
    // Live: a larger cap, and a rate of 1 per hour from this address: the
    // bucket now holds at most one registration.
    std::fs::write(dir.path().join("hub.toml"), cfg(100, 1)).unwrap();
    assert_eq!(reload().await.unwrap().status(), 200);
    assert_eq!(hello_answer(&ws, "t3").await["type"], "welcome");
    let e = hello_answer(&ws, "t4").await;
    assert_eq!(e["code"], "too_many_registrations", "{e}");
    assert!(e["message"].as_str().unwrap().contains("127.0.0.1"), "{e}");
    assert_eq!(
        hello_answer(&ws, "t2").await["type"],
        "welcome",
        "registered names join"
    );

    // Paged by name with the parameters of /v1/updates.
    let page = get_json(&format!("{url}/v1/trainers?limit=2")).await;
    let names: Vec<&str> = page["trainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["t1", "t2"], "{page}");
    assert_eq!(page["next_after"], "t2");
    let page = get_json(&format!("{url}/v1/trainers?limit=2&after=t2")).await;
    assert_eq!(page["trainers"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["trainers"][0]["name"], "t3");
    assert!(page["next_after"].is_null(), "{page}");
    let all = get_json(&format!("{url}/v1/trainers")).await;
    assert_eq!(all["trainers"].as_array().unwrap().len(), 3, "{all}");
    let r = c
        .get(format!("{url}/v1/trainers?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    hub.kill9();
}
