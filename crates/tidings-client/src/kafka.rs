//! Publishing straight onto a Tidings cluster's Kafka topic, without HTTP (feature `kafka`).
//!
//! [`KafkaPublisher::publish`] writes the update's wire-format message to partition 0 of the
//! cluster's topic, acknowledged by every in-sync replica (`acks=all`), exactly as an instance
//! does for `POST /.well-known/mercure`: when the call returns, the update is in the
//! cluster's order and every instance delivers it. See `docs/wire-format.md`.
//!
//! ```no_run
//! use tidings_client::kafka::KafkaPublisher;
//! use tidings_client::Publication;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tidings_client::Error> {
//! let publisher = KafkaPublisher::connect("kafka://127.0.0.1:9092", "tidings-example").await?;
//! let published = publisher
//!     .publish(&Publication::new("https://example.com/books/1").data("{}"))
//!     .await?;
//! println!("{} at offset {}", published.id, published.offset);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;

use crate::{Error, Publication};

/// The record header carrying the publish time, in microseconds since the Unix epoch, as
/// decimal text.
pub const TIME_HEADER: &str = "tidings-time";

/// Longest wait for Kafka to connect or to acknowledge a publish.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The name of a cluster's topic: the prefix with every character other than letters,
/// digits, `.`, `-` and `_` replaced by `_` (what Kafka accepts), at most 249 of them.
pub fn topic_name(prefix: &str) -> String {
    let name: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(249)
        .collect();
    // `.` and `..` are not topic names.
    match name.as_str() {
        "." | ".." => name.replace('.', "_"),
        _ => name,
    }
}

/// What [`ensure_topic`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// The topic was missing: it was created, with one partition.
    Created,
    /// The topic was there (or another client created it at the same time), with this many
    /// partitions.
    Existed {
        /// How many partitions it has (instances read partition 0 only).
        partitions: usize,
    },
}

/// Creates `topic` with one partition when it does not exist, replicated `replication`
/// times (the broker's default when `None`), as every instance of a cluster does at start-up.
///
/// # Errors
/// The client's error when the topics cannot be listed or the topic cannot be created.
pub async fn ensure_topic(
    client: &Client,
    topic: &str,
    replication: Option<i16>,
) -> Result<Topic, rskafka::client::error::Error> {
    use rskafka::client::error::{Error, ProtocolError};
    let topics = client.list_topics().await?;
    if let Some(existing) = topics.iter().find(|t| t.name == topic) {
        return Ok(Topic::Existed {
            partitions: existing.partitions.len(),
        });
    }
    let timeout_ms = i32::try_from(TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    // -1: the broker's default replication factor.
    let created = client
        .controller_client()?
        .create_topic(topic, 1, replication.unwrap_or(-1), timeout_ms)
        .await;
    match created {
        Ok(()) => Ok(Topic::Created),
        Err(Error::ServerError {
            protocol_error: ProtocolError::TopicAlreadyExists,
            ..
        }) => Ok(Topic::Existed { partitions: 1 }),
        Err(e) => Err(e),
    }
}

/// The record of an update: its id as the key, its wire-format message as the value, and
/// its publish time in the [`TIME_HEADER`] header.
pub fn record(id: &str, message: String, published_at_micros: u64) -> Record {
    Record {
        key: Some(id.as_bytes().to_vec()),
        value: Some(message.into_bytes()),
        headers: [(
            TIME_HEADER.to_owned(),
            published_at_micros.to_string().into_bytes(),
        )]
        .into(),
        timestamp: i64::try_from(published_at_micros)
            .ok()
            .and_then(rskafka::chrono::DateTime::from_timestamp_micros)
            .unwrap_or_default(),
    }
}

/// Where and how to reach the cluster's Kafka: what the bus URL says.
#[derive(Clone)]
pub struct KafkaUrl {
    /// `host:port` of each bootstrap broker.
    pub brokers: Vec<String>,
    /// `kafkas://`: TLS to every broker.
    pub tls: bool,
    /// SASL credentials and mechanism, when the URL carries a user.
    pub sasl: Option<SaslConfig>,
    /// The replication factor of the topic when this bus creates it (`?replication=N`; the
    /// broker's default when absent).
    pub replication: Option<i16>,
    /// How long the broker may hold a read that finds nothing new, in milliseconds
    /// (`?fetch-wait=MS`, Kafka's `fetch.max.wait.ms`; 100 by default). Kafka answers as soon
    /// as a record comes, so this is what an idle partition costs (a read per instance each
    /// time); a broker that holds every read for most of this (Tansu) delays delivery by as
    /// much.
    pub fetch_wait_ms: u32,
}

/// [`KafkaUrl::fetch_wait_ms`] when the URL does not say.
pub const DEFAULT_FETCH_WAIT_MS: u32 = 100;

impl std::fmt::Debug for KafkaUrl {
    /// Without the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaUrl")
            .field("brokers", &self.brokers)
            .field("tls", &self.tls)
            .field("sasl", &self.sasl.as_ref().map(sasl_name))
            .field("replication", &self.replication)
            .field("fetch_wait_ms", &self.fetch_wait_ms)
            .finish()
    }
}

fn sasl_name(sasl: &SaslConfig) -> &'static str {
    match sasl {
        SaslConfig::Plain(_) => "plain",
        SaslConfig::ScramSha256(_) => "scram-sha-256",
        SaslConfig::ScramSha512(_) => "scram-sha-512",
        SaslConfig::Oauthbearer(_) => "oauthbearer",
    }
}

impl KafkaUrl {
    /// Parses `kafka[s]://[user:password@]host[:port][,host[:port]…][/][?sasl=…&replication=N&fetch-wait=MS]`
    /// (port 9092 by default; with a user, SASL `plain` unless `sasl=scram-sha-256` or
    /// `scram-sha-512`).
    ///
    /// # Errors
    /// A message that says what to fix.
    pub fn parse(url: &str) -> Result<KafkaUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("expected kafka://host:port or kafkas://host:port")?;
        let tls = match scheme {
            "kafka" => false,
            "kafkas" => true,
            other => return Err(format!("unknown scheme {other:?}: kafka:// or kafkas://")),
        };
        // The credentials first: what follows them cannot hold a password.
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() {
            return Err(format!(
                "unexpected path /{path}: a Kafka bus URL names brokers only (--bus-prefix names the topic)"
            ));
        }
        let mut brokers = Vec::new();
        for host in hosts.split(',') {
            brokers.push(broker_address(host)?);
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the user or password is not UTF-8 once percent-decoded".to_owned())
        };
        let credentials = match userinfo {
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                if user.is_empty() {
                    return Err("a user is needed before @ (user:password@host)".into());
                }
                Some(Credentials::new(decode(user)?, decode(password)?))
            }
            None => None,
        };
        let mut mechanism = None;
        let mut replication = None;
        let mut fetch_wait_ms = DEFAULT_FETCH_WAIT_MS;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "sasl" => mechanism = Some(value.into_owned()),
                "replication" => match value.parse::<i16>() {
                    Ok(n) if n >= 1 => replication = Some(n),
                    _ => {
                        return Err(format!(
                            "replication={value}: a replication factor is a number from 1"
                        ))
                    }
                },
                "fetch-wait" => match value.parse::<u32>() {
                    Ok(ms) if (1..=30_000).contains(&ms) => fetch_wait_ms = ms,
                    _ => return Err(format!("fetch-wait={value}: milliseconds, from 1 to 30000")),
                },
                other => {
                    return Err(format!(
                        "unknown option {other:?}: the options are sasl, replication and fetch-wait"
                    ))
                }
            }
        }
        let sasl = match (credentials, mechanism.as_deref()) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err("sasl= needs credentials: kafka://user:password@host:port".into())
            }
            (Some(c), None | Some("plain")) => Some(SaslConfig::Plain(c)),
            (Some(c), Some("scram-sha-256")) => Some(SaslConfig::ScramSha256(c)),
            (Some(c), Some("scram-sha-512")) => Some(SaslConfig::ScramSha512(c)),
            (Some(_), Some(other)) => {
                return Err(format!(
                    "unknown SASL mechanism {other:?}: plain, scram-sha-256 or scram-sha-512"
                ))
            }
        };
        Ok(KafkaUrl {
            brokers,
            tls,
            sasl,
            replication,
            fetch_wait_ms,
        })
    }

    /// A client builder for these brokers, with their TLS and SASL settings.
    ///
    /// # Errors
    /// A message when TLS is asked for and this machine trusts no certificate.
    pub fn client_builder(&self) -> Result<ClientBuilder, String> {
        let mut builder = ClientBuilder::new(self.brokers.clone());
        if self.tls {
            builder = builder.tls_config(tls_config()?);
        }
        if let Some(sasl) = &self.sasl {
            builder = builder.sasl_config(sasl.clone());
        }
        Ok(builder)
    }
}

/// TLS trusting the system's certificates, or those `SSL_CERT_FILE` / `SSL_CERT_DIR` name.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for certificate in found.certs {
        // A certificate rustls cannot use is left out, as a browser would.
        let _ = roots.add(certificate);
    }
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map_or(String::new(), |e| format!(": {e}"));
        return Err(format!(
            "kafkas:// needs trusted certificates, and none were found{why}"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What a publish onto Kafka gave the update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its id: the publication's, or a new `urn:uuid:…`.
    pub id: String,
    /// Its offset in partition 0 of the cluster's topic (of the last copy written, when the
    /// client had to send it again: instances deliver the first).
    pub offset: u64,
}

/// A publisher onto one cluster's Kafka topic (its URL and `--bus-prefix`, which names the
/// topic). Cheap to clone; the client reconnects by itself.
#[derive(Debug, Clone)]
pub struct KafkaPublisher {
    partition: Arc<PartitionClient>,
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, rskafka::client::error::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::Broker(format!("{what}: {e}"))),
        Err(_) => Err(Error::Broker(format!(
            "{what}: no answer within {TIMEOUT:?}"
        ))),
    }
}

impl KafkaPublisher {
    /// Connects to the cluster's Kafka (`kafka://host:port[,host:port…]`, `kafkas://` for
    /// TLS, `user:password@` for SASL; see [`KafkaUrl::parse`]), and creates the cluster's
    /// topic when it does not exist yet, as an instance would: a service may publish before
    /// any instance started (instances read what the topic holds when they start, up to
    /// their `history-size`).
    ///
    /// # Errors
    /// [`Error::Broker`] when the URL is not usable, or Kafka cannot be reached or does not
    /// create the topic.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, Error> {
        let parsed =
            KafkaUrl::parse(url).map_err(|e| Error::Broker(format!("bad Kafka URL: {e}")))?;
        let builder = parsed
            .client_builder()
            .map_err(Error::Broker)?
            .backoff_config(rskafka::BackoffConfig {
                deadline: Some(TIMEOUT),
                ..rskafka::BackoffConfig::default()
            });
        let client = timed("cannot reach Kafka", builder.build()).await?;
        let topic = topic_name(prefix);
        timed(
            &format!("cannot create the topic {topic:?}"),
            ensure_topic(&client, &topic, parsed.replication),
        )
        .await?;
        let partition = timed(
            "cannot reach the topic's leader",
            client.partition_client(topic, 0, UnknownTopicHandling::Retry),
        )
        .await?;
        Ok(KafkaPublisher {
            partition: Arc::new(partition),
        })
    }

    /// Publishes an update; returns its id (the publication's, or a new `urn:uuid:…`) and
    /// offset once Kafka's in-sync replicas hold it.
    ///
    /// Instances skip (and log) a message that breaks a rule of the wire format, as they would
    /// refuse it over HTTP. A publish retried with the same id is delivered once.
    ///
    /// # Errors
    /// [`Error::Broker`] when Kafka did not acknowledge it in time (retry with the same id).
    pub async fn publish(&self, publication: &Publication) -> Result<Published, Error> {
        let id = publication
            .id
            .clone()
            .unwrap_or_else(|| format!("urn:uuid:{}", uuid::Uuid::new_v4()));
        let mut message = publication.clone();
        message.id = Some(id.clone());
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0));
        let record = record(&id, message.wire_message(), micros);
        let offsets = timed(
            "publish",
            self.partition
                .produce(vec![record], Compression::NoCompression),
        )
        .await?;
        let offset = offsets
            .first()
            .and_then(|o| u64::try_from(*o).ok())
            .ok_or_else(|| Error::Broker("Kafka answered no offset".into()))?;
        Ok(Published { id, offset })
    }
}

/// `host:port` of one broker of the URL (port 9092 when absent).
fn broker_address(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("a broker is missing: kafka://host:port[,host:port…]".into());
    }
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 address in brackets has colons of its own.
        Some((name, port)) if !port.contains(']') => (name, Some(port)),
        _ => (host, None),
    };
    if name.is_empty() {
        return Err(format!("{host:?} names no host"));
    }
    let bracketed = name.starts_with('[') && name.ends_with(']') && name.len() > 2;
    if (name.contains(':') || name.contains('[') || name.contains(']')) && !bracketed {
        return Err(format!(
            "{host:?}: an IPv6 address goes in brackets ([::1]:9092)"
        ));
    }
    let port = match port {
        None => 9092,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{host:?}: the port is not a number from 1 to 65535"))?,
    };
    Ok(format!("{name}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_keep_what_kafka_accepts() {
        assert_eq!(topic_name("tidings"), "tidings");
        assert_eq!(topic_name("shop/eu:1 a"), "shop_eu_1_a");
        assert_eq!(topic_name("a.b-c_d"), "a.b-c_d");
        assert_eq!(topic_name(".."), "__");
        assert_eq!(topic_name(&"x".repeat(300)).len(), 249);
    }

    #[test]
    fn urls_name_brokers_credentials_and_options() {
        let url = KafkaUrl::parse("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(url.brokers, ["127.0.0.1:9092"]);
        assert_eq!(url.fetch_wait_ms, DEFAULT_FETCH_WAIT_MS);
        assert!(!url.tls && url.sasl.is_none() && url.replication.is_none());
        let url = KafkaUrl::parse("kafkas://a:9093,b/?fetch-wait=20").unwrap();
        assert_eq!(url.fetch_wait_ms, 20);
        assert_eq!(url.brokers, ["a:9093", "b:9092"]);
        assert!(url.tls);
        let url =
            KafkaUrl::parse("kafka://me:p%40ss@h:1?sasl=scram-sha-512&replication=3").unwrap();
        match &url.sasl {
            Some(SaslConfig::ScramSha512(c)) => {
                assert_eq!((c.username.as_str(), c.password.as_str()), ("me", "p@ss"))
            }
            other => panic!("{:?}", other.as_ref().map(sasl_name)),
        }
        assert_eq!(url.replication, Some(3));
        assert!(!format!("{url:?}").contains("p@ss"), "no password in Debug");
        let url = KafkaUrl::parse("kafka://me:pw@h:1").unwrap();
        assert!(matches!(url.sasl, Some(SaslConfig::Plain(_))));
        let url = KafkaUrl::parse("kafka://[::1]:9000").unwrap();
        assert_eq!(url.brokers, ["[::1]:9000"]);
        let url = KafkaUrl::parse("kafka://me:pa/ss?x@h:1").unwrap();
        assert_eq!(url.brokers, ["h:1"], "a password may hold / and ?");
    }

    #[test]
    fn bad_urls_say_what_to_fix() {
        for (url, says) in [
            ("kafka://", "a broker is missing"),
            ("kafka://a,,b", "a broker is missing"),
            ("kafka://h:x", "the port is not a number"),
            ("kafka://h:0", "the port is not a number"),
            ("kafka://h/topic", "unexpected path /topic"),
            ("kafka://h?sasl=plain", "sasl= needs credentials"),
            ("kafka://u:p@h?sasl=gssapi", "unknown SASL mechanism"),
            (
                "kafka://h?replication=0",
                "a replication factor is a number from 1",
            ),
            ("kafka://h?partitions=3", "unknown option \"partitions\""),
            ("kafka://h?fetch-wait=0", "milliseconds, from 1 to 30000"),
            ("kafka://:p@h", "a user is needed"),
            ("kafka://[::1", "an IPv6 address goes in brackets"),
            ("kafka://::1", "an IPv6 address goes in brackets"),
            ("redis://h", "unknown scheme"),
        ] {
            let error = KafkaUrl::parse(url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
        }
    }
}
