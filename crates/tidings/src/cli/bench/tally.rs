//! What a run counts while it goes: shared by every stream and publisher task, read by the
//! progress bars and the final report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Distinct error messages kept for the report; later ones are only counted.
const MAX_ERROR_KINDS: usize = 10;

/// The run's counters and histograms (times in microseconds).
pub(super) struct Tally {
    /// The run's clock: payload send times are microseconds since this instant.
    start: Instant,
    pub(super) opened: AtomicU64,
    pub(super) open_failed: AtomicU64,
    /// Streams that ended before the run did.
    pub(super) dropped: AtomicU64,
    /// Every update event received, duplicates included.
    pub(super) received: AtomicU64,
    /// Deliveries received at least once.
    pub(super) unique: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) out_of_order: AtomicU64,
    /// Events that are not the bench's (unparsable, or for another topic).
    pub(super) stray: AtomicU64,
    /// Deliveries that can no longer arrive: of streams that failed or dropped, and of
    /// publishes that failed. The drain stops waiting once `unique + forfeited` is expected.
    pub(super) forfeited: AtomicU64,
    pub(super) published: AtomicU64,
    pub(super) publish_failed: AtomicU64,
    first_publish_us: AtomicU64,
    last_delivery_us: AtomicU64,
    connect_us: Mutex<Histogram<u64>>,
    latency_us: Mutex<Histogram<u64>>,
    ack_us: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(super) struct Percentiles {
    pub(super) p50: f64,
    pub(super) p90: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
    pub(super) max: f64,
    pub(super) samples: u64,
}

fn histogram() -> Mutex<Histogram<u64>> {
    // 1 µs to 1 hour at 3 significant digits; values past the top are clamped.
    Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
}

fn record(histogram: &Mutex<Histogram<u64>>, micros: u64) {
    if let Ok(mut h) = histogram.lock() {
        h.saturating_record(micros.max(1));
    }
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            start: Instant::now(),
            opened: AtomicU64::new(0),
            open_failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            forfeited: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_failed: AtomicU64::new(0),
            first_publish_us: AtomicU64::new(u64::MAX),
            last_delivery_us: AtomicU64::new(0),
            connect_us: histogram(),
            latency_us: histogram(),
            ack_us: histogram(),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Microseconds since the run started: the clock payloads carry.
    pub(super) fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub(super) fn stream_opened(&self, took: Duration) {
        record(&self.connect_us, duration_us(took));
        self.opened.fetch_add(1, Relaxed);
    }

    pub(super) fn stream_failed(&self, error: String, forfeited: u64) {
        self.error(error);
        self.open_failed.fetch_add(1, Relaxed);
        self.forfeited.fetch_add(forfeited, Relaxed);
    }

    pub(super) fn stream_dropped(&self, error: String, forfeited: u64) {
        self.error(error);
        self.dropped.fetch_add(1, Relaxed);
        self.forfeited.fetch_add(forfeited, Relaxed);
    }

    /// A delivery sent at `sent_us` arrived now; `first` is false for a duplicate.
    pub(super) fn delivered(&self, sent_us: u64, first: bool) {
        let now = self.now_us();
        self.received.fetch_add(1, Relaxed);
        if first {
            self.unique.fetch_add(1, Relaxed);
            record(&self.latency_us, now.saturating_sub(sent_us));
            self.last_delivery_us.fetch_max(now, Relaxed);
        } else {
            self.duplicates.fetch_add(1, Relaxed);
        }
    }

    /// A publish is about to be sent at `now_us`.
    pub(super) fn publishing(&self, now_us: u64) {
        self.first_publish_us.fetch_min(now_us, Relaxed);
    }

    pub(super) fn published(&self, took: Duration) {
        record(&self.ack_us, duration_us(took));
        self.published.fetch_add(1, Relaxed);
    }

    pub(super) fn publish_failed(&self, error: String, forfeited: u64) {
        self.error(error);
        self.publish_failed.fetch_add(1, Relaxed);
        self.forfeited.fetch_add(forfeited, Relaxed);
    }

    /// Counts one occurrence of an error message.
    pub(super) fn error(&self, message: String) {
        if let Ok(mut errors) = self.errors.lock() {
            let len = errors.len();
            match errors.get_mut(&message) {
                Some(count) => *count += 1,
                None if len < MAX_ERROR_KINDS => {
                    errors.insert(message, 1);
                }
                None => *errors.entry("(other errors)".into()).or_default() += 1,
            }
        }
    }

    /// The errors seen, with how often each occurred.
    pub(super) fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// From the first publish to the last first-time delivery, when both happened.
    pub(super) fn delivery_window(&self) -> Option<Duration> {
        let first = self.first_publish_us.load(Relaxed);
        let last = self.last_delivery_us.load(Relaxed);
        (first != u64::MAX && last > first).then(|| Duration::from_micros(last - first))
    }

    pub(super) fn connect_ms(&self) -> Percentiles {
        percentiles(&self.connect_us)
    }

    pub(super) fn latency_ms(&self) -> Percentiles {
        percentiles(&self.latency_us)
    }

    pub(super) fn ack_ms(&self) -> Percentiles {
        percentiles(&self.ack_us)
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn percentiles(histogram: &Mutex<Histogram<u64>>) -> Percentiles {
    let Ok(h) = histogram.lock() else {
        return Percentiles::default();
    };
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    Percentiles {
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        samples: h.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_do_not_count_as_deliveries_and_errors_are_grouped() {
        let tally = Tally::new();
        tally.delivered(0, true);
        tally.delivered(0, false);
        assert_eq!(tally.received.load(Relaxed), 2);
        assert_eq!(tally.unique.load(Relaxed), 1);
        assert_eq!(tally.duplicates.load(Relaxed), 1);
        assert_eq!(tally.latency_ms().samples, 1);
        for i in 0..MAX_ERROR_KINDS + 3 {
            tally.error(format!("e{i}"));
        }
        tally.error("e0".into());
        let errors = tally.errors();
        assert_eq!(errors["e0"], 2);
        assert_eq!(errors["(other errors)"], 3);
    }
}
