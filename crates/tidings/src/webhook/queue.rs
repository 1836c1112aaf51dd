//! The bounded queue between the watcher and the sender: at most `webhook-queue` events and
//! `webhook-queue-bytes` of them, each written as JSON once, when it is queued.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{Event, MAX_BATCH};
use crate::metrics::{Metrics, WebhookDrop};

/// An event as the receiver gets it, written once when it is queued.
pub(super) type Written = Box<serde_json::value::RawValue>;

/// The bounded queue between the watcher and the sender.
pub(super) struct Queue {
    events: Mutex<Queued>,
    capacity: usize,
    capacity_bytes: usize,
    pub(super) ready: Notify,
    /// A batch is being delivered.
    pub(super) sending: AtomicBool,
    pub(super) metrics: Arc<Metrics>,
    /// Drops are logged at most once a second.
    log_gate: crate::throttle::LogOncePerSecond,
}

/// The events waiting, and their size.
#[derive(Default)]
struct Queued {
    events: VecDeque<Written>,
    bytes: usize,
}

impl Queue {
    /// An empty queue of at most `capacity` events and `capacity_bytes` of them (one event
    /// always fits).
    pub(super) fn new(capacity: usize, capacity_bytes: usize, metrics: Arc<Metrics>) -> Queue {
        Queue {
            events: Mutex::new(Queued::default()),
            capacity,
            capacity_bytes,
            ready: Notify::new(),
            sending: AtomicBool::new(false),
            metrics,
            log_gate: crate::throttle::LogOncePerSecond::default(),
        }
    }

    /// Queues `event`, written as JSON, or drops it (counted) when the queue is full.
    pub(super) fn push(&self, event: Event) {
        let written = match serde_json::value::to_raw_value(&event) {
            Ok(written) => written,
            Err(e) => {
                // Strings, numbers and a JSON payload: not expected to fail.
                return self.dropped(
                    WebhookDrop::QueueFull,
                    1,
                    &format!("a webhook event cannot be written as JSON ({e}); dropped"),
                );
            }
        };
        let size = written.get().len();
        let mut queued = crate::locks::lock(&self.events);
        let full = queued.events.len() >= self.capacity
            || (!queued.events.is_empty() && queued.bytes + size > self.capacity_bytes);
        if full {
            drop(queued);
            return self.dropped(
                WebhookDrop::QueueFull,
                1,
                "the webhook queue is full; event dropped",
            );
        }
        queued.events.push_back(written);
        queued.bytes += size;
        drop(queued);
        self.ready.notify_one();
    }

    /// The oldest events, a batch's worth at most.
    pub(super) fn take(&self) -> Vec<Written> {
        let mut queued = crate::locks::lock(&self.events);
        let n = queued.events.len().min(MAX_BATCH);
        let batch: Vec<Written> = queued.events.drain(..n).collect();
        queued.bytes -= batch.iter().map(|e| e.get().len()).sum::<usize>();
        batch
    }

    /// Nothing queued and nothing being sent.
    pub(super) fn is_idle(&self) -> bool {
        !self.sending.load(Ordering::SeqCst) && crate::locks::lock(&self.events).events.is_empty()
    }

    /// Counts `n` dropped events and logs it, at most once a second.
    pub(super) fn dropped(&self, reason: WebhookDrop, n: usize, what: &str) {
        self.metrics.webhook_dropped(reason, n as u64);
        if self.log_gate.allow() {
            tracing::warn!(events = n, "{what}");
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .field("capacity_bytes", &self.capacity_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::Scope;

    fn online(session: &str) -> Event {
        Event::SessionOnline {
            session: session.into(),
            scope: Scope::Cluster,
            at: 1,
        }
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_one_event_always_fits() {
        let size = serde_json::to_vec(&online("a")).unwrap().len();
        let queue = Queue::new(100, size * 2, Arc::new(Metrics::new()));
        for session in ["a", "b", "c"] {
            queue.push(online(session));
        }
        let dropped = r#"tidings_webhook_events_dropped_total{reason="queue_full"} 1"#;
        assert!(queue.metrics.render().contains(dropped));
        let taken = queue.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(taken[1].get()).unwrap(),
            serde_json::to_value(online("b")).unwrap()
        );
        assert_eq!(crate::locks::lock(&queue.events).bytes, 0);
        // Larger than the bound, into an empty queue: it goes.
        queue.push(online(&"x".repeat(size * 4)));
        assert_eq!(queue.take().len(), 1);
    }
}
