//! The trainer's connection loop: hello, receive versions, train, send
//! deltas, wait for acks, report evaluations; reconnect with exponential
//! backoff and jitter; resend an unacknowledged update with the same
//! `update_id` so the hub applies it once.
//!
//! This module only declares its parts and re-exports what callers use, so
//! `crate::connection::X` paths stay as they were before the split.

mod error;
mod flow;
mod frames;
mod options;
mod progress;
mod reconnect;
mod session;
mod transport;
mod update;
mod welcome;

pub use crate::events::ClientEvent;
pub use error::ClientError;
pub(crate) use flow::Flow;
pub use options::{http_url, ws_url, ClientOptions, Compression};
pub use progress::Summary;
pub use reconnect::run;
pub(crate) use transport::{connect, Ws};
