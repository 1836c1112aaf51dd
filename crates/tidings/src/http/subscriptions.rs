//! The Mercure subscriptions API (`--subscriptions`): who is subscribed to what, and
//! subscription events — a private update whenever a subscriber comes or goes (as the hub
//! tells it), published through the bus like any other update.
//!
//! Both revisions of the protocol are spoken, each subscriber named as it wrote its selectors
//! ([`SelectorSyntax`]):
//! - classic (`topic=`): events on `/.well-known/mercure/subscriptions/{topic}/{subscriber}`,
//!   JSON-LD `Subscription` documents with `topic`; the API's routes `/subscriptions`,
//!   `/subscriptions/{topic}`, `/subscriptions/{topic}/{subscriber}`, `lastEventID`;
//! - Mercure 1.0 (`match…=`): events on
//!   `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}` with the SSE type
//!   `mercure`, plain JSON `subscription` documents with `match` and `match_type` (as the
//!   reference hub writes them); the routes `/subscriptions/{match_type}/{match}[/{subscriber}]`
//!   (a first segment `exact` or `urlpattern` names a match type), `last_event_id` in the
//!   body (the specification) and in a `Link` header (the reference hub).
//!
//! One subscription is one selector of one subscriber (a connection with three selectors has
//! three). With a bus that shares subscribers (Redis), the API answers for the whole cluster.
//! Reading the API needs a token whose subscribe rights match the path asked for, as the
//! Mercure protocol says.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::Challenge;
use super::request;
use super::{ApiError, AppState, MERCURE_PATH};
use crate::bus::{Bus, ReplayFrom, SubscriberRecord};
use crate::hub::{Heard, Hub};
use crate::metrics::EventListener;
use crate::subscriber::{MatchType, SubscriberLabel, SubscriberSpec};
use crate::update::{EventName, Topic, Update, UpdateId, RESERVED_EVENT_TYPE};

/// The path of the API, and the prefix of the topics of subscription events.
const PREFIX: &str = "/.well-known/mercure/subscriptions";

/// The JSON-LD context of the classic documents.
const CONTEXT: &str = "https://mercure.rocks/";

/// Longest subscription IRI: two escaped selectors' worth, generously.
const MAX_IRI_LEN: usize = 16 * 1024;

/// Escapes one path segment: everything but RFC 3986 unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn escape(segment: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(segment, SEGMENT)
}

/// One subscription, as the API and the events show it: a classic one (`topic`) or a
/// Mercure 1.0 one (`match`, `match_type`).
#[derive(Debug, Serialize)]
struct Subscription<'a> {
    #[serde(rename = "@context", skip_serializing_if = "Option::is_none")]
    context: Option<&'static str>,
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    subscriber: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    matcher: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    match_type: Option<MatchType>,
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a serde_json::Value>,
    /// The classic document's cursor.
    #[serde(rename = "lastEventID", skip_serializing_if = "Option::is_none")]
    classic_last_event_id: Option<String>,
    /// Mercure 1.0's.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_event_id: Option<String>,
}

impl Subscription<'_> {
    fn is_classic(&self) -> bool {
        self.topic.is_some()
    }

    /// The document of this subscription alone, with the cursor `last_event_id`.
    fn alone(self, last_event_id: String) -> Self {
        if self.is_classic() {
            Subscription {
                context: Some(CONTEXT),
                classic_last_event_id: Some(last_event_id),
                ..self
            }
        } else {
            Subscription {
                last_event_id: Some(last_event_id),
                ..self
            }
        }
    }
}

/// The subscriptions of one subscriber, one per distinct selector.
fn subscriptions_of(record: &SubscriberRecord, active: bool) -> Vec<Subscription<'_>> {
    let subscriber = record.subscriber.as_str();
    let blank = |id: String, kind| Subscription {
        context: None,
        id,
        kind,
        subscriber,
        topic: None,
        matcher: None,
        match_type: None,
        active,
        payload: record.payload.as_ref(),
        classic_last_event_id: None,
        last_event_id: None,
    };
    let classic = record.topics.iter().map(|topic| Subscription {
        topic: Some(topic),
        ..blank(
            format!("{PREFIX}/{}/{}", escape(topic), escape(subscriber)),
            "Subscription",
        )
    });
    let matches = record.matches.iter().map(|m| Subscription {
        matcher: Some(&m.matcher),
        match_type: Some(m.match_type),
        ..blank(
            format!(
                "{PREFIX}/{}/{}/{}",
                m.match_type.as_str(),
                escape(&m.matcher),
                escape(subscriber)
            ),
            "subscription",
        )
    });
    classic.chain(matches).collect()
}

/// Every subscriber: the cluster's when the bus shares them, else this instance's.
async fn all_subscribers(state: &AppState) -> Result<Vec<SubscriberRecord>, ApiError> {
    if let Some(registry) = state.bus().registry() {
        if let Some(records) = registry.subscribers().await? {
            return Ok(records);
        }
    }
    Ok(state
        .hub()
        .subscribers()
        .iter()
        .map(|spec| SubscriberRecord::of(spec))
        .collect())
}

/// Publishes the events saying that `spec`'s subscriptions became active (or inactive).
/// Failures are logged, never returned: they must not stop the subscriber itself.
async fn announce(bus: &Arc<dyn Bus>, spec: &SubscriberSpec, active: bool) {
    let record = SubscriberRecord::of(spec);
    for subscription in subscriptions_of(&record, active) {
        let classic = subscription.is_classic();
        let update = Topic::new(&subscription.id, MAX_IRI_LEN).and_then(|topic| {
            let data = serde_json::to_string(&Subscription {
                context: classic.then_some(CONTEXT),
                ..subscription
            })
            .unwrap_or_default();
            // Mercure 1.0's events have a type of their own, which publishers cannot use.
            let event_type = match classic {
                true => None,
                false => Some(EventName::new(
                    RESERVED_EVENT_TYPE,
                    RESERVED_EVENT_TYPE.len(),
                )?),
            };
            Update::new(
                UpdateId::generate(),
                vec![topic],
                event_type,
                data,
                None,
                true,
            )
        });
        match update {
            Ok(update) => {
                if let Err(e) = bus.publish(update).await {
                    tracing::warn!(error = %e, "cannot publish a subscription event");
                }
            }
            Err(e) => tracing::warn!(error = %e, "subscription event not published"),
        }
    }
}

/// A collection of subscriptions: the classic JSON-LD `Subscriptions` (which also carries
/// Mercure 1.0's `last_event_id`), or Mercure 1.0's `subscriptions`.
#[derive(Debug, Serialize)]
struct Collection<'a> {
    #[serde(rename = "@context", skip_serializing_if = "Option::is_none")]
    context: Option<&'static str>,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "lastEventID", skip_serializing_if = "Option::is_none")]
    classic_last_event_id: Option<&'a str>,
    last_event_id: &'a str,
    subscriptions: Vec<Subscription<'a>>,
}

/// Checks that the API is on and that the caller may read `path`; returns the id of the
/// newest update (the documents' cursor).
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
    path: &str,
) -> Result<String, ApiError> {
    if !state.config().subscriptions {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the subscriptions API is off; start the hub with --subscriptions",
        ));
    }
    let query = request::query(raw_query)?;
    let identity = request::subscriber(state, headers, &query).await?;
    let topic = Topic::new(path, MAX_IRI_LEN)?;
    if !identity.access.may_see_private(&[topic]) {
        return Err(if identity.anonymous {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "the subscriptions API needs a JWT whose subscribe rights match this path",
            )
        } else {
            ApiError::forbidden(format!(
                "the token's subscribe rights do not match {path:?}"
            ))
            .challenging(Challenge::InsufficientScope)
        });
    }
    let newest = state.bus().replay(&ReplayFrom::Now, None).await?.head_id;
    Ok(newest.map_or_else(|| "earliest".to_owned(), |id| id.to_string()))
}

/// A document of the API: JSON-LD for the classic protocol, JSON for Mercure 1.0; the cursor
/// also in a `Link` header, as the reference hub sends it.
fn document(body: &impl Serialize, classic: bool, last_event_id: &str) -> Response {
    let quoted = last_event_id.replace('\\', "\\\\").replace('"', "\\\"");
    let link = format!("<{MERCURE_PATH}>; rel=\"mercure\"; last-event-id=\"{quoted}\"");
    let content_type = match classic {
        true => "application/ld+json",
        false => "application/json",
    };
    let mut response = (
        [(header::CONTENT_TYPE, content_type)],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response();
    // Ids are free of control characters, so the header is valid; skipped if not.
    if let Ok(link) = HeaderValue::from_str(&link) {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}

/// Every subscriber's record, once the caller is authorized to read `uri`; and the cursor.
async fn authorized_records(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    raw: Option<String>,
) -> Result<(String, Vec<SubscriberRecord>), ApiError> {
    let last_event_id = authorize(state, headers, raw.as_deref(), uri.path()).await?;
    Ok((last_event_id, all_subscribers(state).await?))
}

/// The active subscriptions `keep` chooses, as a collection: classic (every subscription,
/// each in its own form) or Mercure 1.0's.
async fn collection(
    state: AppState,
    headers: HeaderMap,
    uri: Uri,
    raw: Option<String>,
    classic: bool,
    keep: impl Fn(&Subscription<'_>) -> bool,
) -> Result<Response, ApiError> {
    let (last_event_id, records) = authorized_records(&state, &headers, &uri, raw).await?;
    let subscriptions = records
        .iter()
        .flat_map(|record| subscriptions_of(record, true))
        .filter(|s| keep(s))
        .collect();
    let body = Collection {
        context: classic.then_some(CONTEXT),
        id: uri.path(),
        kind: if classic {
            "Subscriptions"
        } else {
            "subscriptions"
        },
        classic_last_event_id: classic.then_some(last_event_id.as_str()),
        last_event_id: &last_event_id,
        subscriptions,
    };
    Ok(document(&body, classic, &last_event_id))
}

/// One active subscription, the first `wanted` chooses; 404 when there is none.
async fn one(
    state: AppState,
    headers: HeaderMap,
    uri: Uri,
    raw: Option<String>,
    wanted: impl Fn(&Subscription<'_>) -> bool,
) -> Result<Response, ApiError> {
    let (last_event_id, records) = authorized_records(&state, &headers, &uri, raw).await?;
    let found = records
        .iter()
        .flat_map(|record| subscriptions_of(record, true))
        .find(|s| wanted(s));
    match found {
        Some(subscription) => {
            let classic = subscription.is_classic();
            let body = subscription.alone(last_event_id.clone());
            Ok(document(&body, classic, &last_event_id))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active subscription of that subscriber to that selector",
        )),
    }
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_input", e.body_text())
}

/// `GET /.well-known/mercure/subscriptions`: every active subscription, each in the form of
/// the protocol its subscriber spoke.
pub(super) async fn all(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    collection(state, headers, uri, raw, true, |_| true).await
}

/// `GET /.well-known/mercure/subscriptions/{topic}`: the classic subscriptions to one
/// selector.
pub(super) async fn of_topic(
    State(state): State<AppState>,
    topic: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path(topic) = topic.map_err(path_error)?;
    collection(state, headers, uri, raw, true, |s| {
        s.topic == Some(topic.as_str())
    })
    .await
}

/// `GET /.well-known/mercure/subscriptions/{a}/{b}`: Mercure 1.0's subscriptions to one match
/// when `a` is a match type (`exact`, `urlpattern`), else the classic subscription of
/// subscriber `b` to topic `a`.
pub(super) async fn pair(
    State(state): State<AppState>,
    parts: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path((first, second)) = parts.map_err(path_error)?;
    match MatchType::parse(&first) {
        Some(match_type) => {
            collection(state, headers, uri, raw, false, |s| {
                s.match_type == Some(match_type) && s.matcher == Some(second.as_str())
            })
            .await
        }
        None => {
            one(state, headers, uri, raw, |s| {
                s.topic == Some(first.as_str()) && s.subscriber == second
            })
            .await
        }
    }
}

/// `GET /.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`: one Mercure 1.0
/// subscription.
pub(super) async fn of_match(
    State(state): State<AppState>,
    parts: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path((match_type, matcher, subscriber)) = parts.map_err(path_error)?;
    let match_type = MatchType::parse(&match_type).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_input",
            "the first segment after /subscriptions/ is a match type: exact or urlpattern",
        )
    })?;
    one(state, headers, uri, raw, |s| {
        s.match_type == Some(match_type)
            && s.matcher == Some(matcher.as_str())
            && s.subscriber == subscriber
    })
    .await
}

/// Publishes the hub's subscribers coming and going as subscription events, one at a time in
/// the hub's order, for as long as the hub lives; at most `per_address` a second (on average)
/// for the streams of one client address.
pub(super) fn publish_events(
    hub: &Hub,
    bus: Arc<dyn Bus>,
    per_address: u32,
) -> tokio::task::JoinHandle<()> {
    let mut events = hub.subscriber_events(EventListener::Subscriptions);
    let metrics = hub.metrics().clone();
    let mut budget = EventBudget::new(per_address);
    tokio::spawn(async move {
        while let Some(heard) = events.recv().await {
            match heard {
                Heard::Event(event) => {
                    let label = &event.spec.label;
                    let count = event.spec.selectors.len();
                    if budget.allows(label, count, event.active, Instant::now()) {
                        announce(&bus, &event.spec, event.active).await;
                    } else {
                        metrics.subscriber_event_dropped(EventListener::Subscriptions);
                        budget.complain();
                    }
                }
                // The subscriptions API still answers from the hub and the registry; only
                // these events were not published.
                Heard::Missed(n) => tracing::warn!(
                    events = n,
                    "subscription events dropped: the bus took them slower than subscribers came and went"
                ),
            }
        }
    })
}

/// The per-address bound on subscription events: a token bucket per client address, filled
/// at `per_sec` up to ten seconds' worth. Subscription events are published on the bus and
/// kept in the shared history like any update, so a client churning streams of many selectors
/// pushed real updates out of history — resumes then got `tidings-gap` (review M6).
/// A subscriber whose arrival was told is always told leaving (watchers must not believe it
/// is still there; this costs no more than twice the arrivals); one whose arrival was not
/// told is not told leaving either.
#[derive(Debug)]
struct EventBudget {
    per_sec: f64,
    burst: f64,
    /// Tokens left and when they were counted, per address.
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// Subscribers whose arrival was dropped.
    untold: HashSet<Arc<str>>,
    /// When a drop was last logged.
    complained: Option<Instant>,
}

/// Buckets kept before the full ones are forgotten.
const MAX_BUCKETS: usize = 10_000;
/// Subscribers whose arrival went untold remembered at most (past it, a departure may be told
/// without its arrival: harmless).
const MAX_UNTOLD: usize = 100_000;

impl EventBudget {
    fn new(per_sec: u32) -> Self {
        EventBudget {
            per_sec: f64::from(per_sec),
            burst: f64::from(per_sec) * 10.0,
            buckets: HashMap::new(),
            untold: HashSet::new(),
            complained: None,
        }
    }

    /// Whether the `count` events of `label`'s subscriber arriving (`active`) or leaving may
    /// be published now; takes them from its address's bucket.
    fn allows(
        &mut self,
        label: &SubscriberLabel,
        count: usize,
        active: bool,
        now: Instant,
    ) -> bool {
        if !active {
            return !self.untold.remove(&label.iri);
        }
        let Some(address) = label.address.filter(|_| self.per_sec > 0.0) else {
            return true;
        };
        if self.buckets.len() >= MAX_BUCKETS {
            let (per_sec, burst) = (self.per_sec, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + per_sec * now.duration_since(*at).as_secs_f64() < burst
            });
            // Still full: that many addresses are busy at once; starting them all afresh
            // keeps the map bounded (and lets one burst each through).
            if self.buckets.len() >= MAX_BUCKETS {
                self.buckets.clear();
            }
        }
        let (tokens, at) = self.buckets.entry(address).or_insert((self.burst, now));
        *tokens = (*tokens + self.per_sec * now.duration_since(*at).as_secs_f64()).min(self.burst);
        *at = now;
        // A stream of more selectors than a burst is one burst's worth, or it would never be
        // told.
        let wanted = (count as f64).min(self.burst);
        if *tokens >= wanted {
            *tokens -= wanted;
            return true;
        }
        if self.untold.len() < MAX_UNTOLD {
            self.untold.insert(label.iri.clone());
        }
        false
    }

    /// Logs that events were dropped, at most once a minute.
    fn complain(&mut self) {
        if self
            .complained
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            self.complained = Some(Instant::now());
            tracing::warn!(
                "subscription events dropped: a client address went past subscription-events-per-address (tidings_subscriber_events_dropped_total{{listener=\"subscriptions\"}})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(address: &str) -> SubscriberLabel {
        SubscriberLabel::new(None).from_address(Some(address.parse().unwrap()))
    }

    #[test]
    fn the_link_header_quotes_the_cursor() {
        let response = document(&serde_json::json!({}), false, "a\"b\\c");
        assert_eq!(
            response.headers()[header::LINK],
            r#"</.well-known/mercure>; rel="mercure"; last-event-id="a\"b\\c""#
        );
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn each_address_has_a_burst_and_a_rate_of_subscription_events() {
        let mut budget = EventBudget::new(2);
        let start = Instant::now();
        let (alice, bob) = (from("192.0.2.1"), from("192.0.2.2"));
        assert!(budget.allows(&alice, 15, true, start));
        let second = from("192.0.2.1");
        assert!(!budget.allows(&second, 10, true, start), "5 left of 20");
        assert!(
            budget.allows(&bob, 20, true, start),
            "another address has its own"
        );
        // A subscriber whose arrival was not told is not told leaving, and costs nothing.
        assert!(!budget.allows(&second, 10, false, start));
        // Leaving is told for a subscriber whose arrival was, whatever the bucket holds.
        assert!(budget.allows(&alice, 15, false, start));
        // Two tokens a second come back.
        let later = start + Duration::from_secs(3);
        assert!(budget.allows(&alice, 11, true, later));
        assert!(!budget.allows(&alice, 1, true, later));
        // Without an address (or a bound), nothing is counted.
        assert!(budget.allows(&SubscriberLabel::new(None), 1000, true, later));
        assert!(EventBudget::new(0).allows(&alice, 1000, true, later));
    }
}
