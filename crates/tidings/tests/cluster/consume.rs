//! Consumers of the application's own sources, with two instances: a message published the
//! way those systems publish it reaches the stream that wants it on either instance, once —
//! however many instances consume, and however often the source delivers it — and a message
//! that cannot be mapped is counted and skipped without stopping the rest.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

use crate::common::{wait_for, AmqpObjects, Hub, Stream};

/// The JSON Spring AMQP's `Jackson2JsonMessageConverter` writes for a Spring SSE starter's
/// `SendSseEvent`, with the properties it sets: `application/json`, the class in
/// `__TypeId__`, and (with `setCreateMessageIds(true)`) a message id.
fn spring_message(session: &str, n: usize, message_id: &str) -> (Vec<u8>, BasicProperties) {
    let body = format!(
        r#"{{"eventName":"order-update","sessionId":"{session}","payload":{{"order":{n},"state":"paid"}}}}"#
    );
    let mut headers = FieldTable::default();
    headers.insert(
        "__TypeId__".into(),
        AMQPValue::LongString("com.example.sse.SendSseEvent".into()),
    );
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("UTF-8".into())
        .with_headers(headers)
        .with_message_id(message_id.into())
        .with_delivery_mode(2);
    (body.into_bytes(), properties)
}

/// Deletes the application's exchange and the consumers' shared queue when dropped.
struct AppObjects {
    url: String,
    exchange: String,
    queue: String,
}

impl Drop for AppObjects {
    fn drop(&mut self) {
        let (url, exchange, queue) = (self.url.clone(), self.exchange.clone(), self.queue.clone());
        crate::common::clean_up(async move {
            let Ok(connection) =
                lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
            else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), Default::default())
                    .await;
            }
            let _ = connection.close(200, "done".into()).await;
        });
    }
}

/// What a consumer `consumer` of `hubs` counted with `outcome`, summed.
async fn counted(hubs: &[Hub], consumer: &str, outcome: &str) -> f64 {
    let name =
        format!("tidings_consumer_messages_total{{source=\"{consumer}\",outcome=\"{outcome}\"}}");
    let mut sum = 0.0;
    for hub in hubs {
        if let Some(v) = hub.try_metric(&name).await {
            sum += v;
        }
    }
    sum
}

/// A Spring application's fanout exchange on the machine's RabbitMQ, and `n` instances on the
/// RabbitMQ bus consuming it with the `spring-sse-starter` preset (the consumer named after
/// the test's prefix), all connected.
struct SpringApp {
    prefix: String,
    hubs: Vec<Hub>,
    channel: lapin::Channel,
    connection: lapin::Connection,
    app: AppObjects,
    _bus: AmqpObjects,
}

impl SpringApp {
    async fn start(name: &str, n: usize) -> Option<SpringApp> {
        Self::start_with(name, n, "").await
    }

    /// As [`SpringApp::start`], with `keys` added to the consumer's query (`&key=value…`).
    async fn start_with(name: &str, n: usize, keys: &str) -> Option<SpringApp> {
        let url = crate::common::amqp_url()?;
        let prefix = crate::common::unique_prefix(name);
        let bus = AmqpObjects {
            url: url.clone(),
            prefix: prefix.clone(),
        };
        let app = AppObjects {
            url: url.clone(),
            exchange: format!("{prefix}.sse-events"),
            queue: format!("tidings.{prefix}"),
        };
        // The application's exchange, as the Spring starter declares it.
        let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                app.exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consume = format!(
            "{url}?exchange={}&preset=spring-sse-starter&name={prefix}{keys}",
            app.exchange
        );
        let hubs = crate::common::cluster_on(&bus.url, &bus.prefix, n, &["--consume", &consume]);
        for hub in &hubs {
            wait_for("the consumer to connect", async || {
                let ready = crate::common::get_json(&hub.url("/readyz")).await;
                ready["consumers"][0]["connection"] == "connected"
                    && ready["consumers"][0]["name"] == prefix.as_str()
            })
            .await;
        }
        Some(SpringApp {
            prefix,
            hubs,
            channel,
            connection,
            app,
            _bus: bus,
        })
    }

    /// Publishes onto the application's exchange and waits for RabbitMQ's confirmation of
    /// the routing (no publisher confirms: as Spring's default template).
    async fn publish(&self, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                self.app.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The id a message with `message_id` gets.
    fn id(&self, message_id: &str) -> String {
        format!("urn:tidings:{}:{message_id}", self.prefix)
    }

    async fn counted(&self, outcome: &str) -> f64 {
        counted(&self.hubs, &self.prefix, outcome).await
    }
}

/// The next event of `stream` that carries data (the opening `id:` line carries none).
async fn next_update(stream: &mut Stream, within: Duration) -> Option<eventsource_stream::Event> {
    loop {
        let event = stream.next_within(within).await?;
        if !event.data.is_empty() {
            return Some(event);
        }
    }
}

#[tokio::test]
async fn spring_sse_events_on_a_fanout_exchange_reach_the_session_on_either_instance_once() {
    let Some(app) = SpringApp::start("consume-spring", 2).await else {
        return;
    };
    // alice holds a stream on each instance; bob one on the second.
    let mut alice: Vec<Stream> = Vec::new();
    for hub in &app.hubs {
        alice.push(Stream::open(&hub.url("/sse/event-stream?sessionId=alice"), &[]).await);
    }
    let mut bob = Stream::open(
        &app.hubs[1].url("/sse/event-stream?sessionId=bob&eventName=order-update"),
        &[],
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let message_id = uuid::Uuid::new_v4().to_string();
        let (body, properties) = spring_message("alice", n, &message_id);
        app.publish(&body, properties.clone()).await;
        if n == 5 {
            // A redelivery (the same message id again): stored and delivered once.
            app.publish(&body, properties).await;
            // And messages that cannot be mapped, which stop nothing.
            app.publish(b"not json", BasicProperties::default()).await;
            app.publish(
                br#"{"eventName":"order-update","payload":{}}"#,
                BasicProperties::default(),
            )
            .await;
        }
        ids.push(app.id(&message_id));
    }
    let (body, properties) = spring_message("bob", 99, "bob-1");
    app.publish(&body, properties).await;

    for stream in &mut alice {
        let mut got = Vec::new();
        while got.len() < ids.len() {
            let event = next_update(stream, Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("got {} of {}", got.len(), ids.len()));
            assert_eq!(event.event, "order-update");
            assert_eq!(
                event.data,
                format!(r#"{{"order":{},"state":"paid"}}"#, got.len())
            );
            got.push(event.id);
        }
        assert_eq!(got, ids, "every message once, in order, on both instances");
    }
    let event = next_update(&mut bob, Duration::from_secs(15))
        .await
        .expect("bob's event");
    assert_eq!(event.id, app.id("bob-1"));
    assert!(
        next_update(&mut alice[0], Duration::from_millis(300))
            .await
            .is_none(),
        "nothing else for alice: no repeat, not bob's"
    );
    wait_for("the counts", async || {
        app.counted("published").await == 22.0
    })
    .await;
    assert_eq!(app.counted("not_json").await, 1.0);
    assert_eq!(app.counted("missing_field").await, 1.0);
    let _ = app.connection.close(200, "done".into()).await;
}

/// How the reading instance goes.
#[derive(Clone, Copy, PartialEq)]
enum Going {
    /// SIGKILL: mid-message, nothing acknowledged or given back.
    Killed,
    /// SIGTERM: it drains — finishes the message it handles and gives the rest back.
    Drained,
}

/// Publishes `messages` messages for alice's session with `publish` (which returns each one's
/// update id), under 1,000 a second, and kills the instance of `hubs` that reads the source
/// (consumer `consumer`) a third of the way, after a burst: the others' streams get every
/// update once, in order.
async fn survives_the_death_of_its_reader(
    hubs: &mut [Hub],
    consumer: &str,
    messages: usize,
    publish: impl AsyncFnMut(usize) -> String,
) {
    loses_nothing_when_its_reader_goes(hubs, consumer, messages, Going::Killed, publish).await;
}

/// As [`survives_the_death_of_its_reader`], the reader going as `going` says; which of
/// `hubs` it was.
async fn loses_nothing_when_its_reader_goes(
    hubs: &mut [Hub],
    consumer: &str,
    messages: usize,
    going: Going,
    mut publish: impl AsyncFnMut(usize) -> String,
) -> usize {
    let mut streams: Vec<Stream> = Vec::new();
    for hub in hubs.iter() {
        streams.push(Stream::open(&hub.url("/sse/event-stream?sessionId=alice"), &[]).await);
    }
    let published =
        format!("tidings_consumer_messages_total{{source=\"{consumer}\",outcome=\"published\"}}");
    let kill_at = messages / 3;
    // Under 1,000 a second: 2 ms apart, or 12 s for them all if that is quicker — on a
    // schedule, not a sleep after each: the timer's 1 ms granularity made each 1.2 ms sleep
    // about 2 ms, and 10,000 messages took 25 s instead of 12.
    let pace = Duration::from_millis(2).min(Duration::from_secs(12) / messages as u32);
    let mut due = tokio::time::Instant::now();
    let mut expected = Vec::new();
    let mut killed = None;
    for n in 0..messages {
        expected.push(publish(n).await);
        if n == kill_at {
            // The instance reading the source: the one that has published (waited for, on a
            // loaded machine the reader may not have taken its first message yet).
            let mut active = None;
            wait_for("an instance to publish from the source", async || {
                for (i, hub) in hubs.iter().enumerate() {
                    if hub.try_metric(&published).await.unwrap_or(0.0) > 0.0 {
                        active = Some(i);
                    }
                }
                active.is_some()
            })
            .await;
            let active = active.unwrap();
            due = tokio::time::Instant::now();
            match going {
                Going::Killed => hubs[active].kill(),
                Going::Drained => hubs[active].terminate(),
            }
            killed = Some(active);
        }
        // A burst before the kill, so that the reader dies holding messages it has not
        // acknowledged; a steady pace otherwise.
        if (kill_at.saturating_sub(100)..kill_at).contains(&n) {
            due = tokio::time::Instant::now();
        } else {
            due += pace;
            tokio::time::sleep_until(due).await;
        }
    }
    let killed = killed.unwrap();
    for (i, stream) in streams.iter_mut().enumerate() {
        if i == killed {
            continue;
        }
        let mut got = Vec::new();
        while got.len() < messages {
            let event = next_update(stream, Duration::from_secs(20))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "{consumer}: instance {i} (instance {killed} went): got {} of {messages}",
                        got.len()
                    )
                });
            got.push(event.id);
        }
        if let Some(at) = (0..messages).find(|&i| got[i] != expected[i]) {
            let missing = expected.iter().filter(|id| !got.contains(id)).count();
            panic!(
                "instance {i}: every message once, in order, across the takeover: from #{at} on, got {:?}… where {:?}… was due ({missing} missing)",
                &got[at..(at + 3).min(messages)],
                &expected[at..(at + 3).min(messages)]
            );
        }
        assert!(
            next_update(stream, Duration::from_millis(500))
                .await
                .is_none(),
            "instance {i}: no repeat"
        );
    }
    killed
}

#[tokio::test]
async fn the_instance_reading_the_queue_killed_mid_stream_loses_and_repeats_nothing() {
    let Some(mut app) = SpringApp::start("consume-kill", 2).await else {
        return;
    };
    let mut hubs = std::mem::take(&mut app.hubs);
    survives_the_death_of_its_reader(&mut hubs, &app.prefix.clone(), 1500, async |n| {
        let message_id = format!("m-{n}");
        let (body, properties) = spring_message("alice", n, &message_id);
        app.publish(&body, properties).await;
        app.id(&message_id)
    })
    .await;
    let _ = app.connection.close(200, "done".into()).await;
}

/// Two instances on Redis consuming the stream `<prefix>:orders` (consumer `<prefix>`),
/// connected; the stream's key.
async fn redis_stream_cluster(keys: &crate::common::RedisKeys) -> (String, Vec<Hub>) {
    let stream_key = format!("{}:orders", keys.prefix);
    let consume = format!(
        "{}?stream={stream_key}&session=%7B/sessionId%7D&event=%7B/eventName%7D&data=/payload&name={}",
        keys.url, keys.prefix
    );
    let hubs = crate::common::cluster_on(&keys.url, &keys.prefix, 2, &["--consume", &consume]);
    for hub in &hubs {
        wait_for("the consumer to connect", async || {
            let ready = crate::common::get_json(&hub.url("/readyz")).await;
            ready["consumers"][0]["connection"] == "connected"
        })
        .await;
    }
    (stream_key, hubs)
}

/// Adds order `n` for alice's session to `stream_key` as a service writes it (`XADD` with the
/// fields of its event); its update's id under consumer `consumer`.
async fn xadd_order(
    conn: &mut redis::aio::MultiplexedConnection,
    stream_key: &str,
    consumer: &str,
    n: usize,
) -> String {
    let entry: String = redis::cmd("XADD")
        .arg(stream_key)
        .arg("*")
        .arg("sessionId")
        .arg("alice")
        .arg("eventName")
        .arg("order-update")
        .arg("payload")
        .arg(format!(r#"{{"order":{n}}}"#))
        .query_async(conn)
        .await
        .unwrap();
    format!("urn:tidings:{consumer}:{entry}")
}

#[tokio::test]
async fn a_redis_stream_is_read_once_in_order_across_the_death_of_its_reader() {
    let Some(keys) = crate::common::redis_keys("consume-stream") else {
        return;
    };
    let (stream_key, mut hubs) = redis_stream_cluster(&keys).await;
    let mut conn = keys.connection().await;
    let prefix = keys.prefix.clone();
    survives_the_death_of_its_reader(&mut hubs, &prefix, 1500, async |n| {
        xadd_order(&mut conn, &stream_key, &prefix, n).await
    })
    .await;
}

#[tokio::test]
async fn a_message_that_cannot_be_mapped_goes_to_the_dead_letter_exchange() {
    let Some(url) = crate::common::amqp_url() else {
        return;
    };
    let dlx = crate::common::unique_prefix("consume-dlx");
    let Some(app) =
        SpringApp::start_with("consume-dl", 1, &format!("&dead-letter-exchange={dlx}")).await
    else {
        return;
    };
    // Where dead letters go: the application's own exchange and queue.
    let _dead = AppObjects {
        url,
        exchange: dlx.clone(),
        queue: dlx.clone(),
    };
    app.channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.channel
        .queue_declare(
            dlx.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.channel
        .queue_bind(
            dlx.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut stream = Stream::open(&app.hubs[0].url("/sse/event-stream?sessionId=alice"), &[]).await;
    app.publish(
        br#"{"eventName":"e","sessionId":""}"#,
        BasicProperties::default(),
    )
    .await;
    let (body, properties) = spring_message("alice", 1, "after");
    app.publish(&body, properties).await;
    let event = next_update(&mut stream, Duration::from_secs(15))
        .await
        .expect("the good one");
    assert_eq!(event.id, app.id("after"), "the bad message stopped nothing");
    let dead = app
        .channel
        .basic_get(
            dlx.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the bad message in the dead-letter queue");
    assert_eq!(dead.delivery.data, br#"{"eventName":"e","sessionId":""}"#);
    assert_eq!(app.counted("missing_field").await, 1.0);
    let _ = app.connection.close(200, "done".into()).await;
}

/// Two instances consuming Redis Pub/Sub under `keys`' prefix with `consumers` (each the
/// query of a `--consume` on the test Redis), connected.
async fn pubsub_cluster(keys: &crate::common::RedisKeys, consumers: &[String]) -> Vec<Hub> {
    let mut extra = Vec::new();
    for consumer in consumers {
        extra.push("--consume".to_owned());
        extra.push(format!("{}?{consumer}", keys.url));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let hubs = crate::common::cluster_on(&keys.url, &keys.prefix, 2, &extra);
    for hub in &hubs {
        wait_for("the consumers to subscribe", async || {
            let ready = crate::common::get_json(&hub.url("/readyz")).await;
            (0..consumers.len()).all(|i| ready["consumers"][i]["connection"] == "connected")
        })
        .await;
    }
    hubs
}

#[tokio::test]
async fn a_channel_per_job_and_a_pattern_bus_reach_their_topics_once_on_either_instance() {
    let Some(keys) = crate::common::redis_keys("consume-pubsub") else {
        return;
    };
    let p = &keys.prefix;
    // A worker publishes "job done" on a channel named for the job; services publish
    // `sample:{orgId}:{eventId}` JSON onto a pattern bus.
    let hubs = pubsub_cluster(
        &keys,
        &[
            format!("pattern={p}:subtitles:job:*&topic=https://example.com/jobs/%7B1%7D&type=job-done&name={p}-jobs&key={p}:jobs"),
            format!("pattern={p}:sample:*:*&topic=https://example.com/orgs/%7B1%7D&id=%7B2%7D&data=/data&name={p}-sample&key={p}:sample"),
        ],
    )
    .await;
    let mut jobs = Vec::new();
    let mut orgs = Vec::new();
    for hub in &hubs {
        jobs.push(
            Stream::open(
                &hub.url("/.well-known/mercure?topic=https://example.com/jobs/42"),
                &[],
            )
            .await,
        );
        orgs.push(
            Stream::open(
                &hub.url("/.well-known/mercure?topic=https://example.com/orgs/acme"),
                &[],
            )
            .await,
        );
    }
    let mut conn = keys.connection().await;
    let mut publish = async |channel: String, message: String| {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    for n in 0..10 {
        publish(
            format!("{p}:subtitles:job:42"),
            format!(r#"{{"job":42,"step":{n}}}"#),
        )
        .await;
        publish(
            format!("{p}:sample:acme:ev-{n}"),
            format!(r#"{{"data":{{"n":{n}}}}}"#),
        )
        .await;
        if n == 3 {
            // What cannot be mapped stops nothing: not JSON where a field is read, and an id
            // the hub refuses (a control character).
            publish(format!("{p}:sample:acme:ev-x"), "not json".into()).await;
            publish(format!("{p}:sample:acme:ev\u{7}"), r#"{"data":1}"#.into()).await;
        }
    }
    for stream in &mut jobs {
        for n in 0..10 {
            let event = next_update(stream, Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("job event {n}"));
            assert_eq!(event.event, "job-done");
            assert_eq!(event.data, format!(r#"{{"job":42,"step":{n}}}"#));
        }
    }
    for stream in &mut orgs {
        for n in 0..10 {
            let event = next_update(stream, Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("org event {n}"));
            assert_eq!(event.id, format!("ev-{n}"));
            assert_eq!(event.data, format!(r#"{{"n":{n}}}"#));
        }
    }
    for stream in jobs.iter_mut().chain(orgs.iter_mut()) {
        assert!(
            next_update(stream, Duration::from_millis(300))
                .await
                .is_none(),
            "once: one instance turns a message into an update"
        );
    }
    assert_eq!(
        counted(&hubs, &format!("{p}-jobs"), "published").await,
        10.0
    );
    assert_eq!(
        counted(&hubs, &format!("{p}-sample"), "published").await,
        10.0
    );
    assert_eq!(
        counted(&hubs, &format!("{p}-sample"), "not_json").await,
        1.0
    );
    assert_eq!(counted(&hubs, &format!("{p}-sample"), "invalid").await, 1.0);
}

/// Two instances turning the orders a service publishes on `<prefix>:events` into updates
/// for alice's session (consumer `<prefix>`, the update's id the order's).
async fn pubsub_orders_cluster(keys: &crate::common::RedisKeys) -> Vec<Hub> {
    let p = &keys.prefix;
    pubsub_cluster(
        keys,
        &[format!(
            "channel={p}:events&session=alice&event=order-update&id=%7B/id%7D&data=/payload&name={p}&key={p}:consume"
        )],
    )
    .await
}

/// Publishes order `n` on `<prefix>:events`; its update's id.
async fn publish_order(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    n: usize,
) -> String {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}:events"))
        .arg(format!(r#"{{"id":"order-{n}","payload":{{"order":{n}}}}}"#))
        .query_async(conn)
        .await
        .unwrap();
    format!("order-{n}")
}

#[tokio::test]
async fn redis_pub_sub_loses_nothing_when_the_instance_turning_messages_into_updates_dies() {
    let Some(keys) = crate::common::redis_keys("consume-pubsub-kill") else {
        return;
    };
    let p = keys.prefix.clone();
    let mut hubs = pubsub_orders_cluster(&keys).await;
    let mut conn = keys.connection().await;
    survives_the_death_of_its_reader(&mut hubs, &p, 1500, async |n| {
        publish_order(&mut conn, &p, n).await
    })
    .await;
}

/// Deletes an application's JetStream stream when dropped.
struct AppStream {
    url: String,
    name: String,
}

impl Drop for AppStream {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        crate::common::clean_up(async move {
            if let Ok(client) = async_nats::connect(url).await {
                let _ = async_nats::jetstream::new(client).delete_stream(name).await;
            }
        });
    }
}

/// Two instances on the NATS bus under `prefix`, each with the consumer `consume` (a query
/// on the test NATS), connected.
async fn nats_cluster(url: &str, prefix: &str, consume: &str) -> Vec<Hub> {
    let consume = format!("{url}?{consume}");
    let hubs = crate::common::cluster_on(url, prefix, 2, &["--consume", &consume]);
    for hub in &hubs {
        wait_for("the consumer to connect", async || {
            let ready = crate::common::get_json(&hub.url("/readyz")).await;
            ready["consumers"][0]["connection"] == "connected"
        })
        .await;
    }
    hubs
}

#[tokio::test]
async fn a_core_nats_subject_is_handled_once_by_the_queue_group_of_the_instances() {
    let Some(url) = crate::common::nats_url() else {
        return;
    };
    let p = crate::common::unique_prefix("consume-nats");
    let _bus = crate::common::NatsStream {
        url: url.clone(),
        prefix: p.clone(),
    };
    let hubs = nats_cluster(
        &url,
        &p,
        &format!(
            "subject={p}.jobs.*.done&topic=https://example.com/jobs/%7B1%7D&type=job-done&name={p}"
        ),
    )
    .await;
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(
            Stream::open(
                &hub.url("/.well-known/mercure?topic=https://example.com/jobs/7"),
                &[],
            )
            .await,
        );
    }
    // As a NATS service publishes: core publish, a JSON body; one with a Nats-Msg-Id header.
    let client = async_nats::connect(&url).await.unwrap();
    for n in 0..10 {
        let body = format!(r#"{{"job":7,"part":{n}}}"#);
        if n == 9 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, "job-7-done");
            client
                .publish_with_headers(format!("{p}.jobs.7.done"), headers, body.into())
                .await
                .unwrap();
        } else {
            client
                .publish(format!("{p}.jobs.7.done"), body.into())
                .await
                .unwrap();
        }
    }
    client.flush().await.unwrap();
    for stream in &mut streams {
        let mut got = Vec::new();
        while got.len() < 10 {
            let event = next_update(stream, Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("got {} of 10", got.len()));
            assert_eq!(event.event, "job-done");
            if event.data.contains(r#""part":9"#) {
                assert_eq!(event.id, format!("urn:tidings:{p}:job-7-done"));
            }
            got.push(event.data);
        }
        // Two instances of a queue group may store two messages in either order.
        got.sort();
        let mut expected: Vec<String> = (0..10)
            .map(|n| format!(r#"{{"job":7,"part":{n}}}"#))
            .collect();
        expected.sort();
        assert_eq!(got, expected, "each message once");
        assert!(next_update(stream, Duration::from_millis(300))
            .await
            .is_none());
    }
    assert_eq!(counted(&hubs, &p, "published").await, 10.0);
}

/// An order service's JetStream stream (`<prefix>-orders`, subjects `<prefix>.orders.>`),
/// as its services set it up, and two instances on the NATS bus consuming it (the session
/// from the message), connected; deleted with the test.
struct OrdersStream {
    prefix: String,
    js: async_nats::jetstream::Context,
    /// The stream's creation time, in seconds: part of the ids.
    created: i64,
    _app: AppStream,
    _bus: crate::common::NatsStream,
}

impl OrdersStream {
    async fn start(url: &str, name: &str) -> (OrdersStream, Vec<Hub>) {
        let prefix = crate::common::unique_prefix(name);
        let bus = crate::common::NatsStream {
            url: url.to_owned(),
            prefix: prefix.clone(),
        };
        let app = AppStream {
            url: url.to_owned(),
            name: format!("{prefix}-orders"),
        };
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let mut stream = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: app.name.clone(),
                subjects: vec![format!("{prefix}.orders.>")],
                ..Default::default()
            })
            .await
            .unwrap();
        let created = stream.info().await.unwrap().created.unix_timestamp();
        let hubs = nats_cluster(
            url,
            &prefix,
            &format!(
                "stream={}&subject={prefix}.orders.>&session=%7B/sessionId%7D&event=order-update&data=/payload&name={prefix}",
                app.name
            ),
        )
        .await;
        let orders = OrdersStream {
            prefix,
            js,
            created,
            _app: app,
            _bus: bus,
        };
        (orders, hubs)
    }

    /// Publishes order `n` for alice, as the service does; its update's id.
    async fn publish(&self, n: usize) -> String {
        let ack = self
            .js
            .publish(
                format!("{}.orders.eu", self.prefix),
                format!(r#"{{"sessionId":"alice","payload":{{"order":{n}}}}}"#).into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        format!(
            "urn:tidings:{}:{}.{}",
            self.prefix, self.created, ack.sequence
        )
    }
}

#[tokio::test]
async fn a_jetstream_stream_is_read_once_in_order_across_the_death_of_its_reader() {
    let Some(url) = crate::common::nats_url() else {
        return;
    };
    let (orders, mut hubs) = OrdersStream::start(&url, "consume-js").await;
    let consumer = orders.prefix.clone();
    survives_the_death_of_its_reader(&mut hubs, &consumer, 1500, async |n| {
        orders.publish(n).await
    })
    .await;
}

/// Two instances on Redis relaying the outbox table of `schema` (the mapping of
/// `examples/python/outbox_order.py`'s events), connected; `extra` more keys.
async fn outbox_cluster(
    keys: &crate::common::RedisKeys,
    url: &str,
    schema: &str,
    n: usize,
    extra: &str,
) -> Vec<Hub> {
    let consume = format!(
        "{url}?table={schema}.tidings_outbox&session=%7B/customer%7D&event=order-paid&data=/order&name={}{extra}",
        keys.prefix
    );
    let hubs = crate::common::cluster_on(&keys.url, &keys.prefix, n, &["--consume", &consume]);
    for hub in &hubs {
        wait_for("the consumer to connect", async || {
            let ready = crate::common::get_json(&hub.url("/readyz")).await;
            ready["consumers"][0]["connection"] == "connected"
        })
        .await;
    }
    hubs
}

/// An order event for `customer`, as the example's transaction writes it.
fn order_event(customer: &str, n: usize) -> String {
    format!(r#"{{"customer":"{customer}","order":{{"id":{n},"state":"paid"}}}}"#)
}

#[tokio::test]
async fn an_outbox_relays_what_commits_once_and_nothing_of_what_rolls_back() {
    let (Some(url), Some(keys)) = (
        crate::common::postgres_url(),
        crate::common::redis_keys("consume-outbox"),
    ) else {
        return;
    };
    let schema = format!(
        "tidings_outbox_{}",
        crate::common::uuid_like().replace('-', "_")
    );
    let db = crate::common::PgSchema::with_outbox(&url, &schema).await;
    let hubs = outbox_cluster(&keys, &url, &schema, 2, "").await;
    let mut streams = Vec::new();
    for hub in &hubs {
        streams.push(Stream::open(&hub.url("/sse/event-stream?sessionId=alice"), &[]).await);
    }
    let mut a = db.client().await;
    let mut b = db.client().await;
    let insert =
        "INSERT INTO tidings_outbox (payload, partition_key) VALUES ($1::text::jsonb, 'alice')";
    // Committed: delivered.
    a.execute(insert, &[&order_event("alice", 1)])
        .await
        .unwrap();
    // Rolled back: nothing.
    let tx = a.transaction().await.unwrap();
    tx.execute(insert, &[&order_event("alice", 2)])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // Committed late: its id is older than one relayed before it commits; it is not skipped.
    let late = a.transaction().await.unwrap();
    late.execute(insert, &[&order_event("alice", 3)])
        .await
        .unwrap();
    let early = b.transaction().await.unwrap();
    early
        .execute(insert, &[&order_event("alice", 4)])
        .await
        .unwrap();
    early.commit().await.unwrap();
    // A row that cannot be mapped (no customer) stops nothing.
    b.execute(
        "INSERT INTO tidings_outbox (payload) VALUES ('{\"order\":{}}')",
        &[],
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for stream in &mut streams {
        let mut orders = Vec::new();
        for _ in 0..2 {
            let event = next_update(stream, Duration::from_secs(15))
                .await
                .expect("the committed rows");
            assert_eq!(event.event, "order-paid");
            orders.push(event.data);
        }
        got.push(orders);
    }
    late.commit().await.unwrap();
    for (stream, orders) in streams.iter_mut().zip(&mut got) {
        let event = next_update(stream, Duration::from_secs(15))
            .await
            .expect("the row committed late");
        orders.push(event.data);
        assert!(
            next_update(stream, Duration::from_millis(500))
                .await
                .is_none(),
            "nothing more: not the rolled back row, no repeat"
        );
        assert_eq!(
            *orders,
            [
                r#"{"id":1,"state":"paid"}"#,
                r#"{"id":4,"state":"paid"}"#,
                r#"{"id":3,"state":"paid"}"#
            ],
            "in the order the rows committed"
        );
    }
    assert_eq!(counted(&hubs, &keys.prefix, "published").await, 3.0);
    assert_eq!(counted(&hubs, &keys.prefix, "missing_field").await, 1.0);
    let left: i64 = a
        .query_one("SELECT count(*) FROM tidings_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "relayed rows are deleted, the bad one too");
    // What waits is counted at each poll: nothing, now, on every instance.
    let lag = format!("tidings_consumer_lag{{source=\"{}\"}}", keys.prefix);
    for hub in &hubs {
        wait_for("the backlog to read 0", async || {
            hub.try_metric(&lag).await == Some(0.0)
        })
        .await;
    }
    // (For the next test's clean-up: the connections go before the schema.)
    drop((a, b));
}

#[tokio::test]
async fn an_outbox_relayed_by_three_instances_loses_and_repeats_nothing_when_its_relay_dies() {
    let (Some(url), Some(keys)) = (
        crate::common::postgres_url(),
        crate::common::redis_keys("consume-outbox-kill"),
    ) else {
        return;
    };
    let schema = format!(
        "tidings_outbox_{}",
        crate::common::uuid_like().replace('-', "_")
    );
    let db = crate::common::PgSchema::with_outbox(&url, &schema).await;
    let mut hubs = outbox_cluster(&keys, &url, &schema, 3, "").await;
    let client = db.client().await;
    let oid: u32 = client
        .query_one("SELECT 'tidings_outbox'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    let prefix = keys.prefix.clone();
    survives_the_death_of_its_reader(&mut hubs, &keys.prefix, 10_000, async |n| {
        // One transaction per event, as the application commits them.
        let id: i64 = client
            .query_one(
                "INSERT INTO tidings_outbox (payload, partition_key) VALUES ($1::text::jsonb, 'alice') RETURNING id",
                &[&order_event("alice", n)],
            )
            .await
            .unwrap()
            .get(0);
        format!("urn:tidings:{prefix}:{oid}.{id}")
    })
    .await;
}

/// The bad messages every source is held to (`data=/payload` from `{sessionId, eventName,
/// payload}`, with `--max-body-bytes 2048`), each with the outcome it is counted as.
fn bad_messages() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("not_json", b"not json {".to_vec()),
        (
            "missing_field",
            br#"{"eventName":"e","payload":{}}"#.to_vec(),
        ),
        (
            "invalid",
            br#"{"sessionId":"a\u0007b","eventName":"e","payload":{}}"#.to_vec(),
        ),
        (
            "too_large",
            format!(
                r#"{{"sessionId":"alice","eventName":"e","payload":"{}"}}"#,
                "x".repeat(3000)
            )
            .into_bytes(),
        ),
    ]
}

/// One instance consuming `consume` (a source URL with its keys, named `name`): each bad
/// message `publish` sends is skipped, counted by its reason and logged with its place (a
/// line holding `place`), and the good one after them arrives — nothing stopped. `cases`
/// leaves out what a source cannot carry.
async fn bad_input_battery(
    consume: &str,
    name: &str,
    place: &str,
    cases: &[&str],
    publish: impl AsyncFnMut(Vec<u8>),
) {
    bad_input_battery_once(consume, name, place, cases, "consumer: ", publish).await;
}

/// As [`bad_input_battery`], sending once the instance has logged `reading` (a source that
/// starts at its end when it starts to read).
async fn bad_input_battery_once(
    consume: &str,
    name: &str,
    place: &str,
    cases: &[&str],
    reading: &str,
    mut publish: impl AsyncFnMut(Vec<u8>),
) {
    let consume = format!(
        "{consume}&session=%7B/sessionId%7D&event=%7B/eventName%7D&data=/payload&name={name}"
    );
    let hub = Hub::start(&[
        "--auth",
        "none",
        "--max-body-bytes",
        "2048",
        "--consume",
        &consume,
    ]);
    wait_for("the consumer to connect", async || {
        let ready = crate::common::get_json(&hub.url("/readyz")).await;
        ready["consumers"][0]["connection"] == "connected"
    })
    .await;
    hub.wait_for_log(reading).await;
    let mut stream = Stream::open(&hub.url("/sse/event-stream?sessionId=alice"), &[]).await;
    let bad: Vec<_> = bad_messages()
        .into_iter()
        .filter(|(outcome, _)| cases.contains(outcome))
        .collect();
    assert_eq!(bad.len(), cases.len(), "known cases: {cases:?}");
    for (_, body) in &bad {
        publish(body.clone()).await;
    }
    publish(br#"{"sessionId":"alice","eventName":"e","payload":{"ok":true}}"#.to_vec()).await;
    let event = next_update(&mut stream, Duration::from_secs(15))
        .await
        .expect("the good message, after the bad ones");
    assert_eq!(event.data, r#"{"ok":true}"#);
    let hubs = [hub];
    for (outcome, _) in &bad {
        assert_eq!(counted(&hubs, name, outcome).await, 1.0, "{outcome}");
    }
    // (Counted once the publish returned, which may be after the stream had the update.)
    wait_for("the good message counted as published", async || {
        counted(&hubs, name, "published").await >= 1.0
    })
    .await;
    assert_eq!(counted(&hubs, name, "published").await, 1.0);
    let hub = &hubs[0];
    hub.wait_for_log("consumer: skipped a message").await;
    assert!(
        hub.log_lines(place) >= 1,
        "the skip is logged with its place ({place:?})"
    );
    // At most one line a second: the rest are counted, and said to be.
    assert!(hub.log_lines("consumer: skipped a message") < bad.len() || bad.len() == 1);
    assert!(next_update(&mut stream, Duration::from_millis(300))
        .await
        .is_none());
}

const EVERY_CASE: [&str; 4] = ["not_json", "missing_field", "invalid", "too_large"];

#[tokio::test]
async fn bad_messages_on_each_source_are_counted_logged_and_stop_nothing() {
    // RabbitMQ: a fanout exchange of the application's.
    if let Some(url) = crate::common::amqp_url() {
        let p = crate::common::unique_prefix("consume-bad-amqp");
        let app = AppObjects {
            url: url.clone(),
            exchange: format!("{p}.events"),
            queue: format!("tidings.{p}"),
        };
        let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                app.exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        bad_input_battery(
            &format!("{url}?exchange={}", app.exchange),
            &p,
            "delivery 1 on",
            &EVERY_CASE,
            async |body| {
                channel
                    .basic_publish(
                        app.exchange.as_str().into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            },
        )
        .await;
        let _ = connection.close(200, "done".into()).await;
    }
    // Redis: a stream (the body in a field), and a channel.
    if let Some(keys) = crate::common::redis_keys("consume-bad-redis") {
        let mut conn = keys.connection().await;
        let stream = format!("{}:events", keys.prefix);
        bad_input_battery(
            &format!("{}?stream={stream}&field=body", keys.url),
            &format!("{}-stream", keys.prefix),
            "-0 of \"",
            &EVERY_CASE,
            async |body| {
                let _: String = redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("body")
                    .arg(body)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            },
        )
        .await;
        let channel = format!("{}:channel", keys.prefix);
        bad_input_battery(
            &format!("{}?channel={channel}&key={}:consume", keys.url, keys.prefix),
            &format!("{}-channel", keys.prefix),
            "message on channel",
            &EVERY_CASE,
            async |body| {
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(body)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            },
        )
        .await;
    }
    // NATS: a core subject, and a JetStream stream.
    if let Some(url) = crate::common::nats_url() {
        let p = crate::common::unique_prefix("consume-bad-nats");
        let client = async_nats::connect(&url).await.unwrap();
        let subject = format!("{p}.events");
        bad_input_battery(
            &format!("{url}?subject={subject}"),
            &format!("{p}-core"),
            "message on \"",
            &EVERY_CASE,
            async |body| {
                client.publish(subject.clone(), body.into()).await.unwrap();
                client.flush().await.unwrap();
            },
        )
        .await;
        let app = AppStream {
            url: url.clone(),
            name: format!("{p}-bad"),
        };
        let js = async_nats::jetstream::new(client.clone());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: app.name.clone(),
            subjects: vec![format!("{p}.js.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        bad_input_battery(
            &format!("{url}?stream={}", app.name),
            &format!("{p}-js"),
            "sequence 1 of stream",
            &EVERY_CASE,
            async |body| {
                js.publish(format!("{p}.js.e"), body.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            },
        )
        .await;
    }
    // Kafka: a topic of the application's (the body as the value).
    if let (Some(url), Some(keys)) = (
        crate::common::kafka_url(),
        crate::common::redis_keys("consume-bad-kafka"),
    ) {
        let name = format!("{}-kafka", keys.prefix);
        let topic = keys.prefix.replace(':', "_") + ".bad";
        let app = AppTopic::create(&url, &topic, &name).await;
        bad_input_battery_once(
            &format!("{url}?kafka-topic={topic}"),
            &name,
            "offset 0 of",
            &EVERY_CASE,
            "consumer: reading the topic",
            async |body| {
                app.produce("k", vec![body.to_vec()]).await;
            },
        )
        .await;
    }
    // PostgreSQL: an outbox table (its jsonb column refuses what is not JSON at insert).
    if let Some(url) = crate::common::postgres_url() {
        let schema = format!(
            "tidings_bad_{}",
            crate::common::uuid_like().replace('-', "_")
        );
        let db = crate::common::PgSchema::with_outbox(&url, &schema).await;
        let client = db.client().await;
        bad_input_battery(
            &format!("{url}?table={schema}.tidings_outbox"),
            &schema,
            "row 1 of",
            &["missing_field", "invalid", "too_large"],
            async |body| {
                client
                    .execute(
                        "INSERT INTO tidings_outbox (payload) VALUES ($1::text::jsonb)",
                        &[&String::from_utf8(body).unwrap()],
                    )
                    .await
                    .unwrap();
            },
        )
        .await;
    }
}

/// What an instance that drains logs once it handed its source over (a lease given up, a
/// resignation appended), rather than leaving the others to find it gone.
const HANDED_OVER: &str = "another instance reads on";

#[tokio::test]
async fn a_reader_that_drains_hands_its_source_over_whole() {
    // RabbitMQ: the drained instance's unacknowledged messages go back to the queue when it
    // exits (a polite close crashed RabbitMQ 3.10's queue: lost messages, and nothing more
    // read; three runs at once made it happen every other time).
    if let Some(mut app) = SpringApp::start("consume-drain", 2).await {
        let mut hubs = std::mem::take(&mut app.hubs);
        let consumer = app.prefix.clone();
        loses_nothing_when_its_reader_goes(&mut hubs, &consumer, 600, Going::Drained, async |n| {
            let message_id = format!("m-{n}");
            let (body, properties) = spring_message("alice", n, &message_id);
            app.publish(&body, properties).await;
            app.id(&message_id)
        })
        .await;
        let _ = app.connection.close(200, "done".into()).await;
    }
    // JetStream: the drained instance gives its message back (-NAK) at once.
    if let Some(url) = crate::common::nats_url() {
        let (orders, mut hubs) = OrdersStream::start(&url, "consume-js-drain").await;
        let consumer = orders.prefix.clone();
        loses_nothing_when_its_reader_goes(&mut hubs, &consumer, 600, Going::Drained, async |n| {
            orders.publish(n).await
        })
        .await;
    }
    // A Redis stream: the drained instance gives the lease up; the next claims what it left
    // pending.
    if let Some(keys) = crate::common::redis_keys("consume-stream-drain") {
        let (stream_key, mut hubs) = redis_stream_cluster(&keys).await;
        let mut conn = keys.connection().await;
        let prefix = keys.prefix.clone();
        let drained = loses_nothing_when_its_reader_goes(
            &mut hubs,
            &prefix,
            600,
            Going::Drained,
            async |n| xadd_order(&mut conn, &stream_key, &prefix, n).await,
        )
        .await;
        hubs[drained].wait_for_log(HANDED_OVER).await;
    }
    // Redis Pub/Sub: the drained instance gives the lease up; the next publishes what it
    // buffered after the drained one's progress.
    if let Some(keys) = crate::common::redis_keys("consume-pubsub-drain") {
        let p = keys.prefix.clone();
        let mut hubs = pubsub_orders_cluster(&keys).await;
        let mut conn = keys.connection().await;
        let drained =
            loses_nothing_when_its_reader_goes(&mut hubs, &p, 600, Going::Drained, async |n| {
                publish_order(&mut conn, &p, n).await
            })
            .await;
        hubs[drained].wait_for_log(HANDED_OVER).await;
    }
    // Kafka: the drained reader resigns with its commits; the next reads on from them.
    if let Some((keys, app, mut hubs)) = kafka_app("consume-kafka-drain").await {
        let prefix = keys.prefix.clone();
        let drained = loses_nothing_when_its_reader_goes(
            &mut hubs,
            &prefix,
            600,
            Going::Drained,
            async |n| app.produce_order(&prefix, n).await,
        )
        .await;
        hubs[drained].wait_for_log(HANDED_OVER).await;
    }
}

/// An application's Kafka topic of two partitions, as its services create it, and the
/// consumers' coordination log beside it; both deleted with the test.
struct AppTopic {
    url: String,
    name: String,
    coordination: String,
    /// Partition 0, where the test produces (every record keyed by one session lands on one
    /// partition, as Kafka's key partitioner does).
    partition: rskafka::client::partition::PartitionClient,
}

impl AppTopic {
    async fn create(url: &str, name: &str, consumer: &str) -> AppTopic {
        let parsed = tidings::bus::kafka::KafkaUrl::parse(url).unwrap();
        let client = parsed.client_builder().unwrap().build().await.unwrap();
        client
            .controller_client()
            .unwrap()
            .create_topic(name, 2, -1, 5_000)
            .await
            .unwrap();
        let partition = client
            .partition_client(
                name.to_owned(),
                0,
                rskafka::client::partition::UnknownTopicHandling::Retry,
            )
            .await
            .unwrap();
        AppTopic {
            url: url.to_owned(),
            name: name.to_owned(),
            coordination: format!("{name}.tidings-{consumer}").replace(':', "_"),
            partition,
        }
    }

    /// Produces order `n` for alice's session as a service does (the session as the key, the
    /// event as the value); its update's id under consumer `consumer`.
    async fn produce_order(&self, consumer: &str, n: usize) -> String {
        self.produce_orders(consumer, n..n + 1).await.remove(0)
    }

    /// Produces orders `numbers` in one record batch, as a producer that lingers does; their
    /// updates' ids.
    async fn produce_orders(&self, consumer: &str, numbers: std::ops::Range<usize>) -> Vec<String> {
        let values = numbers
            .map(|n| format!(r#"{{"payload":{{"order":{n}}}}}"#).into_bytes())
            .collect();
        let offsets = self.produce("alice", values).await;
        offsets
            .into_iter()
            .map(|offset| format!("urn:tidings:{consumer}:0.{offset}"))
            .collect()
    }

    /// Produces `values` keyed `key` on partition 0, in one record batch; their offsets.
    async fn produce(&self, key: &str, values: Vec<Vec<u8>>) -> Vec<i64> {
        let timestamp = rskafka::chrono::DateTime::from_timestamp_millis(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        )
        .unwrap();
        let records = values
            .into_iter()
            .map(|value| rskafka::record::Record {
                key: Some(key.as_bytes().to_vec()),
                value: Some(value),
                headers: Default::default(),
                timestamp,
            })
            .collect();
        self.partition
            .produce(
                records,
                rskafka::client::partition::Compression::NoCompression,
            )
            .await
            .unwrap()
    }
}

impl Drop for AppTopic {
    fn drop(&mut self) {
        let Ok(url) = tidings::bus::kafka::KafkaUrl::parse(&self.url) else {
            return;
        };
        let topics = [self.name.clone(), self.coordination.clone()];
        crate::common::clean_up(async move {
            let work = async {
                let client = url.client_builder().ok()?.build().await.ok()?;
                for topic in topics {
                    let _ = client
                        .controller_client()
                        .ok()?
                        .delete_topic(topic, 5_000)
                        .await;
                }
                Some(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
        });
    }
}

/// Two instances on Redis consuming `topic` (the session from the record's key), connected.
async fn kafka_cluster(url: &str, keys: &crate::common::RedisKeys, topic: &str) -> Vec<Hub> {
    let consume = format!(
        "{url}?kafka-topic={topic}&session=%7Bkey%7D&event=order-update&data=/payload&name={}",
        keys.prefix
    );
    let hubs = crate::common::cluster_on(&keys.url, &keys.prefix, 2, &["--consume", &consume]);
    for hub in &hubs {
        wait_for("the consumer to connect", async || {
            let ready = crate::common::get_json(&hub.url("/readyz")).await;
            ready["consumers"][0]["connection"] == "connected"
        })
        .await;
    }
    // One of them reads (it claimed the topic, and starts at its end).
    wait_for("an instance to read the topic", async || {
        hubs.iter()
            .any(|h| h.log_lines("consumer: reading the topic") > 0)
    })
    .await;
    hubs
}

/// An application's topic (`<prefix>.orders`, the prefix of a fresh `redis_keys(name)`) and
/// two instances consuming it as consumer `<prefix>`; `None` (skip) without Kafka or Redis.
async fn kafka_app(name: &str) -> Option<(crate::common::RedisKeys, AppTopic, Vec<Hub>)> {
    let (Some(url), Some(keys)) = (crate::common::kafka_url(), crate::common::redis_keys(name))
    else {
        return None;
    };
    let topic_name = keys.prefix.replace(':', "_") + ".orders";
    let app = AppTopic::create(&url, &topic_name, &keys.prefix).await;
    let hubs = kafka_cluster(&url, &keys, &topic_name).await;
    Some((keys, app, hubs))
}

#[tokio::test]
async fn a_kafka_topic_is_read_once_in_order_across_the_death_of_its_reader() {
    let Some((keys, app, mut hubs)) = kafka_app("consume-kafka").await else {
        return;
    };
    let prefix = keys.prefix.clone();
    survives_the_death_of_its_reader(&mut hubs, &prefix, 1500, async |n| {
        app.produce_order(&prefix, n).await
    })
    .await;
}

#[tokio::test]
async fn a_kafka_topic_produced_in_large_record_batches_is_read_whole() {
    let Some((keys, app, hubs)) = kafka_app("consume-kafka-batches").await else {
        return;
    };
    let mut stream = Stream::open(&hubs[0].url("/sse/event-stream?sessionId=alice"), &[]).await;
    // Batches of 300, as a producer that lingers sends them: a reader that stopped within
    // one (its rounds were once 256 records) fetches from inside it, which Tansu answers
    // with the batches after it.
    let mut expected = Vec::new();
    for batch in 0..3 {
        expected.extend(
            app.produce_orders(&keys.prefix, batch * 300..(batch + 1) * 300)
                .await,
        );
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let event = next_update(&mut stream, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("got {} of {}", got.len(), expected.len()));
        got.push(event.id);
    }
    assert_eq!(got, expected, "every record once, in order");
}
