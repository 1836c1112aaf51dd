//! The Redis bus (`redis://host:port/db`): many instances on one Redis.
//!
//! - **Publish** runs one Lua script ([`PUBLISH_SCRIPT`]), atomically: with history, `XADD`
//!   the wire-format message to the stream `<prefix>:stream` (trimmed to about `history-size`),
//!   index its id under `<prefix>:id:<update id>` (kept `history-id-ttl` seconds); without
//!   history, take the next number of `<prefix>:seq`; then `PUBLISH` it on `<prefix>:all`. The
//!   history settings are read from `<prefix>:config`, which every instance writes at start, so
//!   a service may run the same script to publish without HTTP. The stream entry's id is the
//!   update's position. The publisher is answered only after the script ran: a publish Redis
//!   did not take is an error, never a silent drop.
//! - **Delivery** (broadcast routing): every instance subscribes to `<prefix>:all` and hands
//!   each message to its hub. Because the script is atomic, every instance sees the same
//!   order. After a reconnect the instance resubscribes, then reads what it missed from the
//!   stream (`XRANGE` after the last position it delivered) before going live again; what the
//!   stream no longer holds is counted as a gap.
//! - **Replay** reads the stream: resuming works on any instance, whichever one the client was
//!   on before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;

use super::{wire, Bus, BusError, BusOptions, Replay, ReplayFrom, SubscriberRecord};
use crate::config::Limits;
use crate::envelope::{now_micros, Envelope, Position};
use crate::hub::Hub;
use crate::update::{SessionId, Update, UpdateId};

/// Longest wait for one Redis command before the operation counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Most stream entries read when catching up after a reconnect.
const CATCH_UP_MAX: usize = 1_000_000;
/// Longest wait between two reconnection attempts of the delivery connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The publish script, shared with services that publish straight onto Redis.
pub const PUBLISH_SCRIPT: &str = include_str!("redis_publish.lua");

/// The names of everything the bus keeps in Redis, under one prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    stream: String,
    newest: String,
    id_prefix: String,
    all: String,
    config: String,
    instance_prefix: String,
    session_prefix: String,
    instances: String,
    subscribers_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            stream: format!("{prefix}:stream"),
            newest: format!("{prefix}:newest"),
            id_prefix: format!("{prefix}:id:"),
            all: format!("{prefix}:all"),
            config: format!("{prefix}:config"),
            instance_prefix: format!("{prefix}:instance:"),
            session_prefix: format!("{prefix}:session:"),
            instances: format!("{prefix}:instances"),
            subscribers_prefix: format!("{prefix}:subscribers:"),
        }
    }
}

/// The Redis bus. Dropping it stops its delivery task.
#[derive(Debug)]
pub struct RedisBus {
    conn: ConnectionManager,
    keys: Keys,
    history_size: usize,
    limits: Limits,
    script: redis::Script,
    /// True while the delivery connection is subscribed.
    ready: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
    registry: tokio::task::JoinHandle<()>,
    /// Subscribers are shared (`--subscriptions`).
    share_subscribers: bool,
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.reader.abort();
        self.registry.abort();
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

/// The id of an update whose message carried none: the same on every instance.
fn derived_id(stream_id: &str) -> String {
    format!("urn:tidings:{stream_id}")
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("redis: {e}"))
}

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(unavailable(format!("no answer within {COMMAND_TIMEOUT:?}"))),
    }
}

impl RedisBus {
    /// Connects to the Redis at `url` and starts delivering to `hub`.
    ///
    /// # Errors
    /// [`BusError::Config`] for a malformed URL; [`BusError::Unavailable`] when Redis cannot be
    /// reached at start-up.
    pub async fn connect(url: &str, options: &BusOptions, hub: Hub) -> Result<Self, BusError> {
        let client = redis::Client::open(url).map_err(|e| {
            BusError::Config(format!(
                "{:?} is not a usable Redis URL: {e}",
                super::redact(url)
            ))
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = timed(client.get_connection_manager_with_config(config))
            .await
            .map_err(|e| {
                BusError::Unavailable(format!("cannot reach Redis at {}: {e}", super::redact(url)))
            })?;
        let keys = Keys::new(&options.redis_prefix);
        let settings = [
            ("history-size", options.history_size as u64),
            ("history-id-ttl", options.history_id_ttl_secs.max(1)),
        ];
        write_settings(&conn, &keys, &settings).await?;
        let ready = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            client,
            conn: conn.clone(),
            keys: keys.clone(),
            hub,
            ready: ready.clone(),
            history: options.history_size > 0,
            limits: options.limits.clone(),
            settings,
            last: None,
        };
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let registry = Registry {
            conn: conn.clone(),
            keys: keys.clone(),
            hub: reader.hub.clone(),
            instance: options.instance_id.clone(),
            ttl_secs: options.session_ttl_secs.max(3),
            share_subscribers: options.share_subscribers,
        };
        let reader = tokio::spawn(reader.run(subscribed_tx));
        let registry = tokio::spawn(registry.run());
        // Publishing before this instance listens would lose its own first updates.
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, subscribed_rx).await;
        Ok(RedisBus {
            conn,
            keys,
            history_size: options.history_size,
            limits: options.limits.clone(),
            script: redis::Script::new(PUBLISH_SCRIPT),
            ready,
            reader,
            registry,
            share_subscribers: options.share_subscribers,
        })
    }

    /// For each instance id, whether its liveness key still exists.
    async fn alive(&self, instances: &[String]) -> Result<Vec<bool>, BusError> {
        let keys: Vec<String> = instances
            .iter()
            .map(|i| format!("{}{i}", self.keys.instance_prefix))
            .collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = timed(conn.mget(&keys)).await?;
        Ok(values.iter().map(Option::is_some).collect())
    }

    fn id_key(&self, id: &str) -> String {
        format!("{}{id}", self.keys.id_prefix)
    }

    /// Reads stream entries between `start` and `end` (XRANGE syntax) into envelopes.
    async fn range(&self, start: &str, end: &str) -> Result<Vec<Arc<Envelope>>, BusError> {
        read_range(
            &self.conn,
            &self.keys,
            start,
            end,
            self.history_size * 2 + 100,
            &self.limits,
        )
        .await
    }
}

/// Writes the cluster's history settings where the publish script reads them, so that
/// services publishing straight onto Redis need not know them.
async fn write_settings(
    conn: &ConnectionManager,
    keys: &Keys,
    settings: &[(&'static str, u64)],
) -> Result<(), BusError> {
    let mut conn = conn.clone();
    timed(conn.hset_multiple::<_, _, _, ()>(&keys.config, settings)).await
}

/// Whether the stream still holds the entry `stream_id` (it may have been trimmed, or lost
/// with a Redis restart).
async fn holds(conn: &ConnectionManager, keys: &Keys, stream_id: &str) -> Result<bool, BusError> {
    let mut conn = conn.clone();
    let reply: StreamRangeReply =
        timed(conn.xrange_count(&keys.stream, stream_id, stream_id, 1)).await?;
    Ok(!reply.ids.is_empty())
}

/// Reads stream entries into envelopes, skipping (and logging) any that does not decode.
async fn read_range(
    conn: &ConnectionManager,
    keys: &Keys,
    start: &str,
    end: &str,
    count: usize,
    limits: &Limits,
) -> Result<Vec<Arc<Envelope>>, BusError> {
    let mut conn = conn.clone();
    let reply: StreamRangeReply = timed(conn.xrange_count(&keys.stream, start, end, count)).await?;
    Ok(reply
        .ids
        .iter()
        .filter_map(|entry| {
            let position = position(&entry.id)?;
            let text: String = entry.get("u")?;
            let micros: u64 = entry.get("t").unwrap_or(0);
            match wire::decode(&text, || derived_id(&entry.id), limits) {
                Ok(update) => Some(Arc::new(Envelope::new(update, position, micros))),
                Err(e) => {
                    tracing::warn!(stream_id = %entry.id, error = %e, "skipping a malformed stream entry");
                    None
                }
            }
        })
        .collect())
}

#[async_trait]
impl Bus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, update: Update) -> Result<Arc<Envelope>, BusError> {
        let micros = now_micros();
        let message = wire::encode(&update);
        let mut conn = self.conn.clone();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(&self.keys.prefix)
            .arg(&message)
            .arg(micros)
            .arg(update.id.as_str());
        let stream_id: String = timed(invocation.invoke_async(&mut conn)).await?;
        let position = position(&stream_id)
            .ok_or_else(|| unavailable(format!("unexpected position {stream_id:?}")))?;
        Ok(Arc::new(Envelope::new(update, position, micros)))
    }

    async fn replay(&self, from: &ReplayFrom) -> Result<Replay, BusError> {
        let mut conn = self.conn.clone();
        let newest: Option<String> = timed(conn.get(&self.keys.newest)).await?;
        let mut replay = Replay {
            head_id: newest
                .as_deref()
                .and_then(|id| UpdateId::new(id, usize::MAX).ok()),
            ..Replay::default()
        };
        let history = self.history_size > 0;
        match from {
            ReplayFrom::Now => {}
            ReplayFrom::Earliest if history => replay.updates = self.range("-", "+").await?,
            ReplayFrom::Earliest => {}
            ReplayFrom::After(id) => {
                let indexed: Option<String> = if history {
                    timed(conn.get(self.id_key(id.as_str()))).await?
                } else {
                    None
                };
                let still_held = match &indexed {
                    Some(sid) => holds(&self.conn, &self.keys, sid).await?,
                    None => false,
                };
                if let (Some(sid), true) = (&indexed, still_held) {
                    replay.updates = self.range(&format!("({sid}"), "+").await?;
                } else if replay.head_id.as_ref() == Some(id) {
                    // Resuming from the newest id misses nothing, even without history.
                } else {
                    replay.missing = true;
                    if history {
                        replay.updates = self.range("-", "+").await?;
                    }
                }
            }
        }
        Ok(replay)
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn subscribers(&self) -> Result<Option<Vec<SubscriberRecord>>, BusError> {
        if !self.share_subscribers {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let instances: Vec<String> = timed(conn.smembers(&self.keys.instances)).await?;
        if instances.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let alive = self.alive(&instances).await?;
        let (live, dead): (Vec<_>, Vec<_>) = instances
            .into_iter()
            .zip(alive)
            .partition(|(_, alive)| *alive);
        if !dead.is_empty() {
            let dead: Vec<String> = dead.into_iter().map(|(i, _)| i).collect();
            let _: Result<(), _> = timed(conn.srem(&self.keys.instances, dead)).await;
        }
        if live.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let blobs_keys: Vec<String> = live
            .iter()
            .map(|(i, _)| format!("{}{i}", self.keys.subscribers_prefix))
            .collect();
        let blobs: Vec<Option<String>> = timed(conn.mget(&blobs_keys)).await?;
        Ok(Some(
            blobs
                .iter()
                .flatten()
                .flat_map(|b| parse_records(b))
                .collect(),
        ))
    }

    async fn session_presence(
        &self,
        session: &SessionId,
    ) -> Result<Option<Vec<(String, usize)>>, BusError> {
        let mut conn = self.conn.clone();
        let key = format!("{}{}", self.keys.session_prefix, session.as_str());
        let entries: Vec<(String, usize)> = timed(conn.hgetall(&key)).await?;
        let entries: Vec<(String, usize)> = entries.into_iter().filter(|(_, n)| *n > 0).collect();
        if entries.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // Only instances that are still alive count: a dead one's liveness key has expired.
        let ids: Vec<String> = entries.iter().map(|(i, _)| i.clone()).collect();
        let alive = self.alive(&ids).await?;
        let mut present: Vec<(String, usize)> = entries
            .into_iter()
            .zip(alive)
            .filter_map(|(entry, alive)| alive.then_some(entry))
            .collect();
        present.sort();
        Ok(Some(present))
    }
}

/// Parses the shared subscriber records of one instance (skipping a malformed blob).
fn parse_records(blob: &str) -> Vec<SubscriberRecord> {
    serde_json::from_str(blob).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "redis: skipping a malformed subscriber record");
        Vec::new()
    })
}

/// The cluster-wide session registry, kept by each instance for the sessions it holds:
/// `<prefix>:session:<session>` is a hash from instance id to stream count (its key's TTL
/// refreshed while the session has streams), and `<prefix>:instance:<id>` says the instance is
/// alive (refreshed every third of `session-ttl`). An instance that dies stops refreshing
/// both: readers ignore it at once when its liveness key expires, and its entries expire.
struct Registry {
    conn: ConnectionManager,
    keys: Keys,
    hub: Hub,
    instance: String,
    ttl_secs: u64,
    /// Also keeps `<prefix>:subscribers:<instance>` (a JSON array of this instance's
    /// subscribers, refreshed like the rest) and the set `<prefix>:instances`.
    share_subscribers: bool,
}

impl Registry {
    async fn run(self) {
        let mut heartbeat = tokio::time::interval(Duration::from_secs(self.ttl_secs / 3));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                changes = self.hub.session_changes() => self.write(changes).await,
                _ = heartbeat.tick() => self.refresh().await,
                _ = self.hub.subscribers_changed(), if self.share_subscribers => {
                    // Coalesce a burst of arrivals and departures into one write.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    self.write_subscribers().await
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "redis: cannot update the session registry");
            }
        }
    }

    fn session_key(&self, session: &SessionId) -> String {
        format!("{}{}", self.keys.session_prefix, session.as_str())
    }

    /// Records the current stream counts of sessions that changed.
    async fn write(&self, changes: Vec<(SessionId, usize)>) -> Result<(), BusError> {
        let mut pipe = redis::pipe();
        for (session, streams) in &changes {
            let key = self.session_key(session);
            if *streams == 0 {
                pipe.hdel(&key, &self.instance).ignore();
            } else {
                pipe.hset(&key, &self.instance, *streams)
                    .ignore()
                    .expire(&key, self.ttl_secs as i64)
                    .ignore();
            }
        }
        let mut conn = self.conn.clone();
        timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Writes this instance's subscribers where every instance can read them.
    async fn write_subscribers(&self) -> Result<(), BusError> {
        let records: Vec<SubscriberRecord> = self
            .hub
            .subscribers()
            .iter()
            .map(|spec| SubscriberRecord::of(spec))
            .collect();
        let blob = serde_json::to_string(&records).unwrap_or_else(|_| "[]".to_owned());
        let mut pipe = redis::pipe();
        pipe.set_ex(
            format!("{}{}", self.keys.subscribers_prefix, self.instance),
            blob,
            self.ttl_secs,
        )
        .ignore()
        .sadd(&self.keys.instances, &self.instance)
        .ignore();
        let mut conn = self.conn.clone();
        timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Says this instance is alive and refreshes the entries of every session it holds.
    async fn refresh(&self) -> Result<(), BusError> {
        if self.share_subscribers {
            self.write_subscribers().await?;
        }
        let mut pipe = redis::pipe();
        pipe.set_ex(
            format!("{}{}", self.keys.instance_prefix, self.instance),
            1,
            self.ttl_secs,
        )
        .ignore();
        for (session, streams) in self.hub.sessions() {
            let key = self.session_key(&session);
            pipe.hset(&key, &self.instance, streams)
                .ignore()
                .expire(&key, self.ttl_secs as i64)
                .ignore();
        }
        let mut conn = self.conn.clone();
        timed(pipe.query_async::<()>(&mut conn)).await
    }
}

/// The delivery task: one Pub/Sub connection, reconnected with backoff, with catch-up from the
/// stream after each reconnect.
struct Reader {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    hub: Hub,
    ready: Arc<AtomicBool>,
    history: bool,
    limits: Limits,
    /// The history settings written to `<prefix>:config` (again after each reconnect: a
    /// restarted Redis may have lost them).
    settings: [(&'static str, u64); 2],
    /// The position of the last update handed to the hub.
    last: Option<Position>,
}

impl Reader {
    async fn run(mut self, subscribed: tokio::sync::oneshot::Sender<()>) {
        let mut subscribed = Some(subscribed);
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            match self.subscribe().await {
                Ok(mut pubsub) => {
                    self.ready.store(true, Ordering::Relaxed);
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                    if connected_before {
                        tracing::info!("redis: delivery connection restored");
                        if let Err(e) = write_settings(&self.conn, &self.keys, &self.settings).await
                        {
                            tracing::warn!(error = %e, "redis: cannot write the history settings");
                        }
                        self.catch_up().await;
                    }
                    connected_before = true;
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        self.deliver_message(&message);
                    }
                    tracing::warn!("redis: delivery connection lost; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, ?backoff, "redis: cannot subscribe; retrying"),
            }
            self.ready.store(false, Ordering::Relaxed);
            self.hub.metrics().bus_reconnects.inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.keys.all).await?;
            Ok(pubsub)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, connect).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "subscribe timed out",
            ))),
        }
    }

    /// After a reconnect: delivers from the stream what was published while disconnected.
    async fn catch_up(&mut self) {
        let Some(last) = self.last else { return };
        if !self.history {
            self.hub.metrics().bus_gaps.inc();
            tracing::warn!("redis: updates published while disconnected are lost (history is off)");
            // A restarted Redis counts positions from 1 again: forget the old ones, or every
            // new update would look like one already delivered.
            self.last = None;
            return;
        }
        let last_id = stream_id(last);
        let still_held = holds(&self.conn, &self.keys, &last_id).await;
        let missed = read_range(
            &self.conn,
            &self.keys,
            &format!("({last_id}"),
            "+",
            CATCH_UP_MAX,
            &self.limits,
        )
        .await;
        match (still_held, missed) {
            (Ok(held), Ok(missed)) => {
                if !held {
                    self.hub.metrics().bus_gaps.inc();
                    tracing::warn!(last = %last_id, "redis: the stream no longer holds the last delivered update; updates in between are lost");
                    // The stream may have been lost with a Redis restart: its new positions are
                    // not comparable with the old ones.
                    self.last = None;
                }
                tracing::info!(
                    count = missed.len(),
                    "redis: delivering updates missed while disconnected"
                );
                for envelope in missed {
                    self.deliver(envelope);
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                self.hub.metrics().bus_gaps.inc();
                tracing::warn!(error = %e, "redis: cannot read what was missed while disconnected");
            }
        }
    }

    fn deliver_message(&mut self, message: &redis::Msg) {
        let Ok(payload) = message.get_payload::<String>() else {
            tracing::warn!("redis: a message that is not text; skipped");
            return;
        };
        let mut parts = payload.splitn(3, ' ');
        let (Some(sid), Some(micros), Some(text)) = (parts.next(), parts.next(), parts.next())
        else {
            tracing::warn!("redis: a message without position; skipped");
            return;
        };
        let Some(position) = position(sid) else {
            tracing::warn!(
                position = sid,
                "redis: a message with a bad position; skipped"
            );
            return;
        };
        match wire::decode(text, || derived_id(sid), &self.limits) {
            Ok(update) => {
                // A direct publisher may not know its clock: 0 means "now".
                let micros = micros
                    .parse()
                    .ok()
                    .filter(|m| *m > 0)
                    .unwrap_or_else(now_micros);
                self.deliver(Arc::new(Envelope::new(update, position, micros)));
            }
            Err(e) => {
                tracing::warn!(position = sid, error = %e, "redis: a malformed message; skipped")
            }
        }
    }

    fn deliver(&mut self, envelope: Arc<Envelope>) {
        if self.last.is_some_and(|last| envelope.position <= last) {
            return;
        }
        self.last = Some(envelope.position);
        self.hub.dispatch(&envelope);
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
