//! The SSE response body shared by both APIs: replayed history, then live updates, with
//! heartbeats, and a clean end on shutdown.
//!
//! Joining history and live updates without a gap or a duplicate: the subscriber is registered
//! in the hub *before* history is read, so every update published after the read is queued
//! live; the replay reports the position of the newest update it saw, and live updates at or
//! before that position are skipped (they were in the replay, or were not wanted there).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures_util::Stream;
use rand::Rng;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{ApiError, AppState};
use crate::bus::{Replay, ReplayFrom};
use crate::envelope::{now_micros, Position};
use crate::hub::Subscription;
use crate::metrics::Metrics;
use crate::sse;
use crate::subscriber::SubscriberSpec;

/// The SSE event sent first when a resume id was not in history (it has no `id`, so it does
/// not move the client's `Last-Event-ID`; `onmessage` handlers do not see named events).
pub(super) const GAP_EVENT: &str = "tidings-gap";

/// Registers a subscriber, reads history from `from`, and answers with the stream.
pub(super) async fn open(
    state: &AppState,
    spec: SubscriberSpec,
    from: ReplayFrom,
) -> Result<Response, ApiError> {
    if state.is_draining() {
        return Err(ApiError::draining());
    }
    // Registered before history is read and before the response headers go out: an update
    // published as soon as the client sees the stream open reaches it.
    let subscription = state.hub().subscribe(spec);
    let replay = state.inner.bus.replay(&from).await?;
    let metrics = state.metrics().clone();
    let mut initial = VecDeque::with_capacity(replay.updates.len() + 2);
    // A first comment makes every proxy and client see the stream open at once.
    initial.push_back(Bytes::from_static(b":\n\n"));
    if let (true, ReplayFrom::After(id)) = (replay.missing, &from) {
        metrics.replay_gaps.inc();
        initial.push_back(gap_event(id.as_str(), &replay));
    }
    let mut replayed = 0u64;
    for envelope in &replay.updates {
        if subscription.spec.wants(&envelope.update) {
            initial.push_back(envelope.sse());
            replayed += 1;
        }
    }
    metrics.replayed.inc_by(replayed);
    let last_event_id = replay
        .head_id
        .as_ref()
        .map_or("earliest", |id| id.as_str())
        .to_owned();
    let config = state.config();
    let shutdown = state.inner.shutdown.clone().cancelled_owned();
    let stream = EventStream {
        initial,
        subscription,
        // Without a replay nothing can arrive twice: every live update is new to the client,
        // including one published between registration and the read of the head.
        skip_through: if from == ReplayFrom::Now {
            None
        } else {
            replay.head
        },
        heartbeat_every: config.heartbeat,
        heartbeat: Box::pin(tokio::time::sleep(config.heartbeat)),
        shutdown: Box::pin(shutdown),
        drain: config.drain,
        closing: None,
        done: false,
        connection: ConnectionGauge::open(metrics),
    };
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(value) = HeaderValue::from_bytes(last_event_id.as_bytes()) {
        headers.insert("last-event-id", value);
    }
    Ok(response)
}

fn gap_event(requested: &str, replay: &Replay) -> Bytes {
    let oldest = replay.updates.first().map(|e| e.update.id.as_str());
    let data = serde_json::json!({
        "lastEventId": requested,
        "reason": "the id is not in history (evicted or unknown); replaying everything history holds",
        "replayedFrom": oldest,
    });
    sse::encode_event(None, Some(GAP_EVENT), None, &data.to_string())
}

/// Counts an open stream in the `connections` gauge for exactly as long as it lives.
struct ConnectionGauge(Arc<Metrics>);

impl ConnectionGauge {
    fn open(metrics: Arc<Metrics>) -> Self {
        metrics.connections.inc();
        ConnectionGauge(metrics)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// The body of one SSE response. Dropping it (the client went away, or the stream ended)
/// drops the [`Subscription`], which unregisters the subscriber at once.
struct EventStream {
    /// Bytes to send before any live update: the opening comment, a gap notice, replayed
    /// history.
    initial: VecDeque<Bytes>,
    subscription: Subscription,
    /// Live updates at or before this position were covered by the replay.
    skip_through: Option<Position>,
    heartbeat_every: Duration,
    heartbeat: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    drain: Duration,
    /// Set once shutdown began: the moment this stream sends its `retry:` hint and ends.
    closing: Option<Pin<Box<Sleep>>>,
    done: bool,
    connection: ConnectionGauge,
}

impl EventStream {
    fn metrics(&self) -> &Metrics {
        &self.connection.0
    }

    fn reset_heartbeat(&mut self) {
        let deadline = Instant::now() + self.heartbeat_every;
        self.heartbeat.as_mut().reset(deadline);
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(bytes) = this.initial.pop_front() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        if this.closing.is_none() && this.shutdown.as_mut().poll(cx).is_ready() {
            // Spread the closes over most of the drain window so clients do not all
            // reconnect elsewhere at the same instant.
            let spread = this.drain.mul_f64(0.8 * rand::rng().random::<f64>());
            this.closing = Some(Box::pin(tokio::time::sleep(spread)));
        }
        if let Some(closing) = this.closing.as_mut() {
            if closing.as_mut().poll(cx).is_ready() {
                this.done = true;
                let retry_ms = 500 + rand::rng().random_range(0..2500);
                return Poll::Ready(Some(Ok(sse::encode_retry(retry_ms))));
            }
        }
        loop {
            match this.subscription.poll_recv(cx) {
                Poll::Ready(Some(envelope)) => {
                    if this.skip_through.is_some_and(|p| envelope.position <= p) {
                        continue;
                    }
                    let metrics = this.metrics();
                    metrics.updates_delivered.inc();
                    let latency_us = now_micros().saturating_sub(envelope.published_at_micros);
                    metrics.delivery_latency.observe(latency_us as f64 / 1e6);
                    this.reset_heartbeat();
                    return Poll::Ready(Some(Ok(envelope.sse())));
                }
                // The hub dropped this subscriber (its queue was full): end the stream so the
                // client reconnects and resumes from history.
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        if this.heartbeat.as_mut().poll(cx).is_ready() {
            this.reset_heartbeat();
            return Poll::Ready(Some(Ok(Bytes::from_static(sse::HEARTBEAT))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMode, AuthSettings, Authenticator};
    use crate::bus::{Bus, BusError};
    use crate::config::Config;
    use crate::envelope::Envelope;
    use crate::hub::Hub;
    use crate::selector::{Selector, SelectorCache};
    use crate::subscriber::Access;
    use crate::update::{Topic, Update, UpdateId};
    use futures_util::StreamExt;

    /// A bus on which an update is published exactly between the subscriber's registration
    /// and the read of history — the race `open` must survive.
    #[derive(Debug)]
    struct RacingBus {
        hub: Hub,
        history: Vec<Arc<Envelope>>,
    }

    fn envelope(position: u128) -> Arc<Envelope> {
        let update = Update::new(
            UpdateId::new(&format!("u{position}"), 100).unwrap(),
            vec![Topic::new("t", 100).unwrap()],
            None,
            String::new(),
            None,
            false,
        )
        .unwrap();
        Arc::new(Envelope::new(update, Position(position), 0))
    }

    #[async_trait::async_trait]
    impl Bus for RacingBus {
        fn kind(&self) -> &'static str {
            "racing"
        }
        async fn publish(&self, _: Update) -> Result<Arc<Envelope>, BusError> {
            Err(BusError::Unavailable("not used".into()))
        }
        async fn replay(&self, from: &ReplayFrom) -> Result<Replay, BusError> {
            let racing = envelope(3);
            self.hub.dispatch(&racing);
            let mut history = self.history.clone();
            history.push(racing);
            let updates = match from {
                ReplayFrom::After(id) => history
                    .iter()
                    .skip_while(|e| &e.update.id != id)
                    .skip(1)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            Ok(Replay {
                updates,
                head: Some(Position(3)),
                head_id: Some(UpdateId::new("u3", 100).unwrap()),
                missing: false,
            })
        }
        fn is_ready(&self) -> bool {
            true
        }
    }

    fn state() -> AppState {
        let hub = Hub::new(16, Arc::new(Metrics::new()));
        let bus = Arc::new(RacingBus {
            hub: hub.clone(),
            history: vec![envelope(1), envelope(2)],
        });
        let selectors = Arc::new(SelectorCache::new(10, 100));
        let settings = AuthSettings {
            mode: AuthMode::None,
            ..AuthSettings::default()
        };
        let auth = Authenticator::new(&settings, selectors.clone()).unwrap();
        AppState::new(Config::default(), hub, bus, auth, selectors)
    }

    fn spec() -> SubscriberSpec {
        SubscriberSpec {
            selectors: vec![Selector::compile("t", 100).unwrap()],
            access: Access::everything(),
            event_name: None,
            session: None,
        }
    }

    /// The ids of the first `n` events of a response body, and whether more bytes followed
    /// within 300 ms.
    async fn ids(response: Response, n: usize) -> (Vec<String>, bool) {
        let mut body = response.into_body().into_data_stream();
        let mut text = String::new();
        while text.matches("id: ").count() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("an event")
                .expect("open stream")
                .unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let ids = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(str::to_owned)
            .collect();
        let more = tokio::time::timeout(Duration::from_millis(300), body.next())
            .await
            .is_ok();
        (ids, more)
    }

    #[tokio::test]
    async fn a_fresh_subscriber_gets_an_update_published_while_it_was_being_set_up() {
        let state = state();
        let response = open(&state, spec(), ReplayFrom::Now).await.unwrap();
        assert_eq!(ids(response, 1).await, (vec!["u3".to_owned()], false));
    }

    #[tokio::test]
    async fn a_resuming_subscriber_gets_the_racing_update_once() {
        let state = state();
        let from = ReplayFrom::After(UpdateId::new("u1", 100).unwrap());
        let response = open(&state, spec(), from).await.unwrap();
        // The live copy of u3 is skipped: nothing follows the replay.
        assert_eq!(
            ids(response, 2).await,
            (vec!["u2".to_owned(), "u3".to_owned()], false)
        );
    }
}
