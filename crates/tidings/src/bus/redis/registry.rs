//! The cluster-wide session registry and the shared record of subscribers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::{timed, Keys};
use crate::bus::{BusError, Registry, SubscriberRecord};
use crate::hub::Hub;
use crate::update::SessionId;

/// The cluster-wide session registry, kept by each instance for the sessions it holds:
/// `<prefix>:session:<session>` is a hash from instance id to stream count (its key's TTL
/// refreshed while the session has streams), and `<prefix>:instance:<id>` says the instance is
/// alive (refreshed every third of `session-ttl`). An instance that dies stops refreshing
/// both: readers ignore it at once when its liveness key expires, and its entries expire.
#[derive(Debug)]
pub(super) struct SessionRegistry {
    pub(super) conns: std::sync::Arc<super::Connections>,
    pub(super) keys: Keys,
    pub(super) hub: Hub,
    pub(super) instance: String,
    pub(super) ttl_secs: u64,
    /// Also keeps `<prefix>:subscriber-records:<instance>` (a hash of this instance's
    /// subscribers, from each one's IRI to its JSON record, refreshed like the rest) and the
    /// set `<prefix>:instances`.
    pub(super) share_subscribers: bool,
    /// How long one command may take.
    pub(super) timeout: Duration,
    /// The subscribers (by IRI) whose records the hash holds, as far as this instance wrote
    /// it: a change writes only the records that came and deletes those that went (one blob
    /// of every subscriber, rewritten at each change, grew with the instance and could take
    /// longer than the timeout — review M3).
    pub(super) written: Mutex<HashSet<String>>,
    /// The hash must be written whole (deleted first): at the first write — a process
    /// restarted with the same instance id finds its predecessor's records there — and after
    /// a write that failed (Redis may have run part of it).
    pub(super) rewrite: std::sync::atomic::AtomicBool,
}

impl SessionRegistry {
    /// Writes this instance's part of the registry as its sessions and subscribers change,
    /// and refreshes it before it expires; runs until aborted.
    pub(super) async fn run(self: Arc<Self>) {
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
        let mut conn = self.conns.commands();
        timed(self.timeout, pipe.query_async::<()>(&mut conn)).await
    }

    fn subscribers_key(&self) -> String {
        format!("{}{}", self.keys.subscribers_prefix, self.instance)
    }

    /// Brings this instance's subscriber records up to date where every instance can read
    /// them: the records of subscribers that came since the last write, the deletion of those
    /// that went, and the hash's lifetime.
    async fn write_subscribers(&self) -> Result<(), BusError> {
        let subscribers = self.hub.subscribers();
        let whole = self.rewrite.load(std::sync::atomic::Ordering::Relaxed);
        if whole {
            crate::locks::lock(&self.written).clear();
        }
        let (came, went) = {
            let written = crate::locks::lock(&self.written);
            let now: HashSet<&str> = subscribers.iter().map(|s| s.label.iri.as_ref()).collect();
            let came: Vec<SubscriberRecord> = subscribers
                .iter()
                .filter(|s| !written.contains(s.label.iri.as_ref()))
                .map(|s| SubscriberRecord::of(s))
                .collect();
            let went: Vec<String> = written
                .iter()
                .filter(|iri| !now.contains(iri.as_str()))
                .cloned()
                .collect();
            (came, went)
        };
        let key = self.subscribers_key();
        let mut pipe = redis::pipe();
        if whole {
            pipe.del(&key).ignore();
        }
        for record in &came {
            let json = serde_json::to_string(record).unwrap_or_default();
            pipe.hset(&key, &record.subscriber, json).ignore();
        }
        for gone in went.chunks(1000) {
            pipe.hdel(&key, gone).ignore();
        }
        pipe.expire(&key, self.ttl_secs as i64)
            .ignore()
            .sadd(&self.keys.instances, &self.instance)
            .ignore();
        let mut conn = self.conns.commands();
        let wrote = timed(self.timeout, pipe.query_async::<()>(&mut conn)).await;
        self.rewrite
            .store(wrote.is_err(), std::sync::atomic::Ordering::Relaxed);
        wrote?;
        let mut written = crate::locks::lock(&self.written);
        for gone in &went {
            written.remove(gone);
        }
        written.extend(came.into_iter().map(|r| r.subscriber));
        Ok(())
    }

    /// Keeps this instance's subscriber records alive; writes them all again when the hash
    /// is gone (a Redis that restarted empty, a failover to a replica without it).
    async fn refresh_subscribers(&self) -> Result<(), BusError> {
        let mut conn = self.conns.commands();
        let kept: bool = timed(
            self.timeout,
            conn.expire(self.subscribers_key(), self.ttl_secs as i64),
        )
        .await?;
        if !kept {
            self.rewrite
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.write_subscribers().await
    }

    /// Says this instance is alive and refreshes the entries of every session it holds, then
    /// its subscriber records: whatever becomes of those, liveness is written first (a failed
    /// write of the records skipped it, and a healthy instance was declared dead, its users
    /// told offline — review M3).
    async fn refresh(&self) -> Result<(), BusError> {
        let alive = self.refresh_liveness().await;
        if self.share_subscribers {
            self.refresh_subscribers().await?;
        }
        alive
    }

    async fn refresh_liveness(&self) -> Result<(), BusError> {
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
        let mut conn = self.conns.commands();
        timed(self.timeout, pipe.query_async::<()>(&mut conn)).await
    }
}

/// Records an instance's streams of a session in the registry and marks the session online,
/// at once: a session is never marked online before some live instance is seen holding it.
/// KEYS: the session's hash, the online set; ARGV: the instance, its streams, the entry's
/// lifetime, the session.
const ONLINE_SCRIPT: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('SADD', KEYS[2], ARGV[4])
";

/// Marks a session offline when no live instance holds a stream of it, checked and marked at
/// once. A sweep marks it only when the previous sweep found it so too (it is then a
/// candidate): a session whose last stream just closed is left to the check of the instance
/// that held it, after its grace, and only a session left behind by a dead instance is swept.
/// The instance that checks after its own last stream closed first removes its own entry: an
/// online mark written late must not keep the session online.
/// KEYS: the session's hash, the online set, the candidates set; ARGV: the prefix of
/// instances' liveness keys, the session, `sweep` or `closed`, the checking instance.
const OFFLINE_SCRIPT: &str = r"
if ARGV[3] == 'closed' then
  redis.call('HDEL', KEYS[1], ARGV[4])
end
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if (tonumber(entries[i + 1]) or 0) > 0 and redis.call('EXISTS', ARGV[1] .. entries[i]) == 1 then
    redis.call('SREM', KEYS[3], ARGV[2])
    return 0
  end
end
if redis.call('SREM', KEYS[3], ARGV[2]) == 0 and ARGV[3] == 'sweep' then
  redis.call('SADD', KEYS[3], ARGV[2])
  return 0
end
return redis.call('SREM', KEYS[2], ARGV[2])
";

/// Sessions looked at per round trip of a sweep.
const SWEEP_BATCH: usize = 500;

impl SessionRegistry {
    fn offline_invocation(&self, pipe: &mut redis::Pipeline, session: &str, sweep: bool) {
        pipe.cmd("EVAL")
            .arg(OFFLINE_SCRIPT)
            .arg(3)
            .arg(format!("{}{session}", self.keys.session_prefix))
            .arg(&self.keys.online)
            .arg(&self.keys.offline_candidates)
            .arg(&self.keys.instance_prefix)
            .arg(session)
            .arg(if sweep { "sweep" } else { "closed" })
            .arg(&self.instance);
    }

    /// One batch of a sweep from `cursor`: the sessions it marked offline go to `gone`; the
    /// next cursor (0: done).
    async fn sweep_batch(
        &self,
        conn: &mut ConnectionManager,
        cursor: u64,
        gone: &mut Vec<SessionId>,
    ) -> Result<u64, BusError> {
        let (next, sessions): (u64, Vec<String>) = timed(
            self.timeout,
            redis::cmd("SSCAN")
                .arg(&self.keys.online)
                .arg(cursor)
                .arg("COUNT")
                .arg(SWEEP_BATCH)
                .query_async(conn),
        )
        .await?;
        if !sessions.is_empty() {
            let mut pipe = redis::pipe();
            for session in &sessions {
                self.offline_invocation(&mut pipe, session, true);
            }
            let removed: Vec<i64> = timed(self.timeout, pipe.query_async(conn)).await?;
            gone.extend(
                sessions
                    .iter()
                    .zip(removed)
                    .filter(|(_, removed)| *removed == 1)
                    .filter_map(|(s, _)| SessionId::new(s, crate::update::MAX_SESSION_ID_LEN).ok()),
            );
        }
        Ok(next)
    }

    /// For each instance id, whether its liveness key still exists.
    async fn alive(&self, instances: &[String]) -> Result<Vec<bool>, BusError> {
        let keys: Vec<String> = instances
            .iter()
            .map(|i| format!("{}{i}", self.keys.instance_prefix))
            .collect();
        let mut conn = self.conns.commands();
        let values: Vec<Option<String>> = timed(self.timeout, conn.mget(&keys)).await?;
        Ok(values.iter().map(Option::is_some).collect())
    }
}

#[async_trait]
impl Registry for SessionRegistry {
    async fn subscribers(&self) -> Result<Option<Vec<SubscriberRecord>>, BusError> {
        if !self.share_subscribers {
            return Ok(None);
        }
        let mut conn = self.conns.commands();
        let instances: Vec<String> =
            timed(self.timeout, conn.smembers(&self.keys.instances)).await?;
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
            let _: Result<(), _> = timed(self.timeout, conn.srem(&self.keys.instances, dead)).await;
        }
        if live.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut pipe = redis::pipe();
        for (instance, _) in &live {
            pipe.hvals(format!("{}{instance}", self.keys.subscribers_prefix));
        }
        let records: Vec<Vec<String>> = timed(self.timeout, pipe.query_async(&mut conn)).await?;
        Ok(Some(
            records
                .iter()
                .flatten()
                .filter_map(|r| parse_record(r))
                .collect(),
        ))
    }

    async fn session_online(&self, session: &SessionId, streams: usize) -> Result<bool, BusError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(ONLINE_SCRIPT)
            .arg(2)
            .arg(format!("{}{}", self.keys.session_prefix, session.as_str()))
            .arg(&self.keys.online)
            .arg(&self.instance)
            .arg(streams)
            .arg(self.ttl_secs)
            .arg(session.as_str());
        let mut conn = self.conns.commands();
        let (added,): (i64,) = timed(self.timeout, pipe.query_async(&mut conn)).await?;
        Ok(added == 1)
    }

    async fn session_offline(&self, session: &SessionId) -> Result<bool, BusError> {
        let mut pipe = redis::pipe();
        self.offline_invocation(&mut pipe, session.as_str(), false);
        let mut conn = self.conns.commands();
        let (removed,): (i64,) = timed(self.timeout, pipe.query_async(&mut conn)).await?;
        Ok(removed == 1)
    }

    // The sweeper of a period is whoever takes the lock, which expires with the period.
    async fn sweep_sessions(&self) -> Result<Vec<SessionId>, BusError> {
        let mut conn = self.conns.commands();
        let locked: Option<String> = timed(
            self.timeout,
            redis::cmd("SET")
                .arg(&self.keys.sweeper)
                .arg(&self.instance)
                .arg("NX")
                .arg("EX")
                .arg(self.ttl_secs)
                .query_async(&mut conn),
        )
        .await?;
        if locked.is_none() {
            return Ok(Vec::new());
        }
        let mut gone = Vec::new();
        let mut cursor = 0u64;
        loop {
            match self.sweep_batch(&mut conn, cursor, &mut gone).await {
                Ok(0) => return Ok(gone),
                Ok(next) => cursor = next,
                // What was marked offline already is told, whatever failed after it.
                Err(e) if !gone.is_empty() => {
                    tracing::warn!(error = %e, "redis: a session sweep stopped half-way");
                    return Ok(gone);
                }
                Err(e) => return Err(e),
            }
        }
    }

    // Two round trips whatever the number of sessions: their hashes, then whether the
    // instances named are alive.
    async fn sessions_presence(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<Vec<(String, usize)>>, BusError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for session in sessions {
            pipe.hgetall(self.session_key(session));
        }
        let mut conn = self.conns.commands();
        let entries: Vec<Vec<(String, usize)>> =
            timed(self.timeout, pipe.query_async(&mut conn)).await?;
        let mut named: Vec<String> = entries
            .iter()
            .flatten()
            .filter(|(_, n)| *n > 0)
            .map(|(i, _)| i.clone())
            .collect();
        named.sort();
        named.dedup();
        if named.is_empty() {
            return Ok(vec![Vec::new(); sessions.len()]);
        }
        // Only instances that are still alive count: a dead one's liveness key has expired.
        let alive: HashSet<String> = named
            .iter()
            .zip(self.alive(&named).await?)
            .filter(|(_, alive)| *alive)
            .map(|(i, _)| i.clone())
            .collect();
        Ok(entries
            .into_iter()
            .map(|entries| {
                let mut present: Vec<(String, usize)> = entries
                    .into_iter()
                    .filter(|(i, n)| *n > 0 && alive.contains(i))
                    .collect();
                present.sort();
                present
            })
            .collect())
    }
}

/// Parses one shared subscriber record (skipping a malformed one).
fn parse_record(record: &str) -> Option<SubscriberRecord> {
    serde_json::from_str(record)
        .inspect_err(
            |e| tracing::warn!(error = %e, "redis: skipping a malformed subscriber record"),
        )
        .ok()
}
