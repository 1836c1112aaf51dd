//! The bus: how an instance's publishes reach every instance's hub, and where history lives.
//!
//! A bus accepts a publish (acknowledging it only once it has taken it), delivers every
//! update to the local [`Hub`] of every instance that needs it — in one total order per bus,
//! each update tagged with its [`Position`](crate::envelope::Position) — and, where it keeps history, replays the updates
//! after a given id. The HTTP layer only ever talks to `dyn Bus`; backends are chosen by URL.
//!
//! | URL          | backend                  | history                     |
//! |--------------|--------------------------|-----------------------------|
//! | `memory://`  | [`memory::MemoryBus`]    | in memory |
//! | `redis://`   | [`redis::RedisBus`]      | a Redis stream |
//! | `nats://`    | [`nats::NatsBus`]        | a JetStream stream |
//! | `amqp://`    | [`amqp::AmqpBus`]        | a RabbitMQ stream; what it holds also in each instance's memory |
//! | `kafka://`   | [`kafka::KafkaBus`]      | a Kafka topic of one partition; what it holds also in each instance's memory |
//!
//! Every history keeps updates for `history-ttl` seconds, and at most `history-size` of them.
//!
//! The broker buses are cargo features (`redis`, `nats`, `amqp`, `kafka`, on by default). Each drives
//! its connection with the one [`reconnect`] machine (jittered backoff, a [`ConnectionState`]);
//! [`start`] connects the bus at start-up and keeps trying, not ready, while the broker cannot
//! be reached yet.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "amqp",
    feature = "kafka"
))]
mod broker;
pub mod history;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(any(feature = "amqp", feature = "kafka"))]
mod log;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
pub mod reconnect;
#[cfg(feature = "redis")]
pub mod redis;
mod starting;
pub mod wire;

pub use reconnect::{Backoff, ConnectionState, Timeouts};
pub use starting::{start, Started};

use std::sync::Arc;

use async_trait::async_trait;

use crate::envelope::{Envelope, Position};
use crate::hub::Hub;
use crate::update::{SessionId, Update, UpdateId};

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
    /// of the bus (of the topics asked for, with [`Bus::replay_topics`]) after the resume
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

/// Why a bus operation failed: what the caller must do differs by kind (retry later, retry
/// with the same id, fix the configuration); the [`Cause`] says what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// The bus cannot take or serve updates now (broker unreachable, instance draining).
    Unavailable(Cause),
    /// A publish was sent to the broker but not acknowledged in time: it may or may not have
    /// been stored. Retrying it *with the same id* is safe: the bus stores an id once (see
    /// [`Bus::publish`]).
    OutcomeUnknown(Cause),
    /// The bus URL or options are wrong, or the broker refuses this instance for a reason
    /// retrying cannot cure (start-up only).
    Config(Cause),
}

impl BusError {
    /// What happened, whatever the kind.
    pub fn cause(&self) -> &Cause {
        match self {
            BusError::Unavailable(c) | BusError::OutcomeUnknown(c) | BusError::Config(c) => c,
        }
    }

    /// The same kind of error, its message preceded by `context` and `: `.
    #[must_use]
    pub fn context(self, context: impl std::fmt::Display) -> BusError {
        let add = |c: Cause| Cause {
            message: format!("{context}: {}", c.message),
            source: c.source,
        };
        match self {
            BusError::Unavailable(c) => BusError::Unavailable(add(c)),
            BusError::OutcomeUnknown(c) => BusError::OutcomeUnknown(add(c)),
            BusError::Config(c) => BusError::Config(add(c)),
        }
    }
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            BusError::Unavailable(_) => "bus unavailable",
            BusError::OutcomeUnknown(_) => "publish outcome unknown",
            BusError::Config(_) => "bus configuration",
        };
        write!(f, "{kind}: {}", self.cause())
    }
}

impl std::error::Error for BusError {
    /// The broker client's own error, where one was the cause.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause().source()
    }
}

/// What happened on the broker: a message for people (it names the broker and what was being
/// done, and says why: logs and start-up errors print it whole) and, where a client library
/// reported the failure, that library's error, kept for code that needs its kind (a refused
/// certificate, a reset connection) rather than its words.
#[derive(Debug, Clone)]
pub struct Cause {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// A cause with only a message (no library error under it).
    pub fn new(message: impl Into<String>) -> Self {
        Cause {
            message: message.into(),
            source: None,
        }
    }

    /// A cause with the library error `source` under it; `message` should say what `source`
    /// says too, since people read only the message.
    pub fn caused_by(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Cause {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The library error under it, if any.
    pub fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Two causes are the same when they say the same (library errors do not compare).
impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Cause {}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Cause::new(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Cause::new(message)
    }
}

/// One subscriber as the subscriptions API shows it, shared between instances.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubscriberRecord {
    /// Its `urn:uuid:…`.
    pub subscriber: String,
    /// Its selectors as written, without repeats.
    pub topics: Vec<String>,
    /// The `mercure.payload` claim of its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

impl SubscriberRecord {
    /// The record of a local subscriber.
    pub fn of(spec: &crate::subscriber::SubscriberSpec) -> Self {
        let mut topics: Vec<String> = Vec::with_capacity(spec.selectors.len());
        for selector in &spec.selectors {
            if !topics.iter().any(|t| t == selector.source()) {
                topics.push(selector.source().to_owned());
            }
        }
        SubscriberRecord {
            subscriber: spec.label.iri.to_string(),
            topics,
            payload: spec.label.payload.as_deref().cloned(),
        }
    }
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

/// A bus backend. See the module documentation.
#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// The backend's name (`memory`, `redis`, …), for logs and `/readyz`.
    fn kind(&self) -> &'static str;

    /// Publishes an update to every instance. Returns once the bus has accepted it (and, with
    /// history, stored it), with the envelope it assigned — whose position is 0 when the
    /// broker does not tell it at publish time (RabbitMQ: it is known once the update is read).
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
    async fn listening(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Reads history from `from` on (see [`ReplayFrom`]).
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when history cannot be read now.
    async fn replay(&self, from: &ReplayFrom) -> Result<Replay, BusError>;

    /// Reads history from `from` on for a subscriber that sees nothing but `topics` (its
    /// selectors are all exact topics): [`Replay::updates`] then needs to hold only the
    /// updates on one of them, so that a resume costs what the subscriber missed, not all
    /// traffic since. A bus that keeps no history per topic reads it all.
    ///
    /// # Errors
    /// As for [`Bus::replay`].
    async fn replay_topics(
        &self,
        from: &ReplayFrom,
        topics: &[Arc<str>],
    ) -> Result<Replay, BusError> {
        let _ = topics;
        self.replay(from).await
    }

    /// Where the bus's connection to its broker stands.
    fn state(&self) -> ConnectionState;

    /// True while the bus can publish and deliver: its connection is up.
    fn is_ready(&self) -> bool {
        self.state() == ConnectionState::Connected
    }

    /// Where a session's streams are, cluster-wide: each live instance holding some, with
    /// how many. `None` when this bus keeps no registry (one instance: its hub knows).
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the registry cannot be read now.
    async fn session_presence(
        &self,
        session: &SessionId,
    ) -> Result<Option<Vec<(String, usize)>>, BusError> {
        let _ = session;
        Ok(None)
    }

    /// Marks `session` online in the cluster's registry, recording this instance's
    /// `streams` of it first: `Some(true)` when it was not online (this instance tells it),
    /// `Some(false)` when it already was, `None` when this bus keeps no registry (each
    /// instance then knows only its own sessions).
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the registry cannot be written now.
    async fn session_online(
        &self,
        session: &SessionId,
        streams: usize,
    ) -> Result<Option<bool>, BusError> {
        let _ = (session, streams);
        Ok(None)
    }

    /// Marks `session` offline when no live instance holds a stream of it (checked and
    /// marked at once): `Some(true)` when this call took it offline, `None` without a registry.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the registry cannot be written now.
    async fn session_offline(&self, session: &SessionId) -> Result<Option<bool>, BusError> {
        let _ = session;
        Ok(None)
    }

    /// The sessions marked online that no live instance has held for two sweeps in a row —
    /// their instance died and its registry entries expired — marked offline now. One
    /// instance of the cluster sweeps per `session-ttl`; the others get nothing.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the registry cannot be read now.
    async fn sweep_sessions(&self) -> Result<Vec<SessionId>, BusError> {
        Ok(Vec::new())
    }

    /// Every subscriber of the cluster (for the subscriptions API). `None` when this bus keeps
    /// no shared record (one instance: its hub knows), or the API is off.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the record cannot be read now.
    async fn subscribers(&self) -> Result<Option<Vec<SubscriberRecord>>, BusError> {
        Ok(None)
    }
}

/// The bus URL with its credentials masked, for logs (`redis://:secret@host` →
/// `redis://***@host`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// The kinds of bus, named by the scheme of a bus URL: the one table of schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `memory://`
    Memory,
    /// `redis://`, `rediss://`, `redis+sentinel://`, `rediss+sentinel://`, `redis+cluster://`,
    /// `rediss+cluster://`
    Redis,
    /// `nats://`
    Nats,
    /// `amqp://`, `amqps://`
    Amqp,
    /// `kafka://`, `kafkas://`
    Kafka,
}

impl Kind {
    /// The kind a bus URL names, if any.
    pub fn of(url: &str) -> Option<Kind> {
        match url.split_once("://").map_or(url, |(scheme, _)| scheme) {
            "memory" => Some(Kind::Memory),
            "redis" | "rediss" | "redis+sentinel" | "rediss+sentinel" | "redis+cluster"
            | "rediss+cluster" => Some(Kind::Redis),
            "nats" => Some(Kind::Nats),
            "amqp" | "amqps" => Some(Kind::Amqp),
            "kafka" | "kafkas" => Some(Kind::Kafka),
            _ => None,
        }
    }

    /// Its name, as [`Bus::kind`] says it (and its cargo feature's, for a broker bus).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Redis => "redis",
            Kind::Nats => "nats",
            Kind::Amqp => "amqp",
            Kind::Kafka => "kafka",
        }
    }

    /// The broker's name in logs and metrics' labels.
    pub fn broker(self) -> &'static str {
        match self {
            Kind::Amqp => "rabbitmq",
            other => other.name(),
        }
    }
}

/// Connects the bus named by `url` and starts delivering to `hub`.
///
/// # Errors
/// [`BusError::Config`] for an unknown scheme or bad options; [`BusError::Unavailable`] when
/// the broker cannot be reached.
pub async fn connect(url: &str, options: &BusOptions, hub: Hub) -> Result<Arc<dyn Bus>, BusError> {
    let Some(kind) = Kind::of(url) else {
        return Err(BusError::Config(
            format!(
                "unknown bus URL {:?}: expected memory://, redis://, amqp://, nats:// or kafka://",
                redact(url)
            )
            .into(),
        ));
    };
    match kind {
        Kind::Memory => Ok(Arc::new(memory::MemoryBus::with_ttl(
            options.history_size,
            options.history_ttl(),
            hub,
        ))),
        #[cfg(feature = "redis")]
        Kind::Redis => Ok(Arc::new(redis::RedisBus::connect(url, options, hub).await?)),
        #[cfg(feature = "nats")]
        Kind::Nats => Ok(Arc::new(nats::NatsBus::connect(url, options, hub).await?)),
        #[cfg(feature = "amqp")]
        Kind::Amqp => Ok(Arc::new(amqp::AmqpBus::connect(url, options, hub).await?)),
        #[cfg(feature = "kafka")]
        Kind::Kafka => Ok(Arc::new(kafka::KafkaBus::connect(url, options, hub).await?)),
        #[allow(unreachable_patterns)]
        left_out => Err(BusError::Config(
            format!(
                "this build of tidings has no {0} bus: build it with the cargo feature {0:?} (on by default)",
                left_out.name()
            )
            .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_never_reach_the_logs() {
        assert_eq!(redact("redis://:secret@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("amqp://user:pass@h/%2f"), "amqp://***@h/%2f");
        assert_eq!(redact("redis://h:6379/0?x=a@b"), "redis://h:6379/0?x=a@b");
        assert_eq!(redact("memory://"), "memory://");
    }
}
