//! Lifecycle webhooks across instances on one Redis: a session is told online once and offline
//! once however many instances hold its streams, and the sessions of an instance that dies are
//! told offline by a survivor once the registry has let them go.

use std::time::Duration;

use crate::common::{wait_until, Hub, Receiver, Stream, WEBHOOK_SECRET};

fn session_stream_url(hub: &Hub, session: &str) -> String {
    hub.url(&format!("/sse/event-stream?sessionId={session}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_told_once_cluster_wide_and_a_dead_instance_s_by_a_survivor() {
    let Some(keys) = crate::common::redis_keys("webhooks") else {
        return;
    };
    let receiver = Receiver::default();
    let url = receiver.serve().await;
    let mut hubs = crate::common::redis_cluster(
        &keys,
        2,
        &[
            "--session-ttl",
            "3",
            "--webhook-url",
            &url,
            "--webhook-secret",
            WEBHOOK_SECRET,
            "--webhook-offline-grace",
            "1",
        ],
    );
    let on_a = Stream::open(&session_stream_url(&hubs[0], "alice"), &[]).await;
    let on_b = Stream::open(&session_stream_url(&hubs[1], "alice"), &[]).await;
    wait_until("alice online", Duration::from_secs(10), async || {
        receiver
            .session_events()
            .contains(&("session.online".into(), "alice".into()))
    })
    .await;
    // Alice leaves one instance: still online on the other.
    on_a.close();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        receiver.session_events(),
        [("session.online".to_owned(), "alice".to_owned())],
        "told online once, not offline while a stream is left"
    );
    on_b.close();
    wait_until("alice offline", Duration::from_secs(10), async || {
        receiver.session_events().len() == 2
    })
    .await;
    let offline = receiver
        .events()
        .into_iter()
        .find(|e| e["type"] == "session.offline")
        .unwrap();
    assert_eq!(
        (&offline["session"], &offline["scope"], &offline["reason"]),
        (
            &serde_json::json!("alice"),
            &serde_json::json!("cluster"),
            &serde_json::json!("closed")
        )
    );

    // Bob's only instance dies: it cannot tell; the survivor does, once the registry let go.
    let bob = Stream::open(&session_stream_url(&hubs[1], "bob"), &[]).await;
    wait_until("bob online", Duration::from_secs(10), async || {
        receiver
            .session_events()
            .contains(&("session.online".into(), "bob".into()))
    })
    .await;
    hubs[1].kill();
    bob.close();
    wait_until(
        "bob offline, told by the survivor",
        Duration::from_secs(20),
        async || {
            receiver
                .session_events()
                .contains(&("session.offline".into(), "bob".into()))
        },
    )
    .await;
    let told = receiver
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .find(|d| {
            d.body["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["session"] == "bob" && e["type"] == "session.offline")
            })
        })
        .cloned()
        .unwrap();
    assert_eq!(told.body["instance"], format!("{}-0", keys.prefix));
    let event = told.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["session"] == "bob")
        .cloned()
        .unwrap();
    assert_eq!(event["reason"], "expired");
    assert_eq!(receiver.session_events().len(), 4, "each transition once");
    assert!(receiver.deliveries.lock().unwrap().iter().all(|d| d.signed));
    crate::common::redis_cleanup(&keys.url, &keys.prefix);
}
