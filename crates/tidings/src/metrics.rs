//! Prometheus metrics of one instance.
//!
//! (Over 600 lines: every metric is declared, registered and documented in one place, so that
//! none is exported unregistered; the histogram is `metrics/latency.rs` already.)
//!
//! `prometheus-client` rather than the `metrics` facade: its registry is a value, not a global,
//! so several hubs in one process (tests, the multi-instance simulation) each keep their own
//! numbers. Every metric is updated with relaxed atomics; nothing here takes a lock on the
//! delivery path (prometheus-client's own histogram takes a write lock per observation, so the
//! delivery latency uses [`LatencyHistogram`] instead).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod latency;
pub use latency::LatencyHistogram;

/// The metrics of one instance; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open SSE responses (both APIs).
    pub connections: Gauge,
    /// Client connections open (streams or not).
    pub open_connections: Gauge,
    /// Streams opened (both APIs, resumptions included): with `connections`, the churn.
    pub streams_opened: Counter,
    /// Subscribers registered in the hub.
    pub subscribers: Gauge,
    /// Updates accepted from publishers on this instance.
    pub updates_published: Counter,
    /// Time the bus took to store a publish (what a publisher waits for, beside parsing).
    pub publish_duration: LatencyHistogram,
    /// Updates written to subscriber streams (one per subscriber per update).
    pub updates_delivered: Counter,
    /// Time from the bus accepting an update to its bytes being handed to a subscriber's
    /// connection.
    pub delivery_latency: LatencyHistogram,
    /// Subscribers disconnected because their queue was full.
    pub slow_consumers: Counter,
    /// 1 while the Redis bus listens to every update because its subscribers' templates
    /// would need more patterns than `redis-max-patterns`.
    pub routing_capped: Gauge,
    /// Streams closed because the subscriber's token expired.
    pub streams_expired: Counter,
    /// Stream requests turned away for a passing reason (draining, instance full, bus
    /// unavailable) with a `retry:` hint in a `200` event stream, so that an `EventSource`
    /// comes back instead of giving up.
    pub streams_deferred: Counter,
    /// New streams refused because a stream limit was reached, by limit.
    streams_refused: Family<LimitLabels, Counter>,
    /// Connections closed at once, unread, by `max-connections` or
    /// `max-connections-per-address` (label `instance` or `address`).
    connections_refused: Family<LimitLabels, Counter>,
    /// Updates sent from history to reconnecting clients.
    pub replayed: Counter,
    /// Resumptions whose `Last-Event-ID` was not in history (unknown or evicted).
    pub replay_gaps: Counter,
    /// Replays cut at the stream's byte budget (`subscriber-queue-bytes`): the stream ended
    /// after the first page, and the client resumes for the next.
    pub replays_paged: Counter,
    /// Requests refused because of bad input, a missing right or a limit (4xx).
    pub rejected_requests: Counter,
    /// Reconnections of the bus's delivery connection.
    pub bus_reconnects: Counter,
    /// Reconnections after which updates may have been lost (history off, or trimmed).
    pub bus_gaps: Counter,
    /// Messages read from the broker and skipped: not text, not a wire-format message, or
    /// refused as an HTTP publish of it would have been.
    pub bus_skipped: Counter,
    /// Messages the broker sent to instances for this instance's publishes (the broker-side
    /// fan-out; what interest routing keeps low).
    pub bus_broker_messages: Counter,
    /// Bytes of those messages (each message's size times its receivers).
    pub bus_broker_bytes: Counter,
    /// Calls to the authorization callback, by outcome.
    auth_callbacks: Family<CallbackLabels, Counter>,
    /// Stream requests the authorization callback's cache (or a call already in flight)
    /// answered.
    pub auth_callback_cache_hits: Counter,
    /// Webhook events the receiver took.
    webhook_delivered: Counter,
    /// Webhook events dropped, by reason.
    webhook_dropped: Family<WebhookDropLabels, Counter>,
    /// Webhook requests that failed and were retried (or, the last, gave up).
    pub webhook_failed_attempts: Counter,
    /// Subscribers' comings and goings a listener fell too far behind to be told, by listener.
    subscriber_events_dropped: Family<ListenerLabels, Counter>,
    /// Messages consumers read, by consumer and outcome (`published`, or why skipped).
    consumer_messages: Family<ConsumerLabels, Counter>,
    /// Waits and reconnections of consumers' connections to their sources, by consumer.
    consumer_reconnects: Family<SourceLabels, Counter>,
    /// Messages waiting in a consumer's source, as this instance last saw them.
    consumer_lag: Family<SourceLabels, Gauge>,
    /// 1 while the bus is connected and the instance is not draining.
    pub ready: Gauge,
    /// Where the bus's connection stands: 1 for its state, 0 for the others.
    bus_state: Family<StateLabels, Gauge>,
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
            open_connections: Gauge::default(),
            streams_opened: Counter::default(),
            subscribers: Gauge::default(),
            updates_published: Counter::default(),
            publish_duration: LatencyHistogram::default(),
            updates_delivered: Counter::default(),
            delivery_latency: LatencyHistogram::default(),
            slow_consumers: Counter::default(),
            routing_capped: Gauge::default(),
            streams_expired: Counter::default(),
            streams_deferred: Counter::default(),
            streams_refused: Family::default(),
            connections_refused: Family::default(),
            replayed: Counter::default(),
            replay_gaps: Counter::default(),
            replays_paged: Counter::default(),
            rejected_requests: Counter::default(),
            bus_reconnects: Counter::default(),
            bus_gaps: Counter::default(),
            bus_skipped: Counter::default(),
            bus_broker_messages: Counter::default(),
            bus_broker_bytes: Counter::default(),
            auth_callbacks: Family::default(),
            auth_callback_cache_hits: Counter::default(),
            webhook_delivered: Counter::default(),
            webhook_dropped: Family::default(),
            webhook_failed_attempts: Counter::default(),
            subscriber_events_dropped: Family::default(),
            consumer_messages: Family::default(),
            consumer_reconnects: Family::default(),
            consumer_lag: Family::default(),
            ready: Gauge::default(),
            bus_state: Family::default(),
            tokio_tasks: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open SSE streams", m.connections.clone());
        registry.register(
            "open_connections",
            "Client connections open (with a stream or not)",
            m.open_connections.clone(),
        );
        registry.register(
            "streams_opened",
            "SSE streams opened (both APIs, resumptions included)",
            m.streams_opened.clone(),
        );
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
            "publish_duration_seconds",
            "Time the bus took to store a publish accepted on this instance",
            m.publish_duration.clone(),
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
            "redis_patterns_capped",
            "1 while the Redis bus listens to every update: its subscribers' templates would need more patterns than redis-max-patterns",
            m.routing_capped.clone(),
        );
        registry.register(
            "streams_expired",
            "Streams closed because the subscriber's token expired",
            m.streams_expired.clone(),
        );
        registry.register(
            "streams_deferred",
            "Stream requests answered with a retry hint for a passing reason (draining, instance full, bus unavailable)",
            m.streams_deferred.clone(),
        );
        registry.register(
            "streams_refused",
            "New streams refused because a stream limit was reached",
            m.streams_refused.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because a connection limit was reached (max-connections, max-connections-per-address)",
            m.connections_refused.clone(),
        );
        registry.register(
            "replayed_updates",
            "Updates replayed from history",
            m.replayed.clone(),
        );
        registry.register(
            "replays_paged",
            "Replays cut at subscriber-queue-bytes: the stream ended after one page and the client resumes for the next",
            m.replays_paged.clone(),
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
            "bus_reconnects",
            "Reconnections of the bus delivery connection",
            m.bus_reconnects.clone(),
        );
        registry.register(
            "bus_gaps",
            "Bus reconnections after which updates may have been lost",
            m.bus_gaps.clone(),
        );
        registry.register(
            "bus_skipped",
            "Messages read from the broker and skipped as malformed",
            m.bus_skipped.clone(),
        );
        registry.register(
            "bus_broker_messages",
            "Messages the broker sent to instances for this instance's publishes",
            m.bus_broker_messages.clone(),
        );
        registry.register(
            "bus_broker_bytes",
            "Bytes of the messages the broker sent to instances for this instance's publishes",
            m.bus_broker_bytes.clone(),
        );
        registry.register(
            "auth_callbacks",
            "Calls to the authorization callback, by outcome (granted, refused, failed)",
            m.auth_callbacks.clone(),
        );
        registry.register(
            "auth_callback_cache_hits",
            "Stream requests answered from the authorization callback's cache or a call in flight",
            m.auth_callback_cache_hits.clone(),
        );
        registry.register(
            "webhook_events_delivered",
            "Webhook events the receiver took",
            m.webhook_delivered.clone(),
        );
        registry.register(
            "webhook_events_dropped",
            "Webhook events dropped, by reason (queue_full, undelivered, refused)",
            m.webhook_dropped.clone(),
        );
        registry.register(
            "webhook_failed_attempts",
            "Webhook requests that failed (each retry counts)",
            m.webhook_failed_attempts.clone(),
        );
        registry.register(
            "subscriber_events_dropped",
            "Subscribers' comings and goings a listener (subscriptions, webhooks) fell too far behind to be told",
            m.subscriber_events_dropped.clone(),
        );
        registry.register(
            "consumer_messages",
            "Messages consumed from the application's own sources, by consumer (source) and outcome: published, or why skipped",
            m.consumer_messages.clone(),
        );
        registry.register(
            "consumer_reconnects",
            "Waits and reconnections of consumers' connections to their sources",
            m.consumer_reconnects.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages waiting in a consumer's source (queue depth, stream group lag, pending JetStream messages, outbox rows), as this instance last saw them; 0 on an instance that does not read it",
            m.consumer_lag.clone(),
        );
        registry.register(
            "ready",
            "1 when the instance accepts traffic",
            m.ready.clone(),
        );
        registry.register(
            "bus_state",
            "Where the bus's connection to its broker stands: 1 for its state (connecting, connected, reconnecting), 0 for the others",
            m.bus_state.clone(),
        );
        registry.register(
            "tokio_alive_tasks",
            "Live tokio tasks",
            m.tokio_tasks.clone(),
        );
        // Every label exists from the start, so a dashboard sees 0 rather than nothing.
        for limit in [
            StreamLimit::Instance,
            StreamLimit::Address,
            StreamLimit::Session,
            StreamLimit::WideAddress,
            StreamLimit::WideInstance,
        ] {
            let _ = m.streams_refused.get_or_create(&LimitLabels { limit });
        }
        for limit in [StreamLimit::Instance, StreamLimit::Address] {
            let _ = m.connections_refused.get_or_create(&LimitLabels { limit });
        }
        for outcome in [
            CallbackOutcome::Granted,
            CallbackOutcome::Refused,
            CallbackOutcome::Failed,
            CallbackOutcome::Busy,
        ] {
            let _ = m.auth_callbacks.get_or_create(&CallbackLabels { outcome });
        }
        for reason in [
            WebhookDrop::QueueFull,
            WebhookDrop::Undelivered,
            WebhookDrop::Refused,
        ] {
            let _ = m
                .webhook_dropped
                .get_or_create(&WebhookDropLabels { reason });
        }
        for listener in [EventListener::Subscriptions, EventListener::Webhooks] {
            let _ = m
                .subscriber_events_dropped
                .get_or_create(&ListenerLabels { listener });
        }
        Metrics { registry, ..m }
    }

    /// Records that the bus's connection is in state `current` of `states` (their names).
    pub fn bus_state(&self, states: &[&'static str], current: &'static str) {
        for &state in states {
            self.bus_state
                .get_or_create(&StateLabels { state })
                .set(i64::from(state == current));
        }
    }

    /// Counts one subscriber event `listener` was not told (its queue was full).
    pub fn subscriber_event_dropped(&self, listener: EventListener) {
        self.subscriber_events_dropped
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// Counts one message consumer `source` read, with its `outcome`.
    pub fn consumer_message(&self, source: &str, outcome: &'static str) {
        self.consumer_messages
            .get_or_create(&ConsumerLabels {
                source: source.to_owned(),
                outcome,
            })
            .inc();
    }

    /// The counter of consumer `source`'s reconnections (its connection's reconnect machine
    /// holds it).
    pub fn consumer_reconnects(&self, source: &str) -> Counter {
        self.consumer_reconnects
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .clone()
    }

    /// The gauge of the messages waiting in consumer `source`'s source.
    pub fn consumer_lag(&self, source: &str) -> Gauge {
        self.consumer_lag
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .clone()
    }

    /// Counts `n` webhook events the receiver took.
    pub fn webhook_delivered(&self, n: u64) {
        self.webhook_delivered.inc_by(n);
    }

    /// Counts `n` webhook events dropped for `reason`.
    pub fn webhook_dropped(&self, reason: WebhookDrop, n: u64) {
        self.webhook_dropped
            .get_or_create(&WebhookDropLabels { reason })
            .inc_by(n);
    }

    /// Counts one call to the authorization callback.
    pub fn auth_callback(&self, outcome: CallbackOutcome) {
        self.auth_callbacks
            .get_or_create(&CallbackLabels { outcome })
            .inc();
    }

    /// Counts one connection refused by `limit` (`Instance` or `Address`).
    pub fn refused_connection(&self, limit: StreamLimit) {
        self.connections_refused
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// Counts one stream refused by `limit`.
    pub fn refused_stream(&self, limit: StreamLimit) {
        self.streams_refused
            .get_or_create(&LimitLabels { limit })
            .inc();
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

/// The stream limit that refused a new stream (the `limit` label of
/// `tidings_streams_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamLimit {
    /// `max-streams`.
    Instance,
    /// `max-streams-per-address`.
    Address,
    /// `max-streams-per-session`.
    Session,
    /// `max-wide-selectors-per-address`.
    WideAddress,
    /// `max-wide-selectors`.
    WideInstance,
}

impl EncodeLabelValue for StreamLimit {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            StreamLimit::Instance => "instance",
            StreamLimit::Address => "address",
            StreamLimit::Session => "session",
            StreamLimit::WideAddress => "wide-selectors-per-address",
            StreamLimit::WideInstance => "wide-selectors",
        })
    }
}

/// How a call to the authorization callback ended (the `outcome` label of
/// `tidings_auth_callbacks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallbackOutcome {
    /// `200`: the stream was let in.
    Granted,
    /// `401` or `403`.
    Refused,
    /// No usable answer: the stream was told to retry.
    Failed,
    /// Not called: too many calls in flight (`auth-concurrency`,
    /// `auth-concurrency-per-address`); the stream was told to retry.
    Busy,
}

impl CallbackOutcome {
    /// The label's value (also a span attribute's).
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackOutcome::Granted => "granted",
            CallbackOutcome::Refused => "refused",
            CallbackOutcome::Failed => "failed",
            CallbackOutcome::Busy => "busy",
        }
    }
}

impl EncodeLabelValue for CallbackOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// Why webhook events were dropped (the `reason` label of
/// `tidings_webhook_events_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookDrop {
    /// The queue was full (the receiver slow or down for long).
    QueueFull,
    /// The batch was not taken in every attempt.
    Undelivered,
    /// The receiver answered a 4xx.
    Refused,
}

impl EncodeLabelValue for WebhookDrop {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            WebhookDrop::QueueFull => "queue_full",
            WebhookDrop::Undelivered => "undelivered",
            WebhookDrop::Refused => "refused",
        })
    }
}

/// Who listens to the hub's subscriber events (the `listener` label of
/// `tidings_subscriber_events_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventListener {
    /// The subscription events published on the bus (`subscriptions`).
    Subscriptions,
    /// The lifecycle webhooks.
    Webhooks,
}

impl EncodeLabelValue for EventListener {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            EventListener::Subscriptions => "subscriptions",
            EventListener::Webhooks => "webhooks",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: EventListener,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConsumerLabels {
    source: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookDropLabels {
    reason: WebhookDrop,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallbackLabels {
    outcome: CallbackOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: StreamLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_cumulative_buckets() {
        let metrics = Metrics::new();
        for us in [50, 100, 101, 3_000, 10_000_000] {
            metrics.delivery_latency.observe_micros(us);
        }
        let text = metrics.render();
        let line = |le: &str| {
            let prefix = format!("tidings_delivery_latency_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("{prefix} in {text}"))
                .to_owned()
        };
        assert_eq!(line("0.0001"), "2", "50 and 100 are at or below 100 µs");
        assert_eq!(line("0.00025"), "3");
        assert_eq!(line("0.005"), "4");
        assert_eq!(line("5.0"), "4");
        assert_eq!(line("+Inf"), "5");
        assert!(text.contains("tidings_delivery_latency_seconds_count 5"));
    }
}
