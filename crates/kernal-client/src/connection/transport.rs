//! Opening the trainer's WebSocket, plain or over TLS.

use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::tls::TlsError;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why a connection attempt failed; the loop reports it as `connect: ...`
/// and tries again, so the message is what the user reads.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("connection timed out")]
    TimedOut,
    #[error("{0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

pub(crate) async fn connect(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Ws, ConnectError> {
    let cfg = WebSocketConfig {
        max_message_size: Some(2 << 30),
        max_frame_size: Some(2 << 30),
        ..Default::default()
    };
    let connector = if url.starts_with("wss://") {
        let tls = match tls {
            Some(t) => t.clone(),
            None => crate::tls::client_config(None)?,
        };
        Some(tokio_tungstenite::Connector::Rustls(tls))
    } else {
        None
    };
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_tls_with_config(url, Some(cfg), true, connector),
    )
    .await
    .map_err(|_| ConnectError::TimedOut)??;
    Ok(ws)
}
