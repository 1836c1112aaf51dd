//! From a bus URL to a running bus: the one table of schemes ([`Kind`]), [`connect`], and the
//! URL as logs may show it ([`redact`]).

use std::sync::Arc;
use std::time::Duration;

use super::{Bus, BusError, BusOptions, Cause};
use crate::hub::Hub;

/// The bus URL with its credentials masked, for logs and messages (`redis://:secret@host` →
/// `redis://***@host`). Everything up to the last `@` is masked: the Kafka parser takes the
/// credentials up to the last `@` (a password may hold `/`, `?` or `#` there), and a URL
/// another parser refuses is shown in its error whole — so no `@` is trusted to belong to a
/// path or a query (one that does costs that part of the URL its display, never a password).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rfind('@') {
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
    /// Every URL scheme a bus answers to, with its kind (`--help` and the docs list them all:
    /// a test holds them to this).
    pub const SCHEMES: [(&'static str, Kind); 12] = [
        ("memory", Kind::Memory),
        ("redis", Kind::Redis),
        ("rediss", Kind::Redis),
        ("redis+sentinel", Kind::Redis),
        ("rediss+sentinel", Kind::Redis),
        ("redis+cluster", Kind::Redis),
        ("rediss+cluster", Kind::Redis),
        ("nats", Kind::Nats),
        ("amqp", Kind::Amqp),
        ("amqps", Kind::Amqp),
        ("kafka", Kind::Kafka),
        ("kafkas", Kind::Kafka),
    ];

    /// The kind a bus URL names, if any.
    pub fn of(url: &str) -> Option<Kind> {
        let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
        Self::SCHEMES
            .iter()
            .find(|(name, _)| *name == scheme)
            .map(|&(_, kind)| kind)
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

    /// Whether a bus of this kind keeps a cluster registry ([`Bus::registry`]): the start-up
    /// proxy answers for it before the bus connects, so that what callers keep of it then
    /// stays true after.
    pub fn keeps_registry(self) -> bool {
        matches!(self, Kind::Redis)
    }

    /// How long a bus of this kind waits for its broker to answer one operation before it
    /// counts as failed, unless `bus-timeout` says otherwise. RabbitMQ's publisher confirms
    /// on a stream wait for its segment to be written, and Kafka's acknowledgement from every
    /// in-sync replica takes longer than one server's: they get longer. (The memory bus
    /// waits on no broker.)
    pub fn default_timeout(self) -> Duration {
        match self {
            Kind::Memory | Kind::Redis | Kind::Nats => Duration::from_secs(2),
            Kind::Amqp | Kind::Kafka => Duration::from_secs(5),
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
        return Err(BusError::Config(Cause::new(format!(
            "unknown bus URL {:?}: expected memory://, redis://, amqp://, nats:// or kafka://",
            redact(url)
        ))));
    };
    match kind {
        Kind::Memory => Ok(Arc::new(super::memory::MemoryBus::with_ttl(
            options.history_size,
            options.history_ttl(),
            hub,
        ))),
        #[cfg(feature = "redis")]
        Kind::Redis => Ok(Arc::new(super::redis::RedisBus::connect(url, options, hub).await?)),
        #[cfg(feature = "nats")]
        Kind::Nats => Ok(Arc::new(super::nats::NatsBus::connect(url, options, hub).await?)),
        #[cfg(feature = "amqp")]
        Kind::Amqp => Ok(Arc::new(super::amqp::AmqpBus::connect(url, options, hub).await?)),
        #[cfg(feature = "kafka")]
        Kind::Kafka => Ok(Arc::new(super::kafka::KafkaBus::connect(url, options, hub).await?)),
        #[allow(unreachable_patterns)]
        left_out => Err(BusError::Config(
            Cause::new(format!(
                "this build of tidings has no {0} bus: build it with the cargo feature {0:?} (on by default)",
                left_out.name()
            )
            ),
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
        // The parsers' ways of reading credentials: none of them shows.
        for url in [
            "kafka://me:pa/ss?x@h:1",
            "kafka://me:pa#ss@h:1,g:2",
            "redis://:pa/ss@h:6379/0",
            "amqp://u:pa?ss@h/%2f",
            "kafkas://me:pa@ss@h:9093?sasl=scram-sha-256",
        ] {
            let shown = redact(url);
            assert!(!shown.contains("pa"), "{url} → {shown}");
            assert!(shown.ends_with(url.rsplit_once('@').unwrap().1), "{shown}");
        }
        // An `@` in a query is taken for the end of credentials too: safe, if less telling.
        assert_eq!(redact("redis://h:6379/0?x=a@b"), "redis://***@b");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact("memory://"), "memory://");
    }
}
