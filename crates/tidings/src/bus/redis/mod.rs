//! The Redis bus (`redis://host:port/db`): many instances on one Redis.
//!
//! - **Publish** runs one Lua script ([`PUBLISH_SCRIPT`]), atomically: with history, `XADD`
//!   the wire-format message to the stream `<prefix>:stream` (trimmed to about `history-size`),
//!   index its id under `<prefix>:id:<update id>` (kept `history-id-ttl` seconds); without
//!   history, take the next number of `<prefix>:seq`; then `PUBLISH` it on `<prefix>:all` and
//!   on `<prefix>:t:<topic>` for each of its topics. The history settings are read from
//!   `<prefix>:config`, which every instance writes at start, so a service may run the same
//!   script to publish without HTTP. The stream entry's id is the update's position. The
//!   publisher is answered only after the script ran: a publish Redis did not take is an
//!   error, never a silent drop.
//! - **Delivery** (module `reader`): each instance subscribes to the channels its routing asks for
//!   (module `routing`: everything, or only what its subscribers need) and hands each message to its
//!   hub. Because the script is atomic and one connection receives messages in the order they
//!   were published, every instance sees the same order. After a reconnect the instance
//!   resubscribes from its hub's interest, then reads what it missed from the stream (`XRANGE`)
//!   before going live again; what the stream no longer holds is counted as a gap.
//! - **Replay** reads the stream: resuming works on any instance, whichever one the client was
//!   on before.
//! - **Registry** (module `registry`): sessions and subscribers, cluster-wide.
//! - **Signals** (the control plane) go through the Pub/Sub channel `<prefix>:control`, which
//!   every delivery connection subscribes to beside what its routing asks for.

mod reader;
mod registry;
mod replay;
mod routing;
mod target;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;
use tokio::sync::watch;

use super::reconnect::{ConnectionState, Reconnect};
use super::wire::{self, Decoder};
use super::{Bus, BusError, BusOptions, Cause, Published, Replay, ReplayFrom, Routing};
use crate::envelope::{now_micros, Envelope, Position};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::update::Update;
use reader::Reader;
use registry::SessionRegistry;
use target::Connections;

/// The publish script, shared with services that publish straight onto Redis (it ships with
/// the client crate, whose Redis publisher runs it too).
pub use tidings_client::redis::PUBLISH_SCRIPT;

/// The names of everything the bus keeps in Redis, under one prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    stream: String,
    newest: String,
    id_prefix: String,
    all: String,
    topic_prefix: String,
    topic_history_prefix: String,
    config: String,
    instance_prefix: String,
    session_prefix: String,
    instances: String,
    subscribers_prefix: String,
    /// The set of sessions told online (lifecycle webhooks).
    online: String,
    /// Held by the instance sweeping for sessions whose instance died.
    sweeper: String,
    /// Sessions online that the last sweep found no live instance holding.
    offline_candidates: String,
    /// The control plane's Pub/Sub channel.
    control: String,
    /// Stretches of the stream known lost (a failover to a replica that lacked them): a hash
    /// from the last lost position to the position before the loss.
    lost: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            stream: format!("{prefix}:stream"),
            newest: format!("{prefix}:newest"),
            id_prefix: format!("{prefix}:id:"),
            all: format!("{prefix}:all"),
            topic_prefix: format!("{prefix}:t:"),
            topic_history_prefix: format!("{prefix}:h:"),
            config: format!("{prefix}:config"),
            instance_prefix: format!("{prefix}:instance:"),
            session_prefix: format!("{prefix}:session:"),
            instances: format!("{prefix}:instances"),
            // A hash per instance (one field per subscriber); `subscribers:` held one JSON
            // array, which earlier versions still write: a new name keeps either kind from
            // tripping on the other's type during a rolling upgrade.
            subscribers_prefix: format!("{prefix}:subscriber-records:"),
            online: format!("{prefix}:online"),
            sweeper: format!("{prefix}:sweeper"),
            offline_candidates: format!("{prefix}:offline-candidates"),
            lost: format!("{prefix}:lost"),
            control: format!("{prefix}:control"),
        }
    }

    /// The channel of a topic.
    fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    /// The history of one topic: the stream's entries on that topic, at the same positions.
    fn topic_history(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_history_prefix)
    }
}

/// The Redis bus. Dropping it stops its delivery task.
#[derive(Debug)]
pub struct RedisBus {
    conns: Arc<Connections>,
    keys: Keys,
    script: redis::Script,
    hub: Hub,
    metrics: Arc<Metrics>,
    routing: Routing,
    /// The last version of the hub's interest the delivery connection listens for; `None`
    /// while it is down (the bus is not ready).
    listening: watch::Receiver<Option<u64>>,
    /// The delivery connection's state (connected exactly while `listening` holds a version).
    state: watch::Receiver<ConnectionState>,
    reader: tokio::task::JoinHandle<()>,
    /// Sessions and subscribers, cluster-wide (module `registry`).
    registry: Arc<SessionRegistry>,
    registry_writer: tokio::task::JoinHandle<()>,
    /// Resumes go through it (module `replay`).
    replays: replay::Replays,
    replay_reader: tokio::task::JoinHandle<()>,
    /// Replicas that must hold a publish before it is answered (`redis-min-replicas`).
    min_replicas: usize,
    /// How long one command may take.
    timeout: Duration,
    /// How long a new subscriber may wait for the delivery connection to listen for it (as
    /// long as a batch of replays may take: both grow with a storm of new streams).
    listen_wait: Duration,
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.reader.abort();
        self.registry_writer.abort();
        self.replay_reader.abort();
    }
}

/// Parses a stream id (`<ms>-<seq>`) into a position.
fn position(stream_id: &str) -> Option<Position> {
    let (ms, seq) = stream_id.split_once('-')?;
    Some(Position(
        (u128::from(ms.parse::<u64>().ok()?) << 64) | u128::from(seq.parse::<u64>().ok()?),
    ))
}

/// The stream id of a position (the inverse of [`position`]).
fn stream_id(position: Position) -> String {
    format!("{}-{}", position.0 >> 64, position.0 & u128::from(u64::MAX))
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    super::broker::broker_error(super::Kind::Redis, e)
}

/// A failure the Redis client reported, kept as the error's source.
fn failed(e: redis::RedisError) -> BusError {
    super::broker::client_error(super::Kind::Redis, e)
}

async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BusError> {
    super::broker::with_limit(super::Kind::Redis, limit, f).await
}

/// Why Redis could not be used at start-up: refused credentials or an untrusted certificate
/// are the configuration's to fix; anything else (refused, reset, timed out) may pass.
fn start_error(url: &str, e: redis::RedisError) -> BusError {
    let what = format!("cannot reach Redis at {}: {e}", super::redact(url));
    let refused = matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
    ) || super::broker::is_certificate_error(&e);
    let what = Cause::caused_by(what, e);
    match refused {
        true => BusError::Config(what),
        false => BusError::Unavailable(what),
    }
}

impl RedisBus {
    /// Connects to the Redis at `url` and starts delivering to `hub`.
    ///
    /// # Errors
    /// [`BusError::Config`] for a malformed URL, refused credentials or an untrusted
    /// certificate; [`BusError::Unavailable`] when Redis cannot be reached at start-up.
    pub async fn connect(url: &str, options: &BusOptions, hub: Hub) -> Result<Self, BusError> {
        let timeout = options.timeouts.operation(super::Kind::Redis);
        let keys = Keys::new(&target::key_prefix(url, &options.prefix)?);
        let conns = Arc::new(
            Connections::connect(url, &keys.stream, timeout, options.timeouts.replay).await?,
        );
        let settings = [
            ("history-size", options.history_size as u64),
            ("history-id-ttl", options.history_id_ttl_secs.max(1)),
            ("history-ttl", options.history_ttl_secs),
        ];
        write_settings(&conns.commands(), &keys, &settings, timeout).await?;
        let (listening_tx, mut listening) = watch::channel(None);
        let reconnect = Reconnect::new(
            super::Kind::Redis.broker(),
            options.backoff,
            hub.metrics().bus_reconnects.clone(),
        );
        let state = reconnect.state();
        let decoder = Decoder::new(
            super::Kind::Redis,
            options.limits.clone(),
            hub.metrics().clone(),
        );
        let reader = Reader::new(reader::Setup {
            conns: conns.clone(),
            keys: keys.clone(),
            hub: hub.clone(),
            listening: listening_tx,
            routing: options.routing,
            max_patterns: options.max_patterns,
            unsubscribe_after: options.unsubscribe_after,
            history: options.history_size > 0,
            decoder: decoder.clone(),
            settings,
            timeout,
        });
        let registry = Arc::new(SessionRegistry {
            conns: conns.clone(),
            keys: keys.clone(),
            hub: hub.clone(),
            instance: options.instance_id.clone(),
            ttl_secs: options.session_ttl_secs.max(3),
            share_subscribers: options.share_subscribers,
            timeout,
            written: std::sync::Mutex::default(),
            rewrite: std::sync::atomic::AtomicBool::new(true),
        });
        let reader = tokio::spawn(reader.run(reconnect));
        let registry_writer = tokio::spawn(registry.clone().run());
        let (replays, replay_reader) =
            replay::Replays::start(conns.clone(), keys.clone(), decoder, options);
        // Publishing before this instance listens would lose its own first updates.
        let _ = tokio::time::timeout(timeout, listening.wait_for(Option::is_some)).await;
        Ok(RedisBus {
            conns,
            keys,
            script: redis::Script::new(PUBLISH_SCRIPT),
            metrics: hub.metrics().clone(),
            hub,
            routing: options.routing,
            listening,
            state,
            reader,
            registry,
            registry_writer,
            replays,
            replay_reader,
            min_replicas: options.min_replicas,
            timeout,
            listen_wait: options.timeouts.replay,
        })
    }

    /// Replays wait for a busy Redis, not for one that is down: with the delivery connection
    /// lost, a stream is turned away at once (to come back) rather than after the replay
    /// reader's long timeout.
    fn ready_for_replay(&self) -> Result<(), BusError> {
        match self.state() == ConnectionState::Connected {
            true => Ok(()),
            false => Err(unavailable("not connected")),
        }
    }

    /// Waits until `min-replicas` replicas hold every write this connection made (the publish
    /// just stored among them): Redis replicates asynchronously, and a primary that dies an
    /// instant after answering takes what no replica got with it. Not in time, the publish
    /// was stored on the primary but may not survive its failover: its outcome is unknown to
    /// the publisher, which retries with the same id (stored once).
    async fn replicated(&self, conn: &mut ConnectionManager) -> Result<(), BusError> {
        let wanted = self.min_replicas;
        let millis = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(millis);
        // Redis ends the WAIT itself after `millis`; the margin covers the round trip.
        let limit = self.timeout + Duration::from_secs(1);
        let unknown = |why: String| {
            BusError::OutcomeUnknown(Cause::new(format!(
                "redis: stored on the primary, but {why} (redis-min-replicas {wanted})"
            )))
        };
        match tokio::time::timeout(limit, wait.query_async::<usize>(conn)).await {
            Ok(Ok(acked)) if acked >= wanted => Ok(()),
            Ok(Ok(acked)) => Err(unknown(format!(
                "{acked} replica(s) acknowledged it within {:?}",
                self.timeout
            ))),
            Ok(Err(e)) => Err(unknown(format!("WAIT failed: {e}"))),
            Err(_) => Err(unknown(format!("WAIT had no answer within {limit:?}"))),
        }
    }
}

/// Writes the cluster's history settings where the publish script reads them, so that
/// services publishing straight onto Redis need not know them.
async fn write_settings(
    conn: &ConnectionManager,
    keys: &Keys,
    settings: &[(&'static str, u64)],
    timeout: Duration,
) -> Result<(), BusError> {
    let mut conn = conn.clone();
    timed(
        timeout,
        conn.hset_multiple::<_, _, _, ()>(&keys.config, settings),
    )
    .await
}

/// Whether the stream still holds the entry `stream_id` (it may have been trimmed, or lost
/// with a Redis restart).
async fn holds(
    conn: &ConnectionManager,
    keys: &Keys,
    stream_id: &str,
    timeout: Duration,
) -> Result<bool, BusError> {
    let mut conn = conn.clone();
    let reply: StreamRangeReply = timed(
        timeout,
        conn.xrange_count(&keys.stream, stream_id, stream_id, 1),
    )
    .await?;
    Ok(!reply.ids.is_empty())
}

/// Stream entries read by one `XRANGE`: a long range is read page by page, so that no reply
/// holds more than this, and other commands on the connection are not held up behind it.
const RANGE_PAGE: usize = 1_000;

/// Reads at most `count` stream entries between `start` and `end` (XRANGE syntax) into
/// envelopes, a page at a time, skipping (as the decoder does) any that does not decode.
async fn read_range(
    conn: &ConnectionManager,
    keys: &Keys,
    start: &str,
    end: &str,
    count: usize,
    decoder: &Decoder,
    timeout: Duration,
) -> Result<Vec<Arc<Envelope>>, BusError> {
    let mut conn = conn.clone();
    let mut envelopes = Vec::new();
    let mut start = start.to_owned();
    let mut left = count;
    while left > 0 {
        let page = left.min(RANGE_PAGE);
        let reply: StreamRangeReply =
            timed(timeout, conn.xrange_count(&keys.stream, &start, end, page)).await?;
        let Some(last) = reply.ids.last() else { break };
        start = format!("({}", last.id);
        left -= reply.ids.len();
        let full = reply.ids.len() == page;
        envelopes.extend(
            reply
                .ids
                .iter()
                .filter_map(|entry| entry_envelope(entry, decoder)),
        );
        if !full {
            break;
        }
    }
    Ok(envelopes)
}

/// One stream entry (`u`: the wire-format message, `t`: its publish time in microseconds) as
/// an envelope at the entry's position.
fn entry_envelope(entry: &redis::streams::StreamId, decoder: &Decoder) -> Option<Arc<Envelope>> {
    let Some(position) = position(&entry.id) else {
        decoder.skip(&entry.id, "a stream entry with a bad id");
        return None;
    };
    let Some(text) = entry.get::<Vec<u8>>("u") else {
        decoder.skip(&entry.id, "a stream entry without a message");
        return None;
    };
    let micros: u64 = entry.get("t").unwrap_or(0);
    decoder.envelope(&text, &entry.id, position, micros)
}

#[async_trait]
impl Bus for RedisBus {
    fn kind(&self) -> &'static str {
        super::Kind::Redis.name()
    }

    async fn publish(&self, update: Update) -> Result<Published, BusError> {
        // With the delivery connection down Redis is most likely unreachable: refuse before
        // sending, so that the publisher hears a plain "not taken".
        if self.state() != ConnectionState::Connected {
            return Err(unavailable("not connected"));
        }
        let micros = now_micros();
        let message = wire::encode(&update);
        let mut conn = self.conns.commands();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(&self.keys.prefix)
            .arg(&message)
            .arg(micros)
            .arg(update.id.as_str());
        let timeout = self.timeout;
        let reply = tokio::time::timeout(timeout, invocation.invoke_async(&mut conn)).await;
        let (stream_id, receivers): (String, u64) = match reply {
            Ok(Ok(reply)) => reply,
            // The connection broke after the script was sent: it may have run.
            Ok(Err(e)) if e.is_io_error() && !e.is_connection_refusal() => {
                return Err(BusError::OutcomeUnknown(Cause::caused_by(
                    format!("redis: {e}"),
                    e,
                )))
            }
            // The id names an update on other topics (the script's check).
            Ok(Err(e)) if e.to_string().contains("tidings: id conflict") => {
                return Err(BusError::Conflict(Cause::new(format!(
                    "redis: the id {} names an update on other topics",
                    update.id
                ))))
            }
            // Refused before anything was sent, or an error reply (the script is atomic and
            // checks before it writes): not stored.
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => {
                return Err(BusError::OutcomeUnknown(Cause::new(format!(
                    "redis: no answer within {timeout:?}"
                ))))
            }
        };
        let position = position(&stream_id)
            .ok_or_else(|| unavailable(format!("unexpected position {stream_id:?}")))?;
        if self.min_replicas > 0 {
            self.replicated(&mut conn).await?;
        }
        self.metrics.bus_broker_messages.inc_by(receivers);
        // The script's Pub/Sub message is "<position> <micros> <message>".
        let size = stream_id.len() + 1 + micros.to_string().len() + 1 + message.len();
        self.metrics
            .bus_broker_bytes
            .inc_by(receivers * size as u64);
        Ok(Published {
            id: update.id,
            position: Some(position),
        })
    }

    async fn listening(&self) -> Result<(), BusError> {
        let not_listening = || {
            unavailable(
                "the delivery connection is down; this instance cannot listen for new subscribers",
            )
        };
        if self.state() != ConnectionState::Connected {
            return Err(not_listening());
        }
        if self.routing == Routing::Broadcast {
            return Ok(());
        }
        // The reader subscribes to the channels of every interest change; wait until it has
        // caught up with this subscriber's (a storm of new streams makes this slower, not
        // wrong: wait rather than refuse).
        let wanted = self.hub.interest_version();
        let mut listening = self.listening.clone();
        let caught_up = tokio::time::timeout(
            self.listen_wait,
            listening.wait_for(|v| v.is_some_and(|v| v >= wanted)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if caught_up {
            Ok(())
        } else {
            Err(not_listening())
        }
    }

    async fn replay(
        &self,
        from: &ReplayFrom,
        topics: Option<&[Arc<str>]>,
    ) -> Result<Replay, BusError> {
        self.ready_for_replay()?;
        self.replays.replay(from, topics.map(<[_]>::to_vec)).await
    }

    fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    fn registry(&self) -> Option<Arc<dyn super::Registry>> {
        Some(self.registry.clone())
    }

    async fn signal(&self, signal: bytes::Bytes) -> Result<(), BusError> {
        let mut conn = self.conns.commands();
        let publish = conn.publish::<_, _, ()>(&self.keys.control, signal.as_ref());
        timed(self.timeout, publish).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_stream_ids() {
        let a = position("1700000000000-0").unwrap();
        let b = position("1700000000000-1").unwrap();
        let c = position("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(stream_id(b), "1700000000000-1");
        assert!(position("0-7").unwrap() < position("0-8").unwrap());
        assert!(position("x-1").is_none() && position("17").is_none());
    }
}
