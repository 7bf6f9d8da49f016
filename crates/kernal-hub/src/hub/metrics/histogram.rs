//! Histograms kernal counts itself (in atomics on the hot path, or in the
//! aggregator) and how prometheus-client encodes them.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

pub(super) const AGG_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone, Debug)]
pub(super) struct Histogram {
    pub(super) counts: Vec<u64>,
    pub(super) sum: f64,
    pub(super) count: u64,
}

impl Histogram {
    pub(super) fn observe(&mut self, v: f64) {
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
pub(super) struct Counted(pub(super) Histogram);

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

/// A family of histograms already counted.
#[derive(Debug)]
pub(super) struct CountedFamily<L>(Vec<(L, Counted)>);

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

pub(super) fn histograms<'a, L: 'a, I>(items: I) -> CountedFamily<L>
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
