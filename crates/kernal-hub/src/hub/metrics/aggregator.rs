//! The MetricsAggregator actor: counters and rolling figures fed by hub
//! events, the JSON snapshot, and the batched live feed to `/v1/events`
//! subscribers. Its Prometheus rendering is in `render.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::prelude::*;

use super::histogram::Histogram;
use super::hot::HotMetrics;
use super::messages::{
    Event, EventFrame, Events, GetSnapshot, ModelGauges, PersisterTiming, Snapshot, Subscribe,
    WsSession,
};
use crate::hub::hub_event::HubEvent;

pub struct MetricsAggregator {
    pub(super) started: Instant,
    pub(super) received: HashMap<String, u64>,
    pub(super) accepted: HashMap<String, u64>,
    pub(super) refused: BTreeMap<(String, String), u64>,
    pub(super) versions: u64,
    pub hot: Arc<HotMetrics>,
    pub(super) ws_opened: BTreeMap<&'static str, u64>,
    pub(super) ws_closed: BTreeMap<&'static str, u64>,
    pub(super) gauges: BTreeMap<String, ModelGauges>,
    pub(super) agg_hist: BTreeMap<String, Histogram>,
    pub(super) persist_hist: BTreeMap<&'static str, Histogram>,
    pub(super) last_agg: Option<f64>,
    /// (time, updates, bytes) samples for the rolling rates.
    pub(super) window: VecDeque<(Instant, u64, u64)>,
    pub(super) recent: VecDeque<serde_json::Value>,
    pub(super) subscribers: Vec<Recipient<EventFrame>>,
    /// Events queued for subscribers; flushed in batches (see `FLUSH_EVERY`).
    pub(super) outbox: Vec<serde_json::Value>,
}

/// How often queued events are pushed to feed subscribers. Batching bounds
/// the frames a dashboard receives however busy the hub is.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Most events sent per flush; beyond it, accepted-update events are folded
/// into one `updates_summary` event.
pub const MAX_EVENTS_PER_FLUSH: usize = 50;
const RECENT: usize = 200;

impl Default for MetricsAggregator {
    fn default() -> Self {
        MetricsAggregator {
            started: Instant::now(),
            received: HashMap::new(),
            accepted: HashMap::new(),
            refused: BTreeMap::new(),
            versions: 0,
            hot: Arc::default(),
            ws_opened: BTreeMap::new(),
            ws_closed: BTreeMap::new(),
            gauges: BTreeMap::new(),
            agg_hist: BTreeMap::new(),
            persist_hist: BTreeMap::new(),
            last_agg: None,
            window: VecDeque::new(),
            recent: VecDeque::new(),
            subscribers: Vec::new(),
            outbox: Vec::new(),
        }
    }
}

impl MetricsAggregator {
    pub(super) fn total_accepted(&self) -> u64 {
        self.accepted.values().sum()
    }

    fn rates(&self) -> (f64, f64) {
        let now = Instant::now();
        let (Some(first), Some(last)) = (self.window.front(), self.window.back()) else {
            return (0.0, 0.0);
        };
        let dt = now.duration_since(first.0).as_secs_f64().max(1.0);
        (
            (last.1 - first.1) as f64 / dt,
            (last.2 - first.2) as f64 / dt,
        )
    }

    fn sample(&mut self) {
        let now = Instant::now();
        let acc = self.total_accepted();
        let bytes_in = self.hot.bytes_in.load(Ordering::Relaxed);
        self.window.push_back((now, acc, bytes_in));
        while let Some(f) = self.window.front() {
            if now.duration_since(f.0) > Duration::from_secs(10) && self.window.len() > 1 {
                self.window.pop_front();
            } else {
                break;
            }
        }
    }

    fn flush(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let mut events = std::mem::take(&mut self.outbox);
        if events.len() > MAX_EVENTS_PER_FLUSH {
            let accepted = events
                .iter()
                .filter(|e| e["type"] == "update_accepted")
                .count();
            events.retain(|e| e["type"] != "update_accepted");
            events.push(serde_json::json!({
                "type": "updates_summary",
                "ts": crate::db::now(),
                "accepted": accepted,
            }));
            let n = events.len();
            if n > MAX_EVENTS_PER_FLUSH {
                events.drain(..n - MAX_EVENTS_PER_FLUSH);
            }
        }
        self.subscribers.retain(|s| s.connected());
        for e in events {
            let frame = EventFrame(std::sync::Arc::from(e.to_string()));
            // A feed whose browser does not read fills its mailbox (the
            // session's actor runs only while its socket drains): it is
            // dropped rather than queued for without bound.
            self.subscribers
                .retain(|s| match s.try_send(frame.clone()) {
                    Ok(()) => true,
                    Err(SendError::Full(_)) => {
                        log::info!("an event feed subscriber does not read; dropping it");
                        false
                    }
                    Err(SendError::Closed(_)) => false,
                });
        }
    }
}

impl Actor for MetricsAggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |act, _| act.sample());
        ctx.run_interval(FLUSH_EVERY, |act, _| act.flush());
    }
}

impl Handler<Event> for MetricsAggregator {
    type Result = ();
    fn handle(&mut self, Event(ev): Event, _: &mut Self::Context) {
        match &ev {
            HubEvent::UpdateAccepted { model, bytes, .. } => {
                *self.received.entry(model.clone()).or_default() += 1;
                *self.accepted.entry(model.clone()).or_default() += 1;
                let _ = bytes;
            }
            HubEvent::UpdateRefused { model, code, .. } => {
                *self.received.entry(model.clone()).or_default() += 1;
                *self
                    .refused
                    .entry((model.clone(), code.clone()))
                    .or_default() += 1;
            }
            HubEvent::Version {
                model,
                aggregation_seconds,
                ..
            } => {
                self.versions += 1;
                self.last_agg = Some(*aggregation_seconds);
                self.agg_hist
                    .entry(model.clone())
                    .or_default()
                    .observe(*aggregation_seconds);
            }
            _ => {}
        }
        let mut v = serde_json::to_value(&ev).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("ts".into(), serde_json::Value::String(crate::db::now()));
        }
        self.recent.push_back(v.clone());
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        self.outbox.push(v);
        if matches!(ev, HubEvent::HubStopping) {
            self.flush();
        }
    }
}

impl Handler<Events> for MetricsAggregator {
    type Result = ();
    fn handle(&mut self, Events(evs): Events, ctx: &mut Self::Context) {
        for e in evs {
            <Self as Handler<Event>>::handle(self, Event(e), ctx);
        }
    }
}

impl Handler<PersisterTiming> for MetricsAggregator {
    type Result = ();
    fn handle(&mut self, m: PersisterTiming, _: &mut Self::Context) {
        self.persist_hist
            .entry(m.what)
            .or_default()
            .observe(m.seconds);
    }
}

impl Handler<WsSession> for MetricsAggregator {
    type Result = ();
    fn handle(&mut self, m: WsSession, _: &mut Self::Context) {
        let map = if m.opened {
            &mut self.ws_opened
        } else {
            &mut self.ws_closed
        };
        *map.entry(m.kind).or_default() += 1;
    }
}

impl Handler<ModelGauges> for MetricsAggregator {
    type Result = ();
    fn handle(&mut self, m: ModelGauges, _: &mut Self::Context) {
        self.gauges.insert(m.model.clone(), m);
    }
}

impl Handler<Subscribe> for MetricsAggregator {
    type Result = ();
    fn handle(&mut self, m: Subscribe, _: &mut Self::Context) {
        self.subscribers.push(m.0);
    }
}

impl Handler<GetSnapshot> for MetricsAggregator {
    type Result = MessageResult<GetSnapshot>;
    fn handle(&mut self, _: GetSnapshot, _: &mut Self::Context) -> Self::Result {
        let (ups, bps) = self.rates();
        let mut by_code = BTreeMap::new();
        for ((_, code), n) in &self.refused {
            *by_code.entry(code.clone()).or_default() += n;
        }
        MessageResult(Snapshot {
            uptime_secs: self.started.elapsed().as_secs_f64(),
            updates_per_sec: ups,
            bytes_in_per_sec: bps,
            updates_received: self.received.values().sum(),
            updates_accepted: self.total_accepted(),
            updates_refused: self.refused.values().sum(),
            refusals_by_code: by_code,
            versions_committed: self.versions,
            bytes_in: self.hot.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.hot.bytes_out.load(Ordering::Relaxed),
            connected_trainers: self.gauges.values().map(|g| g.connected).sum(),
            last_aggregation_seconds: self.last_agg,
            persister_queue: self.hot.persister_queue.load(Ordering::Relaxed),
            recent_events: self.recent.iter().cloned().collect(),
        })
    }
}
