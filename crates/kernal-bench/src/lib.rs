// Over 600 lines: one command: its own hub, a fleet of raw-socket trainers, the measurements and their report, which only make sense together.
//! `kernal bench`: a load benchmark of the hub. Starts its own hub (a child
//! process, so its peak RSS and CPU time can be read from /proc) or uses
//! `--hub`, connects N synthetic trainers as real WebSocket clients in this
//! process (no learning: each answers every version with a fixed delta),
//! runs R versions after a warm-up and prints the figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use kernal_hub::aggregation::Strategy;
use kernal_hub::hub::child::ChildHub;
use kernal_hub::hub::ws::{apply_mask, frame_header};
use kernal_core::protocol::ModelLayout;
use kernal_client::connection;

mod rejoin;
use rejoin::{hello_frame, measure_rejoin, trainer_tokens};

/// `kernal bench` options (the CLI parses straight into this).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Use this running hub instead of starting one (needs --admin-token).
    #[arg(long)]
    pub hub: Option<String>,
    #[arg(long, env = "KERNAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Parameters of the flat float32 model.
    #[arg(long)]
    pub params: usize,
    /// Synthetic trainers.
    #[arg(long)]
    pub trainers: usize,
    /// Versions measured (after the warm-up).
    #[arg(long)]
    pub versions: u64,
    /// Versions run before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Updates per version (default: every trainer).
    #[arg(long)]
    pub min_updates: Option<usize>,
    /// fedavg, fedavgm, fedadam, median or trimmed_mean.
    #[arg(long, default_value = "fedavg", value_parser = kernal_hub::config::by_name::<Strategy>)]
    pub strategy: Strategy,
    /// Send float16 deltas.
    #[arg(long = "f16")]
    pub half: bool,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// For a `wss://`/`https://` hub with a private CA: trust this PEM file too.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// After the run, SIGKILL the bench's own hub, restart it on the same
    /// database, and measure how long every trainer takes to be welcomed
    /// again when all reconnect at once (a fleet after a hub restart).
    #[arg(long)]
    pub rejoin: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub params: usize,
    pub trainers: usize,
    pub min_updates: usize,
    pub strategy: String,
    pub versions: u64,
    pub update_dtype: String,
    pub seconds_per_version_median: f64,
    pub seconds_per_version_min: f64,
    pub seconds_per_version_max: f64,
    pub versions_per_sec: f64,
    pub update_bytes_in_per_sec: f64,
    pub model_bytes_out_per_sec: f64,
    pub ack_latency_p50_ms: f64,
    pub ack_latency_p99_ms: f64,
    pub aggregation_seconds_median: Option<f64>,
    pub fold_rate_gb_per_sec: Option<f64>,
    pub hub_peak_rss_mib: Option<f64>,
    pub hub_cpu_seconds: Option<f64>,
    pub connect_seconds: f64,
    pub open_files_limit: Option<u64>,
    /// With `--rejoin`: seconds from the restarted hub answering until the
    /// last trainer was welcomed again, the median trainer's, and how many
    /// upgrades were refused (503) on the way.
    pub rejoin_seconds: Option<f64>,
    pub rejoin_median_seconds: Option<f64>,
    pub rejoin_refused_upgrades: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(String);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// The benchmark's own hub: limits sized for the run.
fn start_own_hub(args: &BenchArgs) -> Result<ChildHub, BenchError> {
    let mut hub = toml::Table::new();
    let max_msg = (args.params * 4 + (1 << 20)).max(256 << 20);
    hub.insert("max_message_bytes".into(), (max_msg as i64).into());
    hub.insert("client_timeout_secs".into(), 120i64.into());
    // A benchmark makes thousands of versions nobody will download: keep the
    // newest few checkpoints, as a production hub keeps a bounded history.
    hub.insert("keep_weights_versions".into(), 3i64.into());
    // Every synthetic trainer connects and registers at once from one address
    // (a real fleet from many): the per-address caps are hub-wide ones here.
    for key in [
        "max_pending_handshakes",
        "max_prehello_per_ip",
        "registrations_per_ip_per_hour",
        "max_trainers",
    ] {
        hub.insert(key.into(), ((args.trainers + 16) as i64).into());
    }
    if max_msg > 128 << 20 {
        // A message holds its bytes in the in-flight budget: a 400 MB update
        // needs a budget of that size, held by one connection at a time.
        hub.insert(
            "max_inflight_update_bytes".into(),
            ((max_msg + (1 << 20)) as i64).into(),
        );
        hub.insert("max_inflight_share".into(), 1.0f64.into());
    }
    hub.insert(
        "max_model_params".into(),
        (args.params.max(100_000_000) as i64).into(),
    );
    let mut root = toml::Table::new();
    root.insert("hub".into(), toml::Value::Table(hub));
    ChildHub::start(root).map_err(BenchError)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Shared {
    latencies: Mutex<Vec<f64>>,
    arrivals: Mutex<Vec<(u64, Instant)>>,
    highest: AtomicU64,
}

/// The synthetic trainers speak WebSocket over a plain socket (or TLS): a
/// general client library would copy each 4 MB update again on every send
/// and buffer each received model, and on a 2-core machine that CPU is
/// taken from the hub being measured. Every frame gets a fresh random mask
/// (RFC 6455 section 5.3); a large payload is masked in 64 KiB pieces as it
/// is written, so no trainer holds a masked copy of it.
struct Wire {
    /// The update payload, unmasked, shared by every trainer.
    payload: Arc<Vec<u8>>,
}

/// Payloads up to this size go out in one write with their headers.
const ONE_WRITE: usize = 64 * 1024;

impl Wire {
    /// A whole frame with a fresh mask.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask: [u8; 4] = rand::random();
        let mut f = frame_header(opcode, payload.len(), Some(mask));
        let start = f.len();
        f.extend_from_slice(payload);
        apply_mask(&mut f[start..], mask, 0);
        f
    }

    /// Writes an update: its JSON header frame, then the binary frame.
    async fn send_update(
        &self,
        wr: &mut (impl AsyncWrite + Unpin),
        header: &[u8],
        scratch: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let mask: [u8; 4] = rand::random();
        let p = &self.payload;
        scratch.clear();
        scratch.extend_from_slice(header);
        scratch.extend_from_slice(&frame_header(0x2, p.len(), Some(mask)));
        if p.len() <= ONE_WRITE {
            // One write for the three pieces: three woke the hub's
            // connection thread up to three times per update.
            let start = scratch.len();
            scratch.extend_from_slice(p);
            apply_mask(&mut scratch[start..], mask, 0);
            return wr.write_all(scratch).await;
        }
        wr.write_all(scratch).await?;
        for (k, piece) in p.chunks(ONE_WRITE).enumerate() {
            scratch.clear();
            scratch.extend_from_slice(piece);
            apply_mask(scratch, mask, k * ONE_WRITE);
            wr.write_all(scratch).await?;
        }
        Ok(())
    }
}

/// A trainer's connection: plain TCP, whose received weights are dropped in
/// the kernel, or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why an upgrade failed: the hub said no (with its status), or the network.
#[derive(Debug)]
enum Upgrade {
    Refused(u16, String),
    Failed(String),
}

impl std::fmt::Display for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upgrade::Refused(s, l) => write!(f, "upgrade refused ({s}): {l}"),
            Upgrade::Failed(e) => f.write_str(e),
        }
    }
}

async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    sock: &mut S,
    u: &url::Url,
    host: &str,
    port: u16,
) -> Result<Vec<u8>, Upgrade> {
    let fail = |e: std::io::Error| Upgrade::Failed(e.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        u.path(),
        tokio_tungstenite::tungstenite::handshake::client::generate_key()
    );
    sock.write_all(req.as_bytes()).await.map_err(fail)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = sock.read(&mut chunk).await.map_err(fail)?;
        if n == 0 {
            return Err(Upgrade::Failed(
                "hub closed the connection during the upgrade".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(Upgrade::Failed("oversized upgrade response".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        return Err(Upgrade::Refused(
            status,
            head.lines().next().unwrap_or("").to_string(),
        ));
    }
    Ok(buf[end..].to_vec())
}

/// Opens the WebSocket: the HTTP upgrade by hand, checked for `101`.
async fn connect(
    ws_url: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(Conn, Vec<u8>), Upgrade> {
    let fail = |e: String| Upgrade::Failed(e);
    let u = url::Url::parse(ws_url).map_err(|e| fail(e.to_string()))?;
    let host = u.host_str().unwrap_or("127.0.0.1").to_string();
    let port = u.port_or_known_default().unwrap_or(80);
    let sock = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    sock.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
    match u.scheme() {
        "ws" => {
            let mut sock = sock;
            let rest = upgrade(&mut sock, &u, &host, port).await?;
            Ok((Conn::Plain(sock), rest))
        }
        "wss" => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| fail(e.to_string()))?;
            let mut s = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, sock)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            let rest = upgrade(&mut s, &u, &host, port).await?;
            Ok((Conn::Tls(Box::new(s)), rest))
        }
        other => Err(fail(format!(
            "the benchmark speaks ws:// and wss://, not {other}"
        ))),
    }
}

/// Drops up to `n` received bytes without copying them out of the kernel
/// (`MSG_TRUNC` on a TCP socket): a synthetic trainer never looks at the
/// weights, and copying them would take CPU from the hub being measured.
async fn discard(sock: &OwnedReadHalf, n: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let stream: &TcpStream = sock.as_ref();
    loop {
        stream.readable().await?;
        let fd = stream.as_raw_fd();
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: a null buffer is allowed with MSG_TRUNC on TCP sockets:
            // the kernel discards the bytes instead of copying them.
            let got = unsafe {
                libc::recv(
                    fd,
                    std::ptr::null_mut(),
                    n,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            if got < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(got as usize)
            }
        });
        match r {
            Ok(got) => return Ok(got),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

enum ReadSide {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>),
}

type WriteSide = Box<dyn AsyncWrite + Unpin + Send>;

impl Conn {
    fn split(self) -> (ReadSide, WriteSide) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadSide::Plain(r), Box::new(w))
            }
            Conn::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadSide::Tls(r), Box::new(w))
            }
        }
    }
}

/// Reads server frames, keeping text payloads and discarding binary ones
/// (a synthetic trainer needs only the version number from the JSON).
struct FrameIn {
    sock: ReadSide,
    buf: Vec<u8>,
}

enum In {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Close,
}

impl FrameIn {
    async fn read_some(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.sock {
            ReadSide::Plain(r) => r.read(out).await,
            ReadSide::Tls(r) => r.read(out).await,
        }
    }

    async fn need(&mut self, n: usize) -> Result<bool, BenchError> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 8192];
            let got = self.read_some(&mut chunk).await.map_err(err)?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
        Ok(true)
    }

    /// Drops `n` bytes of payload still to come.
    async fn skip(&mut self, mut left: usize) -> Result<bool, BenchError> {
        let mut scratch = Vec::new();
        while left > 0 {
            let got = match &self.sock {
                ReadSide::Plain(r) => discard(r, left).await.map_err(err)?,
                ReadSide::Tls(_) => {
                    scratch.resize(left.min(64 * 1024), 0);
                    self.read_some(&mut scratch).await.map_err(err)?
                }
            };
            if got == 0 {
                return Ok(false);
            }
            left -= got;
        }
        Ok(true)
    }

    async fn next(&mut self) -> Result<Option<In>, BenchError> {
        let (opcode, len) = loop {
            let mut cursor = std::io::Cursor::new(&self.buf[..]);
            match FrameHeader::parse(&mut cursor).map_err(err)? {
                Some((h, len)) => {
                    let used = cursor.position() as usize;
                    self.buf.drain(..used);
                    break (u8::from(h.opcode), len as usize);
                }
                None => {
                    let want = self.buf.len() + 1;
                    if !self.need(want).await? {
                        return Ok(None);
                    }
                }
            }
        };
        if opcode == 0x2 {
            // Discard the weights without keeping them.
            let have = self.buf.len().min(len);
            self.buf.drain(..have);
            if !self.skip(len - have).await? {
                return Ok(None);
            }
            return Ok(Some(In::Binary));
        }
        if !self.need(len).await? {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf.drain(..len).collect();
        Ok(Some(match opcode {
            0x1 => In::Text(payload),
            0x9 => In::Ping(payload),
            0x8 => In::Close,
            _ => In::Text(Vec::new()),
        }))
    }
}

/// The fields a synthetic trainer reads from the hub's JSON, borrowed.
#[derive(serde::Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    version: Option<u64>,
    update_id: Option<&'a str>,
}

enum Out {
    Frame(Vec<u8>),
    Update { header: Vec<u8> },
    Close,
}

/// What one synthetic trainer needs to run.
struct TrainerRun {
    i: usize,
    token: Arc<Vec<String>>,
    ws_url: String,
    model: String,
    wire: Arc<Wire>,
    last_version: u64,
    measure_from: u64,
    shared: Arc<Shared>,
    ready: Arc<tokio::sync::Barrier>,
    tls: Arc<rustls::ClientConfig>,
}

async fn trainer(t: TrainerRun) -> Result<(), BenchError> {
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

/// (unix seconds, received bytes, sent bytes) from the hub's counters.
type Sample = (f64, f64, f64);

/// Reads the hub's byte counters every 100 ms, and once more when told to
/// stop, so the samples bracket the whole run.
async fn sample_traffic(
    http: reqwest::Client,
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Sample> {
    let mut out = Vec::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if let Ok(r) = http.get(&url).send().await {
            if let Ok(text) = r.text().await {
                let counter = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                if let (Some(i), Some(o)) = (
                    counter("kernal_received_bytes_total "),
                    counter("kernal_sent_bytes_total "),
                ) {
                    out.push((now, i, o));
                }
            }
        }
        if stopping {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes per second in and out between the last sample at or before `t0`
/// and the first at or after `t1` (for a run shorter than the sampling
/// interval this takes in a little of what came before and after).
fn traffic_rates(samples: &[Sample], t0: f64, t1: f64) -> (f64, f64) {
    let a = samples.iter().rev().find(|s| s.0 <= t0).or(samples.first());
    let b = samples.iter().find(|s| s.0 >= t1).or(samples.last());
    match (a, b) {
        (Some(a), Some(b)) if b.0 > a.0 => ((b.1 - a.1) / (b.0 - a.0), (b.2 - a.2) / (b.0 - a.0)),
        _ => (0.0, 0.0),
    }
}

pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    let nofile = kernal_hub::hub::daemon::raise_nofile_limit();
    let mut own = match &args.hub {
        Some(_) => None,
        None => Some(start_own_hub(args)?),
    };
    let (base, token) = match (&args.hub, &own) {
        (Some(u), _) => (connection::http_url(u), args.admin_token.clone()),
        (None, Some(h)) => (h.url(), Some(h.token.clone())),
        _ => return Err(BenchError("no hub".into())),
    };
    let tls = kernal_client::tls::client_config(args.ca.as_deref()).map_err(err)?;
    let http = kernal_client::tls::http_client(&tls, None).map_err(err)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError(format!("hub at {base} not reachable")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let model = format!("bench-{}-{}", args.params, uuid::Uuid::new_v4().simple());
    let k = args.min_updates.unwrap_or(args.trainers).max(1);
    let token = token.ok_or_else(|| {
        BenchError(
            "--hub needs --admin-token (or KERNAL_ADMIN_TOKEN) to create the benchmark model"
                .into(),
        )
    })?;
    let r = http
        .post(format!("{base}/v1/models"))
        .bearer_auth(&token)
        .json(
            &json!({"name": model, "architecture": "flat", "params": args.params,
                      "aggregation": {"strategy": args.strategy.as_str(), "min_updates": k,
                                      "round_timeout_secs": 600.0, "max_staleness": 1000000,
                                      "staleness_exponent": 0.0}}),
        )
        .send()
        .await
        .map_err(err)?;
    if !r.status().is_success() {
        return Err(BenchError(format!(
            "create model: {}",
            r.text().await.unwrap_or_default()
        )));
    }
    let tokens = trainer_tokens(&http, &base, &token, args.trainers, own.is_some()).await?;
    let layout = ModelLayout::new(vec![("weights".into(), vec![args.params])]);
    let delta = vec![1e-4f32; args.params];
    let dtype = if args.half {
        safetensors::Dtype::F16
    } else {
        safetensors::Dtype::F32
    };
    let payload = layout.encode_as(&delta, None, dtype).map_err(err)?;
    drop(delta);
    let wire = Arc::new(Wire {
        payload: Arc::new(payload),
    });
    let ws_url = connection::ws_url(&base);
    let total = args.warmup + args.versions;
    let shared = Arc::new(Shared {
        latencies: Mutex::new(Vec::new()),
        arrivals: Mutex::new(Vec::new()),
        highest: AtomicU64::new(0),
    });
    let ready = Arc::new(tokio::sync::Barrier::new(args.trainers));
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_traffic(
        http.clone(),
        format!("{base}/metrics"),
        stop_sampling.clone(),
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.trainers {
        let (u, m, p, s, r) = (
            ws_url.clone(),
            model.clone(),
            wire.clone(),
            shared.clone(),
            ready.clone(),
        );
        tasks.push(tokio::spawn(trainer(TrainerRun {
            i,
            token: tokens.clone(),
            ws_url: u,
            model: m,
            wire: p,
            last_version: total,
            measure_from: args.warmup,
            shared: s,
            ready: r,
            tls: tls.clone(),
        })));
        if i % 50 == 49 {
            // Let the hub hash tokens for a batch before opening more.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for t in tasks {
        t.await.map_err(err)??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let arrivals = shared.arrivals.lock().map_err(err)?.clone();
    let connect_seconds = arrivals
        .first()
        .map(|(_, t)| t.duration_since(started).as_secs_f64())
        .unwrap_or(elapsed);
    let mut lat = shared.latencies.lock().map_err(err)?.clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    let versions: Value = http
        .get(format!("{base}/v1/models/{model}/versions?limit=100000"))
        .send()
        .await
        .map_err(err)?
        .json()
        .await
        .map_err(err)?;
    let mut agg: Vec<f64> = versions["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|v| v["version"].as_u64().unwrap_or(0) > args.warmup)
        .filter_map(|v| v["metrics"]["aggregation_seconds"].as_f64())
        .collect();
    agg.sort_by(|a, b| a.total_cmp(b));
    let agg_median = (!agg.is_empty()).then(|| percentile(&agg, 0.5));
    // Seconds per version from the hub's own record of when each version
    // was made: what a trainer sees is bunched by its own scheduling.
    let made: Vec<(u64, f64)> = versions["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|v| v["version"].as_u64().unwrap_or(0) >= args.warmup)
        .filter_map(|v| {
            let t = chrono::DateTime::parse_from_rfc3339(v["created_at"].as_str()?).ok()?;
            Some((v["version"].as_u64()?, t.timestamp_micros() as f64 / 1e6))
        })
        .collect();
    let mut made = made;
    made.sort_by_key(|(v, _)| *v);
    let mut per_version: Vec<f64> = made.windows(2).map(|w| w[1].1 - w[0].1).collect();
    per_version.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&per_version, 0.5);
    stop_sampling.store(true, Ordering::SeqCst);
    let samples = sampler.await.map_err(err)?;
    let window = match (made.first(), made.last()) {
        (Some(a), Some(b)) if b.1 > a.1 => Some((a.1, b.1)),
        _ => None,
    };
    let (bytes_in_rate, bytes_out_rate) = window
        .map(|(t0, t1)| traffic_rates(&samples, t0, t1))
        .unwrap_or((0.0, 0.0));
    let f32_bytes_per_version = (k * args.params * 4) as f64;
    let (rss, cpu) = own.as_ref().map(|h| h.usage()).unwrap_or((None, None));
    let rejoin = match (&mut own, args.rejoin) {
        (Some(h), true) => Some(measure_rejoin(h, &tokens, &ws_url, &model, &tls, &http).await?),
        (None, true) => {
            return Err(BenchError(
                "--rejoin restarts the bench's own hub; it cannot be used with --hub".into(),
            ))
        }
        _ => None,
    };
    let report = BenchReport {
        params: args.params,
        trainers: args.trainers,
        min_updates: k,
        strategy: args.strategy.as_str().into(),
        versions: args.versions,
        update_dtype: if args.half {
            "F16".into()
        } else {
            "F32".into()
        },
        seconds_per_version_median: median,
        seconds_per_version_min: per_version.first().copied().unwrap_or(0.0),
        seconds_per_version_max: per_version.last().copied().unwrap_or(0.0),
        versions_per_sec: if median > 0.0 { 1.0 / median } else { 0.0 },
        update_bytes_in_per_sec: bytes_in_rate,
        model_bytes_out_per_sec: bytes_out_rate,
        ack_latency_p50_ms: percentile(&lat, 0.5),
        ack_latency_p99_ms: percentile(&lat, 0.99),
        aggregation_seconds_median: agg_median,
        fold_rate_gb_per_sec: agg_median
            .filter(|a| *a > 0.0)
            .map(|a| f32_bytes_per_version / a / 1e9),
        hub_peak_rss_mib: rss,
        hub_cpu_seconds: cpu,
        connect_seconds,
        open_files_limit: nofile,
        rejoin_seconds: rejoin.as_ref().map(|r| r.0),
        rejoin_median_seconds: rejoin.as_ref().map(|r| r.1),
        rejoin_refused_upgrades: rejoin.as_ref().map(|r| r.2),
    };
    Ok(report)
}

pub fn render(r: &BenchReport) -> String {
    let opt =
        |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
    format!(
        "kernal bench: {} params, {} trainers, min_updates {}, {}, {} versions, {} updates\n\
         seconds per version   median {:.4}  min {:.4}  max {:.4}  ({:.1} versions/s)\n\
         update bytes in       {:.1} MB/s\n\
         model bytes out       {:.1} MB/s\n\
         ack latency           p50 {:.1} ms  p99 {:.1} ms\n\
         aggregation           {} s per version, fold rate {} GB/s\n\
         hub                   peak RSS {} MiB, CPU {} s\n\
         (connecting took {:.1} s; open files limit {}){}\n",
        r.params,
        r.trainers,
        r.min_updates,
        r.strategy,
        r.versions,
        r.update_dtype,
        r.seconds_per_version_median,
        r.seconds_per_version_min,
        r.seconds_per_version_max,
        r.versions_per_sec,
        r.update_bytes_in_per_sec / 1e6,
        r.model_bytes_out_per_sec / 1e6,
        r.ack_latency_p50_ms,
        r.ack_latency_p99_ms,
        opt(r.aggregation_seconds_median, 4),
        opt(r.fold_rate_gb_per_sec, 2),
        opt(r.hub_peak_rss_mib, 0),
        opt(r.hub_cpu_seconds, 1),
        r.connect_seconds,
        r.open_files_limit
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
        match (r.rejoin_seconds, r.rejoin_median_seconds, r.rejoin_refused_upgrades) {
            (Some(all), Some(median), Some(refused)) => format!(
                "\nrejoin after a restart  all {} trainers welcomed in {all:.1} s (median {median:.1} s), {refused} upgrades refused on the way",
                r.trainers
            ),
            _ => String::new(),
        },
    )
}

/// The CLI: prints the figures (or one JSON object), returns the exit code.
pub fn run_cli(args: BenchArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kernal bench: {e}");
            return 1;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print!("{}", render(&r));
            }
            0
        }
        Err(e) => {
            eprintln!("kernal bench: {e}");
            1
        }
    }
}
