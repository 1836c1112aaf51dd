//! Routing on Redis, counted on the broker side: under interest routing an update costs one
//! Redis message per instance that wants it (none when nobody does) — a session's events go
//! only to the instances holding its streams; under broadcast routing, one per instance. The publisher's `tidings_bus_broker_messages_total` counts what Redis
//! reported sending for its publishes.

use std::time::Duration;

use crate::common::{publish, subscribe_url, Hub, Stream};

const SENT: &str = "tidings_bus_broker_messages_total";
const BYTES: &str = "tidings_bus_broker_bytes_total";

/// Publishes `topic` on `hub`; returns the update id and how many messages Redis sent for it
/// (checking that the bytes counted are as many messages of the update's size).
async fn publish_counted(hub: &Hub, topic: &str) -> (String, f64) {
    let (before, bytes_before) = (hub.metric(SENT).await, hub.metric(BYTES).await);
    let (status, id) = publish(hub, None, &[("topic", topic), ("data", "x")]).await;
    assert_eq!(status, 200, "{id}");
    let sent = hub.metric(SENT).await - before;
    let bytes = hub.metric(BYTES).await - bytes_before;
    if sent == 0.0 {
        assert_eq!(bytes, 0.0);
    } else {
        // "<position> <micros> <wire message>": the message alone holds the topic and id.
        let per_message = bytes / sent;
        assert_eq!(
            per_message.fract(),
            0.0,
            "{bytes} bytes for {sent} messages"
        );
        assert!(
            per_message > (topic.len() + id.len()) as f64,
            "{per_message} bytes per message"
        );
    }
    (id, sent)
}

/// How many connections listen to `channel` on the Redis at `url`.
fn listeners(url: &str, channel: &str) -> u64 {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let (_, count): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut conn)
        .unwrap();
    count
}

#[tokio::test]
async fn interest_routing_sends_an_update_only_to_instances_that_want_it() {
    let Some(keys) = crate::common::redis_keys("interest") else {
        return;
    };
    let hubs = crate::common::redis_cluster(&keys, 3, &["--redis-unsubscribe-after", "2"]);
    let base = crate::common::unique_topic("interest");
    let topic = format!("{base}/1");
    let other = format!("{base}-other");

    let (_, sent) = publish_counted(&hubs[0], &topic).await;
    assert_eq!(sent, 0.0, "nobody wants it: Redis sends nothing");

    let mut exact = Stream::open(&subscribe_url(&hubs[1], &[&topic], ""), &[]).await;
    let (id, sent) = publish_counted(&hubs[0], &topic).await;
    assert_eq!(sent, 1.0, "only the instance with a subscriber hears it");
    assert_eq!(exact.next().await.id, id);

    let template = format!("{base}/{{id}}");
    let mut by_template = Stream::open(&subscribe_url(&hubs[2], &[&template], ""), &[]).await;
    let (id, sent) = publish_counted(&hubs[0], &topic).await;
    assert_eq!(sent, 2.0, "a template is heard through its literal prefix");
    assert_eq!(exact.next().await.id, id);
    assert_eq!(by_template.next().await.id, id);

    let mut everything = Stream::open(&subscribe_url(&hubs[0], &["*"], ""), &[]).await;
    let (id, sent) = publish_counted(&hubs[0], &topic).await;
    assert_eq!(sent, 3.0);
    for stream in [&mut exact, &mut by_template, &mut everything] {
        assert_eq!(stream.next().await.id, id);
    }
    let (id, sent) = publish_counted(&hubs[1], &other).await;
    assert_eq!(
        sent, 1.0,
        "only the instance that wants everything hears another topic"
    );
    assert_eq!(everything.next().await.id, id);
    for stream in [&mut exact, &mut by_template] {
        assert!(stream
            .next_within(Duration::from_millis(200))
            .await
            .is_none());
    }

    // When the subscribers leave, their instances stop listening — after
    // redis-unsubscribe-after (2 s here), in case the topic is wanted again.
    exact.close();
    by_template.close();
    everything.close();
    let channel = format!("{}:t:{topic}", keys.prefix);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(listeners(&keys.url, &channel), 1, "the channel lingers");
    crate::common::wait_for(
        "every instance to stop listening to the channel",
        async || listeners(&keys.url, &channel) == 0,
    )
    .await;
    let (_, sent) = publish_counted(&hubs[2], &topic).await;
    assert_eq!(sent, 0.0);
}

#[tokio::test]
async fn broadcast_routing_sends_every_update_to_every_instance() {
    let Some(keys) = crate::common::redis_keys("broadcast") else {
        return;
    };
    let hubs = crate::common::redis_cluster(&keys, 3, &["--routing", "broadcast"]);
    let topic = crate::common::unique_topic("broadcast");
    let (_, sent) = publish_counted(&hubs[0], &topic).await;
    assert_eq!(sent, 3.0, "every instance hears every update");
    let mut stream = Stream::open(&subscribe_url(&hubs[2], &[&topic], ""), &[]).await;
    let (id, sent) = publish_counted(&hubs[1], &topic).await;
    assert_eq!(sent, 3.0);
    assert_eq!(stream.next().await.id, id);
}

#[tokio::test]
async fn a_session_event_goes_only_to_the_instances_holding_the_session() {
    let Some(keys) = crate::common::redis_keys("session-routing") else {
        return;
    };
    let hubs = crate::common::redis_cluster(&keys, 3, &[]);
    let session = format!("routed-{}", std::process::id());
    let url = |hub: &Hub| {
        hub.url(&format!(
            "/sse/event-stream?eventName=e&sessionId={session}"
        ))
    };
    let mut stream = Stream::open(&url(&hubs[1]), &[]).await;
    let send = || async {
        let before = hubs[0].metric(SENT).await;
        let body = serde_json::json!({"sessionId": session, "eventName": "e", "payload": 1});
        let response = crate::common::client()
            .post(hubs[0].url("/sse/events"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        hubs[0].metric(SENT).await - before
    };
    assert_eq!(
        send().await,
        1.0,
        "only the instance holding the session hears it"
    );
    assert_eq!(stream.next().await.data, "1");
    let _second = Stream::open(&url(&hubs[2]), &[]).await;
    assert_eq!(send().await, 2.0);
}

#[tokio::test]
async fn templates_past_the_pattern_cap_listen_to_everything_instead() {
    // Each distinct template prefix would be a pattern Redis matches on every publish of the
    // cluster (review H1); past redis-max-patterns the instance listens to every update.
    let Some(keys) = crate::common::redis_keys("patterns") else {
        return;
    };
    let hubs = crate::common::redis_cluster(&keys, 2, &["--redis-max-patterns", "3"]);
    let base = crate::common::unique_topic("patterns");
    let templates: Vec<String> = (0..4).map(|i| format!("{base}/p{i}/{{id}}")).collect();
    let unrelated = format!("{base}-unrelated");
    let three: Vec<&str> = templates[..3].iter().map(String::as_str).collect();
    let mut within = Stream::open(&subscribe_url(&hubs[1], &three, ""), &[]).await;
    let (_, sent) = publish_counted(&hubs[0], &unrelated).await;
    assert_eq!(sent, 0.0, "three patterns: nobody hears an unrelated topic");
    assert_eq!(hubs[1].metric("tidings_redis_patterns_capped").await, 0.0);
    let (id, sent) = publish_counted(&hubs[0], &format!("{base}/p2/x")).await;
    assert_eq!((sent, within.next().await.id), (1.0, id));

    let fourth = [templates[3].as_str()];
    let mut past = Stream::open(&subscribe_url(&hubs[1], &fourth, ""), &[]).await;
    crate::common::wait_for("the instance to listen to everything", async || {
        hubs[1].metric("tidings_redis_patterns_capped").await == 1.0
    })
    .await;
    let (_, sent) = publish_counted(&hubs[0], &unrelated).await;
    assert_eq!(sent, 1.0, "past the cap, one channel hears every update");
    let (id, _) = publish_counted(&hubs[0], &format!("{base}/p3/x")).await;
    assert_eq!(
        past.next().await.id,
        id,
        "and the hub still filters for its streams"
    );
    let (id, _) = publish_counted(&hubs[0], &format!("{base}/p0/x")).await;
    assert_eq!(within.next().await.id, id);

    past.close();
    crate::common::wait_for("the patterns to come back", async || {
        hubs[1].metric("tidings_redis_patterns_capped").await == 0.0
    })
    .await;
    crate::common::wait_for("nobody to hear an unrelated topic again", async || {
        publish_counted(&hubs[0], &unrelated).await.1 == 0.0
    })
    .await;
}
