//! Consuming Redis Pub/Sub channels and patterns the services `PUBLISH` to (`SUBSCRIBE
//! subtitles:job:42`, `PSUBSCRIBE sample:*`).
//!
//! Pub/Sub keeps nothing: a message reaches whoever is subscribed when it is published, and
//! every subscriber gets it. So every instance subscribes, and one of them — the holder of a
//! lease key, renewed with each message — turns messages into updates; after each it records
//! its progress (a digest of the last few messages it handled) beside the lease, in the same
//! script, which succeeds only while it holds the lease. The others keep what they received
//! since the holder's last recorded progress (they read it every second and drop what it
//! covers: the *handover buffer*). When the holder dies, its lease expires within
//! [`LEASE`]; the instance that takes it over first publishes what it buffered after the
//! holder's progress, then reads on. So while one consuming instance lives, each message
//! becomes one update; a handover delays messages by at most the lease and loses none that
//! the new holder received. What can still go wrong is bounded and counted:
//! - a message the dying holder stored but had not yet recorded is published again (at most
//!   one per handover; none when the mapping takes the id from the message, `id={/id}`,
//!   as a second store of the same id is the idempotent retry);
//! - when the holder's progress is not among the buffered messages (this instance's own
//!   subscription dropped meanwhile, or the buffer overflowed), the whole buffer is published
//!   (repeats rather than losses), counted as `outcome="replayed"`;
//! - the buffer holds at most [`BUFFER_MESSAGES`] messages and [`BUFFER_BYTES`]; what it
//!   drops is counted as `outcome="lost"` when it would have been needed (a takeover);
//! - a message published while no instance is subscribed (all down, or each reconnecting)
//!   reaches no one: that is Pub/Sub.
//!
//! The update's id is the mapping's (`id=…`), else a new one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};

use super::mapping::Message;
use super::pattern::Pattern;
use super::run::{Farewell, Handled, Handler};
use super::spec::RedisPubSubSource;
use crate::bus::reconnect::{self, Stop};
use crate::bus::{with_limit, BusError, Cause, Kind};
use crate::update::UpdateId;

/// How long the lease lasts without renewal: the longest messages wait after their reader
/// died, in the other instances' buffers.
const LEASE: Duration = Duration::from_secs(5);
/// How often an instance that does not hold the lease tries to take it, reads the holder's
/// progress, and pings its subscription.
const POLL: Duration = Duration::from_secs(1);
/// How many of the latest messages the progress digest covers: the same digest twice among
/// the buffered messages needs the same run of this many messages twice.
const WINDOW: usize = 4;
/// How long the holder's progress is kept after its last message.
const PROGRESS_TTL: Duration = Duration::from_secs(3600);
/// The handover buffer's bounds.
const BUFFER_MESSAGES: usize = 100_000;
const BUFFER_BYTES: usize = 64 << 20;

/// Renews the lease, and records the progress (`ARGV[3]`, unless empty), for its holder only:
/// 1 if this instance holds the lease, 0 if not.
const HELD: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])";

/// A message as received, with the progress digest that names it.
struct Received {
    channel: String,
    /// The pattern it matched (`PSUBSCRIBE`), if that is how it came.
    pattern: Option<String>,
    body: Vec<u8>,
    /// The digest of the last [`WINDOW`] messages up to this one.
    mark: String,
}

/// What an instance that does not hold the lease received since the holder's last progress.
#[derive(Default)]
struct Buffer {
    messages: VecDeque<Received>,
    bytes: usize,
    /// Dropped for room since the buffer was last trimmed.
    dropped: u64,
    /// The holder's progress the buffer was last trimmed to: everything left came after it.
    trimmed_to: Option<String>,
}

impl Buffer {
    fn push(&mut self, message: Received) {
        self.bytes += message.body.len();
        self.messages.push_back(message);
        while self.messages.len() > BUFFER_MESSAGES || self.bytes > BUFFER_BYTES {
            let Some(old) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= old.body.len();
            self.dropped += 1;
        }
    }

    /// Drops what the holder's `progress` covers (`<n>:<mark>`: the holder had handled `n`
    /// messages, the last of them ending the run `mark`). After a first trim, the count says
    /// exactly how many came off since; before it, or when the count does not fit (a new
    /// holder, an overflow), the first place the run matches is taken: where runs repeat, a
    /// takeover then repeats messages, never skips them.
    fn trim(&mut self, progress: &str) {
        let Some((n, mark)) = progress
            .split_once(':')
            .and_then(|(n, mark)| Some((n.parse::<u64>().ok()?, mark)))
        else {
            return;
        };
        let previous = self
            .trimmed_to
            .as_deref()
            .and_then(|p| p.split_once(':')?.0.parse::<u64>().ok());
        let counted = previous
            .filter(|_| self.dropped == 0)
            .and_then(|previous| usize::try_from(n.checked_sub(previous)?).ok())
            .filter(|&since| {
                since == 0 || self.messages.get(since - 1).is_some_and(|m| m.mark == mark)
            });
        let through = match counted {
            Some(0) => return,
            Some(since) => Some(since - 1),
            None => self.messages.iter().position(|m| m.mark == mark),
        };
        if let Some(at) = through {
            for old in self.messages.drain(..=at) {
                self.bytes -= old.body.len();
            }
            self.trimmed_to = Some(progress.to_owned());
            self.dropped = 0;
        }
    }

    /// What is left to publish after the holder's `progress`, and whether it could be placed
    /// (else: everything buffered).
    fn take_after(&mut self, progress: Option<&str>) -> (VecDeque<Received>, bool) {
        let placed = match progress {
            None => true,
            Some(progress) => {
                self.trim(progress);
                self.trimmed_to.as_deref() == Some(progress)
            }
        };
        self.bytes = 0;
        (std::mem::take(&mut self.messages), placed)
    }

    fn clear(&mut self) {
        *self = Buffer::default();
    }
}

/// The digests of the latest messages, for the progress mark.
#[derive(Default)]
struct Window(VecDeque<ring::digest::Digest>);

impl Window {
    /// Adds a message; the mark of the run of messages it ends.
    fn mark(&mut self, channel: &str, pattern: Option<&str>, body: &[u8]) -> String {
        let mut one = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [channel.as_bytes(), pattern.unwrap_or("").as_bytes(), body] {
            one.update(&(part.len() as u64).to_be_bytes());
            one.update(part);
        }
        if self.0.len() == WINDOW {
            self.0.pop_front();
        }
        self.0.push_back(one.finish());
        let mut run = ring::digest::Context::new(&ring::digest::SHA256);
        for digest in &self.0 {
            run.update(digest.as_ref());
        }
        run.finish().as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The connection a consumer's reconnect machine drives.
pub(super) struct Target {
    source: RedisPubSubSource,
    patterns: HashMap<String, Pattern>,
    handler: Arc<Handler>,
    /// The lease's value: this instance.
    instance: String,
    timeout: Duration,
    window: Window,
    buffer: Buffer,
    /// Messages handled since this instance took the lease: the `<n>` of its progress.
    handled: u64,
    /// The commands connection last made, for the farewell.
    commands: Option<MultiplexedConnection>,
}

/// The connections of a consumer: commands, and the subscription.
pub(super) struct Link {
    commands: MultiplexedConnection,
    sink: PubSubSink,
    messages: PubSubStream,
}

impl Target {
    pub(super) fn new(
        source: RedisPubSubSource,
        handler: Arc<Handler>,
        instance: String,
        timeout: Duration,
    ) -> Self {
        let patterns = source
            .patterns
            .iter()
            .filter_map(|p| Some((p.clone(), Pattern::redis(p).ok()?)))
            .collect();
        Target {
            source,
            patterns,
            handler,
            instance,
            timeout,
            window: Window::default(),
            buffer: Buffer::default(),
            handled: 0,
            commands: None,
        }
    }

    fn lost(&self, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Stop {
        self.handler.lost(what, e)
    }

    fn lease_key(&self) -> String {
        format!("{}:lease", self.source.key)
    }

    fn progress_key(&self) -> String {
        format!("{}:progress", self.source.key)
    }

    /// Renews the lease, recording `progress` when given; whether this instance still holds
    /// it.
    async fn renew(&self, conn: &mut MultiplexedConnection, progress: &str) -> Result<bool, Stop> {
        let held: redis::RedisResult<i64> = redis::Script::new(HELD)
            .key(self.lease_key())
            .key(self.progress_key())
            .arg(&self.instance)
            .arg(LEASE.as_millis() as u64)
            .arg(progress)
            .arg(PROGRESS_TTL.as_millis() as u64)
            .invoke_async(conn)
            .await;
        match held {
            Ok(held) => Ok(held == 1),
            Err(e) => Err(self.lost("cannot renew the lease", e)),
        }
    }

    /// Takes the lease if it is free; whether it was, and the holder's progress.
    async fn try_take(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(bool, Option<String>), Stop> {
        let (taken, progress): (Option<String>, Option<String>) = redis::pipe()
            .cmd("SET")
            .arg(self.lease_key())
            .arg(&self.instance)
            .arg("NX")
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            .cmd("GET")
            .arg(self.progress_key())
            .query_async(conn)
            .await
            .map_err(|e| self.lost("cannot read the lease", e))?;
        Ok((taken.is_some(), progress))
    }

    /// Gives the lease up, if this instance holds it; whether it did.
    async fn release(&self, conn: &mut MultiplexedConnection) -> bool {
        super::lease::release(conn, self.lease_key(), &self.instance, self.timeout).await
    }

    /// Turns one message into an update; whether this instance still holds the lease after
    /// it (`None`: the instance is stopping, and the message is left to the next holder).
    async fn handle(
        &mut self,
        conn: &mut MultiplexedConnection,
        received: &Received,
    ) -> Result<Option<bool>, Stop> {
        let _busy = self.handler.busy.lock().await;
        if self.handler.stop.is_cancelled() {
            return Ok(None);
        }
        let captures = received
            .pattern
            .as_ref()
            .and_then(|p| self.patterns.get(p))
            .and_then(|p| p.captures(&received.channel))
            .unwrap_or_default();
        let message = Message {
            body: &received.body,
            name: &received.channel,
            captures,
            key: None,
        };
        let place = format!("message on channel {:?}", received.channel);
        match self
            .handler
            .handle(&message, &place, UpdateId::generate)
            .await
        {
            Handled::Published | Handled::Skipped => {
                self.handled += 1;
                let progress = format!("{}:{}", self.handled, received.mark);
                self.renew(conn, &progress).await.map(Some)
            }
            Handled::Stopped => Ok(None),
        }
    }

    /// Takes over from the previous holder: publishes what this instance buffered after its
    /// progress. Whether this instance still holds the lease after it.
    async fn take_over(
        &mut self,
        conn: &mut MultiplexedConnection,
        progress: Option<String>,
    ) -> Result<bool, Stop> {
        self.handled = 0;
        let dropped = std::mem::take(&mut self.buffer.dropped);
        let (mut pending, placed) = self.buffer.take_after(progress.as_deref());
        let count = pending.len();
        if !placed {
            tracing::warn!(consumer = %self.handler.name, count, "consumer: the previous reader's last message is not among those this instance buffered; publishing all it buffered (some may repeat)");
        }
        if dropped > 0 {
            tracing::warn!(consumer = %self.handler.name, dropped, "consumer: the handover buffer was full; messages the previous reader may not have handled are lost");
            for _ in 0..dropped {
                self.handler.count("lost");
            }
        }
        tracing::info!(consumer = %self.handler.name, buffered = count, "consumer: reading the channels (this instance holds the lease)");
        while let Some(received) = pending.pop_front() {
            if !placed {
                self.handler.count("replayed");
            }
            match self.handle(conn, &received).await? {
                Some(true) => {}
                Some(false) | None => {
                    // Not ours any more: the next holder publishes the rest from its own
                    // buffer; ours keeps them in case it is us again.
                    self.buffer.push(received);
                    for rest in pending {
                        self.buffer.push(rest);
                    }
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    async fn follow(&mut self, link: &mut Link) -> Stop {
        let mut held = false;
        let mut renewed = Instant::now();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // (The lease is given up in the farewell.)
                () = self.handler.stop.cancelled() => return std::future::pending().await,
                message = link.messages.next() => {
                    let Some(message) = message else {
                        return Stop::Lost(Cause::new(format!(
                            "consumer {}: the subscription closed",
                            self.handler.name
                        )));
                    };
                    let channel = message.get_channel_name().to_owned();
                    let pattern = message
                        .from_pattern()
                        .then(|| message.get_pattern::<String>().ok())
                        .flatten();
                    let body = message.get_payload_bytes().to_vec();
                    let mark = self.window.mark(&channel, pattern.as_deref(), &body);
                    let received = Received { channel, pattern, body, mark };
                    if !held {
                        self.buffer.push(received);
                        continue;
                    }
                    match self.handle(&mut link.commands, &received).await {
                        Ok(Some(true)) => renewed = Instant::now(),
                        Ok(Some(false)) => {
                            tracing::warn!(consumer = %self.handler.name, "consumer: lost the lease; another instance reads the channels");
                            held = false;
                        }
                        Ok(None) => {}
                        Err(stop) => return stop,
                    }
                }
                _ = poll.tick() => {
                    let timeout = self.timeout;
                    match tokio::time::timeout(timeout, link.sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return self.lost("ping failed", e),
                        Err(_) => {
                            return Stop::Lost(Cause::new(format!(
                                "consumer {}: no pong within {timeout:?}",
                                self.handler.name
                            )))
                        }
                    }
                    if held {
                        if renewed.elapsed() >= LEASE / 3 {
                            match self.renew(&mut link.commands, "").await {
                                Ok(true) => renewed = Instant::now(),
                                Ok(false) => {
                                    tracing::warn!(consumer = %self.handler.name, "consumer: lost the lease; another instance reads the channels");
                                    held = false;
                                }
                                Err(stop) => return stop,
                            }
                        }
                        continue;
                    }
                    let (taken, progress) = match self.try_take(&mut link.commands).await {
                        Ok(answer) => answer,
                        Err(stop) => return stop,
                    };
                    if !taken {
                        if let Some(mark) = progress {
                            self.buffer.trim(&mark);
                        }
                        continue;
                    }
                    match self.take_over(&mut link.commands, progress).await {
                        Ok(true) => {
                            held = true;
                            renewed = Instant::now();
                        }
                        Ok(false) => {}
                        Err(stop) => return stop,
                    }
                }
            }
        }
    }
}

impl reconnect::Target for Target {
    type Connection = Link;

    async fn connect(&mut self) -> Result<Link, BusError> {
        let failed = |what: &'static str| {
            let name = self.handler.name.clone();
            move |e: BusError| e.context(format_args!("consumer {name}: {what}"))
        };
        let client = &self.source.client;
        let commands = with_limit(
            Kind::Redis,
            self.timeout,
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(failed("cannot connect"))?;
        let (mut sink, messages) = with_limit(Kind::Redis, self.timeout, client.get_async_pubsub())
            .await
            .map_err(failed("cannot connect"))?
            .split();
        for channel in &self.source.channels {
            with_limit(Kind::Redis, self.timeout, sink.subscribe(channel))
                .await
                .map_err(failed("cannot subscribe"))?;
        }
        for pattern in &self.source.patterns {
            with_limit(Kind::Redis, self.timeout, sink.psubscribe(pattern))
                .await
                .map_err(failed("cannot subscribe"))?;
        }
        // What was buffered before cannot be vouched for: messages were missed meanwhile.
        self.buffer.clear();
        tracing::info!(consumer = %self.handler.name, channels = ?self.source.channels, patterns = ?self.source.patterns, "consumer: subscribed");
        self.commands = Some(commands.clone());
        Ok(Link {
            commands,
            sink,
            messages,
        })
    }

    async fn deliver(&mut self, mut link: Link) -> Stop {
        let stop = self.follow(&mut link).await;
        // Another instance has every message this one will miss while it reconnects: let it
        // take over now rather than when the lease expires.
        self.release(&mut link.commands).await;
        stop
    }
}

/// A draining instance gives the lease up, so that another takes over at once, publishing
/// what it buffered after this one's progress.
impl Farewell for Target {
    async fn farewell(&mut self) {
        if let Some(mut commands) = self.commands.take() {
            if self.release(&mut commands).await {
                tracing::info!(consumer = %self.handler.name, "consumer: gave the lease up (draining); another instance reads on");
            }
        }
    }
}

#[cfg(test)]
#[path = "redis_pubsub_tests.rs"]
mod tests;
