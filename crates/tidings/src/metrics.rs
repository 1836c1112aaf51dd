//! Prometheus metrics of one instance.
//!
//! `prometheus-client` rather than the `metrics` facade: its registry is a value, not a global,
//! so several hubs in one process (tests, the multi-instance simulation) each keep their own
//! numbers. Every metric is updated with a relaxed atomic; nothing here takes a lock on the
//! delivery path.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The metrics of one instance; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open SSE responses (both APIs).
    pub connections: Gauge,
    /// Subscribers registered in the hub.
    pub subscribers: Gauge,
    /// Updates accepted from publishers on this instance.
    pub updates_published: Counter,
    /// Updates written to subscriber streams (one per subscriber per update).
    pub updates_delivered: Counter,
    /// Time from the bus accepting an update to its bytes being handed to a subscriber's
    /// connection.
    pub delivery_latency: Histogram,
    /// Subscribers disconnected because their queue was full.
    pub slow_consumers: Counter,
    /// Updates sent from history to reconnecting clients.
    pub replayed: Counter,
    /// Resumptions whose `Last-Event-ID` was not in history (unknown or evicted).
    pub replay_gaps: Counter,
    /// Requests refused because of bad input, a missing right or a limit (4xx).
    pub rejected_requests: Counter,
    /// 1 while the bus is connected and the instance is not draining.
    pub ready: Gauge,
    /// Live tokio tasks, read at each scrape (leak detection).
    pub tokio_tasks: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tidings");
        let m = Metrics {
            connections: Gauge::default(),
            subscribers: Gauge::default(),
            updates_published: Counter::default(),
            updates_delivered: Counter::default(),
            delivery_latency: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            slow_consumers: Counter::default(),
            replayed: Counter::default(),
            replay_gaps: Counter::default(),
            rejected_requests: Counter::default(),
            ready: Gauge::default(),
            tokio_tasks: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open SSE streams", m.connections.clone());
        registry.register(
            "subscribers",
            "Subscribers registered in the hub",
            m.subscribers.clone(),
        );
        registry.register(
            "updates_published",
            "Updates accepted from publishers on this instance",
            m.updates_published.clone(),
        );
        registry.register(
            "updates_delivered",
            "Updates written to subscriber streams",
            m.updates_delivered.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from bus acceptance to hand-off to the subscriber's connection",
            m.delivery_latency.clone(),
        );
        registry.register(
            "slow_consumers_disconnected",
            "Subscribers disconnected because their queue was full",
            m.slow_consumers.clone(),
        );
        registry.register(
            "replayed_updates",
            "Updates replayed from history",
            m.replayed.clone(),
        );
        registry.register(
            "replay_gaps",
            "Resumptions from an id that history no longer (or never) held",
            m.replay_gaps.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused with a 4xx status",
            m.rejected_requests.clone(),
        );
        registry.register(
            "ready",
            "1 when the instance accepts traffic",
            m.ready.clone(),
        );
        registry.register(
            "tokio_alive_tasks",
            "Live tokio tasks",
            m.tokio_tasks.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let tasks = handle.metrics().num_alive_tasks();
            self.tokio_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
