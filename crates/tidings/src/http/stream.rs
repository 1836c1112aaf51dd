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
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::Stream;
use rand::Rng;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::task_tracker::{TaskTracker, TaskTrackerToken};

use super::ConnectionInfo;
use super::{request, ApiError, AppState};
use crate::admission::Permit;
use crate::bus::{Replay, ReplayFrom};
use crate::envelope::{now_micros, Envelope, Position};
use crate::hub::Subscription;
use crate::metrics::Metrics;
use crate::sse;
use crate::subscriber::SubscriberSpec;

/// The SSE event sent first when a resume id was not in history (it has no `id`, so it does
/// not move the client's `Last-Event-ID`; `onmessage` handlers do not see named events).
pub(super) const GAP_EVENT: &str = "tidings-gap";

/// Middleware of the stream endpoints: a browser's `EventSource` gives up for good on any
/// answer but `200`, so a stream request refused for a passing reason (`503`: the instance
/// drains or is full, the bus is unavailable, the application's authorization callback could
/// not decide) is answered to a client that asks for `text/event-stream` as a `200` stream
/// holding only a comment that names the reason and a `retry:` hint: the client comes back
/// after it, through the load balancer, perhaps to another instance. Other clients get the
/// `503` with `Retry-After`.
pub(super) async fn defer_passing_refusals(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let stream = request.method() == Method::GET
        && super::STREAM_PATHS.contains(&request.uri().path())
        && wants_event_stream(request.headers());
    let response = next.run(request).await;
    if !stream || response.status() != StatusCode::SERVICE_UNAVAILABLE {
        return response;
    }
    match response.extensions().get::<ApiError>() {
        Some(refusal) => {
            state.metrics().streams_deferred.inc();
            come_back_later(refusal)
        }
        None => response,
    }
}

/// True when the request's `Accept` names `text/event-stream` (an `EventSource` always does).
fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The `200` answer to a stream request refused for a passing reason: a comment naming it,
/// and a `retry:` hint of about the `Retry-After` the refusal asked for (draining: well under
/// a second, as the load balancer finds another instance), spread so that the clients turned
/// away together do not come back together.
fn come_back_later(refusal: &ApiError) -> Response {
    let millis = match refusal.error {
        "draining" => 250 + rand::rng().random_range(0..750),
        _ => {
            let base = refusal.retry_after_secs.unwrap_or(2) * 1000;
            base / 2 + rand::rng().random_range(0..base.max(1))
        }
    };
    let body = format!(
        ": {}: {}\n{}",
        refusal.error,
        refusal.detail.replace(['\r', '\n'], " "),
        std::str::from_utf8(&sse::encode_retry(millis)).unwrap_or_default()
    );
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Admits a stream on `connection`, registers its subscriber, reads history from `from`, and
/// answers with the stream.
pub(super) async fn open(
    state: &AppState,
    connection: Option<&ConnectionInfo>,
    headers: &HeaderMap,
    spec: SubscriberSpec,
    from: ReplayFrom,
) -> Result<Response, ApiError> {
    if state.is_draining() {
        return Err(ApiError::draining());
    }
    let client = request::client_address(state, connection, headers);
    let permit = state.admission().admit(client, spec.session.as_ref())?;
    // A fresh stream starts at the newest update published *before* its subscriber is
    // registered: every later one reaches it live, or from history when it resumes. (Read
    // after registration, the head could name an update still on its way to this instance,
    // and a client that resumed from it would miss that update.)
    let fresh_head = match from {
        ReplayFrom::Now => Some(state.bus().replay(&ReplayFrom::Now, None).await?.head_id),
        _ => None,
    };
    // Registered before history is read and before the response headers go out: an update
    // published as soon as the client sees the stream open reaches it. A slow consumer's
    // connection is closed by the hub itself.
    let subscription = match connection {
        Some(connection) => state.hub().subscribe_closing(spec, connection.closer()),
        None => state.hub().subscribe(spec),
    };
    state.bus().listening().await?;
    let replay = match fresh_head {
        Some(head_id) => Replay {
            head_id,
            ..Replay::default()
        },
        None => {
            let topics = exact_topics(&subscription.spec);
            state.bus().replay(&from, topics.as_deref()).await?
        }
    };
    let metrics = state.metrics().clone();
    let mut initial = VecDeque::with_capacity(replay.updates.len() + 2);
    // A first comment makes every proxy and client see the stream open at once.
    initial.push_back(Bytes::from_static(b":\n\n"));
    let wanted: Vec<&Arc<Envelope>> = replay
        .updates
        .iter()
        .filter(|e| subscription.spec.wants(&e.update))
        .collect();
    if let (true, ReplayFrom::After(id)) = (replay.missing, &from) {
        metrics.replay_gaps.inc();
        let first = wanted.first().map(|e| e.update.id.as_str());
        initial.push_back(gap_event(id.as_str(), first, replay.resumed_at.is_some()));
    }
    initial.extend(wanted.iter().map(|e| e.sse()));
    metrics.replayed.inc_by(wanted.len() as u64);
    let last_event_id = replay
        .head_id
        .as_ref()
        .map_or("earliest", |id| id.as_str())
        .to_owned();
    // The client's last event id moves to where this stream starts, by an `id:` line without
    // data (an `EventSource` stores it without firing an event): a client whose instance dies
    // before its first event still resumes from here, not from nothing.
    let starts_at = match (&from, replay.updates.last()) {
        (ReplayFrom::Now, _) => Some(last_event_id.as_str()),
        // Replayed updates it may not see still moved it on.
        (_, Some(last)) if wanted.last().map(|e| e.position) != Some(last.position) => {
            Some(last.update.id.as_str())
        }
        _ => None,
    };
    if let Some(id) = starts_at {
        initial.push_back(sse::encode_id(id));
    }
    let config = state.config();
    let shutdown = state.shutdown().clone().cancelled_owned();
    let expiry = match subscription.spec.expires {
        Some(at) if config.close_expired_streams => {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Some(Box::pin(tokio::time::sleep(left)))
        }
        _ => None,
    };
    let stream = EventStream {
        initial,
        subscription,
        // Live updates up to the last replayed one were in the replay (see `Replay::updates`),
        // and those up to the resume point the client had; any later one — including one
        // published between registration and the read of history — is new to the client.
        skip_through: replay
            .updates
            .last()
            .map(|e| e.position)
            .max(replay.resumed_at),
        heartbeat_every: config.heartbeat,
        heartbeat: Box::pin(tokio::time::sleep(config.heartbeat)),
        shutdown: Box::pin(shutdown),
        drain: config.drain,
        closing: None,
        closing_since: None,
        expiry,
        done: false,
        connection: ConnectionGauge::open(metrics, state.streams()),
        _permit: permit,
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

/// The topics of a subscriber whose selectors are all exact topics (`None` when one is wide):
/// its resume needs to read only those.
fn exact_topics(spec: &SubscriberSpec) -> Option<Vec<Arc<str>>> {
    spec.selectors
        .iter()
        .map(|s| match s {
            crate::selector::Selector::Exact(topic) => Some(topic.clone()),
            _ => None,
        })
        .collect()
}

/// The notice sent before the replay when `requested` was not in history — or was, but
/// updates after it were lost (`found`: a broker failover lost them); `first` is the id of the
/// first replayed update this subscriber may see (never another subscriber's).
fn gap_event(requested: &str, first: Option<&str>, found: bool) -> Bytes {
    let reason = match found {
        false => "the id is not in history (evicted or unknown); replaying everything history holds",
        true => "updates after the id were lost in a failover of the broker; replaying what history holds after it",
    };
    let data = serde_json::json!({
        "lastEventId": requested,
        "reason": reason,
        "replayedFrom": first,
    });
    sse::encode_event(None, Some(GAP_EVENT), None, &data.to_string())
}

/// Counts an open stream, for exactly as long as it lives, in the `connections` gauge and in
/// the instance's stream tracker (which the drain waits on).
struct ConnectionGauge {
    metrics: Arc<Metrics>,
    _tracked: TaskTrackerToken,
}

impl ConnectionGauge {
    fn open(metrics: Arc<Metrics>, streams: &TaskTracker) -> Self {
        metrics.connections.inc();
        ConnectionGauge {
            metrics,
            _tracked: streams.token(),
        }
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.metrics.connections.dec();
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
    /// The moment the subscriber's token expires (with `close-expired-streams`): the stream
    /// then ends the same way, so the client reconnects with a fresh token.
    expiry: Option<Pin<Box<Sleep>>>,
    /// When the moment to close came (microseconds since the epoch): updates published after
    /// it are left to the client's resumption, so a busy topic cannot hold the stream open.
    closing_since: Option<u64>,
    done: bool,
    connection: ConnectionGauge,
    /// This stream's place in the stream limits, given back when it ends.
    _permit: Permit,
}

impl EventStream {
    fn metrics(&self) -> &Metrics {
        &self.connection.metrics
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
        // Once this stream's moment to close has come, what was already published is still
        // sent, then the `retry:` hint, then the end.
        let expired = this
            .expiry
            .as_mut()
            .is_some_and(|expiry| expiry.as_mut().poll(cx).is_ready());
        let closing_now = expired
            || this
                .closing
                .as_mut()
                .is_some_and(|closing| closing.as_mut().poll(cx).is_ready());
        if closing_now && this.closing_since.is_none() {
            this.closing_since = Some(now_micros());
        }
        loop {
            match this.subscription.poll_recv(cx) {
                Poll::Ready(Some(envelope)) => {
                    if this.skip_through.is_some_and(|p| envelope.position <= p) {
                        continue;
                    }
                    if this
                        .closing_since
                        .is_some_and(|since| envelope.published_at_micros > since)
                    {
                        break;
                    }
                    let metrics = this.metrics();
                    metrics.updates_delivered.inc();
                    let latency_us = now_micros().saturating_sub(envelope.published_at_micros);
                    metrics.delivery_latency.observe_micros(latency_us);
                    this.reset_heartbeat();
                    return Poll::Ready(Some(Ok(envelope.sse())));
                }
                // The hub dropped this subscriber (its queue was full): end the stream so the
                // client reconnects and resumes from history.
                Poll::Ready(None) if !closing_now => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if closing_now {
            this.done = true;
            if expired {
                this.metrics().streams_expired.inc();
            }
            let retry_ms = 500 + rand::rng().random_range(0..2500);
            return Poll::Ready(Some(Ok(sse::encode_retry(retry_ms))));
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
    use crate::bus::{Bus, BusError, Cause, Replay};
    use crate::config::Config;
    use crate::hub::Hub;
    use crate::selector::{Selector, SelectorCache};
    use crate::subscriber::Access;
    use crate::update::{Topic, Update, UpdateId};
    use futures_util::StreamExt;

    /// A bus on which an update (u3) is published exactly between the subscriber's
    /// registration and the read of history — the race `open` must survive. u1 and u2 were
    /// published before.
    #[derive(Debug)]
    struct RacingBus {
        hub: Hub,
        /// False: the bus keeps no history (`history-size = 0`), only the newest id.
        keeps_history: bool,
        /// Set once u3 was published.
        raced: std::sync::atomic::AtomicBool,
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
        async fn publish(&self, _: Update) -> Result<crate::bus::Published, BusError> {
            Err(BusError::Unavailable(Cause::new("not used")))
        }
        async fn listening(&self) -> Result<(), BusError> {
            self.raced.store(true, std::sync::atomic::Ordering::SeqCst);
            self.hub.dispatch(&envelope(3));
            Ok(())
        }
        async fn replay(
            &self,
            from: &ReplayFrom,
            _: Option<&[Arc<str>]>,
        ) -> Result<Replay, BusError> {
            let raced = self.raced.load(std::sync::atomic::Ordering::SeqCst);
            let published = if raced { 3 } else { 2 };
            let history: Vec<Arc<Envelope>> = match self.keeps_history {
                true => (1..=published).map(envelope).collect(),
                false => Vec::new(),
            };
            let updates = match from {
                ReplayFrom::After(id) => history
                    .iter()
                    .skip_while(|e| &e.update.id != id)
                    .skip(1)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            let resumed_at = match from {
                ReplayFrom::After(id) => history
                    .iter()
                    .find(|e| &e.update.id == id)
                    .map(|e| e.position),
                _ => None,
            };
            Ok(Replay {
                updates,
                resumed_at,
                head_id: Some(UpdateId::new(&format!("u{published}"), 100).unwrap()),
                missing: false,
            })
        }
        fn state(&self) -> crate::bus::ConnectionState {
            crate::bus::ConnectionState::Connected
        }

        fn registry(&self) -> Option<Arc<dyn crate::bus::Registry>> {
            None
        }
    }

    fn state(keeps_history: bool) -> AppState {
        state_with(keeps_history, Config::default())
    }

    fn state_with(keeps_history: bool, config: Config) -> AppState {
        let hub = Hub::new(16, Arc::new(Metrics::new()));
        let bus = Arc::new(RacingBus {
            hub: hub.clone(),
            keeps_history,
            raced: Default::default(),
        });
        let selectors = Arc::new(SelectorCache::new(10, 100));
        let settings = AuthSettings {
            mode: AuthMode::None,
            ..AuthSettings::default()
        };
        let auth = Authenticator::new(&settings, selectors.clone(), hub.metrics().clone()).unwrap();
        AppState::new(config, hub, bus, auth, selectors)
    }

    fn spec() -> SubscriberSpec {
        spec_for("t")
    }

    fn spec_for(selector: &str) -> SubscriberSpec {
        SubscriberSpec {
            label: crate::subscriber::SubscriberLabel::new(None),
            selectors: vec![Selector::compile(selector, 100).unwrap()],
            access: Access::everything(),
            event_names: Vec::new(),
            session: None,
            expires: None,
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
    async fn a_fresh_subscriber_starts_at_the_head_before_it_and_gets_an_update_published_while_it_was_being_set_up(
    ) {
        let state = state(true);
        let response = open(&state, None, &HeaderMap::new(), spec(), ReplayFrom::Now)
            .await
            .unwrap();
        let mut body = response.into_body().into_data_stream();
        let mut text = String::new();
        while !text.ends_with("data: \n\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("an event")
                .expect("open stream")
                .unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        // The head read before registration (u2), as an id without data, then u3 live.
        assert_eq!(text, ":\n\nid: u2\n\nid: u3\ndata: \n\n");
    }

    #[tokio::test]
    async fn a_resume_through_updates_it_may_not_see_moves_its_last_id_past_them() {
        let state = state(true);
        let from = ReplayFrom::After(UpdateId::new("u1", 100).unwrap());
        let response = open(&state, None, &HeaderMap::new(), spec_for("x"), from)
            .await
            .unwrap();
        assert_eq!(ids(response, 1).await, (vec!["u3".to_owned()], false));
    }

    #[tokio::test]
    async fn a_resuming_subscriber_gets_the_racing_update_once() {
        let state = state(true);
        let from = ReplayFrom::After(UpdateId::new("u1", 100).unwrap());
        let response = open(&state, None, &HeaderMap::new(), spec(), from)
            .await
            .unwrap();
        // The live copy of u3 is skipped: nothing follows the replay.
        assert_eq!(
            ids(response, 2).await,
            (vec!["u2".to_owned(), "u3".to_owned()], false)
        );
    }

    #[tokio::test]
    async fn resuming_from_an_update_the_instance_delivers_late_does_not_repeat_it() {
        // The instance lagged: u3 reaches its hub only after the subscriber registered, and
        // the client resumes from u3 itself.
        let state = state(true);
        let from = ReplayFrom::After(UpdateId::new("u3", 100).unwrap());
        let response = open(&state, None, &HeaderMap::new(), spec(), from)
            .await
            .unwrap();
        let mut body = response.into_body().into_data_stream();
        let mut text = String::new();
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_millis(300), body.next()).await
        {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(text, ":\n\n", "nothing but the opening comment");
    }

    #[tokio::test]
    async fn without_history_a_resuming_subscriber_still_gets_the_racing_update() {
        let state = state(false);
        let from = ReplayFrom::After(UpdateId::new("u1", 100).unwrap());
        let response = open(&state, None, &HeaderMap::new(), spec(), from)
            .await
            .unwrap();
        assert_eq!(ids(response, 1).await, (vec!["u3".to_owned()], false));
    }

    #[tokio::test]
    async fn a_passing_refusal_is_a_retry_hint_for_an_event_source_and_a_503_for_others() {
        use tower::ServiceExt;
        let state = state(true);
        state.begin_shutdown();
        let ask = |accept: Option<&'static str>, path: &str| {
            let mut request = axum::http::Request::get(path);
            if let Some(accept) = accept {
                request = request.header(header::ACCEPT, accept);
            }
            let router = super::super::router(state.clone());
            let request = request.body(Body::empty()).unwrap();
            async move { router.oneshot(request).await.unwrap() }
        };
        let browser = Some("text/html, Text/Event-Stream;q=0.9");
        for path in [
            "/.well-known/mercure?topic=t",
            "/sse/event-stream?sessionId=s",
        ] {
            let response = ask(browser, path).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/event-stream"
            );
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            let text = std::str::from_utf8(&body).unwrap();
            let retry: u64 = text
                .strip_prefix(": draining: ")
                .and_then(|t| t.split_once("\nretry: "))
                .and_then(|(_, r)| r.strip_suffix("\n\n"))
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("a comment, then a retry hint: {text:?}"));
            assert!((250..1000).contains(&retry), "{retry}");
        }
        assert_eq!(state.metrics().streams_deferred.get(), 2);
        // Other clients, and other endpoints, get the 503 itself.
        let refused = ask(None, "/.well-known/mercure?topic=t").await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(state.metrics().streams_deferred.get(), 2);
    }

    #[tokio::test]
    async fn on_shutdown_queued_updates_are_sent_before_the_retry_hint_and_the_end() {
        let config = Config {
            drain: Duration::ZERO,
            ..Config::default()
        };
        let state = state_with(true, config);
        let response = open(&state, None, &HeaderMap::new(), spec(), ReplayFrom::Now)
            .await
            .unwrap();
        state.hub().dispatch(&envelope(4));
        state.hub().dispatch(&envelope(5));
        state.begin_shutdown();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20);
        let bytes = tokio::time::timeout(Duration::from_secs(5), body)
            .await
            .expect("the stream ends")
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let ids: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .collect();
        assert_eq!(ids, ["u2", "u3", "u4", "u5"]);
        assert!(
            text.ends_with("\n\n") && text.contains("retry: "),
            "{text:?}"
        );
        assert!(
            text.rfind("retry: ") > text.rfind("id: u5"),
            "the hint comes last"
        );
    }
}
