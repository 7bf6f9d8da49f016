//! What `GET /v1/models` and `/v1/status` report of the live hub.

use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use serde::Serialize;

use super::core::{Hub, TrainerLive};
use crate::aggregation::AggregationSettings;
use crate::hub::state::Waiting;
use crate::protocol::TensorSpec;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelStatus {
    pub name: String,
    pub architecture: String,
    pub version: u64,
    pub num_params: usize,
    pub tensors: Vec<TensorSpec>,
    pub settings: AggregationSettings,
    pub waiting: Waiting,
    pub connected_trainers: usize,
    /// The newest version's metrics (evaluation, aggregation report).
    #[schema(value_type = Option<Object>)]
    pub last_metrics: Option<serde_json::Value>,
    /// The model's input normalisation (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalisation: Option<crate::protocol::Normalisation>,
    /// The attached evaluation set (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evalset: Option<EvalsetInfo>,
}

/// What `GET /v1/models/{m}` says of an attached evaluation set.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EvalsetInfo {
    pub rows: usize,
    pub features: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OnlineTrainer {
    pub name: String,
    pub specialty: String,
    pub model: String,
    pub session_id: String,
    pub connected_since: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HubStatus {
    pub models: Vec<ModelStatus>,
    pub online: Vec<OnlineTrainer>,
    pub live: HashMap<String, TrainerLive>,
    pub stopping: bool,
    pub open_registration: bool,
}

#[derive(Message)]
#[rtype(result = "HubStatus")]
pub struct GetStatus;

impl Handler<GetStatus> for Hub {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        let models = self
            .models
            .values()
            .map(|m| ModelStatus {
                name: m.name.clone(),
                architecture: m.architecture.clone(),
                version: m.version,
                num_params: m.layout.num_params(),
                tensors: m.layout.tensors.clone(),
                settings: m.settings.clone(),
                waiting: m.waiting(now),
                connected_trainers: self.sessions.values().filter(|s| s.model == m.name).count(),
                last_metrics: m.last_metrics.clone(),
                normalisation: m.norm.wire(),
                evalset: m.evalset.as_ref().map(|e| EvalsetInfo {
                    rows: e.len(),
                    features: e.dim,
                }),
            })
            .collect();
        let mut online: Vec<OnlineTrainer> = self
            .sessions
            .iter()
            .map(|(name, s)| OnlineTrainer {
                name: name.clone(),
                specialty: s.specialty.clone(),
                model: s.model.clone(),
                session_id: s.id.clone(),
                connected_since: s.since.clone(),
            })
            .collect();
        online.sort_by(|a, b| a.name.cmp(&b.name));
        MessageResult(HubStatus {
            models,
            online,
            live: self.live.clone(),
            stopping: self.stopping,
            open_registration: self.cfg.hub.open_registration,
        })
    }
}
