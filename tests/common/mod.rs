//! Helpers shared by the integration tests: a real hub on a loopback port the
//! kernel picks, with a fresh SQLite file, and a raw protocol-v1 WebSocket client.
#![allow(dead_code)]

pub mod python;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kernal_hub::config::Config;
use kernal_hub::protocol::ModelLayout;
use kernal_hub::RunningHub;
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
    let hub = kernal_hub::spawn_hub(listener, cfg).expect("hub starts");
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
    kernal_hub::model::MlpSpec {
        inputs: 64,
        hidden: 64,
        classes: 10,
    }
    .layout()
}

pub fn kernal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kernal"))
}

/// A port for an outside tool that must be told one (chromedriver); hubs
/// bind port 0 and report theirs (`HubProc`, `--addr-file`).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `kernal hub` child process on a port the kernel picks, with a fresh
/// state directory: for what an in-process hub cannot show (exit codes,
/// SIGKILL, the process's memory, its log).
pub struct HubProc {
    pub child: Option<std::process::Child>,
    pub dir: PathBuf,
    pub addr: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    pub config: String,
    env: Vec<(String, String)>,
}

impl HubProc {
    /// A hub with `config` (TOML) layered on the defaults and `env`, not
    /// started yet.
    pub fn new(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> HubProc {
        HubProc {
            child: None,
            dir: dir.to_path_buf(),
            addr: String::new(),
            log: Default::default(),
            config: config.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Starts a hub with `config` (TOML) layered on the defaults and `env`.
    pub fn start(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> HubProc {
        let mut p = HubProc::new(dir, config, env);
        p.spawn("127.0.0.1:0").expect("hub starts");
        p
    }

    /// Starts the process (again, on the same database); Err with the log
    /// when it exits before serving.
    pub fn spawn(&mut self, bind: &str) -> Result<(), (Option<i32>, String)> {
        use std::io::{BufRead, BufReader};
        let cfg = self.dir.join("hub.toml");
        std::fs::write(&cfg, &self.config).unwrap();
        let addr_file = self.dir.join("hub.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = std::process::Command::new(kernal_bin());
        cmd.args(["hub", "--config"])
            .arg(&cfg)
            .args(["--bind", bind, "--db"])
            .arg(self.dir.join("hub.db"))
            .arg("--addr-file")
            .arg(&addr_file)
            .env("KERNAL__HUB__STATE_DIR", &self.dir)
            .env("KERNAL__HUB__ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn,kernal=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // An empty value removes the variable (RUST_LOG, to let the config
        // file choose the log level).
        for (k, v) in &self.env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().expect("start kernal hub");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = log.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if a.parse::<std::net::SocketAddr>().is_ok() {
                    self.addr = a;
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err((status.code(), self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "hub did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/v1/trainers/ws", self.addr)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Peak resident set (VmHWM) in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: f64 = s
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024.0
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client frame with a fresh mask, `fin` or not.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = rand::random();
    let mut f = kernal_hub::hub::ws::frame_header(opcode, payload.len(), Some(mask));
    if !fin {
        f[0] &= 0x7F;
    }
    let start = f.len();
    f.extend_from_slice(payload);
    kernal_hub::hub::ws::apply_mask(&mut f[start..], mask, 0);
    f
}

/// A raw TCP connection from `from` (a loopback address such as
/// 127.0.0.2, or any), upgraded to the trainer WebSocket with `headers`.
/// Returns the socket, the HTTP status and what was read past the head.
pub async fn raw_ws(
    addr: &str,
    path: &str,
    from: Option<std::net::IpAddr>,
    headers: &[(&str, &str)],
) -> (tokio::net::TcpStream, u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sa: std::net::SocketAddr = addr.parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        sock.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
    }
    let mut s = sock.connect(sa).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("an answer to the upgrade")
            .unwrap();
        assert!(n > 0, "closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (s, status, buf[end..].to_vec())
}

/// Reads unmasked server frames from a raw socket: (opcode, payload).
pub struct RawReader {
    pub buf: Vec<u8>,
}

impl RawReader {
    pub async fn next(&mut self, s: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            let mut cur = std::io::Cursor::new(&self.buf[..]);
            if let Ok(Some((h, len))) =
                tokio_tungstenite::tungstenite::protocol::frame::FrameHeader::parse(&mut cur)
            {
                let used = cur.position() as usize;
                if self.buf.len() >= used + len as usize {
                    let p = self.buf[used..used + len as usize].to_vec();
                    self.buf.drain(..used + len as usize);
                    return Some((u8::from(h.opcode), p));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next JSON text frame (skipping pings, pongs and binaries).
    pub async fn json(&mut self, s: &mut tokio::net::TcpStream) -> Option<Value> {
        loop {
            let (op, p) = self.next(s).await?;
            match op {
                0x1 => return serde_json::from_slice(&p).ok(),
                0x8 => return None,
                _ => continue,
            }
        }
    }
}
