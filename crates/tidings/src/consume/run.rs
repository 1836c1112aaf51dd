//! Running consumers: each in a task of its own, around the shared reconnect machine; what
//! every source does with a message it read ([`Handler::handle`]: map, publish through the bus
//! until it is stored, count, log); and stopping them all when the instance drains, after the
//! message each is handling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::mapping::{Mapping, Message, Skip};
use super::spec::{ConsumeSpec, Source};
use crate::bus::reconnect::{Backoff, ConnectionState, Reconnect, Timeouts};
use crate::bus::{Bus, BusError};
use crate::metrics::Metrics;
use crate::update::{Limits, UpdateId};

/// What happened to a message.
#[derive(Debug)]
#[cfg_attr(
    not(any(feature = "amqp", feature = "redis", feature = "nats")),
    allow(dead_code)
)]
pub(super) enum Handled {
    /// Its update is stored (or was already: a redelivery of a message with an id).
    Published,
    /// It cannot become an update: drop it, or dead-letter it.
    Skipped,
    /// The instance is stopping before the bus took it: leave it to the source, which gives
    /// it to another consumer.
    Stopped,
}

/// What a consumer's source needs to hand its messages over.
#[derive(Debug)]
#[cfg_attr(
    not(any(feature = "amqp", feature = "redis", feature = "nats")),
    allow(dead_code)
)]
pub(super) struct Handler {
    /// The consumer's name.
    pub(super) name: String,
    mapping: Mapping,
    bus: Arc<dyn Bus>,
    limits: Limits,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    /// Cancelled when the instance stops consuming.
    pub(super) stop: CancellationToken,
    /// Held while a message is being handled: stopping waits for it.
    pub(super) busy: Arc<Mutex<()>>,
    /// When a skipped message was last logged, and how many were not since.
    quiet: std::sync::Mutex<(Option<Instant>, u64)>,
    /// Messages waiting in the source, as this instance last saw them.
    lag: prometheus_client::metrics::gauge::Gauge,
}

/// A skipped message is logged at most this often per consumer (the rest are counted).
const LOG_EVERY: Duration = Duration::from_secs(1);

#[cfg_attr(
    not(any(feature = "amqp", feature = "redis", feature = "nats")),
    allow(dead_code)
)]
impl Handler {
    /// Maps `message` (read at `place`, for the log) and publishes its update until the bus
    /// stores it; `id` names it when the mapping does not.
    pub(super) async fn handle(
        &self,
        message: &Message<'_>,
        place: &str,
        id: impl FnOnce() -> UpdateId,
    ) -> Handled {
        let update = match self.mapping.apply(message, &self.limits, id) {
            Ok(update) => update,
            Err(skip) => {
                self.metrics.consumer_message(&self.name, skip.reason);
                self.log_skip(&skip, place);
                return Handled::Skipped;
            }
        };
        let mut attempt = 0;
        loop {
            // A publish is idempotent by id: after an unknown outcome the same update is
            // sent again, and stored once.
            match self.bus.publish(update.clone()).await {
                Ok(_) => {
                    self.metrics.consumer_message(&self.name, "published");
                    return Handled::Published;
                }
                // The message's id names another update: retrying cannot cure it, and the
                // update it names stays as it is.
                Err(BusError::Conflict(cause)) => {
                    let skip = Skip {
                        reason: "id_conflict",
                        detail: cause.message().to_owned(),
                    };
                    self.metrics.consumer_message(&self.name, skip.reason);
                    self.log_skip(&skip, place);
                    return Handled::Skipped;
                }
                Err(e) => {
                    if attempt == 0 {
                        tracing::warn!(consumer = %self.name, %place, error = %e, "consumer: the bus did not take the update; retrying");
                    }
                    if let BusError::Config(_) = e {
                        // Retrying will not cure it, but dropping it would lose it: the
                        // instance is misconfigured, and says so until it is fixed.
                        tracing::error!(consumer = %self.name, error = %e, "consumer: the bus refuses updates");
                    }
                }
            }
            let wait = self.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = self.stop.cancelled() => return Handled::Stopped,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Why a consumer's connection ended: `what` it was doing, and the client's error.
    #[cfg_attr(not(any(feature = "amqp", feature = "redis")), allow(dead_code))]
    pub(super) fn lost(
        &self,
        what: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> crate::bus::reconnect::Stop {
        crate::bus::reconnect::Stop::Lost(self.cause(what, e))
    }

    /// The same, as a cause: `consumer <name>: <what>: <error>`.
    #[cfg_attr(not(any(feature = "amqp", feature = "redis")), allow(dead_code))]
    pub(super) fn cause(
        &self,
        what: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> crate::bus::Cause {
        crate::bus::Cause::caused_by(format!("consumer {}: {what}: {e}", self.name), e)
    }

    /// Runs one operation on the source within `limit`: its failure, or no answer in time,
    /// is [`BusError::Unavailable`], saying what this consumer was doing.
    #[cfg_attr(not(any(feature = "kafka", feature = "postgres")), allow(dead_code))]
    pub(super) async fn timed<T, E: std::error::Error + Send + Sync + 'static>(
        &self,
        limit: Duration,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, BusError> {
        match tokio::time::timeout(limit, f).await {
            Ok(result) => result.map_err(|e| BusError::Unavailable(self.cause(what, e))),
            Err(_) => Err(BusError::Unavailable(crate::bus::Cause::new(format!(
                "consumer {}: {what}: no answer within {limit:?}",
                self.name
            )))),
        }
    }

    /// Counts a message with `outcome` (besides what [`Handler::handle`] counts).
    #[cfg_attr(not(any(feature = "amqp", feature = "redis")), allow(dead_code))]
    pub(super) fn count(&self, outcome: &'static str) {
        self.metrics.consumer_message(&self.name, outcome);
    }

    /// Records how many messages wait in the source (0 when this instance stops reading it).
    #[cfg_attr(not(any(feature = "amqp", feature = "redis")), allow(dead_code))]
    pub(super) fn lag(&self, waiting: u64) {
        self.lag.set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    fn log_skip(&self, skip: &Skip, place: &str) {
        let mut quiet = crate::locks::lock(&self.quiet);
        let now = Instant::now();
        if quiet
            .0
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            quiet.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut quiet.1);
        quiet.0 = Some(now);
        tracing::warn!(
            consumer = %self.name,
            %place,
            reason = skip.reason,
            unlogged,
            "consumer: skipped a message: {} (tidings_consumer_messages_total counts them all)",
            skip.detail
        );
    }
}

/// The consumers of an instance.
#[derive(Debug, Default)]
pub struct Consumers {
    running: Vec<Running>,
    tasks: TaskTracker,
}

#[derive(Debug)]
struct Running {
    name: String,
    state: watch::Receiver<ConnectionState>,
    stop: CancellationToken,
}

impl Consumers {
    /// Starts a task for each of `specs`, publishing through `bus`.
    pub fn start(
        specs: &[ConsumeSpec],
        bus: &Arc<dyn Bus>,
        limits: &Limits,
        backoff: Backoff,
        timeouts: Timeouts,
        instance_id: &str,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let tasks = TaskTracker::new();
        let running = specs
            .iter()
            .map(|spec| {
                let handler = Arc::new(Handler {
                    name: spec.name.clone(),
                    mapping: spec.mapping.clone(),
                    bus: bus.clone(),
                    limits: limits.clone(),
                    metrics: metrics.clone(),
                    backoff,
                    stop: CancellationToken::new(),
                    busy: Arc::new(Mutex::new(())),
                    quiet: std::sync::Mutex::new((None, 0)),
                    lag: metrics.consumer_lag(&spec.name),
                });
                let machine = Reconnect::new(
                    format!("consumer {}", spec.name),
                    backoff,
                    metrics.consumer_reconnects(&spec.name),
                );
                let running = Running {
                    name: spec.name.clone(),
                    state: machine.state(),
                    stop: handler.stop.clone(),
                };
                tracing::info!(consumer = %spec.name, source = %spec.source.redacted_url(), "consumer: starting");
                spawn(&spec.source, handler, machine, timeouts, instance_id, &tasks);
                running
            })
            .collect();
        tasks.close();
        Consumers { running, tasks }
    }

    /// Each consumer's name and the state of its connection, for `/readyz`.
    pub fn states(&self) -> Vec<(&str, ConnectionState)> {
        self.running
            .iter()
            .map(|r| (r.name.as_str(), *r.state.borrow()))
            .collect()
    }

    /// Stops reading: each consumer finishes the message it is handling (or, when the bus
    /// does not take it, leaves it to its source) and ends ([`Consumers::stopped`] waits).
    pub fn cancel(&self) {
        for running in &self.running {
            running.stop.cancel();
        }
    }

    /// Waits, at most `grace`, for every consumer to end after [`Consumers::cancel`].
    pub async fn stopped(&self, grace: Duration) {
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "consumers: still handling a message after {grace:?}; leaving it to the source"
            );
        }
    }
}

/// Starts the task that reads `source` for `handler`, driven by `machine`.
#[cfg_attr(not(feature = "redis"), allow(unused_variables))]
fn spawn(
    source: &Source,
    handler: Arc<Handler>,
    machine: Reconnect,
    timeouts: Timeouts,
    instance_id: &str,
    tasks: &TaskTracker,
) {
    let (stop, busy) = (handler.stop.clone(), handler.busy.clone());
    match *source {
        #[cfg(feature = "amqp")]
        Source::Amqp(ref source) => {
            let timeout = timeouts.operation(crate::bus::Kind::Amqp);
            let target = super::amqp::Target::new(source.clone(), handler, timeout);
            tasks.spawn(run_until_stopped(machine, target, stop, busy));
        }
        #[cfg(feature = "redis")]
        Source::RedisStream(ref source) => {
            let timeout = timeouts.operation(crate::bus::Kind::Redis);
            let target = super::redis_stream::Target::new(
                source.clone(),
                handler,
                instance_id.to_owned(),
                timeout,
            );
            tasks.spawn(run_until_stopped(machine, target, stop, busy));
        }
        #[cfg(feature = "kafka")]
        Source::Kafka(ref source) => {
            let timeout = timeouts.operation(crate::bus::Kind::Kafka);
            let target =
                super::kafka::Target::new(source.clone(), handler, instance_id.to_owned(), timeout);
            tasks.spawn(run_until_stopped(machine, target, stop, busy));
        }
        #[cfg(feature = "postgres")]
        Source::Outbox(ref source) => {
            // (PostgreSQL is not a bus: it takes the bus's general operation limit.)
            let timeout = timeouts.operation(crate::bus::Kind::Redis);
            let target = super::outbox::Target::new(source.clone(), handler, timeout);
            tasks.spawn(run_until_stopped(machine, target, stop, busy));
        }
        #[cfg(feature = "nats")]
        Source::Nats(ref source) => {
            let timeout = timeouts.operation(crate::bus::Kind::Nats);
            let backoff = handler.backoff;
            let target = super::nats::Target::new(source.clone(), handler, timeout, backoff);
            tasks.spawn(run_until_stopped(machine, target, stop, busy));
        }
        #[cfg(feature = "redis")]
        Source::RedisPubSub(ref source) => {
            let timeout = timeouts.operation(crate::bus::Kind::Redis);
            let target = super::redis_pubsub::Target::new(
                source.clone(),
                handler,
                instance_id.to_owned(),
                timeout,
            );
            tasks.spawn(run_until_stopped(machine, target, stop, busy));
        }
    }
}

/// What a consumer does last when its instance drains, once the message it was handling is
/// settled and nothing reads any more: hand its source over to another instance now (a lease
/// given up, a resignation appended) rather than when the others find it gone. Sources that
/// hand over by themselves when the connection closes (a queue's unacknowledged messages, a
/// session's advisory locks) have nothing to do.
pub(super) trait Farewell {
    /// Best effort, within the source's operation limit: what it does not do, the others'
    /// detection of a dead reader does later.
    fn farewell(&mut self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

/// Drives `target` until `stop`, waits for the message being handled (`busy`), then lets the
/// target say its [`Farewell`].
#[cfg_attr(
    not(any(feature = "amqp", feature = "redis", feature = "nats")),
    allow(dead_code)
)]
async fn run_until_stopped<T: crate::bus::reconnect::Target + Farewell>(
    machine: Reconnect,
    mut target: T,
    stop: CancellationToken,
    busy: Arc<Mutex<()>>,
) {
    tokio::select! {
        () = machine.run(&mut target, None) => {}
        _guard = async {
            stop.cancelled().await;
            busy.lock_owned().await
        } => {}
    }
    // The run is dropped: nothing reads or handles any more.
    target.farewell().await;
}
