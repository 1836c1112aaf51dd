//! The hub: one instance's registry of local subscribers, and the dispatch of an update to
//! those that may see it.
//!
//! Subscribers are indexed by selector, not scanned: an exact selector is a key in a map from
//! topic to subscribers, and each distinct non-exact selector (`*`, a template) is matched once
//! per update, however many subscribers share it. A subscriber that passes is handed the
//! update's shared [`Envelope`] through its bounded queue with `try_send`: dispatch never
//! waits for a connection. The queue is bounded twice, in updates and in bytes of encoded
//! events. A subscriber whose queue is full is disconnected (it can resume from history) rather
//! than slowing everyone else down: it leaves the registry, and its connection is closed at
//! once through the token it was registered with — the connection of a client that stopped
//! reading is blocked in a write and would never notice its stream ending.
//!
//! The hub also keeps the instance's record of live interests (which exact topics and which
//! wide selectors have subscribers), which a bus that routes by interest watches; it ends the
//! streams an operator disconnects ([`Hub::disconnect`]), each with its [`Farewell`]; and it
//! hands on the signals of the cluster's control plane the bus hears ([`Hub::signals`]).
//!
//! Here: registration and dispatch; `events`: the subscriber events told to listeners;
//! `operate`: what an operator does to the streams, and the signals; `interest`: the record of
//! interests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use indexmap::IndexMap;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::envelope::Envelope;
use crate::metrics::Metrics;
use crate::selector::Selector;
use crate::subscriber::SubscriberSpec;
use crate::telemetry::{self, Kind, Parent};
use crate::update::SessionId;

mod events;
mod interest;
mod operate;

use events::Listener;
pub use events::{Heard, SubscriberEvent, SubscriberEvents, SUBSCRIBER_EVENTS_QUEUE};
use interest::InterestLog;
pub use interest::{Interest, InterestChanges};
pub use operate::{Farewell, Streams};

/// The hub-wide identifier of one subscriber (unique within the instance's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub u64);

/// One registered subscriber, as the index holds it.
#[derive(Debug)]
struct Entry {
    spec: Arc<SubscriberSpec>,
    /// The sending half of the subscriber's bounded queue; dropping the last entry closes it.
    tx: mpsc::Sender<Arc<Envelope>>,
    /// Has more than one distinct selector, so one update may reach it through several
    /// index entries: dispatch then deduplicates it.
    multi: bool,
    /// Bytes queued, and the farewell (shared with the [`Subscription`]).
    shared: Arc<Shared>,
    /// Cancelled when the hub drops the subscriber as slow: closes its connection.
    close: Option<CancellationToken>,
}

/// What a subscriber's entry and its [`Subscription`] share, in one allocation per stream.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes of encoded events in the queue now (the subscription subtracts what it takes out).
    queued_bytes: AtomicUsize,
    /// Set when an operator disconnects it: how its stream ends.
    farewell: OnceLock<Farewell>,
}

type Members = IndexMap<SubscriberId, Arc<Entry>>;

#[derive(Debug, Default)]
struct Registry {
    all: HashMap<SubscriberId, Arc<Entry>>,
    exact: HashMap<Arc<str>, Members>,
    /// Non-exact selectors, keyed by [`Selector::key`], each compiled once.
    wide: IndexMap<Arc<str>, (Selector, Members)>,
    sessions: HashMap<SessionId, usize>,
    /// What changed in the interest since a router last asked; `None` until one asks.
    changes: Option<InterestLog>,
}

/// What one dispatch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// Subscribers the update was queued for.
    pub queued: usize,
    /// Subscribers disconnected because their queue was full.
    pub dropped_slow: usize,
}

/// The bounds of each subscriber's queue (`subscriber-queue`, `subscriber-queue-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Updates queued at most.
    pub updates: usize,
    /// Bytes of encoded events queued at most. An update is always queued into an empty
    /// queue, however large it is.
    pub bytes: usize,
}

impl Default for QueueLimits {
    /// 1,024 updates or 4 MiB: a burst a healthy client drains in moments, and a bound on the
    /// memory one stalled client holds.
    fn default() -> Self {
        QueueLimits {
            updates: 1024,
            bytes: 4 << 20,
        }
    }
}

/// One instance's hub; cheap to clone (all clones share the registry).
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// A std lock, not a tokio one: nothing awaits while it is held, and dispatch (the reader)
    /// only does `try_send`.
    registry: RwLock<Registry>,
    next_id: AtomicU64,
    /// What a subscriber's queue holds before the subscriber counts as slow.
    queue: QueueLimits,
    metrics: Arc<Metrics>,
    /// Bumped whenever the set of exact topics or wide selectors changes.
    interest_version: watch::Sender<u64>,
    /// Sessions whose stream count changed since a session registry last looked (bounded by
    /// the number of sessions), and the signal that there are some.
    changed_sessions: std::sync::Mutex<HashSet<SessionId>>,
    sessions_changed: tokio::sync::Notify,
    /// Signalled whenever a subscriber comes or goes (for a cluster-wide subscriptions API).
    subscribers_changed: tokio::sync::Notify,
    /// Told each subscriber that comes or goes, once someone asked (subscription events,
    /// lifecycle webhooks): one bounded queue per listener.
    subscriber_events: std::sync::Mutex<Vec<Listener>>,
    /// The control plane's signals the bus heard, for whoever listens ([`Hub::signals`]).
    signals: broadcast::Sender<Bytes>,
}

/// Signals a listener of [`Hub::signals`] may fall behind by before it misses some (they are
/// small and handled at once; a listener that misses one is told so).
pub const SIGNALS_QUEUE: usize = 4096;

/// A live subscription: the receiving half of the subscriber's queue. Dropping it removes the
/// subscriber from the hub at once.
#[derive(Debug)]
pub struct Subscription {
    /// The subscriber's id.
    pub id: SubscriberId,
    /// What it asked for (the stream uses it to filter replayed history).
    pub spec: Arc<SubscriberSpec>,
    rx: mpsc::Receiver<Arc<Envelope>>,
    shared: Arc<Shared>,
    hub: Hub,
}

impl Subscription {
    /// Receives the next queued update; `None` once the hub has dropped the subscriber (slow
    /// consumer) — the stream should then end so the client resumes from history.
    pub async fn recv(&mut self) -> Option<Arc<Envelope>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next queued update (for hand-written streams).
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Arc<Envelope>>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(envelope)) = &polled {
            self.shared
                .queued_bytes
                .fetch_sub(envelope.sse_len(), Ordering::Relaxed);
        }
        polled
    }

    /// How the stream ends, when an operator disconnected it ([`Hub::disconnect`]): once
    /// [`Subscription::recv`] gave what was queued and then `None`.
    pub fn farewell(&self) -> Option<&Farewell> {
        self.shared.farewell.get()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

impl Hub {
    /// A hub whose subscribers each queue at most `queue_capacity` updates, of any size.
    pub fn new(queue_capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self::with_queue_limits(
            QueueLimits {
                updates: queue_capacity,
                bytes: usize::MAX,
            },
            metrics,
        )
    }

    /// A hub whose subscribers' queues are bounded by `queue`.
    pub fn with_queue_limits(queue: QueueLimits, metrics: Arc<Metrics>) -> Self {
        Hub {
            inner: Arc::new(Inner {
                registry: RwLock::new(Registry::default()),
                next_id: AtomicU64::new(1),
                queue: QueueLimits {
                    updates: queue.updates.max(1),
                    bytes: queue.bytes.max(1),
                },
                metrics,
                interest_version: watch::Sender::new(0),
                changed_sessions: std::sync::Mutex::new(HashSet::new()),
                sessions_changed: tokio::sync::Notify::new(),
                subscribers_changed: tokio::sync::Notify::new(),
                subscriber_events: std::sync::Mutex::new(Vec::new()),
                signals: broadcast::Sender::new(SIGNALS_QUEUE),
            }),
        }
    }

    /// The metrics this hub reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Registers a subscriber. From the moment this returns, every update dispatched that the
    /// subscriber may see is queued for it.
    pub fn subscribe(&self, spec: SubscriberSpec) -> Subscription {
        self.register(spec, None)
    }

    /// Registers a subscriber whose connection `close` ends: the hub cancels it when it drops
    /// the subscriber as a slow consumer.
    pub fn subscribe_closing(
        &self,
        spec: SubscriberSpec,
        close: CancellationToken,
    ) -> Subscription {
        self.register(spec, Some(close))
    }

    fn register(&self, spec: SubscriberSpec, close: Option<CancellationToken>) -> Subscription {
        let id = SubscriberId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(self.inner.queue.updates);
        let shared = Arc::new(Shared::default());
        let multi = spec
            .selectors
            .iter()
            .map(|s| (matches!(s, Selector::Exact(_)), s.key()))
            .collect::<HashSet<_>>()
            .len()
            > 1;
        let spec = Arc::new(spec);
        let entry = Arc::new(Entry {
            spec: spec.clone(),
            tx,
            multi,
            shared: shared.clone(),
            close,
        });
        let mut interest_changed = false;
        {
            let mut reg = self.write();
            for selector in &spec.selectors {
                let reg = &mut *reg;
                let members = match selector {
                    Selector::Exact(topic) => reg.exact.entry(topic.clone()).or_default(),
                    _ => {
                        &mut reg
                            .wide
                            .entry(Arc::from(selector.key()))
                            .or_insert_with(|| (selector.clone(), Members::default()))
                            .1
                    }
                };
                if members.is_empty() {
                    interest_changed = true;
                    match (&mut reg.changes, selector) {
                        (Some(log), Selector::Exact(topic)) => log.exact(topic),
                        (Some(log), _) => log.everything(),
                        (None, _) => {}
                    }
                }
                members.insert(id, entry.clone());
            }
            if let Some(session) = &spec.session {
                *reg.sessions.entry(session.clone()).or_default() += 1;
                self.session_changed(session);
            }
            reg.all.insert(id, entry);
        }
        self.inner.metrics.subscribers.inc();
        self.inner.subscribers_changed.notify_one();
        self.tell(&spec, true);
        if interest_changed {
            self.inner.interest_version.send_modify(|v| *v += 1);
        }
        Subscription {
            id,
            spec,
            rx,
            shared,
            hub: self.clone(),
        }
    }

    /// Removes a subscriber (no-op when it is already gone) and returns it. Closing its queue
    /// ends its stream.
    fn remove(&self, id: SubscriberId) -> Option<Arc<Entry>> {
        let mut interest_changed = false;
        let entry = {
            let mut reg = self.write();
            let entry = reg.all.remove(&id)?;
            for selector in &entry.spec.selectors {
                match selector {
                    Selector::Exact(topic) => {
                        if let Some(members) = reg.exact.get_mut(topic) {
                            members.swap_remove(&id);
                            if members.is_empty() {
                                reg.exact.remove(topic);
                                interest_changed = true;
                                if let Some(log) = &mut reg.changes {
                                    log.exact(topic);
                                }
                            }
                        }
                    }
                    _ => {
                        if let Some((_, members)) = reg.wide.get_mut(selector.key()) {
                            members.swap_remove(&id);
                            if members.is_empty() {
                                reg.wide.swap_remove(selector.key());
                                interest_changed = true;
                                if let Some(log) = &mut reg.changes {
                                    log.everything();
                                }
                            }
                        }
                    }
                }
            }
            if let Some(session) = &entry.spec.session {
                self.session_changed(session);
                if let Some(n) = reg.sessions.get_mut(session) {
                    *n -= 1;
                    if *n == 0 {
                        reg.sessions.remove(session);
                    }
                }
            }
            entry
        };
        self.inner.metrics.subscribers.dec();
        self.inner.subscribers_changed.notify_one();
        self.tell(&entry.spec, false);
        if interest_changed {
            self.inner.interest_version.send_modify(|v| *v += 1);
        }
        Some(entry)
    }

    /// Queues `envelope` for every local subscriber that may see it, in the order dispatch is
    /// called. A bus calls this from one task at a time, in its delivery order.
    pub fn dispatch(&self, envelope: &Arc<Envelope>) -> Dispatched {
        let update = &envelope.update;
        // This instance's part of the publish's trace, when the update carries one and a
        // subscriber here wanted it (every instance of a broadcasting bus reads every update).
        let started = update.trace.as_ref().map(|_| std::time::SystemTime::now());
        let mut outcome = Dispatched::default();
        let mut slow: Vec<SubscriberId> = Vec::new();
        // Subscribers with several selectors may be reached more than once; remember those.
        let mut seen_multi: HashSet<SubscriberId> = HashSet::new();
        let size = envelope.sse_len();
        let queue_bytes = self.inner.queue.bytes;
        {
            let reg = self.read();
            let mut offer = |id: &SubscriberId, entry: &Arc<Entry>| {
                if entry.multi && !seen_multi.insert(*id) {
                    return;
                }
                if !entry.spec.may_receive(update) {
                    return;
                }
                let queued = entry.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
                if queued > 0 && queued.saturating_add(size) > queue_bytes {
                    entry.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                    slow.push(*id);
                    return;
                }
                match entry.tx.try_send(envelope.clone()) {
                    Ok(()) => outcome.queued += 1,
                    Err(e) => {
                        entry.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                        match e {
                            mpsc::error::TrySendError::Full(_) => slow.push(*id),
                            // The stream is going away; its guard removes it.
                            mpsc::error::TrySendError::Closed(_) => {}
                        }
                    }
                }
            };
            for topic in &update.topics {
                if let Some(members) = reg.exact.get(topic.as_str()) {
                    members.iter().for_each(|(id, e)| offer(id, e));
                }
            }
            for (selector, members) in reg.wide.values() {
                if selector.matches_any(&update.topics) {
                    members.iter().for_each(|(id, e)| offer(id, e));
                }
            }
        }
        outcome.dropped_slow = slow.len();
        for id in slow {
            tracing::info!(
                subscriber = id.0,
                "subscriber queue full: disconnecting slow consumer"
            );
            self.inner.metrics.slow_consumers.inc();
            if let Some(close) = self.remove(id).and_then(|entry| entry.close.clone()) {
                close.cancel();
            }
        }
        if let (Some(trace), Some(started), true) = (
            &update.trace,
            started,
            outcome.queued + outcome.dropped_slow > 0,
        ) {
            let parent = Parent::Remote(trace);
            let span = telemetry::span_since("tidings.deliver", Kind::Consumer, parent, started);
            span.set("tidings.update.id", update.id.as_str().to_owned());
            span.set("tidings.subscribers.queued", outcome.queued as i64);
            span.set("tidings.subscribers.slow", outcome.dropped_slow as i64);
        }
        outcome
    }

    /// Number of subscribers registered now.
    pub fn subscriber_count(&self) -> usize {
        self.read().all.len()
    }

    fn session_changed(&self, session: &SessionId) {
        crate::locks::lock(&self.inner.changed_sessions).insert(session.clone());
        self.inner.sessions_changed.notify_one();
    }

    /// Waits until some session's stream count changed, then returns those sessions with their
    /// current counts on this instance (0: gone). For a cluster-wide session registry.
    pub async fn session_changes(&self) -> Vec<(SessionId, usize)> {
        loop {
            let changed: Vec<SessionId> =
                std::mem::take(&mut *crate::locks::lock(&self.inner.changed_sessions))
                    .into_iter()
                    .collect();
            if !changed.is_empty() {
                let reg = self.read();
                return changed
                    .into_iter()
                    .map(|s| {
                        let n = reg.sessions.get(&s).copied().unwrap_or(0);
                        (s, n)
                    })
                    .collect();
            }
            self.inner.sessions_changed.notified().await;
        }
    }

    /// Completes when a subscriber came or went since the last call.
    pub async fn subscribers_changed(&self) {
        self.inner.subscribers_changed.notified().await;
    }

    /// Every session with streams on this instance, and how many.
    pub fn sessions(&self) -> Vec<(SessionId, usize)> {
        self.read()
            .sessions
            .iter()
            .map(|(s, n)| (s.clone(), *n))
            .collect()
    }

    /// Every subscriber registered now (for the subscriptions API).
    pub fn subscribers(&self) -> Vec<Arc<SubscriberSpec>> {
        self.read().all.values().map(|e| e.spec.clone()).collect()
    }

    /// Number of streams `session` holds on this instance.
    pub fn session_streams(&self, session: &SessionId) -> usize {
        self.read().sessions.get(session).copied().unwrap_or(0)
    }

    /// Number of sessions with streams on this instance.
    pub fn session_count(&self) -> usize {
        self.read().sessions.len()
    }

    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        // Every mutation of the registry completes before it can panic (map operations only),
        // so a poisoned lock still guards consistent data.
        crate::locks::read(&self.inner.registry)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        crate::locks::write(&self.inner.registry)
    }
}

#[cfg(test)]
mod tests;
