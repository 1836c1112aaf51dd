//! Lifecycle webhooks (`--webhook-url`) from one instance to a receiver on loopback: streams
//! and sessions told in order, in signed batches; a page reload is no offline; a failing
//! receiver retried; what it refuses or never takes dropped and counted.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use crate::common::{
    free_port, token, wait_for, wait_until, Hub, Receiver, Stream, KEY, WEBHOOK_SECRET,
};

fn hub(url: &str, extra: &[&str]) -> Hub {
    let mut args = vec![
        "--jwt-key",
        KEY,
        "--webhook-url",
        url,
        "--webhook-secret",
        WEBHOOK_SECRET,
        "--webhook-offline-grace",
        "1",
    ];
    args.extend_from_slice(extra);
    Hub::start(&args)
}

async fn session_stream(hub: &Hub, session: &str, query: &str) -> Stream {
    let bearer = format!("Bearer {}", token(json!({"sub": session})));
    Stream::open(
        &hub.url(&format!("/sse/event-stream{query}")),
        &[("authorization", &bearer)],
    )
    .await
}

/// The types of the events received, in order.
fn types(receiver: &Receiver) -> Vec<String> {
    receiver
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn wait_for_types(receiver: &Receiver, expected: &[&str]) {
    wait_for(&format!("webhook events {expected:?}"), async || {
        types(receiver) == expected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_sessions_are_told_in_order_in_signed_batches() {
    let receiver = Receiver::default();
    let url = receiver.serve().await;
    let hub = hub(&url, &["--instance-id", "hook-a"]);

    let alice = session_stream(&hub, "alice", "?eventName=chat&eventName=alert").await;
    wait_for_types(&receiver, &["stream.subscribed", "session.online"]).await;
    let events = receiver.events();
    let subscribed = &events[0];
    assert_eq!(subscribed["session"], "alice");
    assert_eq!(subscribed["topics"], json!(["urn:tidings:session:alice"]));
    assert_eq!(subscribed["eventNames"], json!(["chat", "alert"]));
    assert!(subscribed["subscriber"]
        .as_str()
        .is_some_and(|s| s.starts_with("urn:uuid:")));
    assert!(subscribed["at"].as_u64().is_some());
    assert_eq!(
        (&events[1]["session"], &events[1]["scope"]),
        (&json!("alice"), &json!("instance")),
        "the memory bus has no registry: the instance tells its own sessions"
    );

    // A page reload: the stream goes and comes back within the grace; the session stays.
    alice.close();
    let again = session_stream(&hub, "alice", "").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        types(&receiver),
        [
            "stream.subscribed",
            "session.online",
            "stream.unsubscribed",
            "stream.subscribed"
        ]
    );
    // Gone for longer than the grace: offline.
    again.close();
    wait_for_types(
        &receiver,
        &[
            "stream.subscribed",
            "session.online",
            "stream.unsubscribed",
            "stream.subscribed",
            "stream.unsubscribed",
            "session.offline",
        ],
    )
    .await;
    let offline = receiver.events().pop().unwrap();
    assert_eq!(offline["reason"], "closed");

    let deliveries = receiver.deliveries.lock().unwrap().clone();
    assert!(deliveries.iter().all(|d| d.signed), "every request signed");
    assert!(deliveries.iter().all(|d| d.body["instance"] == "hook-a"));
    let ids: std::collections::HashSet<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), deliveries.len(), "one id per batch");
    assert!(deliveries.iter().all(|d| d.body["id"] == d.id));
    assert_eq!(
        hub.metric("tidings_webhook_events_delivered_total").await,
        6.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_with_the_same_batch_id() {
    let receiver = Receiver::default();
    receiver
        .answers
        .lock()
        .unwrap()
        .extend([StatusCode::SERVICE_UNAVAILABLE, StatusCode::BAD_GATEWAY]);
    let url = receiver.serve().await;
    let hub = hub(&url, &[]);
    let _stream = session_stream(&hub, "bob", "?eventName=chat").await;
    wait_for("a third attempt", async || {
        receiver.deliveries.lock().unwrap().len() >= 3
    })
    .await;
    let deliveries = receiver.deliveries.lock().unwrap().clone();
    assert!(deliveries
        .iter()
        .all(|d| d.id == deliveries[0].id && d.signed));
    assert_eq!(
        hub.metric("tidings_webhook_failed_attempts_total").await,
        2.0
    );
    wait_for("the batch counted", async || {
        hub.metric("tidings_webhook_events_delivered_total").await == 2.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_dropped_at_once_and_counted() {
    let receiver = Receiver::default();
    receiver
        .answers
        .lock()
        .unwrap()
        .push(StatusCode::BAD_REQUEST);
    let url = receiver.serve().await;
    let hub = hub(&url, &[]);
    let _stream = session_stream(&hub, "carol", "?eventName=chat").await;
    wait_for("the refusal counted", async || {
        hub.metric("tidings_webhook_events_dropped_total{reason=\"refused\"}")
            .await
            == 2.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.deliveries.lock().unwrap().len(), 1, "not retried");
    hub.wait_for_log("the webhook receiver refused a batch (answered 400 Bad Request)")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_fills_the_queue_and_nothing_else() {
    // Nothing listens there.
    let url = format!("http://127.0.0.1:{}/hooks", free_port());
    let hub = hub(
        &url,
        &[
            "--webhook-queue",
            "3",
            "--webhook-retry-for",
            "2",
            "--anonymous",
        ],
    );
    let topic = crate::common::unique_topic("hooks-down");
    let first = Stream::open(&crate::common::subscribe_url(&hub, &[&topic], ""), &[]).await;
    // The first batch is on its way (and failing); eleven more events meet a queue of three.
    wait_for("the first batch's failed attempt", async || {
        hub.metric("tidings_webhook_failed_attempts_total").await >= 1.0
    })
    .await;
    let mut streams = vec![first];
    for _ in 0..5 {
        streams.push(Stream::open(&crate::common::subscribe_url(&hub, &[&topic], ""), &[]).await);
    }
    for stream in streams {
        stream.close();
    }
    wait_for("the full queue counted", async || {
        hub.metric("tidings_webhook_events_dropped_total{reason=\"queue_full\"}")
            .await
            >= 5.0
    })
    .await;
    hub.wait_for_log("the webhook queue is full; event dropped")
        .await;
    wait_until(
        "the undelivered batch counted",
        Duration::from_secs(15),
        async || {
            hub.metric("tidings_webhook_events_dropped_total{reason=\"undelivered\"}")
                .await
                >= 1.0
        },
    )
    .await;
    hub.wait_for_log("was not delivered within webhook-retry-for")
        .await;
    // The instance serves on, undisturbed.
    let (status, _) = crate::common::publish(
        &hub,
        Some(&crate::common::publisher_token()),
        &[("topic", &topic)],
    )
    .await;
    assert_eq!(status, 200);
}

#[test]
fn what_cannot_be_configured_stops_start_up() {
    for (args, says) in [
        (
            &["--jwt-key", "k", "--webhook-url", "http://127.0.0.1:1/h"][..],
            "webhook-url needs webhook-secret",
        ),
        (
            &[
                "--jwt-key",
                "k",
                "--webhook-url",
                "file:///tmp/h",
                "--webhook-secret",
                "s",
            ][..],
            "webhook-url \"file:///tmp/h\" is not an http:// or https:// URL",
        ),
        (
            &[
                "--jwt-key",
                "k",
                "--webhook-url",
                "http://127.0.0.1:1/h",
                "--webhook-secret",
                "s",
                "--webhook-queue",
                "0",
            ][..],
            "webhook-queue must be at least 1",
        ),
    ] {
        crate::common::refuses_to_start(args, says);
    }
}
