//! Consuming a Kafka topic the services produce to: read by one instance at a time, its
//! offsets committed after the bus stored the updates, a record's key readable as `{key}`.
//!
//! rskafka (the Kafka bus's client) has no consumer groups, and the group coordinators of
//! Kafka-compatible brokers differ (Tansu's left a dead member's partition assigned to it, and
//! the survivor with half the topic, tried with librdkafka), so the instances coordinate
//! through a topic of their own on the same Kafka, `<topic>.tidings-<consumer>` (one
//! partition), which every instance reads and appends to:
//!
//! - each instance appends a heartbeat every second; the reader's carry the offsets it has
//!   stored up to (the next to read, by partition; always where a fetch ended): its commits;
//! - an instance that has appended [`MISSED`] heartbeats since the reader's last (or finds no
//!   reader) appends a claim; the first claim that the log shows to be due wins. Every
//!   instance reads the same log in the same order, so every instance agrees on who reads;
//! - the reader reads every partition of the topic from the last committed offsets (the
//!   topic's end, the first time), and stops as soon as the log names another reader. One
//!   that drains appends a resignation with its last commits, and the next takes over at once.
//!
//! An update's id is `urn:tidings:<consumer>:<partition>.<offset>`: what a reader that died
//! had stored but not yet committed is stored again by its successor, once. A reader that
//! stalls for [`MISSED`] seconds and comes back may publish the batch it held beside its
//! successor: stored once, but those few may interleave with the successor's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::{Record, RecordAndOffset};
use serde::{Deserialize, Serialize};

use super::mapping::Message;
use super::run::{Farewell, Handled, Handler};
use super::spec::KafkaSource;
use crate::bus::reconnect::{self, Stop};
use crate::bus::{BusError, Cause};
use crate::update::UpdateId;

/// How often each instance appends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Heartbeats an instance appends after the reader's last before it claims the topic: the
/// longest the topic waits after its reader died.
const MISSED: usize = 5;
/// How far back in the coordination log an instance starts reading: it holds the reader's
/// last heartbeat whenever fewer than this many instances run.
const TAIL: i64 = 1000;
/// Bytes asked of a partition at once: one round of the reader, after which it reads the
/// log again (a reader that falls behind the log learns it soon). A broker returns whole
/// record batches, and the first even when it is larger.
const FETCH_BYTES: i32 = 256 << 10;

/// A record of the coordination log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Beat {
    instance: String,
    kind: Kind,
    /// The reader's: the next offset to read, by partition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    offsets: BTreeMap<i32, i64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// An instance that does not read.
    Heartbeat,
    /// The reader, with its commits.
    Read,
    /// An instance that finds the reader gone.
    Claim,
    /// The reader, stopping.
    Resign,
}

/// Who reads, as the coordination log says so far.
#[derive(Debug, Default)]
struct View {
    reader: Option<String>,
    /// The reader's last commits.
    offsets: BTreeMap<i32, i64>,
    /// Each instance's heartbeats since the reader's last record.
    waited: HashMap<String, usize>,
}

impl View {
    fn apply(&mut self, beat: Beat) {
        let from_reader = self.reader.as_deref() == Some(beat.instance.as_str());
        match beat.kind {
            Kind::Read if from_reader => {
                self.offsets = beat.offsets;
                self.waited.clear();
            }
            // A reader that was replaced, late: not a commit.
            Kind::Read => {}
            Kind::Resign if from_reader => {
                self.reader = None;
                self.offsets = beat.offsets;
                self.waited.clear();
            }
            Kind::Resign => {}
            Kind::Heartbeat => *self.waited.entry(beat.instance).or_default() += 1,
            Kind::Claim if self.claimable_by(&beat.instance) => {
                self.reader = Some(beat.instance);
                self.waited.clear();
            }
            // Not due (the log moved on before it was written): a heartbeat.
            Kind::Claim => *self.waited.entry(beat.instance).or_default() += 1,
        }
    }

    /// Whether `instance` may claim the topic now.
    fn claimable_by(&self, instance: &str) -> bool {
        self.reader.is_none() || self.waited.get(instance).copied().unwrap_or(0) >= MISSED
    }
}

/// Why the connection ended, from a failed operation.
fn lost(e: BusError) -> Stop {
    Stop::Lost(e.cause().clone())
}

/// The connection a consumer's reconnect machine drives.
pub(super) struct Target {
    source: KafkaSource,
    handler: Arc<Handler>,
    instance: String,
    timeout: Duration,
    /// While this instance reads: the coordination log and how far it has stored, for the
    /// resignation its farewell appends.
    reading: Option<(Arc<PartitionClient>, BTreeMap<i32, i64>)>,
}

/// A connection: the client, the coordination log and the topic's partitions.
pub(super) struct Link {
    coordination: Arc<PartitionClient>,
    partitions: Vec<(i32, PartitionClient)>,
}

impl Target {
    pub(super) fn new(
        source: KafkaSource,
        handler: Arc<Handler>,
        instance: String,
        timeout: Duration,
    ) -> Self {
        Target {
            source,
            handler,
            instance,
            timeout,
            reading: None,
        }
    }

    /// One operation on the source, within the time limit.
    async fn timed<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, rskafka::client::error::Error>>,
    ) -> Result<T, BusError> {
        self.handler.timed(self.timeout, what, f).await
    }

    /// Appends `kind` to the coordination log `log`.
    async fn append(
        &self,
        log: &PartitionClient,
        kind: Kind,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), Stop> {
        let beat = Beat {
            instance: self.instance.clone(),
            kind,
            offsets: offsets.clone(),
        };
        let record = Record {
            key: None,
            value: serde_json::to_vec(&beat).ok(),
            headers: BTreeMap::new(),
            timestamp: i64::try_from(crate::envelope::now_micros())
                .ok()
                .and_then(rskafka::chrono::DateTime::from_timestamp_micros)
                .unwrap_or_default(),
        };
        let produced = log.produce(vec![record], Compression::NoCompression);
        self.timed("appending to the coordination log failed", produced)
            .await
            .map(|_| ())
            .map_err(lost)
    }

    /// Fetches what `partition` holds from `offset` on (waiting up to the URL's `fetch-wait-ms`
    /// for it), and its end; `what` names it in errors.
    async fn fetch(
        &self,
        what: &str,
        partition: &PartitionClient,
        offset: i64,
    ) -> Result<(Vec<RecordAndOffset>, i64), Stop> {
        let fetched = partition.fetch_records(
            offset,
            1..FETCH_BYTES,
            i32::try_from(self.source.url.fetch_wait_ms).unwrap_or(100),
        );
        // (Twice the operation limit: the fetch may wait for records first.)
        match tokio::time::timeout(self.timeout * 2, fetched).await {
            Ok(Ok(read)) => Ok(read),
            Ok(Err(e)) => Err(self.handler.lost(&format!("reading {what} failed"), e)),
            Err(_) => Err(Stop::Lost(Cause::new(format!(
                "consumer {}: reading {what}: no answer",
                self.handler.name
            )))),
        }
    }

    /// Reads what the coordination log holds from `next` on into `view`; where to read next.
    async fn follow(&self, link: &Link, view: &mut View, next: i64) -> Result<i64, Stop> {
        let (records, _) = self
            .fetch("the coordination log", &link.coordination, next)
            .await?;
        let mut next = next;
        for RecordAndOffset { record, offset } in records {
            next = next.max(offset + 1);
            if let Some(beat) = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<Beat>(v).ok())
            {
                view.apply(beat);
            }
        }
        Ok(next)
    }

    /// Reads one fetch of `partition` from its position in `positions` and publishes it,
    /// appending the reader's heartbeat when due (`beat_at`) with the commits as they were
    /// before the fetch; the position after the fetch and the partition's end, or `None` when
    /// the instance stopped before the fetch was published.
    ///
    /// A commit is always where a fetch ended (or began), never within a record batch: a
    /// successor fetches from there, and Tansu, the Kafka-compatible broker of the tests,
    /// answers a fetch from within a batch with the batches after it (tried: the rest of the
    /// batch was skipped). What a reader published of a fetch it did not finish is published
    /// again by the next, and stored once (the ids are the offsets).
    async fn read_partition(
        &self,
        link: &Link,
        (partition, client): (i32, &PartitionClient),
        positions: &BTreeMap<i32, i64>,
        beat_at: &mut Option<Instant>,
    ) -> Result<Option<(i64, i64)>, Stop> {
        let position = positions.get(&partition).copied().unwrap_or(0);
        let (records, end) = self.fetch("the topic", client, position).await?;
        let mut next = position;
        let _busy = self.handler.busy.lock().await;
        for RecordAndOffset { record, offset } in records {
            if offset < position {
                continue;
            }
            if self.handler.stop.is_cancelled() {
                return Ok(None);
            }
            if beat_at.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
                *beat_at = Some(Instant::now());
                self.append(&link.coordination, Kind::Read, positions)
                    .await?;
            }
            let key = record
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok());
            let body = record.value.as_deref().unwrap_or_default();
            let message = Message {
                body,
                name: &self.source.topic,
                captures: Vec::new(),
                key,
            };
            let place = format!("offset {offset} of {}/{partition}", self.source.topic);
            let consumer = &self.handler.name;
            let id = || UpdateId::derived(format!("{consumer}:{partition}.{offset}"));
            match self.handler.handle(&message, &place, id).await {
                Handled::Published | Handled::Skipped => next = offset + 1,
                Handled::Stopped => return Ok(None),
            }
        }
        Ok(Some((next, end)))
    }
}

impl reconnect::Target for Target {
    type Connection = Link;

    async fn connect(&mut self) -> Result<Link, BusError> {
        let builder = self.source.url.client_builder().map_err(|e| {
            BusError::Config(Cause::new(format!("consumer {}: {e}", self.handler.name)))
        })?;
        let client: Client = self.timed("cannot connect", builder.build()).await?;
        let topics = self
            .timed("cannot list the topics", client.list_topics())
            .await?;
        let Some(topic) = topics.iter().find(|t| t.name == self.source.topic) else {
            return Err(BusError::Unavailable(Cause::new(format!(
                "consumer {}: no topic {:?}: it must exist (the services' topic is theirs to create)",
                self.handler.name, self.source.topic
            ))));
        };
        let mut partitions = Vec::new();
        for &partition in &topic.partitions {
            let client = self
                .timed(
                    "cannot reach a partition",
                    client.partition_client(
                        self.source.topic.clone(),
                        partition,
                        UnknownTopicHandling::Retry,
                    ),
                )
                .await?;
            partitions.push((partition, client));
        }
        let log = &self.source.coordination;
        self.timed(
            "cannot create the coordination log",
            tidings_client::kafka::ensure_topic(&client, log, self.source.url.replication),
        )
        .await?;
        let coordination = self
            .timed(
                "cannot reach the coordination log",
                client.partition_client(log.clone(), 0, UnknownTopicHandling::Retry),
            )
            .await?;
        tracing::info!(consumer = %self.handler.name, topic = %self.source.topic, partitions = partitions.len(), "consumer: connected");
        Ok(Link {
            coordination: Arc::new(coordination),
            partitions,
        })
    }

    async fn deliver(&mut self, link: Link) -> Stop {
        // Where the reader's last heartbeat is: within the log's last records.
        let end = match self
            .timed(
                "cannot read the coordination log",
                link.coordination.get_offset(OffsetAt::Latest),
            )
            .await
        {
            Ok(end) => end,
            Err(e) => return lost(e),
        };
        // (What retention removed cannot be read.)
        let start = match self
            .timed(
                "cannot read the coordination log",
                link.coordination.get_offset(OffsetAt::Earliest),
            )
            .await
        {
            Ok(start) => start,
            Err(e) => return lost(e),
        };
        let mut next = (end - TAIL).max(start);
        let mut view = View::default();
        // Read up to the end before taking part.
        while next < end {
            match self.follow(&link, &mut view, next).await {
                Ok(n) => next = n,
                Err(stop) => return stop,
            }
        }
        let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
        let mut reading = false;
        let mut beat_at: Option<Instant> = None;
        loop {
            let me = view.reader.as_deref() == Some(self.instance.as_str());
            if self.handler.stop.is_cancelled() {
                // (The farewell resigns.)
                return std::future::pending().await;
            }
            if me && !reading {
                reading = true;
                positions.clone_from(&view.offsets);
                for (partition, client) in &link.partitions {
                    if !positions.contains_key(partition) {
                        // The first reader starts at the topic's end: what is produced from
                        // now on.
                        match self
                            .timed("cannot read an offset", client.get_offset(OffsetAt::Latest))
                            .await
                        {
                            Ok(end) => {
                                positions.insert(*partition, end);
                            }
                            Err(e) => return lost(e),
                        }
                    }
                }
                tracing::info!(consumer = %self.handler.name, ?positions, "consumer: reading the topic (the coordination log names this instance)");
                self.reading = Some((link.coordination.clone(), positions.clone()));
                beat_at = None;
            } else if !me && reading {
                reading = false;
                self.reading = None;
                self.handler.lag(0);
                tracing::warn!(consumer = %self.handler.name, reader = ?view.reader, "consumer: another instance reads the topic now");
            }
            if beat_at.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
                beat_at = Some(Instant::now());
                let kind = if reading {
                    Kind::Read
                } else if view.claimable_by(&self.instance) {
                    Kind::Claim
                } else {
                    Kind::Heartbeat
                };
                if let Err(stop) = self.append(&link.coordination, kind, &positions).await {
                    return stop;
                }
            }
            match self.follow(&link, &mut view, next).await {
                Ok(n) => next = n,
                Err(stop) => return stop,
            }
            if !reading || view.reader.as_deref() != Some(self.instance.as_str()) {
                continue;
            }
            let mut lag = 0;
            for (partition, client) in &link.partitions {
                match self
                    .read_partition(&link, (*partition, client), &positions, &mut beat_at)
                    .await
                {
                    Ok(Some((position, end))) => {
                        positions.insert(*partition, position);
                        lag += (end - position).max(0) as u64;
                        // What the farewell's resignation commits.
                        self.reading = Some((link.coordination.clone(), positions.clone()));
                    }
                    Ok(None) => break,
                    Err(stop) => return stop,
                }
            }
            self.handler.lag(lag);
        }
    }
}

/// A reader that drains resigns, committing what it stored: the next takes over at once.
impl Farewell for Target {
    async fn farewell(&mut self) {
        if let Some((log, positions)) = self.reading.take() {
            if self.append(&log, Kind::Resign, &positions).await.is_ok() {
                tracing::info!(consumer = %self.handler.name, ?positions, "consumer: resigned (draining); another instance reads on");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(instance: &str, kind: Kind, offsets: &[(i32, i64)]) -> Beat {
        Beat {
            instance: instance.into(),
            kind,
            offsets: offsets.iter().copied().collect(),
        }
    }

    #[test]
    fn the_first_due_claim_reads_and_a_reader_that_stops_beating_is_replaced() {
        let mut view = View::default();
        view.apply(beat("a", Kind::Heartbeat, &[]));
        view.apply(beat("a", Kind::Claim, &[]));
        view.apply(beat("b", Kind::Claim, &[]));
        assert_eq!(view.reader.as_deref(), Some("a"), "the first claim wins");
        view.apply(beat("a", Kind::Read, &[(0, 10)]));
        assert_eq!(view.offsets, [(0, 10)].into());
        // b waits; a claim before MISSED heartbeats is not due.
        for _ in 0..MISSED - 1 {
            view.apply(beat("b", Kind::Heartbeat, &[]));
        }
        assert!(!view.claimable_by("b"));
        view.apply(beat("b", Kind::Claim, &[]));
        assert_eq!(view.reader.as_deref(), Some("a"));
        view.apply(beat("a", Kind::Read, &[(0, 12)]));
        for _ in 0..MISSED {
            view.apply(beat("b", Kind::Heartbeat, &[]));
        }
        assert!(view.claimable_by("b"));
        view.apply(beat("b", Kind::Claim, &[]));
        assert_eq!(view.reader.as_deref(), Some("b"));
        assert_eq!(
            view.offsets,
            [(0, 12)].into(),
            "b starts from a's last commit"
        );
        // a, late: not a commit.
        view.apply(beat("a", Kind::Read, &[(0, 99)]));
        assert_eq!(view.offsets, [(0, 12)].into());
    }

    #[test]
    fn a_resignation_hands_over_at_once() {
        let mut view = View::default();
        view.apply(beat("a", Kind::Claim, &[]));
        view.apply(beat("a", Kind::Resign, &[(0, 7), (1, 3)]));
        assert!(view.reader.is_none());
        assert!(view.claimable_by("b"));
        view.apply(beat("b", Kind::Claim, &[]));
        assert_eq!(view.reader.as_deref(), Some("b"));
        assert_eq!(view.offsets, [(0, 7), (1, 3)].into());
    }
}
