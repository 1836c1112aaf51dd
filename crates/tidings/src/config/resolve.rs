//! From the merged [`Options`] to the [`Config`]: every default applied (from `defaults.rs`),
//! every value checked, each part's settings built.

use std::time::Duration;

use ipnet::IpNet;

use super::defaults::*;
use super::{Config, ConfigError, Options, TlsFiles};
use crate::admission::{ConnectionLimits, StreamLimits};
use crate::auth::{AuthSettings, CallbackSettings, IssuerSettings};
use crate::bus::{Backoff, BusOptions, Kind, Timeouts};
use crate::consume::spec::ConsumeSpec;
use crate::hub::QueueLimits;
use crate::update::{Limits, GENERATED_ID_LENGTH};
use crate::webhook::WebhookSettings;

/// A value of `option` that cannot be used; `problem` names the option and what to give.
fn invalid(option: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        problem: problem.into(),
    }
}

/// The value, if set, which must not be empty.
fn not_empty(option: &'static str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.is_empty() => Err(invalid(
            option,
            format!("{option} is empty: give a value, or leave the option out"),
        )),
        v => Ok(v),
    }
}

/// The value (or its default), which must be at least 1.
fn at_least_one<T: Copy + PartialEq + Default>(
    option: &'static str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    match value.unwrap_or(default) {
        v if v == T::default() => Err(invalid(option, format!("{option} must be at least 1"))),
        v => Ok(v),
    }
}

/// [`at_least_one`], in seconds.
fn seconds(
    option: &'static str,
    value: Option<u64>,
    default: u64,
) -> Result<Duration, ConfigError> {
    at_least_one(option, value, default).map(Duration::from_secs)
}

/// The value (or its default), in seconds, which must be at most one day.
fn at_most_a_day(
    option: &'static str,
    value: Option<u64>,
    default: u64,
) -> Result<u64, ConfigError> {
    match value.unwrap_or(default) {
        v if v > MAX_LEEWAY_SECS => Err(invalid(
            option,
            format!("{option} is {v} seconds; it may be at most {MAX_LEEWAY_SECS} (one day)"),
        )),
        v => Ok(v),
    }
}

/// Checks that every entry is an origin (`https://host[:port]`, no path), or `*` where allowed.
fn origins(
    option: &'static str,
    list: Vec<String>,
    wildcard: bool,
) -> Result<Vec<String>, ConfigError> {
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
            return Err(invalid(option, format!(
                "{option}: {origin:?} is not an origin like https://app.example.com (scheme, host and optional port, no path){}",
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
            invalid(
                "trusted-proxy",
                format!("trusted-proxy: {text:?} is not an address or network like 10.0.0.2 or 10.0.0.0/8"),
            )
        })
}

/// A name given to the cluster or an instance: non-empty, without control characters (nor
/// spaces, where `spaces` is false).
fn name(
    option: &'static str,
    value: Option<String>,
    spaces: bool,
) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.is_empty() || v.chars().any(|c| c.is_control() || (!spaces && c == ' ')) => {
            Err(invalid(
                option,
                format!(
                    "{option} must be non-empty, without {}control characters",
                    if spaces { "" } else { "spaces or " }
                ),
            ))
        }
        v => Ok(v),
    }
}

impl Options {
    /// Applies the defaults and checks every value.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the option that is wrong and what it must be.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen_text = self.listen.clone().unwrap_or_else(|| LISTEN.to_owned());
        let listen = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("listen: {listen_text:?} is not an address like {LISTEN}"),
            )
        })?;
        let tls = match (self.tls_cert.clone(), self.tls_key.clone()) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "tls-cert",
                    "tls-cert and tls-key go together: give both to serve HTTPS, or neither",
                ))
            }
        };
        let limits = self.limits()?;
        let instance_id =
            name("instance-id", self.instance_id.clone(), true)?.unwrap_or_else(|| {
                format!(
                    "tidings-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                )
            });
        let subscriptions = self.subscriptions.unwrap_or(SUBSCRIPTIONS);
        let bus_url = self.bus.clone().unwrap_or_else(|| BUS.to_owned());
        let bus = self.bus_options(&bus_url, &instance_id, subscriptions, &limits)?;
        let defaults = StreamLimits::default();
        let queue = QueueLimits::default();
        let streams = StreamLimits {
            per_instance: at_least_one("max-streams", self.max_streams, defaults.per_instance)?,
            per_address: at_least_one(
                "max-streams-per-address",
                self.max_streams_per_address,
                defaults.per_address,
            )?,
            per_session: at_least_one(
                "max-streams-per-session",
                self.max_streams_per_session,
                defaults.per_session,
            )?,
            wide_per_address: at_least_one(
                "max-wide-selectors-per-address",
                self.max_wide_selectors_per_address,
                defaults.wide_per_address,
            )?,
            wide_per_instance: at_least_one(
                "max-wide-selectors",
                self.max_wide_selectors,
                defaults.wide_per_instance,
            )?,
        };
        Ok(Config {
            listen,
            tls,
            header_read_timeout: seconds(
                "header-read-timeout",
                self.header_read_timeout,
                HEADER_READ_TIMEOUT_SECS,
            )?,
            write_timeout: seconds("write-timeout", self.write_timeout, WRITE_TIMEOUT_SECS)?,
            webhooks: self.webhooks(bus.session_ttl_secs)?,
            tracing: self.tracing()?,
            bus_url,
            bus,
            instance_id,
            auth: self.auth()?,
            close_expired_streams: self.close_expired_streams.unwrap_or(CLOSE_EXPIRED_STREAMS),
            subscriptions,
            subscription_events_per_address: self
                .subscription_events_per_address
                .unwrap_or(SUBSCRIPTION_EVENTS_PER_ADDRESS),
            heartbeat: seconds("heartbeat", self.heartbeat, HEARTBEAT_SECS)?,
            cluster_heartbeat: seconds(
                "cluster-heartbeat",
                self.cluster_heartbeat,
                CLUSTER_HEARTBEAT_SECS,
            )?,
            cluster_deadline: match self.cluster_deadline_ms.unwrap_or(CLUSTER_DEADLINE_MS) {
                ms @ 10..=60_000 => Duration::from_millis(ms),
                _ => {
                    return Err(invalid(
                        "cluster-deadline-ms",
                        "cluster-deadline-ms must be between 10 and 60000",
                    ))
                }
            },
            admin_key: match not_empty("admin-key", self.admin_key.clone())? {
                Some(key) if key.chars().count() < MIN_ADMIN_KEY_CHARS => {
                    return Err(invalid(
                        "admin-key",
                        format!("admin-key must be at least {MIN_ADMIN_KEY_CHARS} characters: it opens the admin API (make one with: openssl rand -hex 32)"),
                    ))
                }
                key => key,
            },
            admin_page: self.admin_page.unwrap_or_default(),
            cors_origins: origins("cors-origin", self.cors_origin, true)?,
            consumers: self
                .consume
                .iter()
                .map(ConsumeSpec::from_given)
                .collect::<Result<_, _>>()
                .map_err(|problem| invalid("consume", problem))?,
            cookie_name: match self.cookie_name.as_deref() {
                None => COOKIE_NAME.to_owned(),
                Some(name) if is_cookie_name(name) => name.to_owned(),
                Some(name) => {
                    return Err(invalid(
                        "cookie-name",
                        format!("{name:?} is not a cookie name: give visible ASCII letters, digits and -_.!#$%&'*+^`|~ only"),
                    ))
                }
            },
            publish_origins: origins("publish-origin", self.publish_origin, false)?,
            drain: Duration::from_secs(self.drain_secs.unwrap_or(DRAIN_SECS)),
            limits,
            streams: streams.clone(),
            connections: {
                let defaults = ConnectionLimits::for_streams(&streams);
                ConnectionLimits {
                    per_instance: at_least_one(
                        "max-connections",
                        self.max_connections,
                        defaults.per_instance,
                    )?,
                    per_address: at_least_one(
                        "max-connections-per-address",
                        self.max_connections_per_address,
                        defaults.per_address,
                    )?,
                    h2_idle: seconds(
                        "h2-idle-timeout",
                        Some(at_most_a_day(
                            "h2-idle-timeout",
                            self.h2_idle_timeout,
                            defaults.h2_idle.as_secs(),
                        )?),
                        defaults.h2_idle.as_secs(),
                    )?,
                }
            },
            trusted_proxies: self
                .trusted_proxy
                .iter()
                .map(|p| proxy_network(p))
                .collect::<Result<_, _>>()?,
            subscriber_queue: QueueLimits {
                updates: at_least_one("subscriber-queue", self.subscriber_queue, queue.updates)?,
                bytes: at_least_one(
                    "subscriber-queue-bytes",
                    self.subscriber_queue_bytes,
                    queue.bytes,
                )?,
            },
            selector_cache_size: at_least_one(
                "selector-cache-size",
                self.selector_cache_size,
                SELECTOR_CACHE_SIZE,
            )?,
            log_format: self.log_format.unwrap_or_default(),
            log: self.log.unwrap_or_else(|| LOG.to_owned()),
        })
    }

    /// The input limits.
    fn limits(&self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        Ok(Limits {
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
                n if n < GENERATED_ID_LENGTH => {
                    return Err(invalid("max-id-length", format!(
                        "max-id-length must be at least {GENERATED_ID_LENGTH}: the ids the hub gives updates published without one (urn:uuid:…) are that long"
                    )))
                }
                n => n,
            },
            max_event_name_length: at_least_one(
                "max-event-name-length",
                self.max_event_name_length,
                d.max_event_name_length,
            )?,
        })
    }

    /// The bus's settings.
    fn bus_options(
        &self,
        url: &str,
        instance_id: &str,
        share_subscribers: bool,
        limits: &Limits,
    ) -> Result<BusOptions, ConfigError> {
        let history_ttl_secs = self.history_ttl.unwrap_or(HISTORY_TTL_SECS);
        let min_replicas = match self.redis_min_replicas.unwrap_or(REDIS_MIN_REPLICAS) {
            n if n > 0 && Kind::of(url) != Some(Kind::Redis) => {
                return Err(invalid("redis-min-replicas", format!(
                    "redis-min-replicas is {n}, but it applies to the Redis bus only (redis://, rediss://, redis+sentinel://, redis+cluster://, …)"
                )))
            }
            n => n,
        };
        Ok(BusOptions {
            history_size: self.history_size.unwrap_or(HISTORY_SIZE),
            history_ttl_secs,
            history_id_ttl_secs: at_least_one(
                "history-id-ttl",
                self.history_id_ttl,
                match history_ttl_secs {
                    0 => HISTORY_ID_TTL_WITHOUT_AGE_SECS,
                    ttl => ttl,
                },
            )?,
            prefix: name("bus-prefix", self.bus_prefix.clone(), false)?
                .unwrap_or_else(|| BUS_PREFIX.to_owned()),
            instance_id: instance_id.to_owned(),
            session_ttl_secs: match at_least_one("session-ttl", self.session_ttl, SESSION_TTL_SECS)?
            {
                t if t < MIN_SESSION_TTL_SECS => {
                    return Err(invalid(
                        "session-ttl",
                        format!("session-ttl must be at least {MIN_SESSION_TTL_SECS} seconds"),
                    ))
                }
                t => t,
            },
            share_subscribers,
            limits: limits.clone(),
            routing: self.routing.unwrap_or_default(),
            backoff: Backoff {
                max: seconds(
                    "bus-reconnect-max",
                    self.bus_reconnect_max,
                    Backoff::default().max.as_secs(),
                )?,
                ..Backoff::default()
            },
            timeouts: Timeouts {
                operation: match self.bus_timeout {
                    None => None,
                    Some(t) => Some(seconds("bus-timeout", Some(t), 1)?),
                },
                replay: seconds(
                    "bus-replay-timeout",
                    self.bus_replay_timeout,
                    Timeouts::DEFAULT_REPLAY.as_secs(),
                )?,
            },
            min_replicas,
            max_patterns: self.redis_max_patterns.unwrap_or(REDIS_MAX_PATTERNS),
            unsubscribe_after: Duration::from_secs(at_most_a_day(
                "redis-unsubscribe-after",
                self.redis_unsubscribe_after,
                REDIS_UNSUBSCRIBE_AFTER_SECS,
            )?),
        })
    }

    /// The authorization settings.
    fn auth(&self) -> Result<AuthSettings, ConfigError> {
        Ok(AuthSettings {
            mode: self.auth.unwrap_or_default(),
            jwt_key: self.jwt_key.clone(),
            publisher_jwt_key: self.publisher_jwt_key.clone(),
            subscriber_jwt_key: self.subscriber_jwt_key.clone(),
            alg: self.jwt_alg.unwrap_or_default(),
            anonymous: self.anonymous.unwrap_or(ANONYMOUS),
            leeway_secs: at_most_a_day("jwt-leeway", self.jwt_leeway, JWT_LEEWAY_SECS)?,
            session_claim: self
                .session_claim
                .clone()
                .unwrap_or_else(|| SESSION_CLAIM.to_owned()),
            issuer: not_empty("jwt-issuer", self.jwt_issuer.clone())?,
            audience: not_empty("jwt-audience", self.jwt_audience.clone())?,
            jwks_url: not_empty("jwks-url", self.jwks_url.clone())?,
            jwks_refresh: seconds("jwks-refresh", self.jwks_refresh, JWKS_REFRESH_SECS)?,
            jwks_any_audience: self.jwks_any_audience.unwrap_or(JWKS_ANY_AUDIENCE),
            issuers: self
                .issuer
                .iter()
                .map(|table| {
                    Ok(IssuerSettings {
                        iss: table.iss.clone(),
                        alg: table.jwt_alg.unwrap_or_default(),
                        jwt_key: not_empty("issuer.jwt-key", table.jwt_key.clone())?,
                        publisher_jwt_key: not_empty(
                            "issuer.publisher-jwt-key",
                            table.publisher_jwt_key.clone(),
                        )?,
                        subscriber_jwt_key: not_empty(
                            "issuer.subscriber-jwt-key",
                            table.subscriber_jwt_key.clone(),
                        )?,
                        jwks_url: not_empty("issuer.jwks-url", table.jwks_url.clone())?,
                        audience: not_empty("issuer.jwt-audience", table.jwt_audience.clone())?,
                        authorization_server: table.authorization_server.unwrap_or(false),
                    })
                })
                .collect::<Result<_, ConfigError>>()?,
            callback: match not_empty("auth-url", self.auth_url.clone())? {
                Some(url) => Some(CallbackSettings {
                    url,
                    timeout: seconds("auth-timeout", self.auth_timeout, AUTH_TIMEOUT_SECS)?,
                    cache_ttl: Duration::from_secs(at_most_a_day(
                        "auth-cache-ttl",
                        self.auth_cache_ttl,
                        AUTH_CACHE_TTL_SECS,
                    )?),
                    concurrency: at_least_one(
                        "auth-concurrency",
                        self.auth_concurrency,
                        AUTH_CONCURRENCY,
                    )?,
                    concurrency_per_address: at_least_one(
                        "auth-concurrency-per-address",
                        self.auth_concurrency_per_address,
                        AUTH_CONCURRENCY_PER_ADDRESS,
                    )?,
                }),
                None => None,
            },
        })
    }

    /// Where traces go, when an OTLP endpoint is given.
    fn tracing(&self) -> Result<Option<crate::telemetry::Settings>, ConfigError> {
        let Some(endpoint) = not_empty("otlp-endpoint", self.otlp_endpoint.clone())? else {
            return Ok(None);
        };
        crate::outbound::http_url("otlp-endpoint", &endpoint)
            .map_err(|e| invalid("otlp-endpoint", e.to_string()))?;
        let sample_ratio = match self.trace_sample_ratio.unwrap_or(TRACE_SAMPLE_RATIO) {
            ratio if (0.0..=1.0).contains(&ratio) => ratio,
            ratio => {
                return Err(invalid(
                    "trace-sample-ratio",
                    format!("trace-sample-ratio must be between 0 and 1 (the share of traces recorded), not {ratio}"),
                ))
            }
        };
        Ok(Some(crate::telemetry::Settings {
            endpoint,
            sample_ratio,
        }))
    }

    /// The lifecycle webhooks' settings, when a receiver is configured; `session_ttl` is the
    /// resolved one, which the offline grace must stay under.
    fn webhooks(&self, session_ttl: u64) -> Result<Option<WebhookSettings>, ConfigError> {
        let Some(url) = not_empty("webhook-url", self.webhook_url.clone())? else {
            return Ok(None);
        };
        let secret = not_empty("webhook-secret", self.webhook_secret.clone())?.ok_or_else(|| {
            invalid(
                "webhook-secret",
                "webhook-url needs webhook-secret: the key the receiver checks each request's signature with",
            )
        })?;
        let offline_grace = match self
            .webhook_offline_grace
            .unwrap_or(WEBHOOK_OFFLINE_GRACE_SECS)
        {
            grace if grace >= session_ttl => {
                return Err(invalid("webhook-offline-grace", format!(
                    "webhook-offline-grace ({grace} s) must be shorter than session-ttl ({session_ttl} s): a session without streams for session-ttl counts as left behind by a dead instance"
                )))
            }
            grace => Duration::from_secs(grace),
        };
        Ok(Some(WebhookSettings {
            url,
            secret,
            queue: at_least_one("webhook-queue", self.webhook_queue, WEBHOOK_QUEUE)?,
            queue_bytes: at_least_one(
                "webhook-queue-bytes",
                self.webhook_queue_bytes,
                WEBHOOK_QUEUE_BYTES,
            )?,
            offline_grace,
            retry_for: seconds(
                "webhook-retry-for",
                self.webhook_retry_for,
                WEBHOOK_RETRY_FOR_SECS,
            )?,
            sweep_every: Duration::from_secs(session_ttl),
        }))
    }
}

/// A cookie name as RFC 6265 allows it (an HTTP token): not empty, visible ASCII without
/// separators.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
