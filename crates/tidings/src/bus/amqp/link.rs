//! The RabbitMQ bus's connection: declaring the cluster's objects, reading deliveries into the
//! hub, and starting over after a failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use super::{
    failed, header_int, header_text, lock, timed, unavailable, write_marker, Catching, Shared,
    MARKER_HEADER, TIME_HEADER,
};
use crate::bus::reconnect::{self, Stop};
use crate::bus::{BusError, BusOptions, Cause};
use crate::envelope::Position;

/// Heartbeat interval asked of RabbitMQ unless the URL sets one, in seconds.
pub(super) const HEARTBEAT_SECS: u16 = 5;
/// How long reading may make no progress while waiting for a marker before the stream counts
/// as lost.
pub(super) const IDLE_LIMIT: Duration = Duration::from_secs(5);
/// Deliveries RabbitMQ may send before they are acknowledged (a stream consumer needs a
/// limit).
const PREFETCH: u16 = 1000;
/// Stream deliveries are acknowledged (which only gives credit) in batches of this many.
const ACK_EVERY: u32 = 100;
/// The smallest retention a stream gets, in bytes.
const MIN_STREAM_BYTES: u64 = 64 << 20;
/// RabbitMQ's default (and largest sensible) stream segment, in bytes.
const MAX_SEGMENT_BYTES: u64 = 500_000_000;

/// What a connection needs to know, fixed at start-up.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    uri: lapin::uri::AMQPUri,
    instance_id: String,
    history_size: usize,
    /// The stream's retention: age in seconds, and size in bytes.
    max_age_secs: u64,
    max_bytes: u64,
}

impl Settings {
    pub(super) fn new(uri: lapin::uri::AMQPUri, options: &BusOptions) -> Self {
        let per_update = options.limits.max_body_bytes as u64;
        Settings {
            uri,
            instance_id: options.instance_id.clone(),
            history_size: options.history_size,
            // RabbitMQ removes whole segments, so the stream keeps at least this long.
            max_age_secs: match options.history_ttl_secs {
                0 => options.history_id_ttl_secs.max(1),
                ttl => ttl,
            },
            max_bytes: (options.history_size as u64)
                .saturating_mul(per_update)
                .max(MIN_STREAM_BYTES),
        }
    }

    /// The arguments a new stream is declared with: its type and retention (history-ttl, or
    /// history-id-ttl without an age limit, and room for history-size updates of the largest
    /// size).
    fn stream_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        arguments.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{}s", self.max_age_secs).into()),
        );
        arguments.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.max_bytes).unwrap_or(i64::MAX)),
        );
        let segment = (self.max_bytes / 4).clamp(1 << 20, MAX_SEGMENT_BYTES);
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(segment).unwrap_or(i64::MAX)),
        );
        arguments
    }
}

/// Where reading the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// At start-up: the last `history-size` updates, to serve resumes from.
    Fresh,
    /// After a reconnect: right after the last offset read.
    Resume,
    /// After the stream was lost: its first offset.
    Over,
}

/// Why delivery stopped.
enum Stopped {
    /// The connection or the consumer failed: connect again and resume.
    Failed(BusError),
    /// The stream does not reach the offset this instance reads from: RabbitMQ lost it.
    Lost,
}

/// One live connection with its channels.
pub(super) struct Link {
    connection: Connection,
    publisher: Channel,
    consumer: Consumer,
    /// Reads the control plane's signals.
    control: Consumer,
    start: Start,
}

impl Link {
    /// Connects, declares the exchange and the queue this instance reads, binds it, and starts
    /// consuming it.
    pub(super) async fn establish(
        shared: &Arc<Shared>,
        settings: &Settings,
        start: Start,
    ) -> Result<Link, BusError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("tidings {}", settings.instance_id).into());
        let connection = match tokio::time::timeout(
            shared.timeout,
            Connection::connect_uri(settings.uri.clone(), properties),
        )
        .await
        {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) if refused(&e) => {
                let what = format!("RabbitMQ refused the connection: {e}");
                return Err(BusError::Config(Cause::caused_by(what, e)));
            }
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer within {:?}",
                    shared.timeout
                )))
            }
        };
        let setup = timed(shared.timeout, connection.create_channel()).await?;
        let exchange = shared.names.exchange.as_str();
        timed(
            shared.timeout,
            setup.exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|e| declaring("the exchange", exchange, e))?;
        let queue = match &shared.stream {
            Some(stream) => {
                // A stream that exists with other retention (set by an earlier
                // configuration, or changed by a policy) is used as it is.
                let declared = timed(
                    shared.timeout,
                    setup.queue_declare(
                        stream.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        settings.stream_arguments(),
                    ),
                )
                .await;
                // A refused declaration closes its channel.
                let setup = match declared {
                    Ok(_) => setup,
                    Err(e) => {
                        let channel = timed(shared.timeout, connection.create_channel()).await?;
                        timed(
                            shared.timeout,
                            channel.queue_declare(
                                stream.as_str().into(),
                                QueueDeclareOptions {
                                    passive: true,
                                    ..QueueDeclareOptions::default()
                                },
                                FieldTable::default(),
                            ),
                        )
                        .await
                        .map_err(|_| declaring("the stream", stream, e.clone()))?;
                        tracing::warn!(stream, error = %e, "rabbitmq: the stream exists with other settings; using it as it is");
                        channel
                    }
                };
                bind(&setup, stream, exchange, shared.timeout).await?;
                stream.clone()
            }
            None => {
                let queue = shared.names.instance_queue(&settings.instance_id);
                timed(
                    shared.timeout,
                    setup.queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    ),
                )
                .await
                .map_err(|e| declaring("this instance's queue", &queue, e))?;
                bind(&setup, &queue, exchange, shared.timeout).await?;
                queue
            }
        };
        let control = listen_for_signals(&connection, shared).await?;
        let publisher = timed(shared.timeout, connection.create_channel()).await?;
        timed(
            shared.timeout,
            publisher.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let reader = timed(shared.timeout, connection.create_channel()).await?;
        timed(
            shared.timeout,
            reader.basic_qos(PREFETCH, BasicQosOptions::default()),
        )
        .await?;
        let mut arguments = FieldTable::default();
        let mut start = start;
        if shared.stream.is_some() {
            let last = lock(&shared.delivered).log.last();
            let offset = match (start, last) {
                (Start::Resume, Some(last)) => AMQPValue::LongLongInt(offset_arg(last + 1)),
                (Start::Over, _) => AMQPValue::LongString("first".into()),
                (Start::Fresh | Start::Resume, _) => {
                    start = Start::Fresh;
                    let head = head_offset(&connection, &publisher, &queue, shared.timeout).await?;
                    let from = head.saturating_sub(settings.history_size as u64);
                    AMQPValue::LongLongInt(offset_arg(from))
                }
            };
            arguments.insert("x-stream-offset".into(), offset);
        }
        let consumer = timed(
            shared.timeout,
            reader.basic_consume(
                queue.as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: shared.stream.is_none(),
                    ..BasicConsumeOptions::default()
                },
                arguments,
            ),
        )
        .await?;
        Ok(Link {
            connection,
            publisher,
            consumer,
            control,
            start,
        })
    }

    /// Hands every delivery to the hub until the connection fails; opens publishing once
    /// this instance has read everything the stream held when it connected.
    async fn deliver(&mut self, shared: &Shared) -> Stopped {
        let catch_up = shared.catch_up(&self.publisher);
        tokio::pin!(catch_up);
        let mut caught_up = false;
        let mut unacked = 0u32;
        loop {
            tokio::select! {
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        shared.take(&delivery);
                        if shared.stream.is_some() {
                            unacked += 1;
                            if unacked >= ACK_EVERY {
                                unacked = 0;
                                let multiple = BasicAckOptions { multiple: true };
                                if let Err(e) = delivery.acker.ack(multiple).await {
                                    return Stopped::Failed(failed(e));
                                }
                            }
                        }
                    }
                    Some(Err(e)) => return Stopped::Failed(failed(e)),
                    None => return Stopped::Failed(unavailable("the consumer was cancelled")),
                },
                signal = self.control.next() => match signal {
                    Some(Ok(delivery)) => shared.hub.receive_signal(delivery.data.into()),
                    Some(Err(e)) => return Stopped::Failed(failed(e)),
                    None => return Stopped::Failed(unavailable("the signals' consumer was cancelled")),
                },
                result = &mut catch_up, if !caught_up => match result {
                    Ok(()) => {
                        caught_up = true;
                        shared.publishing.set(Some(self.publisher.clone()));
                        tracing::info!("rabbitmq: connected, and caught up with the stream");
                    }
                    // Only a resume reads from an offset that may not exist.
                    Err(Catching::Lost) if self.start == Start::Resume => return Stopped::Lost,
                    Err(Catching::Lost) => {
                        return Stopped::Failed(unavailable("reading the stream stalled"))
                    }
                    Err(Catching::Failed(e)) => return Stopped::Failed(e),
                },
            }
        }
    }
}

/// Declares the control plane's exchange, and a queue of this connection's own bound to it
/// (named by RabbitMQ, deleted with the connection: signals are for who listens now), and
/// consumes it.
async fn listen_for_signals(
    connection: &Connection,
    shared: &Shared,
) -> Result<Consumer, BusError> {
    let channel = timed(shared.timeout, connection.create_channel()).await?;
    let exchange = shared.names.control.as_str();
    timed(
        shared.timeout,
        channel.exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|e| declaring("the signals' exchange", exchange, e))?;
    let queue = timed(
        shared.timeout,
        channel.queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|e| declaring("the signals' queue", "", e))?;
    let queue = queue.name().as_str().to_owned();
    bind(&channel, &queue, exchange, shared.timeout).await?;
    timed(
        shared.timeout,
        channel.basic_consume(
            queue.as_str().into(),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

fn offset_arg(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

fn declaring(what: &str, name: &str, e: BusError) -> BusError {
    e.context(format_args!("cannot declare {what} {name:?}"))
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    timeout: Duration,
) -> Result<(), BusError> {
    timed(
        timeout,
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            ShortString::from(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|e| declaring("the binding of", queue, e))
}

/// An offset at or just before the stream's head: writes a marker (so the stream is not
/// empty), then reads the first offset of its last chunk.
async fn head_offset(
    connection: &Connection,
    publisher: &Channel,
    stream: &str,
    timeout: Duration,
) -> Result<u64, BusError> {
    // Nobody waits for this one: every instance skips it.
    write_marker(publisher, stream, "start", timeout).await?;
    let probe = timed(timeout, connection.create_channel()).await?;
    timed(timeout, probe.basic_qos(1, BasicQosOptions::default())).await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("last".into()),
    );
    let mut consumer = timed(
        timeout,
        probe.basic_consume(
            stream.into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            arguments,
        ),
    )
    .await?;
    let first = match tokio::time::timeout(timeout, consumer.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => return Err(failed(e)),
        Ok(None) | Err(_) => return Err(unavailable("the stream's head could not be read")),
    };
    let _ = timed(timeout, probe.close(200, "done".into())).await;
    header_int(first.properties.headers().as_ref(), "x-stream-offset")
        .and_then(|o| u64::try_from(o).ok())
        .ok_or_else(|| unavailable("a stream delivery without its offset"))
}

impl Shared {
    /// Takes one delivery: skips markers (waking whoever waits for them) and malformed
    /// messages, and hands updates to the hub in order.
    fn take(&self, delivery: &Delivery) {
        self.progress.fetch_add(1, Ordering::Relaxed);
        let headers = delivery.properties.headers().as_ref();
        let mut delivered = lock(&self.delivered);
        let position = match &self.stream {
            Some(_) => {
                let Some(offset) =
                    header_int(headers, "x-stream-offset").and_then(|o| u64::try_from(o).ok())
                else {
                    tracing::warn!("rabbitmq: a stream delivery without its offset; skipped");
                    return;
                };
                match delivered.log.advance(offset, &self.hub) {
                    Some(position) => position,
                    // Already delivered (a consumer started again at an earlier chunk).
                    None => return,
                }
            }
            None => {
                let number = delivered.next_local;
                delivered.next_local += 1;
                Position(number)
            }
        };
        if let Some(token) = header_text(headers, MARKER_HEADER) {
            drop(delivered);
            if let Some(seen) = lock(&self.markers).remove(&token) {
                let _ = seen.send(());
            }
            return;
        }
        let micros = header_int(headers, TIME_HEADER)
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0);
        delivered
            .log
            .deliver(&self.hub, position, &delivery.data, micros);
    }
}

/// True when RabbitMQ refused this instance for a reason retrying cannot cure: its
/// credentials (`ACCESS_REFUSED`), its vhost (`NOT_ALLOWED`), its protocol version, or a TLS
/// certificate this machine does not trust.
fn refused(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
        ),
        lapin::ErrorKind::InvalidProtocolVersion(_) | lapin::ErrorKind::AuthProviderError(_) => {
            true
        }
        lapin::ErrorKind::IOError(io) => crate::bus::broker::is_certificate_error(io.as_ref()),
        _ => false,
    }
}

/// The connection task's part: what connecting again and delivering mean on RabbitMQ.
pub(super) struct Target {
    pub(super) shared: Arc<Shared>,
    pub(super) settings: Settings,
    /// Where the next connection starts reading the stream.
    pub(super) start: Start,
}

impl reconnect::Target for Target {
    type Connection = Link;

    async fn connect(&mut self) -> Result<Link, BusError> {
        let link = Link::establish(&self.shared, &self.settings, self.start).await?;
        if self.shared.stream.is_none() {
            self.shared.hub.metrics().bus_gaps.inc();
            tracing::warn!(
                "rabbitmq: reconnected without history: what was published while disconnected is lost for this instance"
            );
        }
        Ok(link)
    }

    async fn deliver(&mut self, mut link: Link) -> Stop {
        let stopped = link.deliver(&self.shared).await;
        self.shared.publishing.set(None);
        let reason = match stopped {
            Stopped::Failed(e) => {
                self.start = Start::Resume;
                e.cause().clone()
            }
            Stopped::Lost => {
                self.shared.hub.metrics().bus_gaps.inc();
                lock(&self.shared.delivered).log.lost();
                self.start = Start::Over;
                Cause::new(
                    "the stream is shorter than what this instance read (RabbitMQ lost it); reading it again from its start",
                )
            }
        };
        let _ = tokio::time::timeout(
            self.shared.timeout,
            link.connection.close(200, "reconnecting".into()),
        )
        .await;
        Stop::Lost(reason)
    }
}
