//! The publish form and JSON decoders, and the subscription query decoders, through the real
//! router (no sockets): any body, content type and query string gets a success or one of the
//! documented refusals (`400`, `403`, `413`, `415`) with the JSON body `{"error", "detail"}`,
//! and never a panic or a `5xx`.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use tidings::config::Options;
use tower::ServiceExt;

const KEY: &str = "fuzz-key";

#[derive(Debug, Arbitrary)]
enum Endpoint {
    /// `POST /.well-known/mercure`, a form.
    MercurePublish,
    /// `POST /sse/events`, JSON.
    SessionPublish,
    /// `GET /.well-known/mercure?…`.
    MercureSubscribe,
    /// `GET /sse/event-stream?…`.
    SessionSubscribe,
}

#[derive(Debug, Arbitrary)]
enum ContentType {
    Expected,
    Other(String),
    None,
}

#[derive(Debug, Arbitrary)]
pub(crate) struct Input {
    endpoint: Endpoint,
    content_type: ContentType,
    query: String,
    body: Vec<u8>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn app() -> &'static (Router, String) {
    static APP: OnceLock<(Router, String)> = OnceLock::new();
    APP.get_or_init(|| {
        let config = Options {
            jwt_key: Some(KEY.into()),
            anonymous: Some(true),
            max_body_bytes: Some(64 * 1024),
            ..Options::default()
        }
        .resolve()
        .unwrap();
        let router = runtime().block_on(async {
            tidings::server::Instance::new(config)
                .await
                .unwrap()
                .router()
        });
        let claims = serde_json::from_value(serde_json::json!({
            "mercure": {"publish": ["*"], "subscribe": ["*"]}
        }))
        .unwrap();
        let token = tidings::auth::mint(tidings::auth::JwtAlg::Hs256, KEY, &claims).unwrap();
        (router, token)
    })
}

/// Runs the check on one input; panics when it does not hold.
pub(crate) fn run(input: Input) {
    let (router, token) = app();
    let (method, path, expected_type) = match input.endpoint {
        Endpoint::MercurePublish => (
            "POST",
            "/.well-known/mercure",
            "application/x-www-form-urlencoded",
        ),
        Endpoint::SessionPublish => ("POST", "/sse/events", "application/json"),
        Endpoint::MercureSubscribe => ("GET", "/.well-known/mercure", ""),
        Endpoint::SessionSubscribe => ("GET", "/sse/event-stream", ""),
    };
    let uri = if input.query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", input.query)
    };
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"));
    match &input.content_type {
        ContentType::Expected => request = request.header("content-type", expected_type),
        ContentType::Other(other) => request = request.header("content-type", other.as_str()),
        ContentType::None => {}
    }
    let body = if method == "GET" {
        Vec::new()
    } else {
        input.body
    };
    // Inputs that cannot even form a request (a URI or header value with forbidden bytes)
    // never reach a hub.
    let Ok(request) = request.body(Body::from(body)) else {
        return;
    };
    runtime().block_on(async {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        if response.status().is_success() {
            return; // a stream's body never ends: it is dropped here, which closes it
        }
        assert!(
            [400, 403, 413, 415].contains(&status),
            "undocumented status {status}"
        );
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON error body");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    });
}
