//! The delivery task: an ordered consumer of the whole stream, from after the last message this
//! instance read, handing each message to the hub through the log's rules (`bus/log.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, stream};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::{next_sequence, offset, published_at, stream_lost, timed, Delivered};
use crate::bus::reconnect::{self, Stop};
use crate::bus::{BusError, Cause};
use crate::hub::Hub;

/// The delivery task: an ordered consumer of the whole stream from where this instance is.
pub(super) struct Reader {
    pub(super) js: jetstream::Context,
    /// The stream's configuration, to create it again if NATS lost it.
    pub(super) config: stream::Config,
    pub(super) stream: stream::Stream,
    pub(super) filter: String,
    pub(super) hub: Hub,
    /// Where this instance is in the stream, and what it delivered.
    pub(super) delivered: Arc<Delivered>,
    /// Changes at each reconnection to NATS.
    pub(super) connections: watch::Receiver<u64>,
    /// How long one operation may take.
    pub(super) timeout: Duration,
}

/// The client reconnects by itself (with the same backoff); delivery follows it at once
/// ([`Stop::Reconnected`]), and waits only after a failure of its own.
impl reconnect::Target for Reader {
    type Connection = pull::Ordered;

    /// An ordered consumer of the stream from after the last message read.
    async fn connect(&mut self) -> Result<pull::Ordered, BusError> {
        self.connections.borrow_and_update();
        // A NATS that lost its store (restarted without persistence) lost the stream too:
        // create it again, and start over from its beginning.
        self.stream = timed(
            self.timeout,
            self.js.get_or_create_stream(self.config.clone()),
        )
        .await?;
        let head = timed(self.timeout, self.stream.get_info())
            .await?
            .state
            .last_sequence;
        let start_sequence = {
            let mut log = self.delivered.log();
            if stream_lost(head, log.last()) {
                self.hub.metrics().bus_gaps.inc();
                tracing::warn!(
                    last = next_sequence(log.last()) - 1,
                    head,
                    "nats: the stream is newer than what this instance delivered (NATS lost it); updates in between are lost"
                );
                log.lost();
            }
            next_sequence(log.last())
        };
        let consumer = timed(
            self.timeout,
            self.stream.create_consumer(pull::OrderedConfig {
                filter_subject: self.filter.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
                ..Default::default()
            }),
        )
        .await?;
        timed(self.timeout, consumer.messages()).await
    }

    async fn deliver(&mut self, mut messages: pull::Ordered) -> Stop {
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = self.connections.changed() => {
                    tracing::info!("nats: reconnected; resuming delivery after the last update");
                    return Stop::Reconnected;
                }
            };
            let Some(message) = message else {
                return Stop::Lost(Cause::new("nats: the delivery consumer ended"));
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    // The ordered consumer recreates itself; say so and go on.
                    tracing::warn!(error = %e, "nats: delivery interrupted");
                    continue;
                }
            };
            let Ok(info) = message.info() else { continue };
            let sequence = info.stream_sequence;
            let micros = published_at(message.headers.as_ref());
            {
                let mut log = self.delivered.log();
                // `None`: delivered already (an ordered consumer recreated before its first
                // message may start over from the stream's beginning). A sequence past the
                // next is a gap: trimmed before this instance read it.
                let Some(position) = log.advance(offset(sequence), &self.hub) else {
                    continue;
                };
                log.deliver(&self.hub, position, &message.payload, micros);
            }
            self.delivered.last.send_replace(sequence);
        }
    }
}
