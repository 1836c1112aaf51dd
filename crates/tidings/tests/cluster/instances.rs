//! Several real `tidings serve` processes on one broker: updates published on one instance
//! reach subscribers on the others, and a client whose instance is killed resumes on another
//! without losing or repeating anything (on every broker bus).

use std::time::Duration;

use crate::common::{publish, subscribe_url, Hub, Stream};

#[tokio::test]
async fn an_update_published_on_one_instance_reaches_subscribers_on_all() {
    let Some(keys) = crate::common::redis_keys("fan-out") else {
        return;
    };
    let hubs = crate::common::redis_cluster(&keys, 3, &[]);
    let topic = crate::common::unique_topic("cluster");
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(Stream::open(&subscribe_url(hub, &[&topic], ""), &[]).await);
    }
    let (status, id) = publish(&hubs[1], None, &[("topic", &topic), ("data", "to all")]).await;
    assert_eq!(status, 200, "{id}");
    for stream in &mut streams {
        let event = stream.next().await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (id.as_str(), "to all")
        );
        assert!(
            stream
                .next_within(Duration::from_millis(200))
                .await
                .is_none(),
            "exactly once"
        );
    }
    let ready = crate::common::get_json(&hubs[0].url("/readyz")).await;
    assert_eq!(ready["bus"], "redis");
}

/// A client of a killed instance resumes on another without losing or repeating anything, on
/// every broker bus: three instances on the bus at `url`, named `prefix` there.
mod a_client_of_a_killed_instance_resumes_on_another {
    use super::*;

    #[tokio::test]
    async fn on_redis() {
        let Some(keys) = crate::common::redis_keys("failover") else {
            return;
        };
        without_loss_or_duplicate(&keys.url, &keys.prefix).await;
    }

    #[tokio::test]
    async fn on_nats() {
        let Some(url) = crate::common::nats_url() else {
            return;
        };
        let stream = crate::common::NatsStream {
            url,
            prefix: crate::common::unique_prefix("failover"),
        };
        without_loss_or_duplicate(&stream.url, &stream.prefix).await;
    }

    #[tokio::test]
    async fn on_rabbitmq() {
        let Some(url) = crate::common::amqp_url() else {
            return;
        };
        let objects = crate::common::AmqpObjects {
            url,
            prefix: crate::common::unique_prefix("failover"),
        };
        without_loss_or_duplicate(&objects.url, &objects.prefix).await;
    }

    #[tokio::test]
    async fn on_kafka() {
        let Some(url) = crate::common::kafka_url() else {
            return;
        };
        let topic = crate::common::KafkaTopic {
            url,
            prefix: crate::common::unique_prefix("failover"),
        };
        without_loss_or_duplicate(&topic.url, &topic.prefix).await;
    }
}

async fn without_loss_or_duplicate(url: &str, prefix: &str) {
    let mut hubs = crate::common::cluster_on(url, prefix, 3, &[]);
    let topic = crate::common::unique_topic("failover");
    const TOTAL: usize = 300;
    let publisher_base = hubs[1].base.clone();
    let publisher_topic = topic.clone();
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let publisher = tokio::spawn(async move {
        let client = crate::common::client();
        for i in 0..TOTAL {
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("topic", &publisher_topic)
                .append_pair("data", &i.to_string())
                .finish();
            let response = client
                .post(format!("{publisher_base}/.well-known/mercure"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let mut received: Vec<(String, String)> = Vec::new();
    while received.len() < 50 {
        let e = stream.next().await;
        received.push((e.id, e.data));
    }
    // Instance A dies mid-stream; its client reconnects to C with the last id it saw.
    hubs[0].kill();
    received.extend(
        stream
            .until_closed()
            .await
            .into_iter()
            .map(|e| (e.id, e.data)),
    );
    let last_id = received.last().unwrap().0.clone();
    let mut resumed = Stream::open(
        &subscribe_url(&hubs[2], &[&topic], ""),
        &[("last-event-id", &last_id)],
    )
    .await;
    while received.len() < TOTAL {
        let e = resumed.next().await;
        received.push((e.id, e.data));
    }
    publisher.await.unwrap();
    let data: Vec<String> = received.iter().map(|(_, d)| d.clone()).collect();
    let expected: Vec<String> = (0..TOTAL).map(|i| i.to_string()).collect();
    assert_eq!(data, expected, "every update exactly once, in order");
    assert!(
        resumed
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing extra"
    );
}

async fn presence(hub: &Hub, session: &str) -> serde_json::Value {
    crate::common::get_json(&hub.url(&format!("/sse/sessions/{session}"))).await
}

async fn wait_for_presence(hub: &Hub, session: &str, expected: serde_json::Value) {
    let what = format!("the presence of {session} on instances {expected}");
    crate::common::wait_for(&what, async || {
        let got = presence(hub, session).await;
        got["instances"] == expected && got["scope"] == "cluster"
    })
    .await;
}

#[tokio::test]
async fn the_session_registry_is_cluster_wide_and_forgets_dead_instances() {
    let Some(keys) = crate::common::redis_keys("registry") else {
        return;
    };
    let mut hubs: Vec<Hub> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| crate::common::instance_on(&keys.url, &keys.prefix, id, &["--session-ttl", "3"]))
        .collect();
    let session = format!("s-{}", std::process::id());
    let open = |hub: &Hub, event: &str| {
        hub.url(&format!(
            "/sse/event-stream?eventName={event}&sessionId={session}"
        ))
    };
    let a1 = Stream::open(&open(&hubs[0], "x"), &[]).await;
    let mut a2 = Stream::open(&open(&hubs[0], "y"), &[]).await;
    let _b = Stream::open(&open(&hubs[1], "x"), &[]).await;
    // Asked on the third instance, which holds none of the streams.
    wait_for_presence(
        &hubs[2],
        &session,
        serde_json::json!([{"instanceId": "node-a", "streams": 2}, {"instanceId": "node-b", "streams": 1}]),
    )
    .await;
    let info = presence(&hubs[2], &session).await;
    assert_eq!(
        (info["connected"].as_bool(), info["streams"].as_u64()),
        (Some(true), Some(3))
    );
    // A stream that closes is counted down at once.
    a1.close();
    wait_for_presence(
        &hubs[2],
        &session,
        serde_json::json!([{"instanceId": "node-a", "streams": 1}, {"instanceId": "node-b", "streams": 1}]),
    )
    .await;
    // An instance that dies drops out within the session TTL.
    hubs[1].kill();
    wait_for_presence(
        &hubs[2],
        &session,
        serde_json::json!([{"instanceId": "node-a", "streams": 1}]),
    )
    .await;
    // And a session published to from another instance still reaches its stream there.
    let body = serde_json::json!({"sessionId": session, "eventName": "y", "payload": "hi"});
    let response = crate::common::client()
        .post(hubs[2].url("/sse/events"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(a2.next().await.data, "hi");
}

async fn listed_topics(hub: &Hub) -> Vec<String> {
    let body = crate::common::get_json(&hub.url("/.well-known/mercure/subscriptions")).await;
    let mut topics: Vec<String> = body["subscriptions"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|s| s["topic"].as_str().unwrap().to_owned())
        .collect();
    topics.sort();
    topics
}

#[tokio::test]
async fn the_subscriptions_api_answers_for_the_whole_cluster() {
    let Some(keys) = crate::common::redis_keys("subscriptions") else {
        return;
    };
    let mut hubs =
        crate::common::redis_cluster(&keys, 2, &["--subscriptions", "--session-ttl", "3"]);
    let on_a = crate::common::unique_topic("on-a");
    let on_b = crate::common::unique_topic("on-b");
    let _a = Stream::open(&subscribe_url(&hubs[0], &[&on_a], ""), &[]).await;
    let _b = Stream::open(&subscribe_url(&hubs[1], &[&on_b], ""), &[]).await;
    let mut both = vec![on_a.clone(), on_b.clone()];
    both.sort();
    crate::common::wait_for("both subscriptions listed", async || {
        listed_topics(&hubs[1]).await == both
    })
    .await;
    assert_eq!(
        listed_topics(&hubs[0]).await,
        both,
        "the same answer on every instance"
    );
    // A dies: its subscriptions drop out within the TTL.
    hubs[0].kill();
    crate::common::wait_for(
        "the dead instance's subscriptions to drop out",
        async || listed_topics(&hubs[1]).await == vec![on_b.clone()],
    )
    .await;
}

#[tokio::test]
async fn an_instance_whose_subscriber_records_cannot_be_written_stays_alive() {
    // The records' write failing (here: the set of instances made a string, so SADD fails)
    // skipped the liveness refresh: after session-ttl a healthy instance was declared dead
    // and its sessions offline (review M3).
    let Some(keys) = crate::common::redis_keys("liveness") else {
        return;
    };
    let hub = crate::common::instance_on(
        &keys.url,
        &keys.prefix,
        "alive-1",
        &["--session-ttl", "3", "--subscriptions"],
    );
    let session = format!("s-{}", std::process::id());
    let _stream = Stream::open(
        &hub.url(&format!(
            "/sse/event-stream?eventName=e&sessionId={session}"
        )),
        &[],
    )
    .await;
    let mut redis = redis::Client::open(keys.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let instances = format!("{}:instances", keys.prefix);
    let _: () = redis::cmd("DEL").arg(&instances).query(&mut redis).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&instances)
        .arg("not a set")
        .query(&mut redis)
        .unwrap();
    hub.wait_for_log("cannot update the session registry").await;
    // Two lifetimes of the liveness key later, the instance is still alive.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let alive: bool = redis::cmd("EXISTS")
        .arg(format!("{}:instance:alive-1", keys.prefix))
        .query(&mut redis)
        .unwrap();
    assert!(alive, "the liveness key expired");
    wait_for_presence(
        &hub,
        &session,
        serde_json::json!([{"instanceId": "alive-1", "streams": 1}]),
    )
    .await;
}
