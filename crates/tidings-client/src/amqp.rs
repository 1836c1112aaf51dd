//! Publishing straight onto a Tidings cluster's RabbitMQ, without HTTP (feature `amqp`).
//!
//! [`AmqpPublisher::publish`] publishes the update's wire-format message to the cluster's
//! fanout exchange with publisher confirms, exactly as an instance does for
//! `POST /.well-known/mercure`: when the call returns, RabbitMQ has it in the cluster's stream
//! (with history) or in every instance's queue. See `docs/wire-format.md`.
//!
//! ```no_run
//! use tidings_client::amqp::AmqpPublisher;
//! use tidings_client::Publication;
//!
//! # async fn example() -> Result<(), tidings_client::Error> {
//! let publisher =
//!     AmqpPublisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "tidings").await?;
//! let id = publisher
//!     .publish(&Publication::new("https://example.com/books/1").data("{}"))
//!     .await?;
//! println!("published {id}");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::{Error, Publication};

/// The message header carrying the publish time, in microseconds since the Unix epoch.
pub const TIME_HEADER: &str = "tidings-time";

/// The properties of an update's message: JSON, persistent, with the publish time (in
/// microseconds since the Unix epoch) in the [`TIME_HEADER`] header.
pub fn message_properties(published_at_micros: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        TIME_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(published_at_micros).unwrap_or(0)),
    );
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// Longest wait for RabbitMQ to connect or to confirm a publish.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A publisher onto one cluster's RabbitMQ (its URL and `--bus-prefix`, which names the
/// exchange). Cheap to clone; it connects again by itself after the connection was lost.
#[derive(Debug, Clone)]
pub struct AmqpPublisher {
    url: String,
    exchange: String,
    /// The confirm-mode channel, while its connection lives.
    channel: Arc<Mutex<Option<Channel>>>,
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::Broker(format!("{what}: {e}"))),
        Err(_) => Err(Error::Broker(format!(
            "{what}: no answer within {TIMEOUT:?}"
        ))),
    }
}

impl AmqpPublisher {
    /// Connects to the cluster's RabbitMQ (`amqp://user:pass@host:5672/vhost`, or `amqps://`).
    ///
    /// # Errors
    /// [`Error::Broker`] when the URL is not usable or RabbitMQ cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, Error> {
        let publisher = AmqpPublisher {
            url: url.to_owned(),
            exchange: prefix.to_owned(),
            channel: Arc::new(Mutex::new(None)),
        };
        let channel = publisher.open().await?;
        *publisher.channel.lock().await = Some(channel);
        Ok(publisher)
    }

    async fn open(&self) -> Result<Channel, Error> {
        let connection = timed(
            "cannot reach RabbitMQ",
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await?;
        let channel = timed("cannot open a channel", connection.create_channel()).await?;
        timed(
            "cannot enable confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(channel)
    }

    /// Publishes an update; returns its id (the publication's, or a new `urn:uuid:…`) once
    /// RabbitMQ confirmed it.
    ///
    /// Instances skip (and log) a message that breaks a rule of the wire format, as they would
    /// refuse it over HTTP.
    ///
    /// # Errors
    /// [`Error::Broker`] when RabbitMQ did not take it: unreachable, the exchange does not
    /// exist (no instance of the cluster ever started with this prefix), or nothing is bound
    /// to it (no instance runs and the cluster keeps no history).
    pub async fn publish(&self, publication: &Publication) -> Result<String, Error> {
        let id = publication
            .id
            .clone()
            .unwrap_or_else(|| format!("urn:uuid:{}", uuid::Uuid::new_v4()));
        let mut message = publication.clone();
        message.id = Some(id.clone());
        let mut slot = self.channel.lock().await;
        let channel = match slot.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.open().await?;
                *slot = Some(channel.clone());
                channel
            }
        };
        drop(slot);
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0));
        let properties = message_properties(micros);
        let confirmed = async {
            let confirm = timed(
                "publish",
                channel.basic_publish(
                    self.exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    message.wire_message().as_bytes(),
                    properties,
                ),
            )
            .await?;
            match timed("publish", confirm).await? {
                Confirmation::Ack(None) => Ok(id),
                Confirmation::Ack(Some(_)) => Err(Error::Broker(format!(
                    "nothing is bound to the exchange {:?}: no instance runs, and the cluster keeps no history",
                    self.exchange
                ))),
                Confirmation::Nack(_) => {
                    Err(Error::Broker("RabbitMQ did not take the update".into()))
                }
                Confirmation::NotRequested => {
                    Err(Error::Broker("the channel is not in confirm mode".into()))
                }
            }
        }
        .await;
        if confirmed.is_err() {
            // Start from a new connection next time.
            self.channel.lock().await.take();
        }
        confirmed
    }
}
