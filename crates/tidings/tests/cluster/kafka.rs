//! Instances on Kafka: the shared one `.ci/services` starts (Tansu on 127.0.0.1:9092, a topic
//! named for each test, deleted afterwards). A broker restart, of a private Tansu, is the bus
//! contract's `survives_a_broker_restart`; a killed instance is `instances.rs`'.

use crate::common::{publish, python_ready, subscribe_url, KafkaTopic, Stream};

fn topic(name: &str) -> Option<KafkaTopic> {
    Some(KafkaTopic {
        url: crate::common::kafka_url()?,
        prefix: crate::common::unique_prefix(name),
    })
}

/// What `examples/python/publish_kafka.py` produces straight onto Kafka reaches a stream on one
/// live instance, and a client resuming on the other from before it gets it too, once.
#[tokio::test]
async fn the_python_example_publishes_to_live_instances_and_a_resume_finds_it() {
    let Some(topic) = topic("kafka-python") else {
        return;
    };
    if !python_ready("confluent_kafka") {
        return;
    }
    let hubs = crate::common::cluster_on(&topic.url, &topic.prefix, 2, &[]);
    let subject = crate::common::unique_topic("kafka-python");
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&subject], ""), &[]).await;
    let (status, before) = publish(&hubs[1], None, &[("topic", &subject), ("data", "http")]).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(stream.next().await.id, before);

    let args = [
        "--kafka",
        topic.url.as_str(),
        "--prefix",
        topic.prefix.as_str(),
        "--topic",
        subject.as_str(),
        "--data",
        "from python",
        "--type",
        "note",
    ];
    let id = crate::common::run_python_example("publish_kafka.py", &args);
    let event = stream.next().await;
    assert_eq!(
        (event.id.as_str(), event.event.as_str(), event.data.as_str()),
        (id.as_str(), "note", "from python")
    );
    // Retried with the same id (its answer was lost, say): delivered once.
    let again = crate::common::run_python_example(
        "publish_kafka.py",
        &[&args[..6], &["--id", &id, "--data", "from python"]].concat(),
    );
    assert_eq!(again, id);
    let (status, after) = publish(&hubs[1], None, &[("topic", &subject), ("data", "last")]).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        stream.next().await.id,
        after,
        "the retry is not delivered again"
    );

    let resume = [("last-event-id", before.as_str())];
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&subject], ""), &resume).await;
    assert_eq!(resumed.next().await.id, id);
    assert_eq!(resumed.next().await.id, after);
    assert!(resumed
        .next_within(std::time::Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn a_kafka_url_that_cannot_be_used_is_a_clear_error_at_start() {
    for (bus, expected) in [
        ("kafka://127.0.0.1:9092/topic", "unexpected path /topic"),
        ("kafka://127.0.0.1:x", "the port is not a number"),
        (
            "kafka://me:secret@127.0.0.1:9092?sasl=gssapi",
            "unknown SASL mechanism",
        ),
        ("kafka://127.0.0.1:9092?partitions=3", "unknown option"),
    ] {
        let stderr = crate::common::failed_start(&["--auth", "none", "--bus", bus]);
        assert!(stderr.contains("bad Kafka URL"), "{bus}: {stderr}");
        assert!(stderr.contains(expected), "{bus}: {stderr}");
        assert!(
            !stderr.contains("secret"),
            "the password is never printed: {stderr}"
        );
    }
}

/// A Kafka that cannot be reached at start-up is not an error: the instance serves, not
/// ready, and says why.
#[tokio::test]
async fn an_unreachable_kafka_leaves_the_instance_waiting_and_saying_so() {
    let port = crate::common::free_port();
    let hub = crate::common::Hub::start(&[
        "--auth",
        "none",
        "--bus",
        &format!("kafka://127.0.0.1:{port}"),
    ]);
    hub.wait_for_log("kafka: cannot connect; retrying").await;
    assert_eq!(crate::common::status(&hub, "/readyz").await, 503);
}

/// An instance started after the updates were published serves resumes from what it read of
/// the partition at start-up; one without history says at once that a resume is a gap.
#[tokio::test]
async fn a_new_instance_serves_resumes_from_what_the_partition_kept() {
    let Some(topic) = topic("kafka-late") else {
        return;
    };
    let mut first = crate::common::cluster_on(&topic.url, &topic.prefix, 1, &[]);
    let subject = crate::common::unique_topic("kafka-late");
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, id) = publish(
            &first[0],
            None,
            &[("topic", &subject), ("data", &i.to_string())],
        )
        .await;
        assert_eq!(status, 200, "{id}");
        ids.push(id);
    }
    first[0].kill();
    let late = crate::common::instance_on(&topic.url, &topic.prefix, "late", &[]);
    let resume = format!("&lastEventID={}", ids[1]);
    let mut resumed = Stream::open(&subscribe_url(&late, &[&subject], &resume), &[]).await;
    for id in &ids[2..] {
        assert_eq!(&resumed.next().await.id, id);
    }
    let earliest = "&lastEventID=earliest";
    let mut earliest = Stream::open(&subscribe_url(&late, &[&subject], earliest), &[]).await;
    for id in &ids {
        assert_eq!(&earliest.next().await.id, id);
    }

    let forgetful = crate::common::instance_on(
        &topic.url,
        &topic.prefix,
        "forgetful",
        &["--history-size", "0"],
    );
    let mut gap = Stream::open(&subscribe_url(&forgetful, &[&subject], &resume), &[]).await;
    let event = gap.next_within(std::time::Duration::from_secs(2)).await;
    let event = event.expect("the gap is told at once, not after a wait");
    assert_eq!(event.event, "tidings-gap", "{event:?}");
}
