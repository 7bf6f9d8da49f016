//! The aggregator's messages: what the hub, the persister and the sessions
//! report, and what the API asks of it.

use std::collections::BTreeMap;

use actix::prelude::*;
use serde::Serialize;

use crate::hub::hub_event::HubEvent;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Event(pub HubEvent);

/// A batch of events, in order: the hub sends the accepted updates of a
/// busy second together instead of one actor message each.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Events(pub Vec<HubEvent>);

#[derive(Message)]
#[rtype(result = "()")]
pub struct PersisterTiming {
    pub what: &'static str,
    pub seconds: f64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct WsSession {
    pub kind: &'static str,
    pub opened: bool,
}

/// Per-model gauges the Hub reports whenever they change.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct ModelGauges {
    pub model: String,
    pub version: u64,
    pub buffered: usize,
    pub connected: usize,
}

/// A JSON event for a feed subscriber.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct EventFrame(pub std::sync::Arc<str>);

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<EventFrame>);

#[derive(Message)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

#[derive(Message)]
#[rtype(result = "String")]
pub struct RenderPrometheus;

#[derive(Debug, Clone, Serialize, Default, utoipa::ToSchema)]
pub struct Snapshot {
    pub uptime_secs: f64,
    pub updates_per_sec: f64,
    pub bytes_in_per_sec: f64,
    pub updates_received: u64,
    pub updates_accepted: u64,
    pub updates_refused: u64,
    pub refusals_by_code: BTreeMap<String, u64>,
    pub versions_committed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connected_trainers: usize,
    pub last_aggregation_seconds: Option<f64>,
    pub persister_queue: i64,
    #[schema(value_type = Vec<Object>)]
    pub recent_events: Vec<serde_json::Value>,
}
