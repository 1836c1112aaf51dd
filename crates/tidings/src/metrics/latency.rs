//! The latency histogram: fixed buckets, updated with relaxed atomic additions and no lock
//! (prometheus-client's own histogram takes a write lock per observation, too much for the
//! delivery path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the latency buckets, in microseconds (100 µs … 5 s).
const LATENCY_BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// A histogram of latencies with fixed buckets, updated with three relaxed atomic additions
/// and no lock. Cheap to clone (clones share the counts).
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    inner: Arc<LatencyCounts>,
}

#[derive(Debug, Default)]
struct LatencyCounts {
    /// Per bucket, not cumulative; the last one counts what is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Records one latency, in microseconds.
    pub fn observe_micros(&self, micros: u64) {
        let bucket = LATENCY_BOUNDS_US.partition_point(|bound| *bound < micros);
        let counts = &self.inner;
        counts.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        counts.sum_us.fetch_add(micros, Ordering::Relaxed);
        counts.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// How many latencies were recorded, and their sum in microseconds (read apart: one may
    /// be an observation ahead of the other).
    pub fn totals(&self) -> (u64, u64) {
        let counts = &self.inner;
        (
            counts.count.load(Ordering::Relaxed),
            counts.sum_us.load(Ordering::Relaxed),
        )
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let counts = &self.inner;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain(std::iter::once(f64::MAX))
            .zip(counts.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let sum = counts.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let count = counts.count.load(Ordering::Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
