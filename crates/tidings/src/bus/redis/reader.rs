//! The delivery task: one Pub/Sub connection, subscribed to what the routing asks for,
//! reconnected with backoff, with catch-up from the stream after each reconnect.
//!
//! Right after connecting and then every second, the reader pings the connection, which finds
//! a dead one even when nothing is published, and moves its *watermark*: it reads the stream's
//! newest position, pings, and — the pong arriving after every message published before it —
//! once it has delivered what came before the pong, knows it missed nothing up to that
//! position (the start of the stream when the stream was empty). Under interest routing an
//! instance may hear nothing for a long time; the watermark keeps the catch-up after a
//! reconnect short, and a gap is counted only when the stream no longer holds the point
//! delivery had reached.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;
use tokio::sync::watch;

use super::routing::{Change, Lingering, Listening};
use super::{
    failed, holds, position, read_range, stream_id, timed, unavailable, write_settings, Keys,
};
use crate::bus::reconnect::{self, Reconnect, Stop};
use crate::bus::wire::Decoder;
use crate::bus::{BusError, Cause, Routing};
use crate::envelope::{Envelope, Position};
use crate::hub::{Hub, InterestChanges};

/// Most stream entries read when catching up after a reconnect.
const CATCH_UP_MAX: usize = 1_000_000;
/// How often the connection is pinged and the watermark moved.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How often, behind sentinels or in a Redis Cluster, the delivery connection asks whether the
/// primary moved (a failover that left the old primary up, as a replica, breaks no connection).
const MOVED_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for the stream's newest position before a ping (the watermark then stays).
const HEAD_TIMEOUT: Duration = Duration::from_millis(500);
/// Most channels or patterns named in one `SUBSCRIBE`-like command.
const CHANNELS_PER_COMMAND: usize = 1000;

/// A catch-up read that failed, as the reconnect machine logs it.
fn cannot_catch_up(e: BusError) -> BusError {
    unavailable(format!(
        "cannot read what was missed while disconnected (trying again): {e}"
    ))
}

/// What the delivery task is given.
pub(super) struct Setup {
    /// Where the connections go; the delivery connection asks it for the primary each time
    /// it connects (behind sentinels or in a Redis Cluster, that is how a failover is followed).
    pub(super) conns: std::sync::Arc<super::Connections>,
    pub(super) keys: Keys,
    pub(super) hub: Hub,
    /// Told the version of the hub's interest the connection listens for, after each change
    /// (once any catch-up is done); `None` while the connection is down.
    pub(super) listening: watch::Sender<Option<u64>>,
    pub(super) routing: Routing,
    /// `redis-max-patterns`.
    pub(super) max_patterns: usize,
    /// How long the channel of a topic no longer wanted stays subscribed (see [`Lingering`]).
    pub(super) unsubscribe_after: Duration,
    pub(super) history: bool,
    /// Turns messages into updates (skipping and counting malformed ones).
    pub(super) decoder: Decoder,
    /// The history settings written to `<prefix>:config` (again after each reconnect: a
    /// restarted Redis may have lost them).
    pub(super) settings: [(&'static str, u64); 3],
    /// How long one command may take.
    pub(super) timeout: Duration,
}

/// The delivery task's state.
pub(super) struct Reader {
    setup: Setup,
    /// The position of the last update handed to the hub.
    last: Option<Position>,
    /// A position up to which every update this instance listens for has been handed to the
    /// hub (see the module documentation); ahead of `last` when the instance hears little.
    watermark: Option<Position>,
}

/// Why a delivery connection stopped.
type Lost = String;

/// The delivery task as the reconnect machine drives it.
struct Delivery {
    reader: Reader,
    /// Changes whenever the hub's interest does.
    interest: watch::Receiver<u64>,
    /// After the first connection, each new one catches up with what it missed.
    connected_before: bool,
}

impl reconnect::Target for Delivery {
    type Connection = (PubSubSink, PubSubStream, Listening);

    async fn connect(&mut self) -> Result<Self::Connection, BusError> {
        let (sink, stream, subscribed, version) = self.reader.connect(&mut self.interest).await?;
        if self.connected_before {
            let setup = &self.reader.setup;
            let conn = setup.conns.commands();
            let written = write_settings(&conn, &setup.keys, &setup.settings, setup.timeout);
            if let Err(e) = written.await {
                tracing::warn!(error = %e, "redis: cannot write the history settings");
            }
            // Not caught up, the connection is not used: delivering live over a stretch
            // that never reached this instance's streams would lose it without a word. The
            // machine connects again after its backoff, and the catch-up starts over from
            // the same place (nothing past it was delivered).
            self.reader.catch_up().await?;
        }
        // Only now may new streams open: they must not see what the catch-up delivered,
        // published before they came.
        self.reader.setup.listening.send_replace(Some(version));
        self.connected_before = true;
        Ok((sink, stream, subscribed))
    }

    async fn deliver(&mut self, (sink, stream, subscribed): Self::Connection) -> Stop {
        let lost = self
            .reader
            .listen(sink, stream, subscribed, &mut self.interest)
            .await;
        self.reader.setup.listening.send_replace(None);
        Stop::Lost(Cause::new(lost))
    }
}

impl Reader {
    pub(super) fn new(setup: Setup) -> Self {
        Reader {
            setup,
            last: None,
            watermark: None,
        }
    }

    /// Delivers for as long as the task runs, connecting again with `reconnect`'s backoff.
    pub(super) async fn run(self, reconnect: Reconnect) {
        let interest = self.setup.hub.interest_changes();
        let delivery = Delivery {
            reader: self,
            interest,
            connected_before: false,
        };
        reconnect.run(delivery, None).await;
    }

    /// Opens a delivery connection and subscribes to what the hub's interest needs now.
    async fn connect(
        &self,
        interest: &mut watch::Receiver<u64>,
    ) -> Result<(PubSubSink, PubSubStream, Listening, u64), BusError> {
        let attempt = async {
            let client = self.setup.conns.primary().await?;
            let (mut sink, stream) = client.get_async_pubsub().await.map_err(failed)?.split();
            let version = *interest.borrow_and_update();
            let subscribed = self.wanted();
            let change = Change::between(&Listening::default(), &subscribed);
            send(&mut sink, &change).await.map_err(unavailable)?;
            // The control plane's signals, whatever the routing (never unsubscribed).
            sink.subscribe(&self.setup.keys.control)
                .await
                .map_err(failed)?;
            Ok((sink, stream, subscribed, version))
        };
        let timeout = self.setup.timeout;
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(format!("no answer within {timeout:?}"))),
        }
    }

    /// What the connection should listen to for the hub's interest now (which also restarts
    /// the hub's record of changes, see [`Reader::changes`]).
    fn wanted(&self) -> Listening {
        let setup = &self.setup;
        match setup.routing {
            Routing::Broadcast => Listening::everything(&setup.keys),
            Routing::Interest => {
                setup.hub.take_interest_changes();
                let (wanted, capped) =
                    Listening::planned(&setup.hub.interest(), &setup.keys, setup.max_patterns);
                setup.hub.metrics().routing_capped.set(i64::from(capped));
                wanted
            }
        }
    }

    /// The commands that bring `subscribed` up to date after the hub's interest changed: only
    /// the channels of the exact topics that came (those that went linger), unless the change
    /// needs a full recomputation (a wide selector, or very many topics).
    fn changes(&self, subscribed: &Listening, lingering: &mut Lingering) -> Change {
        let setup = &self.setup;
        if setup.routing == Routing::Broadcast {
            return Change::default();
        }
        match setup.hub.take_interest_changes() {
            InterestChanges::Exact { wanted, unwanted } => {
                let mut change = Change::exact(subscribed, &wanted, &unwanted, &setup.keys);
                let channels = wanted.iter().map(|t| setup.keys.topic(t));
                lingering.hold(
                    &mut change,
                    channels,
                    tokio::time::Instant::now().into_std(),
                );
                change
            }
            InterestChanges::Everything => {
                lingering.clear();
                Change::between(subscribed, &self.wanted())
            }
        }
    }

    /// Delivers messages, follows interest changes and pings, until the connection fails;
    /// then delivers what had arrived.
    async fn listen(
        &mut self,
        sink: PubSubSink,
        mut stream: PubSubStream,
        subscribed: Listening,
        interest: &mut watch::Receiver<u64>,
    ) -> Lost {
        let lost = self.follow(sink, &mut stream, subscribed, interest).await;
        self.drain(&mut stream);
        lost
    }

    async fn follow(
        &mut self,
        mut sink: PubSubSink,
        stream: &mut PubSubStream,
        mut subscribed: Listening,
        interest: &mut watch::Receiver<u64>,
    ) -> Lost {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut moved = tokio::time::interval(MOVED_EVERY);
        moved.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        moved.reset();
        let mut lingering = Lingering::default();
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.deliver_message(&message),
                    None => return "the connection closed".to_owned(),
                },
                changed = interest.changed() => {
                    if changed.is_err() {
                        return "the hub is gone".to_owned();
                    }
                    let version = *interest.borrow_and_update();
                    let change = self.changes(&subscribed, &mut lingering);
                    if let Err(e) = self.change(&mut sink, change, &mut subscribed).await {
                        return e;
                    }
                    self.setup.listening.send_replace(Some(version));
                }
                _ = ping.tick() => {
                    if let Err(e) = self.ping(&mut sink, stream).await {
                        return e;
                    }
                    let now = tokio::time::Instant::now().into_std();
                    let due = lingering.due(now, self.setup.unsubscribe_after);
                    if let Err(e) = self.change(&mut sink, due, &mut subscribed).await {
                        return e;
                    }
                }
                _ = moved.tick() => {
                    if self.setup.conns.primary_moved().await == Some(true) {
                        return "the primary moved".to_owned();
                    }
                }
            }
        }
    }

    /// Sends `change` (nothing when it is empty) and records it in `subscribed` once confirmed.
    async fn change(
        &self,
        sink: &mut PubSubSink,
        change: Change,
        subscribed: &mut Listening,
    ) -> Result<(), Lost> {
        if change.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.setup.timeout, send(sink, &change)).await {
            Ok(Ok(())) => {
                change.apply(subscribed);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("a subscription change was not confirmed".to_owned()),
        }
    }

    /// Pings the connection and moves the watermark (see the module documentation).
    async fn ping(&mut self, sink: &mut PubSubSink, stream: &mut PubSubStream) -> Result<(), Lost> {
        let head = if self.setup.history {
            let mut conn = self.setup.conns.commands();
            let newest = conn.xrevrange_count(&self.setup.keys.stream, "+", "-", 1);
            match tokio::time::timeout(HEAD_TIMEOUT, newest).await {
                // An empty stream: everything from its start on is still to come.
                Ok(Ok(StreamRangeReply { ids })) => Some(
                    ids.first()
                        .and_then(|entry| position(&entry.id))
                        .unwrap_or(Position(0)),
                ),
                _ => None,
            }
        } else {
            None
        };
        let timeout = self.setup.timeout;
        match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("ping failed: {e}")),
            Err(_) => return Err(format!("no pong within {timeout:?}")),
        }
        // Everything published before the pong is queued in `stream` by now.
        self.drain(stream);
        self.watermark = self.watermark.max(head);
        if head.is_some() {
            tracing::debug!(watermark = ?self.watermark, "redis: delivered everything published before the ping");
        }
        Ok(())
    }

    /// Delivers every message already queued in `stream`, without waiting for more.
    fn drain(&mut self, stream: &mut PubSubStream) {
        // Unconstrained: tokio's cooperative budget would otherwise make the queue look empty
        // after a hundred-odd messages.
        while let Some(Some(message)) = tokio::task::unconstrained(stream.next()).now_or_never() {
            self.deliver_message(&message);
        }
    }

    /// After a reconnect: delivers from the stream what was published while disconnected.
    ///
    /// # Errors
    /// The reads failed (a timeout on a starved machine, a refused command): nothing was
    /// delivered, and the caller tries again rather than go on without it. What the stream no
    /// longer holds is a gap instead — counted, recorded, and delivered from past it.
    async fn catch_up(&mut self) -> Result<(), BusError> {
        let setup = &self.setup;
        let metrics = setup.hub.metrics().clone();
        if !setup.history {
            metrics.bus_gaps.inc();
            tracing::warn!("redis: updates published while disconnected are lost (history is off)");
            // A restarted Redis counts positions from 1 again: forget the old ones, or every
            // new update would look like one already delivered.
            self.last = None;
            return Ok(());
        }
        let Some(from) = self.last.max(self.watermark) else {
            metrics.bus_gaps.inc();
            tracing::warn!("redis: the connection dropped before delivery had a known position; updates published meanwhile may be lost");
            return Ok(());
        };
        let from_start = from == Position(0);
        let from = stream_id(from);
        let conn = setup.conns.commands();
        let still_held = match from_start {
            true => Ok(true),
            false => holds(&conn, &setup.keys, &from, setup.timeout).await,
        };
        let (after, lost) = match still_held {
            Ok(true) => (from, false),
            Ok(false) => {
                metrics.bus_gaps.inc();
                tracing::warn!(from = %from, "redis: the stream no longer holds where delivery stopped; updates in between are lost");
                // Behind a failover to a replica that lacked them, the updates up to here are
                // gone while what came before them is still held: a client resuming from
                // before must hear that it missed some. And what the new primary stored since
                // may sit at positions before `from` (its clock may be behind the old one's):
                // deliver from the newest entry before the loss on.
                let since = match record_loss(setup, &from).await {
                    Ok(since) => since,
                    Err(e) => {
                        tracing::warn!(error = %e, "redis: cannot record the lost stretch of the stream");
                        from
                    }
                };
                (since, true)
            }
            Err(e) => return Err(cannot_catch_up(e)),
        };
        let missed = read_range(
            &conn,
            &setup.keys,
            &format!("({after}"),
            "+",
            CATCH_UP_MAX,
            &setup.decoder,
            setup.timeout,
        )
        .await
        .map_err(cannot_catch_up)?;
        if lost {
            // The stream may have been lost with a Redis restart: its new positions are not
            // comparable with the old ones.
            self.last = None;
            self.watermark = None;
        }
        tracing::info!(
            count = missed.len(),
            "redis: delivering updates missed while disconnected"
        );
        for envelope in missed {
            self.deliver(envelope);
        }
        Ok(())
    }

    /// A Pub/Sub message of the publish script: `<position> <micros> <wire-format message>`;
    /// or a signal of the control plane, handed to the hub.
    fn deliver_message(&mut self, message: &redis::Msg) {
        if message.get_channel_name() == self.setup.keys.control {
            let signal = bytes::Bytes::copy_from_slice(message.get_payload_bytes());
            self.setup.hub.receive_signal(signal);
            return;
        }
        let decoder = &self.setup.decoder;
        let mut parts = message.get_payload_bytes().splitn(3, |b| *b == b' ');
        let (Some(sid), Some(micros), Some(text)) = (parts.next(), parts.next(), parts.next())
        else {
            decoder.skip(&message.get_channel_name(), "a message without a position");
            return;
        };
        let Some((sid, position)) = std::str::from_utf8(sid)
            .ok()
            .and_then(|sid| Some((sid, position(sid)?)))
        else {
            decoder.skip(&message.get_channel_name(), "a message with a bad position");
            return;
        };
        if !plausible(position, self.last) {
            // Positions come from the publish script (the stream entry's id: Redis's time;
            // without history, a counter). A message written by hand far ahead would make
            // this instance take every later update for a repeat until it reconnects.
            decoder.skip(&message.get_channel_name(), "a message with a position far ahead of the cluster's (not from the publish script)");
            return;
        }
        if self.delivered(position) {
            // The same update on a second channel (one per topic it has).
            return;
        }
        // A direct publisher may not know its clock: 0 means "now".
        let micros = std::str::from_utf8(micros)
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if let Some(envelope) = decoder.envelope(text, sid, position, micros) {
            self.deliver(envelope);
        }
    }

    /// Whether the update at `position` was handed to the hub already.
    fn delivered(&self, position: Position) -> bool {
        self.last.is_some_and(|last| position <= last)
    }

    fn deliver(&mut self, envelope: Arc<Envelope>) {
        if self.delivered(envelope.position) {
            return;
        }
        self.last = Some(envelope.position);
        self.setup.hub.dispatch(&envelope);
    }
}

/// How far ahead of this instance's clock a stream entry's time may be (clocks drift; Redis's
/// own is the one that counts).
const MAX_AHEAD_MS: u64 = 3_600_000;
/// How far past the last delivered position a position without history (`0-<n>`, a counter)
/// may jump.
const MAX_COUNTER_JUMP: u64 = 1 << 32;

/// Whether `position` can have come from the publish script: a stream entry's time at most an
/// hour ahead of this instance's clock, or (without history) a counter not billions past the
/// last one delivered.
fn plausible(position: Position, last: Option<Position>) -> bool {
    let ms = (position.0 >> 64) as u64;
    let seq = position.0 as u64;
    match ms {
        0 => last.is_none_or(|last| seq.saturating_sub(last.0 as u64) <= MAX_COUNTER_JUMP),
        ms => ms <= crate::envelope::now_micros() / 1000 + MAX_AHEAD_MS,
    }
}

/// Sends a subscription change, each command confirmed.
async fn send(sink: &mut PubSubSink, change: &Change) -> Result<(), Lost> {
    let failed = |e: redis::RedisError| format!("a subscription change failed: {e}");
    // Subscribe first: a channel in both is never left unheard.
    for chunk in change.subscribe.chunks(CHANNELS_PER_COMMAND) {
        sink.subscribe(chunk).await.map_err(failed)?;
    }
    for chunk in change.psubscribe.chunks(CHANNELS_PER_COMMAND) {
        sink.psubscribe(chunk).await.map_err(failed)?;
    }
    // Never with an empty list: that would unsubscribe from everything (`chunks` of an empty
    // list yields none).
    for chunk in change.unsubscribe.chunks(CHANNELS_PER_COMMAND) {
        sink.unsubscribe(chunk).await.map_err(failed)?;
    }
    for chunk in change.punsubscribe.chunks(CHANNELS_PER_COMMAND) {
        sink.punsubscribe(chunk).await.map_err(failed)?;
    }
    Ok(())
}

/// Records that the stream lost what came after its newest entry before `through`, up to
/// `through` (kept as long as ids are, `history-id-ttl`); that newest entry's id (`0-0` for
/// none).
async fn record_loss(setup: &Setup, through: &str) -> Result<String, BusError> {
    let mut conn = setup.conns.commands();
    let before: StreamRangeReply = timed(
        setup.timeout,
        conn.xrevrange_count(&setup.keys.stream, through, "-", 1),
    )
    .await?;
    let since = before
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
    let keep = setup
        .settings
        .iter()
        .find(|(name, _)| *name == "history-id-ttl")
        .map_or(86_400, |(_, secs)| *secs);
    let mut pipe = redis::pipe();
    pipe.hset(&setup.keys.lost, through, &since)
        .ignore()
        .expire(&setup.keys.lost, keep as i64)
        .ignore();
    timed(setup.timeout, pipe.query_async::<()>(&mut conn)).await?;
    Ok(since)
}
