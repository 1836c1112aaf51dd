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

use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::RecordAndOffset;
use rskafka::BackoffConfig;

use tidings_client::kafka::Topic;

use super::judge::{fingerprint, judge, offset, offset_arg, Read, Verdict, HOLE_GRACE, LOSS_GRACE};
use super::{failed, lock, timed, unavailable, KafkaUrl, Shared, TIME_HEADER};
use crate::bus::reconnect::{self, Stop};
use crate::bus::{BusError, BusOptions, Cause};

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
    /// The control topic's partition: signals are published through the first, read (on a
    /// connection of its own, for the same reason) through the second from `control_next`.
    control: Arc<PartitionClient>,
    control_reader: Arc<PartitionClient>,
    control_next: u64,
    /// The offset to read next.
    next: u64,
    /// True until the first read checked that the partition is still the one read.
    unchecked: bool,
    /// Publishing opens once reading reaches this offset (the partition's end when the link
    /// was made): an instance serves only once it has read what the partition held.
    caught_up_at: u64,
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
        .or_else(|| u64::try_from(record.record.timestamp.timestamp_micros()).ok())
        .unwrap_or(0)
}

/// True when Kafka refused this instance for a reason retrying cannot cure: its SASL
/// credentials, or a TLS certificate this machine does not trust. Read from the error's
/// words: the client gathers the failure of each broker it tried into one error that keeps
/// their messages only.
fn refused(e: &KafkaError) -> bool {
    let words = e.to_string();
    words.contains("Sasl handshake failed") || words.contains("invalid peer certificate")
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
        ensure_topic(&client, &shared.control_topic, settings).await?;
        let publisher = partition_of(&client, &shared.topic, settings).await?;
        let control = partition_of(&client, &shared.control_topic, settings).await?;
        let signals = connect(settings, Some(settings.timeout)).await?;
        let control_reader = partition_of(&signals, &shared.control_topic, settings).await?;
        let control_next =
            offset(timed(settings.timeout, control.get_offset(OffsetAt::Latest)).await?);
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
            // The last `history-size` records, and as many before them: reading those too,
            // this instance knows the ids before each record it keeps as every instance that
            // read them does, and skips the same retried copies.
            (Start::Fresh, _) => {
                let first = offset(
                    timed(settings.timeout, publisher.get_offset(OffsetAt::Earliest)).await?,
                );
                let window = (settings.history_size as u64).saturating_mul(2);
                end.saturating_sub(window).max(first)
            }
        };
        Ok(Link {
            partition: Arc::new(partition),
            publisher: Arc::new(publisher),
            control: Arc::new(control),
            control_reader: Arc::new(control_reader),
            control_next,
            next,
            unchecked: true,
            caught_up_at: end,
        })
    }

    /// Hands every record to the hub until the connection fails; opens publishing once this
    /// instance has read everything the partition held when the link was made, and checked it
    /// is still the partition it read.
    async fn deliver(&mut self, shared: &Arc<Shared>, settings: &Settings) -> BusError {
        shared.next_offset.send_replace(self.next);
        let signals = tokio::spawn(read_signals(
            self.control_reader.clone(),
            self.control_next,
            shared.clone(),
            settings.clone(),
        ));
        let _signals = AbortOnDrop(signals);
        let fetch_wait = Duration::from_millis(u64::from(settings.url.fetch_wait_ms));
        // Since when reads have suggested the partition is not the one read, and the offset
        // that has answered no record though later ones did (with since when).
        let mut suspect_since: Option<Instant> = None;
        let mut hole: Option<(u64, Instant)> = None;
        loop {
            if !self.unchecked && self.next >= self.caught_up_at && !shared.publishing.is_open() {
                shared.signals.set(Some(self.control.clone()));
                shared.publishing.set(Some(self.publisher.clone()));
                tracing::info!(
                    topic = shared.topic,
                    "kafka: connected, and caught up with the topic"
                );
            }
            // A new link (or a suspicion) re-reads the last record read, to know the
            // partition is still the one read.
            let last = lock(&shared.reading).last_read();
            let check = last.filter(|(o, _)| self.unchecked && o + 1 == self.next);
            let from = check.map_or(self.next, |(o, _)| o);
            let read = match self.read(from, settings).await {
                Ok(read) => read,
                Err(e) => return e,
            };
            self.unchecked = false;
            let verdict = judge(check, self.next, &read);
            if verdict != Verdict::Suspect {
                suspect_since = None;
            }
            // The hole at `next` may be passed once it has lasted.
            let passable = hole
                .filter(|(at, since)| *at == self.next && since.elapsed() >= HOLE_GRACE)
                .map(|(at, _)| at);
            match verdict {
                Verdict::Go { next_at_least } => {
                    self.next = self.next.max(next_at_least);
                    let Read::Records(records, _) = read else {
                        continue;
                    };
                    match self.take(shared, records, passable) {
                        None => hole = None,
                        Some(at) => {
                            if hole.is_none_or(|(h, _)| h != at) {
                                hole = Some((at, Instant::now()));
                            }
                            tokio::time::sleep(fetch_wait).await;
                        }
                    }
                }
                // A partition that ends before what was read is lost — or led by a replica
                // whose high watermark has not caught up yet: look again for a while.
                Verdict::Suspect => {
                    let since = *suspect_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < LOSS_GRACE {
                        self.unchecked = true;
                        tokio::time::sleep(fetch_wait).await;
                        continue;
                    }
                    suspect_since = None;
                    if let Err(e) = self.read_again(shared, settings).await {
                        return e;
                    }
                }
                Verdict::Changed => {
                    if let Err(e) = self.read_again(shared, settings).await {
                        return e;
                    }
                }
                Verdict::Again => tokio::time::sleep(fetch_wait).await,
                // Nothing at `next` though the partition holds more: a hole, passed once it
                // has lasted (see `HOLE_GRACE`).
                Verdict::Stalled if passable == Some(self.next) => {
                    hole = None;
                    self.pass(shared, self.next + 1);
                }
                Verdict::Stalled => {
                    if hole.is_none_or(|(h, _)| h != self.next) {
                        hole = Some((self.next, Instant::now()));
                    }
                    tokio::time::sleep(fetch_wait).await;
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

    /// Takes records read, in order, under one lock with the dispatch (those before `next`,
    /// the record checked among them, were taken before). Stops at a hole — an offset that
    /// answered no record though a later one did — and returns it, unless it is `passable`.
    fn take(
        &mut self,
        shared: &Shared,
        records: Vec<RecordAndOffset>,
        passable: Option<u64>,
    ) -> Option<u64> {
        let mut reading = lock(&shared.reading);
        let mut hole = None;
        // The last record taken: its fingerprint is kept, once per read, not per record.
        let mut last = None;
        for record in &records {
            let at = offset(record.offset);
            if at < self.next {
                continue;
            }
            if at > self.next {
                if passable != Some(self.next) {
                    hole = Some(self.next);
                    break;
                }
                tracing::debug!(
                    from = self.next,
                    to = at - 1,
                    "kafka: offsets without a record; passed"
                );
                reading.log.pass(at - 1);
            }
            self.next = at + 1;
            let Some(position) = reading.log.advance(at, &shared.hub) else {
                continue;
            };
            last = Some(record);
            let value = record.record.value.as_deref().unwrap_or_default();
            let micros = published_at(record);
            reading.log.deliver(&shared.hub, position, value, micros);
        }
        if let Some(record) = last {
            reading.last_print = fingerprint(record);
        }
        drop(reading);
        shared.next_offset.send_replace(self.next);
        hole
    }

    /// Passes the offsets from `next` up to `to` (excluded) as holding no update.
    fn pass(&mut self, shared: &Shared, to: u64) {
        tracing::debug!(
            from = self.next,
            to = to - 1,
            "kafka: offsets without a record; passed"
        );
        lock(&shared.reading).log.pass(to - 1);
        self.next = to;
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
        // From 0 until the first offset is known (a read below it is moved up to it), so that
        // a link made meanwhile reads the new partition from its start too.
        self.next = 0;
        shared.next_offset.send_replace(0);
        let first = self.partition.get_offset(OffsetAt::Earliest);
        self.next = offset(timed(settings.timeout, first).await?);
        shared.next_offset.send_replace(self.next);
        Ok(())
    }
}

/// Hands the hub every signal published to the control topic from `next` on, until aborted
/// (with its link); a failed read is tried again a second later, from the same offset.
async fn read_signals(
    partition: Arc<PartitionClient>,
    mut next: u64,
    shared: Arc<Shared>,
    settings: Settings,
) {
    let fetch_wait = settings.url.fetch_wait_ms;
    loop {
        let fetch = partition.fetch_records(
            offset_arg(next),
            1..settings.fetch_bytes,
            i32::try_from(fetch_wait).unwrap_or(i32::MAX),
        );
        let wait = settings.timeout + Duration::from_millis(u64::from(fetch_wait));
        match tokio::time::timeout(wait, fetch).await {
            Ok(Ok((records, _))) => {
                for record in records {
                    next = next.max(offset(record.offset) + 1);
                    if let Some(value) = record.record.value {
                        shared.hub.receive_signal(value.into());
                    }
                }
            }
            // Trimmed past where it read: on from the partition's end.
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            })) => {
                if let Ok(Ok(end)) =
                    tokio::time::timeout(settings.timeout, partition.get_offset(OffsetAt::Latest))
                        .await
                {
                    next = offset(end);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "kafka: cannot read signals; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client of the cluster, its bootstrap brokers answering, that retries a failed operation
/// until `deadline` (`None`: for ever).
async fn connect(settings: &Settings, deadline: Option<Duration>) -> Result<Client, BusError> {
    let builder = settings
        .url
        .client_builder()
        .map_err(|e| BusError::Config(Cause::new(e)))?
        .client_id(settings.client_id.as_str())
        // Past the deadline, this bus reconnects with its own backoff.
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.,
            deadline,
        });
    // Longer than the client's own deadline, so that its error, which says why, comes first.
    let limit = settings.timeout + Duration::from_secs(1);
    match tokio::time::timeout(limit, builder.build()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) if refused(&e) => {
            let what = format!("Kafka refused the connection: {e}");
            Err(BusError::Config(Cause::caused_by(what, e)))
        }
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(unavailable(format!("no answer within {limit:?}"))),
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
        Err(e) if not_creatable(&e) => {
            let why = format!("cannot create the topic {topic:?}: {}", e.cause());
            return Err(BusError::Config(Cause::new(why)));
        }
        Err(e) => return Err(e.context(format_args!("cannot create the topic {topic:?}"))),
    }
    Ok(())
}

/// True when Kafka refused to create the topic for a reason retrying cannot cure (the
/// replication factor `?replication=` asks for, or this user's rights).
fn not_creatable(e: &BusError) -> bool {
    let source = e.cause().source();
    matches!(
        source.and_then(|s| s.downcast_ref::<KafkaError>()),
        Some(KafkaError::ServerError {
            protocol_error: ProtocolError::InvalidReplicationFactor
                | ProtocolError::InvalidPartitions
                | ProtocolError::PolicyViolation
                | ProtocolError::TopicAuthorizationFailed
                | ProtocolError::ClusterAuthorizationFailed,
            ..
        })
    )
}

/// The connection task's part: what connecting again and delivering mean on Kafka.
pub(super) struct Target {
    pub(super) shared: Arc<Shared>,
    pub(super) settings: Settings,
}

impl reconnect::Target for Target {
    type Connection = Link;

    async fn connect(&mut self) -> Result<Link, BusError> {
        Link::establish(&self.shared, &self.settings, Start::Resume).await
    }

    async fn deliver(&mut self, mut link: Link) -> Stop {
        let error = link.deliver(&self.shared, &self.settings).await;
        self.shared.publishing.set(None);
        self.shared.signals.set(None);
        Stop::Lost(error.cause().clone())
    }
}
