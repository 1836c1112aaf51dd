//! Instances on RabbitMQ: the machine's (127.0.0.1:5672, with an exchange and a stream named
//! for each test, deleted afterwards), where faults are made from the server side with
//! `rabbitmqctl close_connection` on the test's own instances' connections. The shared broker
//! itself is never stopped (a restart, of a private node, is the bus contract's
//! `survives_a_broker_restart`).

use std::process::Command;
use std::time::Duration;

use crate::common::{publish, publish_once_recovered, subscribe_url, AmqpObjects, Hub, Stream};

/// `n` instances on the test's exchange; their instance ids are `<prefix>-<i>`.
fn cluster(objects: &AmqpObjects, n: usize, extra: &[&str]) -> Vec<Hub> {
    crate::common::cluster_on(&objects.url, &objects.prefix, n, extra)
}

fn objects(name: &str) -> Option<AmqpObjects> {
    Some(AmqpObjects {
        url: crate::common::amqp_url()?,
        prefix: crate::common::unique_prefix(name),
    })
}

/// Closes, from the server's side, the RabbitMQ connection of the instance `instance_id`.
fn close_connection(instance_id: &str) {
    let listing = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .args(["--no-table-headers"])
        .output()
        .expect("rabbitmqctl (from the RabbitMQ server package) is needed for this test");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let needle = format!("{{\"connection_name\",\"tidings {instance_id}\"}}");
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| line.split('\t').next())
        .collect();
    assert!(!pids.is_empty(), "no connection of {instance_id}");
    for pid in pids {
        let closed = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "closed by a Tidings test"])
            .output()
            .unwrap();
        assert!(closed.status.success(), "{closed:?}");
    }
}

/// Reads `stream` (which already delivered `ids[0]`) until it delivered every other id of
/// `ids`, and checks it got them once each, in order. A publish answered 503 may still have
/// reached RabbitMQ (the confirmation was lost with the connection): such an update is
/// delivered too, and skipped here.
async fn receive_all(stream: &mut Stream, ids: &[String], hub: &Hub) {
    let mut got = vec![ids[0].clone()];
    while got.len() < ids.len() {
        match stream.next_within(Duration::from_secs(15)).await {
            Some(event) if ids.contains(&event.id) => got.push(event.id),
            Some(_) => {}
            None => panic!(
                "got {} of {}; log of the instance:\n{}",
                got.len(),
                ids.len(),
                hub.log.lock().unwrap().join("\n")
            ),
        }
    }
    assert_eq!(got, ids, "the open stream got every update once, in order");
}

async fn wait_ready(hub: &Hub) {
    crate::common::wait_until(
        "readiness to come back",
        Duration::from_secs(15),
        async || crate::common::status(hub, "/readyz").await == 200,
    )
    .await;
}

#[tokio::test]
async fn three_instances_lose_nothing_when_rabbitmq_drops_them_and_resume_anywhere() {
    let Some(objects) = objects("amqp-cluster") else {
        return;
    };
    let hubs = cluster(&objects, 3, &[]);
    let topic = crate::common::unique_topic("amqp");
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let (code, first) = publish(&hubs[1], None, &[("topic", &topic), ("data", "0")]).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(stream.next().await.id, first);

    // The subscriber's instance and the publisher's lose their connections while updates
    // are being published; the stream keeps them, and each instance reads on from its offset.
    let closer = {
        let (a, c) = (
            format!("{}-0", objects.prefix),
            format!("{}-2", objects.prefix),
        );
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(200));
            close_connection(&a);
            close_connection(&c);
        })
    };
    let mut ids = vec![first];
    for i in 1..=150 {
        ids.push(publish_once_recovered(&hubs[2], &topic, &i.to_string()).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    closer.await.unwrap();
    wait_ready(&hubs[0]).await;
    wait_ready(&hubs[2]).await;
    receive_all(&mut stream, &ids, &hubs[0]).await;
    assert!(hubs[0].metric("tidings_bus_reconnects_total").await >= 1.0);
    assert_eq!(hubs[0].metric("tidings_bus_gaps_total").await, 0.0);

    // A client of A resumes on B after the id it saw tenth, and right after a publish on C:
    // B serves what it has read, and waits for what it has not.
    let resume = format!("&lastEventID={}", ids[10]);
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
    for id in &ids[11..] {
        assert_eq!(&resumed.next().await.id, id);
    }
    let latest = publish_once_recovered(&hubs[2], &topic, "latest").await;
    let resume = format!("&lastEventID={latest}");
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
    let after = publish_once_recovered(&hubs[2], &topic, "after").await;
    assert_eq!(resumed.next().await.id, after, "no gap, no repeat");
}

#[tokio::test]
async fn a_new_instance_serves_resumes_from_what_the_stream_kept() {
    let Some(objects) = objects("amqp-late") else {
        return;
    };
    let mut first = cluster(&objects, 1, &[]);
    let topic = crate::common::unique_topic("amqp-late");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish_once_recovered(&first[0], &topic, &i.to_string()).await);
    }
    first[0].kill();
    // Started after everything was published, by another process.
    let late = crate::common::instance_on(&objects.url, &objects.prefix, "late", &[]);
    let resume = format!("&lastEventID={}", ids[1]);
    let mut resumed = Stream::open(&subscribe_url(&late, &[&topic], &resume), &[]).await;
    for id in &ids[2..] {
        assert_eq!(&resumed.next().await.id, id);
    }
    let mut earliest = Stream::open(
        &subscribe_url(&late, &[&topic], "&lastEventID=earliest"),
        &[],
    )
    .await;
    for id in &ids {
        assert_eq!(&earliest.next().await.id, id);
    }
}

#[tokio::test]
async fn without_history_each_instance_reads_its_own_queue() {
    let Some(objects) = objects("amqp-queues") else {
        return;
    };
    let hubs = cluster(&objects, 2, &["--history-size", "0"]);
    let topic = crate::common::unique_topic("amqp-queues");
    let mut a = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let mut b = Stream::open(&subscribe_url(&hubs[1], &[&topic], ""), &[]).await;
    let id = publish_once_recovered(&hubs[1], &topic, "x").await;
    assert_eq!(a.next().await.id, id);
    assert_eq!(b.next().await.id, id);
    let queues = Command::new("rabbitmqctl")
        .args(["list_queues", "name", "exclusive", "auto_delete", "-q"])
        .output()
        .unwrap();
    let queues = String::from_utf8_lossy(&queues.stdout);
    for i in 0..2 {
        let line = format!(
            "{}.instance.{}-{i}\ttrue\ttrue",
            objects.prefix, objects.prefix
        );
        assert!(queues.contains(&line), "{line:?} in {queues}");
    }
    // A dropped connection loses what was published meanwhile: counted as a gap.
    close_connection(&format!("{}-0", objects.prefix));
    wait_ready(&hubs[0]).await;
    crate::common::wait_for("the gap to be counted", async || {
        hubs[0].metric("tidings_bus_gaps_total").await >= 1.0
    })
    .await;
    let next = publish_once_recovered(&hubs[1], &topic, "y").await;
    assert_eq!(
        a.next().await.id,
        next,
        "delivery goes on after the reconnect"
    );
}

#[tokio::test]
async fn a_rabbitmq_that_cannot_be_used_is_a_clear_error_at_start() {
    let Some(url) = crate::common::amqp_url() else {
        return;
    };
    let bad_password = url.replacen("guest:guest", "guest:wrong", 1);
    let unknown_vhost = format!("{}/no-such-vhost", url.rsplit_once('/').unwrap().0);
    // (A RabbitMQ that cannot be reached is not an error: see the next test.)
    for (bus, expected) in [
        (bad_password.as_str(), "cannot use RabbitMQ"),
        (unknown_vhost.as_str(), "vhost no-such-vhost not found"),
        ("amqp://127.0.0.1:5672:x/", "bad RabbitMQ URL"),
    ] {
        let stderr = crate::common::failed_start(&["--auth", "none", "--bus", bus]);
        assert!(stderr.contains(expected), "{bus}: {stderr}");
        assert!(
            !stderr.contains("wrong"),
            "the password is never printed: {stderr}"
        );
    }
}

#[tokio::test]
async fn three_instances_started_at_once_on_a_new_prefix_all_come_up() {
    // Their declarations of the same new exchange and stream race; one that loses gets an
    // error from RabbitMQ, retries, and serves like the others.
    let Some(objects) = objects("amqp-at-once") else {
        return;
    };
    let hubs: Vec<Hub> = std::thread::scope(|scope| {
        let started: Vec<_> = (0..3)
            .map(|i| {
                let objects = &objects;
                scope.spawn(move || {
                    let id = format!("{}-{i}", objects.prefix);
                    crate::common::instance_on(&objects.url, &objects.prefix, &id, &[])
                })
            })
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for hub in &hubs {
        wait_ready(hub).await;
    }
    let topic = crate::common::unique_topic("amqp-at-once");
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let (code, id) = publish(&hubs[2], None, &[("topic", &topic), ("data", "all up")]).await;
    assert_eq!(code, 200, "{id}");
    assert_eq!(stream.next().await.id, id);
}
