// Over 600 lines: one actor: the counters it keeps, their JSON snapshot, their Prometheus registry, and the batched event feed they drive.
//! The MetricsAggregator: counters and rolling figures fed by hub events,
//! served as JSON snapshots, as Prometheus text (through prometheus-client),
//! and pushed live to `/v1/events` subscribers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::prelude::*;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use serde::Serialize;

pub use super::hub_event::HubEvent;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Event(pub HubEvent);

/// A batch of events, in order: the hub sends the accepted updates of a
/// busy second together instead of one actor message each.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Events(pub Vec<HubEvent>);

/// What changes with every update, kept in atomics the hub and the sessions
/// write directly: at ten thousand updates a second, one actor message per
/// update for each of these cost the ack latency p99 about 10 ms on 2 cores.
#[derive(Debug, Default)]
pub struct HotMetrics {
    bytes_in: AtomicU64,
    /// Weights bytes trainers' connections have started sending, counted
    /// where they are written: versions held back or replaced by a newer one
    /// are never sent, so counting at the broadcast would overstate it.
    bytes_out: AtomicU64,
    persister_queue: std::sync::atomic::AtomicI64,
    /// `kernal_update_answer_seconds`, per bucket (not cumulative).
    answer_buckets: [AtomicU64; AGG_BUCKETS.len()],
    answer_over: AtomicU64,
    answer_nanos: AtomicU64,
    /// Connections dropped because they did not read what they were sent.
    slow_consumers: AtomicU64,
}

impl HotMetrics {
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    pub fn slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    pub fn persister_queue(&self, depth: i64) {
        self.persister_queue.store(depth, Ordering::Relaxed);
    }

    /// Seconds from an update's last byte arriving to its answer being
    /// queued, measured by the session: the hub's share of what a trainer waits.
    pub fn answered(&self, d: Duration) {
        let v = d.as_secs_f64();
        match AGG_BUCKETS.iter().position(|b| v <= *b) {
            Some(i) => self.answer_buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.answer_over.fetch_add(1, Ordering::Relaxed),
        };
        self.answer_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn answer_histogram(&self) -> Histogram {
        let mut counts = Vec::with_capacity(AGG_BUCKETS.len());
        let mut below = 0;
        for b in &self.answer_buckets {
            below += b.load(Ordering::Relaxed);
            counts.push(below);
        }
        Histogram {
            counts,
            sum: self.answer_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: below + self.answer_over.load(Ordering::Relaxed),
        }
    }
}

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

const AGG_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone, Debug)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; AGG_BUCKETS.len()];
        }
        for (i, b) in AGG_BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// Per-bucket counts (not cumulative) as prometheus-client takes them;
    /// the `+Inf` bucket is the total count.
    fn buckets(&self) -> Vec<(f64, u64)> {
        let mut below = 0;
        AGG_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let c = self.counts.get(i).copied().unwrap_or(0);
                let in_bucket = c.saturating_sub(below);
                below = c;
                (*b, in_bucket)
            })
            .collect()
    }
}

/// A histogram counted by kernal (in atomics on the hot path, or by the
/// aggregator) and exposed through prometheus-client's encoder. Its own
/// `Histogram` takes a lock per observation, which the update path avoids.
#[derive(Debug)]
struct Counted(Histogram);

impl TypedMetric for Counted {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &self.0.buckets(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    model: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

fn model(m: &str) -> ModelLabel {
    ModelLabel { model: m.into() }
}

fn kind(k: &str) -> KindLabel {
    KindLabel { kind: k.into() }
}

/// A counter holding `n`, for exposing a count kept elsewhere.
fn counter(n: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(n);
    c
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

/// A family whose member for each label set is given its value by `set`:
/// counts and levels kept elsewhere, exposed for one scrape.
fn family<L, M, V>(items: impl IntoIterator<Item = (L, V)>, set: impl Fn(&M, V)) -> Family<L, M>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
    M: Default + EncodeMetric + TypedMetric,
{
    let f = Family::<L, M>::default();
    for (l, v) in items {
        set(&f.get_or_create(&l), v);
    }
    f
}

fn counters<L>(items: impl IntoIterator<Item = (L, u64)>) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    family(items, |c: &Counter, n| {
        c.inc_by(n);
    })
}

fn gauges<L>(items: impl IntoIterator<Item = (L, i64)>) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    family(items, |g: &Gauge, v| {
        g.set(v);
    })
}

/// A family of histograms already counted.
#[derive(Debug)]
struct CountedFamily<L>(Vec<(L, Counted)>);

impl<L: EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> EncodeMetric
    for CountedFamily<L>
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            h.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn histograms<'a, L: 'a, I>(items: I) -> CountedFamily<L>
where
    I: IntoIterator<Item = (L, &'a Histogram)>,
{
    CountedFamily(
        items
            .into_iter()
            .map(|(l, h)| (l, Counted(h.clone())))
            .collect(),
    )
}

/// Prometheus text of a registry (format 0.0.4, what promtool checks).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String does not fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

pub struct MetricsAggregator {
    started: Instant,
    received: HashMap<String, u64>,
    accepted: HashMap<String, u64>,
    refused: BTreeMap<(String, String), u64>,
    versions: u64,
    pub hot: Arc<HotMetrics>,
    ws_opened: BTreeMap<&'static str, u64>,
    ws_closed: BTreeMap<&'static str, u64>,
    gauges: BTreeMap<String, ModelGauges>,
    agg_hist: BTreeMap<String, Histogram>,
    persist_hist: BTreeMap<&'static str, Histogram>,
    last_agg: Option<f64>,
    /// (time, updates, bytes) samples for the rolling rates.
    window: VecDeque<(Instant, u64, u64)>,
    recent: VecDeque<serde_json::Value>,
    subscribers: Vec<Recipient<EventFrame>>,
    /// Events queued for subscribers; flushed in batches (see `FLUSH_EVERY`).
    outbox: Vec<serde_json::Value>,
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
    fn total_accepted(&self) -> u64 {
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

/// The storage families of `/metrics`, from the hub's storage record.
pub fn storage_metrics(h: &crate::db::StorageHealth) -> String {
    let mut r = Registry::default();
    r.register(
        "kernal_storage_errors",
        "Failed writes to the database or blob files",
        counter(h.errors()),
    );
    r.register(
        "kernal_storage_ok",
        "1 while the hub can store what it is sent, 0 while writes fail",
        gauge(i64::from(!h.failing())),
    );
    r.register(
        "kernal_storage_lost_acknowledged_updates",
        "Acknowledged updates the ledger no longer had at start (at most)",
        gauge(i64::try_from(h.lost_acknowledged()).unwrap_or(i64::MAX)),
    );
    encode(&r)
}

impl MetricsAggregator {
    /// Everything the aggregator knows, as a registry for one scrape: the
    /// counts stay where the hub keeps them (atomics and maps), and
    /// prometheus-client names, escapes and formats them.
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "kernal_up",
            "Whether the hub is serving (always 1 when scraped)",
            gauge(1),
        );
        let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        uptime.set(self.started.elapsed().as_secs_f64());
        r.register(
            "kernal_uptime_seconds",
            "Seconds since the hub started",
            uptime,
        );
        let by_model = |f: fn(&ModelGauges) -> usize| {
            gauges(
                self.gauges
                    .values()
                    .map(move |g| (model(&g.model), i64::try_from(f(g)).unwrap_or(i64::MAX))),
            )
        };
        r.register(
            "kernal_connected_trainers",
            "Trainers connected, by model",
            by_model(|g| g.connected),
        );
        r.register(
            "kernal_model_version",
            "Current global version, by model",
            gauges(self.gauges.values().map(|g| {
                (
                    model(&g.model),
                    i64::try_from(g.version).unwrap_or(i64::MAX),
                )
            })),
        );
        r.register(
            "kernal_buffered_updates",
            "Accepted updates waiting to be aggregated, by model",
            by_model(|g| g.buffered),
        );
        r.register(
            "kernal_updates_received",
            "Updates received, by model",
            counters(self.received.iter().map(|(m, n)| (model(m), *n))),
        );
        r.register(
            "kernal_updates_acknowledged",
            "Updates made durable and acknowledged, by model",
            counters(self.accepted.iter().map(|(m, n)| (model(m), *n))),
        );
        r.register(
            "kernal_updates_refused",
            "Updates refused, by model and error code",
            counters(self.refused.iter().map(|((m, c), n)| {
                (
                    RefusalLabels {
                        model: m.clone(),
                        code: c.clone(),
                    },
                    *n,
                )
            })),
        );
        r.register(
            "kernal_versions_committed",
            "Global versions committed since start",
            counter(self.versions),
        );
        r.register(
            "kernal_aggregation_duration_seconds",
            "Time to fold a buffer into a new version",
            histograms(self.agg_hist.iter().map(|(m, h)| (model(m), h))),
        );
        r.register(
            "kernal_received_bytes",
            "Update payload bytes received",
            counter(self.hot.bytes_in.load(Ordering::Relaxed)),
        );
        r.register(
            "kernal_sent_bytes",
            "Model payload bytes sent to trainers",
            counter(self.hot.bytes_out.load(Ordering::Relaxed)),
        );
        r.register(
            "kernal_persister_queue_depth",
            "Writes sent to the persister and not yet done",
            gauge(self.hot.persister_queue.load(Ordering::Relaxed)),
        );
        r.register(
            "kernal_persister_commit_duration_seconds",
            "Time of one persister write, by kind",
            histograms(self.persist_hist.iter().map(|(k, h)| (kind(k), h))),
        );
        r.register(
            "kernal_update_answer_seconds",
            "From an update's last byte received to its ack or error queued",
            Counted(self.hot.answer_histogram()),
        );
        r.register(
            "kernal_slow_consumers",
            "Trainer connections dropped because they did not read what they were sent",
            counter(self.hot.slow_consumers()),
        );
        r.register(
            "kernal_websocket_sessions_opened",
            "WebSocket sessions opened, by kind",
            counters(self.ws_opened.iter().map(|(k, n)| (kind(k), *n))),
        );
        r.register(
            "kernal_websocket_sessions_closed",
            "WebSocket sessions closed, by kind",
            counters(self.ws_closed.iter().map(|(k, n)| (kind(k), *n))),
        );
        r
    }
}

impl Handler<RenderPrometheus> for MetricsAggregator {
    type Result = String;
    fn handle(&mut self, _: RenderPrometheus, _: &mut Self::Context) -> String {
        encode(&self.registry())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_histogram_is_cumulative_with_everything_in_inf() {
        let hot = HotMetrics::default();
        hot.answered(Duration::from_micros(300));
        hot.answered(Duration::from_millis(3));
        hot.answered(Duration::from_millis(3));
        hot.answered(Duration::from_secs(9));
        hot.bytes_in(10);
        hot.bytes_in(5);
        hot.persister_queue(7);
        let mut r = Registry::default();
        r.register("a", "A histogram", Counted(hot.answer_histogram()));
        let out = encode(&r);
        for line in [
            "# TYPE a histogram",
            "a_bucket{le=\"0.0005\"} 1",
            "a_bucket{le=\"0.0025\"} 1",
            "a_bucket{le=\"0.005\"} 3",
            "a_bucket{le=\"5\"} 3",
            "a_bucket{le=\"+Inf\"} 4",
            "a_count 4",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("a_sum "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((sum - 9.0063).abs() < 1e-9, "{sum}");
        assert_eq!(hot.bytes_in.load(Ordering::Relaxed), 15);
        assert_eq!(hot.persister_queue.load(Ordering::Relaxed), 7);
    }
}
