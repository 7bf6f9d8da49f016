//! What a trainer carries from one connection to the next, and the figures
//! it reports at the end.

use std::collections::HashMap;

use serde::Serialize;

use super::update::Pending;
use crate::EvalReport;

/// Figures at the end of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub versions_trained: u64,
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
    pub refusal_codes: HashMap<String, u64>,
    pub acked_ids: Vec<String>,
    pub last_version: u64,
    pub last_eval: Option<EvalReport>,
}

impl Summary {
    pub(super) fn last_version_trained(&self) -> Option<u64> {
        if self.versions_trained == 0 {
            None
        } else {
            Some(self.last_version)
        }
    }
    pub(super) fn mark_trained(&mut self, v: u64) {
        self.last_version = v;
    }
}

/// What a trainer carries from one connection to the next.
#[derive(Default)]
pub(super) struct Progress {
    pub summary: Summary,
    /// The update sent and not yet answered: resent with the same id.
    pub pending: Option<Pending>,
    /// Reconnection attempts since the last welcome.
    pub attempt: u32,
}
