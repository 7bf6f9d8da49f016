//! The MetricsAggregator: counters and rolling figures fed by hub events,
//! served as JSON snapshots, as Prometheus text (through prometheus-client),
//! and pushed live to `/v1/events` subscribers. The actor is in
//! [`aggregator`], its messages in [`messages`], the figures written on the
//! hot path in [`hot`], the Prometheus rendering in [`render`].

pub mod aggregator;
mod histogram;
pub mod hot;
pub mod messages;
pub mod render;

pub use super::hub_event::HubEvent;
pub use aggregator::{MetricsAggregator, FLUSH_EVERY, MAX_EVENTS_PER_FLUSH};
pub use hot::HotMetrics;
pub use messages::*;
pub use render::{encode, storage_metrics};
