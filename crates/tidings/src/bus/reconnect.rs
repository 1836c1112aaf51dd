//! The reconnect machine every broker bus uses: how long to wait before the next connection
//! attempt (exponential backoff with jitter), what the connection's state is, and what each
//! loss and attempt leaves in the logs and the metrics.
//!
//! What "connected" means differs by bus (a Redis Pub/Sub connection subscribed to its
//! channels, a JetStream consumer, a RabbitMQ stream consumer, a Kafka partition reader): each
//! says it as a `Target` — how to open a connection that delivers, and how to deliver on it
//! until it stops — and the one loop around it, `Reconnect::run`, waits, connects, says
//! what happened, and publishes the [`ConnectionState`] (linkerd2-proxy's `reconnect` takes
//! a target the same way).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use tokio::sync::watch;

use super::{BusError, Cause};

/// How long an instance waits for its broker to answer. Every wait for an answer is one of
/// these two, so that each says which it is, and both can be set (`--bus-timeout`,
/// `--bus-replay-timeout`): a broker across a slow link, or a RabbitMQ stream under load,
/// needs more than a local one. (The buses' own cadences — how often a connection is
/// checked, how long a quiet consumer may stay quiet — are constants of each bus.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One operation: connecting, a command, a publish's acknowledgement. Past it a read is
    /// unavailable and a publish's outcome unknown. `None`: the bus's own default
    /// ([`super::Kind::default_timeout`]).
    pub operation: Option<Duration>,
    /// One batch of history reads for resuming clients, which a resume storm makes large;
    /// and, under interest routing, a new subscriber's wait for its topics to be listened to.
    pub replay: Duration,
}

impl Timeouts {
    /// The replay timeout when none is set.
    pub const DEFAULT_REPLAY: Duration = Duration::from_secs(15);

    /// The operation timeout of a bus of this `kind`: the one set, or the kind's own.
    pub fn operation(&self, kind: super::Kind) -> Duration {
        self.operation.unwrap_or(kind.default_timeout())
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            operation: None,
            replay: Self::DEFAULT_REPLAY,
        }
    }
}

/// The waits between connection attempts: doubling from `first` up to `max`, each drawn at
/// random from the upper half of its range ("equal jitter"), so that a fleet of instances that
/// lost its broker together does not come back in lock-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub first: Duration,
    /// The ceiling of every wait (`bus-reconnect-max`).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The ceiling of the wait before retry number `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max)
    }

    /// The wait before retry number `attempt`: a random point of the ceiling's upper half.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=ceiling - half)
    }
}

/// Where a bus's connection to its broker stands; `/readyz` is ready only when `Connected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected yet since start-up.
    Connecting,
    /// Connected, and delivering.
    Connected,
    /// Connected once, lost since; retrying.
    Reconnecting,
}

impl ConnectionState {
    /// Every state, for the `tidings_bus_state` gauge.
    pub const ALL: [ConnectionState; 3] = [
        ConnectionState::Connecting,
        ConnectionState::Connected,
        ConnectionState::Reconnecting,
    ];

    /// The state's name, for logs and `/readyz`.
    pub fn name(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting => "reconnecting",
        }
    }
}

/// A bus's connection as [`Reconnect::run`] drives it.
pub(crate) trait Target: Send {
    /// An open connection, ready to deliver.
    type Connection: Send;

    /// Opens a connection and makes it ready to deliver (subscribed, caught up with what was
    /// missed): when it returns, the bus is connected.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Connection, BusError>> + Send;

    /// Delivers on `connection` until it stops, and says why.
    fn deliver(&mut self, connection: Self::Connection) -> impl Future<Output = Stop> + Send;
}

/// A target lent to [`Reconnect::run`], so that its owner has it back when the run is
/// dropped (a consumer says its farewell through it: `consume::run`).
impl<T: Target> Target for &mut T {
    type Connection = T::Connection;

    fn connect(&mut self) -> impl Future<Output = Result<Self::Connection, BusError>> + Send {
        (**self).connect()
    }

    fn deliver(&mut self, connection: Self::Connection) -> impl Future<Output = Stop> + Send {
        (**self).deliver(connection)
    }
}

/// Why a connection stopped delivering.
#[derive(Debug)]
pub(crate) enum Stop {
    /// It was lost (or found unusable): connect again, after the backoff.
    Lost(Cause),
    /// The broker's client reconnected by itself underneath: connect again at once (counted
    /// in `tidings_bus_reconnects_total`).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Reconnected,
}

/// One connection's retry state: the attempt that comes next, the published
/// [`ConnectionState`], and the log lines and metrics of each change.
#[derive(Debug)]
pub(crate) struct Reconnect {
    broker: Arc<str>,
    backoff: Backoff,
    attempt: u32,
    state: watch::Sender<ConnectionState>,
    /// Counts each wait and each reconnection underneath (`tidings_bus_reconnects_total` for
    /// a bus, `tidings_consumer_reconnects_total` for a consumer).
    reconnects: Counter,
}

impl Reconnect {
    /// A machine for a connection to `broker` (its name in logs), not connected yet, that
    /// counts its reconnections in `reconnects`.
    pub(crate) fn new(broker: impl Into<Arc<str>>, backoff: Backoff, reconnects: Counter) -> Self {
        Reconnect {
            broker: broker.into(),
            backoff,
            attempt: 0,
            state: watch::Sender::new(ConnectionState::Connecting),
            reconnects,
        }
    }

    /// The connection's state, as it changes.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// Delivery is live (again): the next loss starts the backoff over.
    pub(crate) fn connected(&mut self) {
        let before = self.state.send_replace(ConnectionState::Connected);
        if before == ConnectionState::Reconnecting {
            tracing::info!(
                broker = &*self.broker,
                "{}: connection restored",
                self.broker
            );
        }
        self.attempt = 0;
    }

    /// A live connection was lost, for `reason`.
    pub(crate) fn lost(&mut self, reason: &dyn std::fmt::Display) {
        self.state.send_replace(ConnectionState::Reconnecting);
        tracing::warn!(
            broker = &*self.broker,
            %reason,
            "{}: connection lost; reconnecting",
            self.broker
        );
    }

    /// An attempt to connect failed, with `error`.
    pub(crate) fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.state.send_if_modified(|state| {
            let was = *state;
            if was == ConnectionState::Connected {
                *state = ConnectionState::Reconnecting;
            }
            was == ConnectionState::Connected
        });
        tracing::warn!(
            broker = &*self.broker,
            %error,
            attempt = self.attempt + 1,
            "{}: cannot connect; retrying",
            self.broker
        );
    }

    /// Drives `target` for as long as the task runs: delivers on `open` (a connection made at
    /// start-up) or on a new one, and after each stop connects again, waiting between failed
    /// attempts.
    pub(crate) async fn run<T: Target>(mut self, mut target: T, mut open: Option<T::Connection>) {
        loop {
            let connection = match open.take() {
                Some(connection) => connection,
                None => match target.connect().await {
                    Ok(connection) => connection,
                    Err(e) => {
                        self.failed(&e);
                        self.wait().await;
                        continue;
                    }
                },
            };
            self.connected();
            match target.deliver(connection).await {
                Stop::Lost(reason) => {
                    self.lost(&reason);
                    self.wait().await;
                }
                Stop::Reconnected => {
                    self.reconnects.inc();
                }
            }
        }
    }

    /// Waits before the next attempt, and counts it.
    pub(crate) async fn wait(&mut self) {
        let delay = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
        self.reconnects.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn waits_double_up_to_the_ceiling_and_spread_over_its_upper_half() {
        let backoff = Backoff::default();
        let ceilings: Vec<u128> = (0..8).map(|a| backoff.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(6)).collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(2500) && *d <= Duration::from_secs(5)));
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "jittered, not in lock-step");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_reports_its_state_and_starts_over_once_connected() {
        let metrics = Arc::new(Metrics::new());
        let mut machine =
            Reconnect::new("test", Backoff::default(), metrics.bus_reconnects.clone());
        let state = machine.state();
        assert_eq!(*state.borrow(), ConnectionState::Connecting);
        machine.failed(&"refused");
        assert_eq!(
            *state.borrow(),
            ConnectionState::Connecting,
            "never connected yet"
        );
        machine.wait().await;
        machine.wait().await;
        assert_eq!(machine.attempt, 2);
        machine.connected();
        assert_eq!(
            (*state.borrow(), machine.attempt),
            (ConnectionState::Connected, 0)
        );
        machine.lost(&"reset");
        assert_eq!(*state.borrow(), ConnectionState::Reconnecting);
        machine.wait().await;
        assert_eq!(metrics.bus_reconnects.get(), 3);
    }

    /// A target whose connections fail, deliver and stop as a script says.
    struct Scripted {
        connects: std::collections::VecDeque<Result<u32, &'static str>>,
        stops: std::collections::VecDeque<Stop>,
        delivered: Arc<std::sync::Mutex<Vec<u32>>>,
    }

    impl Target for Scripted {
        type Connection = u32;

        async fn connect(&mut self) -> Result<u32, BusError> {
            match self.connects.pop_front() {
                Some(Ok(n)) => Ok(n),
                Some(Err(why)) => Err(BusError::Unavailable(Cause::new(why))),
                None => std::future::pending().await,
            }
        }

        async fn deliver(&mut self, connection: u32) -> Stop {
            self.delivered.lock().unwrap().push(connection);
            match self.stops.pop_front() {
                Some(stop) => stop,
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_connects_again_after_each_stop_and_waits_only_after_a_failure() {
        let metrics = Arc::new(Metrics::new());
        let machine = Reconnect::new("test", Backoff::default(), metrics.bus_reconnects.clone());
        let state = machine.state();
        let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
        let target = Scripted {
            connects: [Err("refused"), Ok(2), Ok(3), Ok(4)].into(),
            stops: [
                Stop::Lost(Cause::new("reset")),
                Stop::Lost(Cause::new("reset")),
                Stop::Reconnected,
            ]
            .into(),
            delivered: delivered.clone(),
        };
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(machine.run(target, Some(1)));
        while delivered.lock().unwrap().len() < 4 && started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*delivered.lock().unwrap(), [1, 2, 3, 4]);
        assert_eq!(*state.borrow(), ConnectionState::Connected);
        // Waits: after the first loss, after the refused attempt, after the second loss; the
        // client's own reconnection is followed at once, and counted.
        assert_eq!(metrics.bus_reconnects.get(), 4);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        task.abort();
    }
}
