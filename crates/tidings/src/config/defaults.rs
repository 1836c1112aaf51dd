//! Every default of `tidings serve`, written once. The defaults of a part's own settings live
//! with the part (`Limits::default()`, `StreamLimits::default()`, `QueueLimits::default()`,
//! `Backoff::default()`, `Timeouts::DEFAULT_REPLAY`, `Kind::default_timeout`); the rest are
//! the constants below. [`Options::resolve`](super::Options::resolve) applies them,
//! [`shown`] writes them into `--help`, and a test holds `docs/configuration.md` to [`shown`].

use serde::Serialize;

use super::{AdminPage, LogFormat};
use crate::admission::{ConnectionLimits, StreamLimits};
use crate::auth::{AuthMode, JwtAlg};
use crate::bus::{Backoff, Kind, Routing, Timeouts};
use crate::hub::QueueLimits;
use crate::update::Limits;

/// `listen`: loopback, so that a hub started to try it out is not reachable from the network.
pub const LISTEN: &str = "127.0.0.1:3000";
/// `header-read-timeout`, seconds.
pub const HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// `write-timeout`, seconds.
pub const WRITE_TIMEOUT_SECS: u64 = 30;
/// `bus`: one instance, no broker.
pub const BUS: &str = "memory://";
/// `bus-prefix`.
pub const BUS_PREFIX: &str = "tidings";
/// `jwt-leeway`, seconds.
pub const JWT_LEEWAY_SECS: u64 = 5;
/// The largest `jwt-leeway` (and `auth-cache-ttl`) accepted: one day.
pub const MAX_LEEWAY_SECS: u64 = 86_400;
/// `jwks-refresh`, seconds.
pub const JWKS_REFRESH_SECS: u64 = 300;
/// `jwks-any-audience`: a key set's tokens must name this hub (its audience or issuer).
pub const JWKS_ANY_AUDIENCE: bool = false;
/// `auth-timeout`, seconds.
pub const AUTH_TIMEOUT_SECS: u64 = 5;
/// `auth-cache-ttl`, seconds.
pub const AUTH_CACHE_TTL_SECS: u64 = 30;
/// `auth-concurrency`: a hundred calls of 50 ms each is 2,000 new streams a second, more than
/// one instance opens; an application that slows down is not piled onto.
pub const AUTH_CONCURRENCY: usize = 100;
/// `auth-concurrency-per-address`: a page opening several streams at once, not more.
pub const AUTH_CONCURRENCY_PER_ADDRESS: usize = 8;
/// `close-expired-streams`.
pub const CLOSE_EXPIRED_STREAMS: bool = true;
/// `session-claim`.
pub const SESSION_CLAIM: &str = "sub";
/// `anonymous`.
pub const ANONYMOUS: bool = false;
/// `cookie-name`: Mercure 1.0's recommended name (the reference hub's and Symfony's default).
pub const COOKIE_NAME: &str = "__Secure-mercure_access_token";
/// `subscriptions`.
pub const SUBSCRIPTIONS: bool = false;
/// `subscription-events-per-address`: a page of 100 selectors opened and closed twice fits the
/// burst; a client churning streams adds at most 6,000 events to five minutes of history.
pub const SUBSCRIPTION_EVENTS_PER_ADDRESS: u32 = 20;
/// `history-size`: a client away for 30 s while 1,000 updates a second are published still
/// resumes without a gap (with room to spare).
pub const HISTORY_SIZE: usize = 100_000;
/// `history-ttl`, seconds: long enough for every client of a failed instance to reconnect and
/// resume, short enough that history stays small on a busy cluster.
pub const HISTORY_TTL_SECS: u64 = 300;
/// `history-id-ttl` when history has no age limit (`history-ttl = 0`), seconds; otherwise
/// ids live as long as history.
pub const HISTORY_ID_TTL_WITHOUT_AGE_SECS: u64 = 86_400;
/// `redis-min-replicas`: the primary's word is enough.
pub const REDIS_MIN_REPLICAS: usize = 0;
/// `redis-max-patterns`: a cluster of ten instances then costs Redis at most 1,000 pattern
/// matches per channel published to.
pub const REDIS_MAX_PATTERNS: usize = 100;
/// `redis-unsubscribe-after`, seconds: longer than a page takes to reload or a stream to come
/// back from another instance.
pub const REDIS_UNSUBSCRIBE_AFTER_SECS: u64 = 30;
/// `cluster-heartbeat`, seconds: an instance killed drops out of the others' view within three
/// of them (6 s).
pub const CLUSTER_HEARTBEAT_SECS: u64 = 2;
/// `cluster-deadline-ms`: a live instance answers within milliseconds; one that was killed is
/// waited for this long until it drops out.
pub const CLUSTER_DEADLINE_MS: u64 = 1000;
/// The shortest `admin-key`.
pub const MIN_ADMIN_KEY_CHARS: usize = 32;
/// `session-ttl`, seconds.
pub const SESSION_TTL_SECS: u64 = 30;
/// The shortest `session-ttl`: entries are refreshed every third of it.
pub const MIN_SESSION_TTL_SECS: u64 = 3;
/// `heartbeat`, seconds.
pub const HEARTBEAT_SECS: u64 = 15;
/// `webhook-queue`, events.
pub const WEBHOOK_QUEUE: usize = 10_000;
/// `webhook-queue-bytes`: 10,000 events of 1.6 KiB on average (a stream's selectors and
/// payload), a bound on what a receiver that is down costs in memory.
pub const WEBHOOK_QUEUE_BYTES: usize = 16 << 20;
/// `webhook-retry-for`, seconds.
pub const WEBHOOK_RETRY_FOR_SECS: u64 = 60;
/// `webhook-offline-grace`, seconds.
pub const WEBHOOK_OFFLINE_GRACE_SECS: u64 = 5;
/// `drain-secs`.
pub const DRAIN_SECS: u64 = 10;
/// Every trace recorded: a hub's traces are few (one per publish) next to the deliveries they
/// explain.
pub const TRACE_SAMPLE_RATIO: f64 = 1.0;
/// `selector-cache-size`.
pub const SELECTOR_CACHE_SIZE: usize = 10_000;
/// `log`.
pub const LOG: &str = "info";
/// The configuration file read when `--config` is not given, if it exists.
pub const CONFIG_FILE: &str = "tidings.toml";

/// The default of the option whose flag is `--{option}`, as `--help` and
/// `docs/configuration.md` show it; `None` for an option that is unset unless given.
pub fn shown(option: &str) -> Option<String> {
    let limits = Limits::default();
    let streams = StreamLimits::default();
    let connections = ConnectionLimits::default();
    let queue = QueueLimits::default();
    Some(match option {
        "config" => format!("./{CONFIG_FILE} if it exists"),
        "listen" => LISTEN.to_owned(),
        "header-read-timeout" => HEADER_READ_TIMEOUT_SECS.to_string(),
        "write-timeout" => WRITE_TIMEOUT_SECS.to_string(),
        "bus" => BUS.to_owned(),
        "bus-prefix" => BUS_PREFIX.to_owned(),
        "routing" => name_of(Routing::default()),
        "instance-id" => "tidings- + 12 random hex digits".to_owned(),
        "auth" => name_of(AuthMode::default()),
        "jwt-alg" => name_of(JwtAlg::default()),
        "jwt-leeway" => JWT_LEEWAY_SECS.to_string(),
        "jwks-refresh" => JWKS_REFRESH_SECS.to_string(),
        "jwks-any-audience" => JWKS_ANY_AUDIENCE.to_string(),
        "auth-timeout" => AUTH_TIMEOUT_SECS.to_string(),
        "auth-cache-ttl" => AUTH_CACHE_TTL_SECS.to_string(),
        "auth-concurrency" => AUTH_CONCURRENCY.to_string(),
        "auth-concurrency-per-address" => AUTH_CONCURRENCY_PER_ADDRESS.to_string(),
        "close-expired-streams" => CLOSE_EXPIRED_STREAMS.to_string(),
        "session-claim" => SESSION_CLAIM.to_owned(),
        "anonymous" => ANONYMOUS.to_string(),
        "subscriptions" => SUBSCRIPTIONS.to_string(),
        "cookie-name" => COOKIE_NAME.to_owned(),
        "subscription-events-per-address" => SUBSCRIPTION_EVENTS_PER_ADDRESS.to_string(),
        "history-size" => HISTORY_SIZE.to_string(),
        "history-ttl" => HISTORY_TTL_SECS.to_string(),
        "history-id-ttl" => {
            format!("history-ttl ({HISTORY_ID_TTL_WITHOUT_AGE_SECS} when history-ttl is 0)")
        }
        "bus-reconnect-max" => Backoff::default().max.as_secs().to_string(),
        "bus-timeout" => format!(
            "{} on Redis and NATS, {} on RabbitMQ and Kafka",
            Kind::Redis.default_timeout().as_secs(),
            Kind::Amqp.default_timeout().as_secs()
        ),
        "bus-replay-timeout" => Timeouts::DEFAULT_REPLAY.as_secs().to_string(),
        "redis-min-replicas" => REDIS_MIN_REPLICAS.to_string(),
        "redis-max-patterns" => REDIS_MAX_PATTERNS.to_string(),
        "redis-unsubscribe-after" => REDIS_UNSUBSCRIBE_AFTER_SECS.to_string(),
        "session-ttl" => SESSION_TTL_SECS.to_string(),
        "heartbeat" => HEARTBEAT_SECS.to_string(),
        "cluster-heartbeat" => CLUSTER_HEARTBEAT_SECS.to_string(),
        "cluster-deadline-ms" => CLUSTER_DEADLINE_MS.to_string(),
        "webhook-queue" => WEBHOOK_QUEUE.to_string(),
        "webhook-queue-bytes" => WEBHOOK_QUEUE_BYTES.to_string(),
        "webhook-retry-for" => WEBHOOK_RETRY_FOR_SECS.to_string(),
        "webhook-offline-grace" => WEBHOOK_OFFLINE_GRACE_SECS.to_string(),
        "drain-secs" => DRAIN_SECS.to_string(),
        "trace-sample-ratio" => TRACE_SAMPLE_RATIO.to_string(),
        "max-body-bytes" => limits.max_body_bytes.to_string(),
        "max-selectors" => limits.max_selectors.to_string(),
        "max-selector-length" => limits.max_selector_length.to_string(),
        "max-topics-per-update" => limits.max_topics_per_update.to_string(),
        "max-id-length" => limits.max_id_length.to_string(),
        "max-event-name-length" => limits.max_event_name_length.to_string(),
        "max-streams" => streams.per_instance.to_string(),
        "max-streams-per-address" => streams.per_address.to_string(),
        "max-streams-per-session" => streams.per_session.to_string(),
        "max-wide-selectors-per-address" => streams.wide_per_address.to_string(),
        "max-wide-selectors" => streams.wide_per_instance.to_string(),
        "max-connections" => format!(
            "max-streams + a tenth, 1000 at least ({})",
            connections.per_instance
        ),
        "max-connections-per-address" => format!(
            "twice max-streams-per-address + 100 ({})",
            connections.per_address
        ),
        "h2-idle-timeout" => connections.h2_idle.as_secs().to_string(),
        "subscriber-queue" => queue.updates.to_string(),
        "subscriber-queue-bytes" => queue.bytes.to_string(),
        "selector-cache-size" => SELECTOR_CACHE_SIZE.to_string(),
        "log-format" => name_of(LogFormat::default()),
        "admin-page" => name_of(AdminPage::default()),
        "log" => LOG.to_owned(),
        _ => return None,
    })
}

/// Appends `[default: …]` to the help of an option that has a default (clap's own
/// `default_value` would set the value, and hide that the option was not given from the
/// layering of file, environment and flags).
pub(super) fn in_help(arg: clap::Arg) -> clap::Arg {
    let Some(default) = arg.get_long().and_then(shown) else {
        return arg;
    };
    let help = match arg.get_help() {
        Some(help) => format!("{help} [default: {default}]"),
        None => format!("[default: {default}]"),
    };
    arg.help(help)
}

/// A configuration enum's value by the name the configuration gives it.
fn name_of(value: impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => unreachable!("a configuration enum serializes to its name, not {other:?}"),
    }
}
