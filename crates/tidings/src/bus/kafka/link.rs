//! The Kafka bus's connection: the client, the topic, reading the partition into the hub, and
//! starting over after a failure.
//!
//! The reader's client never retries by itself: any failure ends the link, and the next link
//! first reads the partition from the last offset this instance read, not the one after it,
//! and checks that the record there is still the one it read. A partition that changed under
//! the reader — a broker that lost its log and took new records at the same offsets, a topic
//! deleted and made again — is so noticed at the first read after it, counted as a gap and
//! read again from its start, never taken as the continuation of the old one. (A client that
//! reconnected inside one operation would hide the change; a check on every read would
//! defeat Kafka's long poll, since the record checked always answers it.)

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::RecordAndOffset;
use rskafka::BackoffConfig;

use tidings_client::kafka::Topic;

use super::{failed, lock, timed, unavailable, KafkaUrl, Shared, TIME_HEADER};
use crate::bus::reconnect::Reconnect;
use crate::bus::{BusError, BusOptions, Cause};
use crate::envelope::now_micros;

/// The least a read may fetch, in bytes: more than one update of the largest size.
const MIN_FETCH_BYTES: usize = 4 << 20;

/// What a connection needs to know, fixed at start-up.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    url: KafkaUrl,
    client_id: String,
    history_size: usize,
    timeout: Duration,
    fetch_bytes: i32,
}

impl Settings {
    pub(super) fn new(url: KafkaUrl, options: &BusOptions, timeout: Duration) -> Self {
        let fetch_bytes = options
            .limits
            .max_body_bytes
            .saturating_mul(2)
            .max(MIN_FETCH_BYTES);
        Settings {
            url,
            client_id: format!("tidings-{}", options.instance_id),
            history_size: options.history_size,
            timeout,
            fetch_bytes: i32::try_from(fetch_bytes).unwrap_or(i32::MAX),
        }
    }
}

/// Where reading the partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// At start-up: the last `history-size` updates, to serve resumes from.
    Fresh,
    /// After a reconnect: right after the last offset read.
    Resume,
}

/// Two live clients of the partition: one reads, one publishes. Kafka answers the requests
/// of one connection in order, so a read that waits for new records would hold up every
/// publish sent behind it on the same connection.
pub(super) struct Link {
    partition: Arc<PartitionClient>,
    publisher: Arc<PartitionClient>,
    /// The offset to read next.
    next: u64,
    /// True until the first read checked that the partition is still the one read.
    unchecked: bool,
    /// Publishing opens once reading reaches this offset (the partition's end when the link
    /// was made): an instance serves only once it has read what the partition held.
    caught_up_at: u64,
}

/// What one read found.
enum Read {
    /// Records, from the offset asked for, and the partition's end.
    Records(Vec<RecordAndOffset>, u64),
    /// The offset asked for is not in the partition: its first and end offsets.
    OutOfRange(u64, u64),
}

fn offset(o: i64) -> u64 {
    u64::try_from(o).unwrap_or(0)
}

fn offset_arg(o: u64) -> i64 {
    i64::try_from(o).unwrap_or(i64::MAX)
}

/// A fingerprint of a record, to know it again: its value and timestamp.
pub(super) fn fingerprint(record: &RecordAndOffset) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    record.record.value.hash(&mut hasher);
    record.record.timestamp.timestamp_millis().hash(&mut hasher);
    hasher.finish()
}

/// When the record was published, in microseconds since the Unix epoch: the
/// [`TIME_HEADER`] header when a record has it, else its Kafka timestamp.
fn published_at(record: &RecordAndOffset) -> u64 {
    record
        .record
        .headers
        .get(TIME_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .filter(|m| *m > 0)
        .or_else(|| {
            u64::try_from(record.record.timestamp.timestamp_micros())
                .ok()
                .filter(|m| *m > 0)
        })
        .unwrap_or_else(now_micros)
}

/// True when Kafka refused this instance for a reason retrying cannot cure: its SASL
/// credentials, or a TLS certificate this machine does not trust.
fn refused(e: &KafkaError) -> bool {
    match e {
        KafkaError::Connection(rskafka::ConnectionError::SaslFailed(_)) => true,
        other => crate::bus::broker::is_certificate_error(other),
    }
}

impl Link {
    /// Connects, creates the topic if it is missing, and finds where to read from.
    pub(super) async fn establish(
        shared: &Shared,
        settings: &Settings,
        start: Start,
    ) -> Result<Link, BusError> {
        let client = connect(settings, Some(settings.timeout)).await?;
        ensure_topic(&client, &shared.topic, settings).await?;
        let publisher = partition_of(&client, &shared.topic, settings).await?;
        // The reader's client does not retry: a failed read ends the link, and the next one
        // checks the partition is still the one read (see the module documentation).
        let reader = connect(settings, Some(Duration::ZERO)).await?;
        let partition = partition_of(&reader, &shared.topic, settings).await?;
        let end = offset(timed(settings.timeout, publisher.get_offset(OffsetAt::Latest)).await?);
        let last = lock(&shared.reading).log.last();
        let next = match (start, last) {
            (Start::Resume, Some(last)) => last + 1,
            // Nothing read since the link before (or since the partition was lost): on from
            // where that one was.
            (Start::Resume, None) => *shared.next_offset.borrow(),
            (Start::Fresh, _) => {
                let first = offset(
                    timed(settings.timeout, publisher.get_offset(OffsetAt::Earliest)).await?,
                );
                end.saturating_sub(settings.history_size as u64).max(first)
            }
        };
        Ok(Link {
            partition: Arc::new(partition),
            publisher: Arc::new(publisher),
            next,
            unchecked: true,
            caught_up_at: end,
        })
    }

    /// Hands every record to the hub until the connection fails; opens publishing once this
    /// instance has read everything the partition held when the link was made.
    async fn deliver(&mut self, shared: &Shared, settings: &Settings) -> BusError {
        shared.next_offset.send_replace(self.next);
        loop {
            if self.next >= self.caught_up_at && lock(&shared.publisher).is_none() {
                shared.set_publisher(Some(self.publisher.clone()));
                tracing::info!(
                    topic = shared.topic,
                    "kafka: connected, and caught up with the topic"
                );
            }
            // A new link re-reads the last record read, to know the partition is still the
            // one read.
            let last = lock(&shared.reading).last_read();
            let check = last.filter(|(o, _)| self.unchecked && o + 1 == self.next);
            let from = check.map_or(self.next, |(o, _)| o);
            let read = match self.read(from, settings).await {
                Ok(read) => read,
                Err(e) => return e,
            };
            self.unchecked = false;
            let changed = match read {
                Read::Records(records, end) => {
                    let mut records = records.into_iter().peekable();
                    let changed = match (check, records.peek()) {
                        // Still there, still the same.
                        (Some((o, print)), Some(r)) if r.offset == offset_arg(o) => {
                            let same = fingerprint(r) == print;
                            records.next();
                            !same
                        }
                        // Gone by retention (it is before the first record now): cannot be
                        // checked, and what follows it is read on.
                        (Some(_), Some(_)) => false,
                        // Nothing at or after it: the partition ends before what was read.
                        (Some((o, _)), None) => end <= o,
                        (None, _) => end < self.next,
                    };
                    if !changed {
                        self.take(shared, records);
                    }
                    changed
                }
                Read::OutOfRange(first, end) => {
                    let wanted = if check.is_some() { from + 1 } else { from };
                    if end < wanted {
                        true
                    } else {
                        // What this instance had not read yet left the partition (retention):
                        // read on from its first offset; the skipped offsets count as a gap.
                        self.next = self.next.max(first);
                        false
                    }
                }
            };
            if changed {
                if let Err(e) = self.read_again(shared, settings).await {
                    return e;
                }
            }
        }
    }

    /// One read from `from`, waiting up to `fetch-wait` for something new (Kafka answers as
    /// soon as a record comes; an idle partition is asked again after this long).
    async fn read(&self, from: u64, settings: &Settings) -> Result<Read, BusError> {
        let fetch_wait = settings.url.fetch_wait_ms;
        let wait = settings.timeout + Duration::from_millis(u64::from(fetch_wait));
        let fetched = tokio::time::timeout(
            wait,
            self.partition.fetch_records(
                offset_arg(from),
                1..settings.fetch_bytes,
                i32::try_from(fetch_wait).unwrap_or(i32::MAX),
            ),
        )
        .await;
        match fetched {
            Ok(Ok((records, end))) => Ok(Read::Records(records, offset(end))),
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            })) => {
                let first = self.partition.get_offset(OffsetAt::Earliest);
                let first = offset(timed(settings.timeout, first).await?);
                let end = self.partition.get_offset(OffsetAt::Latest);
                let end = offset(timed(settings.timeout, end).await?);
                Ok(Read::OutOfRange(first, end))
            }
            Ok(Err(e)) => Err(failed(e)),
            Err(_) => Err(unavailable(format!("no answer to a read within {wait:?}"))),
        }
    }

    /// Takes records read, in order, under one lock with the dispatch.
    fn take(&mut self, shared: &Shared, records: impl Iterator<Item = RecordAndOffset>) {
        let mut reading = lock(&shared.reading);
        for record in records {
            let at = offset(record.offset);
            if at < self.next {
                continue;
            }
            self.next = at + 1;
            let Some(position) = reading.log.advance(at, &shared.hub, "kafka") else {
                continue;
            };
            reading.last_print = fingerprint(&record);
            let value = record.record.value.as_deref().unwrap_or_default();
            let micros = published_at(&record);
            reading.log.deliver(
                &shared.hub,
                &shared.limits,
                "kafka",
                position,
                value,
                micros,
            );
        }
        drop(reading);
        shared.next_offset.send_replace(self.next);
    }

    /// The partition is not the one this instance read: counts and logs the gap, and reads it
    /// again from its first offset, at positions past every one given so far.
    async fn read_again(&mut self, shared: &Shared, settings: &Settings) -> Result<(), BusError> {
        shared.hub.metrics().bus_gaps.inc();
        tracing::warn!(
            topic = shared.topic,
            "kafka: the partition no longer holds what this instance read (Kafka lost it, or the topic was made again); reading it again from its start"
        );
        lock(&shared.reading).log.lost();
        let first = self.partition.get_offset(OffsetAt::Earliest);
        self.next = offset(timed(settings.timeout, first).await?);
        shared.next_offset.send_replace(self.next);
        Ok(())
    }
}

/// A client of the cluster, its bootstrap brokers answering, that retries a failed operation
/// until `deadline` (`None`: for ever).
async fn connect(settings: &Settings, deadline: Option<Duration>) -> Result<Client, BusError> {
    let builder = settings
        .url
        .client_builder()
        .map_err(|e| BusError::Config(e.into()))?
        .client_id(settings.client_id.as_str())
        // Past the deadline, this bus reconnects with its own backoff.
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.,
            deadline,
        });
    match tokio::time::timeout(settings.timeout, builder.build()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) if refused(&e) => {
            let what = format!("Kafka refused the connection: {e}");
            Err(BusError::Config(Cause::caused_by(what, e)))
        }
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(unavailable(format!(
            "no answer within {:?}",
            settings.timeout
        ))),
    }
}

/// A client of partition 0 of `topic`, on a connection to its leader of its own.
async fn partition_of(
    client: &Client,
    topic: &str,
    settings: &Settings,
) -> Result<PartitionClient, BusError> {
    let partition = client.partition_client(topic.to_owned(), 0, UnknownTopicHandling::Retry);
    timed(settings.timeout, partition).await
}

/// Creates the cluster's topic when it does not exist.
async fn ensure_topic(client: &Client, topic: &str, settings: &Settings) -> Result<(), BusError> {
    let ensured = tidings_client::kafka::ensure_topic(client, topic, settings.url.replication);
    match timed(settings.timeout, ensured).await {
        Ok(Topic::Created) => tracing::info!(topic, "kafka: created the topic"),
        Ok(Topic::Existed { partitions }) if partitions > 1 => tracing::warn!(
            topic,
            partitions,
            "kafka: the topic has several partitions; only partition 0 is read (publish to it alone)"
        ),
        Ok(Topic::Existed { .. }) => {}
        Err(e) => return Err(e.context(format_args!("cannot create the topic {topic:?}"))),
    }
    Ok(())
}

/// The connection task: delivers, and after a failure connects again with backoff.
pub(super) async fn run(
    shared: Arc<Shared>,
    settings: Settings,
    mut link: Link,
    mut reconnect: Reconnect,
) {
    reconnect.connected();
    loop {
        let error = link.deliver(&shared, &settings).await;
        shared.set_publisher(None);
        reconnect.lost(&error);
        link = loop {
            reconnect.wait().await;
            match Link::establish(&shared, &settings, Start::Resume).await {
                Ok(link) => break link,
                Err(e) => reconnect.failed(&e),
            }
        };
        reconnect.connected();
    }
}
