//! The cluster-wide session registry and the shared record of subscribers.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{timed, Keys};
use crate::bus::{BusError, SubscriberRecord};
use crate::hub::Hub;
use crate::update::SessionId;

/// The cluster-wide session registry, kept by each instance for the sessions it holds:
/// `<prefix>:session:<session>` is a hash from instance id to stream count (its key's TTL
/// refreshed while the session has streams), and `<prefix>:instance:<id>` says the instance is
/// alive (refreshed every third of `session-ttl`). An instance that dies stops refreshing
/// both: readers ignore it at once when its liveness key expires, and its entries expire.
pub(super) struct Registry {
    pub(super) conn: ConnectionManager,
    pub(super) keys: Keys,
    pub(super) hub: Hub,
    pub(super) instance: String,
    pub(super) ttl_secs: u64,
    /// Also keeps `<prefix>:subscribers:<instance>` (a JSON array of this instance's
    /// subscribers, refreshed like the rest) and the set `<prefix>:instances`.
    pub(super) share_subscribers: bool,
    /// How long one command may take.
    pub(super) timeout: Duration,
}

impl Registry {
    pub(super) async fn run(self) {
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
        timed(self.timeout, pipe.query_async::<()>(&mut conn)).await
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
        timed(self.timeout, pipe.query_async::<()>(&mut conn)).await
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
        timed(self.timeout, pipe.query_async::<()>(&mut conn)).await
    }
}
