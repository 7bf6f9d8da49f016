//! Hub-issued trainer tokens: issued by the admin API, checked with a fast
//! keyed hash whose key stays outside the database, still accepted after a
//! SIGKILL and restart; people's tokens keep argon2.

mod common;

use common::*;
use serde_json::{json, Value};

async fn issue(url: &str, query: &str, admin: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(format!("{url}/v1/trainer-tokens{query}"));
    if let Some(a) = admin {
        r = r.bearer_auth(a);
    }
    r.send().await.unwrap()
}

fn stored_hashes(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut conn = kernal_hub::db::connect(&dir.join("hub.db")).unwrap();
    kernal_hub::db::list_trainers_page(&mut conn, None, 100)
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.token_hash))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_are_checked_fast_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = HubProc::start(dir.path(), "", &[]);
    let url = hub.url();

    // Admin only; the count is range-checked.
    assert_eq!(issue(&url, "", None).await.status(), 401);
    let r = issue(&url, "?count=0", Some(ADMIN)).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "bad_request");
    assert_eq!(issue(&url, "?count=10001", Some(ADMIN)).await.status(), 400);
    let r = issue(&url, "?count=3", Some(ADMIN)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let tokens: Vec<String> = serde_json::from_value(v["tokens"].clone()).unwrap();
    assert_eq!(tokens.len(), 3);
    assert!(tokens
        .iter()
        .all(|t| t.starts_with("kt1_") && t.len() == 68));

    // Register one name with an issued token and one with a person's token.
    let (r1, _, _) = Raw::hello(&hub.ws(), "fleet1", &tokens[0], "digits").await;
    let (r2, _, _) = Raw::hello(&hub.ws(), "person", "s3cret", "digits").await;
    drop((r1, r2));
    let stored = stored_hashes(dir.path());
    let of = |n: &str| stored.iter().find(|(name, _)| name == n).unwrap().1.clone();
    let fleet_hash = of("fleet1");
    assert!(fleet_hash.starts_with("$kernal-hmac$"), "{fleet_hash}");
    assert!(!fleet_hash.contains(&tokens[0][4..]));
    assert!(of("person").starts_with("$argon2"));
    // The key is not in the database directory's database but in its own 0600 file.
    let key = dir.path().join("token.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // SIGKILL, restart on the same database and state: both tokens still work,
    // another issued token is refused for the registered name.
    hub.kill9();
    hub.spawn("127.0.0.1:0").unwrap();
    let ws = hub.ws();
    let _a = Raw::hello(&ws, "fleet1", &tokens[0], "digits").await;
    let _b = Raw::hello(&ws, "person", "s3cret", "digits").await;
    let mut r = Raw::connect(&ws).await;
    r.send_json(json!({"type": "hello", "name": "fleet1", "specialty": "s",
                       "token": tokens[1], "model": "digits"}))
        .await;
    assert_eq!(r.expect_error().await["code"], "bad_token");

    // Without the key file the hub cannot check its fast tokens: a stolen
    // database alone tests no guess. (A new key is generated; the old
    // token is refused, the person's argon2 token still works.)
    hub.kill9();
    std::fs::remove_file(&key).unwrap();
    hub.spawn("127.0.0.1:0").unwrap();
    let ws = hub.ws();
    let mut r = Raw::connect(&ws).await;
    r.send_json(json!({"type": "hello", "name": "fleet1", "specialty": "s",
                       "token": tokens[0], "model": "digits"}))
        .await;
    assert_eq!(r.expect_error().await["code"], "bad_token");
    let _c = Raw::hello(&ws, "person", "s3cret", "digits").await;
}
