//! Consuming a RabbitMQ exchange the services publish to: one durable queue, shared by every
//! instance and read by one at a time (the others take over when it goes), bound to the
//! exchange; a message is
//! acknowledged once the bus stored its update, rejected to the dead-letter exchange (when
//! one is set) or dropped when it cannot be mapped — never requeued forever.
//!
//! Its update's id is `urn:tidings:<consumer>:<message id>` when the publisher set the
//! message's `message-id` property (Spring AMQP does with `setCreateMessageIds(true)`): a
//! redelivery after a crash is then stored once. Without one, RabbitMQ can tell a redelivery
//! (its `redelivered` flag) but not which message it repeats: it gets a fresh id, and is
//! counted (`outcome="redelivered"`) besides being published.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use super::mapping::Message;
use super::pattern::Pattern;
use super::run::{Farewell, Handled, Handler};
use super::spec::AmqpSource;
use crate::bus::reconnect::{self, Stop};
use crate::bus::{with_limit, BusError, Cause, Kind};
use crate::update::UpdateId;

/// Messages RabbitMQ may send this consumer before it acknowledges them.
const PREFETCH: u16 = 64;
/// How often the shared queue's depth is read (`tidings_consumer_lag`).
const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// Heartbeat interval asked of RabbitMQ unless the URL sets one, in seconds.
const HEARTBEAT_SECS: u16 = 5;

/// The connection a consumer's reconnect machine drives.
pub(super) struct Target {
    source: AmqpSource,
    patterns: Vec<Pattern>,
    handler: Arc<Handler>,
    timeout: Duration,
}

impl Target {
    pub(super) fn new(source: AmqpSource, handler: Arc<Handler>, timeout: Duration) -> Self {
        let patterns = source
            .routing_keys
            .iter()
            .map(|k| Pattern::amqp(k))
            .collect();
        Target {
            source,
            patterns,
            handler,
            timeout,
        }
    }

    /// One operation on RabbitMQ, with the bus's time limit, its failure saying `what` this
    /// consumer was doing.
    async fn timed<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, lapin::Error>>,
    ) -> Result<T, BusError> {
        with_limit(Kind::Amqp, self.timeout, f)
            .await
            .map_err(|e| e.context(format_args!("consumer {}: {what}", self.handler.name)))
    }
}

/// An open connection and the consumer reading the shared queue.
pub(super) struct Link {
    _connection: Connection,
    /// The channel the consumer reads on (and the queue's depth is asked on).
    channel: lapin::Channel,
    consumer: lapin::Consumer,
}

/// The broker gives the unacknowledged messages back when the connection closes: when the
/// process exits (see [`keep_until_exit`]).
impl Farewell for Target {}

/// The links of consumers that stopped (the instance drains), held until the process exits.
static DRAINED: std::sync::Mutex<Vec<Link>> = std::sync::Mutex::new(Vec::new());

/// Sets a drained consumer's link aside, open, until the process exits: the socket then
/// closes under it as a killed reader's does, and RabbitMQ gives its unacknowledged messages
/// back and hands the queue to the next instance. Closing it gracefully instead (dropping it
/// cancels the consumer first, and a channel's close cancels its consumers too) crashes a
/// classic queue with a single active consumer when messages are in flight (RabbitMQ 3.10 and
/// 3.11, rabbitmq-server#5460): the queue restarts having lost what it held, and the next
/// instance reads nothing more. The handover thus waits for the end of the drain.
fn keep_until_exit(link: Link) {
    crate::locks::lock(&DRAINED).push(link);
}

impl reconnect::Target for Target {
    type Connection = Link;

    async fn connect(&mut self) -> Result<Link, BusError> {
        let mut uri = self.source.uri.clone();
        uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("tidings consumer {}", self.handler.name).into());
        let connection = self
            .timed("cannot connect", Connection::connect_uri(uri, properties))
            .await?;
        let channel = self
            .timed("cannot open a channel", connection.create_channel())
            .await?;
        let exchange = self.source.exchange.as_str();
        // The exchange is the publishers': it must exist, and is not declared here.
        self.timed(
            &format!("the exchange {exchange:?} does not exist (the services' exchange: check exchange=)"),
            channel.exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        // One instance reads at a time (RabbitMQ's single active consumer), the others stand
        // by and take over when it goes: the queue's order is the updates' order, which
        // competing consumers would not keep.
        let mut arguments = FieldTable::default();
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        if let Some(dlx) = &self.source.dead_letter_exchange {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
        }
        let queue = self.source.queue.as_str();
        self.timed(
            &format!("cannot declare the shared queue {queue:?}"),
            channel.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            ),
        )
        .await?;
        for key in &self.source.routing_keys {
            self.timed(
                &format!("cannot bind {queue:?} to {exchange:?}"),
                channel.queue_bind(
                    queue.into(),
                    exchange.into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        self.timed(
            "cannot set the prefetch",
            channel.basic_qos(PREFETCH, BasicQosOptions::default()),
        )
        .await?;
        let consumer = self
            .timed(
                &format!("cannot consume {queue:?}"),
                channel.basic_consume(
                    queue.into(),
                    ShortString::from(format!("tidings {}", self.handler.name)),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        tracing::info!(consumer = %self.handler.name, exchange, queue, "consumer: reading");
        Ok(Link {
            _connection: connection,
            channel,
            consumer,
        })
    }

    async fn deliver(&mut self, mut link: Link) -> Stop {
        let mut depth = tokio::time::interval(DEPTH_EVERY);
        depth.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Held for as long as the link is read, not only while a message is handled: on a
        // drain, the link must be set aside (below) before the run is dropped, and the drain
        // waits for this lock. Nothing else holds it while a link is read, unless the drain
        // came as this one was opened: then it is set aside at once. (A drain that comes while
        // the consumer is being registered still drops it: a window of one round trip.)
        let Ok(busy) = self.handler.busy.clone().try_lock_owned() else {
            keep_until_exit(link);
            return std::future::pending().await;
        };
        loop {
            let delivery = tokio::select! {
                () = self.handler.stop.cancelled() => None,
                delivery = link.consumer.next() => Some(delivery),
                _ = depth.tick() => {
                    // The messages ready in the shared queue (a passive declare only reads it).
                    let queue = self.source.queue.as_str();
                    let declared = link.channel.queue_declare(
                        queue.into(),
                        QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                        FieldTable::default(),
                    );
                    match self.timed("cannot read the queue's depth", declared).await {
                        Ok(queue) => self.handler.lag(u64::from(queue.message_count())),
                        Err(e) => return self.handler.lost("the channel failed", e),
                    }
                    continue;
                }
            };
            let Some(delivery) = delivery else {
                keep_until_exit(link);
                drop(busy);
                return std::future::pending().await;
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return self.handler.lost("reading the queue failed", e),
                None => return Stop::Lost(Cause::new("RabbitMQ cancelled the consumer")),
            };
            if self.handler.stop.is_cancelled() {
                // Not acknowledged: RabbitMQ gives it to another instance.
                continue;
            }
            let name = delivery.routing_key.as_str();
            let captures = self
                .patterns
                .iter()
                .find_map(|p| p.captures(name))
                .unwrap_or_default();
            let message = Message {
                body: &delivery.data,
                name,
                captures,
                key: None,
            };
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned());
            if delivery.redelivered && message_id.is_none() {
                self.handler.count("redelivered");
            }
            let place = format!("delivery {} on {name:?}", delivery.delivery_tag);
            let consumer = self.handler.name.clone();
            let id = move || match message_id {
                Some(id) => UpdateId::derived(format!("{consumer}:{id}")),
                None => UpdateId::generate(),
            };
            let settled = match self.handler.handle(&message, &place, id).await {
                Handled::Published => delivery.acker.ack(BasicAckOptions::default()).await,
                Handled::Skipped if self.source.dead_letter_exchange.is_some() => {
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await
                }
                Handled::Skipped => delivery.acker.ack(BasicAckOptions::default()).await,
                Handled::Stopped => continue,
            };
            if let Err(e) = settled {
                return self.handler.lost("acknowledging a message failed", e);
            }
        }
    }
}
