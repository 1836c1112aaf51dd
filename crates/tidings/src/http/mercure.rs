//! The Mercure protocol: `GET /.well-known/mercure` (subscribe) and `POST` (publish).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::request::{self, Pairs};
use super::{stream, ApiError, AppState};
use crate::selector::Selector;
use crate::subscriber::{SubscriberLabel, SubscriberSpec};
use crate::update::{EventName, Topic, Update, UpdateId};

/// The path below which the hub publishes its own events (subscription events); publishers
/// may not write there.
const RESERVED_PATH: &str = "/.well-known/mercure";

/// `GET /.well-known/mercure?topic=…`: opens a stream of the updates matching the selectors.
pub(super) async fn subscribe(
    State(state): State<AppState>,
    connection: request::Connection,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = request::query(raw.as_deref())?;
    // Authenticate before compiling anything the caller sent.
    let identity = request::subscriber(&state, &headers, &query)?;
    let limits = &state.config().limits;
    // `topic=` (exact, `*` or URI template), and the 1.0 draft's `match=` (always exact) and
    // `match_urlpattern=` (URL Pattern).
    let count = query.all("topic").count()
        + query.all("match").count()
        + query.all("match_urlpattern").count();
    if count == 0 {
        return Err(ApiError::bad_request(
            "missing_topic",
            "give at least one topic selector: ?topic=<topic, * or URI template>",
        ));
    }
    if count > limits.max_selectors {
        return Err(ApiError::bad_request(
            "too_many_selectors",
            format!(
                "{count} topic selectors, the limit is max-selectors = {}",
                limits.max_selectors
            ),
        ));
    }
    let cache = state.selectors();
    let selectors = query
        .all("topic")
        .map(|s| cache.get(s))
        .chain(
            query
                .all("match")
                .map(|s| Selector::exact(s, limits.max_selector_length)),
        )
        .chain(
            query
                .all("match_urlpattern")
                .map(|s| cache.get_url_pattern(s)),
        )
        .collect::<Result<Vec<Selector>, _>>()?;
    let from = request::resume_point(&headers, &query, limits.max_id_length)?;
    let spec = SubscriberSpec {
        label: SubscriberLabel::new(identity.payload),
        selectors,
        access: identity.access,
        event_name: None,
        // Only session-API streams count in the session registry.
        session: None,
        expires: identity.expires,
    };
    let connection = connection.map(|Extension(c)| c);
    stream::open(&state, connection.as_ref(), &headers, spec, from).await
}

/// `POST /.well-known/mercure`: publishes a form-encoded update; answers its id.
pub(super) async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let limits = &state.config().limits;
    let body = request::body(body, limits.max_body_bytes)?;
    let query = request::query(raw.as_deref())?;
    let rights = request::publisher(&state, &headers, &query)?;
    request::require_content_type(&headers, "application/x-www-form-urlencoded")?;
    let form = Pairs::parse(&body, "form")?;
    let update = update_from_form(&form, &state)?;
    rights.check(&update.topics)?;
    let envelope = state.bus().publish(update).await?;
    state.metrics().updates_published.inc();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        envelope.update.id.to_string(),
    )
        .into_response())
}

fn update_from_form(form: &Pairs, state: &AppState) -> Result<Update, ApiError> {
    let limits = &state.config().limits;
    let topics = form
        .all("topic")
        .map(|t| Topic::new(t, limits.max_selector_length))
        .collect::<Result<Vec<_>, _>>()?;
    if topics.is_empty() {
        return Err(ApiError::bad_request(
            "missing_topic",
            "give at least one topic field",
        ));
    }
    if topics.len() > limits.max_topics_per_update {
        return Err(ApiError::bad_request(
            "too_many_topics",
            format!(
                "{} topics, the limit is max-topics-per-update = {}",
                topics.len(),
                limits.max_topics_per_update
            ),
        ));
    }
    if let Some(t) = topics.iter().find(|t| is_reserved(t.as_str())) {
        return Err(ApiError::forbidden(format!(
            "topic {:?} is reserved for the hub's own events",
            t.as_str()
        )));
    }
    let id = match form.single("id")? {
        Some(id) => UpdateId::new(id, limits.max_id_length)?,
        None => UpdateId::generate(),
    };
    let event_type = form
        .single("type")?
        .map(|t| EventName::new(t, limits.max_event_name_length))
        .transpose()?;
    let retry = form
        .single("retry")?
        .map(|r| {
            r.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_input",
                    format!("retry must be a whole number of milliseconds, not {r:?}"),
                )
            })
        })
        .transpose()?;
    // As in Mercure hubs, the field's presence makes the update private, whatever its value
    // (`private=0` included): failing closed.
    let private = form.single("private")?.is_some();
    let data = form.single("data")?.unwrap_or("").to_owned();
    Ok(Update::new(id, topics, event_type, data, retry, private)?)
}

/// True for topics under the hub's reserved path, written as a path or as an absolute IRI.
fn is_reserved(topic: &str) -> bool {
    let path = match topic.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => topic,
    };
    path == RESERVED_PATH || path.starts_with("/.well-known/mercure/")
}

#[cfg(test)]
mod tests {
    use super::is_reserved;

    #[test]
    fn the_hub_path_is_reserved_in_both_spellings() {
        assert!(is_reserved("/.well-known/mercure/subscriptions/x"));
        assert!(is_reserved("https://example.com/.well-known/mercure"));
        assert!(!is_reserved("https://example.com/books/1"));
        assert!(!is_reserved("/.well-known/mercurex"));
    }
}
