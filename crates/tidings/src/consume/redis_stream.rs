//! Consuming a Redis stream the services `XADD` to: a consumer group of the instances, read by
//! one of them at a time — the holder of a lease key, renewed while it reads — so that the
//! stream's order is the updates' order. An entry is acknowledged (`XACK`) once the bus stored
//! its update; the instance that takes the lease over first claims what its predecessor left
//! pending (`XAUTOCLAIM`), so an entry read by an instance that died is not lost (one that
//! drains gives the lease up, and the next takes over at once); its update
//! id, `urn:tidings:<consumer>:<entry id>`, makes a second store of it the idempotent retry of
//! the first.
//!
//! The body the mapping reads is the entry's `field` when one is named (its value as it is),
//! else the entry's fields as one JSON object of strings (`XADD s * sessionId a payload {…}`
//! reads as `{"sessionId": "a", "payload": "{…}"}`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};

use super::mapping::Message;
use super::run::{Farewell, Handled, Handler};
use super::spec::RedisStreamSource;
use crate::bus::reconnect::{self, Stop};
use crate::bus::{with_limit, BusError, Cause, Kind};
use crate::update::UpdateId;

/// Entries read, or claimed, at once.
const BATCH: usize = 64;
/// How long a read waits for new entries before the lease is renewed.
const BLOCK: Duration = Duration::from_millis(1000);
/// How long the lease lasts without renewal: the longest an instance that died keeps the
/// stream unread.
const LEASE: Duration = Duration::from_secs(5);

/// How often the holder reads the group's lag.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Renews the lease only for its holder.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// The connection a consumer's reconnect machine drives.
pub(super) struct Target {
    source: RedisStreamSource,
    handler: Arc<Handler>,
    /// This instance's name in the group, and the lease's value.
    consumer: String,
    timeout: Duration,
    /// The connection last made, for the farewell.
    conn: Option<MultiplexedConnection>,
}

impl Target {
    pub(super) fn new(
        source: RedisStreamSource,
        handler: Arc<Handler>,
        consumer: String,
        timeout: Duration,
    ) -> Self {
        Target {
            source,
            handler,
            consumer,
            timeout,
            conn: None,
        }
    }

    fn lease_key(&self) -> String {
        format!("{}:tidings-lease:{}", self.source.stream, self.source.group)
    }

    fn lost(&self, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Stop {
        self.handler.lost(what, e)
    }

    /// Takes the lease if it is free (or ours), or renews it; whether this instance holds it.
    async fn lease(
        &self,
        conn: &mut MultiplexedConnection,
        held: bool,
    ) -> redis::RedisResult<bool> {
        let millis = LEASE.as_millis() as u64;
        if held {
            let renewed: i64 = redis::Script::new(RENEW)
                .key(self.lease_key())
                .arg(&self.consumer)
                .arg(millis)
                .invoke_async(conn)
                .await?;
            if renewed == 1 {
                return Ok(true);
            }
        }
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.lease_key())
            .arg(&self.consumer)
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .query_async(conn)
            .await?;
        Ok(taken.is_some())
    }

    /// Hands one entry to the mapping and the bus, and acknowledges it once it is settled.
    async fn handle(
        &self,
        conn: &mut MultiplexedConnection,
        entry: StreamId,
    ) -> Result<bool, Stop> {
        let _busy = self.handler.busy.lock().await;
        if self.handler.stop.is_cancelled() {
            return Ok(false);
        }
        let body = match &self.source.field {
            Some(field) => match entry.map.get(field) {
                Some(Value::BulkString(bytes)) => bytes.clone(),
                Some(Value::SimpleString(s)) => s.clone().into_bytes(),
                _ => Vec::new(),
            },
            None => fields_as_json(&entry.map),
        };
        let message = Message {
            body: &body,
            name: &self.source.stream,
            captures: Vec::new(),
            key: None,
        };
        let place = format!("entry {} of {:?}", entry.id, self.source.stream);
        let consumer = self.handler.name.clone();
        let entry_id = entry.id.clone();
        let id = move || UpdateId::derived(format!("{consumer}:{entry_id}"));
        match self.handler.handle(&message, &place, id).await {
            Handled::Published | Handled::Skipped => {
                let acked: redis::RedisResult<i64> = conn
                    .xack(&self.source.stream, &self.source.group, &[&entry.id])
                    .await;
                acked.map_err(|e| self.lost("XACK failed", e))?;
                Ok(true)
            }
            Handled::Stopped => Ok(false),
        }
    }
}

impl Target {
    /// Reads how many entries wait for the group (not yet read, and read but not
    /// acknowledged), for `tidings_consumer_lag`. Redis before 7.0 does not say: 0.
    async fn report_lag(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.source.stream)
            .query_async(conn)
            .await?;
        let count = |group: &HashMap<String, Value>, field: &str| match group.get(field) {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        let ours = groups.iter().find(|g| {
            matches!(g.get("name"), Some(Value::BulkString(name)) if *name == self.source.group.as_bytes())
        });
        if let Some(group) = ours {
            self.handler
                .lag(count(group, "lag") + count(group, "pending"));
        }
        Ok(())
    }
}

/// The entry's fields as one JSON object of strings (a value that is not UTF-8 is replaced
/// character by character, and the mapping sees the replacement).
fn fields_as_json(map: &HashMap<String, Value>) -> Vec<u8> {
    let object: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Value::SimpleString(s) => s.clone(),
                Value::Int(n) => n.to_string(),
                other => format!("{other:?}"),
            };
            (k.clone(), serde_json::Value::String(text))
        })
        .collect();
    serde_json::to_vec(&object).unwrap_or_default()
}

impl reconnect::Target for Target {
    type Connection = MultiplexedConnection;

    async fn connect(&mut self) -> Result<MultiplexedConnection, BusError> {
        let failed = |what: &'static str| {
            let name = self.handler.name.clone();
            move |e: BusError| e.context(format_args!("consumer {name}: {what}"))
        };
        let mut conn = with_limit(
            Kind::Redis,
            self.timeout,
            self.source.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(failed("cannot connect"))?;
        // The group starts at the stream's end the first time (what is published from now
        // on), and keeps its place from then on.
        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(&self.source.stream, &self.source.group, "$")
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => {
                return Err(failed("cannot create the consumer group")(
                    BusError::Unavailable(Cause::caused_by(format!("redis: {e}"), e)),
                ))
            }
        }
        tracing::info!(consumer = %self.handler.name, stream = %self.source.stream, group = %self.source.group, "consumer: connected");
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn deliver(&mut self, mut conn: MultiplexedConnection) -> Stop {
        let mut held = false;
        let mut renewed;
        let mut lag_read: Option<Instant> = None;
        loop {
            if self.handler.stop.is_cancelled() {
                return std::future::pending().await;
            }
            let now_held = match self.lease(&mut conn, held).await {
                Ok(h) => h,
                Err(e) => return self.lost("cannot take or renew the lease", e),
            };
            if !now_held {
                if held {
                    self.handler.lag(0);
                    tracing::warn!(consumer = %self.handler.name, "consumer: lost the lease; another instance reads the stream");
                }
                held = false;
                tokio::select! {
                    () = self.handler.stop.cancelled() => {}
                    () = tokio::time::sleep(LEASE / 5) => {}
                }
                continue;
            }
            renewed = Instant::now();
            if !held {
                held = true;
                tracing::info!(consumer = %self.handler.name, "consumer: reading the stream (this instance holds the lease)");
                // What the previous reader left pending first, in the stream's order.
                let mut start = "0-0".to_owned();
                loop {
                    let claimed: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
                        .arg(&self.source.stream)
                        .arg(&self.source.group)
                        .arg(&self.consumer)
                        .arg(0)
                        .arg(&start)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut conn)
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => return self.lost("XAUTOCLAIM failed", e),
                    };
                    for entry in claimed.claimed {
                        match self.handle(&mut conn, entry).await {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(stop) => return stop,
                        }
                    }
                    if claimed.next_stream_id == "0-0" {
                        break;
                    }
                    start = claimed.next_stream_id;
                }
            }
            if lag_read.is_none_or(|read| read.elapsed() >= LAG_EVERY) {
                lag_read = Some(Instant::now());
                if let Err(e) = self.report_lag(&mut conn).await {
                    return self.lost("XINFO GROUPS failed", e);
                }
            }
            let options = StreamReadOptions::default()
                .group(&self.source.group, &self.consumer)
                .count(BATCH)
                .block(BLOCK.as_millis() as usize);
            let read: redis::RedisResult<Option<StreamReadReply>> = conn
                .xread_options(&[&self.source.stream], &[">"], &options)
                .await;
            let read = match read {
                Ok(read) => read,
                Err(e) => return self.lost("XREADGROUP failed", e),
            };
            for key in read.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    match self.handle(&mut conn, entry).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(stop) => return stop,
                    }
                    // A long batch renews the lease as it goes.
                    if renewed.elapsed() > LEASE / 3 {
                        match self.lease(&mut conn, true).await {
                            Ok(true) => renewed = Instant::now(),
                            Ok(false) => break,
                            Err(e) => return self.lost("cannot renew the lease", e),
                        }
                    }
                }
            }
        }
    }
}

/// A draining instance gives the lease up, so that another takes over at once, claiming what
/// this one read and did not acknowledge.
impl Farewell for Target {
    async fn farewell(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if super::lease::release(&mut conn, self.lease_key(), &self.consumer, self.timeout)
                .await
            {
                tracing::info!(consumer = %self.handler.name, "consumer: gave the lease up (draining); another instance reads on");
            }
        }
    }
}
