//! Opening the trainer's WebSocket, plain or over TLS.

use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Ws, String> {
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
    .map_err(|_| "connection timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(ws)
}
