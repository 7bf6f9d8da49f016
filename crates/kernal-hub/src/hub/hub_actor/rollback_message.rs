//! The rollback request and its answer. They live apart from the handler
//! (`rollback.rs`), which reads payloads back through the fold, so that
//! re-exporting them from `hub_actor` does not make the fold's imports
//! circular.

use actix::prelude::*;
use serde::Serialize;

use crate::protocol::Refusal;

/// Makes an earlier kept checkpoint the model's current weights, as a new
/// version (its parent is the version it replaces; the metrics name the
/// version it restores). The server optimizer starts over, and pending
/// updates trained from a version after the restored one are refused
/// (`rolled_back`): they were computed from the weights being discarded.
#[derive(Message)]
#[rtype(result = "Result<RolledBack, Refusal>")]
pub struct Rollback {
    pub model: String,
    pub to_version: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RolledBack {
    pub model: String,
    /// The new current version.
    pub version: u64,
    /// The version whose weights it holds.
    pub restored: u64,
    /// Pending updates refused because they were trained after `restored`.
    pub refused_updates: usize,
}
