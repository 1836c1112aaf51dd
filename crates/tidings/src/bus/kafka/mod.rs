//! The Kafka bus (`kafka://host:port[,host:port…]`, `kafkas://` for TLS).
//!
//! A Tidings cluster is one Kafka topic, named by the prefix ([`topic_name`]), of one
//! partition, created if missing: the partition's offset is the update's place in the one
//! order every instance shares. Every instance reads the partition from its own offset — no
//! consumer group, nothing committed — so every instance sees every update, in the same
//! order, and serves `Last-Event-ID` resumes from the last `history-size` updates it read
//! (kept in memory, filled from the partition at start-up, as on RabbitMQ). A publish is
//! answered once the partition's leader and its in-sync replicas hold it (`acks=all`).
//!
//! A retried publish is stored twice by Kafka (the client has no idempotent producer) and
//! delivered once: every instance reads the same partition and remembers the same ids (the
//! last `history-size` before each record), so every one skips the same copy (see
//! `bus/log.rs`).
//!
//! Signals of the control plane go through a second topic, `<topic>.control`, of one partition,
//! created beside the first: each link reads it from its end (signals are for who listens now)
//! and publishes to it; what it keeps is the broker's retention's business.
//!
//! The client is rskafka: pure Rust on tokio (no C library to build or link), and made for
//! exactly this use: partitions read by offset, without consumer groups. See
//! `docs/clustering.md`, "On Kafka", for what it supports and what this bus adds.

mod judge;
mod link;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rskafka::client::partition::{Compression, OffsetAt, PartitionClient};
use tokio::sync::watch;

use super::broker::Publishing;
use super::history::LocalHistory;
use super::log::ReadLog;
use super::log_bus::{LogBroker, LogBus};
use super::reconnect::Reconnect;
use super::{BusError, BusOptions, Cause, Kind, Published};
use crate::envelope::now_micros;
use crate::hub::Hub;
use crate::locks::lock;
use crate::update::Update;

pub use tidings_client::kafka::{topic_name, KafkaUrl, TIME_HEADER};

/// The Kafka bus: a bus that reads a log (the partition), with what Kafka alone does.
/// Dropping it stops its connection task.
pub(super) type KafkaBus = LogBus<Shared>;

/// What the bus and its connection task share.
#[derive(Debug)]
pub(super) struct Shared {
    hub: Hub,
    /// The cluster's topic.
    topic: String,
    /// The partition client publishes go through, while connected and caught up.
    publishing: Publishing<Arc<PartitionClient>>,
    /// The control plane's topic, and the partition client signals go through (open with
    /// `publishing`).
    control_topic: String,
    signals: Publishing<Arc<PartitionClient>>,
    /// The partition as this instance read it, and what it delivered, under one lock with
    /// the dispatch.
    reading: Mutex<Reading>,
    /// The offset this instance reads next: a wait for an update another instance
    /// published watches it.
    next_offset: watch::Sender<u64>,
    /// How long one operation may take.
    timeout: Duration,
}

/// What this instance read of the partition.
#[derive(Debug)]
struct Reading {
    log: ReadLog,
    /// The fingerprint of the last record read ([`judge::fingerprint`]), to know it again.
    last_print: u64,
}

impl Reading {
    /// The offset and fingerprint of the last record read, if any.
    fn last_read(&self) -> Option<(u64, u64)> {
        self.log.last().map(|o| (o, self.last_print))
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    super::broker::broker_error(super::Kind::Kafka, e)
}

/// A failure the Kafka client reported, kept as the error's source.
fn failed(e: rskafka::client::error::Error) -> BusError {
    super::broker::client_error(super::Kind::Kafka, e)
}

async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, rskafka::client::error::Error>>,
) -> Result<T, BusError> {
    super::broker::with_limit(super::Kind::Kafka, limit, f).await
}

impl LogBus<Shared> {
    /// Connects to Kafka at `url`, creates the cluster's topic if it is missing, reads what
    /// it holds, and starts delivering to `hub`.
    ///
    /// # Errors
    /// [`BusError::Config`] for a URL that is not one, credentials Kafka refuses, or a
    /// certificate this machine does not trust; [`BusError::Unavailable`] when Kafka cannot
    /// be reached or does not serve the topic.
    pub(super) async fn connect(
        url: &str,
        options: &BusOptions,
        hub: Hub,
    ) -> Result<Self, BusError> {
        let parsed = KafkaUrl::parse(url).map_err(|e| {
            BusError::Config(Cause::new(format!(
                "bad Kafka URL {}: {e}",
                super::redact(url)
            )))
        })?;
        let timeout = options.timeouts.operation(super::Kind::Kafka);
        let shared = Arc::new(Shared {
            topic: topic_name(&options.prefix),
            publishing: Publishing::new(),
            control_topic: format!("{}.control", topic_name(&options.prefix)),
            signals: Publishing::new(),
            reading: Mutex::new(Reading {
                log: ReadLog::new(
                    LocalHistory::new(options.history_size, options.history_ttl()),
                    super::wire::Decoder::new(
                        super::Kind::Kafka,
                        options.limits.clone(),
                        hub.metrics().clone(),
                    ),
                ),
                last_print: 0,
            }),
            next_offset: watch::Sender::new(0),
            hub,
            timeout,
        });
        let settings = link::Settings::new(parsed, options, timeout);
        let first = link::Link::establish(&shared, &settings, link::Start::Fresh)
            .await
            .map_err(|e| e.context(format_args!("cannot use Kafka at {}", super::redact(url))))?;
        let reconnect = Reconnect::new(
            super::Kind::Kafka.broker(),
            options.backoff,
            shared.hub.metrics().bus_reconnects.clone(),
        );
        let target = link::Target {
            shared: shared.clone(),
            settings,
        };
        // Serve only once this instance has read what the partition held.
        let topic = shared.topic.clone();
        LogBus::start(shared, reconnect, target, first, timeout.saturating_mul(2))
            .await
            .map_err(|e| {
                e.context(format_args!(
                    "Kafka at {}, topic {topic:?}",
                    super::redact(url)
                ))
            })
    }
}

/// True when Kafka answered that it did not write the record: a retry is safe, and the
/// publish was not taken.
fn not_written(e: &rskafka::client::error::Error) -> bool {
    use rskafka::client::error::{Error, ProtocolError};
    matches!(
        e,
        Error::ServerError {
            protocol_error: ProtocolError::MessageTooLarge
                | ProtocolError::RecordListTooLarge
                | ProtocolError::InvalidRecord
                | ProtocolError::CorruptMessage
                | ProtocolError::NotEnoughReplicas
                | ProtocolError::TopicAuthorizationFailed
                | ProtocolError::InvalidRequiredAcks,
            ..
        }
    )
}

impl LogBroker for Shared {
    const KIND: Kind = Kind::Kafka;

    type Publisher = Arc<PartitionClient>;

    fn publishing(&self) -> &Publishing<Arc<PartitionClient>> {
        &self.publishing
    }

    fn usable(_: &Arc<PartitionClient>) -> bool {
        true
    }

    /// The envelope returned has no position: a retried publish is written again at a new
    /// offset (and skipped by readers), so the offset Kafka answers is not always the
    /// update's; its position is known once it is read.
    async fn publish(
        &self,
        partition: Arc<PartitionClient>,
        update: Update,
    ) -> Result<Published, BusError> {
        let record = tidings_client::kafka::record(
            update.id.as_str(),
            super::wire::encode(&update),
            now_micros(),
        );
        let produced = tokio::time::timeout(
            self.timeout,
            partition.produce(vec![record], Compression::NoCompression),
        )
        .await;
        match produced {
            Ok(Ok(_)) => Ok(Published {
                id: update.id,
                position: None,
            }),
            Ok(Err(e)) if not_written(&e) => Err(failed(e)),
            Ok(Err(e)) => Err(BusError::OutcomeUnknown(Cause::caused_by(
                format!("kafka: {e}"),
                e,
            ))),
            Err(_) => Err(BusError::OutcomeUnknown(Cause::new(format!(
                "kafka: no acknowledgement within {:?}",
                self.timeout
            )))),
        }
    }

    async fn read_up_to_now(&self, partition: Arc<PartitionClient>) -> Result<(), BusError> {
        let head = timed(self.timeout, partition.get_offset(OffsetAt::Latest)).await?;
        let head = u64::try_from(head).unwrap_or(0);
        let mut next = self.next_offset.subscribe();
        let reached = tokio::time::timeout(self.timeout, next.wait_for(|n| *n >= head))
            .await
            .is_ok_and(|r| r.is_ok());
        match reached {
            true => Ok(()),
            false => Err(unavailable(format!(
                "reading the topic did not reach offset {head} within {:?}",
                self.timeout
            ))),
        }
    }

    fn history<T>(&self, read: impl FnOnce(&mut LocalHistory) -> T) -> T {
        read(&mut lock(&self.reading).log.history)
    }

    /// Every instance reads the partition by offset.
    fn resumes(&self) -> bool {
        true
    }

    async fn signal(&self, _: Arc<PartitionClient>, signal: bytes::Bytes) -> Result<(), BusError> {
        let control = self
            .signals
            .get()
            .ok_or_else(|| unavailable("not connected"))?;
        let record = rskafka::record::Record {
            key: None,
            value: Some(signal.to_vec()),
            headers: Default::default(),
            timestamp: i64::try_from(now_micros())
                .ok()
                .and_then(rskafka::chrono::DateTime::from_timestamp_micros)
                .unwrap_or_default(),
        };
        let produce = control.produce(vec![record], Compression::NoCompression);
        timed(self.timeout, produce).await.map(|_| ())
    }
}
