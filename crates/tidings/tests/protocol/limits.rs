//! Stream limits against the real binary: past `max-streams` new streams get 503, past
//! `max-streams-per-address` or `max-streams-per-session` 429, each with `Retry-After` and a
//! JSON body; each refusal is counted by limit; a stream that ends gives its place back.

use crate::common::{client, wait_for, Hub, Stream};
use serde_json::Value;

/// Opens `url` expecting a refusal; returns its status, `Retry-After` and JSON body.
async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String, Value) {
    let mut request = client().get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, retry_after, response.json().await.unwrap())
}

fn topic_url(hub: &Hub) -> String {
    hub.url("/.well-known/mercure?topic=limits")
}

async fn refused_count(hub: &Hub, limit: &str) -> f64 {
    hub.metric(&format!(
        "tidings_streams_refused_total{{limit=\"{limit}\"}}"
    ))
    .await
}

#[tokio::test]
async fn past_max_streams_the_instance_answers_503_and_a_closed_stream_frees_a_place() {
    let hub = Hub::start(&["--auth", "none", "--max-streams", "3"]);
    assert_eq!(refused_count(&hub, "instance").await, 0.0);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Stream::open(&topic_url(&hub), &[]).await);
    }
    let (status, retry_after, body) = refused(&topic_url(&hub), &[]).await;
    assert_eq!((status, retry_after.as_str()), (503, "5"), "{body}");
    assert_eq!(body["error"], "too_many_streams");
    assert!(
        body["detail"].as_str().unwrap().contains("max-streams"),
        "{body}"
    );
    // Session streams count against the same cap.
    let session = hub.url("/sse/event-stream?eventName=e&sessionId=s");
    assert_eq!(refused(&session, &[]).await.0, 503);
    assert_eq!(refused_count(&hub, "instance").await, 2.0);
    // Other requests are still served.
    assert_eq!(crate::common::status(&hub, "/readyz").await, 200);

    open.pop().unwrap().close();
    wait_for("a place to free up", async || {
        hub.metric("tidings_connections").await == 2.0
    })
    .await;
    let mut again = Stream::open(&topic_url(&hub), &[]).await;
    let (status, _) =
        crate::common::publish(&hub, None, &[("topic", "limits"), ("data", "x")]).await;
    assert_eq!(status, 200);
    assert_eq!(again.next().await.data, "x", "the admitted stream works");
}

#[tokio::test]
async fn one_address_may_hold_max_streams_per_address_and_proxies_are_believed_only_if_trusted() {
    let trusting = Hub::start(&[
        "--auth",
        "none",
        "--max-streams-per-address",
        "2",
        "--trusted-proxy",
        "127.0.0.0/8",
    ]);
    let url = topic_url(&trusting);
    let alice = [("x-forwarded-for", "203.0.113.1")];
    let _a1 = Stream::open(&url, &alice).await;
    let _a2 = Stream::open(&url, &alice).await;
    let (status, retry_after, body) = refused(&url, &alice).await;
    assert_eq!((status, retry_after.as_str()), (429, "10"), "{body}");
    assert_eq!(body["error"], "too_many_streams");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("max-streams-per-address"),
        "{body}"
    );
    // Another client behind the same proxy has its own count; a client cannot escape its
    // count by writing an address of its own in front of the proxy's.
    let _b = Stream::open(&url, &[("x-forwarded-for", "203.0.113.2")]).await;
    let spoofed = [("x-forwarded-for", "198.51.100.9, 203.0.113.1")];
    assert_eq!(refused(&url, &spoofed).await.0, 429);
    assert_eq!(refused_count(&trusting, "address").await, 2.0);

    // Without --trusted-proxy the header is ignored: every stream here comes from 127.0.0.1.
    let plain = Hub::start(&["--auth", "none", "--max-streams-per-address", "2"]);
    let url = topic_url(&plain);
    let _c1 = Stream::open(&url, &[("x-forwarded-for", "203.0.113.1")]).await;
    let _c2 = Stream::open(&url, &[("x-forwarded-for", "203.0.113.2")]).await;
    assert_eq!(
        refused(&url, &[("x-forwarded-for", "203.0.113.3")]).await.0,
        429
    );
}

#[tokio::test]
async fn one_session_may_hold_max_streams_per_session() {
    let hub = Hub::start(&["--auth", "none", "--max-streams-per-session", "2"]);
    let stream = |session: &str, event: &str| {
        hub.url(&format!(
            "/sse/event-stream?eventName={event}&sessionId={session}"
        ))
    };
    let _a1 = Stream::open(&stream("alice", "chat"), &[]).await;
    let _a2 = Stream::open(&stream("alice", "news"), &[]).await;
    let (status, retry_after, body) = refused(&stream("alice", "other"), &[]).await;
    assert_eq!((status, retry_after.as_str()), (429, "10"), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("max-streams-per-session"),
        "{body}"
    );
    let _b = Stream::open(&stream("bob", "chat"), &[]).await;
    // Mercure streams carry no session and are not counted per session.
    let _m = Stream::open(&topic_url(&hub), &[]).await;
    assert_eq!(refused_count(&hub, "session").await, 1.0);
}

#[tokio::test]
async fn limits_must_be_at_least_one_and_proxies_must_be_addresses() {
    for (args, needle) in [
        (
            &["--max-streams", "0"][..],
            "max-streams must be at least 1",
        ),
        (
            &["--bus-timeout", "0"][..],
            "bus-timeout must be at least 1",
        ),
        (
            &["--max-id-length", "44"][..],
            "max-id-length must be at least 45",
        ),
        (&["--jwt-issuer", ""][..], "jwt-issuer is empty"),
        (
            &["--bus-replay-timeout", "0"][..],
            "bus-replay-timeout must be at least 1",
        ),
        (
            &["--trusted-proxy", "proxy.example"][..],
            "trusted-proxy: \"proxy.example\"",
        ),
    ] {
        crate::common::refuses_to_start(&[&["--auth", "none"], args].concat(), needle);
    }
}
