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

async fn published(hubs: &[Hub], consumer: &str, outcome: &str) -> f64 {
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

#[tokio::test]
async fn spring_sse_events_on_a_fanout_exchange_reach_the_session_on_either_instance_once() {
    let Some(url) = crate::common::amqp_url() else {
        return;
    };
    let prefix = crate::common::unique_prefix("consume-spring");
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
        "{url}?exchange={}&preset=spring-sse-starter&name={prefix}",
        app.exchange
    );
    let hubs = crate::common::cluster_on(&bus.url, &bus.prefix, 2, &["--consume", &consume]);
    for hub in &hubs {
        wait_for("the consumer to connect", async || {
            let ready = crate::common::get_json(&hub.url("/readyz")).await;
            ready["consumers"][0]["connection"] == "connected"
                && ready["consumers"][0]["name"] == prefix.as_str()
        })
        .await;
    }
    // alice holds a stream on each instance; bob one on the second.
    let mut alice: Vec<Stream> = Vec::new();
    for hub in &hubs {
        alice.push(Stream::open(&hub.url("/sse/event-stream?sessionId=alice"), &[]).await);
    }
    let mut bob = Stream::open(
        &hubs[1].url("/sse/event-stream?sessionId=bob&eventName=order-update"),
        &[],
    )
    .await;

    let publish = async |body: &[u8], properties: BasicProperties| {
        channel
            .basic_publish(
                app.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    };
    let mut ids = Vec::new();
    for n in 0..20 {
        let message_id = uuid::Uuid::new_v4().to_string();
        let (body, properties) = spring_message("alice", n, &message_id);
        publish(&body, properties.clone()).await;
        if n == 5 {
            // A redelivery (the same message id again): stored and delivered once.
            publish(&body, properties).await;
            // And messages that cannot be mapped, which stop nothing.
            publish(b"not json", BasicProperties::default()).await;
            publish(
                br#"{"eventName":"order-update","payload":{}}"#,
                BasicProperties::default(),
            )
            .await;
        }
        ids.push(format!("urn:tidings:{prefix}:{message_id}"));
    }
    let (body, properties) = spring_message("bob", 99, "bob-1");
    publish(&body, properties).await;

    for stream in &mut alice {
        let mut got = Vec::new();
        while got.len() < ids.len() {
            let event = stream
                .next_within(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("got {} of {}", got.len(), ids.len()));
            if event.data.is_empty() {
                continue; // the stream's opening id
            }
            assert_eq!(event.event, "order-update");
            assert_eq!(
                event.data,
                format!(r#"{{"order":{},"state":"paid"}}"#, got.len())
            );
            got.push(event.id);
        }
        assert_eq!(got, ids, "every message once, in order, on both instances");
    }
    let event = loop {
        let event = bob
            .next_within(Duration::from_secs(15))
            .await
            .expect("bob's event");
        if !event.data.is_empty() {
            break event;
        }
    };
    assert_eq!(event.id, format!("urn:tidings:{prefix}:bob-1"));
    assert!(
        alice[0]
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing else for alice: no repeat, not bob's"
    );
    wait_for("the counts", async || {
        published(&hubs, &prefix, "published").await == 22.0
    })
    .await;
    assert_eq!(published(&hubs, &prefix, "not_json").await, 1.0);
    assert_eq!(published(&hubs, &prefix, "missing_field").await, 1.0);
    let _ = connection.close(200, "done".into()).await;
}
