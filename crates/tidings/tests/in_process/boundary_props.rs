//! Property tests at the HTTP boundary: whatever query or body an outside caller sends, the
//! router answers with a success or a documented 4xx carrying a JSON error — never a 5xx,
//! never a panic.

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use proptest::prelude::*;
use tidings::config::Options;
use tower::ServiceExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

use crate::app::publisher_token as publisher;

async fn app() -> Router {
    crate::app::router(Options {
        jwt_key: Some(crate::app::KEY.into()),
        anonymous: Some(true),
        max_body_bytes: Some(4096),
        ..Options::default()
    })
    .await
}

/// A field name a caller might send, known or not.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "topic",
            "data",
            "id",
            "type",
            "retry",
            "private",
            "match",
            "match_urlpattern",
            "lastEventID",
            "authorization"
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z_]{1,8}",
    ]
}

/// A value: arbitrary text, or text shaped like selectors and templates.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[{}/:*?#&=+.,;\\\\()a-z0-9%]{0,24}",
        Just("*".to_owned()),
        Just("{".to_owned()),
        Just("https://example.com/{id}".to_owned()),
    ]
}

fn encode(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn status_and_body(app: &Router, request: Request<Body>) -> (u16, Option<serde_json::Value>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        // A stream or a publish answer; do not wait on a stream.
        return (status, None);
    }
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).ok())
}

fn assert_documented(status: u16, body: Option<serde_json::Value>) -> Result<(), TestCaseError> {
    prop_assert!(
        [200, 400, 401, 403, 413, 415].contains(&status),
        "status {status}"
    );
    if status != 200 {
        let body = body.ok_or_else(|| TestCaseError::fail("a non-JSON error body"))?;
        prop_assert!(
            body["error"].is_string() && body["detail"].is_string(),
            "{body}"
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_subscription_query_is_answered(pairs in prop::collection::vec((name(), value()), 0..6), raw_tail in prop::option::of("[%&=a-zA-Z0-9]{0,12}")) {
        let mut query = encode(&pairs);
        if let Some(tail) = raw_tail {
            query.push('&');
            query.push_str(&tail);
        }
        let (status, body) = runtime().block_on(async {
            let app = app().await;
            let request = Request::get(format!("/.well-known/mercure?{query}")).body(Body::empty()).unwrap();
            status_and_body(&app, request).await
        });
        assert_documented(status, body)?;
    }

    #[test]
    fn any_publish_form_is_answered(pairs in prop::collection::vec((name(), value()), 0..8), raw in prop::option::of(prop::collection::vec(any::<u8>(), 0..64))) {
        let mut body = encode(&pairs).into_bytes();
        if let Some(raw) = raw {
            body.push(b'&');
            body.extend(raw);
        }
        let (status, json) = runtime().block_on(async {
            let app = app().await;
            let request = Request::post("/.well-known/mercure")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", format!("Bearer {}", publisher()))
                .body(Body::from(body))
                .unwrap();
            status_and_body(&app, request).await
        });
        assert_documented(status, json)?;
    }

    #[test]
    fn any_session_event_body_is_answered(body in prop_oneof![
        any::<String>(),
        (value(), value(), value()).prop_map(|(s, e, p)| serde_json::json!({"sessionId": s, "eventName": e, "payload": p}).to_string()),
    ]) {
        let (status, json) = runtime().block_on(async {
            let app = app().await;
            let request = Request::post("/sse/events")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {}", publisher()))
                .body(Body::from(body))
                .unwrap();
            status_and_body(&app, request).await
        });
        assert_documented(status, json)?;
    }
}
