//! Router tests of `--cors-origin`: allowed origins get CORS headers (with credentials, for the
//! cookie flow), others get none; preflight requests are answered.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use tidings::config::Options;
use tower::ServiceExt;

async fn app(origins: &[&str]) -> Router {
    crate::app::router(Options {
        auth: Some(tidings::auth::AuthMode::None),
        cors_origin: origins.iter().map(|o| o.to_string()).collect(),
        ..Options::default()
    })
    .await
}

fn preflight(origin: &str) -> Request<Body> {
    Request::options("/.well-known/mercure")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn allowed_origins_get_credentials_and_preflight_answers() {
    let app = app(&["https://app.example", "https://admin.example"]).await;
    let response = app
        .clone()
        .oneshot(preflight("https://app.example"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));

    let get = Request::get("/healthz")
        .header("origin", "https://admin.example")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(get).await.unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://admin.example"
    );

    let response = app
        .oneshot(preflight("https://evil.example"))
        .await
        .unwrap();
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn a_wildcard_allows_any_origin_without_credentials() {
    let app = app(&["*"]).await;
    let response = app
        .oneshot(preflight("https://anywhere.example"))
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(!response
        .headers()
        .contains_key("access-control-allow-credentials"));
}

#[tokio::test]
async fn without_the_option_there_are_no_cors_headers() {
    let app = app(&[]).await;
    let get = Request::get("/healthz")
        .header("origin", "https://app.example")
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(get).await.unwrap();
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));
}
