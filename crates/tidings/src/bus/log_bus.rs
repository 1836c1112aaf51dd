//! The bus around a log that every instance reads whole (`log`): RabbitMQ's stream, Kafka's
//! partition. What it publishes through is open only while the connection is up and has
//! caught up with the log; a resume is served from what the instance read, after reading up
//! to now when the id is not there yet; the connection task is the one reconnect machine's.
//! Each broker says the rest ([`LogBroker`]): how to publish, how to catch up, where it keeps
//! what it read.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::broker::Publishing;
use super::history::LocalHistory;
use super::reconnect::{Reconnect, Target};
use super::{Bus, BusError, Cause, ConnectionState, Kind, Published, Registry, Replay, ReplayFrom};
use crate::update::Update;

/// What a bus that reads a log says of its broker: how to publish through it, how to catch up
/// with it, where it keeps what it read. The rest is [`LogBus`]'s.
pub(super) trait LogBroker: Send + Sync + std::fmt::Debug + 'static {
    /// The bus's kind.
    const KIND: Kind;

    /// What publishes go through (a channel, a partition client).
    type Publisher: Clone + Send + Sync;

    /// Open while the connection is up and has caught up with the log: the connection task
    /// opens and closes it.
    fn publishing(&self) -> &Publishing<Self::Publisher>;

    /// Whether `publisher`, handed out while publishing was open, can still be used (a
    /// channel whose connection closed under it cannot).
    fn usable(publisher: &Self::Publisher) -> bool;

    /// Publishes `update` through `publisher` (see [`Bus::publish`]).
    fn publish(
        &self,
        publisher: Self::Publisher,
        update: Update,
    ) -> impl Future<Output = Result<Published, BusError>> + Send;

    /// Returns once this instance read everything the log held when called, so that an
    /// update published through another instance is known here.
    fn read_up_to_now(
        &self,
        publisher: Self::Publisher,
    ) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Runs `read` on what this instance delivered, under the lock its delivery holds.
    fn history<T>(&self, read: impl FnOnce(&mut LocalHistory) -> T) -> T;

    /// Whether a new connection reads on from where the last one stopped (the log is read by
    /// offset): a subscriber may then start while the connection is down, since nothing
    /// published meanwhile will be missed.
    fn resumes(&self) -> bool;

    /// Sends a signal of the control plane through `publisher` (see [`Bus::signal`]).
    fn signal(
        &self,
        publisher: Self::Publisher,
        signal: bytes::Bytes,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// A bus that reads a log, with its connection task. Dropping it stops the task.
#[derive(Debug)]
pub(super) struct LogBus<B> {
    broker: Arc<B>,
    task: tokio::task::JoinHandle<()>,
}

impl<B> Drop for LogBus<B> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<B: LogBroker> LogBus<B> {
    /// Starts the connection task — `target` driven by `reconnect`, delivering first on
    /// `first`, the connection made at start-up — and returns once this instance has read
    /// what the log held, within `limit`: an instance serves only then.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when reading did not catch up in time.
    pub(super) async fn start<T: Target + 'static>(
        broker: Arc<B>,
        reconnect: Reconnect,
        target: T,
        first: T::Connection,
        limit: Duration,
    ) -> Result<Self, BusError> {
        let task = tokio::spawn(reconnect.run(target, Some(first)));
        let bus = LogBus { broker, task };
        match bus.broker.publishing().opened_within(limit).await {
            true => Ok(bus),
            false => Err(BusError::Unavailable(Cause::new(format!(
                "{}: connected, but reading what it holds did not catch up within {limit:?}",
                B::KIND.broker()
            )))),
        }
    }

    fn publisher(&self) -> Result<B::Publisher, BusError> {
        self.broker
            .publishing()
            .get()
            .filter(B::usable)
            .ok_or_else(|| super::broker::broker_error(B::KIND, "not connected"))
    }
}

#[async_trait]
impl<B: LogBroker> Bus for LogBus<B> {
    fn kind(&self) -> &'static str {
        B::KIND.name()
    }

    async fn publish(&self, update: Update) -> Result<Published, BusError> {
        let publisher = self.publisher()?;
        // An id this instance read on other topics is refused; anything else is appended as
        // before (a retry is skipped by every reader: the log keeps the first).
        if let Some(Err(conflict)) = self.broker.history(|history| {
            let stored = history.update_of(&update.id)?;
            Some(BusError::unless_retry(stored, &update))
        }) {
            return Err(conflict);
        }
        self.broker.publish(publisher, update).await
    }

    async fn listening(&self) -> Result<(), BusError> {
        // Every instance reads the whole log: connected, it hears everything.
        match self.broker.resumes() || self.publisher().is_ok() {
            true => Ok(()),
            false => Err(super::broker::broker_error(B::KIND, "not connected")),
        }
    }

    /// Serves a replay from what this instance read (see [`LocalHistory::replay`]).
    async fn replay(
        &self,
        from: &ReplayFrom,
        topics: Option<&[Arc<str>]>,
    ) -> Result<Replay, BusError> {
        if let ReplayFrom::After(id) = from {
            if self.broker.resumes() && !self.broker.history(|history| history.knows(id)) {
                // Maybe published through another instance, not read here yet: read up to
                // now before saying it is not in history.
                self.broker.read_up_to_now(self.publisher()?).await?;
            }
        }
        Ok(self.broker.history(|history| history.replay(from, topics)))
    }

    fn state(&self) -> ConnectionState {
        // Built only once connected: without a publisher it is reconnecting.
        match self.publisher() {
            Ok(_) => ConnectionState::Connected,
            Err(_) => ConnectionState::Reconnecting,
        }
    }

    fn registry(&self) -> Option<Arc<dyn Registry>> {
        None
    }

    async fn signal(&self, signal: bytes::Bytes) -> Result<(), BusError> {
        self.broker.signal(self.publisher()?, signal).await
    }
}
