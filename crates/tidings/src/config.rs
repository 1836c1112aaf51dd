//! Configuration of `tidings serve`: defaults → `tidings.toml` → `TIDINGS_*` environment →
//! command-line flags, each layer overriding the one before.
//!
//! Every option is declared once, in [`Options`]: the same struct is parsed by clap (flags and
//! environment variables, `--history-size` / `TIDINGS_HISTORY_SIZE`) and by serde (the file,
//! `history-size = 1000`). Unknown keys in the file are errors, so a typo is reported instead of
//! silently ignored. [`Options::resolve`] applies the defaults and checks values, producing the
//! [`Config`] the rest of the code uses. The names are a contract (DESIGN §3.5).
//!
//! Over 600 lines for now: the one option table, its layering and its resolution sit together
//! until issue 29's config slice cuts them apart (the defaults as named constants, the
//! resolution into each part's settings, a test holding `docs/configuration.md` to them).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use ipnet::IpNet;

use crate::admission::StreamLimits;
use crate::auth::{AuthMode, AuthSettings, CallbackSettings, JwtAlg};
use crate::bus::Routing;
use crate::update::Limits;
use crate::webhook::WebhookSettings;

/// Every option of `tidings serve`, each optional so that layers can be merged.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Options {
    /// Address to listen on [default: 127.0.0.1:3000]. Port 0 picks a free port; the ready
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
    /// its previous request was answered); also bounds the TLS handshake [default: 10].
    #[arg(long, env = "TIDINGS_HEADER_READ_TIMEOUT", value_name = "SECS")]
    pub header_read_timeout: Option<u64>,
    /// Seconds a write to a client may make no progress before the connection is closed (the
    /// client stopped reading, or vanished) [default: 30].
    #[arg(long, env = "TIDINGS_WRITE_TIMEOUT", value_name = "SECS")]
    pub write_timeout: Option<u64>,
    /// Bus URL: memory:// [default], redis://…, amqp://…, nats://…, kafka://…
    #[arg(long, env = "TIDINGS_BUS", value_name = "URL")]
    pub bus: Option<String>,
    /// Names the cluster on its broker: the prefix of the Redis bus's keys and channels, the
    /// NATS bus's stream, the RabbitMQ bus's exchange and stream, the Kafka bus's topic
    /// [default: tidings]. Formerly
    /// `--redis-prefix`, still accepted.
    #[arg(
        long,
        alias = "redis-prefix",
        env = "TIDINGS_BUS_PREFIX",
        value_name = "PREFIX"
    )]
    #[serde(alias = "redis-prefix")]
    pub bus_prefix: Option<String>,
    /// How a broker bus brings updates to instances: interest [default] (only the topics
    /// this instance's subscribers need) or broadcast (every update to every instance).
    #[arg(long, env = "TIDINGS_ROUTING", value_name = "MODE", value_parser = choice::<Routing>(&Routing::NAMES))]
    pub routing: Option<Routing>,
    /// This instance's id [default: generated].
    #[arg(long, env = "TIDINGS_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
    /// Authorization mode: jwt [default] or none (development: no tokens at all).
    #[arg(long, env = "TIDINGS_AUTH", value_name = "MODE", value_parser = choice::<AuthMode>(&AuthMode::NAMES))]
    pub auth: Option<AuthMode>,
    /// JWT key for publishers and subscribers (HS256 secret, or PEM public key path).
    #[arg(long, env = "TIDINGS_JWT_KEY", value_name = "KEY")]
    pub jwt_key: Option<String>,
    /// JWT key for publishers only.
    #[arg(long, env = "TIDINGS_PUBLISHER_JWT_KEY", value_name = "KEY")]
    pub publisher_jwt_key: Option<String>,
    /// JWT key for subscribers only.
    #[arg(long, env = "TIDINGS_SUBSCRIBER_JWT_KEY", value_name = "KEY")]
    pub subscriber_jwt_key: Option<String>,
    /// JWT signature algorithm: HS256 [default], RS256 or ES256.
    #[arg(
        long,
        env = "TIDINGS_JWT_ALG",
        value_name = "ALG",
        ignore_case = true,
        value_parser = choice::<JwtAlg>(&JwtAlg::NAMES)
    )]
    pub jwt_alg: Option<JwtAlg>,
    /// Seconds of clock skew tolerated on exp/nbf/iat [default: 5].
    #[arg(long, env = "TIDINGS_JWT_LEEWAY", value_name = "SECS")]
    pub jwt_leeway: Option<u64>,
    /// A JWKS endpoint (http:// or https://) the token verification keys come from, chosen by
    /// each token's `kid`, instead of jwt-key.
    #[arg(long, env = "TIDINGS_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,
    /// Seconds between two fetches of the key set of jwks-url [default: 300].
    #[arg(long, env = "TIDINGS_JWKS_REFRESH", value_name = "SECS")]
    pub jwks_refresh: Option<u64>,
    /// The application's authorization callback (http:// or https://): asked about every new
    /// stream that presents no valid token, with the client's cookies and headers.
    #[arg(long, env = "TIDINGS_AUTH_URL", value_name = "URL")]
    pub auth_url: Option<String>,
    /// Seconds the authorization callback has to answer before the stream is told to retry
    /// [default: 5].
    #[arg(long, env = "TIDINGS_AUTH_TIMEOUT", value_name = "SECS")]
    pub auth_timeout: Option<u64>,
    /// Seconds a decision of the authorization callback is reused for the same credentials and
    /// selectors (never past its expiresIn); 0 asks for every stream [default: 30].
    #[arg(long, env = "TIDINGS_AUTH_CACHE_TTL", value_name = "SECS")]
    pub auth_cache_ttl: Option<u64>,
    /// The issuer every token must name in its `iss` claim (unchecked when unset).
    #[arg(long, env = "TIDINGS_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// The audience every token must name in its `aud` claim, such as the hub's public URL
    /// (unchecked when unset).
    #[arg(long, env = "TIDINGS_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Close a stream when its subscriber's token expires (exp plus the leeway), with a
    /// retry hint [default: true].
    #[arg(long, env = "TIDINGS_CLOSE_EXPIRED_STREAMS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub close_expired_streams: Option<bool>,
    /// The token claim that names a subscriber's session [default: sub].
    #[arg(long, env = "TIDINGS_SESSION_CLAIM", value_name = "CLAIM")]
    pub session_claim: Option<String>,
    /// Allow subscribers without a token (they see public updates only).
    #[arg(long, env = "TIDINGS_ANONYMOUS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub anonymous: Option<bool>,
    /// Enable the subscriptions API and subscription events (Mercure's `subscriptions`).
    #[arg(long, env = "TIDINGS_SUBSCRIPTIONS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub subscriptions: Option<bool>,
    /// Updates kept for replay by Last-Event-ID, at most; 0 disables history
    /// [default: 100000].
    #[arg(long, env = "TIDINGS_HISTORY_SIZE", value_name = "N")]
    pub history_size: Option<usize>,
    /// Seconds an update stays in history for replay (history-size caps it); 0: no age limit
    /// [default: 300].
    #[arg(long, env = "TIDINGS_HISTORY_TTL", value_name = "SECS")]
    pub history_ttl: Option<u64>,
    /// Seconds an update id is remembered: for resuming, and to store a retried publish once
    /// [default: history-ttl, or 86400 without an age limit].
    #[arg(long, env = "TIDINGS_HISTORY_ID_TTL", value_name = "SECS")]
    pub history_id_ttl: Option<u64>,
    /// Longest wait, in seconds, between two attempts to reach the broker (at start-up and
    /// after a connection is lost); the waits double up to it, with jitter [default: 5].
    #[arg(long, env = "TIDINGS_BUS_RECONNECT_MAX", value_name = "SECS")]
    pub bus_reconnect_max: Option<u64>,
    /// Longest wait, in seconds, for the broker to answer one operation (connecting, a
    /// command, a publish's acknowledgement): past it a publish answers 504 (outcome unknown)
    /// and a read 503 [default: 2 on Redis and NATS, 5 on RabbitMQ].
    #[arg(long, env = "TIDINGS_BUS_TIMEOUT", value_name = "SECS")]
    pub bus_timeout: Option<u64>,
    /// Longest wait, in seconds, for one batch of history reads for resuming clients (Redis),
    /// and for a new subscriber's topics to be listened to under interest routing
    /// [default: 15].
    #[arg(long, env = "TIDINGS_BUS_REPLAY_TIMEOUT", value_name = "SECS")]
    pub bus_replay_timeout: Option<u64>,
    /// Redis bus: replicas that must hold a publish before it is answered (WAIT); a publish
    /// they do not acknowledge within bus-timeout answers that its outcome is unknown
    /// [default: 0].
    #[arg(long, env = "TIDINGS_REDIS_MIN_REPLICAS", value_name = "N")]
    pub redis_min_replicas: Option<usize>,
    /// Seconds a cluster-wide session registry entry lives unrefreshed (an instance that dies
    /// drops out after this long) [default: 30].
    #[arg(long, env = "TIDINGS_SESSION_TTL", value_name = "SECS")]
    pub session_ttl: Option<u64>,
    /// Seconds between heartbeat comments on idle streams [default: 15].
    #[arg(long, env = "TIDINGS_HEARTBEAT", value_name = "SECS")]
    pub heartbeat: Option<u64>,
    /// Where lifecycle webhooks are sent (http:// or https://): sessions online and offline,
    /// streams subscribed and unsubscribed, in signed JSON batches.
    #[arg(long, env = "TIDINGS_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// The key of the webhooks' HMAC-SHA256 signature (required with webhook-url).
    #[arg(long, env = "TIDINGS_WEBHOOK_SECRET", value_name = "SECRET")]
    pub webhook_secret: Option<String>,
    /// Webhook events held while the receiver is slow or down; more are dropped and counted
    /// [default: 10000].
    #[arg(long, env = "TIDINGS_WEBHOOK_QUEUE", value_name = "N")]
    pub webhook_queue: Option<usize>,
    /// Seconds a webhook batch is retried (with backoff) before it is dropped [default: 60].
    #[arg(long, env = "TIDINGS_WEBHOOK_RETRY_FOR", value_name = "SECS")]
    pub webhook_retry_for: Option<u64>,
    /// Seconds a session may be without streams before it is told offline (a page reload is
    /// no offline) [default: 5].
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
    /// Origins whose pages may publish with the mercureAuthorization cookie (repeatable).
    /// Without it, the cookie is accepted for subscribing only.
    #[arg(
        long,
        env = "TIDINGS_PUBLISH_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub publish_origin: Vec<String>,
    /// Seconds given to open streams to close on shutdown [default: 10].
    #[arg(long, env = "TIDINGS_DRAIN_SECS", value_name = "SECS")]
    pub drain_secs: Option<u64>,
    /// Largest request body accepted, in bytes [default: 1048576].
    #[arg(long, env = "TIDINGS_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most topic selectors in one subscription [default: 100].
    #[arg(long, env = "TIDINGS_MAX_SELECTORS", value_name = "N")]
    pub max_selectors: Option<usize>,
    /// Longest topic or selector, in bytes [default: 2048].
    #[arg(long, env = "TIDINGS_MAX_SELECTOR_LENGTH", value_name = "BYTES")]
    pub max_selector_length: Option<usize>,
    /// Most topics in one update [default: 100].
    #[arg(long, env = "TIDINGS_MAX_TOPICS_PER_UPDATE", value_name = "N")]
    pub max_topics_per_update: Option<usize>,
    /// Longest update id, in bytes [default: 1024].
    #[arg(long, env = "TIDINGS_MAX_ID_LENGTH", value_name = "BYTES")]
    pub max_id_length: Option<usize>,
    /// Longest event name (Mercure `type`, session `eventName`), in bytes [default: 256].
    #[arg(long, env = "TIDINGS_MAX_EVENT_NAME_LENGTH", value_name = "BYTES")]
    pub max_event_name_length: Option<usize>,
    /// Most open streams on this instance; past it new streams get 503 [default: 100000].
    #[arg(long, env = "TIDINGS_MAX_STREAMS", value_name = "N")]
    pub max_streams: Option<usize>,
    /// Most open streams from one client address (IPv6: one /64); past it 429 [default: 1000].
    #[arg(long, env = "TIDINGS_MAX_STREAMS_PER_ADDRESS", value_name = "N")]
    pub max_streams_per_address: Option<usize>,
    /// Most open session-API streams of one session on this instance; past it 429
    /// [default: 32].
    #[arg(long, env = "TIDINGS_MAX_STREAMS_PER_SESSION", value_name = "N")]
    pub max_streams_per_session: Option<usize>,
    /// Proxies (addresses or CIDR networks, repeatable) whose X-Forwarded-For names the
    /// client address [default: none].
    #[arg(
        long,
        env = "TIDINGS_TRUSTED_PROXY",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub trusted_proxy: Vec<String>,
    /// Updates queued per subscriber before it counts as slow and is disconnected [default: 1024].
    #[arg(long, env = "TIDINGS_SUBSCRIBER_QUEUE", value_name = "N")]
    pub subscriber_queue: Option<usize>,
    /// Bytes of encoded events queued per subscriber before it counts as slow and is
    /// disconnected; one update always fits [default: 4194304].
    #[arg(long, env = "TIDINGS_SUBSCRIBER_QUEUE_BYTES", value_name = "BYTES")]
    pub subscriber_queue_bytes: Option<usize>,
    /// Compiled selectors kept in the cache [default: 10000].
    #[arg(long, env = "TIDINGS_SELECTOR_CACHE_SIZE", value_name = "N")]
    pub selector_cache_size: Option<usize>,
    /// Log format: pretty [default] or json.
    #[arg(long, env = "TIDINGS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, as for RUST_LOG [default: info].
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

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
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
#[error("{0}")]
pub struct ConfigError(pub String);

/// The PEM files of a TLS certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls-cert`.
    pub cert: PathBuf,
    /// `tls-key`.
    pub key: PathBuf,
}

/// The resolved configuration of one instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The TLS certificate and key files, when serving HTTPS.
    pub tls: Option<TlsFiles>,
    /// Time for a request head to arrive (and for a TLS handshake).
    pub header_read_timeout: Duration,
    /// Time a write may make no progress.
    pub write_timeout: Duration,
    /// The bus URL.
    pub bus: String,
    /// The cluster's name on its broker (key prefix, stream and exchange names).
    pub bus_prefix: String,
    /// How a broker bus routes updates to instances.
    pub routing: Routing,
    /// This instance's id.
    pub instance_id: String,
    /// Authorization settings.
    pub auth: AuthSettings,
    /// Streams end when their subscriber's token expires.
    pub close_expired_streams: bool,
    /// The subscriptions API and subscription events are on.
    pub subscriptions: bool,
    /// Updates kept for replay, at most.
    pub history_size: usize,
    /// Seconds an update stays in history (0: no age limit).
    pub history_ttl: u64,
    /// Seconds an update id is remembered (resume, idempotent publishes).
    pub history_id_ttl: u64,
    /// Longest wait between two attempts to reach the broker.
    pub bus_reconnect_max: Duration,
    /// Longest waits on the broker.
    pub bus_timeouts: crate::bus::Timeouts,
    /// Seconds a session registry entry lives unrefreshed.
    pub session_ttl: u64,
    /// Redis: replicas that must hold a publish before it is answered.
    pub redis_min_replicas: usize,
    /// Interval of heartbeat comments on idle streams.
    pub heartbeat: Duration,
    /// Lifecycle webhooks, when a receiver is configured.
    pub webhooks: Option<WebhookSettings>,
    /// Allowed browser origins (empty: no CORS headers).
    pub cors_origins: Vec<String>,
    /// Origins whose pages may publish with the token cookie.
    pub publish_origins: Vec<String>,
    /// Time given to open streams to close on shutdown.
    pub drain: Duration,
    /// Input limits.
    pub limits: Limits,
    /// Caps on open streams.
    pub streams: StreamLimits,
    /// Proxies whose `X-Forwarded-For` names the client address.
    pub trusted_proxies: Vec<IpNet>,
    /// Per-subscriber queue length.
    pub subscriber_queue: usize,
    /// Per-subscriber queue size in bytes.
    pub subscriber_queue_bytes: usize,
    /// Compiled selector cache size.
    pub selector_cache_size: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Options::default()
            .resolve()
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"))
    }
}

/// The value, if set, which must not be empty.
fn not_empty(name: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.is_empty() => Err(ConfigError(format!(
            "{name} is empty: give a value, or leave the option out"
        ))),
        v => Ok(v),
    }
}

/// The value (or its default), which must be at least 1.
fn at_least_one<T: Copy + PartialEq + Default>(
    name: &str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    match value.unwrap_or(default) {
        v if v == T::default() => Err(ConfigError(format!("{name} must be at least 1"))),
        v => Ok(v),
    }
}

/// Checks that every entry is an origin (`https://host[:port]`, no path), or `*` where allowed.
fn origins(name: &str, list: Vec<String>, wildcard: bool) -> Result<Vec<String>, ConfigError> {
    for origin in &list {
        if wildcard && origin == "*" {
            continue;
        }
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let valid = rest.is_some_and(|host| {
            !host.is_empty()
                && !host.contains(['/', '?', '#', ' '])
                && !host.chars().any(char::is_control)
        });
        if !valid {
            return Err(ConfigError(format!(
                "{name}: {origin:?} is not an origin like https://app.example.com (scheme, host and optional port, no path){}",
                if wildcard { ", or *" } else { "" }
            )));
        }
    }
    Ok(list)
}

/// A trusted proxy: an address (`10.0.0.2`, `::1`) or a network (`10.0.0.0/8`).
fn proxy_network(text: &str) -> Result<IpNet, ConfigError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            ConfigError(format!(
                "trusted-proxy: {text:?} is not an address or network like 10.0.0.2 or 10.0.0.0/8"
            ))
        })
}

/// Largest clock-skew leeway accepted for tokens.
const MAX_LEEWAY_SECS: u64 = 86_400;

/// Updates history keeps at most, by default: a client away for 30 s while 1,000 updates a
/// second are published still resumes without a gap (with room to spare).
pub const DEFAULT_HISTORY_SIZE: usize = 100_000;

/// How long an update stays in history by default: long enough for every client of a failed
/// instance to reconnect and resume, short enough that history stays small on a busy cluster.
pub const DEFAULT_HISTORY_TTL_SECS: u64 = 300;

/// The configuration file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "tidings.toml";

impl Options {
    /// Reads options from a TOML file.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read, is not TOML, or has an unknown key or a
    /// value of the wrong type (the message names the key).
    pub fn from_file(path: &Path) -> Result<Options, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read the configuration file {}: {e}",
                path.display()
            ))
        })?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("in {}: {e}", path.display())))
    }

    /// Fills every option not set here from `lower` (this layer wins).
    pub fn over(self, lower: Options) -> Options {
        macro_rules! pick {
            ($($field:ident),*) => {
                Options { $($field: self.$field.or(lower.$field),)*
                    cors_origin: if self.cors_origin.is_empty() { lower.cors_origin } else { self.cors_origin },
                    publish_origin: if self.publish_origin.is_empty() { lower.publish_origin } else { self.publish_origin },
                    trusted_proxy: if self.trusted_proxy.is_empty() { lower.trusted_proxy } else { self.trusted_proxy },
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
            auth_url,
            auth_timeout,
            auth_cache_ttl,
            anonymous,
            subscriptions,
            history_size,
            history_ttl,
            history_id_ttl,
            bus_reconnect_max,
            bus_timeout,
            bus_replay_timeout,
            session_ttl,
            redis_min_replicas,
            heartbeat,
            webhook_url,
            webhook_secret,
            webhook_queue,
            webhook_retry_for,
            webhook_offline_grace,
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
            subscriber_queue,
            subscriber_queue_bytes,
            selector_cache_size,
            log_format,
            log
        )
    }

    /// Applies the defaults and checks every value.
    ///
    /// # Errors
    /// [`ConfigError`] naming the option that is wrong and what it must be.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen_text = self.listen.unwrap_or_else(|| "127.0.0.1:3000".to_owned());
        let listen = listen_text.parse().map_err(|_| {
            ConfigError(format!(
                "listen: {listen_text:?} is not an address like 127.0.0.1:3000"
            ))
        })?;
        let d = Limits::default();
        let ds = StreamLimits::default();
        let history_ttl = self.history_ttl.unwrap_or(DEFAULT_HISTORY_TTL_SECS);
        let limits = Limits {
            max_body_bytes: at_least_one("max-body-bytes", self.max_body_bytes, d.max_body_bytes)?,
            max_selectors: at_least_one("max-selectors", self.max_selectors, d.max_selectors)?,
            max_selector_length: at_least_one(
                "max-selector-length",
                self.max_selector_length,
                d.max_selector_length,
            )?,
            max_topics_per_update: at_least_one(
                "max-topics-per-update",
                self.max_topics_per_update,
                d.max_topics_per_update,
            )?,
            max_id_length: match self.max_id_length.unwrap_or(d.max_id_length) {
                n if n < crate::update::GENERATED_ID_LENGTH => {
                    return Err(ConfigError(format!(
                        "max-id-length must be at least {}: the ids the hub gives updates published without one (urn:uuid:…) are that long",
                        crate::update::GENERATED_ID_LENGTH
                    )))
                }
                n => n,
            },
            max_event_name_length: at_least_one(
                "max-event-name-length",
                self.max_event_name_length,
                d.max_event_name_length,
            )?,
        };
        let instance_id = match self.instance_id {
            Some(id) if id.is_empty() || id.chars().any(|c| c.is_control()) => {
                return Err(ConfigError(
                    "instance-id must be non-empty text without control characters".into(),
                ))
            }
            Some(id) => id,
            None => format!(
                "tidings-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError(
                    "tls-cert and tls-key go together: give both to serve HTTPS, or neither".into(),
                ))
            }
        };
        let redis_min_replicas = match self.redis_min_replicas.unwrap_or(0) {
            n if n > 0
                && crate::bus::Kind::of(self.bus.as_deref().unwrap_or("memory://"))
                    != Some(crate::bus::Kind::Redis) =>
            {
                return Err(ConfigError(format!(
                    "redis-min-replicas is {n}, but it applies to the Redis bus only (redis://, rediss://)"
                )))
            }
            n => n,
        };
        Ok(Config {
            listen,
            tls,
            redis_min_replicas,
            header_read_timeout: Duration::from_secs(at_least_one(
                "header-read-timeout",
                self.header_read_timeout,
                10,
            )?),
            write_timeout: Duration::from_secs(at_least_one(
                "write-timeout",
                self.write_timeout,
                30,
            )?),
            bus: self.bus.unwrap_or_else(|| "memory://".to_owned()),
            bus_prefix: match self.bus_prefix {
                Some(p) if p.is_empty() || p.chars().any(|c| c.is_control() || c == ' ') => {
                    return Err(ConfigError(
                        "bus-prefix must be non-empty, without spaces or control characters".into(),
                    ))
                }
                Some(p) => p,
                None => "tidings".to_owned(),
            },
            routing: self.routing.unwrap_or_default(),
            instance_id,
            auth: AuthSettings {
                mode: self.auth.unwrap_or_default(),
                jwt_key: self.jwt_key,
                publisher_jwt_key: self.publisher_jwt_key,
                subscriber_jwt_key: self.subscriber_jwt_key,
                alg: self.jwt_alg.unwrap_or_default(),
                anonymous: self.anonymous.unwrap_or(false),
                leeway_secs: match self.jwt_leeway.unwrap_or(5) {
                    l if l > MAX_LEEWAY_SECS => {
                        return Err(ConfigError(format!(
                        "jwt-leeway is {l} seconds; it may be at most {MAX_LEEWAY_SECS} (one day)"
                    )))
                    }
                    l => l,
                },
                session_claim: self.session_claim.unwrap_or_else(|| "sub".to_owned()),
                issuer: not_empty("jwt-issuer", self.jwt_issuer)?,
                audience: not_empty("jwt-audience", self.jwt_audience)?,
                jwks_url: not_empty("jwks-url", self.jwks_url)?,
                jwks_refresh: Duration::from_secs(at_least_one(
                    "jwks-refresh",
                    self.jwks_refresh,
                    300,
                )?),
                callback: match not_empty("auth-url", self.auth_url)? {
                    Some(url) => Some(CallbackSettings {
                        url,
                        timeout: Duration::from_secs(at_least_one(
                            "auth-timeout",
                            self.auth_timeout,
                            5,
                        )?),
                        cache_ttl: match self.auth_cache_ttl.unwrap_or(30) {
                            ttl if ttl > 86_400 => {
                                return Err(ConfigError(format!(
                                    "auth-cache-ttl is {ttl} seconds; it may be at most 86400 (one day)"
                                )))
                            }
                            ttl => Duration::from_secs(ttl),
                        },
                    }),
                    None => None,
                },
            },
            close_expired_streams: self.close_expired_streams.unwrap_or(true),
            subscriptions: self.subscriptions.unwrap_or(false),
            history_size: self.history_size.unwrap_or(DEFAULT_HISTORY_SIZE),
            history_ttl,
            history_id_ttl: at_least_one(
                "history-id-ttl",
                self.history_id_ttl,
                match history_ttl {
                    0 => 86_400,
                    ttl => ttl,
                },
            )?,
            bus_reconnect_max: Duration::from_secs(at_least_one(
                "bus-reconnect-max",
                self.bus_reconnect_max,
                5,
            )?),
            bus_timeouts: crate::bus::Timeouts {
                operation: match self.bus_timeout {
                    None => None,
                    Some(t) => Some(Duration::from_secs(at_least_one(
                        "bus-timeout",
                        Some(t),
                        1,
                    )?)),
                },
                replay: Duration::from_secs(at_least_one(
                    "bus-replay-timeout",
                    self.bus_replay_timeout,
                    crate::bus::Timeouts::DEFAULT_REPLAY.as_secs(),
                )?),
            },
            session_ttl: match at_least_one("session-ttl", self.session_ttl, 30)? {
                1 | 2 => return Err(ConfigError("session-ttl must be at least 3 seconds".into())),
                t => t,
            },
            heartbeat: Duration::from_secs(at_least_one("heartbeat", self.heartbeat, 15)?),
            webhooks: match not_empty("webhook-url", self.webhook_url)? {
                Some(url) => Some(WebhookSettings {
                    url,
                    secret: not_empty("webhook-secret", self.webhook_secret)?.ok_or_else(|| {
                        ConfigError(
                            "webhook-url needs webhook-secret: the key the receiver checks each request's signature with".into(),
                        )
                    })?,
                    queue: at_least_one("webhook-queue", self.webhook_queue, 10_000)?,
                    offline_grace: match self.webhook_offline_grace.unwrap_or(5) {
                        grace if grace >= self.session_ttl.unwrap_or(30) => {
                            return Err(ConfigError(format!(
                                "webhook-offline-grace ({grace} s) must be shorter than session-ttl ({} s): a session without streams for session-ttl counts as left behind by a dead instance",
                                self.session_ttl.unwrap_or(30)
                            )))
                        }
                        grace => Duration::from_secs(grace),
                    },
                    retry_for: Duration::from_secs(at_least_one(
                        "webhook-retry-for",
                        self.webhook_retry_for,
                        60,
                    )?),
                    sweep_every: Duration::from_secs(self.session_ttl.unwrap_or(30).max(3)),
                }),
                None => None,
            },
            cors_origins: origins("cors-origin", self.cors_origin, true)?,
            publish_origins: origins("publish-origin", self.publish_origin, false)?,
            drain: Duration::from_secs(self.drain_secs.unwrap_or(10)),
            limits,
            streams: StreamLimits {
                per_instance: at_least_one("max-streams", self.max_streams, ds.per_instance)?,
                per_address: at_least_one(
                    "max-streams-per-address",
                    self.max_streams_per_address,
                    ds.per_address,
                )?,
                per_session: at_least_one(
                    "max-streams-per-session",
                    self.max_streams_per_session,
                    ds.per_session,
                )?,
            },
            trusted_proxies: self
                .trusted_proxy
                .iter()
                .map(|p| proxy_network(p))
                .collect::<Result<_, _>>()?,
            subscriber_queue: at_least_one("subscriber-queue", self.subscriber_queue, 1024)?,
            subscriber_queue_bytes: at_least_one(
                "subscriber-queue-bytes",
                self.subscriber_queue_bytes,
                4 << 20,
            )?,
            selector_cache_size: at_least_one(
                "selector-cache-size",
                self.selector_cache_size,
                10_000,
            )?,
            log_format: self.log_format.unwrap_or_default(),
            log: self.log.unwrap_or_else(|| "info".to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_and_defaults_fill_the_rest() {
        let file: Options =
            toml::from_str("history-size = 5\nheartbeat = 7\nanonymous = true").unwrap();
        let flags = Options {
            history_size: Some(9),
            ..Options::default()
        };
        let config = flags.over(file).resolve().unwrap();
        assert_eq!(config.history_size, 9);
        assert_eq!(config.heartbeat, Duration::from_secs(7));
        assert!(config.auth.anonymous);
        assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(config.bus, "memory://");
    }

    #[test]
    fn history_keeps_minutes_by_default_and_ids_as_long_as_history() {
        let config = Config::default();
        assert_eq!(
            (
                config.history_size,
                config.history_ttl,
                config.history_id_ttl
            ),
            (100_000, 300, 300)
        );
        let no_age: Options = toml::from_str("history-ttl = 0").unwrap();
        let config = no_age.resolve().unwrap();
        assert_eq!((config.history_ttl, config.history_id_ttl), (0, 86_400));
        let both: Options = toml::from_str("history-ttl = 60\nhistory-id-ttl = 7").unwrap();
        let config = both.resolve().unwrap();
        assert_eq!((config.history_ttl, config.history_id_ttl), (60, 7));
    }

    #[test]
    fn the_former_redis_prefix_name_is_still_accepted() {
        let file: Options = toml::from_str("redis-prefix = \"old\"").unwrap();
        assert_eq!(file.resolve().unwrap().bus_prefix, "old");
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let cli =
            <Cli as clap::Parser>::try_parse_from(["tidings", "--redis-prefix", "flag"]).unwrap();
        assert_eq!(cli.options.bus_prefix.as_deref(), Some("flag"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = toml::from_str::<Options>("histroy-size = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("histroy-size"), "{err}");
        let err = Options {
            listen: Some("nowhere".into()),
            ..Options::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("listen"), "{err}");
        let err = Options {
            heartbeat: Some(0),
            ..Options::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("heartbeat"), "{err}");
        for (origins, ok) in [
            (
                vec!["https://app.example.com", "http://localhost:8080"],
                true,
            ),
            (vec!["*"], true),
            (vec!["https://app.example.com/"], false),
            (vec!["app.example.com"], false),
        ] {
            let result = Options {
                cors_origin: origins.iter().map(|o| o.to_string()).collect(),
                ..Options::default()
            }
            .resolve();
            assert_eq!(result.is_ok(), ok, "{origins:?}");
        }
        let err = Options {
            jwt_leeway: Some(u64::MAX),
            ..Options::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("jwt-leeway"), "{err}");
    }
}
