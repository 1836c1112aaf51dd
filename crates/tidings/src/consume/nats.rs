//! Consuming NATS: core subjects through a queue group, or a JetStream stream through a
//! durable consumer.
//!
//! - **Core NATS** (`subject=…`): the instances join one queue group, so NATS hands each
//!   message to one of them. Core NATS keeps nothing: a message in flight to an instance that
//!   dies, or published while none is connected, is lost — at most once, as for any core
//!   subscriber — and two messages handed to two instances may be stored in either order.
//! - **JetStream** (`stream=…`): one durable pull consumer, shared by the instances, with
//!   explicit acknowledgement and at most one message unacknowledged: the stream's order is the
//!   updates' order whichever instance reads, and a message is acknowledged once the bus stored
//!   its update. One that an instance took and did not acknowledge (it died) is redelivered
//!   after the acknowledgement wait to another, and its id, `urn:tidings:<consumer>:<stream
//!   created>.<sequence>`, makes a second store of it the idempotent retry of the first.
//!   While the bus retries a store, the instance tells JetStream it is still working on it.
//!
//! Either way, a message with a `Nats-Msg-Id` header (JetStream's publisher deduplication id)
//! takes its id from it: `urn:tidings:<consumer>:<Nats-Msg-Id>`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::mapping::Message;
use super::pattern::Pattern;
use super::run::{Farewell, Handled, Handler};
use super::spec::NatsSource;
use crate::bus::reconnect::{self, Stop};
use crate::bus::{with_limit, BusError, Cause, Kind};
use crate::update::UpdateId;

/// How long JetStream waits for an acknowledgement before it hands a message to another
/// instance: the delay a message sees when the instance handling it dies.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// The connection a consumer's reconnect machine drives.
pub(super) struct Target {
    source: NatsSource,
    pattern: Option<Pattern>,
    handler: Arc<Handler>,
    timeout: Duration,
    backoff: crate::bus::reconnect::Backoff,
}

/// A connection, and what it reads.
pub(super) struct Link {
    _client: async_nats::Client,
    /// Whether the client lost its connection (it would reconnect by itself; the consumer
    /// reconnects through the shared machine instead, so that `/readyz` and the reconnect
    /// count say so).
    disconnected: watch::Receiver<bool>,
    reading: Reading,
}

enum Reading {
    Core(async_nats::Subscriber),
    JetStream {
        messages: Box<pull::Stream>,
        /// The stream's creation time, in seconds: part of the ids, so that a stream deleted
        /// and created again (its sequences starting over) gives new ones.
        created: i64,
    },
}

impl Target {
    pub(super) fn new(
        source: NatsSource,
        handler: Arc<Handler>,
        timeout: Duration,
        backoff: crate::bus::reconnect::Backoff,
    ) -> Self {
        let pattern = source.subject.as_deref().map(Pattern::nats);
        Target {
            source,
            pattern,
            handler,
            timeout,
            backoff,
        }
    }

    /// One operation on NATS, with the bus's time limit, its failure saying `what` this
    /// consumer was doing.
    async fn timed<T, E>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, BusError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        with_limit(Kind::Nats, self.timeout, f)
            .await
            .map_err(|e| e.context(format_args!("consumer {}: {what}", self.handler.name)))
    }

    /// Maps and publishes one message; `id` names it when neither the mapping nor a
    /// `Nats-Msg-Id` header does.
    async fn handle(
        &self,
        message: &async_nats::Message,
        place: &str,
        id: impl FnOnce() -> UpdateId,
    ) -> Handled {
        let name = message.subject.as_str();
        let captures = self
            .pattern
            .as_ref()
            .and_then(|p| p.captures(name))
            .unwrap_or_default();
        let mapped = Message {
            body: &message.payload,
            name,
            captures,
            key: None,
        };
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned());
        let consumer = &self.handler.name;
        let id = || match msg_id {
            Some(msg_id) => UpdateId::derived(format!("{consumer}:{msg_id}")),
            None => id(),
        };
        self.handler.handle(&mapped, place, id).await
    }

    /// Handles a core NATS message.
    async fn core(&self, message: async_nats::Message) {
        let place = format!("message on {:?}", message.subject.as_str());
        self.handle(&message, &place, UpdateId::generate).await;
    }

    /// Handles a JetStream message and acknowledges it.
    async fn jetstream(&self, message: jetstream::Message, created: i64) -> Option<Stop> {
        let Ok(info) = message.info() else {
            // Not a JetStream delivery: nothing to acknowledge, nothing to map.
            return None;
        };
        let sequence = info.stream_sequence;
        self.handler.lag(info.pending);
        let place = format!("sequence {sequence} of stream {:?}", info.stream);
        let consumer = self.handler.name.clone();
        let id = move || UpdateId::derived(format!("{consumer}:{created}.{sequence}"));
        // While the bus retries, JetStream hears that the message is still being handled.
        let handled = {
            let handle = self.handle(&message.message, &place, id);
            tokio::pin!(handle);
            let mut working = tokio::time::interval(ACK_WAIT / 3);
            working.reset();
            loop {
                tokio::select! {
                    handled = &mut handle => break handled,
                    _ = working.tick() => {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            }
        };
        let settled = match handled {
            Handled::Published => message.ack().await,
            // Never redelivered; JetStream announces it on
            // $JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.<stream>.<consumer>.
            Handled::Skipped => message.ack_with(AckKind::Term).await,
            // Handed to another instance at once, rather than after the wait.
            Handled::Stopped => message.ack_with(AckKind::Nak(None)).await,
        };
        settled.err().map(|e| {
            Stop::Lost(Cause::new(format!(
                "consumer {}: acknowledging sequence {sequence} failed: {e}",
                self.handler.name
            )))
        })
    }
}

/// A message read.
enum Read {
    Core(async_nats::Message),
    JetStream(Box<jetstream::Message>, i64),
}

impl Reading {
    /// The next message, or why there is none.
    async fn next(&mut self) -> Result<Read, String> {
        match self {
            Reading::Core(subscriber) => subscriber
                .next()
                .await
                .map(Read::Core)
                .ok_or_else(|| "the subscription ended".to_owned()),
            Reading::JetStream { messages, created } => match messages.next().await {
                Some(Ok(message)) => Ok(Read::JetStream(Box::new(message), *created)),
                Some(Err(e)) => Err(format!("reading the stream failed: {e}")),
                None => Err("the stream's consumer ended".to_owned()),
            },
        }
    }
}

/// The message being handled was given back (`-NAK`) as it stopped; core NATS keeps nothing.
impl Farewell for Target {}

impl reconnect::Target for Target {
    type Connection = Link;

    async fn connect(&mut self) -> Result<Link, BusError> {
        let (disconnected_tx, disconnected) = watch::channel(false);
        let backoff = self.backoff;
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(self.timeout)
            .reconnect_delay_callback(move |attempts| backoff.delay(attempts as u32))
            .event_callback(move |event| {
                let disconnected = disconnected_tx.clone();
                async move {
                    if let async_nats::Event::Disconnected = event {
                        disconnected.send_replace(true);
                    }
                }
            })
            .connect(self.source.url.as_str());
        let client = self.timed("cannot connect", Box::pin(connect)).await?;
        let reading = match &self.source.stream {
            None => {
                let subject = self.source.subject.clone().unwrap_or_default();
                let subscriber = self
                    .timed(
                        "cannot subscribe",
                        client.queue_subscribe(subject, self.source.queue.clone()),
                    )
                    .await?;
                Reading::Core(subscriber)
            }
            Some(stream_name) => {
                let mut js = jetstream::new(client.clone());
                js.set_timeout(self.timeout);
                let mut stream = self
                    .timed("cannot find the stream", js.get_stream(stream_name))
                    .await?;
                let created = self
                    .timed("cannot read the stream", stream.info())
                    .await?
                    .created
                    .unix_timestamp();
                let config = pull::Config {
                    durable_name: Some(self.source.durable.clone()),
                    description: Some(format!("Tidings consumer {}", self.handler.name)),
                    filter_subject: self.source.subject.clone().unwrap_or_default(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    // One at a time, whichever instance asks: the stream's order.
                    max_ack_pending: 1,
                    // The first time, what is published from now on.
                    deliver_policy: DeliverPolicy::New,
                    ..Default::default()
                };
                let consumer = self
                    .timed(
                        "cannot create its durable consumer",
                        stream.create_consumer(config),
                    )
                    .await?;
                let messages = self
                    .timed("cannot read from its durable consumer", consumer.messages())
                    .await?;
                Reading::JetStream {
                    messages: Box::new(messages),
                    created,
                }
            }
        };
        tracing::info!(consumer = %self.handler.name, "consumer: connected");
        Ok(Link {
            _client: client,
            disconnected,
            reading,
        })
    }

    async fn deliver(&mut self, mut link: Link) -> Stop {
        loop {
            let read = tokio::select! {
                () = self.handler.stop.cancelled() => return std::future::pending().await,
                () = async {
                    let _ = link.disconnected.wait_for(|d| *d).await;
                } => Err("NATS closed the connection".to_owned()),
                read = link.reading.next() => read,
            };
            let read = match read {
                Ok(read) => read,
                Err(why) => {
                    return Stop::Lost(Cause::new(format!("consumer {}: {why}", self.handler.name)))
                }
            };
            let _busy = self.handler.busy.lock().await;
            match read {
                // (Core NATS would not give it to another: handled even while stopping.)
                Read::Core(message) => self.core(message).await,
                Read::JetStream(message, _) if self.handler.stop.is_cancelled() => {
                    // Handed to another instance at once, rather than after the wait.
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                Read::JetStream(message, created) => {
                    if let Some(stop) = self.jetstream(*message, created).await {
                        return stop;
                    }
                }
            }
        }
    }
}
