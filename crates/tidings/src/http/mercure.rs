//! The Mercure protocol: `GET /.well-known/mercure` (subscribe) and `POST` (publish).

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::request::{self, CallerTrace, Form, Pairs, Publisher, Query};
use super::{stream, ApiError, AppState};
use crate::admission::Permit;
use crate::auth::{Api, StreamRequest};
use crate::selector::Selector;
use crate::subscriber::{SelectorSyntax, SubscriberLabel, SubscriberSpec};
use crate::update::{Author, Draft, InvalidInput, Limits, Recipients, Update, UpdateId};

/// `GET /.well-known/mercure?topic=…`: opens a stream of the updates matching the selectors.
pub(super) async fn subscribe(
    State(state): State<AppState>,
    Query(query): Query,
    connection: request::Connection,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let connection = connection.map(|Extension(c)| c);
    subscribe_with(state, query, connection.as_ref(), headers, None).await
}

/// `QUERY /.well-known/mercure` (the method of RFC 10008, as the reference hub takes it): a
/// subscription whose parameters come in an `application/x-www-form-urlencoded` body, added
/// to the URL's. Any other method the route does not know is `405`.
pub(super) async fn query_or_refuse(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    if request.method().as_str() != "QUERY" {
        return Err(super::method_not_allowed().await);
    }
    let connection = request.extensions().get::<super::ConnectionInfo>().cloned();
    let headers = request.headers().clone();
    // Admitted before its body is read, as a GET before its selectors are compiled.
    let permit = stream::admit(&state, connection.as_ref(), &headers)?;
    let mut pairs = request::query(request.uri().query())?;
    let body = request::body_of(request, &state, "application/x-www-form-urlencoded").await?;
    pairs.extend(Pairs::parse(&body, "body")?);
    subscribe_with(state, pairs, connection.as_ref(), headers, Some(permit)).await
}

/// Opens a stream for the subscription parameters `query` (admitted already when `admitted`
/// is given).
async fn subscribe_with(
    state: AppState,
    query: Pairs,
    connection: Option<&super::ConnectionInfo>,
    headers: HeaderMap,
    admitted: Option<Permit>,
) -> Result<Response, ApiError> {
    let limits = &state.config().limits;
    // `topic=` (exact, `*` or URI template), and Mercure 1.0's `match=` and `match_exact=`
    // (exact) and `match_urlpattern=` (URL Pattern).
    let syntax = selector_syntax(&query)?;
    let values = |name| query.all(name).map(str::to_owned).collect::<Vec<_>>();
    let exact = || query.all("match").chain(query.all("match_exact"));
    let asked = StreamRequest {
        api: Api::Mercure,
        topics: values("topic"),
        exact: exact().map(str::to_owned).collect(),
        match_urlpattern: values("match_urlpattern"),
        event_names: None,
    };
    let count = asked.topics.len() + asked.exact.len() + asked.match_urlpattern.len();
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
    let mut permit = match admitted {
        Some(permit) => permit,
        None => stream::admit(&state, connection, &headers)?,
    };
    // Authenticated before anything the caller sent is compiled.
    let identity = request::stream_subscriber(&state, connection, &headers, &query, asked).await?;
    // Its wide selectors counted before they are compiled (exact ones cost no matching).
    permit.hold_wide(
        query
            .all("topic")
            .filter_map(Selector::wide_key)
            .chain(query.all("match_urlpattern").map(Selector::url_pattern_key)),
    )?;
    let cache = state.selectors();
    let selectors = query
        .all("topic")
        .map(|s| cache.get(s))
        .chain(exact().map(|s| Selector::exact(s, limits.max_selector_length)))
        .chain(
            query
                .all("match_urlpattern")
                .map(|s| cache.get_url_pattern(s)),
        )
        .collect::<Result<Vec<Selector>, _>>()?;
    let from = request::resume_point(&headers, &query, limits.max_id_length)?;
    let asked = stream::Asked {
        rewind: request::rewind(&query)?,
        with_selectors: request::with_selectors(&query)?,
    };
    let spec = SubscriberSpec {
        label: SubscriberLabel::new(identity.payload)
            .from_address(permit.address())
            .written_as(syntax)
            .of_subject(identity.subject),
        selectors,
        access: identity.access,
        event_names: Vec::new(),
        // Only session-API streams count in the session registry.
        session: None,
        expires: identity.expires,
    };
    stream::open(&state, connection, permit, spec, from, asked).await
}

/// The subscription parameters of Mercure 1.0 (`match` is an exact selector too).
const MATCHERS: [&str; 3] = ["match", "match_exact", "match_urlpattern"];

/// How the request writes its selectors: classic `topic=`, or Mercure 1.0's `match…=` — the
/// subscriptions API and subscription events then name them the same way. Another parameter
/// named `match…` is refused (Mercure 1.0: a matcher type the hub does not know must not be
/// ignored, or the client would get other updates than it asked for), and so is a request
/// mixing both (its subscriptions could be named neither way).
fn selector_syntax(query: &Pairs) -> Result<SelectorSyntax, ApiError> {
    let mut matchers = false;
    for name in query.names() {
        let match_like = name
            .get(..5)
            .is_some_and(|start| start.eq_ignore_ascii_case("match"));
        if match_like && !MATCHERS.contains(&name) {
            let name: String = name.chars().take(64).collect();
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "{name:?} is not a selector parameter: use match (or match_exact) for an exact topic, match_urlpattern for a URL pattern, or topic for the classic protocol's selectors"
                ),
            ));
        }
        matchers |= match_like;
    }
    if !matchers {
        return Ok(SelectorSyntax::Topic);
    }
    if query.all("topic").next().is_some() {
        return Err(ApiError::bad_request(
            "mixed_selectors",
            "a subscription writes its selectors with topic= (the classic protocol) or with match=, match_exact= and match_urlpattern= (Mercure 1.0), not both",
        ));
    }
    Ok(SelectorSyntax::Match)
}

/// `POST /.well-known/mercure`: publishes a form-encoded update; answers its id.
pub(super) async fn publish(
    State(state): State<AppState>,
    Publisher(rights): Publisher,
    CallerTrace(trace): CallerTrace,
    Form(form): Form,
) -> Result<Response, ApiError> {
    let update = update_from_form(&form, &state.config().limits)?;
    let id = super::publish(&state, &rights, update, trace).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        id.to_string(),
    )
        .into_response())
}

/// The update a Mercure form describes: `topic` (repeated), `data`, `id`, `type`, `retry`,
/// `private`, each but `topic` at most once.
fn update_from_form(form: &Pairs, limits: &Limits) -> Result<Update, ApiError> {
    let retry = form
        .single("retry")?
        .map(|r| {
            r.parse::<u64>().map_err(|_| {
                InvalidInput::new(
                    "retry",
                    format!("must be a whole number of milliseconds, not {r:?}"),
                )
            })
        })
        .transpose()?;
    let draft = Draft {
        id: form.single("id")?,
        to: Recipients::Topics(form.all("topic").collect()),
        event_type: form.single("type")?,
        data: form.single("data")?.unwrap_or("").to_owned(),
        retry,
        // As in Mercure hubs, the field's presence makes the update private, whatever its
        // value (`private=0` included): failing closed.
        private: form.single("private")?.is_some(),
    };
    Ok(draft.validate(limits, Author::Publisher, UpdateId::generate)?)
}
