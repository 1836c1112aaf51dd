//! Acknowledged means durable (`--redis-min-replicas`): on a private Redis primary, a publish is
//! answered only once a replica holds it; without one in time, the publisher hears that the
//! outcome is unknown, and its retry with the same id is stored once.

use std::time::Duration;

use crate::common::{publish, unique_prefix, unique_topic, wait_for, PrivateRedis};

#[tokio::test]
async fn a_publish_is_answered_once_a_replica_holds_it() {
    let Some(primary) = PrivateRedis::start() else {
        return;
    };
    let prefix = unique_prefix("min-replicas");
    let hub = crate::common::instance_on(
        &primary.url(),
        &prefix,
        "replicas-0",
        &["--redis-min-replicas", "1", "--bus-timeout", "1"],
    );
    let topic = unique_topic("replicas");
    let form = |id: &'static str| {
        [
            ("topic", topic.clone()),
            ("data", id.to_owned()),
            ("id", id.to_owned()),
        ]
    };
    let send = async |id: &'static str| {
        let form = form(id);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        publish(&hub, None, &form).await
    };
    let stored = || match primary.command(&["XLEN", &format!("{prefix}:stream")]) {
        Ok(redis::Value::Int(n)) => n,
        other => panic!("XLEN: {other:?}"),
    };

    // No replica: stored on the primary, but not acknowledged as durable.
    let started = std::time::Instant::now();
    let (status, body) = send("urn:test:first").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("publish_outcome_unknown"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(stored(), 1);

    // A replica joins and catches up.
    let Some(replica) = PrivateRedis::replica_of(&primary) else {
        return;
    };
    wait_for("the replica in sync", async || {
        replica.replication("master_link_status").as_deref() == Some("up")
    })
    .await;
    let (status, id) = send("urn:test:second").await;
    assert_eq!((status, id.as_str()), (200, "urn:test:second"));
    // The retried first publish is acknowledged now, and stored once.
    let (status, id) = send("urn:test:first").await;
    assert_eq!((status, id.as_str()), (200, "urn:test:first"));
    assert_eq!(stored(), 2);
    match replica.command(&["XLEN", &format!("{prefix}:stream")]) {
        Ok(redis::Value::Int(n)) => assert_eq!(n, 2, "the replica holds both"),
        other => panic!("XLEN on the replica: {other:?}"),
    }
}

#[test]
fn min_replicas_applies_to_the_redis_bus_only() {
    crate::common::refuses_to_start(
        &["--auth", "none", "--redis-min-replicas", "1"],
        "redis-min-replicas is 1, but it applies to the Redis bus only",
    );
}
