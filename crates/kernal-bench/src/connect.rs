//! A synthetic trainer's connection: TCP (or TLS) and the WebSocket upgrade
//! by hand, checked for `101`.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frames::ReadSide;

/// A trainer's connection: plain TCP, whose received weights are dropped in
/// the kernel, or TLS.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why an upgrade failed: the hub said no (with its status), or the network.
#[derive(Debug)]
pub(crate) enum Upgrade {
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
pub(crate) async fn connect(
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

pub(crate) type WriteSide = Box<dyn AsyncWrite + Unpin + Send>;

impl Conn {
    pub(crate) fn split(self) -> (ReadSide, WriteSide) {
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
