//! The RabbitMQ bus (`amqp://user:pass@host:5672/vhost`, `amqps://` for TLS).
//!
//! Publishes go to one durable **fanout exchange** named by the prefix, with publisher confirms:
//! an HTTP publish is answered only once RabbitMQ confirmed it. How instances read depends on
//! history:
//!
//! - **With history** (`history-size` > 0), the exchange feeds a durable **stream queue**
//!   (`<prefix>.history`, `x-queue-type: stream`) and every instance consumes that stream from
//!   its own offset. The stream offset is the update's position: one total order shared by
//!   every instance, kept across broker restarts, read again from the last offset after a
//!   reconnect. Each instance keeps the last `history-size` updates it read in memory and
//!   serves `Last-Event-ID` resumes from them; an id it has not read yet is waited for (the
//!   instance writes a marker into the stream and reads up to it), so resuming works on any
//!   instance.
//! - **Without history**, each instance declares its own exclusive, auto-delete queue
//!   (`<prefix>.instance.<instance id>`) bound to the exchange, and consumes it. What is
//!   published while an instance is disconnected is lost for it (counted as a gap).
//!
//! The connection is this bus's own: after any failure it connects again with backoff and
//! declares the exchange, the queues, the binding and the consumer again (the client
//! library's automatic recovery is not used). Every instance receives every update: RabbitMQ
//! routes by broadcast whatever `routing` says.

mod link;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::oneshot;

use super::broker::Publishing;
use super::history::LocalHistory;
use super::log::ReadLog;
use super::log_bus::{LogBroker, LogBus};
use super::reconnect::Reconnect;
use super::{wire, BusError, BusOptions, Cause, Kind, Published};
use crate::envelope::now_micros;
use crate::hub::Hub;
use crate::locks::lock;
use crate::update::Update;

pub use tidings_client::amqp::TIME_HEADER;
/// The header of a marker: a message an instance writes into the stream to know when it has
/// read everything before it. Instances skip markers.
pub const MARKER_HEADER: &str = "tidings-marker";

/// The names of a cluster's objects on RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The fanout exchange every update is published to: the prefix.
    pub exchange: String,
    /// The stream queue that holds history: `<prefix>.history`.
    pub stream: String,
    /// The fanout exchange of the control plane's signals: `<prefix>.control` (each instance
    /// reads it through a queue of its own that RabbitMQ names and deletes with the
    /// connection).
    pub control: String,
}

impl Names {
    /// The names for a cluster prefix.
    pub fn new(prefix: &str) -> Self {
        Names {
            exchange: prefix.to_owned(),
            stream: format!("{prefix}.history"),
            control: format!("{prefix}.control"),
        }
    }

    /// The queue of one instance when there is no history: `<prefix>.instance.<id>`.
    pub fn instance_queue(&self, instance_id: &str) -> String {
        format!("{}.instance.{instance_id}", self.exchange)
    }
}

/// The RabbitMQ bus: a bus that reads a log (the stream), with what RabbitMQ alone does.
/// Dropping it stops its connection task.
pub(super) type AmqpBus = LogBus<Shared>;

/// What the bus and its connection task share.
#[derive(Debug)]
pub(super) struct Shared {
    hub: Hub,
    names: Names,
    /// The stream's name when instances read history from it; `None`: each reads its own
    /// queue.
    stream: Option<String>,
    /// The channel publishes go through (confirm mode), while connected and caught up.
    publishing: Publishing<Channel>,
    /// What this instance delivered, under one lock with the dispatch.
    delivered: Mutex<Delivered>,
    /// Markers this instance wrote and waits for, by token.
    markers: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Counts every message read (markers too): a wait for a marker watches it for progress.
    progress: AtomicU64,
    /// How long one operation may take.
    timeout: Duration,
}

#[derive(Debug)]
struct Delivered {
    /// The stream as this instance read it (with history), and what it delivered.
    log: ReadLog,
    /// The position the next update from the instance's own queue gets (without history).
    next_local: u128,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    super::broker::broker_error(super::Kind::Amqp, e)
}

/// A failure the RabbitMQ client reported, kept as the error's source.
fn failed(e: lapin::Error) -> BusError {
    super::broker::client_error(super::Kind::Amqp, e)
}

async fn timed<T, E: std::error::Error + Send + Sync + 'static>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BusError> {
    super::broker::with_limit(super::Kind::Amqp, limit, f).await
}

/// A header's value as an integer (RabbitMQ and clients send numbers in several widths, or as
/// text).
fn header_int(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(v) => std::str::from_utf8(v.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(v) => v.as_str().parse().ok(),
        _ => None,
    }
}

fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

impl LogBus<Shared> {
    /// Connects to RabbitMQ at `url`, declares the cluster's exchange and queues, and starts
    /// delivering to `hub`.
    ///
    /// # Errors
    /// [`BusError::Config`] for a URL that is not one; [`BusError::Unavailable`] when
    /// RabbitMQ cannot be reached or refuses the declarations at start-up.
    pub(super) async fn connect(
        url: &str,
        options: &BusOptions,
        hub: Hub,
    ) -> Result<Self, BusError> {
        let mut uri: lapin::uri::AMQPUri = url.parse().map_err(|e| {
            BusError::Config(Cause::new(format!(
                "bad RabbitMQ URL {}: {e}",
                super::redact(url)
            )))
        })?;
        // Find a dead connection within seconds, not the server's default minute.
        uri.query.heartbeat.get_or_insert(link::HEARTBEAT_SECS);
        let names = Names::new(&options.prefix);
        let history = options.history_size > 0;
        let shared = Arc::new(Shared {
            stream: history.then(|| names.stream.clone()),
            names,
            publishing: Publishing::new(),
            delivered: Mutex::new(Delivered {
                log: ReadLog::new(
                    LocalHistory::new(options.history_size, options.history_ttl()),
                    wire::Decoder::new(
                        super::Kind::Amqp,
                        options.limits.clone(),
                        hub.metrics().clone(),
                    ),
                ),
                next_local: 1,
            }),
            markers: Mutex::new(HashMap::new()),
            progress: AtomicU64::new(0),
            hub,
            timeout: options.timeouts.operation(super::Kind::Amqp),
        });
        let settings = link::Settings::new(uri, options);
        let first = link::Link::establish(&shared, &settings, link::Start::Fresh)
            .await
            .map_err(|e| {
                e.context(format_args!(
                    "cannot use RabbitMQ at {}",
                    super::redact(url)
                ))
            })?;
        let reconnect = Reconnect::new(
            super::Kind::Amqp.broker(),
            options.backoff,
            shared.hub.metrics().bus_reconnects.clone(),
        );
        let target = link::Target {
            shared: shared.clone(),
            settings,
            start: link::Start::Resume,
        };
        // Serve only once this instance has read what the stream held.
        let limit = shared.timeout.saturating_mul(2);
        LogBus::start(shared, reconnect, target, first, limit)
            .await
            .map_err(|e| e.context(format_args!("RabbitMQ at {}", super::redact(url))))
    }
}

impl Shared {
    /// Writes a marker into the stream and returns once this instance read it — so it has
    /// read everything the stream held before — or `Err(Lost)` when reading stopped making
    /// progress without reaching it (the stream is shorter than where this instance reads:
    /// RabbitMQ lost it).
    async fn catch_up(&self, channel: &Channel) -> Result<(), Catching> {
        let Some(stream) = &self.stream else {
            return Ok(());
        };
        let token = uuid::Uuid::new_v4().to_string();
        let (seen_tx, mut seen) = oneshot::channel();
        lock(&self.markers).insert(token.clone(), seen_tx);
        // Forgets the marker however this ends (also when the caller gives up waiting).
        let _waiting = Waiting {
            markers: &self.markers,
            token: &token,
        };
        write_marker(channel, stream, &token, self.timeout)
            .await
            .map_err(Catching::Failed)?;
        let mut progress = self.progress.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = &mut seen => return Ok(()),
                _ = tokio::time::sleep(link::IDLE_LIMIT) => {
                    let now = self.progress.load(Ordering::Relaxed);
                    if now == progress {
                        return Err(Catching::Lost);
                    }
                    progress = now;
                }
            }
        }
    }
}

/// A marker this instance waits for; removed from the waiting list when dropped.
struct Waiting<'a> {
    markers: &'a Mutex<HashMap<String, oneshot::Sender<()>>>,
    token: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.markers).remove(self.token);
    }
}

/// Writes a marker with `token` into the stream (through the default exchange, so only the
/// stream gets it) and waits for RabbitMQ's confirmation.
async fn write_marker(
    channel: &Channel,
    stream: &str,
    token: &str,
    timeout: Duration,
) -> Result<(), BusError> {
    let mut headers = FieldTable::default();
    headers.insert(MARKER_HEADER.into(), AMQPValue::LongString(token.into()));
    publish_confirmed(
        channel,
        "",
        stream,
        b"",
        BasicProperties::default().with_headers(headers),
        timeout,
    )
    .await
    .map_err(|e| match e {
        BusError::OutcomeUnknown(why) => BusError::Unavailable(why),
        other => other,
    })
}

/// Why catching up with the stream failed.
#[derive(Debug)]
enum Catching {
    /// The marker could not be written.
    Failed(BusError),
    /// Reading stopped before the marker: the stream is not the one this instance read.
    Lost,
}

/// Publishes one message and waits for RabbitMQ's confirmation.
///
/// # Errors
/// [`BusError::Unavailable`] when it was not sent or RabbitMQ refused it (nack);
/// [`BusError::OutcomeUnknown`] when it was sent and the confirmation did not come.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
    timeout: Duration,
) -> Result<(), BusError> {
    let confirm = timed(
        timeout,
        channel.basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            lapin::options::BasicPublishOptions::default(),
            payload,
            properties,
        ),
    )
    .await?;
    match timed(timeout, confirm).await.map_err(outcome_unknown)? {
        Confirmation::Ack(_) => Ok(()),
        Confirmation::Nack(_) => Err(unavailable("RabbitMQ did not take the message (nack)")),
        Confirmation::NotRequested => Err(unavailable("the channel is not in confirm mode")),
    }
}

impl LogBroker for Shared {
    const KIND: Kind = Kind::Amqp;

    type Publisher = Channel;

    fn publishing(&self) -> &Publishing<Channel> {
        &self.publishing
    }

    fn usable(channel: &Channel) -> bool {
        channel.status().connected()
    }

    /// The answer has no position: RabbitMQ's confirmation does not say where the update is in
    /// the stream (the position is known once it is read).
    async fn publish(&self, channel: Channel, update: Update) -> Result<Published, BusError> {
        publish_confirmed(
            &channel,
            &self.names.exchange,
            "",
            wire::encode(&update).as_bytes(),
            tidings_client::amqp::message_properties(now_micros()),
            self.timeout,
        )
        .await?;
        Ok(Published {
            id: update.id,
            position: None,
        })
    }

    /// A stream RabbitMQ lost reads again from its start (the connection task sees to it):
    /// what this instance read is then all there is.
    async fn read_up_to_now(&self, channel: Channel) -> Result<(), BusError> {
        match self.catch_up(&channel).await {
            Ok(()) | Err(Catching::Lost) => Ok(()),
            Err(Catching::Failed(e)) => Err(e),
        }
    }

    fn history<T>(&self, read: impl FnOnce(&mut LocalHistory) -> T) -> T {
        read(&mut lock(&self.delivered).log.history)
    }

    /// With history, instances read the stream by offset; without, each reads its own queue,
    /// and what is published while it is disconnected is lost for it.
    fn resumes(&self) -> bool {
        self.stream.is_some()
    }

    async fn signal(&self, channel: Channel, signal: bytes::Bytes) -> Result<(), BusError> {
        let properties = BasicProperties::default();
        let control = &self.names.control;
        publish_confirmed(&channel, control, "", &signal, properties, self.timeout).await
    }
}

/// A publish that was handed to the broker and then failed or went unanswered: whether the
/// broker stored it is unknown ([`BusError::OutcomeUnknown`]).
fn outcome_unknown(e: BusError) -> BusError {
    match e {
        BusError::Unavailable(why) => BusError::OutcomeUnknown(why),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let names = Names::new("shop");
        assert_eq!(names.exchange, "shop");
        assert_eq!(names.stream, "shop.history");
        assert_eq!(names.instance_queue("a1"), "shop.instance.a1");
    }

    #[test]
    fn headers_are_read_in_any_integer_width_or_as_text() {
        let mut table = FieldTable::default();
        table.insert("a".into(), AMQPValue::LongLongInt(7));
        table.insert("b".into(), AMQPValue::LongString("12".into()));
        table.insert("c".into(), AMQPValue::Boolean(true));
        table.insert("d".into(), AMQPValue::LongString("tok".into()));
        assert_eq!(header_int(Some(&table), "a"), Some(7));
        assert_eq!(header_int(Some(&table), "b"), Some(12));
        assert_eq!(header_int(Some(&table), "c"), None);
        assert_eq!(header_int(None, "a"), None);
        assert_eq!(header_text(Some(&table), "d").as_deref(), Some("tok"));
    }
}
