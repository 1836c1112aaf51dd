//! What a worker process's streams counted (`--workers`), as it travels to its coordinator
//! and is added to the coordinator's tally.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use hdrhistogram::Histogram;

use super::{add, count_n, load, Tally};

/// What a worker's streams counted (`--workers`): sent to its coordinator at the end of the
/// run, and added to the coordinator's tally. Histograms travel as (value, count) pairs.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Part {
    opened: u64,
    open_failed: u64,
    dropped: u64,
    received: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    stray: u64,
    given_up: u64,
    gone_on: BTreeMap<u64, u64>,
    gone_received: u64,
    arrivals: Vec<u32>,
    last_delivery_us: u64,
    connect_us: Vec<(u64, u64)>,
    latency_us: Vec<(u64, u64)>,
    broadcast_latency_us: Vec<(u64, u64)>,
    broadcast_last_us: Vec<u64>,
    broadcast_reached: Vec<u64>,
    errors: BTreeMap<String, u64>,
    moved: u64,
    resumed: u64,
    attempts: u64,
    churned: u64,
    refused: u64,
    unreachable: u64,
    deferred: u64,
    reconnect_errors: BTreeMap<String, u64>,
}

impl Tally {
    /// What this tally's streams counted, to be added to another's ([`Tally::absorb`]).
    pub(crate) fn part(&self) -> Part {
        let r = &self.reconnection;
        Part {
            opened: self.opened.load(Relaxed),
            open_failed: self.open_failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            received: self.received.load(Relaxed),
            unique: self.unique.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            out_of_order: self.out_of_order.load(Relaxed),
            stray: self.stray.load(Relaxed),
            given_up: self.given_up.load(Relaxed),
            gone_on: self.gone_on.lock().map(|m| m.clone()).unwrap_or_default(),
            gone_received: self.gone_received.load(Relaxed),
            arrivals: self.arrivals.iter().map(|a| a.load(Relaxed)).collect(),
            last_delivery_us: self.last_delivery_us.load(Relaxed),
            connect_us: pairs(&self.connect_us),
            latency_us: pairs(&self.latency_us),
            broadcast_latency_us: pairs(&self.broadcast_latency_us),
            broadcast_last_us: load(&self.broadcast_last_us),
            broadcast_reached: self.broadcast_reached(),
            errors: self.errors(),
            moved: r.moved.load(Relaxed),
            resumed: r.resumed.load(Relaxed),
            attempts: r.attempts.load(Relaxed),
            churned: r.churned.load(Relaxed),
            refused: r.refused.load(Relaxed),
            unreachable: r.unreachable.load(Relaxed),
            deferred: r.deferred.load(Relaxed),
            reconnect_errors: self.reconnect_errors(),
        }
    }

    /// Adds what another tally's streams counted (a worker's) to this one.
    pub(crate) fn absorb(&self, part: &Part) {
        let r = &self.reconnection;
        for (counter, n) in [
            (&self.opened, part.opened),
            (&self.open_failed, part.open_failed),
            (&self.dropped, part.dropped),
            (&self.received, part.received),
            (&self.unique, part.unique),
            (&self.duplicates, part.duplicates),
            (&self.out_of_order, part.out_of_order),
            (&self.stray, part.stray),
            (&self.given_up, part.given_up),
            (&self.gone_received, part.gone_received),
            (&r.moved, part.moved),
            (&r.resumed, part.resumed),
            (&r.attempts, part.attempts),
            (&r.churned, part.churned),
            (&r.refused, part.refused),
            (&r.unreachable, part.unreachable),
            (&r.deferred, part.deferred),
        ] {
            counter.fetch_add(n, Relaxed);
        }
        self.last_delivery_us
            .fetch_max(part.last_delivery_us, Relaxed);
        add_pairs(&self.connect_us, &part.connect_us);
        add_pairs(&self.latency_us, &part.latency_us);
        add_pairs(&self.broadcast_latency_us, &part.broadcast_latency_us);
        for (mine, theirs) in self.broadcast_last_us.iter().zip(&part.broadcast_last_us) {
            mine.fetch_max(*theirs, Relaxed);
        }
        for (mine, theirs) in self.broadcast_reached.iter().zip(&part.broadcast_reached) {
            mine.fetch_add(*theirs, Relaxed);
        }
        for (errors, from) in [
            (&self.errors, &part.errors),
            (&r.errors, &part.reconnect_errors),
        ] {
            for (message, n) in from {
                count_n(errors, message.clone(), *n);
            }
        }
        for (topic, n) in &part.gone_on {
            add(&self.gone_on, *topic, *n);
        }
        for (mine, theirs) in self.arrivals.iter().zip(&part.arrivals) {
            mine.fetch_add(*theirs, Relaxed);
        }
    }
}

fn pairs(histogram: &Mutex<Histogram<u64>>) -> Vec<(u64, u64)> {
    histogram.lock().map_or_else(
        |_| Vec::new(),
        |h| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        },
    )
}

fn add_pairs(histogram: &Mutex<Histogram<u64>>, pairs: &[(u64, u64)]) {
    if let Ok(mut h) = histogram.lock() {
        for (value, n) in pairs {
            let _ = h.record_n(*value, *n);
        }
    }
}
