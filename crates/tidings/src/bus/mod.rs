//! The bus: how an instance's publishes reach every instance's hub, and where history lives.
//!
//! A bus accepts a publish (acknowledging it only once it has taken it), delivers every
//! update to the local [`Hub`](crate::hub::Hub) of every instance that needs it — in one total order per bus,
//! each update tagged with its [`Position`](crate::envelope::Position) — and, where it keeps history, replays the updates
//! after a given id. The HTTP layer only ever talks to `dyn Bus`; backends are chosen by URL.
//!
//! | URL          | backend                  | history                     |
//! |--------------|--------------------------|-----------------------------|
//! | `memory://`  | [`memory::MemoryBus`]    | in memory |
//! | `redis://`   | [`redis::RedisBus`]      | a Redis stream |
//! | `nats://`    | [`nats::NatsBus`]        | a JetStream stream |
//! | `amqp://`    | `amqp::AmqpBus`          | a RabbitMQ stream; what it holds also in each instance's memory |
//! | `kafka://`   | `kafka::KafkaBus`        | a Kafka topic of one partition; what it holds also in each instance's memory |
//!
//! Every history keeps updates for `history-ttl` seconds, and at most `history-size` of them.
//!
//! The broker buses are cargo features (`redis`, `nats`, `amqp`, `kafka`, on by default). Each drives
//! its connection with the one [`reconnect`] machine (jittered backoff, a [`ConnectionState`]);
//! [`start`] connects the bus at start-up and keeps trying, not ready, while the broker cannot
//! be reached yet.
//!
//! Beside the backends: the [`Bus`] trait and what it speaks of (this file); its errors
//! (`error`: [`BusError`], [`Cause`]); the URL schemes and [`connect`] (`connect`); the
//! cluster's [`Registry`] of sessions and subscribers, a power of some buses, reached through
//! [`Bus::registry`] (`registry`); the start-up proxy (`starting`); the wire format
//! ([`wire`]); the reconnect machine ([`reconnect`]); what the log-reading buses share
//! (`log`: the rules of reading a log; `log_bus`: the bus RabbitMQ and Kafka share; `broker`);
//! the in-memory history ([`history`]).

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "amqp",
    feature = "kafka"
))]
mod broker;
mod connect;
mod error;
pub mod history;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(any(feature = "nats", feature = "amqp", feature = "kafka"))]
mod log;
#[cfg(any(feature = "amqp", feature = "kafka"))]
mod log_bus;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
// A build without a broker bus uses only the backoff and the start-up's attempts.
#[cfg_attr(
    not(any(
        feature = "redis",
        feature = "nats",
        feature = "amqp",
        feature = "kafka"
    )),
    allow(dead_code, unused_imports)
)]
pub mod reconnect;
#[cfg(feature = "redis")]
pub mod redis;
mod registry;
mod starting;
pub mod wire;

// (The consumers of the application's RabbitMQ, Redis and NATS sources time their operations
// alike.)
#[cfg(any(feature = "amqp", feature = "redis", feature = "nats"))]
pub(crate) use broker::with_limit;
pub use connect::{connect, redact, Kind};
pub use error::{BusError, Cause};
pub use reconnect::{Backoff, ConnectionState, Timeouts};
pub use registry::{Registry, SubscriberRecord};
pub use starting::{start, Started};

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::envelope::{Envelope, Position};
use crate::update::{Update, UpdateId};

/// Where a subscriber's replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    /// No replay: only the head of history is wanted (a fresh subscriber).
    Now,
    /// Everything history holds (`Last-Event-ID: earliest`, as in Mercure).
    Earliest,
    /// Every update after this id. Ids are the publisher's to choose and Mercure hubs accept
    /// the same id twice: a resume then starts after the newest update with that id.
    After(UpdateId),
}

/// What a replay found.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// The updates to send, oldest first, not yet filtered for the subscriber: every update
    /// of the bus (of the topics asked for, if any) after the resume
    /// point up to the newest one when the replay was read, with no hole. Live updates at or before the last one's position are therefore covered and
    /// skipped; any later one is delivered live.
    pub updates: Vec<Arc<Envelope>>,
    /// The position of the resume id, when the bus found it: the client has seen everything
    /// up to there, so a live update at or before it — one the instance delivers only now,
    /// because it lagged behind the bus — is not sent again.
    pub resumed_at: Option<Position>,
    /// The id of the newest update in history (the `Last-Event-ID` response header).
    pub head_id: Option<UpdateId>,
    /// True when the requested id was not in history (evicted, or never existed): `updates`
    /// then holds everything history has, and the client is told about the gap. Also true,
    /// with `resumed_at` set, when the id was found but updates after it are known lost (a
    /// failover to a replica that lacked them): `updates` then starts after the id.
    pub missing: bool,
}

/// What a publisher learns of a stored update: what it needs to answer, and nothing made for
/// subscribers (a broker bus encodes the SSE bytes on the instances that deliver it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The update's id (for a retried publish, the one stored first: the same id).
    pub id: UpdateId,
    /// Its place in the bus order, when the bus knows it at once (RabbitMQ's publisher
    /// confirms do not say where a message landed in the stream).
    pub position: Option<Position>,
}

/// How a broker-backed bus brings updates to instances (`routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// An instance listens only for the topics its subscribers need (a channel per topic),
    /// and for everything while it holds a selector that no channel maps to (`*`, a URL
    /// pattern, a template that starts with an expression): broker traffic grows with
    /// interest, not with the number of instances.
    #[default]
    Interest,
    /// Every instance receives every update and keeps what its subscribers need.
    Broadcast,
}

impl Routing {
    /// The names the configuration accepts, as in `tidings.toml`.
    pub const NAMES: [&'static str; 2] = ["interest", "broadcast"];
}

impl std::str::FromStr for Routing {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "interest" => Ok(Routing::Interest),
            "broadcast" => Ok(Routing::Broadcast),
            _ => Err(format!("unknown routing {name:?}: interest or broadcast")),
        }
    }
}

/// Settings every bus backend understands.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Updates kept for replay, at most (0 disables history).
    pub history_size: usize,
    /// How long an update stays in history, in seconds (0: no age limit, only the count).
    pub history_ttl_secs: u64,
    /// How long an update's id is remembered, in seconds: the index from an id to its place
    /// in history, and the window in which a retried publish is recognised.
    pub history_id_ttl_secs: u64,
    /// The cluster's name on its broker: the prefix of Redis keys and channels, the NATS
    /// stream's name, the RabbitMQ exchange's name.
    pub prefix: String,
    /// This instance's id (the session registry names instances by it).
    pub instance_id: String,
    /// How long a session registry entry lives without being refreshed, in seconds: an
    /// instance that dies drops out of the registry after this long.
    pub session_ttl_secs: u64,
    /// Share this instance's subscribers with the cluster (the subscriptions API is on).
    pub share_subscribers: bool,
    /// Limits applied to messages read from the broker (as to HTTP publishes).
    pub limits: crate::update::Limits,
    /// How updates reach instances.
    pub routing: Routing,
    /// The waits between attempts to reach the broker again.
    pub backoff: Backoff,
    /// How long to wait on the broker.
    pub timeouts: Timeouts,
    /// Redis: replicas that must hold a publish before it is answered (`redis-min-replicas`;
    /// 0: the primary's word is enough).
    pub min_replicas: usize,
    /// Redis under interest routing: the most glob patterns (one per distinct literal prefix
    /// of the templates subscribed to) an instance `PSUBSCRIBE`s; past it, it listens to every
    /// update instead (`redis-max-patterns`). Redis matches every pattern of every connection
    /// against each channel of each publish in the cluster.
    pub max_patterns: usize,
    /// Redis under interest routing: how long an instance stays subscribed to a topic's
    /// channel after its last stream left (`redis-unsubscribe-after`).
    pub unsubscribe_after: std::time::Duration,
}

impl BusOptions {
    /// How long a published id is remembered, so that a retried publish with it is stored
    /// once (see [`Bus::publish`]): the id index's lifetime.
    pub fn dedup_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.history_id_ttl_secs.max(1))
    }

    /// How long an update stays in history, when history has an age limit.
    pub fn history_ttl(&self) -> Option<std::time::Duration> {
        (self.history_ttl_secs > 0).then(|| std::time::Duration::from_secs(self.history_ttl_secs))
    }
}

/// A bus backend: what every bus does. See the module documentation. Optional powers are
/// traits of their own, reached from the bus ([`Bus::registry`]), so that a new bus writes
/// what it does and nothing it does not — and the start-up proxy has no defaults to forget.
#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// The backend's name (`memory`, `redis`, …), for logs and `/readyz`.
    fn kind(&self) -> &'static str;

    /// Publishes an update to every instance. Returns once the bus has accepted it (and, with
    /// history, stored it), with what the publisher needs to answer ([`Published`]).
    ///
    /// Publishes are idempotent by id: an update whose id the bus still remembers (a retry of
    /// a publish whose answer was lost) is not stored or delivered again; the call succeeds
    /// with the first one's position where the broker tells it. How long an id is remembered
    /// depends on the bus (`docs/http-api.md`, "Idempotent publishes").
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the bus did not take the update;
    /// [`BusError::OutcomeUnknown`] when it was sent but its acknowledgement did not come.
    async fn publish(&self, update: Update) -> Result<Published, BusError>;

    /// Returns once this instance receives every update its hub's subscribers need — call it
    /// after registering a subscriber and before reading its history, so that nothing
    /// published after the read can miss it. A bus that routes by interest waits for the
    /// broker to confirm any new subscription; the others return at once.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the bus cannot listen now (broker unreachable).
    async fn listening(&self) -> Result<(), BusError>;

    /// Reads history from `from` on (see [`ReplayFrom`]). With `topics`, for a subscriber that
    /// sees nothing but them (its selectors are all exact topics), [`Replay::updates`] needs to
    /// hold only the updates on one of them, so that a resume costs what the subscriber
    /// missed, not all traffic since; a bus that keeps no history per topic reads it all.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when history cannot be read now.
    async fn replay(
        &self,
        from: &ReplayFrom,
        topics: Option<&[Arc<str>]>,
    ) -> Result<Replay, BusError>;

    /// Where the bus's connection to its broker stands.
    fn state(&self) -> ConnectionState;

    /// The cluster's registry of sessions and subscribers, when this bus keeps one; `None`
    /// when each instance knows only its own hub.
    fn registry(&self) -> Option<Arc<dyn Registry>>;

    /// Sends `signal` to every instance of the cluster, this one included, whose hub hands it
    /// on ([`Hub::signals`](crate::hub::Hub::signals)): the control plane (membership,
    /// presence, disconnects: the `cluster` module). A signal is not an update: never stored or
    /// replayed, in no order with updates, and an instance that is not connected when it is
    /// sent never hears it.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the bus cannot send now.
    async fn signal(&self, signal: Bytes) -> Result<(), BusError>;
}

impl dyn Bus {
    /// True while the bus can publish and deliver: its connection is up.
    pub fn is_ready(&self) -> bool {
        self.state() == ConnectionState::Connected
    }
}
