//! Redis behind Sentinel (`redis+sentinel://`), with private processes: a primary, its replica
//! and three sentinels. Two instances find the primary through the sentinels; when it is
//! SIGKILLed and the sentinels promote the replica, the instances follow: publishes are taken
//! again, and an open stream gets what is published after the failover, in order.

use std::time::Duration;

use crate::common::{
    publish, publish_once_recovered, subscribe_url, unique_prefix, unique_topic, wait_until,
    PrivateRedis, PrivateSentinels, Stream,
};

/// A primary, its replica in sync, and three sentinels watching it as `master`; `None` (skip)
/// when `redis-server` is missing.
async fn watched(master: &str) -> Option<(PrivateRedis, PrivateRedis, PrivateSentinels)> {
    let primary = PrivateRedis::start()?;
    let replica = PrivateRedis::replica_of(&primary)?;
    let sentinels = PrivateSentinels::watch(&primary, master)?;
    wait_until("the replica in sync", Duration::from_secs(10), async || {
        replica.replication("master_link_status").as_deref() == Some("up")
    })
    .await;
    Some((primary, replica, sentinels))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_follow_the_primary_the_sentinels_promote() {
    let Some((mut primary, replica, sentinels)) = watched("tidings-test").await else {
        return;
    };
    // A master name the sentinels do not know is a configuration error.
    let unknown = format!(
        "redis+sentinel://127.0.0.1:{}/no-such-master/0",
        sentinels.ports[0]
    );
    crate::common::refuses_to_start(
        &["--auth", "none", "--bus", &unknown],
        "know no usable primary by that master name",
    );
    let prefix = unique_prefix("sentinel");
    let hubs: Vec<_> = (0..2)
        .map(|i| {
            crate::common::instance_on(&sentinels.url(), &prefix, &format!("{prefix}-{i}"), &[])
        })
        .collect();
    let topic = unique_topic("sentinel");
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let (status, before) = publish(&hubs[1], None, &[("topic", &topic), ("data", "before")]).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(stream.next().await.id, before);

    // The primary dies; the sentinels promote the replica.
    primary.stop();
    wait_until(
        "the sentinels promote the replica",
        Duration::from_secs(30),
        async || sentinels.primary_port() == Some(replica.port),
    )
    .await;
    let mut after = Vec::new();
    for n in 0..5 {
        after.push(publish_once_recovered(&hubs[1], &topic, &format!("after {n}")).await);
    }
    for id in &after {
        let event = stream
            .next_within(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no update after the failover; log:\n{}",
                    hubs[0].log.lock().unwrap().join("\n")
                )
            });
        assert_eq!(&event.id, id, "every update after the failover, in order");
    }
    for hub in &hubs {
        hub.wait_for_log("the sentinels name a new primary; following it")
            .await;
    }
    // A client resuming on the other instance gets the same, from the new primary's stream.
    let resume = format!("&lastEventID={before}");
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
    for id in &after {
        assert_eq!(&resumed.next().await.id, id);
    }
}

/// With asynchronous replication, a primary that dies takes with it what its replica had not
/// received. The instance that delivered those updates notices when it reconnects (the new
/// primary's stream does not hold where it stopped): it counts a gap, and a client resuming
/// from before them is told that it missed some, not silently given what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_lost_in_a_failover_are_reported_as_a_gap_never_skipped_silently() {
    let Some((mut primary, replica, sentinels)) = watched("tidings-loss").await else {
        return;
    };
    let prefix = unique_prefix("sentinel-loss");
    let hub = crate::common::instance_on(&sentinels.url(), &prefix, &format!("{prefix}-0"), &[]);
    let topic = unique_topic("loss");
    let mut live = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
    let (status, kept) = publish(&hub, None, &[("topic", &topic), ("data", "kept")]).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(live.next().await.id, kept);
    wait_until(
        "the replica holds it",
        Duration::from_secs(10),
        async || {
            matches!(
                replica.command(&["XLEN", &format!("{prefix}:stream")]),
                Ok(redis::Value::Int(1))
            )
        },
    )
    .await;
    // The replica stops receiving; two updates are acknowledged and delivered, then the
    // primary dies with them
    replica.freeze(true);
    // (and its link is cut, so that nothing already sent waits in its socket for it)
    primary
        .command(&["CLIENT", "KILL", "TYPE", "replica"])
        .expect("cut the replica's link");
    let mut doomed = Vec::new();
    for data in ["doomed 1", "doomed 2"] {
        let (status, id) = publish(&hub, None, &[("topic", &topic), ("data", data)]).await;
        assert_eq!(status, 200, "{id}");
        assert_eq!(live.next().await.id, id);
        doomed.push(id);
    }
    primary.stop();
    replica.freeze(false);
    wait_until(
        "the sentinels promote the replica",
        Duration::from_secs(30),
        async || sentinels.primary_port() == Some(replica.port),
    )
    .await;
    let after = publish_once_recovered(&hub, &topic, "after").await;
    assert_eq!(
        live.next_within(Duration::from_secs(20))
            .await
            .map(|e| e.id),
        Some(after.clone())
    );
    hub.wait_for_log("the stream no longer holds where delivery stopped")
        .await;
    assert!(hub.metric("tidings_bus_gaps_total").await >= 1.0);
    // Resuming from before the loss: told, then what history holds after the id.
    let resume = format!("&lastEventID={kept}");
    let mut resumed = Stream::open(&subscribe_url(&hub, &[&topic], &resume), &[]).await;
    let gap = resumed.next().await;
    assert_eq!(gap.event, "tidings-gap", "{gap:?}");
    assert!(gap.data.contains("lost in a failover"), "{}", gap.data);
    assert_eq!(resumed.next().await.id, after);
    // Resuming from a lost update: unknown to the new primary, told as well.
    let resume = format!("&lastEventID={}", doomed[1]);
    let mut resumed = Stream::open(&subscribe_url(&hub, &[&topic], &resume), &[]).await;
    assert_eq!(resumed.next().await.event, "tidings-gap");
}

#[test]
fn a_sentinel_url_without_a_master_name_stops_start_up() {
    crate::common::refuses_to_start(
        &[
            "--auth",
            "none",
            "--bus",
            "redis+sentinel://127.0.0.1:26379",
        ],
        "no master name",
    );
}

#[tokio::test]
async fn unreachable_sentinels_leave_the_instance_waiting_and_saying_so() {
    let port = crate::common::free_port();
    let hub = crate::common::Hub::start(&[
        "--auth",
        "none",
        "--bus",
        &format!("redis+sentinel://127.0.0.1:{port}/tidings-test/0"),
    ]);
    hub.wait_for_log("none of the sentinels of redis+sentinel://")
        .await;
    assert_eq!(crate::common::status(&hub, "/readyz").await, 503);
}
