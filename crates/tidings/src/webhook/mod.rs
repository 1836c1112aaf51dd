//! Lifecycle webhooks (`--webhook-url`): the hub tells the application when a session comes
//! online or goes offline and when a stream subscribes or unsubscribes, by `POST`ing batches of
//! JSON events, signed with HMAC-SHA256 (`--webhook-secret`).
//!
//! - **Streams**: every stream this instance opens or closes, with its selectors, session and
//!   event names.
//! - **Sessions**: with a bus that keeps a session registry (Redis), cluster-wide: a session is
//!   marked online in the registry by the instance that finds it unmarked, and offline by the
//!   one that finds no live instance holding it (each check-and-mark is one step in Redis), so
//!   each transition is told once by one instance. A session whose last stream closes is
//!   checked after `offline-grace` (a page reload is no transition at all). An instance that
//!   dies cannot tell its sessions' end: one surviving instance per `session-ttl` sweeps the
//!   registry and tells the sessions no live instance has held for two sweeps in a row
//!   (`"reason": "expired"`). Without a registry, each instance tells its own sessions
//!   (`"scope": "instance"`).
//!
//! Events wait in a queue bounded in events and in bytes (`--webhook-queue`,
//! `--webhook-queue-bytes`), each written as JSON once, when it is queued; a full queue drops
//! new events, counted and logged. Batches are sent one at a time, in order, retried with
//! backoff; a batch the receiver does not take within `--webhook-retry-for` is dropped, counted
//! and logged. Delivery is at least once: a batch whose answer was lost is sent again with the
//! same `id`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::bus::{Bus, SubscriberRecord};
use crate::hub::{Heard, Hub, SubscriberEvents};
use crate::metrics::{EventListener, WebhookDrop};
use crate::outbound::{self, OutboundConfigError};
use crate::update::SessionId;

mod queue;
mod sender;

use queue::{Queue, Written};
pub use sender::sign;
use sender::Sender;

/// Events sent in one request, at most.
pub const MAX_BATCH: usize = 100;
/// The longest wait for the receiver to answer one request.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The header holding the signature.
pub const SIGNATURE_HEADER: &str = "tidings-signature";
/// The header holding the batch's id.
pub const ID_HEADER: &str = "tidings-webhook-id";
/// How often session checks that met an unavailable registry are tried again.
const RECHECK: Duration = Duration::from_secs(2);

/// The webhook settings, as configuration gives them. (`Debug` shows no secret.)
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Where to send (`http://` or `https://`).
    pub url: String,
    /// The HMAC key of the signature.
    pub secret: String,
    /// Events held while the receiver is slow or down, at most.
    pub queue: usize,
    /// Bytes of those events (as sent), at most; one event always fits.
    pub queue_bytes: usize,
    /// How long a session may have no stream before it is told offline.
    pub offline_grace: Duration,
    /// How long a batch is retried before it is dropped.
    pub retry_for: Duration,
    /// How often one instance sweeps for sessions whose instance died (`session-ttl`).
    pub sweep_every: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &crate::bus::redact(&self.url))
            .field("secret", &"***")
            .field("queue", &self.queue)
            .field("queue_bytes", &self.queue_bytes)
            .field("offline_grace", &self.offline_grace)
            .field("retry_for", &self.retry_for)
            .field("sweep_every", &self.sweep_every)
            .finish()
    }
}

/// Whose view a session event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scope {
    /// The cluster's registry: the session has streams on some instance / on none.
    Cluster,
    /// This instance only (a bus without a registry).
    Instance,
}

/// Why a session went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Reason {
    /// Its last stream closed.
    Closed,
    /// Its instance died, and its registry entries expired.
    Expired,
}

/// One event, as the receiver gets it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Event {
    #[serde(rename = "session.online")]
    SessionOnline {
        session: String,
        scope: Scope,
        at: u64,
    },
    #[serde(rename = "session.offline")]
    SessionOffline {
        session: String,
        scope: Scope,
        reason: Reason,
        at: u64,
    },
    #[serde(rename = "stream.subscribed")]
    StreamSubscribed(Stream),
    #[serde(rename = "stream.unsubscribed")]
    StreamUnsubscribed(Stream),
}

/// A stream in a `stream.*` event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Stream {
    /// The subscriber's `urn:uuid:…` (as the subscriptions API names it).
    subscriber: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    /// Its selectors as written.
    topics: Vec<String>,
    /// The event names it asked for (session streams; empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    event_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
    at: u64,
}

/// A request's body.
#[derive(Serialize)]
struct Batch<'a> {
    /// Unique per batch, the same on every attempt: the receiver's key to drop a repeat.
    id: &'a str,
    instance: &'a str,
    events: &'a [Written],
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The running webhooks of an instance. Dropping it stops them.
#[derive(Debug)]
pub struct Webhooks {
    queue: Arc<Queue>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Webhooks {
    /// Starts watching `hub` and sending to the receiver of `settings`.
    ///
    /// # Errors
    /// [`OutboundConfigError`] when the URL is not `http(s)://`, the secret is empty, or the
    /// queue holds nothing.
    pub fn start(
        settings: &WebhookSettings,
        hub: &Hub,
        bus: Arc<dyn Bus>,
        instance: &str,
    ) -> Result<Webhooks, OutboundConfigError> {
        let url = outbound::http_url("webhook-url", &settings.url)?;
        if settings.secret.is_empty() {
            return Err(OutboundConfigError::Setting(
                "webhook-url needs webhook-secret: the key the receiver checks each request's signature with",
            ));
        }
        if settings.queue == 0 {
            return Err(OutboundConfigError::Setting(
                "webhook-queue must be at least 1",
            ));
        }
        let client = outbound::client(TIMEOUT)?;
        let queue = Arc::new(Queue::new(
            settings.queue,
            settings.queue_bytes,
            hub.metrics().clone(),
        ));
        let changed = Arc::new(Changed::default());
        let watcher = Watcher {
            queue: queue.clone(),
            changed: changed.clone(),
        };
        let marker = Marker {
            bus,
            hub: hub.clone(),
            queue: queue.clone(),
            grace: settings.offline_grace,
            marked: HashSet::new(),
            closing: HashMap::new(),
            checks: 0,
            unsure: HashSet::new(),
        };
        let sender = Sender {
            client,
            url,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, settings.secret.as_bytes()),
            instance: instance.to_owned(),
            queue: queue.clone(),
            retry_for: settings.retry_for,
        };
        let tasks = vec![
            tokio::spawn(watcher.run(hub.subscriber_events(EventListener::Webhooks))),
            tokio::spawn(marker.run(changed, settings.sweep_every)),
            tokio::spawn(sender.run()),
        ];
        Ok(Webhooks { queue, tasks })
    }

    /// Waits until every queued event was sent (or dropped), at most `within`.
    pub async fn flush(&self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            while !self.queue.is_idle() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

/// Turns the hub's subscriber events into `stream.*` events at once, and hands the sessions
/// whose streams changed to the [`Marker`]: reading the hub's events never waits for Redis,
/// and what waits is bounded by the number of sessions.
struct Watcher {
    queue: Arc<Queue>,
    changed: Arc<Changed>,
}

/// Sessions whose streams changed since the marker last looked.
#[derive(Default)]
struct Changed {
    sessions: Mutex<HashSet<SessionId>>,
    /// Events were missed: every session may have changed.
    everything: AtomicBool,
    ready: Notify,
}

impl Watcher {
    async fn run(self, mut events: SubscriberEvents) {
        while let Some(heard) = events.recv().await {
            let event = match heard {
                Heard::Event(event) => event,
                Heard::Missed(n) => {
                    // Those streams' events are lost (and counted by the hub); the sessions'
                    // marks are not: the marker looks at every session again.
                    self.queue.dropped(
                        WebhookDrop::QueueFull,
                        usize::try_from(n).unwrap_or(usize::MAX),
                        "stream events dropped: the webhooks fell too far behind the hub",
                    );
                    self.changed.everything.store(true, Ordering::SeqCst);
                    self.changed.ready.notify_one();
                    continue;
                }
            };
            let record = SubscriberRecord::of(&event.spec);
            let topics = record.selectors().map(str::to_owned).collect();
            let stream = Stream {
                subscriber: record.subscriber,
                session: event.spec.session.as_ref().map(|s| s.as_str().to_owned()),
                topics,
                event_names: event
                    .spec
                    .event_names
                    .iter()
                    .map(|n| n.as_str().to_owned())
                    .collect(),
                payload: record.payload,
                at: now_millis(),
            };
            self.queue.push(match event.active {
                true => Event::StreamSubscribed(stream),
                false => Event::StreamUnsubscribed(stream),
            });
            if let Some(session) = &event.spec.session {
                crate::locks::lock(&self.changed.sessions).insert(session.clone());
                self.changed.ready.notify_one();
            }
        }
    }
}

/// Keeps the sessions' marks, by what the hub holds when it looks: a session with streams
/// that this instance has not marked is marked online; a marked one without streams is
/// checked after the grace (a reconnect within it cancels the check).
struct Marker {
    bus: Arc<dyn Bus>,
    hub: Hub,
    queue: Arc<Queue>,
    grace: Duration,
    /// Sessions with streams here that are online (told by this instance or another one).
    marked: HashSet<SessionId>,
    /// Sessions whose check is due after the grace, with the number of that check: a check
    /// runs only if no later one replaced it.
    closing: HashMap<SessionId, u64>,
    checks: u64,
    /// Sessions whose mark met an unavailable registry: looked at again every [`RECHECK`].
    unsure: HashSet<SessionId>,
}

impl Marker {
    async fn run(mut self, changed: Arc<Changed>, sweep_every: Duration) {
        let (due, mut checks) = mpsc::unbounded_channel::<(SessionId, u64)>();
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recheck = tokio::time::interval(RECHECK);
        loop {
            tokio::select! {
                () = changed.ready.notified() => {
                    let mut sessions = std::mem::take(
                        &mut *crate::locks::lock(&changed.sessions),
                    );
                    if changed.everything.swap(false, Ordering::SeqCst) {
                        sessions.extend(self.hub.sessions().into_iter().map(|(session, _)| session));
                        sessions.extend(self.marked.iter().cloned());
                    }
                    for session in sessions {
                        self.look(session, &due).await;
                    }
                }
                Some((session, check)) = checks.recv() => {
                    if self.closing.get(&session) == Some(&check) {
                        self.closing.remove(&session);
                        if self.hub.session_streams(&session) == 0 {
                            self.offline(session).await;
                        }
                    }
                }
                _ = sweep.tick() => self.sweep().await,
                _ = recheck.tick(), if !self.unsure.is_empty() => {
                    for session in std::mem::take(&mut self.unsure) {
                        match self.hub.session_streams(&session) {
                            0 if self.marked.contains(&session) => self.offline(session).await,
                            0 => {}
                            streams => self.online(session, streams).await,
                        }
                    }
                }
            }
        }
    }

    /// Marks `session` as what the hub holds of it now.
    async fn look(&mut self, session: SessionId, due: &mpsc::UnboundedSender<(SessionId, u64)>) {
        match self.hub.session_streams(&session) {
            0 if self.marked.contains(&session) && !self.closing.contains_key(&session) => {
                self.checks += 1;
                self.closing.insert(session.clone(), self.checks);
                let (due, check, grace) = (due.clone(), self.checks, self.grace);
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let _ = due.send((session, check));
                });
            }
            0 => {}
            streams => {
                self.closing.remove(&session);
                if !self.marked.contains(&session) {
                    self.online(session, streams).await;
                }
            }
        }
    }

    /// Marks `session` online (with this instance's `streams`) or offline in the bus's
    /// registry: the scope the change is told in (`None`: it already was so), or `None` from
    /// the outer option when it cannot be marked now — it is then looked at again later.
    async fn mark(&mut self, session: &SessionId, online: Option<usize>) -> Option<Option<Scope>> {
        if !self.bus.is_ready() {
            self.unsure.insert(session.clone());
            return None;
        }
        let Some(registry) = self.bus.registry() else {
            return Some(Some(Scope::Instance));
        };
        let marked = match online {
            Some(streams) => registry.session_online(session, streams).await,
            None => registry.session_offline(session).await,
        };
        match marked {
            Ok(true) => Some(Some(Scope::Cluster)),
            Ok(false) => Some(None),
            Err(e) => {
                tracing::debug!(error = %e, "webhook: cannot mark a session yet");
                self.unsure.insert(session.clone());
                None
            }
        }
    }

    async fn online(&mut self, session: SessionId, streams: usize) {
        let Some(scope) = self.mark(&session, Some(streams)).await else {
            return;
        };
        self.marked.insert(session.clone());
        if let Some(scope) = scope {
            self.queue.push(Event::SessionOnline {
                session: session.as_str().to_owned(),
                scope,
                at: now_millis(),
            });
        }
    }

    async fn offline(&mut self, session: SessionId) {
        let Some(scope) = self.mark(&session, None).await else {
            return;
        };
        self.marked.remove(&session);
        if let Some(scope) = scope {
            self.queue.push(Event::SessionOffline {
                session: session.as_str().to_owned(),
                scope,
                reason: Reason::Closed,
                at: now_millis(),
            });
        }
    }

    /// Tells the sessions whose instance died (when this instance is the period's sweeper).
    async fn sweep(&mut self) {
        let Some(registry) = self.bus.registry() else {
            return;
        };
        if !self.bus.is_ready() {
            return;
        }
        match registry.sweep_sessions().await {
            Ok(gone) => {
                for session in gone {
                    self.queue.push(Event::SessionOffline {
                        session: session.as_str().to_owned(),
                        scope: Scope::Cluster,
                        reason: Reason::Expired,
                        at: now_millis(),
                    });
                }
            }
            Err(e) => tracing::debug!(error = %e, "webhook: cannot sweep the session registry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        // RFC 4231 test case 2 (key "Jefe"), with the signed text "<t>.<body>".
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let signature = sign(&key, 0, b"what do ya want for nothing?");
        assert!(signature.starts_with("t=0,v1="), "{signature}");
        let expected = ring::hmac::sign(&key, b"0.what do ya want for nothing?");
        let hex: String = expected
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(signature, format!("t=0,v1={hex}"));
        assert_ne!(sign(&key, 1, b"x"), sign(&key, 2, b"x"));
        assert_ne!(sign(&key, 1, b"x"), sign(&key, 1, b"y"));
    }

    #[test]
    fn events_are_tagged_json() {
        let online = Event::SessionOnline {
            session: "alice".into(),
            scope: Scope::Cluster,
            at: 5,
        };
        assert_eq!(
            serde_json::to_value(online).unwrap(),
            serde_json::json!({"type": "session.online", "session": "alice", "scope": "cluster", "at": 5})
        );
        let offline = Event::SessionOffline {
            session: "alice".into(),
            scope: Scope::Instance,
            reason: Reason::Expired,
            at: 6,
        };
        assert_eq!(serde_json::to_value(offline).unwrap()["reason"], "expired");
        let stream = Event::StreamSubscribed(Stream {
            subscriber: "urn:uuid:1".into(),
            session: None,
            topics: vec!["t".into()],
            event_names: vec![],
            payload: None,
            at: 7,
        });
        assert_eq!(
            serde_json::to_value(stream).unwrap(),
            serde_json::json!({"type": "stream.subscribed", "subscriber": "urn:uuid:1", "topics": ["t"], "at": 7})
        );
    }
}
