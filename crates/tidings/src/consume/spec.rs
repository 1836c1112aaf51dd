//! A consumer as configured: its source and its mapping, from one URL (`--consume
//! 'amqp://…/%2f?exchange=sse-events&preset=spring-sse-starter'`) or from a `[[consume]]`
//! table of `tidings.toml` (the same keys, with the broker's URL as `url`). Both are read by
//! one parser, so that a key means the same in both, and an unknown key is an error that
//! lists the known ones.
//!
//! (Longer than most files here, on purpose: one parser reads every source's keys beside the
//! mapping's, so that a key means the same in the flag and the table; each source's reading
//! is a function of its own, next to the one list of keys it takes. Its tests are in
//! `spec_tests.rs`.)

use std::collections::BTreeMap;

use serde::Deserialize;

use super::mapping::{Data, Mapping, Target, PRESETS};
use super::template::Template;
use crate::bus::redact;

/// One consumer: where it reads, and how a message becomes an update.
#[derive(Debug, Clone)]
pub struct ConsumeSpec {
    /// Its name: the `source` label of its metrics, its line in `/readyz`, and part of the
    /// ids it derives (default: the scheme and what it reads, `amqp:sse-events`).
    pub name: String,
    /// Where it reads.
    pub source: Source,
    /// How a message becomes an update.
    pub mapping: Mapping,
}

/// Where a consumer reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// A RabbitMQ exchange, through a queue the instances share.
    #[cfg(feature = "amqp")]
    Amqp(AmqpSource),
    /// A Redis stream, through a consumer group of the instances.
    #[cfg(feature = "redis")]
    RedisStream(RedisStreamSource),
    /// Redis Pub/Sub channels and patterns, turned into updates by one instance at a time.
    #[cfg(feature = "redis")]
    RedisPubSub(RedisPubSubSource),
    /// A NATS subject (a queue group of the instances) or a JetStream stream (a durable
    /// consumer they share).
    #[cfg(feature = "nats")]
    Nats(NatsSource),
    /// A PostgreSQL outbox table, relayed by the instances.
    #[cfg(feature = "postgres")]
    Outbox(OutboxSource),
    /// A Kafka topic, read by one instance at a time.
    #[cfg(feature = "kafka")]
    Kafka(KafkaSource),
}

/// A Kafka topic the application's services produce to.
#[cfg(feature = "kafka")]
#[derive(Debug, Clone)]
pub struct KafkaSource {
    /// The brokers' URL (`kafka://` or `kafkas://`), credentials included.
    pub url_text: String,
    /// The same, read once.
    pub url: crate::bus::kafka::KafkaUrl,
    /// The topic.
    pub topic: String,
    /// The instances' coordination log (default `<topic>.tidings-<consumer name>`).
    pub coordination: String,
}

/// A PostgreSQL table the application inserts its events into, in its own transactions.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone)]
pub struct OutboxSource {
    /// The database's URL (`postgres://` or `postgresql://`), credentials and connection
    /// parameters included.
    pub url: String,
    /// The same, read once by the client library.
    pub config: tokio_postgres::Config,
    /// The table (`name` or `schema.name`; default `tidings_outbox`).
    pub table: String,
    /// The channel its trigger `NOTIFY`s (default `tidings_outbox`).
    pub channel: String,
    /// How many partitions the rows fall into by their `partition_key` (default 1: one
    /// instance relays all, and the table needs no `partition_key` column).
    pub partitions: u32,
    /// How often the table is read without a notification.
    pub poll: std::time::Duration,
    /// A PEM file of root certificates the server's is verified against (`sslrootcert`),
    /// besides the system's.
    pub root_cert: Option<String>,
}

/// The connection parameters of a PostgreSQL URL that the flag's form takes as keys, and
/// gives back to the URL.
#[cfg(feature = "postgres")]
const POSTGRES_PARAMETERS: [&str; 8] = [
    "sslmode",
    "options",
    "application_name",
    "connect_timeout",
    "target_session_attrs",
    "dbname",
    "user",
    "password",
];

/// A NATS subject, or a JetStream stream, the application's services publish to.
#[cfg(feature = "nats")]
#[derive(Debug, Clone)]
pub struct NatsSource {
    /// The server's URL (`nats://` or `tls://`), credentials included.
    pub url: String,
    /// The subject (core NATS), or the stream's filter (JetStream; all its subjects without).
    pub subject: Option<String>,
    /// Core NATS: the instances' queue group (default `tidings.<consumer name>`).
    pub queue: String,
    /// JetStream: the stream's name.
    pub stream: Option<String>,
    /// JetStream: the durable consumer's name (default `tidings-<consumer name>`, with what
    /// JetStream refuses in a name replaced by `_`).
    pub durable: String,
}

/// Redis Pub/Sub channels and patterns the application's services `PUBLISH` to.
#[cfg(feature = "redis")]
#[derive(Debug, Clone)]
pub struct RedisPubSubSource {
    /// The Redis URL (`redis://` or `rediss://`), credentials included.
    pub url: String,
    /// The client for that URL, read once.
    pub client: redis::Client,
    /// The channels (`SUBSCRIBE`).
    pub channels: Vec<String>,
    /// The patterns (`PSUBSCRIBE`).
    pub patterns: Vec<String>,
    /// The prefix of the instances' lease and progress keys (default
    /// `tidings:consume:<consumer name>`).
    pub key: String,
}

/// A Redis stream the application's services `XADD` to.
#[cfg(feature = "redis")]
#[derive(Debug, Clone)]
pub struct RedisStreamSource {
    /// The Redis URL (`redis://` or `rediss://`), credentials included.
    pub url: String,
    /// The client for that URL, read once.
    pub client: redis::Client,
    /// The stream's key.
    pub stream: String,
    /// The instances' consumer group (default `tidings.<consumer name>`).
    pub group: String,
    /// The entry's field that holds the body; without it, the body is the entry's fields as
    /// one JSON object.
    pub field: Option<String>,
}

/// A RabbitMQ exchange the application's services publish to.
#[cfg(feature = "amqp")]
#[derive(Debug, Clone)]
pub struct AmqpSource {
    /// The broker's URL (`amqp://` or `amqps://`), credentials included.
    pub url: String,
    /// The same, read once by the client library.
    pub uri: lapin::uri::AMQPUri,
    /// The exchange (it must exist: the publishers' exchange is theirs to declare).
    pub exchange: String,
    /// The binding keys of the shared queue (fanout exchanges ignore them); default `#`.
    pub routing_keys: Vec<String>,
    /// The shared queue's name (default `tidings.<consumer name>`).
    pub queue: String,
    /// Where messages that cannot be mapped go, when set (else they are dropped, counted).
    pub dead_letter_exchange: Option<String>,
}

/// The keys of the mapping, which every source takes.
const MAPPING_KEYS: [&str; 9] = [
    "name", "preset", "topic", "session", "event", "type", "data", "id", "private",
];

impl Source {
    /// The keys this kind of source takes, beside the mapping's; an error when there is no
    /// such source, or it is left out of this build.
    fn keys(scheme: &str) -> Result<&'static [&'static str], String> {
        let (keys, feature): (&'static [&'static str], _) = match scheme {
            "amqp" | "amqps" => (
                &["exchange", "routing-key", "queue", "dead-letter-exchange"],
                cfg!(feature = "amqp").then_some(()).ok_or("amqp"),
            ),
            "redis" | "rediss" => (
                &["stream", "group", "field", "channel", "pattern", "key"],
                cfg!(feature = "redis").then_some(()).ok_or("redis"),
            ),
            "nats" | "tls" => (
                &["subject", "queue", "stream", "durable"],
                cfg!(feature = "nats").then_some(()).ok_or("nats"),
            ),
            "kafka" | "kafkas" => (
                &["kafka-topic", "coordination-topic", "replication", "fetch-wait"],
                cfg!(feature = "kafka").then_some(()).ok_or("kafka"),
            ),
            "postgres" | "postgresql" => (
                &[
                    "table",
                    "channel",
                    "partitions",
                    "poll-ms",
                    // (The connection's own parameters, given back to its URL.)
                    "sslmode",
                    "sslrootcert",
                    "options",
                    "application_name",
                    "connect_timeout",
                    "target_session_attrs",
                    "dbname",
                    "user",
                    "password",
                ],
                cfg!(feature = "postgres").then_some(()).ok_or("postgres"),
            ),
            _ => {
                return Err(format!(
                    "cannot consume from {scheme:?} URLs; the sources are amqp:// and amqps:// (a RabbitMQ exchange), redis:// and rediss:// (a Redis stream, or Pub/Sub channels and patterns), nats:// and tls:// (a NATS subject or a JetStream stream), postgres:// and postgresql:// (an outbox table), kafka:// and kafkas:// (a Kafka topic)"
                ))
            }
        };
        feature.map(|()| keys).map_err(|feature| {
            format!("this build has no {scheme}:// client: build with --features {feature}")
        })
    }

    /// Fills in what defaults to the consumer's `name`.
    #[cfg_attr(
        not(any(feature = "amqp", feature = "redis", feature = "nats")),
        allow(unused_variables)
    )]
    fn named(&mut self, name: &str) {
        match *self {
            #[cfg(feature = "amqp")]
            Source::Amqp(ref mut amqp) => {
                if amqp.queue.is_empty() {
                    amqp.queue = format!("tidings.{name}");
                }
            }
            #[cfg(feature = "redis")]
            Source::RedisStream(ref mut redis) => {
                if redis.group.is_empty() {
                    redis.group = format!("tidings.{name}");
                }
            }
            #[cfg(feature = "redis")]
            Source::RedisPubSub(ref mut redis) => {
                if redis.key.is_empty() {
                    redis.key = format!("tidings:consume:{name}");
                }
            }
            #[cfg(feature = "postgres")]
            Source::Outbox(_) => {}
            #[cfg(feature = "kafka")]
            Source::Kafka(ref mut kafka) => {
                if kafka.coordination.is_empty() {
                    let allowed =
                        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
                    let name: String = name
                        .chars()
                        .map(|c| if allowed(c) { c } else { '_' })
                        .collect();
                    kafka.coordination = format!("{}.tidings-{name}", kafka.topic);
                }
            }
            #[cfg(feature = "nats")]
            Source::Nats(ref mut nats) => {
                if nats.queue.is_empty() {
                    nats.queue = format!("tidings.{name}");
                }
                if nats.durable.is_empty() {
                    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
                    nats.durable = format!("tidings-{name}")
                        .chars()
                        .map(|c| if allowed(c) { c } else { '_' })
                        .collect();
                }
            }
        }
    }

    /// The broker's URL, as logs may show it.
    pub fn redacted_url(&self) -> String {
        match *self {
            #[cfg(feature = "amqp")]
            Source::Amqp(ref s) => redact(&s.url),
            #[cfg(feature = "redis")]
            Source::RedisStream(ref s) => redact(&s.url),
            #[cfg(feature = "redis")]
            Source::RedisPubSub(ref s) => redact(&s.url),
            #[cfg(feature = "nats")]
            Source::Nats(ref s) => redact(&s.url),
            #[cfg(feature = "postgres")]
            Source::Outbox(ref s) => redact(&s.url),
            #[cfg(feature = "kafka")]
            Source::Kafka(ref s) => redact(&s.url_text),
        }
    }
}

/// The keys given, each with its values in order (a key may repeat: `topic`, `routing-key`),
/// and the consumer's URL as messages show it.
struct Keys {
    given: BTreeMap<String, Vec<String>>,
    shown: String,
}

impl Keys {
    /// An error about this consumer.
    fn error(&self, what: impl std::fmt::Display) -> String {
        format!("consume {}: {what}", self.shown)
    }

    /// The value of a key given at most once.
    fn one(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.given.remove(key) {
            None => Ok(None),
            Some(mut values) if values.len() == 1 => Ok(values.pop()),
            Some(_) => Err(self.error(format_args!("{key} is given more than once"))),
        }
    }

    /// Every value of a repeatable key.
    fn all(&mut self, key: &str) -> Vec<String> {
        self.given.remove(key).unwrap_or_default()
    }

    fn template(&self, key: &str, value: &str) -> Result<Template, String> {
        Template::parse(value).map_err(|e| self.error(format_args!("{key} {value:?}: {e}")))
    }
}

impl ConsumeSpec {
    /// Reads a consumer from the broker's `url` and the keys given beside it.
    ///
    /// # Errors
    /// A sentence that names the consumer (by its URL, credentials hidden) and what to fix.
    fn read(url: &str, given: BTreeMap<String, Vec<String>>) -> Result<Self, String> {
        let mut keys = Keys {
            given,
            shown: redact(url),
        };
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        let source_keys = Source::keys(scheme).map_err(|e| keys.error(e))?;
        if let Some(unknown) = keys
            .given
            .keys()
            .find(|k| !MAPPING_KEYS.contains(&k.as_str()) && !source_keys.contains(&k.as_str()))
        {
            return Err(keys.error(format_args!(
                "unknown key {unknown:?}; it takes {} and {}",
                source_keys.join(", "),
                MAPPING_KEYS.join(", ")
            )));
        }
        let name = keys.one("name")?;
        let (mut source, what, wildcards) = Self::source(url, scheme, &mut keys)?;
        // (The TLS scheme names the same kind of source.)
        let kind = match scheme {
            "amqps" => "amqp",
            "rediss" => "redis",
            "tls" => "nats",
            "postgresql" => "postgres",
            "kafkas" => "kafka",
            other => other,
        };
        let name = name.unwrap_or_else(|| format!("{kind}:{what}"));
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(keys.error(format_args!("name {name:?} must be a word without spaces")));
        }
        source.named(&name);
        let mapping = Self::mapping(&mut keys)?;
        if mapping.max_capture() > wildcards {
            return Err(keys.error(format_args!(
                "the mapping reads {{{}}}, but the patterns it reads have {wildcards} wildcard(s)",
                mapping.max_capture()
            )));
        }
        Ok(ConsumeSpec {
            name,
            source,
            mapping,
        })
    }

    /// The source a URL of `scheme` names, what it reads (for the default name), and the most
    /// wildcards one of its patterns has.
    fn source(url: &str, scheme: &str, keys: &mut Keys) -> Result<(Source, String, usize), String> {
        match scheme {
            #[cfg(feature = "amqp")]
            "amqp" | "amqps" => Self::amqp(url, keys),
            #[cfg(feature = "redis")]
            "redis" | "rediss" => Self::redis(url, keys),
            #[cfg(feature = "nats")]
            "nats" | "tls" => Self::nats(url, keys),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Self::outbox(url, keys),
            #[cfg(feature = "kafka")]
            "kafka" | "kafkas" => Self::kafka(url, keys),
            _ => Err(keys.error(format_args!(
                "cannot consume from {scheme}:// URLs ({url:?})"
            ))),
        }
    }

    /// A Redis stream, or Pub/Sub channels and patterns.
    #[cfg(feature = "redis")]
    fn redis(url: &str, keys: &mut Keys) -> Result<(Source, String, usize), String> {
        let client = redis::Client::open(url)
            .map_err(|e| keys.error(format_args!("not a Redis URL: {e}")))?;
        let stream = keys.one("stream")?;
        let channels = keys.all("channel");
        let patterns = keys.all("pattern");
        let (group, field, key) = (keys.one("group")?, keys.one("field")?, keys.one("key")?);
        let empty = |list: &[String]| list.iter().any(String::is_empty);
        if stream.as_deref() == Some("") || empty(&channels) || empty(&patterns) {
            return Err(keys.error("stream, channel and pattern need a value"));
        }
        match stream {
            Some(stream) => {
                if !channels.is_empty() || !patterns.is_empty() {
                    return Err(keys.error(
                        "read a stream or Pub/Sub channels and patterns, not both (a consumer each)",
                    ));
                }
                if key.is_some() {
                    return Err(keys.error("key is for Pub/Sub; a stream's group is group=…"));
                }
                let source = Source::RedisStream(RedisStreamSource {
                    url: url.to_owned(),
                    client,
                    stream: stream.clone(),
                    group: group.unwrap_or_default(),
                    field,
                });
                Ok((source, stream, 0))
            }
            None if channels.is_empty() && patterns.is_empty() => Err(keys.error(
                "name what to read: stream=… (a stream the services XADD to), or channel=… and pattern=… (what they PUBLISH to)",
            )),
            None => {
                if group.is_some() || field.is_some() {
                    return Err(keys.error("group and field are for streams (stream=…)"));
                }
                let mut wildcards = 0;
                for pattern in &patterns {
                    let compiled = super::pattern::Pattern::redis(pattern)
                        .map_err(|e| keys.error(e))?;
                    wildcards = wildcards.max(compiled.wildcards());
                }
                let what = channels.first().or(patterns.first()).cloned();
                let source = Source::RedisPubSub(RedisPubSubSource {
                    url: url.to_owned(),
                    client,
                    channels,
                    patterns,
                    key: key.unwrap_or_default(),
                });
                Ok((source, what.unwrap_or_default(), wildcards))
            }
        }
    }

    /// A Kafka topic.
    #[cfg(feature = "kafka")]
    fn kafka(url: &str, keys: &mut Keys) -> Result<(Source, String, usize), String> {
        // The URL's own parameters, given as keys, go back to it.
        let mut url = url.to_owned();
        for parameter in ["replication", "fetch-wait"] {
            if let Some(value) = keys.one(parameter)? {
                let joint = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{joint}{parameter}={value}");
            }
        }
        let parsed = crate::bus::kafka::KafkaUrl::parse(&url)
            .map_err(|e| keys.error(format_args!("not a Kafka URL: {e}")))?;
        let (topic, coordination) = (keys.one("kafka-topic")?, keys.one("coordination-topic")?);
        let keys = &*keys;
        let topic_name = |what: &str, value: &str| {
            let fine = !value.is_empty()
                && value.len() <= 249
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if fine {
                Ok(value.to_owned())
            } else {
                Err(keys.error(format_args!(
                    "{what} {value:?}: a Kafka topic name (letters, digits, ., _ and -; at most 249)"
                )))
            }
        };
        let topic = match topic {
            Some(topic) => topic_name("kafka-topic", &topic)?,
            None => {
                return Err(keys.error(
                    "name the topic to read (kafka-topic=…): the one the services produce to (topic=… is where the updates go)",
                ))
            }
        };
        let coordination = match coordination {
            Some(c) => topic_name("coordination-topic", &c)?,
            None => String::new(),
        };
        let source = Source::Kafka(KafkaSource {
            url_text: url,
            url: parsed,
            topic: topic.clone(),
            coordination,
        });
        Ok((source, topic, 0))
    }

    /// A PostgreSQL outbox table.
    #[cfg(feature = "postgres")]
    fn outbox(url: &str, keys: &mut Keys) -> Result<(Source, String, usize), String> {
        // `sslrootcert` is Tidings' to read (the client library does not know it), in the URL
        // or as a key; the connection's other parameters given as keys go back to its URL.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut root_cert = keys.one("sslrootcert")?;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.strip_prefix("sslrootcert=") {
                Some(path) => {
                    root_cert = Some(
                        percent_encoding::percent_decode_str(path)
                            .decode_utf8_lossy()
                            .into_owned(),
                    );
                }
                None => kept.push(pair),
            }
        }
        let mut url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        for parameter in POSTGRES_PARAMETERS {
            if let Some(value) = keys.one(parameter)? {
                let value: String = percent_encoding::utf8_percent_encode(
                    &value,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .collect();
                let joint = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{joint}{parameter}={value}");
            }
        }
        let config = url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| keys.error(format_args!("not a PostgreSQL URL: {e}")))?;
        let given = (
            keys.one("table")?,
            keys.one("channel")?,
            keys.one("partitions")?,
            keys.one("poll-ms")?,
        );
        let keys = &*keys;
        let identifier = |what: &str, value: &str, dotted: bool| {
            let word = |w: &str| {
                w.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            let parts: Vec<&str> = value.split('.').collect();
            if parts.iter().all(|p| word(p)) && (parts.len() == 1 || (dotted && parts.len() == 2)) {
                Ok(value.to_owned())
            } else {
                Err(keys.error(format_args!(
                    "{what} {value:?}: letters, digits and _{}",
                    if dotted {
                        ", as name or schema.name"
                    } else {
                        ""
                    }
                )))
            }
        };
        let table = match given.0 {
            Some(table) => identifier("table", &table, true)?,
            None => "tidings_outbox".to_owned(),
        };
        let channel = match given.1 {
            Some(channel) => identifier("channel", &channel, false)?,
            None => "tidings_outbox".to_owned(),
        };
        let number = |key: &str, value: Option<String>, range: std::ops::RangeInclusive<u32>| {
            value.map_or(Ok(None), |v| match v.parse::<u32>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(keys.error(format_args!(
                    "{key} {v:?}: a whole number from {} to {}",
                    range.start(),
                    range.end()
                ))),
            })
        };
        let partitions = number("partitions", given.2, 1..=1024)?.unwrap_or(1);
        let poll_ms = number("poll-ms", given.3, 10..=60_000)?.unwrap_or(1000);
        let source = Source::Outbox(OutboxSource {
            url,
            config,
            table: table.clone(),
            channel,
            partitions,
            poll: std::time::Duration::from_millis(u64::from(poll_ms)),
            root_cert,
        });
        Ok((source, table, 0))
    }

    /// A NATS subject, or a JetStream stream.
    #[cfg(feature = "nats")]
    fn nats(url: &str, keys: &mut Keys) -> Result<(Source, String, usize), String> {
        url.parse::<async_nats::ServerAddr>()
            .map_err(|e| keys.error(format_args!("not a NATS URL: {e}")))?;
        let subject = keys.one("subject")?;
        let stream = keys.one("stream")?;
        let (queue, durable) = (keys.one("queue")?, keys.one("durable")?);
        if [&subject, &stream, &queue, &durable]
            .iter()
            .any(|v| v.as_deref() == Some(""))
        {
            return Err(keys.error("subject, stream, queue and durable need a value"));
        }
        if let Some(subject) = &subject {
            if subject
                .split('.')
                .any(|token| token.is_empty() || token.chars().any(|c| c.is_whitespace()))
            {
                return Err(keys.error(format_args!(
                    "subject {subject:?} is not a NATS subject: tokens separated by dots, without spaces"
                )));
            }
        }
        let what = match (&stream, &subject) {
            (Some(stream), _) => {
                if queue.is_some() {
                    return Err(keys.error(
                        "queue is for core NATS; a stream's consumer is durable=…",
                    ));
                }
                stream.clone()
            }
            (None, Some(subject)) => {
                if durable.is_some() {
                    return Err(keys.error("durable is for JetStream streams (stream=…)"));
                }
                subject.clone()
            }
            (None, None) => {
                return Err(keys.error(
                    "name what to read: subject=… (core NATS, a queue group of the instances) or stream=… (a JetStream stream, with subject=… to filter it)",
                ))
            }
        };
        let wildcards = subject
            .as_deref()
            .map_or(0, |s| super::pattern::Pattern::nats(s).wildcards());
        let source = Source::Nats(NatsSource {
            url: url.to_owned(),
            subject,
            queue: queue.unwrap_or_default(),
            stream,
            durable: durable.unwrap_or_default(),
        });
        Ok((source, what, wildcards))
    }

    /// A RabbitMQ source.
    #[cfg(feature = "amqp")]
    fn amqp(url: &str, keys: &mut Keys) -> Result<(Source, String, usize), String> {
        let uri = url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| keys.error(format_args!("not a RabbitMQ URL: {e}")))?;
        let exchange = keys
            .one("exchange")?
            .filter(|e| !e.is_empty())
            .ok_or_else(|| {
                keys.error(
                    "name the exchange to read (exchange=…): the one the services publish to",
                )
            })?;
        let queue = keys.one("queue")?.unwrap_or_default();
        let dead_letter_exchange = keys.one("dead-letter-exchange")?;
        let mut routing_keys = keys.all("routing-key");
        if routing_keys.is_empty() {
            routing_keys.push("#".into());
        }
        let wildcards = routing_keys
            .iter()
            .map(|k| super::pattern::Pattern::amqp(k).wildcards())
            .max()
            .unwrap_or(0);
        let source = Source::Amqp(AmqpSource {
            url: url.to_owned(),
            uri,
            queue,
            exchange: exchange.clone(),
            routing_keys,
            dead_letter_exchange,
        });
        Ok((source, exchange, wildcards))
    }

    fn mapping(keys: &mut Keys) -> Result<Mapping, String> {
        let topics = keys.all("topic");
        let session = keys.one("session")?;
        let event = keys.one("event")?;
        let preset = keys.one("preset")?;
        let mut mapping = match (preset, topics.is_empty(), session) {
            (Some(preset), true, None) => Mapping::preset(&preset).ok_or_else(|| {
                keys.error(format_args!(
                    "unknown preset {preset:?}; the presets are {}",
                    PRESETS.join(", ")
                ))
            })?,
            (Some(_), _, _) => {
                return Err(keys.error(
                    "a preset says where updates go: give it without topic or session",
                ))
            }
            (None, false, None) => Mapping {
                target: Target::Topics(
                    topics
                        .iter()
                        .map(|t| keys.template("topic", t))
                        .collect::<Result<_, _>>()?,
                ),
                data: Data::Body,
                event_type: None,
                id: None,
                private: false,
            },
            (None, true, Some(session)) => {
                let event = event.ok_or_else(|| {
                    keys.error("a session target needs the event name too (event=…)")
                })?;
                Mapping {
                    target: Target::Session {
                        session: keys.template("session", &session)?,
                        event: keys.template("event", &event)?,
                    },
                    data: Data::Body,
                    event_type: None,
                    id: None,
                    private: true,
                }
            }
            (None, false, Some(_)) => return Err(keys.error("give topic or session, not both")),
            (None, true, None) => {
                return Err(keys.error(format_args!(
                    "say where updates go: topic=… (repeatable), session=… with event=…, or preset=… ({})",
                    PRESETS.join(", ")
                )))
            }
        };
        if let Some(data) = keys.one("data")? {
            mapping.data = match data.as_str() {
                "body" => Data::Body,
                p if p.starts_with('/') => Data::Field(p.to_owned()),
                other => {
                    return Err(keys.error(format_args!(
                        "data {other:?}: body (the whole body) or a JSON pointer such as /payload"
                    )))
                }
            };
        }
        let session_target = matches!(mapping.target, Target::Session { .. });
        if let Some(t) = keys.one("type")? {
            if session_target {
                return Err(
                    keys.error("a session target's type is its event name: give event=…, not type")
                );
            }
            mapping.event_type = Some(keys.template("type", &t)?);
        }
        if let Some(id) = keys.one("id")? {
            mapping.id = Some(keys.template("id", &id)?);
        }
        if let Some(private) = keys.one("private")? {
            mapping.private = match private.as_str() {
                "true" | "on" | "1" => true,
                "false" | "off" | "0" if !session_target => false,
                "false" | "off" | "0" => {
                    return Err(keys.error("session updates are always private"))
                }
                other => return Err(keys.error(format_args!("private {other:?}: true or false"))),
            };
        }
        Ok(mapping)
    }
}

impl std::str::FromStr for ConsumeSpec {
    type Err = String;

    /// The flag's form: the broker's URL with the consumer's keys as its query.
    fn from_str(given: &str) -> Result<Self, String> {
        let (url, query) = given.split_once('?').unwrap_or((given, ""));
        let mut keys = BTreeMap::<String, Vec<String>>::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| {
                        format!("consume {}: {key:?} is not UTF-8 once decoded", redact(url))
                    })
            };
            keys.entry(decode(key)?).or_default().push(decode(value)?);
        }
        Self::read(url, keys)
    }
}

/// A consumer as the configuration gives it: the flag's URL, or a `[[consume]]` table (`url`
/// and the same keys as the flag's query; a key that repeats takes a list: `topic = ["…",
/// "…"]`). Kept as given until [`ConsumeSpec::from_given`] reads it, once the layers are
/// merged, so that a mistake is reported by the configuration, credentials hidden.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ConsumeGiven {
    /// `--consume URL`, or a string in the file.
    Url(String),
    /// A `[[consume]]` table.
    Table(BTreeMap<String, GivenValue>),
}

/// A value of a `[[consume]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum GivenValue {
    /// One value.
    One(String),
    /// A repeated key's values.
    Many(Vec<String>),
    /// `private = true`.
    Flag(bool),
}

impl std::str::FromStr for ConsumeGiven {
    type Err = std::convert::Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(ConsumeGiven::Url(url.to_owned()))
    }
}

impl ConsumeSpec {
    /// Reads a consumer as the configuration gave it.
    ///
    /// # Errors
    /// A sentence naming the consumer (its URL, credentials hidden) and what to fix.
    pub fn from_given(given: &ConsumeGiven) -> Result<Self, String> {
        let table = match given {
            ConsumeGiven::Url(url) => return url.parse(),
            ConsumeGiven::Table(table) => table,
        };
        let mut keys = BTreeMap::new();
        let mut url = None;
        for (key, value) in table {
            let values = match value {
                GivenValue::One(s) => vec![s.clone()],
                GivenValue::Many(list) => list.clone(),
                GivenValue::Flag(b) => vec![b.to_string()],
            };
            if key == "url" {
                url = values.into_iter().next();
            } else {
                keys.insert(key.clone(), values);
            }
        }
        let url = url.ok_or("a [[consume]] table needs the broker's URL: url = \"amqp://…\"")?;
        Self::read(&url, keys)
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
