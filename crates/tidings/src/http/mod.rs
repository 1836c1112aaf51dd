//! The HTTP face of an instance: the Mercure protocol, the session API, operations endpoints
//! and the page at `/`, as one axum [`Router`].
//!
//! Handlers validate everything they are sent, once, into the library's types; refusals are
//! [`ApiError`]s. Streams are opened by [`stream::open`], shared by both APIs.

mod admin;
mod discovery;
mod error;
mod history;
mod mercure;
mod ops;
mod page;
mod request;
mod session;
mod stream;
mod subscriptions;

use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::ApiError;

use crate::auth::PublisherRights;
use crate::state::AppState;
use crate::telemetry::{self, Kind, Parent, TraceParent};
use crate::update::{Update, UpdateId};

/// What the server knows about the connection a request came on, attached to every request
/// as an extension.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    close: CancellationToken,
}

impl ConnectionInfo {
    /// What the server records for a connection from `peer`; cancelling `close` closes it.
    pub fn new(peer: SocketAddr, close: CancellationToken) -> Self {
        ConnectionInfo { peer, close }
    }

    /// A token that closes this connection when cancelled, whatever it is doing.
    pub fn closer(&self) -> CancellationToken {
        self.close.clone()
    }
}

/// The Mercure hub's path: `GET` subscribes, `POST` publishes.
const MERCURE_PATH: &str = "/.well-known/mercure";
/// The session API's stream.
const SESSION_STREAM_PATH: &str = "/sse/event-stream";

/// The paths whose `GET` opens an event stream: the server serves these over HTTP/1.1 itself
/// (`server::h1_stream`) and everything else through hyper.
pub const STREAM_PATHS: [&str; 2] = [MERCURE_PATH, SESSION_STREAM_PATH];

/// Builds the router of an instance.
pub fn router(state: AppState) -> Router {
    let limits = &state.config().limits;
    let page = page::render(&state);
    let mut router = Router::new()
        .route(
            "/",
            get(move || std::future::ready(page::serve(page.clone()))),
        )
        .route(
            MERCURE_PATH,
            get(mercure::subscribe)
                .post(mercure::publish)
                .fallback(mercure::query_or_refuse),
        )
        .route(
            "/.well-known/mercure/subscriptions",
            get(subscriptions::all),
        )
        .route(
            "/.well-known/mercure/subscriptions/{topic}",
            get(subscriptions::of_topic),
        )
        .route(
            "/.well-known/mercure/subscriptions/{first}/{second}",
            get(subscriptions::pair),
        )
        .route(
            "/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}",
            get(subscriptions::of_match),
        )
        .route(SESSION_STREAM_PATH, get(session::event_stream))
        .route("/sse/events", axum::routing::post(session::publish))
        .route("/sse/sessions/{session_id}", get(session::describe))
        .route("/history", get(history::history))
        .route("/admin", get(admin::page))
        .route("/admin/", get(admin::page))
        .route("/admin/cluster", get(admin::cluster))
        .route("/admin/presence", axum::routing::post(admin::presence))
        .route("/admin/streams", get(admin::streams))
        .route("/admin/selectors", get(admin::selectors))
        .route("/admin/disconnect", axum::routing::post(admin::disconnect))
        .route("/admin/{*rest}", axum::routing::any(admin::unknown))
        .route(discovery::METADATA_PATH, get(discovery::metadata))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn(refuse_bodies_on_get))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            stream::defer_passing_refusals,
        ))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_rejections,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            discovery::point_challenges_to_metadata,
        ));
    // Only while tracing is on: off, a request does not even pass the layer.
    if telemetry::on() {
        router = router.layer(axum::middleware::from_fn(trace_stream_opens));
    }
    if let Some(cors) = cors_layer(&state.config().cors_origins) {
        router = router.layer(cors);
    }
    router.with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            header::HeaderName::from_static("last-event-id"),
            header::HeaderName::from_static("mercure-last-event-id"),
            header::WWW_AUTHENTICATE,
            header::LINK,
        ]);
    if origins.iter().any(|o| o == "*") {
        // Credentials cannot be combined with a wildcard origin.
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    // Origins were validated by the configuration (`config::Options::resolve`).
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(layer.allow_origin(list).allow_credentials(true))
}

/// Publishes the subscription events of the instance's subscribers as they come and go (the
/// subscriptions API is on), until the instance ends.
pub fn publish_subscription_events(state: &AppState) -> tokio::task::JoinHandle<()> {
    subscriptions::publish_events(
        state.hub(),
        state.bus().clone(),
        state.config().subscription_events_per_address,
    )
}

/// Publishes `update` for a caller holding `rights`: every topic must be covered; the bus
/// stores and delivers it, and it is counted. Answers its id. Traced (`tidings.publish`, under
/// the caller's `trace`, and `tidings.bus.store`, whose context the update carries to every
/// instance).
async fn publish(
    state: &AppState,
    rights: &PublisherRights,
    mut update: Update,
    trace: Option<TraceParent>,
) -> Result<UpdateId, ApiError> {
    let parent = trace.as_ref().map_or(Parent::Root, Parent::Remote);
    let span = telemetry::span("tidings.publish", Kind::Server, parent);
    if span.recording() {
        span.set("tidings.update.id", update.id.as_str().to_owned());
        span.set("tidings.update.topics", update.topics.len() as i64);
    }
    let published = async {
        rights.check(&update.topics)?;
        let started = std::time::Instant::now();
        let store = telemetry::span("tidings.bus.store", Kind::Producer, Parent::Of(&span));
        store.set("messaging.system", state.bus().kind());
        update.trace = store.traceparent();
        let published = state
            .bus()
            .publish(update)
            .await
            .inspect_err(|e| store.fail(e.to_string()))?;
        let metrics = state.metrics();
        metrics
            .publish_duration
            .observe_micros(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        metrics.updates_published.inc();
        Ok::<_, ApiError>(published.id)
    }
    .await;
    if let Err(e) = &published {
        span.set("http.response.status_code", i64::from(e.status.as_u16()));
        span.fail(e.error);
    }
    published
}

/// Refuses a GET or HEAD request that carries a body: it has no meaning here, and a stream
/// request with a body would leave it unread on the connection for as long as the stream lives.
async fn refuse_bodies_on_get(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::body::HttpBody;
    let headers = request.headers();
    // HTTP/1.1 announces a body in the head; HTTP/2 by not ending the stream with it.
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
        || !request.body().is_end_stream();
    if has_body && matches!(*request.method(), Method::GET | Method::HEAD) {
        return ApiError::bad_request(
            "unexpected_body",
            "a GET request carries no body: send its parameters in the query string",
        )
        .into_response();
    }
    next.run(request).await
}

/// Traces the opening of a stream (`tidings.stream.open`), up to its response's head: the
/// authorization callback's span hangs under it, and the stream notes whether it resumed and
/// what it replayed. Always a trace of its own, sampled by `trace-sample-ratio`: a stream
/// request is not authenticated yet here, and a `traceparent` it sent could have every one
/// recorded (and would reach the authorization callback). In the router only while tracing is
/// on.
async fn trace_stream_opens(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() != Method::GET || !STREAM_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let span = telemetry::span("tidings.stream.open", Kind::Server, Parent::Root);
    span.set("url.path", request.uri().path().to_owned());
    let response = span.within(next.run(request)).await;
    let status = response.status();
    span.set("http.response.status_code", i64::from(status.as_u16()));
    if !status.is_success() {
        span.fail(status.to_string());
    }
    response
}

/// Counts every 4xx answer in `tidings_rejected_requests_total`.
async fn count_rejections(State(state): State<AppState>, response: Response) -> Response {
    if response.status().is_client_error() {
        state.metrics().rejected_requests.inc();
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}
