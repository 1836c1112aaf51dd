//! Configuration of `tidings serve`: defaults → `tidings.toml` → `TIDINGS_*` environment →
//! command-line flags, each layer overriding the one before.
//!
//! (Over 600 lines because every option of `tidings serve` is declared here once, with its
//! help; resolving is `resolve.rs`, defaults `defaults.rs`, weak points `weak.rs`.)
//!
//! Every option is declared once, in [`Options`]: the same struct is parsed by clap (flags and
//! environment variables, `--history-size` / `TIDINGS_HISTORY_SIZE`) and by serde (the file,
//! `history-size = 1000`). Unknown keys in the file are errors, so a typo is reported instead of
//! silently ignored. The names are a contract (DESIGN §3.5).
//!
//! [`Options::resolve`] (in `resolve.rs`) applies the defaults of `defaults.rs` (each written
//! once, and shown in `--help` from there) and checks values, producing the [`Config`] the rest
//! of the code uses: each part's settings as the part takes them ([`BusOptions`],
//! [`AuthSettings`], …).

pub mod defaults;
mod resolve;
#[cfg(test)]
mod tests;
mod weak;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::admission::{ConnectionLimits, StreamLimits};
use crate::auth::{AuthMode, AuthSettings, JwtAlg};
use crate::bus::{BusOptions, Routing};
use crate::consume::spec::{ConsumeGiven, ConsumeSpec};
use crate::hub::QueueLimits;
use crate::update::Limits;
use crate::webhook::WebhookSettings;

/// Every option of `tidings serve`, each optional so that layers can be merged.
///
/// Options that can hold a secret (keys, URLs with credentials) hide their environment
/// variable's value from `--help`, and `Debug` shows none of the values (review L6).
#[derive(Clone, Default, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(mut_args = defaults::in_help)]
pub struct Options {
    /// Address to listen on. Port 0 picks a free port; the ready
    /// log line gives the address.
    #[arg(long, env = "TIDINGS_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// PEM file of the TLS certificate chain (leaf first); with --tls-key, serve HTTPS
    /// (HTTP/2 and HTTP/1.1). Reloaded on SIGHUP.
    #[arg(long, env = "TIDINGS_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the TLS private key (PKCS#8, PKCS#1 or SEC1). Reloaded on SIGHUP.
    #[arg(long, env = "TIDINGS_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a client has to send a complete request head, from the moment it connects (or
    /// its previous request was answered); also bounds the TLS handshake.
    #[arg(long, env = "TIDINGS_HEADER_READ_TIMEOUT", value_name = "SECS")]
    pub header_read_timeout: Option<u64>,
    /// Seconds a write to a client may make no progress before the connection is closed (the
    /// client stopped reading, or vanished).
    #[arg(long, env = "TIDINGS_WRITE_TIMEOUT", value_name = "SECS")]
    pub write_timeout: Option<u64>,
    /// Bus URL: memory:// (one instance); redis://, rediss://, redis+sentinel://,
    /// rediss+sentinel://, redis+cluster://, rediss+cluster:// (Redis, alone, behind Sentinel,
    /// or a Redis Cluster); nats:// (NATS with JetStream); amqp://, amqps:// (RabbitMQ);
    /// kafka://, kafkas:// (Kafka).
    #[arg(long, env = "TIDINGS_BUS", hide_env_values = true, value_name = "URL")]
    pub bus: Option<String>,
    /// Names the cluster on its broker: the prefix of the Redis bus's keys and channels, the
    /// NATS bus's stream, the RabbitMQ bus's exchange and stream, the Kafka bus's topic.
    /// Formerly `--redis-prefix`, still accepted.
    #[arg(
        long,
        alias = "redis-prefix",
        env = "TIDINGS_BUS_PREFIX",
        value_name = "PREFIX"
    )]
    #[serde(alias = "redis-prefix")]
    pub bus_prefix: Option<String>,
    /// Redis bus: how updates reach instances: interest (only the topics this instance's
    /// subscribers need) or broadcast (every update to every instance).
    #[arg(long, env = "TIDINGS_ROUTING", value_name = "MODE", value_parser = choice::<Routing>(&Routing::NAMES))]
    pub routing: Option<Routing>,
    /// This instance's id.
    #[arg(long, env = "TIDINGS_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
    /// Authorization mode: jwt or none (development: no tokens at all).
    #[arg(long, env = "TIDINGS_AUTH", value_name = "MODE", value_parser = choice::<AuthMode>(&AuthMode::NAMES))]
    pub auth: Option<AuthMode>,
    /// JWT key for publishers and subscribers (HS256 secret, or PEM public key path).
    #[arg(
        long,
        env = "TIDINGS_JWT_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub jwt_key: Option<String>,
    /// JWT key for publishers only.
    #[arg(
        long,
        env = "TIDINGS_PUBLISHER_JWT_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub publisher_jwt_key: Option<String>,
    /// JWT key for subscribers only.
    #[arg(
        long,
        env = "TIDINGS_SUBSCRIBER_JWT_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub subscriber_jwt_key: Option<String>,
    /// JWT signature algorithm: HS256, RS256 or ES256.
    #[arg(
        long,
        env = "TIDINGS_JWT_ALG",
        value_name = "ALG",
        ignore_case = true,
        value_parser = choice::<JwtAlg>(&JwtAlg::NAMES)
    )]
    pub jwt_alg: Option<JwtAlg>,
    /// Seconds of clock skew tolerated on exp/nbf/iat.
    #[arg(long, env = "TIDINGS_JWT_LEEWAY", value_name = "SECS")]
    pub jwt_leeway: Option<u64>,
    /// A JWKS endpoint (http:// or https://) the token verification keys come from, chosen by
    /// each token's `kid`, instead of jwt-key.
    #[arg(
        long,
        env = "TIDINGS_JWKS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub jwks_url: Option<String>,
    /// Seconds between two fetches of the key set of jwks-url.
    #[arg(long, env = "TIDINGS_JWKS_REFRESH", value_name = "SECS")]
    pub jwks_refresh: Option<u64>,
    /// With jwks-url and neither jwt-audience nor jwt-issuer: accept every token the identity
    /// provider signs (start-up refuses that setup otherwise).
    #[arg(long, env = "TIDINGS_JWKS_ANY_AUDIENCE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub jwks_any_audience: Option<bool>,
    /// Issuers trusted with keys of their own (Mercure 1.0's several issuers), in tidings.toml
    /// only, as [[issuer]] tables: a token whose iss names one is verified with its keys only
    /// (docs/configuration.md#several-issuers).
    #[arg(skip)]
    #[serde(default)]
    pub issuer: Vec<IssuerTable>,
    /// The application's authorization callback (http:// or https://): asked about every new
    /// stream that presents no valid token, with the client's cookies and headers.
    #[arg(
        long,
        env = "TIDINGS_AUTH_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub auth_url: Option<String>,
    /// Seconds the authorization callback has to answer before the stream is told to retry.
    #[arg(long, env = "TIDINGS_AUTH_TIMEOUT", value_name = "SECS")]
    pub auth_timeout: Option<u64>,
    /// Seconds a decision of the authorization callback is reused for the same credentials and
    /// selectors (never past its expiresIn); 0 asks for every stream.
    #[arg(long, env = "TIDINGS_AUTH_CACHE_TTL", value_name = "SECS")]
    pub auth_cache_ttl: Option<u64>,
    /// Calls to the authorization callback in flight at most; past it a stream is told to
    /// retry without a call.
    #[arg(long, env = "TIDINGS_AUTH_CONCURRENCY", value_name = "N")]
    pub auth_concurrency: Option<usize>,
    /// Calls to the authorization callback in flight for one client address at most.
    #[arg(long, env = "TIDINGS_AUTH_CONCURRENCY_PER_ADDRESS", value_name = "N")]
    pub auth_concurrency_per_address: Option<usize>,
    /// The issuer every token must name in its `iss` claim (unchecked when unset).
    #[arg(long, env = "TIDINGS_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// The audience every token must name in its `aud` claim, such as the hub's public URL
    /// (unchecked when unset).
    #[arg(long, env = "TIDINGS_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Close a stream when its subscriber's token expires (exp plus the leeway), with a
    /// retry hint.
    #[arg(long, env = "TIDINGS_CLOSE_EXPIRED_STREAMS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub close_expired_streams: Option<bool>,
    /// The token claim that names a subscriber's session.
    #[arg(long, env = "TIDINGS_SESSION_CLAIM", value_name = "CLAIM")]
    pub session_claim: Option<String>,
    /// Allow subscribers without a token (they see public updates only).
    #[arg(long, env = "TIDINGS_ANONYMOUS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub anonymous: Option<bool>,
    /// Enable the subscriptions API and subscription events (Mercure's `subscriptions`).
    #[arg(long, env = "TIDINGS_SUBSCRIPTIONS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub subscriptions: Option<bool>,
    /// Subscription events published per second for the streams of one client address, on
    /// average (a burst of ten seconds' worth at once); past it they are dropped and counted.
    /// 0: no bound.
    #[arg(
        long,
        env = "TIDINGS_SUBSCRIPTION_EVENTS_PER_ADDRESS",
        value_name = "PER_SEC"
    )]
    pub subscription_events_per_address: Option<u32>,
    /// Updates kept for replay by Last-Event-ID, at most; 0 disables history.
    #[arg(long, env = "TIDINGS_HISTORY_SIZE", value_name = "N")]
    pub history_size: Option<usize>,
    /// Seconds an update stays in history for replay (history-size caps it); 0: no age limit.
    #[arg(long, env = "TIDINGS_HISTORY_TTL", value_name = "SECS")]
    pub history_ttl: Option<u64>,
    /// Seconds an update id is remembered: for resuming, and to store a retried publish once.
    #[arg(long, env = "TIDINGS_HISTORY_ID_TTL", value_name = "SECS")]
    pub history_id_ttl: Option<u64>,
    /// Longest wait, in seconds, between two attempts to reach the broker (at start-up and
    /// after a connection is lost); the waits double up to it, with jitter.
    #[arg(long, env = "TIDINGS_BUS_RECONNECT_MAX", value_name = "SECS")]
    pub bus_reconnect_max: Option<u64>,
    /// Longest wait, in seconds, for the broker to answer one operation (connecting, a
    /// command, a publish's acknowledgement): past it a publish answers 504 (outcome unknown)
    /// and a read 503.
    #[arg(long, env = "TIDINGS_BUS_TIMEOUT", value_name = "SECS")]
    pub bus_timeout: Option<u64>,
    /// Longest wait, in seconds, for one batch of history reads for resuming clients (Redis),
    /// and for a new subscriber's topics to be listened to under interest routing.
    #[arg(long, env = "TIDINGS_BUS_REPLAY_TIMEOUT", value_name = "SECS")]
    pub bus_replay_timeout: Option<u64>,
    /// Redis bus (any of its schemes: redis://, rediss://, alone, behind Sentinel or a
    /// Cluster): replicas that must hold a publish before it is answered (WAIT); a publish
    /// they do not acknowledge within bus-timeout answers that its outcome is unknown.
    #[arg(long, env = "TIDINGS_REDIS_MIN_REPLICAS", value_name = "N")]
    pub redis_min_replicas: Option<usize>,
    /// Redis bus under interest routing: the most glob patterns (one per distinct literal
    /// prefix of the URI templates subscribed to) an instance PSUBSCRIBEs; past it, it listens
    /// to every update instead. Redis matches every pattern against every publish.
    #[arg(long, env = "TIDINGS_REDIS_MAX_PATTERNS", value_name = "N")]
    pub redis_max_patterns: Option<usize>,
    /// Redis bus under interest routing: seconds an instance stays subscribed to a topic's
    /// channel after the topic's last stream on it left (0: at once); a topic wanted again
    /// meanwhile (a page reloaded, a stream back) costs Redis nothing.
    #[arg(long, env = "TIDINGS_REDIS_UNSUBSCRIBE_AFTER", value_name = "SECS")]
    pub redis_unsubscribe_after: Option<u64>,
    /// Seconds a cluster-wide session registry entry lives unrefreshed (an instance that dies
    /// drops out after this long).
    #[arg(long, env = "TIDINGS_SESSION_TTL", value_name = "SECS")]
    pub session_ttl: Option<u64>,
    /// Seconds between heartbeat comments on idle streams.
    #[arg(long, env = "TIDINGS_HEARTBEAT", value_name = "SECS")]
    pub heartbeat: Option<u64>,
    /// Seconds between the heartbeats by which the instances of a cluster know each other; an
    /// instance that misses three is counted gone.
    #[arg(long, env = "TIDINGS_CLUSTER_HEARTBEAT", value_name = "SECS")]
    pub cluster_heartbeat: Option<u64>,
    /// Milliseconds a cluster-wide question (presence, a disconnect, a subject's streams)
    /// waits for every instance's answer.
    #[arg(long, env = "TIDINGS_CLUSTER_DEADLINE_MS", value_name = "MS")]
    pub cluster_deadline_ms: Option<u64>,
    /// A key that authorizes the admin API (`Authorization: Bearer <key>`), beside publisher
    /// tokens with the admin claim; at least 32 characters.
    #[arg(
        long,
        env = "TIDINGS_ADMIN_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub admin_key: Option<String>,
    /// Serve the operator page at /admin/: off, loopback (to clients on this machine, not
    /// through a proxy), or on (to anyone: it still needs the admin credential to do anything).
    #[arg(long, env = "TIDINGS_ADMIN_PAGE", value_name = "WHO")]
    pub admin_page: Option<AdminPage>,
    /// Where lifecycle webhooks are sent (http:// or https://): sessions online and offline,
    /// streams subscribed and unsubscribed, in signed JSON batches.
    #[arg(
        long,
        env = "TIDINGS_WEBHOOK_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub webhook_url: Option<String>,
    /// The key of the webhooks' HMAC-SHA256 signature (required with webhook-url).
    #[arg(
        long,
        env = "TIDINGS_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub webhook_secret: Option<String>,
    /// Webhook events held while the receiver is slow or down; more are dropped and counted.
    #[arg(long, env = "TIDINGS_WEBHOOK_QUEUE", value_name = "N")]
    pub webhook_queue: Option<usize>,
    /// Bytes of webhook events held (as sent) while the receiver is slow or down; more are
    /// dropped and counted. One event always fits.
    #[arg(long, env = "TIDINGS_WEBHOOK_QUEUE_BYTES", value_name = "BYTES")]
    pub webhook_queue_bytes: Option<usize>,
    /// Seconds a webhook batch is retried (with backoff) before it is dropped.
    #[arg(long, env = "TIDINGS_WEBHOOK_RETRY_FOR", value_name = "SECS")]
    pub webhook_retry_for: Option<u64>,
    /// Seconds a session may be without streams before it is told offline (a page reload is
    /// no offline).
    #[arg(long, env = "TIDINGS_WEBHOOK_OFFLINE_GRACE", value_name = "SECS")]
    pub webhook_offline_grace: Option<u64>,
    /// Origins allowed to call the hub from a browser (repeatable; `*` for any).
    #[arg(
        long,
        env = "TIDINGS_CORS_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub cors_origin: Vec<String>,
    /// The name of the Mercure 1.0 token cookie (read before the classic mercureAuthorization;
    /// Symfony's debug mode writes mercure_access_token).
    #[arg(long, env = "TIDINGS_COOKIE_NAME", value_name = "NAME")]
    pub cookie_name: Option<String>,
    /// Origins whose pages may publish with a token cookie (repeatable).
    /// Without it, the cookie is accepted for subscribing only.
    #[arg(
        long,
        env = "TIDINGS_PUBLISH_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub publish_origin: Vec<String>,
    /// Consume what the application's services already publish (repeatable): a RabbitMQ
    /// exchange (amqp://, amqps://) or a Redis stream (redis://, rediss://), the source's URL
    /// with the consumer's keys as its query, such as
    /// 'amqp://guest:guest@127.0.0.1:5672/%2f?exchange=sse-events&preset=spring-sse-starter'
    /// (docs/consumers.md); in tidings.toml, [[consume]] tables. In the environment, separated
    /// by spaces.
    #[arg(
        long,
        env = "TIDINGS_CONSUME",
        hide_env_values = true,
        value_name = "URL",
        value_delimiter = ' '
    )]
    #[serde(default)]
    pub consume: Vec<ConsumeGiven>,
    /// OpenTelemetry: the collector's OTLP/HTTP base URL (http:// or https://, e.g.
    /// http://collector:4318) to send traces to; tracing is off without it.
    #[arg(
        long,
        env = "TIDINGS_OTLP_ENDPOINT",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0 to 1 (a publisher's own traceparent decides for
    /// the traces it starts).
    #[arg(long, env = "TIDINGS_TRACE_SAMPLE_RATIO", value_name = "RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// Seconds given to open streams to close on shutdown.
    #[arg(long, env = "TIDINGS_DRAIN_SECS", value_name = "SECS")]
    pub drain_secs: Option<u64>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "TIDINGS_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most topic selectors in one subscription.
    #[arg(long, env = "TIDINGS_MAX_SELECTORS", value_name = "N")]
    pub max_selectors: Option<usize>,
    /// Longest topic or selector, in bytes.
    #[arg(long, env = "TIDINGS_MAX_SELECTOR_LENGTH", value_name = "BYTES")]
    pub max_selector_length: Option<usize>,
    /// Most topics in one update.
    #[arg(long, env = "TIDINGS_MAX_TOPICS_PER_UPDATE", value_name = "N")]
    pub max_topics_per_update: Option<usize>,
    /// Longest update id, in bytes.
    #[arg(long, env = "TIDINGS_MAX_ID_LENGTH", value_name = "BYTES")]
    pub max_id_length: Option<usize>,
    /// Longest event name (Mercure `type`, session `eventName`), in bytes.
    #[arg(long, env = "TIDINGS_MAX_EVENT_NAME_LENGTH", value_name = "BYTES")]
    pub max_event_name_length: Option<usize>,
    /// Most open streams on this instance; past it new streams get 503.
    #[arg(long, env = "TIDINGS_MAX_STREAMS", value_name = "N")]
    pub max_streams: Option<usize>,
    /// Most open streams from one client address (IPv6: one /64); past it 429.
    #[arg(long, env = "TIDINGS_MAX_STREAMS_PER_ADDRESS", value_name = "N")]
    pub max_streams_per_address: Option<usize>,
    /// Most open session-API streams of one session on this instance; past it 429.
    #[arg(long, env = "TIDINGS_MAX_STREAMS_PER_SESSION", value_name = "N")]
    pub max_streams_per_session: Option<usize>,
    /// Most connections open on this instance; past it a new one is closed at once.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections open from one client address (IPv6: per /64; a trusted proxy's are
    /// not counted per address); past it a new one is closed at once.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    pub max_connections_per_address: Option<usize>,
    /// Seconds an HTTP/2 connection may stay without a request open before it is closed
    /// (GOAWAY).
    #[arg(long, env = "TIDINGS_H2_IDLE_TIMEOUT", value_name = "SECS")]
    pub h2_idle_timeout: Option<u64>,
    /// Most distinct wildcard selectors (*, URI templates, URL patterns) the streams of one
    /// client address hold; a stream that needs more gets 429. Each is matched against every
    /// update.
    #[arg(long, env = "TIDINGS_MAX_WIDE_SELECTORS_PER_ADDRESS", value_name = "N")]
    pub max_wide_selectors_per_address: Option<usize>,
    /// Most distinct wildcard selectors this instance's streams hold; a stream that needs more
    /// gets 503.
    #[arg(long, env = "TIDINGS_MAX_WIDE_SELECTORS", value_name = "N")]
    pub max_wide_selectors: Option<usize>,
    /// Proxies (addresses or CIDR networks, repeatable) whose X-Forwarded-For names the
    /// client address.
    #[arg(
        long,
        env = "TIDINGS_TRUSTED_PROXY",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub trusted_proxy: Vec<String>,
    /// Updates queued per subscriber before it counts as slow and is disconnected.
    #[arg(long, env = "TIDINGS_SUBSCRIBER_QUEUE", value_name = "N")]
    pub subscriber_queue: Option<usize>,
    /// Bytes of encoded events queued per subscriber before it counts as slow and is
    /// disconnected; one update always fits.
    #[arg(long, env = "TIDINGS_SUBSCRIBER_QUEUE_BYTES", value_name = "BYTES")]
    pub subscriber_queue_bytes: Option<usize>,
    /// Compiled selectors kept in the cache.
    #[arg(long, env = "TIDINGS_SELECTOR_CACHE_SIZE", value_name = "N")]
    pub selector_cache_size: Option<usize>,
    /// Log format: pretty or json.
    #[arg(long, env = "TIDINGS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter: a level (info) or comma-separated target=level directives, such as
    /// warn,tidings=debug (RUST_LOG is not read).
    #[arg(long, env = "TIDINGS_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

/// Parses one of a core enum's `names` on the command line (listed in `--help` and in the
/// error for anything else). The core types know nothing of clap: they parse from their name.
fn choice<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names).try_map(|name| name.parse::<T>())
}

/// Who the operator page (`/admin/`) is served to. Whatever this says, the page does nothing
/// without the admin credential; off unless asked for, and never served past loopback unless
/// `on` says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AdminPage {
    /// Not served.
    #[default]
    Off,
    /// Served to clients connected from a loopback address, and not through a proxy (a request
    /// with forwarding headers is refused).
    Loopback,
    /// Served to any client.
    On,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Why the configuration cannot be used; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not TOML, or holds an unknown key or a value of the wrong
    /// type (the message names the key).
    #[error("in {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML reader found.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// An option's value cannot be used.
    #[error("{problem}")]
    Invalid {
        /// The option, as its flag names it without `--` (`heartbeat`).
        option: &'static str,
        /// What is wrong and what to give instead, naming the option.
        problem: String,
    },
}

impl ConfigError {
    /// The option at fault, when one value is.
    pub fn option(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { option, .. } => Some(option),
            ConfigError::Read { .. } | ConfigError::Parse { .. } => None,
        }
    }
}

/// An `[[issuer]]` table of `tidings.toml`: an issuer trusted with keys of its own.
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IssuerTable {
    /// The `iss` its tokens carry.
    pub iss: String,
    /// The algorithm of its keys (`jwt-alg`'s names; HS256 by default).
    pub jwt_alg: Option<JwtAlg>,
    /// Its key for both roles.
    pub jwt_key: Option<String>,
    /// Its key for publishers.
    pub publisher_jwt_key: Option<String>,
    /// Its key for subscribers.
    pub subscriber_jwt_key: Option<String>,
    /// Its JWKS endpoint, instead of keys.
    pub jwks_url: Option<String>,
    /// The audience its tokens must name (the hub's jwt-audience by default).
    pub jwt_audience: Option<String>,
    /// Named as an authorization server in the protected resource metadata.
    pub authorization_server: Option<bool>,
}

/// The PEM files of a TLS certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls-cert`.
    pub cert: PathBuf,
    /// `tls-key`.
    pub key: PathBuf,
}

/// The resolved configuration of one instance: each part's settings, as the part takes them.
/// (`Debug` shows what holds no secret, URLs with their credentials masked.)
#[derive(Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The TLS certificate and key files, when serving HTTPS.
    pub tls: Option<TlsFiles>,
    /// Time for a request head to arrive (and for a TLS handshake).
    pub header_read_timeout: Duration,
    /// Time a write may make no progress.
    pub write_timeout: Duration,
    /// The bus URL (`bus`).
    pub bus_url: String,
    /// The bus's settings: history, its name on the broker, routing, timeouts.
    pub bus: BusOptions,
    /// This instance's id.
    pub instance_id: String,
    /// Authorization settings.
    pub auth: AuthSettings,
    /// Streams end when their subscriber's token expires.
    pub close_expired_streams: bool,
    /// The subscriptions API and subscription events are on.
    pub subscriptions: bool,
    /// Subscription events per second per client address, on average (0: unbounded).
    pub subscription_events_per_address: u32,
    /// Interval of heartbeat comments on idle streams.
    pub heartbeat: Duration,
    /// How the instance takes part in its cluster: heartbeats and the questions' deadline.
    pub cluster_heartbeat: Duration,
    /// How long a cluster-wide question waits for the instances' answers.
    pub cluster_deadline: Duration,
    /// The admin API's key (`admin-key`), if set; never shown.
    pub admin_key: Option<String>,
    /// Who the operator page is served to.
    pub admin_page: AdminPage,
    /// Lifecycle webhooks, when a receiver is configured.
    pub webhooks: Option<WebhookSettings>,
    /// Where traces go, when tracing is on (`otlp-endpoint`).
    pub tracing: Option<crate::telemetry::Settings>,
    /// Allowed browser origins (empty: no CORS headers).
    pub cors_origins: Vec<String>,
    /// The consumers of the application's own sources.
    pub consumers: Vec<ConsumeSpec>,
    /// The Mercure 1.0 token cookie's name (`cookie-name`).
    pub cookie_name: String,
    /// Origins whose pages may publish with the token cookie.
    pub publish_origins: Vec<String>,
    /// Time given to open streams to close on shutdown.
    pub drain: Duration,
    /// Input limits.
    pub limits: Limits,
    /// Caps on open streams.
    pub streams: StreamLimits,
    /// Caps on connections, and the HTTP/2 idle limit.
    pub connections: ConnectionLimits,
    /// Proxies whose `X-Forwarded-For` names the client address.
    pub trusted_proxies: Vec<IpNet>,
    /// The bounds of each subscriber's queue.
    pub subscriber_queue: QueueLimits,
    /// Compiled selector cache size.
    pub selector_cache_size: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("bus_url", &crate::bus::redact(&self.bus_url))
            .field("instance_id", &self.instance_id)
            .field("auth", &self.auth)
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Options::default()
            .resolve()
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"))
    }
}

impl Options {
    /// Reads options from a TOML file.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read, is not TOML, or has an unknown key or a
    /// value of the wrong type (the message names the key).
    pub fn from_file(path: &Path) -> Result<Options, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Fills every option not set here from `lower` (this layer wins).
    pub fn over(self, lower: Options) -> Options {
        macro_rules! pick {
            ($($field:ident),*) => {
                Options { $($field: self.$field.or(lower.$field),)*
                    cors_origin: if self.cors_origin.is_empty() { lower.cors_origin } else { self.cors_origin },
                    publish_origin: if self.publish_origin.is_empty() { lower.publish_origin } else { self.publish_origin },
                    trusted_proxy: if self.trusted_proxy.is_empty() { lower.trusted_proxy } else { self.trusted_proxy },
                    consume: if self.consume.is_empty() { lower.consume } else { self.consume },
                    issuer: if self.issuer.is_empty() { lower.issuer } else { self.issuer },
                }
            };
        }
        pick!(
            listen,
            tls_cert,
            tls_key,
            header_read_timeout,
            write_timeout,
            bus,
            bus_prefix,
            routing,
            instance_id,
            auth,
            jwt_key,
            publisher_jwt_key,
            subscriber_jwt_key,
            jwt_alg,
            jwt_leeway,
            close_expired_streams,
            session_claim,
            jwt_issuer,
            jwt_audience,
            jwks_url,
            jwks_refresh,
            jwks_any_audience,
            cookie_name,
            auth_url,
            auth_timeout,
            auth_cache_ttl,
            auth_concurrency,
            auth_concurrency_per_address,
            anonymous,
            subscriptions,
            subscription_events_per_address,
            history_size,
            history_ttl,
            history_id_ttl,
            bus_reconnect_max,
            bus_timeout,
            bus_replay_timeout,
            session_ttl,
            redis_min_replicas,
            redis_max_patterns,
            redis_unsubscribe_after,
            heartbeat,
            cluster_heartbeat,
            cluster_deadline_ms,
            admin_key,
            admin_page,
            webhook_url,
            webhook_secret,
            webhook_queue,
            webhook_queue_bytes,
            webhook_retry_for,
            webhook_offline_grace,
            otlp_endpoint,
            trace_sample_ratio,
            drain_secs,
            max_body_bytes,
            max_selectors,
            max_selector_length,
            max_topics_per_update,
            max_id_length,
            max_event_name_length,
            max_streams,
            max_streams_per_address,
            max_streams_per_session,
            max_wide_selectors_per_address,
            max_wide_selectors,
            max_connections,
            max_connections_per_address,
            h2_idle_timeout,
            subscriber_queue,
            subscriber_queue_bytes,
            selector_cache_size,
            log_format,
            log
        )
    }
}
