//! What a run counts while it goes: shared by every stream and publisher task, read by the
//! progress bars and the final report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::plan::Plan;

mod part;
pub(super) use part::Part;

/// Which update a delivery or a publish was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Update {
    /// A topic's update: its number in the plan (`j` of [`Plan::update`]).
    Topic(u64),
    /// A broadcast: its number.
    Broadcast(u64),
}

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
    /// Deliveries no longer waited for: every one a stream that failed or dropped was still
    /// due by the plan, and those of publishes that failed. The drain stops waiting once
    /// `unique + given_up` is expected. (The two may overlap — a failed stream's share of a
    /// failed publish — so the report counts from `failed_for` and `gone_on` instead.)
    pub(super) given_up: AtomicU64,
    /// Deliveries due from publishes that failed.
    failed_for: AtomicU64,
    /// Per topic, the streams on it that failed to open or dropped for good; and what those
    /// streams had received before.
    gone_on: Mutex<BTreeMap<u64, u64>>,
    gone_received: AtomicU64,
    /// Per topic (the broadcast topic included), the publishes that were taken.
    landed_on: Mutex<BTreeMap<u64, u64>>,
    /// The publishes that failed: an answer that was not a success may still have come after
    /// the update was stored (a timeout, `504 publish_outcome_unknown`), and what arrived of
    /// them is not forfeited.
    failed_updates: Mutex<Vec<Update>>,
    /// Per topic update (by its number in the plan), the streams that had it.
    arrivals: Vec<AtomicU32>,
    /// Deliveries due from the updates whose publish was answered (taken or failed): what
    /// the plan expects past this was never sent (a run cut short).
    pub(super) sent_for: AtomicU64,
    pub(super) published: AtomicU64,
    pub(super) publish_failed: AtomicU64,
    /// Publishes sent again to another instance (with the same id) after a failure.
    pub(super) publish_retries: AtomicU64,
    first_publish_us: AtomicU64,
    last_delivery_us: AtomicU64,
    connect_us: Mutex<Histogram<u64>>,
    latency_us: Mutex<Histogram<u64>>,
    ack_us: Mutex<Histogram<u64>>,
    /// Publish to arrival of the broadcasts (`--broadcasts`), apart from the rest.
    broadcast_latency_us: Mutex<Histogram<u64>>,
    /// Per broadcast: the latest arrival (publish to the last stream that had it), and how
    /// many streams had it.
    broadcast_last_us: Vec<AtomicU64>,
    broadcast_reached: Vec<AtomicU64>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// When the instance was killed (`--kill`), on the run's clock; `u64::MAX` before.
    kill_us: AtomicU64,
    pub(super) reconnection: Reconnection,
}

/// Streams coming back after their connection ended (`--reconnect`), and what the figures
/// after a kill were (times in microseconds).
pub(super) struct Reconnection {
    /// Streams whose connection ended at least once before the run did.
    pub(super) moved: AtomicU64,
    /// Of those, the streams open again when the run ended.
    pub(super) resumed: AtomicU64,
    /// Attempts to open a stream again.
    pub(super) attempts: AtomicU64,
    /// Streams the churn closed (each came back: an attempt).
    pub(super) churned: AtomicU64,
    /// Attempts answered with something other than a stream (a `4xx`/`5xx`).
    pub(super) refused: AtomicU64,
    /// Attempts that found no instance to connect to (or no answer).
    pub(super) unreachable: AtomicU64,
    /// Attempts answered with a stream that ended at once with a `retry:` hint (an instance
    /// turning the client away for a passing reason).
    pub(super) deferred: AtomicU64,
    /// Why attempts failed, with how often.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Publish to first arrival of updates published after the kill: on the streams that
    /// moved, and on the others.
    moved_latency_us: Mutex<Histogram<u64>>,
    stayed_latency_us: Mutex<Histogram<u64>>,
    /// Publish acknowledgements before and after the kill.
    ack_before_us: Mutex<Histogram<u64>>,
    ack_after_us: Mutex<Histogram<u64>>,
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
    /// The tally of a run that sends `updates` to topics and `broadcasts`.
    pub(super) fn new(updates: u64, broadcasts: u64) -> Tally {
        Tally::since(Instant::now(), updates, broadcasts)
    }

    /// A tally on the clock of a run that started `epoch_us` microseconds after the Unix
    /// epoch: a worker's (`--workers`), so that the send times its coordinator's publishers
    /// stamp read the same on both sides (one machine, one wall clock).
    pub(super) fn at_epoch(epoch_us: u64, updates: u64, broadcasts: u64) -> Tally {
        let since = Duration::from_micros(unix_us().saturating_sub(epoch_us));
        Tally::since(
            Instant::now()
                .checked_sub(since)
                .unwrap_or_else(Instant::now),
            updates,
            broadcasts,
        )
    }

    /// When this run's clock started, in microseconds after the Unix epoch.
    pub(super) fn epoch_us(&self) -> u64 {
        unix_us().saturating_sub(self.now_us())
    }

    fn since(start: Instant, updates: u64, broadcasts: u64) -> Tally {
        let each = || (0..broadcasts).map(|_| AtomicU64::new(0)).collect();
        Tally {
            start,
            opened: AtomicU64::new(0),
            open_failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            failed_for: AtomicU64::new(0),
            gone_on: Mutex::new(BTreeMap::new()),
            gone_received: AtomicU64::new(0),
            landed_on: Mutex::new(BTreeMap::new()),
            failed_updates: Mutex::new(Vec::new()),
            arrivals: (0..updates).map(|_| AtomicU32::new(0)).collect(),
            sent_for: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_failed: AtomicU64::new(0),
            first_publish_us: AtomicU64::new(u64::MAX),
            last_delivery_us: AtomicU64::new(0),
            connect_us: histogram(),
            latency_us: histogram(),
            ack_us: histogram(),
            broadcast_latency_us: histogram(),
            broadcast_last_us: each(),
            broadcast_reached: each(),
            errors: Mutex::new(BTreeMap::new()),
            publish_retries: AtomicU64::new(0),
            kill_us: AtomicU64::new(u64::MAX),
            reconnection: Reconnection {
                moved: AtomicU64::new(0),
                resumed: AtomicU64::new(0),
                attempts: AtomicU64::new(0),
                churned: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                unreachable: AtomicU64::new(0),
                deferred: AtomicU64::new(0),
                errors: Mutex::new(BTreeMap::new()),
                moved_latency_us: histogram(),
                stayed_latency_us: histogram(),
                ack_before_us: histogram(),
                ack_after_us: histogram(),
            },
        }
    }

    /// The instance is being killed now.
    pub(super) fn killing(&self) {
        self.kill_us.store(self.now_us(), Relaxed);
    }

    /// True once the instance was killed, for an update sent at `sent_us`.
    fn after_kill(&self, sent_us: u64) -> bool {
        sent_us >= self.kill_us.load(Relaxed)
    }

    /// An attempt to open a stream again failed; `refused` when an instance answered.
    pub(super) fn reconnect_failed(&self, error: String, refused: bool) {
        let r = &self.reconnection;
        let counter = if refused { &r.refused } else { &r.unreachable };
        counter.fetch_add(1, Relaxed);
        count(&r.errors, error);
    }

    /// Why reconnection attempts failed, with how often.
    pub(super) fn reconnect_errors(&self) -> BTreeMap<String, u64> {
        self.reconnection
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Microseconds since the run started: the clock payloads carry.
    pub(super) fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub(super) fn stream_opened(&self, took: Duration) {
        record(&self.connect_us, duration_us(took));
        self.opened.fetch_add(1, Relaxed);
    }

    /// A stream on `topic`, due `expected` deliveries, failed to open.
    pub(super) fn stream_failed(&self, error: String, topic: u64, expected: u64) {
        self.error(error);
        self.open_failed.fetch_add(1, Relaxed);
        self.gone(topic, expected, 0);
    }

    /// A stream on `topic`, due `expected` deliveries, ended for good after `received`.
    pub(super) fn stream_dropped(&self, error: String, topic: u64, expected: u64, received: u64) {
        self.error(error);
        self.dropped.fetch_add(1, Relaxed);
        self.gone(topic, expected, received);
    }

    fn gone(&self, topic: u64, expected: u64, received: u64) {
        self.given_up
            .fetch_add(expected.saturating_sub(received), Relaxed);
        self.gone_received.fetch_add(received, Relaxed);
        add(&self.gone_on, topic, 1);
    }

    /// A delivery of `update` sent at `sent_us` arrived now; `first` is false for a
    /// duplicate; `moved` when its stream's connection ended before and it came back.
    pub(super) fn delivered(&self, sent_us: u64, first: bool, moved: bool, update: Update) {
        let now = self.now_us();
        self.received.fetch_add(1, Relaxed);
        if first {
            self.unique.fetch_add(1, Relaxed);
            let latency = now.saturating_sub(sent_us);
            match update {
                Update::Broadcast(b) => {
                    record(&self.broadcast_latency_us, latency);
                    if let (Some(last), Some(reached)) = (
                        self.broadcast_last_us.get(b as usize),
                        self.broadcast_reached.get(b as usize),
                    ) {
                        last.fetch_max(latency, Relaxed);
                        reached.fetch_add(1, Relaxed);
                    }
                }
                Update::Topic(j) => {
                    record(&self.latency_us, latency);
                    if let Some(arrivals) = self.arrivals.get(j as usize) {
                        arrivals.fetch_add(1, Relaxed);
                    }
                }
            }
            if self.after_kill(sent_us) {
                let r = &self.reconnection;
                let by = if moved {
                    &r.moved_latency_us
                } else {
                    &r.stayed_latency_us
                };
                record(by, latency);
            }
            self.last_delivery_us.fetch_max(now, Relaxed);
        } else {
            self.duplicates.fetch_add(1, Relaxed);
        }
    }

    /// A publish is about to be sent at `now_us`.
    pub(super) fn publishing(&self, now_us: u64) {
        self.first_publish_us.fetch_min(now_us, Relaxed);
    }

    /// A publish to `topic` sent at `sent_us`, due to `streams`, was accepted after `took`.
    pub(super) fn published(&self, took: Duration, sent_us: u64, topic: u64, streams: u64) {
        self.sent_for.fetch_add(streams, Relaxed);
        add(&self.landed_on, topic, 1);
        record(&self.ack_us, duration_us(took));
        let r = &self.reconnection;
        let by = if self.after_kill(sent_us) {
            &r.ack_after_us
        } else {
            &r.ack_before_us
        };
        record(by, duration_us(took));
        self.published.fetch_add(1, Relaxed);
    }

    /// A publish failed in a way another instance may not, and is sent there.
    pub(super) fn publish_retried(&self, error: String) {
        self.publish_retries.fetch_add(1, Relaxed);
        count(&self.reconnection.errors, error);
    }

    /// The publish of `update`, due to `streams`, failed.
    pub(super) fn publish_failed(&self, error: String, update: Update, streams: u64) {
        self.sent_for.fetch_add(streams, Relaxed);
        if let Ok(mut failed) = self.failed_updates.lock() {
            failed.push(update);
        }
        self.error(error);
        self.publish_failed.fetch_add(1, Relaxed);
        self.given_up.fetch_add(streams, Relaxed);
        self.failed_for.fetch_add(streams, Relaxed);
    }

    /// Deliveries that could not arrive, each counted once: those of failed publishes (to
    /// every stream, less what arrived of them all the same), and those of taken publishes to
    /// the streams that failed or dropped (less what they had received). A failed stream's
    /// share of an update never sent or of a failed publish is counted there, not here.
    pub(super) fn forfeited(&self, plan: &Plan) -> u64 {
        let landed = self.landed_on.lock().map(|m| m.clone()).unwrap_or_default();
        let landed_on = |topic: u64| landed.get(&topic).copied().unwrap_or(0);
        let broadcasts = landed_on(plan.broadcast_topic());
        let due_to_gone: u64 = self
            .gone_on
            .lock()
            .map(|gone| {
                gone.iter()
                    .map(|(topic, streams)| streams * (landed_on(*topic) + broadcasts))
                    .sum()
            })
            .unwrap_or(0);
        let reached = self.broadcast_reached();
        let arrived_anyway: u64 = self
            .failed_updates
            .lock()
            .map(|failed| {
                failed
                    .iter()
                    .map(|update| match *update {
                        Update::Topic(j) => self
                            .arrivals
                            .get(j as usize)
                            .map_or(0, |a| u64::from(a.load(Relaxed))),
                        Update::Broadcast(b) => reached.get(b as usize).copied().unwrap_or(0),
                    })
                    .sum()
            })
            .unwrap_or(0);
        self.failed_for.load(Relaxed).saturating_sub(arrived_anyway)
            + due_to_gone.saturating_sub(self.gone_received.load(Relaxed))
    }

    /// Counts one occurrence of an error message.
    pub(super) fn error(&self, message: String) {
        count(&self.errors, message);
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

    /// Publish to arrival, over every stream's every broadcast.
    pub(super) fn broadcast_latency_ms(&self) -> Percentiles {
        percentiles(&self.broadcast_latency_us)
    }

    /// Per broadcast: publish to its arrival at the last stream that had it, in milliseconds.
    pub(super) fn broadcast_last_ms(&self) -> Vec<f64> {
        let ms = |last: &AtomicU64| last.load(Relaxed) as f64 / 1000.0;
        self.broadcast_last_us.iter().map(ms).collect()
    }

    /// Per broadcast: how many streams had it.
    pub(super) fn broadcast_reached(&self) -> Vec<u64> {
        load(&self.broadcast_reached)
    }

    /// Publish to arrival after the kill: on the streams that moved, and on the others.
    pub(super) fn after_kill_latency_ms(&self) -> (Percentiles, Percentiles) {
        let r = &self.reconnection;
        (
            percentiles(&r.moved_latency_us),
            percentiles(&r.stayed_latency_us),
        )
    }

    /// Publish acknowledgements before and after the kill.
    pub(super) fn ack_around_kill_ms(&self) -> (Percentiles, Percentiles) {
        let r = &self.reconnection;
        (percentiles(&r.ack_before_us), percentiles(&r.ack_after_us))
    }
}

/// Adds `n` to `key`'s count.
fn add(counts: &Mutex<BTreeMap<u64, u64>>, key: u64, n: u64) {
    if let Ok(mut counts) = counts.lock() {
        *counts.entry(key).or_default() += n;
    }
}

fn load(counters: &[AtomicU64]) -> Vec<u64> {
    counters.iter().map(|n| n.load(Relaxed)).collect()
}

/// Microseconds since the Unix epoch, by the wall clock.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, duration_us)
}

/// Counts one occurrence of `message` in `errors` (past [`MAX_ERROR_KINDS`] distinct ones,
/// as "other errors").
fn count(errors: &Mutex<BTreeMap<String, u64>>, message: String) {
    count_n(errors, message, 1);
}

/// Counts `n` occurrences of `message` in `errors`.
fn count_n(errors: &Mutex<BTreeMap<String, u64>>, message: String, n: u64) {
    if let Ok(mut errors) = errors.lock() {
        let len = errors.len();
        match errors.get_mut(&message) {
            Some(count) => *count += n,
            None if len < MAX_ERROR_KINDS => {
                errors.insert(message, n);
            }
            None => *errors.entry("(other errors)".into()).or_default() += n,
        }
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
        let tally = Tally::new(1, 0);
        tally.delivered(0, true, false, Update::Topic(0));
        tally.delivered(0, false, false, Update::Topic(0));
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

    #[test]
    fn what_could_not_arrive_is_counted_once_when_streams_and_publishes_both_failed() {
        // 4 streams on 2 topics (streams 0 and 2 on topic 0), 2 updates each, 1 broadcast.
        let plan = Plan::new(4, super::super::plan::Topics::Count(2), 4, 1, "t");
        let worker = Tally::new(4, 1);
        worker.stream_failed("refused".into(), 0, 3);
        worker.stream_dropped("reset".into(), 1, 3, 1);
        // Another process's tally: the publishes; topic 0's second (update 2) failed.
        let tally = Tally::new(4, 1);
        tally.absorb(&worker.part());
        let took = Duration::ZERO;
        tally.published(took, 0, 0, 2);
        tally.publish_failed("answered 503".into(), Update::Topic(2), 2);
        tally.published(took, 0, 1, 2);
        tally.published(took, 0, 1, 2);
        tally.published(took, 0, plan.broadcast_topic(), 4);
        // The failed publish: 2 (both streams of topic 0, the failed one among them). The
        // failed stream: the taken update of its topic and the broadcast, 2. The dropped
        // stream: its 3 less the 1 it had, 2.
        assert_eq!(tally.forfeited(&plan), 6);
        // A publish that failed by its answer (a timeout) may have been stored all the same:
        // what arrived of it was not forfeited.
        let late = Tally::new(4, 1);
        late.delivered(0, true, false, Update::Topic(2));
        tally.absorb(&late.part());
        assert_eq!(tally.forfeited(&plan), 5);
    }
}
