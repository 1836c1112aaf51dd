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
use crate::hub::{Farewell, Subscription};
use crate::metrics::Metrics;
use crate::sse;
use crate::subscriber::SubscriberSpec;
use crate::telemetry;

/// The SSE event sent first when a resume id was not in history (it has no `id`, so it does
/// not move the client's `Last-Event-ID`; `onmessage` handlers do not see named events).
pub(super) const GAP_EVENT: &str = "tidings-gap";
/// The event that ends a stream an operator disconnected: why, and whether to come back.
pub(super) const DISCONNECT_EVENT: &str = "tidings-disconnect";

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

/// Admits a new stream from the client of `connection` (its address: the peer, or what a
/// trusted proxy says), first of all — before its caller is authenticated and its selectors
/// compiled: a client at its cap, or an instance draining, costs neither.
pub(super) fn admit(
    state: &AppState,
    connection: Option<&ConnectionInfo>,
    headers: &HeaderMap,
) -> Result<Permit, ApiError> {
    if state.is_draining() {
        return Err(ApiError::draining());
    }
    let client = request::client_address(state, connection, headers);
    Ok(state.admission().admit(client)?)
}

/// What a stream request asked for besides its selectors and resume point.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Asked {
    /// `rewind=N`: a fresh stream first gets the last `N` updates of each of its exact topics.
    pub(super) rewind: Option<usize>,
    /// `withSelectors=1`: each update's event names the stream's selectors it matched.
    pub(super) with_selectors: bool,
}

/// Registers an admitted stream's subscriber on `connection`, reads history from `from`, and
/// answers with the stream, as `asked`.
pub(super) async fn open(
    state: &AppState,
    connection: Option<&ConnectionInfo>,
    permit: Permit,
    spec: SubscriberSpec,
    from: ReplayFrom,
    asked: Asked,
) -> Result<Response, ApiError> {
    let Asked {
        rewind,
        with_selectors,
    } = asked;
    // A resume is a resume: a reconnecting `EventSource` sends `Last-Event-ID` to the same URL.
    let rewind = rewind.filter(|_| matches!(from, ReplayFrom::Now));
    // A rewind reads what the stream could get live, its exact topics: one with a template,
    // a URL pattern or `*` would need the whole history read, and the updates of its wide
    // selectors published while it opens told apart from the past (not done: refused).
    let topics = exact_topics(&spec);
    if rewind.is_some() && topics.is_none() {
        return Err(ApiError::bad_request(
            "invalid_rewind",
            "rewind takes the last updates of exact topics: it needs every selector of the stream to be an exact topic (no template, URL pattern or *)",
        ));
    }
    // A fresh stream starts at the newest update published *before* its subscriber is
    // registered: every later one reaches it live, or from history when it resumes. (Read
    // after registration, the head could name an update still on its way to this instance,
    // and a client that resumed from it would miss that update.) One that rewinds starts where
    // its read of history ends, after registration (that read covers every update it could
    // get live: its exact topics): what it is sent of that history is the past, and every
    // later update reaches it live. With nothing to rewind, it starts as any fresh stream.
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
    let spec = &subscription.spec;
    // (Every selector exact: an update it may see is on one of its topics, and rewound.)
    let rewound = match rewind {
        Some(_) => {
            let replay = state
                .bus()
                .replay(&ReplayFrom::Earliest, topics.as_deref())
                .await?;
            let any = replay.updates.iter().any(|e| spec.wants(&e.update));
            any.then_some(replay)
        }
        None => None,
    };
    let replay = match (rewound, fresh_head) {
        (Some(replay), _) => replay,
        (None, Some(head_id)) => Replay {
            head_id,
            ..Replay::default()
        },
        (None, None) => state.bus().replay(&from, topics.as_deref()).await?,
    };
    let metrics = state.metrics().clone();
    let wanted: Vec<&Arc<Envelope>> = replay
        .updates
        .iter()
        .filter(|e| spec.wants(&e.update))
        .collect();
    let wanted = match (rewind, &topics) {
        (Some(n), Some(topics)) => last_of_each_topic(wanted, topics, n),
        _ => wanted,
    };
    // What a stream holds is bounded by `subscriber-queue-bytes`, its replay too (review M4:
    // slow readers of `lastEventID=earliest` each held a copy of history): a longer replay is
    // cut after what fits (one update at least), the stream ends after it with a `retry:`
    // hint, and the client resumes from the last id it got for the next page.
    let (page, paged) = first_page(&wanted, state.config().subscriber_queue.bytes);
    let mut initial = VecDeque::with_capacity(page.len() + 2);
    // A first comment makes every proxy and client see the stream open at once.
    initial.push_back(Bytes::from_static(b":\n\n"));
    if let (true, ReplayFrom::After(id)) = (replay.missing, &from) {
        metrics.replay_gaps.inc();
        let first = wanted.first().map(|e| e.update.id.as_str());
        initial.push_back(gap_event(id.as_str(), first, replay.resumed_at.is_some()));
    }
    initial.extend(page.iter().map(|e| encode(e, spec, with_selectors)));
    metrics.replayed.inc_by(page.len() as u64);
    if paged {
        metrics.replays_paged.inc();
    }
    telemetry::note("tidings.stream.resumed", !matches!(from, ReplayFrom::Now));
    telemetry::note("tidings.stream.replayed", page.len() as i64);
    telemetry::note(
        "tidings.stream.gap",
        replay.missing && matches!(from, ReplayFrom::After(_)),
    );
    let last_event_id = replay
        .head_id
        .as_ref()
        .map_or("earliest", |id| id.as_str())
        .to_owned();
    // The client's last event id moves to where this stream starts, by an `id:` line without
    // data (an `EventSource` stores it without firing an event): a client whose instance dies
    // before its first event still resumes from here, not from nothing.
    let starts_at = match (&from, replay.updates.last()) {
        // The next page starts after the last update of this one, whose id the client has
        // (a rewind's too: its rest comes as a resume, everything after that update).
        _ if paged => None,
        (ReplayFrom::Now, _) => Some(last_event_id.as_str()),
        // Replayed updates it may not see still moved it on.
        (_, Some(last)) if wanted.last().map(|e| e.position) != Some(last.position) => {
            Some(last.update.id.as_str())
        }
        _ => None,
    };
    // (Not again when the last event sent carries it: a rewind that ends at the head.)
    let sent_last = page.last().map(|e| e.update.id.as_str());
    if let Some(id) = starts_at.filter(|id| Some(*id) != sent_last) {
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
        paged,
        with_selectors,
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
    // Mercure 1.0: to a resume, the id of the event before the first one sent (the one
    // resumed from, when history held it), or `earliest`.
    let before_first = match (&from, replay.resumed_at) {
        (ReplayFrom::After(id), Some(_)) => Some(id.as_str()),
        (ReplayFrom::After(_) | ReplayFrom::Earliest, _) => Some("earliest"),
        (ReplayFrom::Now, _) => None,
    };
    if let Some(value) = before_first.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
        headers.insert("mercure-last-event-id", value);
    }
    Ok(response)
}

/// How soon a client comes back for the next page of a replay cut at its byte budget.
const NEXT_PAGE_RETRY_MS: u64 = 250;

/// The first updates of `wanted` whose events fit in `budget` bytes (one at least, however
/// large), and whether some were left for a later page.
fn first_page<'a>(
    wanted: &'a [&'a Arc<Envelope>],
    budget: usize,
) -> (&'a [&'a Arc<Envelope>], bool) {
    let mut bytes = 0usize;
    for (i, e) in wanted.iter().enumerate() {
        bytes = bytes.saturating_add(e.sse_len());
        if i > 0 && bytes > budget {
            return (&wanted[..i], true);
        }
    }
    (wanted, false)
}

/// The last `n` of `wanted` (oldest first) on each of `topics`, in their order: an update on
/// two of them counts for both.
fn last_of_each_topic<'a>(
    wanted: Vec<&'a Arc<Envelope>>,
    topics: &[Arc<str>],
    n: usize,
) -> Vec<&'a Arc<Envelope>> {
    let mut counts: std::collections::HashMap<&str, usize> =
        topics.iter().map(|t| (&**t, 0)).collect();
    let mut kept: Vec<&Arc<Envelope>> = Vec::new();
    for envelope in wanted.into_iter().rev() {
        let mut keep = false;
        for topic in &envelope.update.topics {
            if let Some(count) = counts.get_mut(topic.as_str()) {
                keep |= *count < n;
                *count += 1;
            }
        }
        if keep {
            kept.push(envelope);
        }
    }
    kept.reverse();
    kept
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

/// The end of a stream an operator disconnected: a [`DISCONNECT_EVENT`] saying why and
/// whether to come back, then — to come back — a `retry:` hint (jittered, as at shutdown), so
/// that the client reconnects, resumes and is authorized again. To stay away there is no hint:
/// a client that reconnects anyway is authorized again, and the application decides.
fn farewell_events(farewell: &Farewell) -> Bytes {
    let data = serde_json::json!({
        "reconnect": farewell.reconnect,
        "reason": farewell.reason,
    });
    let event = sse::encode_event(None, Some(DISCONNECT_EVENT), None, &data.to_string());
    if !farewell.reconnect {
        return event;
    }
    let retry = sse::encode_retry(retry_hint_ms());
    let mut both = bytes::BytesMut::with_capacity(event.len() + retry.len());
    both.extend_from_slice(&event);
    both.extend_from_slice(&retry);
    both.freeze()
}

/// A `retry:` hint between 0.5 and 3 s, so that clients sent away together do not all come
/// back at the same moment.
fn retry_hint_ms() -> u64 {
    500 + rand::rng().random_range(0..2500)
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
        metrics.streams_opened.inc();
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
    /// The replay was cut at the byte budget: the stream ends once `initial` is sent, and the
    /// client resumes for the rest.
    paged: bool,
    /// Each event names the selectors it matched (`withSelectors`).
    with_selectors: bool,
    done: bool,
    connection: ConnectionGauge,
    /// This stream's place in the stream limits, given back when it ends.
    _permit: Permit,
}

/// An update's event as this stream sends it: the bytes every subscriber shares, or — with
/// `withSelectors` — a copy led by a `selector:` field for each of the stream's selectors that
/// matched one of its topics (an unknown field to an `EventSource`, which ignores it).
fn encode(envelope: &Envelope, spec: &SubscriberSpec, with_selectors: bool) -> Bytes {
    let shared = envelope.sse();
    if !with_selectors {
        return shared;
    }
    let topics = &envelope.update.topics;
    let mut event = Vec::with_capacity(shared.len() + 64);
    for selector in spec.selectors.iter().filter(|s| s.matches_any(topics)) {
        // (A selector is one line by construction; never let one end a field early.)
        let source = selector.source();
        if !source.contains(['\r', '\n']) {
            event.extend_from_slice(b"selector: ");
            event.extend_from_slice(source.as_bytes());
            event.push(b'\n');
        }
    }
    event.extend_from_slice(&shared);
    Bytes::from(event)
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
        if this.paged {
            this.done = true;
            return Poll::Ready(Some(Ok(sse::encode_retry(NEXT_PAGE_RETRY_MS))));
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
                    let event = encode(&envelope, &this.subscription.spec, this.with_selectors);
                    return Poll::Ready(Some(Ok(event)));
                }
                // An operator disconnected it: what was queued is sent, then its farewell.
                Poll::Ready(None) if this.subscription.farewell().is_some() => {
                    this.done = true;
                    let farewell = this.subscription.farewell().map(farewell_events);
                    return Poll::Ready(farewell.map(Ok));
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
            return Poll::Ready(Some(Ok(sse::encode_retry(retry_hint_ms()))));
        }
        if this.heartbeat.as_mut().poll(cx).is_ready() {
            this.reset_heartbeat();
            return Poll::Ready(Some(Ok(Bytes::from_static(sse::HEARTBEAT))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
