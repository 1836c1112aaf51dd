//! The protocols' answers to one request, through the router (no socket, no process): tokens
//! required, checked and scoped; the token cookie's origin check; refusals of the session and
//! subscriptions APIs; stream headers; the page at `/`. What needs time, several streams or a
//! real connection stays in the `protocol` tests.

use serde_json::json;

use crate::app::{publisher_token, subscribe_uri, token, App, KEY};

const HUB: &str = "/.well-known/mercure";

#[tokio::test]
async fn stream_headers_are_set_for_proxies_and_caches() {
    let app = App::start(&["--jwt-key", KEY, "--anonymous"]).await;
    let s = app.get(&subscribe_uri(&["x"]), &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    assert!(s.headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-cache"));
    assert_eq!(s.headers["last-event-id"], "earliest", "no update yet");
}

#[tokio::test]
async fn tokens_are_required_checked_and_scoped() {
    let app = App::start(&["--jwt-key", KEY]).await;
    let topic = "https://example.com/t/1";
    let publish =
        async |bearer: Option<&str>, topics: &[&str]| app.publish_as(bearer, topics).await;
    // Subscribers need a token unless --anonymous.
    assert_eq!(app.get(&subscribe_uri(&[topic]), &[]).await.status, 401);
    // Expired and badly signed tokens are refused.
    let expired = token(json!({"exp": 1_000_000, "mercure": {"subscribe": ["*"]}}));
    let s = app.get_as(&subscribe_uri(&[topic]), Some(&expired)).await;
    assert_eq!(s.status, 401);
    let forged = tidings::auth::mint(
        tidings::auth::JwtAlg::Hs256,
        "another-key",
        &serde_json::from_value(json!({"mercure": {"publish": ["*"]}})).unwrap(),
    )
    .unwrap();
    let refused = publish(Some(&forged), &[topic]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json().await["error"], "invalid_token");
    assert_eq!(publish(None, &[topic]).await.status, 401);
    // A valid token must cover every topic.
    let narrow = token(json!({"mercure": {"publish": [topic]}}));
    assert_eq!(publish(Some(&narrow), &[topic]).await.status, 200);
    let wider = publish(Some(&narrow), &[topic, "https://example.com/x"]).await;
    assert_eq!(wider.status, 403);
    // A subscriber-only token cannot publish.
    let subscriber = token(json!({"mercure": {"subscribe": ["*"]}}));
    assert_eq!(publish(Some(&subscriber), &[topic]).await.status, 403);
}

#[tokio::test]
async fn the_page_at_root_loads() {
    let app = App::start(&["--auth", "none"]).await;
    let page = app.get("/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = page.text().await;
    assert!(body.contains("EventSource") && body.contains("/.well-known/mercure"));
}

#[tokio::test]
async fn the_token_cookie_publishes_only_from_a_listed_origin() {
    let app = App::start(&["--jwt-key", KEY, "--publish-origin", "https://app.example"]).await;
    let topic = [("topic", "https://example.com/csrf/1")];
    let cookie = format!("mercureAuthorization={}", publisher_token());
    let post = async |origin: Option<&str>| {
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend(origin.map(|o| ("origin", o)));
        app.post_form(HUB, &topic, &headers).await.status
    };
    assert_eq!(post(None).await, 403, "no origin");
    assert_eq!(
        post(Some("https://evil.example")).await,
        403,
        "foreign origin"
    );
    assert_eq!(post(Some("https://app.example")).await, 200);
    // The header is not a browser's ambient credential: no origin check.
    let with_header = app
        .publish_as(Some(&publisher_token()), &[topic[0].1])
        .await;
    assert_eq!(with_header.status, 200);
}

#[tokio::test]
async fn templates_with_too_many_expressions_are_refused_before_compiling() {
    let app = App::start(&["--jwt-key", KEY, "--anonymous"]).await;
    let huge = "{a}".repeat(17);
    assert_eq!(app.get(&subscribe_uri(&[&huge]), &[]).await.status, 400);
    // Without credentials, nothing is compiled: the answer is 401 whatever the selector.
    let strict = App::start(&["--jwt-key", KEY]).await;
    assert_eq!(strict.get(&subscribe_uri(&[&huge]), &[]).await.status, 401);
}

#[tokio::test]
async fn session_api_refusals_are_specific() {
    let app = App::start(&["--jwt-key", KEY, "--anonymous"]).await;
    let stream =
        async |uri: &str, token: Option<String>| app.get_as(uri, token.as_deref()).await.status;
    // No token: the session cannot be known.
    assert_eq!(stream("/sse/event-stream?eventName=e", None).await, 401);
    // A token without a session claim.
    let nosub = token(json!({"mercure": {"subscribe": ["*"]}}));
    assert_eq!(
        stream("/sse/event-stream?eventName=e", Some(nosub)).await,
        403
    );
    // No event name: every event of the session; a bad one among several is named.
    let sub = token(json!({"sub": "x"}));
    assert_eq!(stream("/sse/event-stream", Some(sub.clone())).await, 200);
    let answer = app
        .get_as("/sse/event-stream?eventName=a&eventName=b%0Ac", Some(&sub))
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.json().await["detail"]
        .as_str()
        .is_some_and(|d| d.contains("event")));
    // Publishing needs a publisher token covering the session topic.
    let send = async |bearer: Option<&str>, body: serde_json::Value| {
        let answer = app.post_json("/sse/events", &body, bearer).await;
        (answer.status, answer.json().await)
    };
    let p = publisher_token();
    let body = json!({"sessionId": "x", "eventName": "e", "payload": 1});
    assert_eq!(send(None, body.clone()).await.0, 401);
    let narrow = token(json!({"mercure": {"publish": ["https://example.com/{x}"]}}));
    assert_eq!(send(Some(&narrow), body.clone()).await.0, 403);
    let scoped = token(json!({"mercure": {"publish": ["urn:tidings:session:{id}"]}}));
    assert_eq!(send(Some(&scoped), body).await.0, 200);
    // Bad bodies.
    let (status, err) = send(
        Some(&p),
        json!({"sessionId": "x", "eventName": "a\nb", "payload": 1}),
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_input"))
    );
    let (status, err) = send(Some(&p), json!({"sessionId": "x", "payload": 1})).await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_json")));
    let (status, _) = send(
        Some(&p),
        json!({"sessionId": "x", "eventName": "e", "payload": 1, "extra": true}),
    )
    .await;
    assert_eq!(status, 400, "unknown fields are refused");
    // The registry needs a publisher token that may write to the session.
    let registry = async |bearer: Option<&str>| app.get_as("/sse/sessions/x", bearer).await.status;
    assert_eq!(registry(None).await, 401);
    assert_eq!(registry(Some(&narrow)).await, 403);
    assert_eq!(registry(Some(&scoped)).await, 200);
}

#[tokio::test]
async fn the_subscriptions_api_needs_a_matching_claim_and_the_option() {
    let app = App::start(&["--jwt-key", KEY, "--anonymous", "--subscriptions"]).await;
    let api = "/.well-known/mercure/subscriptions";
    let unauthenticated = app.get(api, &[]).await;
    assert_eq!(unauthenticated.status, 401);
    assert_eq!(unauthenticated.json().await["error"], "missing_token");
    let other = token(json!({"mercure": {"subscribe": ["https://example.com/{x}"]}}));
    assert_eq!(app.get_as(api, Some(&other)).await.status, 403);

    let off = App::start(&["--jwt-key", KEY]).await;
    let admin = token(json!({"mercure": {"subscribe": ["*"]}}));
    let answer = off.get_as(api, Some(&admin)).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json().await["error"], "not_found");
}

/// A Mercure 1.0 access token (`typ: at+jwt`) with these claims, signed with the test key.
fn access_token(claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    let key = jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test]
async fn mercure_1_0_access_tokens_publish_with_issuer_and_audience_checked() {
    let audience = "https://hub.example/.well-known/mercure";
    let app = App::start(&[
        "--jwt-key",
        KEY,
        "--jwt-issuer",
        "https://id.example",
        "--jwt-audience",
        audience,
    ])
    .await;
    let grant = |iss: &str, aud: &str| {
        access_token(json!({
            "iss": iss, "aud": aud, "exp": 4_102_444_800u64,
            "authorization_details": [{
                "type": tidings::auth::AUTHORIZATION_DETAIL_TYPE,
                "actions": ["publish"],
                "topics": [{"match": "https://example.com/books/:id", "match_type": "urlpattern"}],
            }],
        }))
    };
    let good = grant("https://id.example", audience);
    let topic = "https://example.com/books/1";
    assert_eq!(app.publish_as(Some(&good), &[topic]).await.status, 200);
    let outside = app
        .publish_as(Some(&good), &["https://example.com/films/1"])
        .await;
    assert_eq!(outside.status, 403);
    for (token, says) in [
        (grant("https://evil.example", audience), "iss"),
        (grant("https://id.example", "https://other.example"), "aud"),
    ] {
        let refused = app.publish_as(Some(&token), &[topic]).await;
        assert_eq!(refused.status, 401);
        let body = refused.json().await;
        assert_eq!(body["error"], "invalid_token");
        assert!(body["detail"].as_str().unwrap().contains(says), "{body}");
    }
}

#[tokio::test]
async fn refusals_challenge_the_token_and_point_to_the_resource_metadata() {
    // Mercure 1.0 asks for RFC 6750 challenges with RFC 9728's resource_metadata.
    let app = App::start(&["--jwt-key", KEY, "--subscriptions"]).await;
    let host = [("host", "hub.example:8080")];
    let metadata =
        "http://hub.example:8080/.well-known/oauth-protected-resource/.well-known/mercure";
    let challenge = |answer: &crate::app::Answer| {
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let missing = app.get(&subscribe_uri(&["x"]), &host).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        challenge(&missing),
        format!("Bearer realm=\"tidings\", resource_metadata=\"{metadata}\"")
    );
    let forged = tidings::auth::mint(
        tidings::auth::JwtAlg::Hs256,
        "another-key",
        &serde_json::from_value(json!({"mercure": {"subscribe": ["*"]}})).unwrap(),
    )
    .unwrap();
    let bearer = format!("Bearer {forged}");
    let invalid = app
        .get(
            &subscribe_uri(&["x"]),
            &[host[0], ("authorization", &bearer)],
        )
        .await;
    assert_eq!(invalid.status, 401);
    assert!(challenge(&invalid).contains("error=\"invalid_token\", resource_metadata="));
    // A token that verifies but does not grant: 403 insufficient_scope.
    let narrow = token(json!({"mercure": {"publish": ["https://example.com/a"]}}));
    let outside = app
        .publish_as(Some(&narrow), &["https://example.com/b"])
        .await;
    assert_eq!(outside.status, 403);
    assert_eq!(outside.json().await["error"], "forbidden", "the code stays");
    let reader = token(json!({"mercure": {"subscribe": ["https://example.com/{x}"]}}));
    let api = app
        .get(
            "/.well-known/mercure/subscriptions",
            &[host[0], ("authorization", &format!("Bearer {reader}"))],
        )
        .await;
    assert_eq!(api.status, 403);
    assert!(challenge(&api).starts_with("Bearer realm=\"tidings\", error=\"insufficient_scope\""));

    // The metadata: the resource is the hub's URL as the request reached it.
    let document = app
        .get(
            "/.well-known/oauth-protected-resource/.well-known/mercure",
            &host,
        )
        .await;
    assert_eq!(document.status, 200);
    assert_eq!(document.headers["content-type"], "application/json");
    assert!(document.headers["vary"]
        .to_str()
        .unwrap()
        .contains("X-Forwarded-Host"));
    assert_eq!(
        document.json().await,
        json!({
            "resource": "http://hub.example:8080/.well-known/mercure",
            "bearer_methods_supported": ["header"],
            "authorization_details_types_supported": [tidings::auth::AUTHORIZATION_DETAIL_TYPE],
            "mercure_cookie": "__Secure-mercure_access_token",
            "mercure_subscriptions": true,
            "mercure_events_query": true,
            "mercure_matcher_types_supported": ["exact", "urlpattern"],
        })
    );
    // A forwarded host counts only from a trusted proxy.
    let forged = app
        .get(
            "/.well-known/oauth-protected-resource/.well-known/mercure",
            &[host[0], ("x-forwarded-host", "evil.example")],
        )
        .await;
    assert_eq!(
        forged.json().await["resource"],
        "http://hub.example:8080/.well-known/mercure"
    );
    // jwt-audience, when it is the hub's URL, is the resource (the audience tokens name).
    let audience = "https://hub.example/.well-known/mercure";
    let named = App::start(&["--jwt-key", KEY, "--jwt-audience", audience]).await;
    let document = named
        .get(
            "/.well-known/oauth-protected-resource/.well-known/mercure",
            &host,
        )
        .await;
    assert_eq!(document.json().await["resource"], audience);
    let refused = named.get(&subscribe_uri(&["x"]), &host).await;
    assert!(challenge(&refused).ends_with(
        "resource_metadata=\"https://hub.example/.well-known/oauth-protected-resource/.well-known/mercure\""
    ));
    // Without tokens there is nothing to describe.
    let open = App::start(&["--auth", "none"]).await;
    let none = open
        .get(
            "/.well-known/oauth-protected-resource/.well-known/mercure",
            &host,
        )
        .await;
    assert_eq!(none.status, 404);
}
