//! Publishing straight onto the broker, without HTTP, as `docs/wire-format.md` specifies: the
//! Python examples, the Rust client's Redis and NATS publishers and a raw script call are
//! delivered by every instance of a live cluster of two, exactly as if they had been POSTed.

#![allow(clippy::print_stderr)]

use std::path::PathBuf;
use std::process::Command;

use crate::common::{subscribe_url, Hub, RedisKeys, Stream};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/python")
        .join(name)
}

/// True when `python3` can import `module`; a failure under `TIDINGS_REQUIRE_BROKERS=1`.
fn python_ready(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("TIDINGS_REQUIRE_BROKERS").as_deref() == Ok("1") {
            panic!("python3 with the {module} package is required: pip install -r examples/python/requirements.txt");
        }
        eprintln!("skipping: python3 cannot import {module} (pip install -r examples/python/requirements.txt)");
    }
    ok
}

/// Runs a Python example and returns the id it printed.
fn run_example(name: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg(example(name))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn two_instances(name: &str) -> Option<(RedisKeys, Vec<Hub>)> {
    let keys = crate::common::redis_keys(name)?;
    let hubs = crate::common::redis_cluster(&keys, 2, &[]);
    Some((keys, hubs))
}

#[tokio::test]
async fn the_python_example_publishes_to_every_instance() {
    if !python_ready("redis") {
        return;
    }
    let Some((keys, hubs)) = two_instances("python") else {
        return;
    };
    let topic = crate::common::unique_topic("python");
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(Stream::open(&subscribe_url(hub, &[&topic], ""), &[]).await);
    }
    let id = run_example(
        "publish.py",
        &[
            "--redis",
            &keys.url,
            "--prefix",
            &keys.prefix,
            "--topic",
            &topic,
            "--data",
            "from python\nsecond line",
            "--type",
            "book",
        ],
    );
    assert!(id.starts_with("urn:uuid:"), "{id}");
    for stream in &mut streams {
        let event = stream.next().await;
        assert_eq!(
            (event.id.as_str(), event.event.as_str()),
            (id.as_str(), "book")
        );
        assert_eq!(event.data, "from python\nsecond line");
    }
    // It is in history: resuming before it on either instance replays it.
    let mut resumed = Stream::open(
        &subscribe_url(&hubs[1], &[&topic], "&lastEventID=earliest"),
        &[],
    )
    .await;
    assert_eq!(resumed.next().await.id, id);
}

#[tokio::test]
async fn a_minimal_message_gets_the_same_derived_id_everywhere_and_a_bad_one_is_skipped() {
    let Some((keys, hubs)) = two_instances("minimal") else {
        return;
    };
    let topic = crate::common::unique_topic("minimal");
    let mut a = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let mut b = Stream::open(&subscribe_url(&hubs[1], &[&topic], ""), &[]).await;
    let mut conn = redis::Client::open(keys.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let script = redis::Script::new(tidings::bus::redis::PUBLISH_SCRIPT);
    let try_run = |conn: &mut redis::Connection, message: &str| {
        script
            .arg(&keys.prefix)
            .arg(message)
            .arg(0)
            .arg("")
            .invoke::<(String, u64)>(conn)
    };
    let run = |conn: &mut redis::Connection, message: &str| try_run(conn, message).unwrap().0;
    // Not a message at all: the script refuses it, nothing is stored or sent.
    for garbage in [
        "not json",
        r#"{"v":1}"#,
        r#"{"v":1,"topics":[]}"#,
        r#"{"v":1,"topics":[7]}"#,
    ] {
        let refused = try_run(&mut conn, garbage).unwrap_err();
        assert!(
            refused.to_string().contains("tidings:"),
            "{garbage}: {refused}"
        );
    }
    // Not valid: unknown version, a line break in the type. Skipped by every instance.
    run(&mut conn, r#"{"v":2,"topics":["x"]}"#);
    run(
        &mut conn,
        &serde_json::json!({"v": 1, "topics": [topic], "type": "a\nb"}).to_string(),
    );
    let position = run(
        &mut conn,
        &serde_json::json!({"v": 1, "topics": [topic], "data": "minimal"}).to_string(),
    );
    let expected = format!("urn:tidings:{position}");
    for stream in [&mut a, &mut b] {
        let event = stream.next().await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (expected.as_str(), "minimal")
        );
    }
    assert_eq!(
        crate::common::client()
            .get(hubs[0].url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn the_rust_client_publishes_to_every_instance() {
    let Some((keys, hubs)) = two_instances("rust-client") else {
        return;
    };
    let topic = crate::common::unique_topic("rust-client");
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(Stream::open(&subscribe_url(hub, &[&topic], ""), &[]).await);
    }
    let publisher = tidings_client::redis::RedisPublisher::connect(&keys.url, &keys.prefix)
        .await
        .unwrap();
    let with_id = publisher
        .publish(
            &tidings_client::Publication::new(&topic)
                .id("urn:example:1")
                .data("a\nb")
                .event_type("note"),
        )
        .await
        .unwrap();
    assert_eq!(with_id.id, "urn:example:1");
    assert_eq!(with_id.receivers, 2, "both instances want the topic");
    let derived = publisher
        .publish(&tidings_client::Publication::new(&topic).data("no id"))
        .await
        .unwrap();
    assert_eq!(derived.id, format!("urn:tidings:{}", derived.position));
    for stream in &mut streams {
        let first = stream.next().await;
        assert_eq!(
            (first.id.as_str(), first.event.as_str(), first.data.as_str()),
            ("urn:example:1", "note", "a\nb")
        );
        assert_eq!(stream.next().await.id, derived.id);
    }
    // A Redis that is not there is a clear error at once.
    let unreachable = tidings_client::redis::RedisPublisher::connect("redis://127.0.0.1:1/0", "x")
        .await
        .unwrap_err();
    assert!(
        matches!(&unreachable, tidings_client::Error::Broker(m) if m.contains("cannot reach Redis")),
        "{unreachable}"
    );
}

/// Two instances on the test NATS, on a stream of their own (deleted when the guard drops).
fn two_nats_instances(name: &str) -> Option<(crate::common::NatsStream, Vec<Hub>)> {
    let stream = crate::common::NatsStream {
        url: crate::common::nats_url()?,
        prefix: crate::common::unique_prefix(name),
    };
    let hubs = crate::common::cluster_on(&stream.url, &stream.prefix, 2, &[]);
    Some((stream, hubs))
}

#[tokio::test]
async fn the_python_nats_example_publishes_to_every_instance() {
    if !python_ready("nats") {
        return;
    }
    let Some((nats, hubs)) = two_nats_instances("python-nats") else {
        return;
    };
    let topic = crate::common::unique_topic("python-nats");
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(Stream::open(&subscribe_url(hub, &[&topic], ""), &[]).await);
    }
    let id = run_example(
        "publish_nats.py",
        &[
            "--nats",
            &nats.url,
            "--prefix",
            &nats.prefix,
            "--topic",
            &topic,
            "--data",
            "from python\nsecond line",
            "--type",
            "book",
        ],
    );
    assert!(id.starts_with("urn:uuid:"), "{id}");
    let next = run_example(
        "publish_nats.py",
        &[
            "--nats",
            &nats.url,
            "--prefix",
            &nats.prefix,
            "--topic",
            &topic,
        ],
    );
    for stream in &mut streams {
        let event = stream.next().await;
        assert_eq!(
            (event.id.as_str(), event.event.as_str(), event.data.as_str()),
            (id.as_str(), "book", "from python\nsecond line")
        );
        assert_eq!(stream.next().await.id, next);
    }
    // Its id is found in history: resuming after it on the other instance gets the next one.
    let resume = format!("&lastEventID={id}");
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
    assert_eq!(resumed.next().await.id, next);
}

#[tokio::test]
async fn the_rust_client_publishes_onto_nats_and_a_derived_id_resumes() {
    let Some((nats, hubs)) = two_nats_instances("rust-nats") else {
        return;
    };
    let topic = crate::common::unique_topic("rust-nats");
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(Stream::open(&subscribe_url(hub, &[&topic], ""), &[]).await);
    }
    let publisher = tidings_client::nats::NatsPublisher::connect(&nats.url, &nats.prefix)
        .await
        .unwrap();
    let with_id = publisher
        .publish(
            &tidings_client::Publication::new(&topic)
                .id("urn:example:1")
                .data("a\nb")
                .event_type("note"),
        )
        .await
        .unwrap();
    assert_eq!(with_id.id, "urn:example:1");
    let derived = publisher
        .publish(&tidings_client::Publication::new(&topic).data("no id"))
        .await
        .unwrap();
    assert_eq!(derived.id, format!("urn:tidings:{}", derived.sequence));
    assert_eq!(derived.sequence, with_id.sequence + 1);
    let last = publisher
        .publish(&tidings_client::Publication::new(&topic).data("last"))
        .await
        .unwrap();
    for stream in &mut streams {
        let first = stream.next().await;
        assert_eq!(
            (first.id.as_str(), first.event.as_str(), first.data.as_str()),
            ("urn:example:1", "note", "a\nb")
        );
        assert_eq!(stream.next().await.id, derived.id);
        assert_eq!(stream.next().await.id, last.id);
    }
    // A derived id is found in history too.
    let resume = format!("&lastEventID={}", derived.id);
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
    assert_eq!(resumed.next().await.id, last.id);
    // A NATS that is not there is a clear error at once.
    let unreachable = tidings_client::nats::NatsPublisher::connect("nats://127.0.0.1:1", "x")
        .await
        .unwrap_err();
    assert!(
        matches!(&unreachable, tidings_client::Error::Broker(m) if m.contains("cannot reach NATS")),
        "{unreachable}"
    );
}

/// Two instances on the test RabbitMQ, on an exchange and stream of their own (deleted when
/// the guard drops).
fn two_amqp_instances(name: &str) -> Option<(crate::common::AmqpObjects, Vec<Hub>)> {
    let objects = crate::common::AmqpObjects {
        url: crate::common::amqp_url()?,
        prefix: crate::common::unique_prefix(name),
    };
    let hubs = crate::common::cluster_on(&objects.url, &objects.prefix, 2, &[]);
    Some((objects, hubs))
}

#[tokio::test]
async fn the_python_amqp_example_publishes_to_every_instance() {
    if !python_ready("pika") {
        return;
    }
    let Some((amqp, hubs)) = two_amqp_instances("python-amqp") else {
        return;
    };
    let topic = crate::common::unique_topic("python-amqp");
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(Stream::open(&subscribe_url(hub, &[&topic], ""), &[]).await);
    }
    let args = [
        "--amqp",
        &amqp.url,
        "--prefix",
        &amqp.prefix,
        "--topic",
        &topic,
    ];
    let mut with_data = args.to_vec();
    with_data.extend(["--data", "from python\nsecond line", "--type", "book"]);
    let id = run_example("publish_amqp.py", &with_data);
    assert!(id.starts_with("urn:uuid:"), "{id}");
    let next = run_example("publish_amqp.py", &args);
    for stream in &mut streams {
        let event = stream.next().await;
        assert_eq!(
            (event.id.as_str(), event.event.as_str(), event.data.as_str()),
            (id.as_str(), "book", "from python\nsecond line")
        );
        assert_eq!(stream.next().await.id, next);
    }
    // It is in history: resuming after it on the other instance gets the next one.
    let resume = format!("&lastEventID={id}");
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
    assert_eq!(resumed.next().await.id, next);
}

#[tokio::test]
async fn the_rust_client_publishes_onto_rabbitmq_and_a_message_without_id_gets_one_id_everywhere() {
    let Some((amqp, hubs)) = two_amqp_instances("rust-amqp") else {
        return;
    };
    let topic = crate::common::unique_topic("rust-amqp");
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(Stream::open(&subscribe_url(hub, &[&topic], ""), &[]).await);
    }
    let publisher = tidings_client::amqp::AmqpPublisher::connect(&amqp.url, &amqp.prefix)
        .await
        .unwrap();
    let with_id = publisher
        .publish(
            &tidings_client::Publication::new(&topic)
                .id("urn:example:1")
                .data("a\nb")
                .event_type("note"),
        )
        .await
        .unwrap();
    assert_eq!(with_id, "urn:example:1");
    let generated = publisher
        .publish(&tidings_client::Publication::new(&topic).data("no id"))
        .await
        .unwrap();
    assert!(generated.starts_with("urn:uuid:"), "{generated}");
    // A raw message without an id, as any AMQP client may send: every instance derives the
    // same id from its place in the stream.
    let raw = tidings_client::Publication::new(&topic).data("raw");
    let connection = lapin::Connection::connect(&amqp.url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            amqp.prefix.as_str().into(),
            "".into(),
            Default::default(),
            raw.wire_message().as_bytes(),
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut derived = Vec::new();
    for stream in &mut streams {
        let first = stream.next().await;
        assert_eq!(
            (first.id.as_str(), first.event.as_str(), first.data.as_str()),
            ("urn:example:1", "note", "a\nb")
        );
        assert_eq!(stream.next().await.id, generated);
        let raw = stream.next().await;
        assert_eq!(raw.data, "raw");
        assert!(raw.id.starts_with("urn:tidings:"), "{}", raw.id);
        derived.push(raw.id);
    }
    assert_eq!(
        derived[0], derived[1],
        "the same derived id on every instance"
    );
    let resume = format!("&lastEventID={generated}");
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
    assert_eq!(resumed.next().await.id, derived[0]);
    // A RabbitMQ that is not there is a clear error at once.
    let unreachable =
        tidings_client::amqp::AmqpPublisher::connect("amqp://guest:guest@127.0.0.1:1/%2f", "x")
            .await
            .unwrap_err();
    assert!(
        matches!(&unreachable, tidings_client::Error::Broker(m) if m.contains("cannot reach RabbitMQ")),
        "{unreachable}"
    );
}
