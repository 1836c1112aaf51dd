//! The authorization callback (`--auth-url`): for a new stream without a valid token, the hub
//! asks the application who the caller is and what it may see, the way Nchan's
//! `nchan_authorize_request` and Centrifugo's connect proxy do, so that an application with a
//! session cookie needs to mint no JWT for browsers.
//!
//! (Over 600 lines with its unit tests: the question, the bounded calls and the cache share
//! one `Callback`; the tests are the next seam to cut.)
//!
//! The contract (documented in `docs/authorization.md`): the hub `POST`s a small JSON body
//! ([`StreamRequest`]) with the client's `Cookie`, `Authorization`, `Origin` and
//! forwarded-address headers ([`FORWARDED`]); the application answers `200` with an
//! [`Answer`], or `401` / `403` (passed on to the client). Anything else — no answer within the
//! timeout, a refused connection, another status, a redirect, a body that is not an answer or
//! larger than [`MAX_ANSWER_BYTES`] — is the application failing, a passing condition that the
//! caller answers with a retry, and is logged (at most once per second) and counted.
//!
//! Decisions (granted or refused) are cached for `--auth-cache-ttl`, and never past the
//! answer's own `expiresIn`, per SHA-256 of everything the application was told (the forwarded
//! headers and the body), in a bounded LRU of [`CACHE_ENTRIES`]; concurrent streams with the
//! same key wait for one call. Failures are never cached.
//!
//! Calls are bounded (review M5): at most `auth-concurrency` in flight on the instance and
//! `auth-concurrency-per-address` for one client address — past either a stream is told to
//! retry at once, without a call — and a call is driven by the stream requests waiting for
//! it: when the last of them goes (the client hung up), the call is dropped, its connection
//! to the application with it. (Stream requests are admitted before they are authorized, so
//! a client at its stream cap makes no call at all.)
//!
//! The forwarding headers (`Forwarded`, `X-Forwarded-Host`, `X-Forwarded-Proto` and the
//! client's own `X-Forwarded-For` entries) are passed on only from a `trusted-proxy`: a client
//! talking to the hub directly could write anything in them (review L3). The hub always
//! appends the address of the connection to `X-Forwarded-For`, as a proxy does.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{BoxFuture, WeakShared};
use futures_util::FutureExt;
use lru::LruCache;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::AuthConfigError;
use crate::admission::Tally;
use crate::metrics::{CallbackOutcome, Metrics};
use crate::outbound;
use crate::selector::{Selector, SelectorCache};
use crate::telemetry::{self, Kind, Parent};
use crate::update::SessionId;
use crate::update::MAX_SESSION_ID_LEN;

/// The client's request headers passed on to the application, as they came.
pub const FORWARDED: [&str; 4] = ["cookie", "authorization", "origin", "user-agent"];
/// The forwarding headers, passed on as they came only from a trusted proxy; `X-Forwarded-For`
/// always ends with the address of the connection, as a proxy writes it.
pub const FORWARDED_BY_PROXY: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];
/// The largest answer read, in bytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Decisions held at most (the least recently used one goes first).
pub const CACHE_ENTRIES: usize = 10_000;
/// The longest `expiresIn` taken: a year.
const MAX_EXPIRES_IN: u64 = 365 * 24 * 3600;

/// The callback's settings, as configuration gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackSettings {
    /// Where to ask (`http://` or `https://`).
    pub url: String,
    /// The longest wait for an answer (connecting included).
    pub timeout: Duration,
    /// How long a decision is reused; zero asks for every stream.
    pub cache_ttl: Duration,
    /// Calls in flight at most (`auth-concurrency`).
    pub concurrency: usize,
    /// Calls in flight for one client address at most (`auth-concurrency-per-address`).
    pub concurrency_per_address: usize,
}

/// Which API the stream is opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `GET /.well-known/mercure`.
    Mercure,
    /// `GET /sse/event-stream`.
    Session,
}

/// What a new stream asks for: the body of the callback's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRequest {
    /// The API the stream is opened with.
    pub api: Api,
    /// Mercure: the `topic` selectors (exact topics, `*` or URI templates).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Mercure: the `match` selectors (exact topics).
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub exact: Vec<String>,
    /// Mercure: the `match_urlpattern` selectors (URL patterns).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_urlpattern: Vec<String>,
    /// Session API: the event names asked for (empty: all of the session's events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_names: Option<Vec<String>>,
}

/// Who sent a stream request: the connection's peer, whether it is a trusted proxy, and the
/// client address admission counted the stream under.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    /// The address of the connection (`None` without one: tests of the router).
    pub peer: Option<IpAddr>,
    /// The peer is a `trusted-proxy`: its forwarding headers are believed.
    pub peer_trusted: bool,
    /// The client's address as admission counts it (calls per address are bounded by it).
    pub address: Option<IpAddr>,
}

/// What the application is told about one stream request.
#[derive(Debug, Clone)]
pub struct Ask {
    headers: HeaderMap,
    /// The JSON body, written once: it is hashed for the cache key and sent.
    body: Vec<u8>,
    /// Whose calls in flight it counts among.
    address: Option<IpAddr>,
}

impl Ask {
    /// The question for a stream request with `headers` from `caller`.
    pub fn new(request: StreamRequest, headers: &HeaderMap, caller: Caller) -> Ask {
        let mut forwarded = HeaderMap::new();
        let proxied = FORWARDED_BY_PROXY.iter().filter(|_| caller.peer_trusted);
        for &name in FORWARDED.iter().chain(proxied) {
            for value in headers.get_all(name) {
                forwarded.append(HeaderName::from_static(name), value.clone());
            }
        }
        if let Some(peer) = caller.peer {
            let chain = forwarded
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .chain(std::iter::once(peer.to_string().as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(value) = HeaderValue::from_str(&chain) {
                forwarded.insert("x-forwarded-for", value);
            }
        }
        Ask {
            headers: forwarded,
            body: serde_json::to_vec(&request).unwrap_or_default(),
            address: caller.address,
        }
    }
}

/// A `200` answer: who the subscriber is and what it may see.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Answer {
    /// The subscriber's session (needed by the session API; optional for Mercure streams).
    #[serde(default)]
    session: Option<String>,
    /// Selectors of the topics whose private updates it may receive.
    #[serde(default)]
    subscribe: Vec<String>,
    /// Data about the subscriber, shown by the subscriptions API.
    #[serde(default)]
    payload: Option<serde_json::Value>,
    /// Seconds the grant holds: the stream is closed (with a retry hint) after them.
    #[serde(default)]
    expires_in: Option<u64>,
    /// Who the subscriber is (a user id): an operator disconnects a subject's streams.
    #[serde(default)]
    subject: Option<String>,
}

/// The application's decision about one stream request.
#[derive(Debug, Clone)]
pub(super) enum Decision {
    /// `200`: the stream may open.
    Granted(Grant),
    /// `401` or `403`, with the application's `detail` (or a sentence of ours).
    Refused {
        /// `401` or `403`.
        status: u16,
        /// Why, for the client.
        detail: String,
    },
}

/// What a `200` answer grants.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    /// The subscriber's session.
    pub(super) session: Option<SessionId>,
    /// Selectors of the topics whose private updates it may receive.
    pub(super) subscribe: Vec<Selector>,
    /// Data about the subscriber.
    pub(super) payload: Option<serde_json::Value>,
    /// When the grant ends (the answer's `expiresIn` after it came).
    pub(super) expires: Option<SystemTime>,
    /// Who the subscriber is.
    pub(super) subject: Option<Arc<str>>,
}

/// What a question comes to: a decision, or why there is none.
type Outcome = Result<Arc<Decision>, Arc<str>>;

/// One call in flight, awaited by every stream request with the same key (and driven by
/// them: dropped with the last).
type Call = BoxFuture<'static, Outcome>;

enum Entry {
    Decided {
        decision: Arc<Decision>,
        until: Instant,
    },
    /// `id` tells this call from a later one for the same key; the cache holds it weakly, so
    /// that a call nobody waits for any more ends.
    Asking { id: u64, flight: WeakShared<Call> },
}

type Cache = Arc<Mutex<LruCache<[u8; 32], Entry>>>;

/// The callback client with its decision cache.
pub(super) struct Callback {
    settings: CallbackSettings,
    url: reqwest::Url,
    client: reqwest::Client,
    cache: Cache,
    /// The id of the next call.
    calls: AtomicU64,
    selectors: Arc<SelectorCache>,
    metrics: Arc<Metrics>,
    /// Failures are logged at most once a second.
    log_gate: Arc<crate::throttle::LogOncePerSecond>,
    /// The calls in flight, on the instance and per address.
    slots: Arc<Slots>,
}

/// The calls in flight, counted against `auth-concurrency` and
/// `auth-concurrency-per-address`.
#[derive(Debug)]
struct Slots {
    limit: usize,
    per_address: usize,
    counts: Mutex<Tally<IpAddr>>,
}

/// One call's place among those in flight; dropping it (the call ended, or was dropped)
/// gives it back.
struct Slot {
    slots: Arc<Slots>,
    address: Option<IpAddr>,
}

impl Slots {
    /// A place for one more call from `address`, if the instance and the address have one.
    fn take(self: &Arc<Self>, address: Option<IpAddr>) -> Option<Slot> {
        crate::locks::lock(&self.counts)
            .take(address.as_ref(), self.limit, self.per_address)
            .ok()?;
        Some(Slot {
            slots: self.clone(),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::locks::lock(&self.slots.counts).give_back(self.address.as_ref());
    }
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("url", &outbound::redacted(&self.url))
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

impl Callback {
    /// A callback client for `settings`.
    ///
    /// # Errors
    /// [`AuthConfigError`] when the URL is not `http://` or `https://`, or the timeout is zero.
    pub(super) fn new(
        settings: &CallbackSettings,
        selectors: Arc<SelectorCache>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuthConfigError> {
        let url = outbound::http_url("auth-url", &settings.url)?;
        if settings.timeout.is_zero() {
            return Err(AuthConfigError::Setting(
                "auth-timeout is 0; give the application at least one second",
            ));
        }
        if settings.concurrency == 0 || settings.concurrency_per_address == 0 {
            return Err(AuthConfigError::Setting(
                "auth-concurrency and auth-concurrency-per-address must be at least 1",
            ));
        }
        let client = outbound::client(settings.timeout)?;
        Ok(Callback {
            settings: settings.clone(),
            url,
            client,
            cache: Arc::new(Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(CACHE_ENTRIES).expect("not zero"),
            ))),
            calls: AtomicU64::new(0),
            selectors,
            metrics,
            log_gate: Arc::default(),
            slots: Arc::new(Slots {
                limit: settings.concurrency,
                per_address: settings.concurrency_per_address,
                counts: Mutex::default(),
            }),
        })
    }

    /// The settings it was made with (a reload compares them).
    pub(super) fn settings(&self) -> &CallbackSettings {
        &self.settings
    }

    /// The application's decision about `ask`: cached, or asked for.
    ///
    /// # Errors
    /// Why the application could not be asked, or its answer not be used (a passing
    /// condition: the caller answers with a retry).
    pub(super) async fn decide(&self, ask: Ask) -> Outcome {
        let key = key_of(&ask);
        let flight = {
            let mut cache = crate::locks::lock(&self.cache);
            let waiting = match cache.get(&key) {
                Some(Entry::Decided { decision, until }) if *until > Instant::now() => {
                    self.metrics.auth_callback_cache_hits.inc();
                    return Ok(decision.clone());
                }
                // A call nobody waited for any more was dropped: ask again.
                Some(Entry::Asking { flight, .. }) => flight.upgrade(),
                _ => None,
            };
            match waiting {
                Some(flight) => {
                    self.metrics.auth_callback_cache_hits.inc();
                    flight
                }
                None => {
                    let Some(slot) = self.slots.take(ask.address) else {
                        self.metrics.auth_callback(CallbackOutcome::Busy);
                        if self.log_gate.allow() {
                            tracing::warn!(
                                "auth callback: too many calls in flight (auth-concurrency, auth-concurrency-per-address); stream requests are told to retry"
                            );
                        }
                        return Err(Arc::from("too many calls to the application in flight"));
                    };
                    let id = self.calls.fetch_add(1, Ordering::Relaxed);
                    // Driven by the stream requests that wait for it (settling its entry when it
                    // ends, which it cannot do before the entry is put: that needs the lock
                    // held here); dropped, with its request, when the last of them goes.
                    let call = self.call(ask, key, id);
                    let flight = async move {
                        let outcome = call.await;
                        drop(slot);
                        outcome
                    }
                    .boxed()
                    .shared();
                    let weak = flight.downgrade().expect("not polled yet");
                    cache.put(key, Entry::Asking { id, flight: weak });
                    flight
                }
            }
        };
        flight.await
    }

    /// One call to the application, which then settles the cache entry `key` if it is still
    /// this call's (`id`): a decision is kept for the cache's time, a failure is not.
    fn call(
        &self,
        ask: Ask,
        key: [u8; 32],
        id: u64,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        // Under the stream's opening, and passed on to the application: its own spans join.
        let span = telemetry::span("tidings.auth.callback", Kind::Client, Parent::Current);
        let mut request = self.client.post(self.url.clone()).headers(ask.headers);
        if let Some(trace) = span.traceparent() {
            request = request.header("traceparent", trace.to_string());
        }
        let body = ask.body;
        let metrics = self.metrics.clone();
        let selectors = self.selectors.clone();
        let gate = self.log_gate.clone();
        let url = self.url.clone();
        let cache = self.cache.clone();
        let ttl = self.settings.cache_ttl;
        async move {
            let outcome = ask_application(request, body, &selectors).await;
            let counted = match &outcome {
                Ok(Decision::Granted(_)) => CallbackOutcome::Granted,
                Ok(Decision::Refused { .. }) => CallbackOutcome::Refused,
                Err(_) => CallbackOutcome::Failed,
            };
            metrics.auth_callback(counted);
            span.set("tidings.auth.outcome", counted.as_str());
            if let Err(why) = &outcome {
                span.fail(why.clone());
            }
            drop(span);
            let outcome: Outcome = outcome.map(Arc::new).map_err(|why| {
                if gate.allow() {
                    tracing::warn!(url = %outbound::redacted(&url), error = %why, "auth callback failed; stream requests are told to retry");
                }
                Arc::from(why)
            });
            let mut cache = crate::locks::lock(&cache);
            if matches!(cache.peek(&key), Some(Entry::Asking { id: current, .. }) if *current == id)
            {
                match (&outcome, ttl_of(&outcome, ttl)) {
                    (Ok(decision), Some(until)) => {
                        let decision = decision.clone();
                        cache.put(key, Entry::Decided { decision, until });
                    }
                    _ => {
                        cache.pop(&key);
                    }
                }
            }
            outcome
        }
    }
}

/// Until when a decision is kept: `ttl` from now, never past a grant's expiry; `None` for a
/// failure, or when nothing is kept.
fn ttl_of(outcome: &Outcome, ttl: Duration) -> Option<Instant> {
    let decision = outcome.as_ref().ok()?;
    let ttl = match decision.as_ref() {
        Decision::Granted(Grant {
            expires: Some(at), ..
        }) => ttl.min(at.duration_since(SystemTime::now()).unwrap_or_default()),
        _ => ttl,
    };
    if ttl.is_zero() {
        return None;
    }
    Instant::now().checked_add(ttl)
}

/// The cache key: SHA-256 of every header passed on and of the body, each length-prefixed
/// (so that no two different questions share a key).
fn key_of(ask: &Ask) -> [u8; 32] {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut add = |bytes: &[u8]| {
        digest.update(&(bytes.len() as u64).to_le_bytes());
        digest.update(bytes);
    };
    for (name, value) in &ask.headers {
        add(name.as_str().as_bytes());
        add(value.as_bytes());
    }
    add(&ask.body);
    let mut key = [0; 32];
    key.copy_from_slice(digest.finish().as_ref());
    key
}

/// Sends the question and reads the answer.
async fn ask_application(
    request: reqwest::RequestBuilder,
    body: Vec<u8>,
    selectors: &SelectorCache,
) -> Result<Decision, String> {
    let response = request
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| outbound::describe(&e))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(format!(
            "the application answered {status} (redirects are not followed: point auth-url at the endpoint itself)"
        ));
    }
    if !matches!(status.as_u16(), 200 | 401 | 403) {
        return Err(format!(
            "the application answered {status}; it must answer 200, 401 or 403"
        ));
    }
    let body = outbound::read_limited(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| format!("cannot read the application's answer: {e}"))?;
    if status.as_u16() != 200 {
        return Ok(Decision::Refused {
            status: status.as_u16(),
            detail: refusal_detail(&body).unwrap_or_else(|| {
                match status.as_u16() {
                    401 => "the application does not know who you are: log in first",
                    _ => "the application does not let you see this",
                }
                .to_owned()
            }),
        });
    }
    let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
        format!("the application's 200 answer is not an authorization ({{\"session\", \"subscribe\", \"payload\", \"expiresIn\", \"subject\"}}): {e}")
    })?;
    let session = answer
        .session
        .map(|s| SessionId::new(&s, MAX_SESSION_ID_LEN))
        .transpose()
        .map_err(|e| format!("the application's answer names an unusable session: {e}"))?;
    let subject = answer
        .subject
        .map(|s| SessionId::new(&s, MAX_SESSION_ID_LEN))
        .transpose()
        .map_err(|e| format!("the application's answer names an unusable subject: {e}"))?
        .map(|s| Arc::from(s.as_str()));
    let expires = match answer.expires_in {
        None => None,
        Some(secs @ 1..=MAX_EXPIRES_IN) => Some(SystemTime::now() + Duration::from_secs(secs)),
        Some(secs) => {
            return Err(format!(
                "the application's answer has expiresIn {secs}: it must be 1 to {MAX_EXPIRES_IN} seconds"
            ))
        }
    };
    let subscribe = answer
        .subscribe
        .iter()
        .map(|s| selectors.get(s))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the application's answer holds a bad selector: {e}"))?;
    Ok(Decision::Granted(Grant {
        session,
        subscribe,
        payload: answer.payload,
        expires,
        subject,
    }))
}

/// The `detail` (or `error`) string of a JSON refusal, made safe to show: at most 200
/// characters, no control characters.
fn refusal_detail(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = ["detail", "error", "message"]
        .iter()
        .find_map(|k| value.get(k).and_then(|v| v.as_str()))?;
    let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    (!text.trim().is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(topics: &[&str]) -> StreamRequest {
        StreamRequest {
            api: Api::Mercure,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            exact: vec![],
            match_urlpattern: vec![],
            event_names: None,
        }
    }

    fn from(peer: &str, peer_trusted: bool) -> Caller {
        Caller {
            peer: Some(peer.parse().unwrap()),
            peer_trusted,
            address: None,
        }
    }

    fn ask(cookie: &str, topics: &[&str]) -> Ask {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_str(cookie).unwrap());
        headers.insert("x-custom", HeaderValue::from_static("not passed on"));
        Ask::new(request(topics), &headers, from("10.0.0.7", false))
    }

    #[test]
    fn only_the_listed_headers_are_passed_on_and_the_peer_is_appended() {
        let a = ask("sid=1", &["t"]);
        assert_eq!(a.headers.get("cookie").unwrap(), "sid=1");
        assert!(a.headers.get("x-custom").is_none());
        assert_eq!(a.headers.get("x-forwarded-for").unwrap(), "10.0.0.7");
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert("x-forwarded-host", HeaderValue::from_static("app.example"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert("forwarded", HeaderValue::from_static("for=203.0.113.9"));
        let a = Ask::new(request(&["t"]), &headers, from("10.0.0.7", true));
        assert_eq!(
            a.headers.get("x-forwarded-for").unwrap(),
            "203.0.113.9, 10.0.0.7"
        );
        assert_eq!(a.headers.get("x-forwarded-host").unwrap(), "app.example");
        assert_eq!(a.headers.get("forwarded").unwrap(), "for=203.0.113.9");
        // Written by a client talking to the hub directly, they prove nothing: dropped, and
        // X-Forwarded-For is the connection's address alone (review L3).
        let a = Ask::new(request(&["t"]), &headers, from("198.51.100.4", false));
        assert_eq!(a.headers.get("x-forwarded-for").unwrap(), "198.51.100.4");
        for forged in ["x-forwarded-host", "x-forwarded-proto", "forwarded"] {
            assert!(a.headers.get(forged).is_none(), "{forged}");
        }
    }

    #[test]
    fn keys_differ_by_credential_and_by_selectors() {
        let base = key_of(&ask("sid=1", &["t"]));
        assert_eq!(base, key_of(&ask("sid=1", &["t"])));
        assert_ne!(base, key_of(&ask("sid=2", &["t"])));
        assert_ne!(base, key_of(&ask("sid=1", &["u"])));
        assert_ne!(base, key_of(&ask("sid=1", &["t", "u"])));
    }

    #[test]
    fn a_refusal_detail_is_shown_only_short_and_clean() {
        assert_eq!(
            refusal_detail(br#"{"detail":"log in\nfirst"}"#).as_deref(),
            Some("log infirst")
        );
        assert_eq!(refusal_detail(b"<html>").as_deref(), None);
        assert_eq!(
            refusal_detail(format!(r#"{{"error":"{}"}}"#, "x".repeat(500)).as_bytes())
                .map(|d| d.len()),
            Some(200)
        );
    }

    #[test]
    fn bad_urls_and_timeouts_are_start_up_errors() {
        let settings = |url: &str, secs| CallbackSettings {
            url: url.into(),
            timeout: Duration::from_secs(secs),
            cache_ttl: Duration::from_secs(30),
            concurrency: 10,
            concurrency_per_address: 2,
        };
        let metrics = Arc::new(Metrics::new());
        let new = |s: &CallbackSettings, m: &Arc<Metrics>| {
            Callback::new(s, Arc::new(SelectorCache::new(10, 100)), m.clone())
        };
        for bad in ["ftp://app/auth", "app/auth", "http://"] {
            let err = new(&settings(bad, 5), &metrics).unwrap_err();
            assert!(err.to_string().contains("auth-url"), "{err}");
        }
        let err = new(&settings("http://127.0.0.1:1/", 0), &metrics).unwrap_err();
        assert!(err.to_string().contains("auth-timeout"), "{err}");
        assert!(new(&settings("https://app.example/auth", 5), &metrics).is_ok());
    }
}
