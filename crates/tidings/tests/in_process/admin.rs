//! The admin API on one instance, without a socket: who may call it, the bad inputs it
//! refuses, and what it answers about a live session stream — down to ending it. (The same
//! calls across instances on every bus: the bus contract and `tests/cluster/admin.rs`.)

use std::time::Duration;

use serde_json::json;

use crate::app::{publisher_token, token, App, KEY};

/// The admin key of these tests' instances.
const ADMIN_KEY: &str = "an-admin-key-of-at-least-thirty-two-chars";

async fn app() -> App {
    App::start(&["--jwt-key", KEY, "--admin-key", ADMIN_KEY]).await
}

#[tokio::test]
async fn only_the_admin_key_or_an_admin_token_opens_it() {
    let app = app().await;
    let admin_token = token(json!({"tidings": {"admin": true}}));
    assert_eq!(app.get_as("/admin/cluster", None).await.status, 401);
    // A publisher is no admin; neither is a token that says so unsigned by the hub's key.
    let answer = app.get_as("/admin/cluster", Some(&publisher_token())).await;
    assert_eq!(answer.status, 403);
    assert!(answer.json().await["detail"]
        .as_str()
        .unwrap()
        .contains("admin-key"));
    let wrong = format!("{ADMIN_KEY}x");
    assert_eq!(app.get_as("/admin/cluster", Some(&wrong)).await.status, 401);
    for credential in [ADMIN_KEY, admin_token.as_str()] {
        let answer = app.get_as("/admin/cluster", Some(credential)).await;
        assert_eq!(answer.status, 200);
        let body = answer.json().await;
        assert_eq!(body["totals"]["instances"], 1, "{body}");
        assert_eq!(body["instances"][0]["answering"], true, "{body}");
        assert_eq!(body["instances"][0]["bus"], "connected", "{body}");
    }
    // An unknown admin path is a 404 for an admin, and tells nothing to anyone else.
    assert_eq!(app.get_as("/admin/nope", Some(ADMIN_KEY)).await.status, 404);
    assert_eq!(app.get_as("/admin/nope", None).await.status, 401);
    // A short key is refused at start-up, with what to do.
    let short = tidings::config::Options {
        admin_key: Some("short".into()),
        ..Default::default()
    };
    let refused = short.resolve().unwrap_err().to_string();
    assert!(refused.contains("at least 32 characters"), "{refused}");
}

#[tokio::test]
async fn bad_admin_calls_get_specific_errors() {
    let app = app().await;
    let post = async |uri: &str, body: serde_json::Value| {
        let answer = app.post_json(uri, &body, Some(ADMIN_KEY)).await;
        let status = answer.status;
        (status, answer.json().await)
    };
    let cases = [
        ("/admin/disconnect", json!({}), "missing_target"),
        (
            "/admin/disconnect",
            json!({"sessionId": "a", "subject": "b"}),
            "invalid_input",
        ),
        (
            "/admin/disconnect",
            json!({"sessionId": "a", "force": true}),
            "invalid_json",
        ),
        (
            "/admin/disconnect",
            json!({"subject": "a", "reason": "x".repeat(201)}),
            "invalid_input",
        ),
        (
            "/admin/disconnect",
            json!({"subject": "a", "reason": "a\nb"}),
            "invalid_input",
        ),
        (
            "/admin/disconnect",
            json!({"sessionId": "a\u{1}b"}),
            "invalid_input",
        ),
        (
            "/admin/disconnect",
            json!({"streamId": ""}),
            "invalid_input",
        ),
        (
            "/admin/presence",
            json!({"sessionIds": []}),
            "invalid_input",
        ),
        (
            "/admin/presence",
            json!({"sessionIds": vec!["s"; 1001]}),
            "invalid_input",
        ),
        (
            "/admin/presence",
            json!({"sessionIds": ["ok", "x".repeat(300)]}),
            "invalid_input",
        ),
        (
            "/admin/presence",
            json!({"sessions": ["a"]}),
            "invalid_json",
        ),
    ];
    for (uri, body, code) in cases {
        let (status, answer) = post(uri, body.clone()).await;
        assert_eq!(status, 400, "{uri} {body}: {answer}");
        assert_eq!(answer["error"], code, "{uri} {body}: {answer}");
        assert!(answer["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    for uri in [
        "/admin/streams",
        "/admin/streams?sessionId=a&subject=b",
        "/admin/streams?subject=a&subject=b",
        "/admin/selectors?prefix=a&prefix=b",
    ] {
        let answer = app.get_as(uri, Some(ADMIN_KEY)).await;
        assert_eq!(answer.status, 400, "{uri}");
    }
}

#[tokio::test]
async fn it_finds_a_session_stream_and_ends_it_with_its_farewell() {
    let app = app().await;
    let alice = token(json!({"sub": "alice"}));
    let stream = app
        .get_as("/sse/event-stream?eventName=e", Some(&alice))
        .await;
    assert_eq!(stream.status, 200);
    let body = tokio::spawn(stream.text());
    let presence = app
        .post_json(
            "/admin/presence",
            &json!({"sessionIds": ["alice", "bob"]}),
            Some(ADMIN_KEY),
        )
        .await
        .json()
        .await;
    assert_eq!(presence["sessions"][0]["connected"], true, "{presence}");
    assert_eq!(presence["sessions"][0]["streams"], 1, "{presence}");
    assert_eq!(presence["sessions"][1]["connected"], false, "{presence}");
    assert_eq!(presence["missing"], json!([]));
    let streams = app
        .get_as("/admin/streams?subject=alice", Some(ADMIN_KEY))
        .await
        .json()
        .await;
    assert_eq!(streams["streams"][0]["session"], "alice", "{streams}");
    assert_eq!(streams["streams"][0]["subject"], "alice", "{streams}");
    let selectors = app
        .get_as(
            "/admin/selectors?prefix=urn:tidings:session:",
            Some(ADMIN_KEY),
        )
        .await
        .json()
        .await;
    assert_eq!(
        selectors["selectors"],
        json!([{"selector": "urn:tidings:session:alice", "subscribers": 1}]),
        "{selectors}"
    );
    let ended = app
        .post_json(
            "/admin/disconnect",
            &json!({"subject": "alice", "reason": "logged out"}),
            Some(ADMIN_KEY),
        )
        .await
        .json()
        .await;
    assert_eq!(ended["streams"], 1, "{ended}");
    let text = tokio::time::timeout(Duration::from_secs(5), body)
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(
        text.ends_with(
            "event: tidings-disconnect\ndata: {\"reason\":\"logged out\",\"reconnect\":false}\n\n"
        ),
        "{text:?}"
    );
    // Gone: nothing left to end.
    let again = app
        .post_json(
            "/admin/disconnect",
            &json!({"subject": "alice"}),
            Some(ADMIN_KEY),
        )
        .await
        .json()
        .await;
    assert_eq!(again["streams"], 0, "{again}");
}

#[tokio::test]
async fn the_operator_page_is_served_only_where_asked() {
    let off = app().await;
    assert_eq!(off.get("/admin/", &[]).await.status, 404);
    let on = App::start(&[
        "--jwt-key",
        KEY,
        "--admin-key",
        ADMIN_KEY,
        "--admin-page",
        "on",
    ])
    .await;
    let page = on.get("/admin/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert!(page
        .text()
        .await
        .contains("<title>Tidings — operator</title>"));
    // Loopback: not to a request that came through a proxy, nor to one from no known peer.
    let loopback = App::start(&[
        "--jwt-key",
        KEY,
        "--admin-key",
        ADMIN_KEY,
        "--admin-page",
        "loopback",
    ])
    .await;
    assert_eq!(loopback.get("/admin/", &[]).await.status, 404);
    let proxied = [("x-forwarded-for", "203.0.113.9")];
    assert_eq!(loopback.get("/admin/", &proxied).await.status, 404);
}

#[tokio::test]
async fn the_admin_key_publishes_and_sees_private_updates() {
    let app = app().await;
    let published = app
        .post_form(
            "/.well-known/mercure",
            &[
                ("topic", "/orders/1"),
                ("data", "secret"),
                ("private", "on"),
            ],
            &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
        )
        .await;
    assert_eq!(published.status, 200);
    let id = published.text().await;
    let stream = app
        .get_as(
            "/.well-known/mercure?topic=/orders/1&lastEventID=earliest",
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(stream.status, 200);
    let mut body = stream.into_body().into_data_stream();
    let mut seen = String::new();
    while !seen.contains("data: secret") {
        let chunk = tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut body),
        )
        .await
        .expect("the private update")
        .unwrap()
        .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(&format!("id: {id}")), "{seen}");
}
