//! The hub: its actors and HTTP server wired together, and its lifecycle.
//! Starting, the handles and shutdown are in [`start`], startup recovery in
//! [`recovery`], the admin token in [`secrets`], live reload in [`reload`],
//! process and connection limits in [`limits`].

pub mod api;
pub mod child;
pub mod daemon;
pub mod dashboard;
pub mod encoded;
pub mod evaluator_tokens;
pub mod events;
pub mod hub_actor;
pub mod hub_event;
pub mod kernel_eval;
pub mod limits;
pub mod metrics;
pub mod normalisation;
pub mod outbox;
pub mod pacer;
pub mod persister;
pub mod recovery;
pub mod registration;
pub mod reload;
pub mod round;
pub mod round_tensors;
pub mod screen_round;
pub mod secrets;
pub mod session;
pub mod start;
pub mod state;
pub mod tls;
pub mod version_metrics;
pub mod ws;

pub use crate::error::HubError;
pub use limits::session_limits_of;
pub use recovery::{load_state, stored_overrides, Loaded};
pub use reload::ConfigSource;
pub use secrets::admin_token;
pub use start::{spawn_hub, start_hub, HubHandle, RunningHub};
