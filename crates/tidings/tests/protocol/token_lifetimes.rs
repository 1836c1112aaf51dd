//! Token lifetimes against the real binary: a stream ends with a `retry:` hint when its
//! token expires (unless `close-expired-streams` is off); `jwt-leeway` is the clock skew
//! tolerated on `exp`, `nbf` and `iat`; keys rotate on SIGHUP without a restart, and a token
//! signed with the old key no longer opens a stream while the streams it opened go on.

use std::time::{Duration, Instant};

use crate::common::{publish, token, token_with, unix_time, Hub, Stream, KEY};
use serde_json::json;

fn stream_url(hub: &Hub, topic: &str) -> String {
    hub.url(&format!("/.well-known/mercure?topic={topic}"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_stream_ends_with_a_retry_hint_when_its_token_expires() {
    let hub = Hub::start(&["--jwt-key", KEY, "--jwt-leeway", "0"]);
    let short = token(json!({"exp": unix_time(2), "mercure": {"subscribe": ["*"]}}));
    let lasting = token(json!({"mercure": {"subscribe": ["*"]}}));
    let opened = Instant::now();
    let mut expiring = Stream::open(
        &stream_url(&hub, "t"),
        &[("authorization", &bearer(&short))],
    )
    .await;
    let mut open = Stream::open(
        &stream_url(&hub, "t"),
        &[("authorization", &bearer(&lasting))],
    )
    .await;
    let events = expiring.until_closed().await;
    assert!(events.is_empty(), "{events:?}");
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_secs(5),
        "ended after {lived:?}"
    );
    assert!(
        expiring.raw_text().contains("retry: "),
        "{}",
        expiring.raw_text()
    );
    assert_eq!(hub.metric("tidings_streams_expired_total").await, 1.0);
    // The stream whose token does not expire is still there.
    let (status, id) = publish(
        &hub,
        Some(&crate::common::publisher_token()),
        &[("topic", "t"), ("data", "x")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(open.next().await.id, id);
    // Reconnecting with the expired token is refused.
    let again = Stream::try_open(
        &stream_url(&hub, "t"),
        &[("authorization", &bearer(&short))],
    )
    .await;
    assert_eq!(again.status, 401);
}

#[tokio::test]
async fn with_close_expired_streams_off_a_stream_outlives_its_token() {
    let hub = Hub::start(&[
        "--jwt-key",
        KEY,
        "--jwt-leeway",
        "0",
        "--close-expired-streams",
        "false",
    ]);
    let short = token(json!({"exp": unix_time(1), "mercure": {"subscribe": ["*"]}}));
    let mut stream = Stream::open(
        &stream_url(&hub, "t"),
        &[("authorization", &bearer(&short))],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, id) = publish(
        &hub,
        Some(&crate::common::publisher_token()),
        &[("topic", "t"), ("data", "x")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(stream.next().await.id, id);
    assert_eq!(hub.metric("tidings_streams_expired_total").await, 0.0);
}

#[tokio::test]
async fn the_leeway_is_the_clock_skew_tolerated_on_exp_nbf_and_iat() {
    let hub = Hub::start(&["--jwt-key", KEY, "--jwt-leeway", "30"]);
    let cases = [
        (
            json!({"exp": unix_time(-10)}),
            200,
            "expired within the leeway",
        ),
        (
            json!({"exp": unix_time(-60)}),
            401,
            "expired beyond the leeway",
        ),
        (
            json!({"nbf": unix_time(10)}),
            200,
            "not yet valid, within the leeway",
        ),
        (
            json!({"nbf": unix_time(60)}),
            401,
            "not yet valid, beyond the leeway",
        ),
        (
            json!({"iat": unix_time(10)}),
            200,
            "issued in the future, within the leeway",
        ),
        (
            json!({"iat": unix_time(60)}),
            401,
            "issued in the future, beyond the leeway",
        ),
    ];
    for (claims, status, case) in cases {
        let token = token(claims);
        let stream = Stream::try_open(
            &stream_url(&hub, "t"),
            &[("authorization", &bearer(&token))],
        )
        .await;
        assert_eq!(stream.status.as_u16(), status, "{case}");
    }
}

#[tokio::test]
async fn keys_rotate_on_sighup_and_streams_opened_with_the_old_key_go_on() {
    let old = "the-old-key-of-a-decent-length";
    let new = "the-new-key-of-a-decent-length";
    let hub = Hub::start_with(&[], &[], Some(&format!("jwt-key = {old:?}\n")));
    let subscriber = |key: &str| token_with(key, json!({"mercure": {"subscribe": ["*"]}}));
    let publisher = |key: &str| token_with(key, json!({"mercure": {"publish": ["*"]}}));
    let mut before = Stream::open(
        &stream_url(&hub, "k"),
        &[("authorization", &bearer(&subscriber(old)))],
    )
    .await;

    std::fs::write(
        hub.dir().join("tidings.toml"),
        format!("jwt-key = {new:?}\n"),
    )
    .unwrap();
    hub.hang_up();
    hub.wait_for_log("JWT keys reloaded").await;
    let refused = Stream::try_open(
        &stream_url(&hub, "k"),
        &[("authorization", &bearer(&subscriber(old)))],
    )
    .await;
    assert_eq!(refused.status, 401, "a token replayed with the old key");
    let (status, _) = publish(
        &hub,
        Some(&publisher(old)),
        &[("topic", "k"), ("data", "x")],
    )
    .await;
    assert_eq!(status, 401);
    let mut after = Stream::open(
        &stream_url(&hub, "k"),
        &[("authorization", &bearer(&subscriber(new)))],
    )
    .await;
    let (status, id) = publish(
        &hub,
        Some(&publisher(new)),
        &[("topic", "k"), ("data", "y")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        before.next().await.id,
        id,
        "the stream opened before the rotation"
    );
    assert_eq!(after.next().await.id, id);

    // A configuration that cannot be used is not taken: the new key stays.
    std::fs::write(hub.dir().join("tidings.toml"), "auth = \"none\"\n").unwrap();
    hub.hang_up();
    hub.wait_for_log("JWT keys not reloaded").await;
    std::fs::write(hub.dir().join("tidings.toml"), "jwt-keey = 1\n").unwrap();
    hub.hang_up();
    hub.wait_for_log("configuration not reloaded").await;
    let (status, _) = publish(
        &hub,
        Some(&publisher(new)),
        &[("topic", "k"), ("data", "z")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = publish(&hub, None, &[("topic", "k"), ("data", "z")]).await;
    assert_eq!(status, 401, "still not in --auth none");
}
