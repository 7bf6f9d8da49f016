//! Helpers shared by the integration tests: a real hub on a free loopback
//! port with a fresh SQLite file, and a raw protocol-v1 WebSocket client.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kernal::config::Config;
use kernal::protocol::ModelLayout;
use kernal::RunningHub;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub const ADMIN: &str = "test-admin-token";

pub struct TestHub {
    pub hub: RunningHub,
    pub dir: tempfile::TempDir,
}

impl TestHub {
    pub fn url(&self) -> String {
        self.hub.url()
    }
    pub fn ws(&self) -> String {
        format!("{}/v1/trainers/ws", self.hub.ws_url())
    }
}

/// Config for tests: fresh state dir and database, known admin token.
pub fn test_config(dir: &tempfile::TempDir) -> Config {
    let mut cfg = Config::builtin();
    cfg.hub.db = dir.path().join("hub.db").display().to_string();
    cfg.hub.state_dir = dir.path().display().to_string();
    cfg.hub.admin_token = ADMIN.into();
    cfg
}

pub fn start_hub(edit: impl FnOnce(&mut Config)) -> TestHub {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(&dir);
    edit(&mut cfg);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hub = kernal::spawn_hub(listener, cfg).expect("hub starts");
    TestHub { hub, dir }
}

/// Polls `f` until it returns Some, or panics at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("json")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw protocol client that lets tests send anything, well-formed or not.
pub struct Raw {
    pub ws: Ws,
    /// The newest `model` push seen while skipping to something else: a
    /// version can be pushed before the ack of the update that made it.
    pub last_model: Option<(u64, Vec<u8>)>,
}

pub enum Frame {
    Json(Value),
    Binary(Vec<u8>),
    Closed(Option<String>),
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let cfg = WebSocketConfig {
            max_message_size: None,
            max_frame_size: None,
            ..Default::default()
        };
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(cfg), false)
            .await
            .expect("ws connect");
        Raw {
            ws,
            last_model: None,
        }
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::Binary(b)).await.expect("send");
    }

    pub async fn next(&mut self) -> Frame {
        // One deadline for the whole wait: pings must not keep it alive.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame within 20 s");
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Frame::Json(serde_json::from_str(&t).expect("hub sends JSON"))
                }
                Some(Ok(Message::Binary(b))) => return Frame::Binary(b),
                Some(Ok(Message::Close(c))) => {
                    return Frame::Closed(c.map(|c| c.reason.to_string()))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Frame::Closed(Some(e.to_string())),
                None => return Frame::Closed(None),
            }
        }
    }

    /// Next JSON frame, skipping binary frames and `model` pushes unless asked.
    pub async fn next_json_skipping_models(&mut self) -> Value {
        loop {
            match self.next().await {
                Frame::Json(v) if v["type"] == "model" => {
                    // its binary frame follows
                    if let Frame::Binary(b) = self.next().await {
                        let ver = v["version"].as_u64().unwrap_or(0);
                        if self
                            .last_model
                            .as_ref()
                            .map(|(l, _)| ver > *l)
                            .unwrap_or(true)
                        {
                            self.last_model = Some((ver, b));
                        }
                    }
                }
                Frame::Json(v) => return v,
                Frame::Binary(_) => continue,
                Frame::Closed(r) => return serde_json::json!({"type": "closed", "reason": r}),
            }
        }
    }

    /// Waits for a JSON message of `kind` (skipping others).
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_json_skipping_models().await;
            if v["type"] == kind {
                return v;
            }
            if v["type"] == "closed" {
                panic!("connection closed while waiting for {kind}: {v}");
            }
        }
    }

    /// Waits for an error and returns its code.
    pub async fn expect_error(&mut self) -> Value {
        loop {
            let v = self.next_json_skipping_models().await;
            if v["type"] == "error" || v["type"] == "closed" {
                return v;
            }
        }
    }

    /// Hello and welcome; returns (welcome, decoded weights).
    pub async fn hello(url: &str, name: &str, token: &str, model: &str) -> (Raw, Value, Vec<f32>) {
        let mut r = Raw::connect(url).await;
        r.send_json(serde_json::json!({
            "type": "hello", "name": name, "specialty": "networking", "token": token, "model": model
        }))
        .await;
        let w = match r.next().await {
            Frame::Json(v) => v,
            _ => panic!("expected welcome"),
        };
        assert_eq!(w["type"], "welcome", "{w}");
        let layout: ModelLayout = ModelLayout {
            tensors: serde_json::from_value(w["tensors"].clone()).unwrap(),
        };
        let weights = match r.next().await {
            Frame::Binary(b) => layout.decode(&b).expect("weights decode"),
            _ => panic!("expected weights"),
        };
        (r, w, weights)
    }

    pub async fn send_update(&mut self, id: &str, base: u64, n: u64, payload: Vec<u8>) {
        self.send_json(serde_json::json!({
            "type": "update", "update_id": id, "base_version": base, "num_examples": n, "loss": 0.5
        }))
        .await;
        self.send_binary(payload).await;
    }

    /// Waits for the ack or error of update `id`.
    pub async fn outcome(&mut self, id: &str) -> Value {
        loop {
            let v = self.next_json_skipping_models().await;
            if (v["type"] == "ack" || v["type"] == "error") && v["update_id"] == id {
                return v;
            }
            if v["type"] == "closed" {
                panic!("closed while waiting for the outcome of {id}: {v}");
            }
        }
    }

    /// Waits for a `model` push with version >= v; returns (version, weights bytes).
    pub async fn wait_version(&mut self, v: u64) -> (u64, Vec<u8>) {
        if let Some((ver, b)) = self.last_model.take() {
            if ver >= v {
                return (ver, b);
            }
        }
        loop {
            match self.next().await {
                Frame::Json(m) if m["type"] == "model" => {
                    let ver = m["version"].as_u64().unwrap();
                    let Frame::Binary(b) = self.next().await else {
                        panic!("model without weights")
                    };
                    if ver >= v {
                        return (ver, b);
                    }
                }
                Frame::Closed(r) => panic!("closed waiting for version {v}: {r:?}"),
                _ => {}
            }
        }
    }
}

/// The digits model's layout (as the built-in config declares it).
pub fn digits_layout() -> ModelLayout {
    kernal::trainer::net::MlpSpec {
        inputs: 64,
        hidden: 64,
        classes: 10,
    }
    .layout()
}

pub fn kernal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kernal"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
