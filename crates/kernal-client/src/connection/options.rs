//! What a trainer is told before it connects, and the hub URLs it derives.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::protocol::TRAINER_WS_PATH;

/// Half-precision encoding of deltas, chosen per trainer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    F16,
    Bf16,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://host:port` (or `http://`), with or without the trainer path.
    pub hub: String,
    pub name: String,
    pub specialty: String,
    pub token: String,
    pub model: String,
    /// Stop after training on this many global versions.
    pub max_versions: Option<u64>,
    pub compression: Compression,
    /// Reconnect after the hub goes away (false: return an error).
    pub reconnect: bool,
    pub max_backoff: Duration,
    /// Give up after this many consecutive failed connection attempts.
    pub max_attempts: Option<u32>,
    /// Trust for `wss://` hubs (None: the public web roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClientOptions {
    pub fn new(hub: &str, name: &str, specialty: &str, token: &str) -> Self {
        ClientOptions {
            hub: hub.to_string(),
            name: name.to_string(),
            specialty: specialty.to_string(),
            token: token.to_string(),
            model: "digits".into(),
            max_versions: None,
            compression: Compression::None,
            reconnect: true,
            max_backoff: Duration::from_secs(10),
            max_attempts: None,
            tls: None,
        }
    }
}

/// Turns whatever the user gave into the trainer WebSocket URL.
pub fn ws_url(hub: &str) -> String {
    let mut u = hub.trim_end_matches('/').to_string();
    if let Some(rest) = u.strip_prefix("http://") {
        u = format!("ws://{rest}");
    } else if let Some(rest) = u.strip_prefix("https://") {
        u = format!("wss://{rest}");
    } else if !u.starts_with("ws://") && !u.starts_with("wss://") {
        u = format!("ws://{u}");
    }
    if !u.ends_with(TRAINER_WS_PATH) {
        u.push_str(TRAINER_WS_PATH);
    }
    u
}

/// The REST base URL of a hub given as a WebSocket or HTTP URL.
pub fn http_url(hub: &str) -> String {
    let u = ws_url(hub);
    let u = u.trim_end_matches(TRAINER_WS_PATH);
    if let Some(rest) = u.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = u.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        u.to_string()
    }
}
