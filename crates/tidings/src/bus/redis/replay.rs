//! Replay on the Redis bus: the reads that resuming streams need, queued and done in batches
//! on a connection of their own.
//!
//! When an instance dies, thousands of its clients resume at once on the others. Read one by
//! one, each resume would cost Redis every update since its position, on the connection the
//! publishes use, with a short timeout: the work would grow as (resuming clients) × (all
//! updates since), the publishes would wait behind it, and the timeouts would turn the herd
//! into refusals. So resumes are requests to one reader task instead:
//!
//! - it takes every request waiting at once as a batch, and answers the whole batch with two
//!   pipelined round trips (the positions of the resume ids and the stream's head, then the
//!   reads), so that a storm makes batches bigger rather than commands more numerous;
//! - a subscriber of exact topics reads only those topics' histories (`<prefix>:h:<topic>`,
//!   written by the publish script at the same positions as the stream), so its resume costs
//!   what it missed; a wide subscriber reads the shared stream, once per batch from the
//!   oldest position any of them needs, a page at a time, and each takes its suffix;
//! - the connection is its own, with a generous timeout: publishes never wait behind replays,
//!   and a slow Redis makes a resume wait rather than fail.
//!
//! A request joins a batch only before the batch's reads are sent, and every request was made
//! after its subscriber was registered: whatever a read misses was published after the read,
//! so the subscriber receives it live.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamRangeReply;
use tokio::sync::{mpsc, oneshot};

use super::{entry_envelope, position, stream_id, Keys};
use crate::bus::wire::Decoder;
use crate::bus::{BusError, BusOptions, Replay, ReplayFrom};
use crate::envelope::{Envelope, Position};
use crate::update::UpdateId;

/// The most requests answered by one batch.
const MAX_BATCH: usize = 4096;
/// Requests waiting for a batch, at most; past this a resume waits to be queued.
const QUEUE: usize = 16_384;
/// Entries one `XRANGE` returns at most.
const PAGE: usize = 1_000;

/// What a replay is for.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) from: ReplayFrom,
    /// The subscriber's exact topics; `None`: every topic (a wide selector).
    pub(super) topics: Option<Vec<Arc<str>>>,
    pub(super) reply: oneshot::Sender<Result<Replay, BusError>>,
}

/// The handle resumes go through.
#[derive(Debug, Clone)]
pub(super) struct Replays {
    requests: mpsc::Sender<Request>,
}

impl Replays {
    /// Starts the reader task on the replay connection of `conns` (a connection of its own).
    pub(super) fn start(
        conns: std::sync::Arc<super::Connections>,
        keys: Keys,
        decoder: Decoder,
        options: &BusOptions,
    ) -> (Replays, tokio::task::JoinHandle<()>) {
        let (requests, queue) = mpsc::channel(QUEUE);
        let reader = ReplayReader {
            conns,
            keys,
            history: options.history_size > 0,
            history_ttl_ms: options.history_ttl().map(|ttl| ttl.as_millis() as u64),
            topic_history_complete_ms: topic_history_complete_secs(options) * 1000,
            decoder,
            timeout: options.timeouts.replay,
        };
        (Replays { requests }, tokio::spawn(reader.run(queue)))
    }

    /// Reads history from `from` on, for `topics` (or every topic).
    pub(super) async fn replay(
        &self,
        from: &ReplayFrom,
        topics: Option<Vec<Arc<str>>>,
    ) -> Result<Replay, BusError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            from: from.clone(),
            topics,
            reply,
        };
        let gone = || super::unavailable("the replay reader stopped");
        self.requests.send(request).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// What one batch looks up before it reads: the newest id, the stream's first and last
/// entries, Redis's time in milliseconds, the stretches known lost, and each resume id's place.
type Looked = (
    Option<String>,
    StreamRangeReply,
    StreamRangeReply,
    u64,
    HashMap<String, String>,
    Vec<Option<String>>,
);

/// The reader task: see the module documentation.
struct ReplayReader {
    conns: std::sync::Arc<super::Connections>,
    keys: Keys,
    history: bool,
    /// `history-ttl` in milliseconds, when history has an age limit: the publish script trims
    /// whole nodes of 100 entries (`MINID ~`), so the stream may still hold updates older
    /// than that — history is what is younger.
    history_ttl_ms: Option<u64>,
    /// How far back topic histories are complete: a resume from a position older than this
    /// reads the stream instead. Past `history-ttl` a topic's history may have been trimmed
    /// at another node boundary than the stream (both trim whole nodes), and an idle topic's
    /// history expires (the publish script's `EXPIRE`) while the stream, if nothing was
    /// published since to trim it, still holds its updates.
    topic_history_complete_ms: u64,
    decoder: Decoder,
    /// Longest wait for one command of a batch (`--bus-replay-timeout`): a busy Redis makes
    /// resumes wait, within this bound, rather than fail.
    timeout: Duration,
}

/// How far back topic histories are complete, in seconds: `history-ttl`, or without an age
/// limit the time the publish script keeps an idle topic's history (`2 × history-id-ttl +
/// 60`, as it computes from `<prefix>:config`).
fn topic_history_complete_secs(options: &BusOptions) -> u64 {
    match options.history_ttl_secs {
        0 => 2 * options.history_id_ttl_secs.max(1) + 60,
        ttl => ttl,
    }
}

/// Where one request's replay starts, once its resume id is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Nothing to read.
    Nothing,
    /// From the beginning of history.
    Beginning,
    /// After this position.
    After(Position),
}

impl ReplayReader {
    async fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(64);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let requests = std::mem::take(&mut batch);
            // A connection that died with its broker (a restart) is noticed only when it is
            // used, and the manager then reconnects at once: these reads change nothing, so
            // one more try serves the resumes that come right after a restart.
            let answered = match self.answer(&requests).await {
                Err(e) if connection_dropped(&e) => {
                    tracing::debug!(error = %e, "redis: replay connection dropped; reading again");
                    self.answer(&requests).await
                }
                answered => answered,
            };
            match answered {
                Ok(replays) => {
                    for (request, replay) in requests.into_iter().zip(replays) {
                        let _ = request.reply.send(Ok(replay));
                    }
                }
                Err(e) => {
                    for request in requests {
                        let _ = request.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// The replays of a batch of requests, in their order.
    async fn answer(&mut self, requests: &[Request]) -> Result<Vec<Replay>, BusError> {
        // Round trip 1: the head, the oldest and newest positions the stream holds, and where
        // each resume id is. Every read stops at that newest position, whatever round trip it
        // ends in: what comes later is delivered live (each subscriber was registered before
        // its request was made), and no key's read may reach further than another's — the
        // live copies up to the last replayed position are skipped.
        let ids: Vec<&str> = requests
            .iter()
            .filter_map(|r| match &r.from {
                ReplayFrom::After(id) if self.history => Some(id.as_str()),
                _ => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut pipe = redis::pipe();
        pipe.get(&self.keys.newest);
        pipe.xrange_count(&self.keys.stream, "-", "+", 1);
        pipe.xrevrange_count(&self.keys.stream, "+", "-", 1);
        pipe.cmd("TIME");
        pipe.hgetall(&self.keys.lost);
        for id in &ids {
            pipe.get(format!("{}{id}", self.keys.id_prefix));
        }
        let (newest, oldest, last, now_ms, lost, places): Looked = {
            let mut values: Vec<redis::Value> =
                timed(self.timeout, pipe.query_async(&mut self.conns.replays())).await?;
            let rest = values.split_off(5.min(values.len()));
            let mut first = values.into_iter();
            let mut next = || first.next().unwrap_or(redis::Value::Nil);
            let newest = redis::from_redis_value(next()).map_err(super::unavailable)?;
            let mut range = || match next() {
                redis::Value::Nil => Ok(StreamRangeReply::default()),
                value => redis::from_redis_value(value).map_err(super::unavailable),
            };
            let (oldest, last) = (range()?, range()?);
            let (secs, micros): (u64, u64) =
                redis::from_redis_value(next()).map_err(super::unavailable)?;
            let now_ms = secs * 1000 + micros / 1000;
            let lost = redis::from_redis_value(next()).map_err(super::unavailable)?;
            let places = rest
                .into_iter()
                .map(redis::from_redis_value)
                .collect::<Result<_, _>>()
                .map_err(super::unavailable)?;
            (newest, oldest, last, now_ms, lost, places)
        };
        // The last position of each stretch known lost: a resume from before it missed some.
        let lost_through: Option<Position> = lost.keys().filter_map(|k| position(k)).max();
        // Nothing in the stream: nothing to read.
        let end = match last.ids.first() {
            Some(entry) => entry.id.clone(),
            None => "0-0".to_owned(),
        };
        let head_id = newest
            .as_deref()
            .and_then(|id| UpdateId::new(id, usize::MAX).ok());
        let oldest = oldest.ids.first().and_then(|e| position(&e.id));
        let places: HashMap<&str, Option<Position>> = ids
            .iter()
            .copied()
            .zip(places.iter().map(|p| p.as_deref().and_then(position)))
            .collect();

        // Where all of history starts: with an age limit, not where trimming happened to stop.
        // A resume whose id expired with its update (ids live as long as history by default)
        // must not get what trimming left of the updates before it — updates it had.
        let beginning = match self.history_ttl_ms {
            Some(ttl) => {
                let since = u128::from(now_ms.saturating_sub(ttl)) << 64;
                Start::After(Position(since.saturating_sub(1)))
            }
            None => Start::Beginning,
        };

        // Where each request starts, and what it is told.
        let mut replays = Vec::with_capacity(requests.len());
        let mut starts = Vec::with_capacity(requests.len());
        for request in requests {
            let mut replay = Replay {
                head_id: head_id.clone(),
                ..Replay::default()
            };
            let start = match &request.from {
                ReplayFrom::Now => Start::Nothing,
                ReplayFrom::Earliest if self.history => beginning,
                ReplayFrom::Earliest => Start::Nothing,
                ReplayFrom::After(id) => {
                    // Held when the stream still reaches back to it: trimming removes the
                    // oldest entries only.
                    let held = places
                        .get(id.as_str())
                        .copied()
                        .flatten()
                        .filter(|p| oldest.is_some_and(|o| *p >= o));
                    match held {
                        Some(p) => {
                            replay.resumed_at = Some(p);
                            // A failover lost updates after this point: replaying what the
                            // stream holds would skip them silently.
                            if lost_through.is_some_and(|l| l > p) {
                                replay.missing = true;
                            }
                            Start::After(p)
                        }
                        // Resuming from the newest id misses nothing, even without history.
                        None if head_id.as_ref() == Some(id) => Start::Nothing,
                        None => {
                            replay.missing = true;
                            match self.history {
                                true => beginning,
                                false => Start::Nothing,
                            }
                        }
                    }
                }
            };
            replays.push(replay);
            starts.push(start);
        }

        // Round trip 2 (and more pages where needed): the reads, each from the oldest start
        // of the requests that need it.
        let mut from_topic: BTreeMap<&str, Start> = BTreeMap::new();
        let mut from_stream: Option<Start> = None;
        // A position's first half is its Redis time in milliseconds. A topic's own history
        // expires when the topic is quiet for a while, the stream does not: reading from the
        // beginning (a rewind, a resume from an unknown id) takes the stream.
        let stale = |start: &Start| match start {
            Start::After(p) => {
                now_ms.saturating_sub((p.0 >> 64) as u64) >= self.topic_history_complete_ms
            }
            Start::Beginning => true,
            Start::Nothing => false,
        };
        let by_topic: Vec<Option<&Vec<Arc<str>>>> = requests
            .iter()
            .zip(&starts)
            .map(|(r, start)| r.topics.as_ref().filter(|_| !stale(start)))
            .collect();
        for (topics, start) in by_topic.iter().zip(&starts) {
            if *start == Start::Nothing {
                continue;
            }
            match topics {
                Some(topics) => {
                    for topic in topics.iter() {
                        let earliest = from_topic.entry(topic).or_insert(*start);
                        *earliest = earlier(*earliest, *start);
                    }
                }
                None => from_stream = Some(from_stream.map_or(*start, |s| earlier(s, *start))),
            }
        }
        let topic_keys: Vec<(String, Start)> = from_topic
            .iter()
            .map(|(topic, start)| (self.keys.topic_history(topic), *start))
            .collect();
        let mut reads: Vec<(String, Start)> = topic_keys;
        if let Some(start) = from_stream {
            reads.push((self.keys.stream.clone(), start));
        }
        let read = self.read_all(&reads, &end).await?;
        let stream_entries = from_stream.map(|_| &read[read.len() - 1]);
        let topic_entries: HashMap<&str, &Vec<Arc<Envelope>>> =
            from_topic.keys().copied().zip(read.iter()).collect();

        for ((topics, start), replay) in by_topic.iter().zip(&starts).zip(&mut replays) {
            let after = match start {
                Start::Nothing => continue,
                Start::Beginning => None,
                Start::After(p) => Some(*p),
            };
            let later = |e: &&Arc<Envelope>| after.is_none_or(|p| e.position > p);
            replay.updates = match topics {
                None => stream_entries
                    .map(|entries| entries.iter().filter(later).cloned().collect())
                    .unwrap_or_default(),
                Some(topics) => {
                    // Merged in position order; an update on several of the topics once.
                    let mut merged: BTreeMap<Position, Arc<Envelope>> = BTreeMap::new();
                    for topic in topics.iter() {
                        if let Some(entries) = topic_entries.get(&**topic) {
                            for e in entries.iter().filter(later) {
                                merged.entry(e.position).or_insert_with(|| e.clone());
                            }
                        }
                    }
                    merged.into_values().collect()
                }
            };
        }
        Ok(replays)
    }

    /// Reads each stream key from its start to `end` (a position), pipelining the first page
    /// of every key, then paging on where a page came back full.
    async fn read_all(
        &mut self,
        reads: &[(String, Start)],
        end: &str,
    ) -> Result<Vec<Vec<Arc<Envelope>>>, BusError> {
        let mut results: Vec<Vec<Arc<Envelope>>> = vec![Vec::new(); reads.len()];
        let mut cursors: Vec<(usize, String)> = reads
            .iter()
            .enumerate()
            .map(|(i, (_, start))| {
                let from = match start {
                    Start::After(p) => format!("({}", stream_id(*p)),
                    _ => "-".to_owned(),
                };
                (i, from)
            })
            .collect();
        while !cursors.is_empty() {
            let mut pipe = redis::pipe();
            for (i, from) in &cursors {
                pipe.xrange_count(&reads[*i].0, from, end, PAGE);
            }
            let pages: Vec<StreamRangeReply> =
                timed(self.timeout, pipe.query_async(&mut self.conns.replays())).await?;
            let mut next = Vec::new();
            for ((i, _), page) in cursors.into_iter().zip(pages) {
                if page.ids.len() == PAGE {
                    if let Some(last) = page.ids.last() {
                        next.push((i, format!("({}", last.id)));
                    }
                }
                results[i].extend(
                    page.ids
                        .iter()
                        .filter_map(|entry| entry_envelope(entry, &self.decoder)),
                );
            }
            cursors = next;
        }
        Ok(results)
    }
}

/// The earlier of two starts (reading from it serves both).
fn earlier(a: Start, b: Start) -> Start {
    match (a, b) {
        (Start::Beginning, _) | (_, Start::Beginning) => Start::Beginning,
        (Start::After(x), Start::After(y)) => Start::After(x.min(y)),
        (Start::Nothing, other) | (other, Start::Nothing) => other,
    }
}

/// True when `e` is Redis's connection having broken under the command (not a timeout, not
/// an answer): the connection manager reconnects, and a read may simply be sent again.
fn connection_dropped(e: &BusError) -> bool {
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<redis::RedisError>())
        .is_some_and(|e| e.is_io_error() || e.is_connection_dropped())
}

async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BusError> {
    crate::bus::broker::with_limit(crate::bus::Kind::Redis, limit, f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_histories_are_trusted_within_the_history_age() {
        let options = |ttl, id_ttl| BusOptions {
            history_size: 10,
            history_ttl_secs: ttl,
            history_id_ttl_secs: id_ttl,
            prefix: "p".into(),
            instance_id: "i".into(),
            session_ttl_secs: 30,
            share_subscribers: false,
            limits: crate::update::Limits::default(),
            routing: crate::bus::Routing::Interest,
            backoff: crate::bus::Backoff::default(),
            timeouts: crate::bus::Timeouts::default(),
            min_replicas: 0,
            max_patterns: 100,
            unsubscribe_after: std::time::Duration::from_secs(30),
        };
        assert_eq!(topic_history_complete_secs(&options(300, 300)), 300);
        assert_eq!(topic_history_complete_secs(&options(0, 86_400)), 172_860);
    }

    #[test]
    fn a_batch_reads_from_the_earliest_start_it_needs() {
        let at = |n| Start::After(Position(n));
        assert_eq!(earlier(at(5), at(3)), at(3));
        assert_eq!(earlier(Start::Nothing, at(3)), at(3));
        assert_eq!(earlier(at(3), Start::Beginning), Start::Beginning);
        assert_eq!(earlier(Start::Nothing, Start::Nothing), Start::Nothing);
    }
}
