use super::*;

fn parse(s: &str) -> Result<ConsumeSpec, String> {
    s.parse()
}

#[test]
fn a_spring_starter_exchange_is_one_line() {
    let spec = parse(
        "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=sse-events&preset=spring-sse-starter",
    )
    .unwrap();
    assert_eq!(spec.name, "amqp:sse-events");
    let Source::Amqp(amqp) = &spec.source else {
        panic!("{spec:?}")
    };
    assert_eq!(amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(
        (amqp.exchange.as_str(), amqp.queue.as_str()),
        ("sse-events", "tidings.amqp:sse-events")
    );
    assert_eq!(amqp.routing_keys, ["#"]);
    assert!(matches!(spec.mapping.target, Target::Session { .. }));
    assert_eq!(spec.source.redacted_url(), "amqp://***@127.0.0.1:5672/%2f");
}

#[test]
fn the_table_and_the_flag_say_the_same() {
    let given = toml::from_str::<BTreeMap<String, ConsumeGiven>>(
        r#"c = { url = "amqp://127.0.0.1/%2f", exchange = "orders", routing-key = ["orders.*.created"], topic = ["https://example.com/orders/{1}"], type = "created", name = "orders" }"#,
    )
    .unwrap()
    .remove("c")
    .unwrap();
    let table = ConsumeSpec::from_given(&given).unwrap();
    let flag = parse("amqp://127.0.0.1/%2f?exchange=orders&routing-key=orders.*.created&topic=https://example.com/orders/%7B1%7D&type=created&name=orders").unwrap();
    for spec in [table, flag] {
        let Source::Amqp(amqp) = &spec.source else {
            panic!("{spec:?}")
        };
        assert_eq!(
            (spec.name.as_str(), amqp.queue.as_str()),
            ("orders", "tidings.orders")
        );
        assert_eq!(amqp.routing_keys, ["orders.*.created"]);
        let Target::Topics(topics) = &spec.mapping.target else {
            panic!()
        };
        assert_eq!(topics[0].as_str(), "https://example.com/orders/{1}");
        assert_eq!(
            spec.mapping.event_type.as_ref().unwrap().as_str(),
            "created"
        );
    }
}

#[test]
fn a_redis_stream_is_read_by_a_group_named_after_the_consumer() {
    let spec = parse(
        "redis://127.0.0.1:6379/0?stream=orders&topic=https://example.com/%7B/id%7D&field=body",
    )
    .unwrap();
    assert_eq!(spec.name, "redis:orders");
    let Source::RedisStream(redis) = &spec.source else {
        panic!("{spec:?}")
    };
    assert_eq!(
        (redis.stream.as_str(), redis.group.as_str()),
        ("orders", "tidings.redis:orders")
    );
    assert_eq!(redis.field.as_deref(), Some("body"));
    let err = parse("redis://127.0.0.1:6379/0?topic=t").unwrap_err();
    assert!(err.contains("stream=…"), "{err}");
    let err = parse("redis://127.0.0.1:6379/0?stream=s&channel=c&topic=t").unwrap_err();
    assert!(err.contains("not both"), "{err}");
    let err = parse("redis://127.0.0.1:6379/0?stream=s&topic=%7B1%7D").unwrap_err();
    assert!(err.contains("0 wildcard"), "{err}");
}

#[test]
fn redis_channels_and_patterns_are_one_line_each() {
    let spec = parse(
        "redis://127.0.0.1:6379?channel=subtitles:job:42&pattern=sample:*:*&topic=https://example.com/orgs/%7B1%7D/events/%7B2%7D",
    )
    .unwrap();
    assert_eq!(spec.name, "redis:subtitles:job:42");
    let Source::RedisPubSub(redis) = &spec.source else {
        panic!("{spec:?}")
    };
    assert_eq!(redis.channels, ["subtitles:job:42"]);
    assert_eq!(redis.patterns, ["sample:*:*"]);
    assert_eq!(redis.key, "tidings:consume:redis:subtitles:job:42");
    let err = |s: &str| parse(s).unwrap_err();
    assert!(err("redis://h?pattern=a:*&topic=%7B2%7D").contains("1 wildcard"));
    assert!(err("redis://h?pattern=a:[b&topic=t").contains("never closed"));
    assert!(err("redis://h?channel=c&group=g&topic=t").contains("for streams"));
    assert!(err("redis://h?stream=s&key=k&topic=t").contains("for Pub/Sub"));
    assert!(err("redis://h?channel=&topic=t").contains("need a value"));
}

#[test]
fn nats_subjects_and_streams() {
    let spec =
        parse("nats://127.0.0.1:4222?subject=jobs.*.done&topic=https://example.com/jobs/%7B1%7D")
            .unwrap();
    assert_eq!(spec.name, "nats:jobs.*.done");
    let Source::Nats(nats) = &spec.source else {
        panic!("{spec:?}")
    };
    assert_eq!(nats.queue, "tidings.nats:jobs.*.done");
    assert_eq!(nats.stream, None);
    let spec = parse(
        "nats://127.0.0.1:4222?stream=ORDERS&subject=orders.>&topic=https://example.com/%7B1%7D",
    )
    .unwrap();
    assert_eq!(spec.name, "nats:ORDERS");
    let Source::Nats(nats) = &spec.source else {
        panic!("{spec:?}")
    };
    assert_eq!(nats.durable, "tidings-nats_ORDERS");
    let err = |s: &str| parse(s).unwrap_err();
    assert!(err("nats://h?topic=t").contains("subject=…"));
    assert!(err("nats://h?subject=a..b&topic=t").contains("not a NATS subject"));
    assert!(err("nats://h?subject=a.*&topic=%7B2%7D").contains("1 wildcard"));
    assert!(err("nats://h?stream=S&queue=q&topic=t").contains("durable=…"));
    assert!(err("nats://h?subject=s&durable=d&topic=t").contains("JetStream"));
}

#[cfg(feature = "postgres")]
#[test]
fn an_outbox_table_with_the_connections_own_parameters() {
    let spec = parse(
        "postgres://app:secret@127.0.0.1:5432/shop?table=app.tidings_outbox&partitions=4&sslmode=disable&session=%7B/customer%7D&event=order-paid",
    )
    .unwrap();
    assert_eq!(spec.name, "postgres:app.tidings_outbox");
    let Source::Outbox(outbox) = &spec.source else {
        panic!("{spec:?}")
    };
    assert_eq!(
        outbox.url,
        "postgres://app:secret@127.0.0.1:5432/shop?sslmode=disable"
    );
    assert_eq!(
        (outbox.partitions, outbox.channel.as_str()),
        (4, "tidings_outbox")
    );
    assert_eq!(outbox.poll, std::time::Duration::from_secs(1));
    assert_eq!(
        spec.source.redacted_url(),
        "postgres://***@127.0.0.1:5432/shop?sslmode=disable"
    );
    // In a table, the URL keeps its own parameters; Tidings reads sslrootcert itself.
    let given = toml::from_str::<BTreeMap<String, ConsumeGiven>>(
        r#"c = { url = "postgres://app@db:5432/shop?sslmode=require&sslrootcert=/etc/ca.pem", session = "{/customer}", event = "order-paid" }"#,
    )
    .unwrap()
    .remove("c")
    .unwrap();
    let spec = ConsumeSpec::from_given(&given).unwrap();
    let Source::Outbox(outbox) = &spec.source else {
        panic!("{spec:?}")
    };
    assert_eq!(outbox.url, "postgres://app@db:5432/shop?sslmode=require");
    assert_eq!(outbox.root_cert.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(outbox.table, "tidings_outbox");
    let err = |s: &str| parse(s).unwrap_err();
    assert!(err("postgres://h/db?table=a;drop&topic=t").contains("letters, digits"));
    assert!(err("postgres://h/db?channel=a.b&topic=t").contains("letters, digits"));
    assert!(err("postgres://h/db?partitions=0&topic=t").contains("from 1 to 1024"));
    assert!(err("postgres://h/db?poll-ms=fast&topic=t").contains("poll-ms"));
    assert!(err("postgres://h:port/db?topic=t").contains("not a PostgreSQL URL"));
}

#[test]
fn mistakes_are_named_with_what_to_write() {
    let err = |s: &str| parse(s).unwrap_err();
    assert!(err("mqtt://h?exchange=x&topic=t").contains("cannot consume from \"mqtt\""));
    assert!(err("amqp://u:secret@h/%2f?topic=t").contains("exchange=…"));
    assert!(
        !err("amqp://u:secret@h/%2f?topic=t").contains("secret"),
        "credentials hidden"
    );
    assert!(err("amqp://h?exchange=x&topik=t").contains("unknown key \"topik\""));
    assert!(err("amqp://h?exchange=x").contains("say where updates go"));
    assert!(err("amqp://h?exchange=x&preset=spring").contains("unknown preset"));
    assert!(err("amqp://h?exchange=x&preset=spring-sse-starter&topic=t").contains("without topic"));
    assert!(err("amqp://h?exchange=x&session=%7B/s%7D").contains("event=…"));
    assert!(err("amqp://h?exchange=x&topic=t&session=s&event=e").contains("not both"));
    assert!(err("amqp://h?exchange=x&topic=%7Bnope%7D").contains("{0}"));
    assert!(err("amqp://h?exchange=x&topic=a&data=payload").contains("JSON pointer"));
    assert!(err("amqp://h?exchange=x&routing-key=a.*&topic=%7B2%7D").contains("1 wildcard"));
    assert!(err("amqp://h?exchange=x&name=a%20b&topic=t").contains("without spaces"));
    assert!(err("amqp://h?exchange=x&exchange=y&topic=t").contains("more than once"));
    assert!(err("amqp://h:port/%2f?exchange=x&topic=t").contains("not a RabbitMQ URL"));
}
