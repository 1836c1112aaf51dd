//! The HTTP face of an instance: the Mercure protocol, the session API, operations endpoints
//! and the page at `/`, as one axum [`Router`].
//!
//! Handlers validate everything they are sent, once, into the library's types; refusals are
//! [`ApiError`]s. Streams are opened by [`stream::open`], shared by both APIs.

mod error;
mod mercure;
mod ops;
mod request;
mod session;
mod stream;
mod subscriptions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::ApiError;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::selector::SelectorCache;

/// Everything a request handler needs, shared by all requests of an instance.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    config: Config,
    hub: Hub,
    bus: Arc<dyn Bus>,
    auth: Authenticator,
    selectors: Arc<SelectorCache>,
    metrics: Arc<Metrics>,
    /// The stream counts and their caps.
    admission: Arc<Admission>,
    /// Cancelled when the instance starts shutting down: every stream ends itself.
    shutdown: CancellationToken,
    /// Set at the same moment, read by `/readyz` and by handlers refusing new streams.
    draining: AtomicBool,
}

impl AppState {
    /// Bundles the parts of an instance.
    pub fn new(
        config: Config,
        hub: Hub,
        bus: Arc<dyn Bus>,
        auth: Authenticator,
        selectors: Arc<SelectorCache>,
    ) -> Self {
        let metrics = hub.metrics().clone();
        AppState {
            inner: Arc::new(StateInner {
                admission: Admission::new(config.streams.clone(), metrics.clone()),
                config,
                hub,
                bus,
                auth,
                selectors,
                metrics,
                shutdown: CancellationToken::new(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Starts draining: `/readyz` answers 503, new streams are refused, and every open stream
    /// is told to close (each after a random part of the drain window, with a `retry:` hint).
    pub fn begin_shutdown(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.metrics.ready.set(0);
        self.inner.shutdown.cancel();
    }

    /// True once [`AppState::begin_shutdown`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// The instance's hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The instance's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The instance's token verifier.
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// The instance's stream counts.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// The instance's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
}

/// Builds the router of an instance.
pub fn router(state: AppState) -> Router {
    let limits = &state.config().limits;
    let mut router = Router::new()
        .route("/", get(index))
        .route(
            "/.well-known/mercure",
            get(mercure::subscribe).post(mercure::publish),
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
            "/.well-known/mercure/subscriptions/{topic}/{subscriber}",
            get(subscriptions::one),
        )
        .route("/sse/event-stream", get(session::event_stream))
        .route("/sse/events", axum::routing::post(session::publish))
        .route("/sse/sessions/{session_id}", get(session::describe))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn(refuse_bodies_on_get))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_rejections,
        ));
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
        .expose_headers([header::HeaderName::from_static("last-event-id")]);
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

/// Counts every 4xx answer in `tidings_rejected_requests_total`.
async fn count_rejections(State(state): State<AppState>, response: Response) -> Response {
    if response.status().is_client_error() {
        state.metrics().rejected_requests.inc();
    }
    response
}

async fn index() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("index.html")),
    )
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
