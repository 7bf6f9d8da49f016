//! `/metrics`: the aggregator's figures and the storage record as a
//! prometheus-client registry, encoded as Prometheus text.

use std::sync::atomic::Ordering;

use actix::prelude::*;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;

use super::aggregator::MetricsAggregator;
use super::histogram::{histograms, Counted};
use super::messages::{ModelGauges, RenderPrometheus};

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

/// Prometheus text of a registry (format 0.0.4, what promtool checks).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String does not fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
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
