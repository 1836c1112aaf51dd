//! Stream limits against the real binary: past `max-streams` or `max-wide-selectors` new
//! streams get 503, past `max-streams-per-address`, `max-streams-per-session` or
//! `max-wide-selectors-per-address` 429, each with `Retry-After` and a JSON body; each refusal
//! is counted by limit; a stream that ends gives its place back.

use std::time::Duration;

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

/// A Mercure stream URL of these selectors.
fn selectors_url(hub: &Hub, selectors: &[&str]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for s in selectors {
        query.append_pair("topic", s);
    }
    hub.url(&format!("/.well-known/mercure?{}", query.finish()))
}

#[tokio::test]
async fn distinct_wildcard_selectors_are_capped_per_address_and_per_instance() {
    // Each distinct wildcard selector is matched against every update (review H1): one client
    // holding thousands of distinct templates slowed every delivery of its instance.
    let hub = Hub::start(&[
        "--auth",
        "none",
        "--trusted-proxy",
        "127.0.0.0/8",
        "--max-wide-selectors-per-address",
        "3",
        "--max-wide-selectors",
        "4",
    ]);
    let alice = [("x-forwarded-for", "203.0.113.1")];
    let bob = [("x-forwarded-for", "203.0.113.2")];
    let _a1 = Stream::open(&selectors_url(&hub, &["a/{x}", "b/{x}", "exact"]), &alice).await;
    // The same ones again, exact topics and `*` shared with nobody yet: one new, fits.
    let _a2 = Stream::open(&selectors_url(&hub, &["a/{x}", "*", "other"]), &alice).await;
    let (status, retry_after, body) =
        refused(&selectors_url(&hub, &["a/{x}", "c/{x}"]), &alice).await;
    assert_eq!((status, retry_after.as_str()), (429, "10"), "{body}");
    assert_eq!(body["error"], "too_many_wide_selectors");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("max-wide-selectors-per-address"), "{body}");
    // Exact topics cost no matching: never refused for this.
    let _a3 = Stream::open(&selectors_url(&hub, &["x", "y", "z"]), &alice).await;
    // Another address shares what the instance holds, and has room for one of its own.
    let b1 = Stream::open(&selectors_url(&hub, &["a/{x}", "d/{x}"]), &bob).await;
    let (status, retry_after, body) = refused(&selectors_url(&hub, &["e/{x}"]), &bob).await;
    assert_eq!((status, retry_after.as_str()), (503, "5"), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("max-wide-selectors)"),
        "{body}"
    );
    assert_eq!(refused_count(&hub, "wide-selectors-per-address").await, 1.0);
    assert_eq!(refused_count(&hub, "wide-selectors").await, 1.0);
    // A stream that ends gives its selectors back.
    b1.close();
    wait_for("d/{x} to be given back", async || {
        Stream::try_open(&selectors_url(&hub, &["e/{x}"]), &bob)
            .await
            .status
            == 200
    })
    .await;
}

#[tokio::test]
async fn a_replay_larger_than_the_queue_bytes_comes_a_page_at_a_time() {
    // A replay was held whole outside the queue's bounds: slow readers of
    // lastEventID=earliest each kept a copy of history alive (review M4). It is cut at
    // subscriber-queue-bytes now; the stream ends with a retry hint after each page and the
    // client resumes from the last id it got.
    let hub = Hub::start(&["--auth", "none", "--subscriber-queue-bytes", "2000"]);
    let topic = crate::common::unique_topic("paged");
    let data = "x".repeat(500);
    let mut published = Vec::new();
    for _ in 0..10 {
        let (status, id) =
            crate::common::publish(&hub, None, &[("topic", &topic), ("data", &data)]).await;
        assert_eq!(status, 200);
        published.push(id);
    }
    let mut received: Vec<String> = Vec::new();
    let mut from = "earliest".to_owned();
    let mut cut = 0;
    let last = loop {
        let url = crate::common::subscribe_url(&hub, &[&topic], &format!("&lastEventID={from}"));
        let mut stream = Stream::open(&url, &[]).await;
        let before = received.len();
        while let Some(event) = stream.next_within(Duration::from_secs(2)).await {
            received.push(event.id);
        }
        assert!(
            received.len() - before < 5,
            "{} updates in one page",
            received.len() - before
        );
        from = received.last().unwrap().clone();
        if !stream.raw_text().contains("retry: 250") {
            // Not cut: the stream stays open for live updates.
            break stream;
        }
        cut += 1;
    };
    assert_eq!(received, published, "every update once, in order");
    assert!(cut >= 2, "{cut} pages cut");
    assert_eq!(
        hub.metric("tidings_replays_paged_total").await,
        f64::from(cut)
    );
    let mut live = last;
    let (_, id) = crate::common::publish(&hub, None, &[("topic", &topic), ("data", "live")]).await;
    assert_eq!(live.next().await.id, id);
}
