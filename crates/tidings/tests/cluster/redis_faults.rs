//! Broker faults, against a private `redis-server` this test starts on a free port and stops by
//! PID (never the machine's shared Redis): readiness, fast publish failures, open streams that
//! survive, reconnection with catch-up from the stream (tried again until it succeeds), and
//! gaps counted. And on the shared Redis, under a prefix of its own: a resume older than the
//! topic histories last is served from the stream.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{
    publish, publish_once_recovered, status, subscribe_url, wait_until, Hub, PrivateRedis, Stream,
};

/// Sends a signal (`-STOP`, `-CONT`) to an instance.
fn signal(hub: &Hub, sig: &str) {
    let pid = hub.pid().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// Waits until the instance is ready again (Redis back and the instance reconnected).
async fn ready_again(hub: &Hub) {
    wait_until(
        "readiness to come back",
        Duration::from_secs(15),
        async || status(hub, "/readyz").await == 200,
    )
    .await;
}

/// Freezes A, cuts every Pub/Sub connection of Redis, runs `meanwhile` while A cannot hear,
/// then lets A go on: it finds its connection gone and must reconnect and catch up. B's
/// connection is cut too (every instance listens to the control plane's channel): `meanwhile`
/// runs once B has reconnected.
async fn cut_off_while(a: &Hub, b: &Hub, redis: &PrivateRedis, meanwhile: impl AsyncFnOnce()) {
    let reconnects = b.metric("tidings_bus_reconnects_total").await;
    signal(a, "-STOP");
    redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    wait_until("B to reconnect", Duration::from_secs(15), async || {
        b.metric("tidings_bus_reconnects_total").await > reconnects
            && status(b, "/readyz").await == 200
    })
    .await;
    meanwhile().await;
    signal(a, "-CONT");
}

/// Publishes updates numbered `numbers` to `topic` through `hub`; their ids, in order.
async fn publish_numbered(
    hub: &Hub,
    topic: &str,
    numbers: std::ops::RangeInclusive<u32>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in numbers {
        let data = i.to_string();
        let (code, id) = publish(hub, None, &[("topic", topic), ("data", &data)]).await;
        assert_eq!(code, 200, "{id}");
        ids.push(id);
    }
    ids
}

/// Two instances on one Redis (A through `a_url`, B through `b_url`) and a stream on A for a
/// topic of its own, which received a first update published through B: where a catch-up
/// test starts.
struct Started {
    a: Hub,
    b: Hub,
    topic: String,
    stream: Stream,
    /// The first update's id.
    first: String,
}

async fn started(a_url: &str, b_url: &str, name: &str) -> Started {
    let a = Hub::start(&["--auth", "none", "--bus", a_url]);
    let b = Hub::start(&["--auth", "none", "--bus", b_url]);
    let topic = crate::common::unique_topic(name);
    let mut stream = Stream::open(&subscribe_url(&a, &[&topic], ""), &[]).await;
    let (_, first) = publish(&b, None, &[("topic", &topic), ("data", "0")]).await;
    assert_eq!(stream.next().await.id, first);
    Started {
        a,
        b,
        topic,
        stream,
        first,
    }
}

/// The ids of the next `n` events of `stream`.
async fn next_ids(stream: &mut Stream, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(stream.next().await.id);
    }
    ids
}

/// The log filter that makes an instance's Redis reader say each ping it made ([`PINGED`]).
const PINGS_LOGGED: &str = "info,tidings::bus::redis::reader=debug";
/// What the Redis reader logs once everything published before a ping was delivered.
const PINGED: &str = "delivered everything published before the ping";

#[tokio::test]
async fn a_redis_restart_turns_readiness_off_fails_publishes_fast_and_recovers() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let url = redis.url();
    let hub = Hub::start(&["--auth", "none", "--bus", &url, "--heartbeat", "1"]);
    let topic = crate::common::unique_topic("restart");
    let mut stream = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
    let (_, before) = publish(&hub, None, &[("topic", &topic), ("data", "before")]).await;
    assert_eq!(stream.next().await.id, before);

    redis.stop();
    wait_until(
        "readiness to turn 503",
        Duration::from_secs(10),
        async || status(&hub, "/readyz").await == 503,
    )
    .await;
    let started = Instant::now();
    // What a dashboard shows of it.
    assert_eq!(
        hub.metric("tidings_bus_state{state=\"reconnecting\"}")
            .await,
        1.0
    );
    assert_eq!(
        hub.metric("tidings_bus_state{state=\"connected\"}").await,
        0.0
    );
    assert_eq!(hub.metric("tidings_ready").await, 0.0);
    let (code, body) = publish(&hub, None, &[("topic", &topic), ("data", "lost")]).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("bus_unavailable"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "fails fast: {:?}",
        started.elapsed()
    );
    // The client's stream stays open meanwhile (heartbeats keep flowing).
    let raw_before = stream.raw_text().len();
    crate::common::wait_for(
        "a heartbeat on the stream while Redis is away",
        async || stream.raw_text().len() > raw_before,
    )
    .await;

    redis.restart();
    ready_again(&hub).await;
    let after = publish_once_recovered(&hub, &topic, "after").await;
    assert_eq!(
        stream.next().await.id,
        after,
        "the same stream receives again"
    );
    assert!(hub.metric("tidings_bus_reconnects_total").await >= 1.0);
    assert!(
        hub.metric("tidings_bus_gaps_total").await >= 1.0,
        "the restarted Redis lost the stream: a gap"
    );
}

#[tokio::test]
async fn an_instance_started_before_its_redis_serves_unready_and_connects_when_it_comes() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let url = redis.url();
    redis.stop();
    let hub = Hub::start(&["--auth", "none", "--bus", &url]);
    let readiness = crate::common::get_json(&format!("{}/readyz", hub.base)).await;
    assert_eq!(readiness["busConnection"], "connecting", "{readiness}");
    let topic = crate::common::unique_topic("late-redis");
    let (code, body) = publish(&hub, None, &[("topic", &topic), ("data", "early")]).await;
    assert_eq!(code, 503, "{body}");
    // The registry is Redis's: until it is reached, who is online is unknown (not "nobody").
    let session = format!("late-{}", crate::common::uuid_like());
    let presence = format!("/sse/sessions/{session}");
    assert_eq!(status(&hub, &presence).await, 503);
    hub.wait_for_log("redis: cannot connect; retrying").await;

    redis.restart();
    ready_again(&hub).await;
    let mut stream = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
    let (code, id) = publish(&hub, None, &[("topic", &topic), ("data", "on time")]).await;
    assert_eq!(code, 200, "{id}");
    assert_eq!(stream.next().await.id, id);
    // The registry handed out before the bus connected answers for Redis's now.
    let _held = Stream::open(
        &hub.url(&format!(
            "/sse/event-stream?sessionId={session}&eventName=e"
        )),
        &[],
    )
    .await;
    wait_until(
        "the session in Redis's registry",
        Duration::from_secs(10),
        async || {
            let now = crate::common::get_json(&hub.url(&presence)).await;
            now["scope"] == "cluster" && now["streams"] == 1
        },
    )
    .await;
}

#[tokio::test]
async fn after_its_delivery_connection_drops_an_instance_catches_up_from_the_stream() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let url = redis.url();
    let Started {
        a,
        b,
        topic,
        mut stream,
        first,
    } = started(&url, &url, "catch-up").await;
    // Freeze A, cut every Pub/Sub connection, publish while A cannot hear, then let A go on:
    // it finds its connection gone, reconnects, and must read the missed updates from the
    // stream.
    let mut ids = vec![first];
    cut_off_while(&a, &b, &redis, async || {
        ids.extend(publish_numbered(&b, &topic, 1..=20).await);
    })
    .await;
    assert_eq!(
        next_ids(&mut stream, 20).await,
        ids[1..],
        "every update once, in order, across the reconnect"
    );
    assert!(
        stream
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "no duplicate"
    );
    assert!(a.metric("tidings_bus_reconnects_total").await >= 1.0);
    assert_eq!(
        a.metric("tidings_bus_gaps_total").await,
        0.0,
        "the stream held everything"
    );
    let log = a.log.lock().unwrap().join("\n");
    assert!(
        log.contains("count=20") && log.contains("missed while disconnected"),
        "{log}"
    );
}

#[tokio::test]
async fn a_catch_up_that_fails_is_tried_again_never_skipped() {
    // A starved instance's catch-up read can time out (it did, with a million streams on two
    // cores); going live without it would lose the stretch for the instance's streams without
    // a word. Here the read is refused instead: A's Redis user may not XRANGE for a while.
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let grant = |what: &str| {
        redis
            .command(&["ACL", "SETUSER", "instance-a", what])
            .unwrap();
    };
    redis
        .command(&[
            "ACL",
            "SETUSER",
            "instance-a",
            "on",
            ">a-secret",
            "~*",
            "&*",
            "+@all",
        ])
        .unwrap();
    let url = redis.url();
    let a_url = url.replacen("redis://", "redis://instance-a:a-secret@", 1);
    let Started {
        a,
        b,
        topic,
        mut stream,
        first,
    } = started(&a_url, &url, "catch-up-again").await;
    let mut ids = vec![first];
    cut_off_while(&a, &b, &redis, async || {
        ids.extend(publish_numbered(&b, &topic, 1..=5).await);
        grant("-xrange");
    })
    .await;
    a.wait_for_log("cannot read what was missed while disconnected")
        .await;
    // A is not live meanwhile: an update published now must not overtake the missed ones.
    ids.extend(publish_numbered(&b, &topic, 6..=6).await);
    grant("+xrange");
    assert_eq!(
        next_ids(&mut stream, 6).await,
        ids[1..],
        "every update once, in order, once the read succeeds"
    );
    assert_eq!(
        a.metric("tidings_bus_gaps_total").await,
        0.0,
        "nothing lost"
    );
}

#[tokio::test]
async fn an_instance_that_never_delivered_anything_still_catches_up() {
    // A new cluster: the stream is empty and A has delivered nothing yet when its connection
    // drops. What was published meanwhile must still reach A's subscriber.
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let url = redis.url();
    let a = Hub::start(&["--auth", "none", "--bus", &url, "--log", PINGS_LOGGED]);
    let b = Hub::start(&["--auth", "none", "--bus", &url]);
    let topic = crate::common::unique_topic("first");
    let mut stream = Stream::open(&subscribe_url(&a, &[&topic], ""), &[]).await;
    // A pings as soon as it connects and learns the (empty) stream's start.
    a.wait_for_log(PINGED).await;
    let mut id = String::new();
    cut_off_while(&a, &b, &redis, async || {
        let (code, published) = publish(&b, None, &[("topic", &topic), ("data", "first")]).await;
        assert_eq!(code, 200, "{published}");
        id = published;
    })
    .await;
    assert_eq!(stream.next().await.id, id);
    assert_eq!(a.metric("tidings_bus_gaps_total").await, 0.0);
}

#[tokio::test]
async fn an_instance_that_hears_little_counts_no_false_gap_when_history_moves_on() {
    // Under interest routing A hears only its subscriber's topic. Its topic falls silent while
    // the stream fills with other topics and drops A's last update; then A's connection
    // drops. Nothing A needed was lost, so no gap may be counted, and what A's topic got
    // meanwhile is caught up.
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let url = redis.url();
    let args = ["--auth", "none", "--bus", &url, "--history-size", "10"];
    let a = Hub::start(&[&args[..], &["--log", PINGS_LOGGED]].concat());
    let b = Hub::start(&args);
    let quiet = crate::common::unique_topic("quiet");
    let busy = crate::common::unique_topic("busy");
    let mut stream = Stream::open(&subscribe_url(&a, &[&quiet], ""), &[]).await;
    let (_, first) = publish(&b, None, &[("topic", &quiet), ("data", "0")]).await;
    assert_eq!(stream.next().await.id, first);
    for i in 0..300 {
        let (code, id) = publish(&b, None, &[("topic", &busy), ("data", &i.to_string())]).await;
        assert_eq!(code, 200, "{id}");
    }
    let length: i64 =
        redis::from_redis_value(redis.command(&["XLEN", "tidings:stream"]).unwrap()).unwrap();
    assert!(length < 300, "the stream was trimmed ({length} entries)");
    // A pings every second and learns how far it has heard everything it needs: the second
    // ping from now began after the last publish.
    a.wait_for_logs(PINGED, a.log_lines(PINGED) + 2).await;
    let mut missed = Vec::new();
    cut_off_while(&a, &b, &redis, async || {
        missed = publish_numbered(&b, &quiet, 1..=3).await;
    })
    .await;
    for id in &missed {
        assert_eq!(&stream.next().await.id, id);
    }
    assert!(a.metric("tidings_bus_reconnects_total").await >= 1.0);
    assert_eq!(
        a.metric("tidings_bus_gaps_total").await,
        0.0,
        "no false gap"
    );
}

#[tokio::test]
async fn without_history_delivery_resumes_after_a_redis_restart() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let url = redis.url();
    let hub = Hub::start(&["--auth", "none", "--bus", &url, "--history-size", "0"]);
    let topic = crate::common::unique_topic("no-history");
    let mut stream = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
    // Move the sequence well past what a fresh Redis will start from.
    for i in 0..5 {
        let (code, _) = publish(&hub, None, &[("topic", &topic), ("data", &i.to_string())]).await;
        assert_eq!(code, 200);
        assert_eq!(stream.next().await.data, i.to_string());
    }
    redis.restart();
    ready_again(&hub).await;
    publish_once_recovered(&hub, &topic, "after").await;
    assert_eq!(
        stream.next().await.data,
        "after",
        "positions restarted from 1 and are still delivered"
    );
    assert!(hub.metric("tidings_bus_gaps_total").await >= 1.0);
}

#[tokio::test]
async fn a_resume_older_than_topic_histories_last_reads_the_stream() {
    let Some(url) = crate::common::redis_url() else {
        return;
    };
    let keys = crate::common::RedisKeys {
        prefix: crate::common::unique_prefix("stale-resume"),
        url,
    };
    // Two updates on a topic, from long ago (positions are Redis times: 1970), still in the
    // stream because nothing was published since to trim it, and without the topic's own
    // history (long expired).
    let topic = crate::common::unique_topic("stale");
    let mut conn = redis::Client::open(keys.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for (position, id) in [("1000-1", "old-1"), ("1000-2", "old-2")] {
        let message = serde_json::json!({"v": 1, "id": id, "topics": [topic], "data": id});
        let _: String = redis::cmd("XADD")
            .arg(format!("{}:stream", keys.prefix))
            .arg(position)
            .arg("u")
            .arg(message.to_string())
            .arg("t")
            .arg(0)
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("{}:id:{id}", keys.prefix))
            .arg(position)
            .query(&mut conn)
            .unwrap();
    }
    let hub = crate::common::instance_on(&keys.url, &keys.prefix, "stale", &[]);
    let mut stream = Stream::open(
        &subscribe_url(&hub, &[&topic], ""),
        &[("Last-Event-ID", "old-1")],
    )
    .await;
    let event = stream.next().await;
    assert_eq!((event.id.as_str(), event.data.as_str()), ("old-2", "old-2"));
}
