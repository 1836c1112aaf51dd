//! The Mercure subscriptions API (`--subscriptions`): who is subscribed to what, as JSON-LD,
//! and subscription events — a private update on
//! `/.well-known/mercure/subscriptions/{topic}/{subscriber}` whenever a subscriber comes or
//! goes (as the hub tells it), published through the bus like any other update.
//!
//! One subscription is one selector of one subscriber (a connection with three `topic`
//! selectors has three). With a bus that shares subscribers (Redis), the API answers for the
//! whole cluster. Reading the API needs a token whose `mercure.subscribe` claim matches
//! the path asked for, as the Mercure protocol says.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::request;
use super::{ApiError, AppState};
use crate::bus::{Bus, ReplayFrom, SubscriberRecord};
use crate::hub::{Heard, Hub};
use crate::metrics::EventListener;
use crate::subscriber::SubscriberSpec;
use crate::update::{Topic, Update, UpdateId};

/// The path of the API, and the prefix of the topics of subscription events.
const PREFIX: &str = "/.well-known/mercure/subscriptions";

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

/// One subscription, as the API and the events show it.
#[derive(Debug, Serialize)]
struct Subscription<'a> {
    #[serde(rename = "@context", skip_serializing_if = "Option::is_none")]
    context: Option<&'static str>,
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    subscriber: &'a str,
    topic: &'a str,
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a serde_json::Value>,
    #[serde(rename = "lastEventID", skip_serializing_if = "Option::is_none")]
    last_event_id: Option<String>,
}

/// The subscriptions of one subscriber, one per distinct selector.
fn subscriptions_of(record: &SubscriberRecord, active: bool) -> Vec<Subscription<'_>> {
    record
        .topics
        .iter()
        .map(|topic| Subscription {
            context: None,
            id: format!("{PREFIX}/{}/{}", escape(topic), escape(&record.subscriber)),
            kind: "Subscription",
            subscriber: &record.subscriber,
            topic,
            active,
            payload: record.payload.as_ref(),
            last_event_id: None,
        })
        .collect()
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
        let update = Topic::new(&subscription.id, MAX_IRI_LEN).and_then(|topic| {
            let data = serde_json::to_string(&Subscription {
                context: Some("https://mercure.rocks/"),
                ..subscription
            })
            .unwrap_or_default();
            Update::new(UpdateId::generate(), vec![topic], None, data, None, true)
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

#[derive(Debug, Serialize)]
struct Collection<'a> {
    #[serde(rename = "@context")]
    context: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "lastEventID")]
    last_event_id: String,
    subscriptions: Vec<Subscription<'a>>,
}

/// Checks that the API is on and that the caller may read `path`; returns the id of the
/// newest update (the documents' `lastEventID`).
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
                "the subscriptions API needs a JWT whose mercure.subscribe claim matches this path",
            )
        } else {
            ApiError::forbidden(format!(
                "the token's mercure.subscribe claim does not match {path:?}"
            ))
        });
    }
    let newest = state.bus().replay(&ReplayFrom::Now, None).await?.head_id;
    Ok(newest.map_or_else(|| "earliest".to_owned(), |id| id.to_string()))
}

fn json_ld(body: &impl Serialize) -> Response {
    (
        [(header::CONTENT_TYPE, "application/ld+json")],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

/// `GET /.well-known/mercure/subscriptions[/{topic}]`: the active subscriptions, all or of one
/// selector.
async fn collection(
    state: AppState,
    headers: HeaderMap,
    uri: Uri,
    raw: Option<String>,
    topic: Option<String>,
) -> Result<Response, ApiError> {
    let last_event_id = authorize(&state, &headers, raw.as_deref(), uri.path()).await?;
    let records = all_subscribers(&state).await?;
    let subscriptions = records
        .iter()
        .flat_map(|record| subscriptions_of(record, true))
        .filter(|s| topic.as_deref().is_none_or(|t| s.topic == t))
        .collect();
    Ok(json_ld(&Collection {
        context: "https://mercure.rocks/",
        id: uri.path(),
        kind: "Subscriptions",
        last_event_id,
        subscriptions,
    }))
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_input", e.body_text())
}

/// `GET /.well-known/mercure/subscriptions`.
pub(super) async fn all(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    collection(state, headers, uri, raw, None).await
}

/// `GET /.well-known/mercure/subscriptions/{topic}`.
pub(super) async fn of_topic(
    State(state): State<AppState>,
    topic: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path(topic) = topic.map_err(path_error)?;
    collection(state, headers, uri, raw, Some(topic)).await
}

/// `GET /.well-known/mercure/subscriptions/{topic}/{subscriber}`: one subscription.
pub(super) async fn one(
    State(state): State<AppState>,
    parts: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path((topic, subscriber)) = parts.map_err(path_error)?;
    let last_event_id = authorize(&state, &headers, raw.as_deref(), uri.path()).await?;
    let records = all_subscribers(&state).await?;
    let found = records
        .iter()
        .filter(|record| record.subscriber == subscriber)
        .flat_map(|record| subscriptions_of(record, true))
        .find(|s| s.topic == topic);
    match found {
        Some(subscription) => Ok(json_ld(&Subscription {
            context: Some("https://mercure.rocks/"),
            last_event_id: Some(last_event_id),
            ..subscription
        })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active subscription of that subscriber to that topic",
        )),
    }
}

/// Publishes the hub's subscribers coming and going as subscription events, one at a time in
/// the hub's order, for as long as the hub lives.
pub(super) fn publish_events(hub: &Hub, bus: Arc<dyn Bus>) -> tokio::task::JoinHandle<()> {
    let mut events = hub.subscriber_events(EventListener::Subscriptions);
    tokio::spawn(async move {
        while let Some(heard) = events.recv().await {
            match heard {
                Heard::Event(event) => announce(&bus, &event.spec, event.active).await,
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
