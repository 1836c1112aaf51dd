//! Subscribing: a stream of events that reconnects by itself and resumes where it stopped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use crate::sse::Decoder;
use crate::{Error, Hub};

/// What to subscribe to: Mercure topic selectors, or a session's event name.
#[derive(Debug, Clone)]
pub struct Subscription {
    path: &'static str,
    query: Vec<(&'static str, String)>,
    last_event_id: Option<String>,
    first_retry: Duration,
    max_backoff: Duration,
    on_open: Option<OnOpen>,
}

/// What [`Subscription::on_open`] calls.
#[derive(Clone)]
struct OnOpen(Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnOpen")
    }
}

impl Subscription {
    /// The updates of these topic selectors (exact topics, `*`, URI templates), on
    /// `/.well-known/mercure`.
    pub fn topics<I, S>(selectors: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::on(
            "/.well-known/mercure",
            selectors.into_iter().map(|s| ("topic", s.into())).collect(),
        )
    }

    /// The events named `event_name` of the caller's session, on Tidings' session API
    /// (`/sse/event-stream`). The session comes from the token; see
    /// [`Subscription::session_id`] for a hub without tokens.
    pub fn session(event_name: impl Into<String>) -> Self {
        Self::session_events([event_name.into()])
    }

    /// The events of the caller's session with any of `event_names` — or, when it is empty,
    /// every event of the session — on one connection. Each event keeps its name
    /// ([`Event::event_type`]).
    pub fn session_events<I, S>(event_names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::on(
            "/sse/event-stream",
            event_names
                .into_iter()
                .map(|n| ("eventName", n.into()))
                .collect(),
        )
    }

    fn on(path: &'static str, query: Vec<(&'static str, String)>) -> Self {
        Subscription {
            path,
            query,
            last_event_id: None,
            first_retry: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            on_open: None,
        }
    }

    /// Names the session in the query (a hub run with `--auth none` takes it from there).
    #[must_use]
    pub fn session_id(mut self, session_id: impl Into<String>) -> Self {
        self.query.push(("sessionId", session_id.into()));
        self
    }

    /// Starts after this id (`earliest` for everything the hub's history holds).
    #[must_use]
    pub fn last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = Some(id.into());
        self
    }

    /// The wait before reconnecting until the hub sends a `retry:` hint (default 1 s).
    #[must_use]
    pub fn retry(mut self, wait: Duration) -> Self {
        self.first_retry = wait;
        self
    }

    /// The longest wait between two attempts while the hub is unreachable (default 30 s).
    #[must_use]
    pub fn max_backoff(mut self, wait: Duration) -> Self {
        self.max_backoff = wait;
        self
    }

    /// Calls `opened` each time the hub accepts a connection of the stream (the first, and
    /// each reconnection), as a browser's `EventSource` fires `open`: a command line can say
    /// that it is now waiting for updates, where the events alone would leave it silent.
    #[must_use]
    pub fn on_open(mut self, opened: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_open = Some(OnOpen(Arc::new(opened)));
        self
    }
}

/// One event received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The stream's last event id, as a browser's `lastEventId`: the update's id, or the one
    /// before for an event without (such as Tidings' `tidings-gap` notice); empty when none
    /// was set yet.
    pub id: String,
    /// The event name: `message` unless the update has a type.
    pub event_type: String,
    /// The payload.
    pub data: String,
}

/// The stream [`Hub::subscribe`] returns.
///
/// It yields each event received, in order. When the connection drops it waits — the hub's
/// latest `retry:` hint, doubled after each failed attempt up to the maximum backoff, or longer
/// when a refusal's `Retry-After` asks for more — and
/// reconnects with `Last-Event-ID` set to the last id received. Failures it will retry are
/// yielded as `Err` items for the caller to report ([`Error::is_permanent`] is false) and the
/// stream goes on; a permanent refusal (bad selectors, missing or wrong token) is its last
/// item.
pub type Events = Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>;

type Source = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;

/// The state of one subscription across its connections.
struct Follower {
    hub: Hub,
    url: reqwest::Url,
    last_id: Option<String>,
    retry: Duration,
    max_backoff: Duration,
    /// Failed attempts since the last successful connection.
    failures: u32,
    /// The wait the hub asked for with its last refusal (`Retry-After`).
    asked_wait: Option<Duration>,
    /// The open connection and its decoder.
    source: Option<(Source, Decoder)>,
    on_open: Option<OnOpen>,
    /// Events decoded but not yet handed over.
    ready: VecDeque<Event>,
    /// Whether a wait is due before the next attempt (not before the first one).
    wait: bool,
    done: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<Event, Error>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let Some((source, decoder)) = &mut self.source else {
                if self.wait {
                    let wait = self
                        .backoff()
                        .max(self.asked_wait.take().unwrap_or_default());
                    tokio::time::sleep(wait).await;
                }
                self.wait = true;
                match connect(&self.hub, &self.url, self.last_id.as_deref()).await {
                    Ok(source) => {
                        self.failures = 0;
                        self.source = Some((source, Decoder::new()));
                        if let Some(OnOpen(opened)) = &self.on_open {
                            opened();
                        }
                        continue;
                    }
                    Err(e) => {
                        self.failures += 1;
                        self.asked_wait = e.retry_after();
                        self.done = e.is_permanent();
                        return Some(Err(e));
                    }
                }
            };
            match source.next().await {
                Some(Ok(chunk)) => {
                    self.ready.extend(decoder.feed(&chunk));
                    if let Some(retry) = decoder.retry() {
                        self.retry = retry;
                    }
                    if !decoder.last_event_id().is_empty() {
                        self.last_id = Some(decoder.last_event_id().to_owned());
                    }
                }
                // The connection ended or broke: reconnect after the retry delay.
                Some(Err(_)) | None => self.source = None,
            }
        }
    }

    fn backoff(&self) -> Duration {
        self.retry
            .saturating_mul(2u32.saturating_pow(self.failures.min(16)))
            .min(self.max_backoff.max(self.retry))
    }
}

/// Opens one connection (taking only what it needs: the follower's source is not `Sync`).
async fn connect(hub: &Hub, url: &reqwest::Url, last_id: Option<&str>) -> Result<Source, Error> {
    let mut request = hub
        .http
        .get(url.clone())
        .header("accept", "text/event-stream");
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let response = hub
        .authorized(request)
        .send()
        .await
        .map_err(Error::Transport)?;
    if !response.status().is_success() {
        return Err(Error::refused(response).await);
    }
    Ok(Box::pin(response.bytes_stream()))
}

impl Hub {
    /// Subscribes; see [`Events`] for how the stream behaves. Dropping the stream closes the
    /// connection.
    ///
    /// Nothing is sent until the stream is first polled: an update published before then is
    /// received only if the subscription starts from history
    /// ([`Subscription::last_event_id`] with a known id, or `earliest`).
    pub fn subscribe(&self, subscription: Subscription) -> Events {
        let mut url = self.url(subscription.path);
        {
            let mut query = url.query_pairs_mut();
            for (name, value) in &subscription.query {
                query.append_pair(name, value);
            }
        }
        let follower = Follower {
            hub: self.clone(),
            url,
            last_id: subscription.last_event_id,
            retry: subscription.first_retry,
            max_backoff: subscription.max_backoff,
            failures: 0,
            asked_wait: None,
            source: None,
            on_open: subscription.on_open,
            ready: VecDeque::new(),
            wait: false,
            done: false,
        };
        Box::pin(futures_util::stream::unfold(
            follower,
            |mut follower| async move {
                let item = follower.next().await?;
                Some((item, follower))
            },
        ))
    }
}
