//! Router tests (no sockets): every kind of bad input gets the documented status and a JSON
//! body `{"error", "detail"}`, and none of it reaches subscribers.
//!
//! Over 600 lines: one table of bad inputs per entry point, read together so that each kind of
//! bad input is answered alike everywhere.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tidings::config::Options;
use tower::ServiceExt;

use crate::app::{publisher_token as publisher, KEY};

async fn app(options: Options) -> Router {
    crate::app::router(Options {
        jwt_key: Some(KEY.into()),
        max_body_bytes: options.max_body_bytes.or(Some(1024)),
        ..options
    })
    .await
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value, axum::http::HeaderMap) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, body, headers)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_form(body: impl Into<Body>) -> Request<Body> {
    Request::post("/.well-known/mercure")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Bearer {}", publisher()))
        .body(body.into())
        .unwrap()
}

/// Asserts a JSON error with this status and code.
fn expect(result: (StatusCode, Value, axum::http::HeaderMap), status: u16, code: &str, case: &str) {
    let (s, body, headers) = result;
    assert_eq!(s.as_u16(), status, "{case}: {body}");
    assert_eq!(headers["content-type"], "application/json", "{case}");
    assert_eq!(body["error"], code, "{case}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{case}: {body}"
    );
}

#[tokio::test]
async fn bad_subscriptions_are_400s() {
    let app = app(Options {
        anonymous: Some(true),
        max_selectors: Some(3),
        max_selector_length: Some(50),
        ..Options::default()
    })
    .await;
    let cases = [
        ("/.well-known/mercure", "missing_topic", "no topic"),
        (
            "/.well-known/mercure?topic=a&topic=b&topic=c&topic=d",
            "too_many_selectors",
            "too many selectors",
        ),
        (
            "/.well-known/mercure?topic=%7Bunclosed",
            "invalid_input",
            "malformed template",
        ),
        (
            "/.well-known/mercure?topic=a%7Bx%7D%7D",
            "invalid_input",
            "stray brace",
        ),
        (
            "/.well-known/mercure?topic=a%01b",
            "invalid_input",
            "control character",
        ),
        (
            "/.well-known/mercure?topic=",
            "invalid_input",
            "empty selector",
        ),
        (
            "/.well-known/mercure?topic=%FF",
            "invalid_encoding",
            "invalid UTF-8",
        ),
        (
            "/.well-known/mercure?topic=a&lastEventID=x%0Ay",
            "invalid_last_event_id",
            "LF in last id",
        ),
        (
            "/.well-known/mercure?topic=a&lastEventID=x%00y",
            "invalid_last_event_id",
            "NUL in last id",
        ),
        (
            "/.well-known/mercure?topic=a&lastEventID=1&lastEventID=2",
            "invalid_input",
            "two last ids",
        ),
        // Mercure 1.0: a matcher type the hub does not know is refused, not ignored.
        (
            "/.well-known/mercure?match=a&matchURLPattern=b",
            "unknown_parameter",
            "an earlier draft's spelling",
        ),
        (
            "/.well-known/mercure?MATCH_regexp=a",
            "unknown_parameter",
            "an unknown matcher type, any case",
        ),
        (
            "/.well-known/mercure?topic=a&match=b",
            "mixed_selectors",
            "both revisions' selectors",
        ),
        (
            "/.well-known/mercure?topic=a&rewind=0",
            "invalid_rewind",
            "rewind 0",
        ),
        (
            "/.well-known/mercure?topic=a&rewind=101",
            "invalid_rewind",
            "rewind over the cap",
        ),
        (
            "/.well-known/mercure?topic=a&rewind=all",
            "invalid_rewind",
            "rewind not a number",
        ),
        (
            "/.well-known/mercure?topic=a&withSelectors=yes",
            "invalid_input",
            "withSelectors neither 1/true nor 0/false",
        ),
        (
            "/.well-known/mercure?topic=a&withSelectors=1&withSelectors=0",
            "invalid_input",
            "two withSelectors",
        ),
    ];
    for (uri, code, case) in cases {
        expect(call(&app, get(uri)).await, 400, code, case);
    }
    let long = format!("/.well-known/mercure?topic={}", "x".repeat(51));
    expect(
        call(&app, get(&long)).await,
        400,
        "invalid_input",
        "selector too long",
    );
}

#[tokio::test]
async fn credentials_problems_are_401_with_a_challenge() {
    let app = app(Options::default()).await;
    let (s, body, headers) = call(&app, get("/.well-known/mercure?topic=a")).await;
    assert_eq!(s, 401, "{body}");
    // RFC 6750: no error code when no token was sent.
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"tidings\"");
    let basic = Request::get("/.well-known/mercure?topic=a")
        .header("authorization", "Basic eDp5")
        .body(Body::empty())
        .unwrap();
    expect(call(&app, basic).await, 401, "invalid_token", "basic auth");
    let garbage = Request::get("/.well-known/mercure?topic=a")
        .header("authorization", "Bearer not.a.jwt")
        .body(Body::empty())
        .unwrap();
    expect(
        call(&app, garbage).await,
        401,
        "invalid_token",
        "garbage token",
    );
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJtZXJjdXJlIjp7InB1Ymxpc2giOlsiKiJdfX0.";
    let none_alg = Request::post("/.well-known/mercure")
        .header("authorization", format!("Bearer {unsigned}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("topic=a"))
        .unwrap();
    expect(call(&app, none_alg).await, 401, "invalid_token", "alg none");
    let no_token = Request::post("/.well-known/mercure")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("topic=a"))
        .unwrap();
    expect(
        call(&app, no_token).await,
        401,
        "missing_token",
        "publish without a token",
    );
}

#[tokio::test]
async fn bad_publishes_get_specific_errors() {
    let app = app(Options {
        max_topics_per_update: Some(2),
        ..Options::default()
    })
    .await;
    let cases: [(&str, u16, &str, &str); 12] = [
        ("data=x", 400, "missing_topic", "no topic"),
        ("topic=a&id=x%0Ay", 400, "invalid_input", "LF in id"),
        ("topic=a&id=x%0Dy", 400, "invalid_input", "CR in id"),
        ("topic=a&type=x%00y", 400, "invalid_input", "NUL in type"),
        ("topic=a&type=x%0Ay", 400, "invalid_input", "LF in type"),
        (
            "topic=a&type=mercure",
            400,
            "invalid_input",
            "the hub's own type",
        ),
        (
            "topic=a&retry=soon",
            400,
            "invalid_input",
            "retry not a number",
        ),
        ("topic=a&data=1&data=2", 400, "invalid_input", "data twice"),
        ("topic=a&data=%FF", 400, "invalid_encoding", "invalid UTF-8"),
        (
            "topic=a&topic=b&topic=c",
            400,
            "too_many_topics",
            "too many topics",
        ),
        (
            "topic=%2F.well-known%2Fmercure%2Fsubscriptions%2Fx",
            403,
            "forbidden",
            "reserved topic",
        ),
        (
            "topic=https%3A%2F%2Fh%2F.well-known%2Fmercure",
            403,
            "forbidden",
            "reserved absolute topic",
        ),
    ];
    for (form, status, code, case) in cases {
        expect(call(&app, post_form(form)).await, status, code, case);
    }
    // Mercure hubs accept a publisher's id twice; resuming starts after the newest one.
    for _ in 0..2 {
        let ok = call(&app, post_form("topic=a&id=same")).await;
        assert_eq!((ok.0.as_u16(), ok.1.as_str()), (200, Some("same")));
    }
    let big = format!("topic=a&data={}", "x".repeat(2000));
    expect(
        call(&app, post_form(big)).await,
        413,
        "body_too_large",
        "body over max-body-bytes",
    );
    let json_body = Request::post("/.well-known/mercure")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", publisher()))
        .body(Body::from("{}"))
        .unwrap();
    expect(
        call(&app, json_body).await,
        415,
        "unsupported_media_type",
        "JSON to the form endpoint",
    );
}

#[tokio::test]
async fn bad_session_events_get_specific_errors() {
    let app = app(Options {
        max_topics_per_update: Some(2),
        ..Options::default()
    })
    .await;
    let post = |content_type: &str, body: String| {
        Request::post("/sse/events")
            .header("content-type", content_type)
            .header("authorization", format!("Bearer {}", publisher()))
            .body(Body::from(body))
            .unwrap()
    };
    expect(
        call(&app, post("application/json", "{not json".into())).await,
        400,
        "invalid_json",
        "broken JSON",
    );
    expect(
        call(&app, post("application/json", "[]".into())).await,
        400,
        "invalid_json",
        "not an object",
    );
    expect(
        call(
            &app,
            post(
                "application/json",
                r#"{"sessionId":"","eventName":"e","payload":1}"#.into(),
            ),
        )
        .await,
        400,
        "invalid_input",
        "empty session",
    );
    // Exactly one of sessionId, sessionIds and broadcast names the recipients.
    let recipients = [
        (r#""eventName":"e""#, "missing_session", "no recipient"),
        (
            r#""sessionIds":[],"eventName":"e""#,
            "missing_session",
            "no session in the list",
        ),
        (
            r#""sessionId":"a","sessionIds":["b"],"eventName":"e""#,
            "invalid_input",
            "one session and a list",
        ),
        (
            r#""sessionId":"a","broadcast":true,"eventName":"e""#,
            "invalid_input",
            "one session and everyone",
        ),
        (
            r#""sessionIds":["a","b\u0001"],"eventName":"e""#,
            "invalid_input",
            "a bad session in the list",
        ),
        (
            r#""sessionIds":["a","b","c"],"eventName":"e""#,
            "too_many_topics",
            "more sessions than max-topics-per-update",
        ),
    ];
    for (fields, code, case) in recipients {
        let body = format!(r#"{{{fields},"payload":1}}"#);
        expect(
            call(&app, post("application/json", body)).await,
            400,
            code,
            case,
        );
    }
    expect(
        call(&app, post("text/plain", "{}".into())).await,
        415,
        "unsupported_media_type",
        "text body",
    );
    let big = format!(
        r#"{{"sessionId":"s","eventName":"e","payload":"{}"}}"#,
        "x".repeat(2000)
    );
    expect(
        call(&app, post("application/json", big)).await,
        413,
        "body_too_large",
        "too large",
    );
    let describe = |uri: &str| {
        Request::get(uri)
            .header("authorization", format!("Bearer {}", publisher()))
            .body(Body::empty())
            .unwrap()
    };
    expect(
        call(&app, describe("/sse/sessions/%FF")).await,
        400,
        "invalid_input",
        "session id not UTF-8",
    );
    expect(
        call(&app, describe("/sse/sessions/a%0Ab")).await,
        400,
        "invalid_input",
        "control character in session id",
    );
    let (status, body, _) = call(&app, describe("/sse/sessions/nobody")).await;
    assert_eq!((status.as_u16(), &body["connected"]), (200, &json!(false)));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_json() {
    let app = app(Options::default()).await;
    expect(
        call(&app, get("/nope")).await,
        404,
        "not_found",
        "unknown path",
    );
    let put = Request::put("/.well-known/mercure")
        .body(Body::empty())
        .unwrap();
    expect(call(&app, put).await, 405, "method_not_allowed", "PUT");
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = app(Options::default()).await;
    let (s, body, _) = call(&app, get("/healthz")).await;
    assert_eq!((s.as_u16(), body["status"].as_str()), (200, Some("ok")));
    let (s, body, _) = call(&app, get("/readyz")).await;
    assert_eq!(
        (s.as_u16(), body["status"].as_str(), body["bus"].as_str()),
        (200, Some("ready"), Some("memory"))
    );
    let (s, body, headers) = call(&app, get("/metrics")).await;
    assert_eq!(s, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = body.as_str().unwrap();
    for metric in [
        "tidings_connections",
        "tidings_subscribers",
        "tidings_updates_published_total",
        "tidings_updates_delivered_total",
        "tidings_delivery_latency_seconds_bucket",
    ] {
        assert!(text.contains(metric), "{metric} missing");
    }
}

/// Signs `claims` with `key` under any algorithm `jsonwebtoken` knows, including ones the hub
/// is not configured for.
fn sign(alg: jsonwebtoken::Algorithm, key: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

fn publish_with(token: &str, form: &str) -> Request<Body> {
    Request::post("/.well-known/mercure")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(form.to_owned()))
        .unwrap()
}

fn subscribe_with(token: &str, uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn tokens_with_other_algorithms_claims_or_keys_are_refused() {
    use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
    let app = app(Options::default()).await;
    let grant = json!({"mercure": {"publish": ["*"]}});
    for alg in [HS384, HS512] {
        expect(
            call(
                &app,
                publish_with(&sign(alg, KEY, grant.clone()), "topic=a"),
            )
            .await,
            401,
            "invalid_token",
            &format!("{alg:?} where HS256 is configured"),
        );
    }
    expect(
        call(
            &app,
            publish_with(&sign(HS256, "another key", grant), "topic=a"),
        )
        .await,
        401,
        "invalid_token",
        "signed with another key",
    );
    let cases = [
        (json!({}), 403, "forbidden", "no mercure claim"),
        (json!({"mercure": {}}), 403, "forbidden", "no publish claim"),
        (
            json!({"mercure": {"publish": []}}),
            403,
            "forbidden",
            "empty publish claim",
        ),
        (
            json!({"mercure": {"publish": ["/other/{x}"]}}),
            403,
            "forbidden",
            "a claim for other topics",
        ),
        (
            json!({"mercure": {"publish": "*"}}),
            401,
            "invalid_token",
            "publish claim not a list",
        ),
        (
            json!({"mercure": {"publish": ["*"]}, "exp": "tomorrow"}),
            401,
            "invalid_token",
            "exp not a number",
        ),
        (
            json!({"mercure": {"publish": ["{unclosed"]}}),
            401,
            "invalid_token",
            "malformed selector in the claim",
        ),
    ];
    for (claims, status, code, case) in cases {
        let token = sign(HS256, KEY, claims);
        expect(
            call(&app, publish_with(&token, "topic=/books/1")).await,
            status,
            code,
            case,
        );
    }
}

#[tokio::test]
async fn tokens_that_never_expire_are_served() {
    let app = app(Options::default()).await;
    // u64::MAX overflows any clock; 10^18 seconds is far beyond tokio's timers.
    for exp in [json!(u64::MAX), json!(1_000_000_000_000_000_000u64)] {
        let claims = json!({"mercure": {"subscribe": ["*"]}, "exp": exp});
        let token = sign(jsonwebtoken::Algorithm::HS256, KEY, claims);
        let response = app
            .clone()
            .oneshot(subscribe_with(&token, "/.well-known/mercure?topic=a"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "exp {exp}");
    }
}

#[tokio::test]
async fn a_token_for_one_role_is_refused_in_the_other() {
    let app = app(Options {
        jwt_key: None,
        publisher_jwt_key: Some("publisher key".into()),
        subscriber_jwt_key: Some("subscriber key".into()),
        ..Options::default()
    })
    .await;
    let both = json!({"mercure": {"publish": ["*"], "subscribe": ["*"]}});
    let subscriber = sign(
        jsonwebtoken::Algorithm::HS256,
        "subscriber key",
        both.clone(),
    );
    expect(
        call(&app, publish_with(&subscriber, "topic=a")).await,
        401,
        "invalid_token",
        "a subscriber's token replayed to publish",
    );
    let publisher = sign(jsonwebtoken::Algorithm::HS256, "publisher key", both);
    expect(
        call(
            &app,
            subscribe_with(&publisher, "/.well-known/mercure?topic=a"),
        )
        .await,
        401,
        "invalid_token",
        "a publisher's token replayed to subscribe",
    );
    let ok = app
        .clone()
        .oneshot(publish_with(&publisher, "topic=a"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn pathological_selectors_are_refused_or_matched_in_bounded_time() {
    let strict = app(Options {
        anonymous: Some(true),
        ..Options::default()
    })
    .await;
    // A URI holds at most 64 KiB, so 5,000 distinct short selectors are about as many as a
    // query has.
    let many = |n: usize| {
        let query: Vec<String> = (0..n).map(|i| format!("topic={i}")).collect();
        format!("/.well-known/mercure?{}", query.join("&"))
    };
    expect(
        call(&strict, get(&many(5_000))).await,
        400,
        "too_many_selectors",
        "5,000 selectors past the default cap",
    );
    let seventeen = "%7Ba%7D".repeat(17);
    let nested = format!("{}x{}", "%7B".repeat(1000), "%7D".repeat(1000));
    let groups = ":a/".repeat(17);
    let cases = [
        (format!("topic={seventeen}"), "17 template expressions"),
        (format!("topic={nested}"), "1,000 nested braces"),
        (
            format!("topic=%7B{}%7D", "x,".repeat(500)),
            "500 variables in one expression",
        ),
        (
            format!("match_urlpattern=/{groups}"),
            "17 URL pattern groups",
        ),
        ("match_urlpattern=/(a%2B)%2B".to_owned(), "a regexp group"),
    ];
    for (query, case) in cases {
        expect(
            call(&strict, get(&format!("/.well-known/mercure?{query}"))).await,
            400,
            "invalid_input",
            case,
        );
    }
    // With the cap raised, the same request opens a stream: compiling and matching are bounded.
    let lax = app(Options {
        anonymous: Some(true),
        max_selectors: Some(10_000),
        ..Options::default()
    })
    .await;
    let started = std::time::Instant::now();
    let response = lax.clone().oneshot(get(&many(5_000))).await.unwrap();
    assert_eq!(response.status(), 200);
    let sixteen = format!("/.well-known/mercure?topic={}", "%7Ba%7D".repeat(16));
    let response = lax.clone().oneshot(get(&sixteen)).await.unwrap();
    assert_eq!(response.status(), 200, "16 expressions are allowed");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[tokio::test]
async fn pathological_publishes_get_specific_errors() {
    let app = app(Options {
        max_body_bytes: Some(1 << 20),
        ..Options::default()
    })
    .await;
    let topics: Vec<String> = (0..10_000).map(|i| format!("topic=/t/{i}")).collect();
    expect(
        call(&app, post_form(topics.join("&"))).await,
        400,
        "too_many_topics",
        "10,000 topics",
    );
    for (form, case) in [
        ("topic=a%0Ab", "LF in a topic"),
        ("topic=a%00b", "NUL in a topic"),
        ("topic=a%1Bb", "ESC in a topic"),
        ("topic=", "empty topic"),
    ] {
        expect(
            call(&app, post_form(form)).await,
            400,
            "invalid_input",
            case,
        );
    }
    expect(
        call(&app, post_form("topic=a&data=%C0%AF")).await,
        400,
        "invalid_encoding",
        "overlong UTF-8",
    );
    expect(
        call(&app, post_form(&b"topic=a&data=\xff\xfe"[..])).await,
        400,
        "invalid_encoding",
        "raw bytes that are not UTF-8",
    );
    let json = |body: Vec<u8>| {
        Request::post("/sse/events")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", publisher()))
            .body(Body::from(body))
            .unwrap()
    };
    let mut not_utf8 = br#"{"sessionId":"s","eventName":"e","payload":""#.to_vec();
    not_utf8.extend_from_slice(b"\xff\xfe\"}");
    let deep = format!(
        r#"{{"sessionId":"s","eventName":"e","payload":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases = [
        (not_utf8, "invalid_json", "invalid UTF-8 in JSON"),
        (
            deep.into_bytes(),
            "invalid_json",
            "JSON nested 100,000 deep",
        ),
        (
            br#"{"sessionId":"s\u0000","eventName":"e","payload":1}"#.to_vec(),
            "invalid_input",
            "NUL in a session id",
        ),
    ];
    for (body, code, case) in cases {
        expect(call(&app, json(body)).await, 400, code, case);
    }
}
