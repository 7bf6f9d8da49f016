//! Running as a service: SIGHUP and `POST /v1/admin/reload` apply live keys
//! without dropping trainers and refuse an invalid file as a whole;
//! `/metrics` passes `promtool check metrics`; `/openapi.json` lists every
//! route the server registers; systemd readiness and watchdog notifications;
//! the unit file passes `systemd-analyze verify`.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn log_contains(log: &Arc<Mutex<String>>, s: &str) -> bool {
    log.lock().unwrap().contains(s)
}

async fn min_updates(base: &str) -> Option<u64> {
    let v = get_json(&format!("{base}/v1/models/digits")).await;
    v["settings"]["min_updates"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_live_keys_and_refuses_invalid_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_text = |min: u32, level: &str, extra: &str| {
        format!("[log]\nlevel = \"{level}\"\n[models.digits]\nmin_updates = {min}\n{extra}")
    };
    // HubProc writes its config to hub.toml at start; edits go there too.
    let cfg_path = dir.path().join("hub.toml");
    let write_cfg = |min: u32, level: &str, extra: &str| {
        std::fs::write(&cfg_path, cfg_text(min, level, extra)).unwrap();
    };
    let mut hub = HubProc::new(
        dir.path(),
        &cfg_text(3, "info", ""),
        &[
            ("KERNAL__MODELS__DIGITS__MAX_STALENESS", "4"),
            ("RUST_LOG", ""),
        ],
    );
    hub.spawn("127.0.0.1:0").expect("hub starts");
    let base = hub.url();
    let log = hub.log.clone();
    let ws = hub.ws();
    assert_eq!(min_updates(&base).await, Some(3));
    let (mut t, _, _) = Raw::hello(&ws, "steady", "tok", "digits").await;
    let layout = digits_layout();
    let delta = || {
        layout
            .encode(&vec![0.0; layout.num_params()], None)
            .unwrap()
    };
    assert!(!log_contains(&log, "DEBUG"));

    // Edit: min_updates 3 -> 1 and log level info -> debug, then SIGHUP.
    write_cfg(1, "debug", "");
    let pid = hub.pid().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("min_updates 1", Duration::from_secs(10), || {
        let base = base.clone();
        async move { (min_updates(&base).await == Some(1)).then_some(()) }
    })
    .await;
    let m = get_json(&format!("{base}/v1/models/digits")).await;
    assert_eq!(
        m["settings"]["max_staleness"], 4,
        "environment overrides survive a reload"
    );
    // The connected trainer was not dropped, and one update now makes a version.
    t.send_update("u1", 0, 10, delta()).await;
    assert_eq!(t.outcome("u1").await["type"], "ack");
    assert_eq!(t.wait_version(1).await.0, 1);
    let l3 = log.clone();
    wait_for("reload logged", Duration::from_secs(10), || {
        let l = l3.clone();
        async move {
            (log_contains(&l, "config reload: log.level changed to debug")
                && log_contains(&l, "config reload: models.digits aggregation settings"))
            .then_some(())
        }
    })
    .await;
    let l3 = log.clone();
    wait_for(
        "debug lines after the reload",
        Duration::from_secs(10),
        || {
            let l = l3.clone();
            async move { log_contains(&l, "DEBUG").then_some(()) }
        },
    )
    .await;

    // An invalid file is refused as a whole; the old config stays in force.
    write_cfg(7, "info", "[hub]\nbindd = \"oops\"\n");
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let l3 = log.clone();
    wait_for("refusal logged", Duration::from_secs(10), || {
        let l = l3.clone();
        async move {
            (log_contains(&l, "config reload refused") && log_contains(&l, "bindd")).then_some(())
        }
    })
    .await;
    assert_eq!(min_updates(&base).await, Some(1));
    t.send_update("u2", 1, 10, delta()).await;
    assert_eq!(t.outcome("u2").await["type"], "ack");
    assert_eq!(t.wait_version(2).await.0, 2);

    // The same through the REST API.
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/v1/admin/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("bindd"),
        "{body}"
    );
    // --bind on the command line wins over the file, so edit a restart-only
    // key that the command line does not set.
    write_cfg(2, "info", "[hub]\nshutdown_timeout_secs = 3\n");
    let r = c
        .post(format!("{base}/v1/admin/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let changed = body["changed"].to_string();
    assert!(
        changed.contains("hub.shutdown_timeout_secs changed")
            && changed.contains("needs a restart"),
        "{changed}"
    );
    assert_eq!(min_updates(&base).await, Some(2));
    let r = c
        .post(format!("{base}/v1/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Still serving on the old address.
    assert_eq!(get_json(&format!("{base}/healthz")).await["status"], "ok");
    assert_eq!(hub.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_openapi_lists_every_route() {
    let hub = start_hub(|c| c.models.get_mut("digits").unwrap().aggregation.min_updates = Some(1));
    let (mut t, _, _) = Raw::hello(&hub.ws(), "m1", "tok", "digits").await;
    let layout = digits_layout();
    let zeros = layout
        .encode(&vec![0.0; layout.num_params()], None)
        .unwrap();
    t.send_update("a", 0, 3, zeros.clone()).await;
    assert_eq!(t.outcome("a").await["type"], "ack");
    t.wait_version(1).await;
    t.send_update("b", 0, 0, zeros).await;
    assert_eq!(t.outcome("b").await["code"], "bad_num_examples");
    let text = reqwest::get(format!("{}/metrics", hub.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in [
        "kernal_connected_trainers{model=\"digits\"} 1",
        "kernal_model_version{model=\"digits\"} 1",
        "kernal_updates_acknowledged_total{model=\"digits\"} 1",
        "kernal_updates_refused_total{model=\"digits\",code=\"bad_num_examples\"} 1",
        "kernal_aggregation_duration_seconds_count{model=\"digits\"} 1",
        "kernal_persister_queue_depth",
        "kernal_persister_commit_duration_seconds_bucket",
        "kernal_websocket_sessions_opened_total{kind=\"trainer\"}",
        "kernal_received_bytes_total",
        "kernal_sent_bytes_total",
        "kernal_update_answer_seconds_count",
    ] {
        assert!(text.contains(m), "{m} missing from:\n{text}");
    }
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    match promtool {
        Some(p) => {
            let mut child = Command::new(p)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool (Debian's prometheus) is required in CI"
            );
            eprintln!("SKIPPED promtool check: apt-get install prometheus");
        }
    }

    // OpenAPI: the served document is the generated one; every plain GET
    // in it is served; admin calls declare their security and statuses;
    // query parameters and request bodies are declared.
    let doc = get_json(&format!("{}/openapi.json", hub.url())).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc,
        serde_json::to_value(kernal_hub::hub::api::openapi_document()).unwrap()
    );
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{} paths", paths.len());
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            if op.get("security").is_some() {
                for status in ["401", "403"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: no {status}"
                    );
                }
            }
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            for seg in path.split('/').filter_map(|s| s.strip_prefix('{')) {
                let name = seg.trim_end_matches('}');
                assert!(
                    params.contains(&name),
                    "{method} {path}: path parameter {name}"
                );
            }
        }
        if ops.get("get").is_some()
            && !path.contains('{')
            && !path.ends_with("/ws")
            && path != "/v1/events"
        {
            let r = reqwest::get(format!("{}{}", hub.url(), path))
                .await
                .unwrap();
            assert!(r.status().is_success(), "GET {path}: {}", r.status());
        }
    }
    let query = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    for q in ["model", "trainer", "status", "limit", "after"] {
        assert!(query("/v1/updates", "get").contains(&q.to_string()), "{q}");
    }
    for q in ["name", "strategy", "min_updates", "max_update_norm"] {
        assert!(query("/v1/models", "post").contains(&q.to_string()), "{q}");
    }
    for (path, method) in [
        ("/v1/models", "post"),
        ("/v1/models/{model}/rollback", "post"),
        ("/v1/harness/runs", "post"),
    ] {
        assert!(
            doc["paths"][path][method]["requestBody"]["content"].is_object(),
            "{method} {path}: no request body"
        );
    }
    // Routes with parameters answer with our JSON errors, not the router's 404.
    let r = reqwest::get(format!("{}/v1/models/digits/versions/999", hub.url()))
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "not_found"
    );
}

/// Every datagram waiting on a notify socket.
fn notifications(sock: &std::os::unix::net::UnixDatagram, into: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

/// systemd's notify protocol as a service manager sees it: READY=1 once
/// serving, WATCHDOG=1 pings when the watchdog is this process's, none when
/// WATCHDOG_PID names another process, STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_and_pings_only_its_own_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let listen = |dir: &std::path::Path| {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        (path.to_str().unwrap().to_string(), sock)
    };
    // A hub whose watchdog belongs to another process (pid 1).
    let other_dir = tempfile::tempdir().unwrap();
    let (other_path, other_sock) = listen(other_dir.path());
    let mut other = HubProc::start(
        other_dir.path(),
        "",
        &[
            ("NOTIFY_SOCKET", &other_path),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let mut other_got = Vec::new();
    wait_for(
        "READY=1 from the first hub",
        Duration::from_secs(10),
        || {
            notifications(&other_sock, &mut other_got);
            std::future::ready(
                other_got
                    .iter()
                    .any(|m| m.contains("READY=1"))
                    .then_some(()),
            )
        },
    )
    .await;
    // A hub with its own watchdog, started after the first was ready: by
    // the time it has pinged three times the first has had as long to ping.
    let own_dir = tempfile::tempdir().unwrap();
    let (own_path, own_sock) = listen(own_dir.path());
    let mut own = HubProc::start(
        own_dir.path(),
        "",
        &[("NOTIFY_SOCKET", &own_path), ("WATCHDOG_USEC", "100000")],
    );
    let mut own_got = Vec::new();
    wait_for("three watchdog pings", Duration::from_secs(10), || {
        notifications(&own_sock, &mut own_got);
        let pings = own_got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        std::future::ready((pings >= 3).then_some(()))
    })
    .await;
    assert!(
        own_got[0].contains("READY=1") && own_got[0].contains("STATUS=serving"),
        "{own_got:?}"
    );
    assert_eq!(other.stop(), Some(0));
    assert_eq!(own.stop(), Some(0));
    notifications(&other_sock, &mut other_got);
    notifications(&own_sock, &mut own_got);
    assert!(
        !other_got.iter().any(|m| m.contains("WATCHDOG=1")),
        "WATCHDOG_PID names another process: {other_got:?}"
    );
    assert!(
        other_got.iter().any(|m| m.contains("STOPPING=1")),
        "{other_got:?}"
    );
    assert!(
        own_got.iter().any(|m| m.contains("STOPPING=1")),
        "{own_got:?}"
    );
}

/// The shipped unit file passes `systemd-analyze verify` (pointed at this
/// build's binary, since the unit names the installed path).
#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        // A pass that checked nothing must not count in CI, where test.sh
        // installs systemd.
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze (Debian's systemd) is required in CI"
        );
        eprintln!("SKIPPED systemd-analyze verify: no systemd on this machine");
        return;
    };
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/kernal-hub.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/kernal hub"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kernal-hub.service");
    let bin = kernal_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/kernal", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !said.contains("kernal-hub.service:"),
        "systemd-analyze verify: {said}"
    );
}
