//! Several real `tidings serve` processes on one Redis: updates published on one instance
//! reach subscribers on the others, and a client whose instance is killed resumes on another
//! without losing or repeating anything.

mod common;

use std::time::Duration;

use common::{publish, subscribe_url, Hub, RedisKeys, Stream};

fn cluster(keys: &RedisKeys, n: usize, extra: &[&str]) -> Vec<Hub> {
    (0..n)
        .map(|_| {
            let mut args = vec![
                "--auth",
                "none",
                "--bus",
                &keys.url,
                "--redis-prefix",
                &keys.prefix,
            ];
            args.extend_from_slice(extra);
            Hub::start(&args)
        })
        .collect()
}

fn redis_keys(name: &str) -> Option<RedisKeys> {
    let url = common::redis_url()?;
    Some(RedisKeys {
        prefix: common::unique_prefix(name),
        url,
    })
}

#[tokio::test]
async fn an_update_published_on_one_instance_reaches_subscribers_on_all() {
    let Some(keys) = redis_keys("fan-out") else {
        return;
    };
    let hubs = cluster(&keys, 3, &[]);
    let topic = common::unique_topic("cluster");
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
    let ready: serde_json::Value = common::client()
        .get(hubs[0].url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["bus"], "redis");
}

#[tokio::test]
async fn a_client_of_a_killed_instance_resumes_on_another_without_loss_or_duplicate() {
    let Some(keys) = redis_keys("failover") else {
        return;
    };
    let mut hubs = cluster(&keys, 3, &[]);
    let topic = common::unique_topic("failover");
    const TOTAL: usize = 300;
    let publisher_base = hubs[1].base.clone();
    let publisher_topic = topic.clone();
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let publisher = tokio::spawn(async move {
        let client = common::client();
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
