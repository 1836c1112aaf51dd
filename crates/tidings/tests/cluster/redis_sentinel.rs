//! Redis behind Sentinel (`redis+sentinel://`), with private processes: a primary, its
//! replicas and three sentinels. Instances find the primary through the sentinels; when it is
//! SIGKILLed and the sentinels promote a replica, the instances follow: publishes are taken
//! again, and open streams get what is published after the failover, in order. Under load,
//! with `--redis-min-replicas 1` nothing acknowledged is lost; without it, what the failover
//! lost is reported as a gap, never skipped silently, and nothing is delivered twice.

use std::time::Duration;

use crate::common::{
    publish, publish_once_recovered, subscribe_url, unique_prefix, unique_topic, wait_until,
    PrivateRedis, PrivateSentinels, Stream,
};

/// A primary, its replica in sync, and three sentinels watching it as `master`; `None` (skip)
/// when `redis-server` is missing.
async fn watched(master: &str) -> Option<(PrivateRedis, PrivateRedis, PrivateSentinels)> {
    let (primary, mut replicas, sentinels) = watched_with(master, 1).await?;
    Some((primary, replicas.remove(0), sentinels))
}

/// A primary, `n` replicas in sync, and three sentinels watching them as `master`.
async fn watched_with(
    master: &str,
    n: usize,
) -> Option<(PrivateRedis, Vec<PrivateRedis>, PrivateSentinels)> {
    let primary = PrivateRedis::start()?;
    let replicas = (0..n)
        .map(|_| PrivateRedis::replica_of(&primary))
        .collect::<Option<Vec<_>>>()?;
    let sentinels = PrivateSentinels::watch(&primary, master)?;
    wait_until(
        "the replicas in sync",
        Duration::from_secs(10),
        async || {
            replicas
                .iter()
                .all(|r| r.replication("master_link_status").as_deref() == Some("up"))
        },
    )
    .await;
    // The sentinels must know the replicas before the primary dies, or they promote none.
    wait_until(
        "the sentinels know the replicas",
        Duration::from_secs(15),
        async || sentinels.replicas_known() >= n,
    )
    .await;
    Some((primary, replicas, sentinels))
}

/// Waits until `replica` holds everything `primary` held when called: its replication offset
/// reaches the primary's.
async fn replica_holds_what_the_primary_does(primary: &PrivateRedis, replica: &PrivateRedis) {
    let offset = |redis: &PrivateRedis| {
        redis
            .replication("master_repl_offset")
            .and_then(|o| o.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let held = offset(primary);
    wait_until(
        "the replica to hold what the primary does",
        Duration::from_secs(10),
        async || offset(replica) >= held,
    )
    .await;
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
    // Replication is asynchronous: the replica must hold what the primary does before it dies
    // (this test is of following a failover; losing in one is another test's).
    replica_holds_what_the_primary_does(&primary, &replica).await;

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
        hub.wait_for_log("redis: a new primary; following it").await;
    }
    // A client resuming on the other instance gets the same, from the new primary's stream.
    let resume = format!("&lastEventID={before}");
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
    for id in &after {
        assert_eq!(&resumed.next().await.id, id);
    }
}

/// The phases of a failover under load, as the publishers see them.
const RUNNING: u8 = 0;
/// The replica no longer receives: what is published now lives on the primary alone.
const DOOMED: u8 = 1;
/// The primary is dead; a replica is being promoted.
const FAILING: u8 = 2;
/// A replica was promoted and every instance publishes again.
const RECOVERED: u8 = 3;
const DONE: u8 = 4;
/// The publishers wait: nothing is in flight when the primary is killed. (A publish the
/// primary acknowledges as it is killed may never reach an instance's subscription: that
/// loss is reported as a gap, and is not what a test of live delivery looks at.)
const HELD: u8 = 5;

/// Publishes numbered updates on `topic` through `hub` until the phase is [`DONE`], one every
/// 10 ms; the ids acknowledged (200), in order, each with the phase when it was sent. Anything
/// else must be a refusal (503) or an unknown outcome (504), never an error of another kind.
async fn keep_publishing(
    hub: &crate::common::Hub,
    topic: &str,
    name: String,
    phase: tokio::sync::watch::Receiver<u8>,
) -> Vec<(u8, String)> {
    let mut acked = Vec::new();
    for n in 0.. {
        let sent_in = *phase.borrow();
        if sent_in == DONE {
            break;
        }
        if sent_in == HELD {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let data = format!("{name} {n}");
        let (status, body) = publish(hub, None, &[("topic", topic), ("data", &data)]).await;
        match status {
            200 => acked.push((sent_in, body)),
            503 | 504 => {}
            other => panic!("publish answered {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acked
}

/// The ids of each publisher's acknowledged updates.
fn ids(acked: &[Vec<(u8, String)>]) -> Vec<Vec<String>> {
    acked
        .iter()
        .map(|a| a.iter().map(|(_, id)| id.clone()).collect())
        .collect()
}

/// Reads `stream` until it delivered every id of `wanted` (or nothing came for 20 s), then
/// whatever else arrives within half a second: the update ids, in order (gap events apart).
async fn read_until_all(stream: &mut Stream, wanted: &[String]) -> Vec<String> {
    let mut missing: std::collections::HashSet<&String> = wanted.iter().collect();
    let mut ids = Vec::new();
    let mut quiet = Duration::from_secs(20);
    while let Some(event) = stream.next_within(quiet).await {
        if event.event != "tidings-gap" {
            missing.remove(&event.id);
            ids.push(event.id);
        }
        if missing.is_empty() {
            quiet = Duration::from_millis(500);
        }
    }
    ids
}

/// Whether `ids`, read from a stream of `hub`, holds every id of each publisher's `acked`, in
/// that publisher's order, and no id twice; panics saying what is wrong otherwise, with what
/// the instance logged of its bus (a failover's story is in it).
fn every_acknowledged_once_in_order(
    what: &str,
    hub: &crate::common::Hub,
    ids: &[String],
    acked: &[Vec<String>],
) {
    let fail = |why: String| -> ! {
        let log = hub.log.lock().unwrap();
        let told: Vec<&String> = log.iter().filter(|l| l.contains("redis")).collect();
        panic!("{what}: {why}\nthe instance's log of its bus: {told:#?}")
    };
    let mut seen = std::collections::HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        if let Some(first) = seen.insert(id, i) {
            fail(format!(
                "{id} delivered twice (events {first} and {i} of {})",
                ids.len()
            ));
        }
    }
    for publisher in acked {
        let places: Vec<Option<&usize>> = publisher.iter().map(|id| seen.get(id)).collect();
        let lost = places.iter().filter(|p| p.is_none()).count();
        if lost > 0 {
            fail(format!("{lost} acknowledged update(s) missing"));
        }
        if !places.windows(2).all(|w| w[0] < w[1]) {
            fail("one publisher's updates out of order".to_owned());
        }
    }
}

/// The primary dies while three instances publish and deliver. With `--redis-min-replicas 1`
/// (two replicas, so that the promoted one still has one to wait for), every acknowledged
/// update reaches every open stream once, in order, and replays on every instance after the
/// failover: nothing acknowledged is lost, nothing is repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_every_acknowledged_update_survives_a_failover_under_load() {
    let Some((mut primary, replicas, sentinels)) = watched_with("tidings-durable", 2).await else {
        return;
    };
    let prefix = unique_prefix("sentinel-durable");
    let extra = ["--redis-min-replicas", "1"];
    let hubs: Vec<_> = (0..3)
        .map(|i| {
            crate::common::instance_on(&sentinels.url(), &prefix, &format!("{prefix}-{i}"), &extra)
        })
        .collect();
    let topic = unique_topic("durable");
    let (status, kept) = publish(&hubs[0], None, &[("topic", &topic), ("data", "first")]).await;
    assert_eq!(status, 200, "{kept}");
    let mut streams = Vec::new();
    for hub in &hubs {
        let resume = format!("&lastEventID={kept}");
        streams.push(Stream::open(&subscribe_url(hub, &[&topic], &resume), &[]).await);
    }
    let (phase, phases) = tokio::sync::watch::channel(RUNNING);
    let publishers = futures_util::future::join_all(
        hubs.iter()
            .enumerate()
            .map(|(i, hub)| keep_publishing(hub, &topic, format!("p{i}"), phases.clone())),
    );
    let failover = async {
        // (2 s: with the other tests running beside it, 1 s gave 29 acknowledgements once.)
        tokio::time::sleep(Duration::from_secs(2)).await;
        primary.stop();
        phase.send_replace(FAILING);
        wait_until(
            "the sentinels promote a replica",
            Duration::from_secs(30),
            async || {
                replicas
                    .iter()
                    .any(|r| sentinels.primary_port() == Some(r.port))
            },
        )
        .await;
        for hub in &hubs {
            publish_once_recovered(hub, &topic, "recovered").await;
        }
        phase.send_replace(RECOVERED);
        tokio::time::sleep(Duration::from_secs(1)).await;
        phase.send_replace(DONE);
    };
    let (acked, ()) = tokio::join!(publishers, failover);
    let after = |p| {
        acked
            .iter()
            .flatten()
            .filter(move |(phase, _)| *phase == p)
            .count()
    };
    assert!(
        after(RUNNING) >= 30 && after(RECOVERED) >= 30,
        "acknowledged before the failover: {}, after: {}",
        after(RUNNING),
        after(RECOVERED)
    );
    let acked = ids(&acked);
    let all: Vec<String> = acked.iter().flatten().cloned().collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        let ids = read_until_all(stream, &all).await;
        every_acknowledged_once_in_order(
            &format!("stream on instance {i}"),
            &hubs[i],
            &ids,
            &acked,
        );
    }
    // Replayable on every instance after the failover, from before it.
    for (i, hub) in hubs.iter().enumerate() {
        let resume = format!("&lastEventID={kept}");
        let mut resumed = Stream::open(&subscribe_url(hub, &[&topic], &resume), &[]).await;
        let ids = read_until_all(&mut resumed, &all).await;
        every_acknowledged_once_in_order(&format!("replay on instance {i}"), hub, &ids, &acked);
    }
}

/// Without `--redis-min-replicas`, what the primary acknowledged but no replica received dies
/// with it. Three instances publish and deliver while the replica stops receiving, then the
/// primary dies: nothing is delivered twice, every instance counts the loss, and a client
/// resuming from before it is told (`tidings-gap`) — never silently handed what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_min_replicas_what_a_failover_loses_is_reported_never_skipped() {
    let Some((mut primary, replica, sentinels)) = watched("tidings-lossy").await else {
        return;
    };
    let prefix = unique_prefix("sentinel-lossy");
    let hubs: Vec<_> = (0..3)
        .map(|i| {
            crate::common::instance_on(&sentinels.url(), &prefix, &format!("{prefix}-{i}"), &[])
        })
        .collect();
    let topic = unique_topic("lossy");
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(Stream::open(&subscribe_url(hub, &[&topic], ""), &[]).await);
    }
    let (phase, phases) = tokio::sync::watch::channel(RUNNING);
    let publishers = futures_util::future::join_all(
        hubs.iter()
            .enumerate()
            .map(|(i, hub)| keep_publishing(hub, &topic, format!("p{i}"), phases.clone())),
    );
    let failover = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // What the replica holds when it stops receiving survives; a client resumes from it.
        let (status, kept) = publish(&hubs[0], None, &[("topic", &topic), ("data", "kept")]).await;
        assert_eq!(status, 200, "{kept}");
        // (Not `WAIT` on a connection of its own: it waits for that connection's writes,
        // none — the replica then lacked `kept` now and then, and the resume from it was told
        // "unknown" instead of "lost in a failover".)
        replica_holds_what_the_primary_does(&primary, &replica).await;
        replica.freeze(true);
        primary
            .command(&["CLIENT", "KILL", "TYPE", "replica"])
            .expect("cut the replica's link");
        phase.send_replace(DOOMED);
        // (1 s: at least 10 acknowledged while the replica is cut off, on a loaded machine.)
        tokio::time::sleep(Duration::from_secs(1)).await;
        // What was acknowledged is delivered before the primary dies.
        phase.send_replace(HELD);
        tokio::time::sleep(Duration::from_millis(500)).await;
        primary.stop();
        phase.send_replace(FAILING);
        replica.freeze(false);
        wait_until(
            "the sentinels promote the replica",
            Duration::from_secs(30),
            async || sentinels.primary_port() == Some(replica.port),
        )
        .await;
        for hub in &hubs {
            publish_once_recovered(hub, &topic, "recovered").await;
        }
        phase.send_replace(RECOVERED);
        tokio::time::sleep(Duration::from_secs(1)).await;
        phase.send_replace(DONE);
        kept
    };
    let (acked, kept) = tokio::join!(publishers, failover);
    let sent_in = |p| -> Vec<String> {
        acked
            .iter()
            .flatten()
            .filter(|(phase, _)| *phase == p)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let (doomed, recovered) = (sent_in(DOOMED), sent_in(RECOVERED));
    assert!(
        doomed.len() >= 10 && recovered.len() >= 10,
        "acknowledged while the replica was frozen: {}, after the failover: {}",
        doomed.len(),
        recovered.len()
    );
    let acked = ids(&acked);
    let all: Vec<String> = acked.iter().flatten().cloned().collect();
    // Open streams got everything once, in order: the doomed updates live, before they died.
    for (i, stream) in streams.iter_mut().enumerate() {
        let ids = read_until_all(stream, &all).await;
        every_acknowledged_once_in_order(
            &format!("stream on instance {i}"),
            &hubs[i],
            &ids,
            &acked,
        );
    }
    for hub in &hubs {
        hub.wait_for_log("the stream no longer holds where delivery stopped")
            .await;
        assert!(hub.metric("tidings_bus_gaps_total").await >= 1.0);
    }
    // Resuming from before the loss, on any instance: told first, then what history holds,
    // once each: everything after the failover, none of what died.
    for (i, hub) in hubs.iter().enumerate() {
        let resume = format!("&lastEventID={kept}");
        let mut resumed = Stream::open(&subscribe_url(hub, &[&topic], &resume), &[]).await;
        let gap = resumed.next().await;
        assert_eq!(gap.event, "tidings-gap", "instance {i}: {gap:?}");
        assert!(gap.data.contains("lost in a failover"), "{}", gap.data);
        let ids = read_until_all(&mut resumed, &recovered).await;
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "instance {i}: an update replayed twice"
        );
        assert!(
            recovered.iter().all(|id| unique.contains(id)),
            "instance {i}: an update published after the failover is missing"
        );
        assert!(
            !doomed.iter().any(|id| unique.contains(id)),
            "instance {i}: an update the failover lost was replayed"
        );
    }
    // Resuming from a lost update: unknown to the new primary, told as well.
    let resume = format!("&lastEventID={}", doomed[doomed.len() / 2]);
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
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
