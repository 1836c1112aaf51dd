//! Where the bus's connections go: one Redis (`redis://`, `rediss://`), the primary that the
//! sentinels name now (`redis+sentinel://`, `rediss+sentinel://`), or the master of a Redis
//! Cluster that serves the one slot all the bus's keys are in (`redis+cluster://`,
//! `rediss+cluster://`).
//!
//! Every part of the bus takes its command connection (and the replay reader its own) from
//! [`Connections`] each time it needs one, rather than keeping one: after a failover the
//! delivery connection, reconnecting, asks the sentinels (or the cluster's nodes) again
//! ([`Connections::primary`]), and when they name another primary both connections are
//! replaced, so that publishes, the registry and replays follow it too.
//!
//! A Redis Cluster is reached through one node connection rather than redis-rs's cluster client:
//! with every key in one slot, one master holds all of them, so there is nothing to route; the
//! Pub/Sub delivery connection needs one node anyway (a Redis Cluster sends every `PUBLISH` to
//! every node), and a failover inside the cluster is followed exactly as one behind sentinels.

use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, ConnectionInfo};

use super::{timed, BusError};
use crate::bus::Cause;

/// The parts of a URL that names several nodes: `<scheme>://[[user]:password@]host:port[,host:
/// port…][/<path>…]`, as Sentinel and Cluster URLs do.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodesUrl {
    tls: bool,
    username: Option<String>,
    password: Option<String>,
    nodes: Vec<(String, u16)>,
    /// The path's segments, percent-decoded.
    path: Vec<String>,
}

impl NodesUrl {
    /// Parses `url`, whose scheme is `<plain>` or `<tls>`; `what` names the nodes in messages.
    fn parse(url: &str, plain: &str, tls: &str, what: &str) -> Result<NodesUrl, String> {
        let (secure, rest) = if let Some(rest) = url.strip_prefix(&format!("{tls}://")) {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix(&format!("{plain}://")) {
            (false, rest)
        } else {
            return Err(format!("the URL starts with {plain}:// or {tls}://"));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the URL is not valid UTF-8 once decoded".to_owned())
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, password)) => (
                    Some(decode(user)?).filter(|u| !u.is_empty()),
                    Some(decode(password)?),
                ),
                None => (Some(decode(userinfo)?), None),
            },
        };
        let nodes = hosts
            .split(',')
            .map(|host| {
                let (name, port) = host
                    .rsplit_once(':')
                    .ok_or_else(|| format!("the {what} {host:?} has no port (host:port)"))?;
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("the {what} {host:?} has a bad port"))?;
                if name.is_empty() {
                    return Err(format!("the {what} {host:?} has no host"));
                }
                Ok((name.trim_matches(['[', ']']).to_owned(), port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let path = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(decode)
            .collect::<Result<_, _>>()?;
        Ok(NodesUrl {
            tls: secure,
            username,
            password,
            nodes,
            path,
        })
    }

    /// A URL for one node (`redis://` or `rediss://`), with the credentials.
    fn node_url(&self, host: &str, port: u16, db: i64) -> String {
        let encode = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let userinfo = match (&self.username, &self.password) {
            (None, None) => String::new(),
            (user, password) => format!(
                "{}{}@",
                user.as_deref().map(encode).unwrap_or_default(),
                password
                    .as_deref()
                    .map(|p| format!(":{}", encode(p)))
                    .unwrap_or_default()
            ),
        };
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!("{scheme}://{userinfo}{host}:{port}/{db}")
    }
}

/// A Sentinel URL, parsed: `redis+sentinel://[[user]:password@]host:port[,host:port…]/<master
/// name>[/<db>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SentinelUrl {
    url: NodesUrl,
    master: String,
    db: i64,
}

impl SentinelUrl {
    /// Parses `url`, whose scheme is `redis+sentinel` or `rediss+sentinel`.
    ///
    /// # Errors
    /// A sentence saying what is missing or wrong.
    pub(super) fn parse(url: &str) -> Result<SentinelUrl, String> {
        let url = NodesUrl::parse(url, "redis+sentinel", "rediss+sentinel", "sentinel")?;
        let mut segments = url.path.iter();
        let master = segments.next().cloned().ok_or_else(|| {
            "no master name: redis+sentinel://host:port[,host:port…]/<master name>[/<db>]"
                .to_owned()
        })?;
        let db = match segments.next() {
            None => 0,
            Some(db) => db
                .parse::<i64>()
                .map_err(|_| format!("the database {db:?} is not a number"))?,
        };
        if let Some(extra) = segments.next() {
            return Err(format!(
                "{extra:?} after the database: the path is /<master name>[/<db>]"
            ));
        }
        Ok(SentinelUrl { url, master, db })
    }

    fn client(&self) -> Result<SentinelClient, redis::RedisError> {
        let addresses = self
            .url
            .nodes
            .iter()
            .map(|(host, port)| match self.url.tls {
                false => ConnectionAddr::Tcp(host.clone(), *port),
                true => ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                },
            });
        let mut builder =
            SentinelClientBuilder::new(addresses, &self.master, SentinelServerType::Master)?
                .set_client_to_redis_db(self.db);
        if self.url.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        }
        if let Some(username) = &self.url.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.url.password {
            builder = builder.set_client_to_redis_password(password);
        }
        builder.build()
    }
}

/// A Redis Cluster URL, parsed: `redis+cluster://[[user]:password@]host:port[,host:port…][/]`
/// (a Redis Cluster has only database 0).
#[derive(Debug)]
pub(super) struct Cluster {
    url: NodesUrl,
    /// A key of the one hash slot that holds all of the Tidings cluster's keys.
    key: String,
    /// The nodes to ask which master serves that slot: the URL's, then those the last answer
    /// named (so that losing every node the URL names is survived too).
    known: std::sync::Mutex<Vec<(String, u16)>>,
    timeout: Duration,
}

impl Cluster {
    /// Parses `url`, whose scheme is `redis+cluster` or `rediss+cluster`, for the keys of
    /// `key`'s slot, asking each node for at most `timeout`.
    ///
    /// # Errors
    /// A sentence saying what is missing or wrong.
    pub(super) fn parse(url: &str, key: &str, timeout: Duration) -> Result<Cluster, String> {
        let url = NodesUrl::parse(url, "redis+cluster", "rediss+cluster", "node")?;
        if let Some(segment) = url.path.iter().find(|s| *s != "0") {
            return Err(format!(
                "{segment:?} in the path: a Redis Cluster has only database 0 (redis+cluster://host:port[,host:port…]/)"
            ));
        }
        Ok(Cluster {
            known: std::sync::Mutex::new(url.nodes.clone()),
            url,
            key: key.to_owned(),
            timeout,
        })
    }

    /// A client for the master that serves the slot now, asking the known nodes in turn.
    async fn master(&self) -> Result<redis::Client, redis::RedisError> {
        let nodes = crate::locks::lock(&self.known).clone();
        let mut failures = Vec::new();
        for (host, port) in &nodes {
            match tokio::time::timeout(self.timeout, self.ask(host, *port)).await {
                Ok(Ok((master, named))) => {
                    let mut known = crate::locks::lock(&self.known);
                    for node in named {
                        if !known.contains(&node) {
                            known.push(node);
                        }
                    }
                    return Ok(master);
                }
                Ok(Err(e)) if e.to_string().contains("cluster support disabled") => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "not a Redis Cluster",
                        format!("{host}:{port} has cluster support disabled; for one Redis, use redis://"),
                    )))
                }
                Ok(Err(e)) => failures.push(format!("{host}:{port}: {e}")),
                Err(_) => failures.push(format!("{host}:{port}: no answer within {:?}", self.timeout)),
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::ClusterConnectionNotFound,
            "no node of the Redis Cluster named the master of the slot",
            failures.join("; "),
        )))
    }

    /// Asks one node which master serves the slot: a client for it, and every node it named.
    async fn ask(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(redis::Client, Vec<(String, u16)>), redis::RedisError> {
        let client = redis::Client::open(self.url.node_url(host, port, 0))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (slot, ranges): (i64, Vec<Vec<redis::Value>>) = redis::pipe()
            .cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&self.key)
            .cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        let mut named = Vec::new();
        let mut master = None;
        for range in ranges {
            let mut fields = range.into_iter();
            let (Some(start), Some(end)) = (fields.next(), fields.next()) else {
                continue;
            };
            let start: i64 = redis::from_redis_value(start)?;
            let end: i64 = redis::from_redis_value(end)?;
            for (i, node) in fields.enumerate() {
                let node: Vec<redis::Value> = redis::from_redis_value(node)?;
                let mut node = node.into_iter();
                let (Some(node_host), Some(node_port)) = (node.next(), node.next()) else {
                    continue;
                };
                let node_host: String = redis::from_redis_value(node_host)?;
                let node_port: u16 = redis::from_redis_value(node_port)?;
                // A node that does not know its own address names it "" (or "?").
                let node_host = match node_host.as_str() {
                    "" | "?" => host.to_owned(),
                    _ => node_host,
                };
                if i == 0 && (start..=end).contains(&slot) {
                    master = Some((node_host.clone(), node_port));
                }
                named.push((node_host, node_port));
            }
        }
        let Some((host, port)) = master else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ClusterConnectionNotFound,
                "no master serves the slot",
                format!("{host}:{port} names none for slot {slot} (a failover in progress, or slots not assigned)"),
            )));
        };
        Ok((
            redis::Client::open(self.url.node_url(&host, port, 0))?,
            named,
        ))
    }
}

/// Where the connections go.
enum Target {
    /// One Redis.
    Direct(redis::Client),
    /// The primary the sentinels name (asked again each time).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// The master of the slot of a Redis Cluster (asked again each time).
    Cluster(Cluster),
}

/// The prefix of the bus's keys and channels in Redis for the cluster prefix `prefix`: in a
/// Redis Cluster, a hash tag (`{prefix}`), so that every key is in one slot and the publish
/// script, which writes several, stays atomic.
pub(super) fn key_prefix(url: &str, prefix: &str) -> Result<String, BusError> {
    if !is_cluster(url) {
        return Ok(prefix.to_owned());
    }
    if prefix.contains(['{', '}']) {
        return Err(BusError::Config(
            Cause::new(format!("bus-prefix {prefix:?} holds a brace: on a Redis Cluster, the bus wraps it in braces itself (a hash tag), so it must hold none")),
        ));
    }
    Ok(format!("{{{prefix}}}"))
}

fn is_cluster(url: &str) -> bool {
    url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://")
}

/// The bus's command and replay connections, replaced together when the primary changes.
pub(super) struct Connections {
    target: Target,
    /// The redacted URL, for messages.
    shown: String,
    commands: RwLock<Current>,
    replays: RwLock<ConnectionManager>,
    timeout: Duration,
    replay_timeout: Duration,
}

struct Current {
    conn: ConnectionManager,
    /// The primary it goes to.
    address: String,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("target", &self.shown)
            .finish_non_exhaustive()
    }
}

fn config(timeout: Duration, response: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(response))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

fn address_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => format!("{other:?}"),
    }
}

impl Connections {
    /// Connects to the Redis `url` names (or, for a Sentinel URL, to the primary its
    /// sentinels name), within `timeout`; replays get `replay_timeout` per command.
    ///
    /// # Errors
    /// [`BusError::Config`] for a malformed URL, refused credentials or an untrusted
    /// certificate; [`BusError::Unavailable`] when Redis (or every sentinel) cannot be
    /// reached, or the sentinels know no such master, yet.
    pub(super) async fn connect(
        url: &str,
        slot_key: &str,
        timeout: Duration,
        replay_timeout: Duration,
    ) -> Result<Connections, BusError> {
        let shown = super::super::redact(url);
        let bad_url = |why: String| {
            BusError::Config(Cause::new(format!(
                "{shown:?} is not a usable Redis URL: {why}"
            )))
        };
        let target =
            if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
                let parsed = SentinelUrl::parse(url).map_err(bad_url)?;
                Target::Sentinel(tokio::sync::Mutex::new(
                    parsed.client().map_err(|e| bad_url(e.to_string()))?,
                ))
            } else if is_cluster(url) {
                Target::Cluster(Cluster::parse(url, slot_key, timeout).map_err(bad_url)?)
            } else {
                Target::Direct(redis::Client::open(url).map_err(|e| bad_url(e.to_string()))?)
            };
        let connections = async {
            let client = target_client(&target).await?;
            let address = address_of(client.get_connection_info());
            let conn = client
                .get_connection_manager_with_config(config(timeout, timeout))
                .await?;
            let replays = client
                .get_connection_manager_with_config(config(timeout, replay_timeout))
                .await?;
            Ok::<_, redis::RedisError>((conn, replays, address))
        };
        let (conn, replays, address) = match tokio::time::timeout(timeout, connections).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => {
                return Err(sentinel_error(&target, &shown, e)
                    .unwrap_or_else(|e| super::start_error(url, e)))
            }
            Err(_) => {
                return Err(BusError::Unavailable(Cause::new(format!(
                    "cannot reach Redis at {shown}: no answer within {timeout:?}"
                ))))
            }
        };
        Ok(Connections {
            target,
            shown,
            commands: RwLock::new(Current { conn, address }),
            replays: RwLock::new(replays),
            timeout,
            replay_timeout,
        })
    }

    /// The command connection (a cheap handle).
    pub(super) fn commands(&self) -> ConnectionManager {
        crate::locks::read(&self.commands).conn.clone()
    }

    /// The replay reader's connection (a cheap handle).
    pub(super) fn replays(&self) -> ConnectionManager {
        crate::locks::read(&self.replays).clone()
    }

    /// A client for the primary now, for a new delivery connection. Behind sentinels, when
    /// they name another primary than the connections go to, both are replaced first.
    ///
    /// # Errors
    /// Why the primary cannot be found or reached.
    pub(super) async fn primary(&self) -> Result<redis::Client, BusError> {
        let client = target_client(&self.target).await.map_err(|e| {
            BusError::Unavailable(Cause::caused_by(
                format!("redis: cannot find the primary: {e}"),
                e,
            ))
        })?;
        let address = address_of(client.get_connection_info());
        let current = crate::locks::read(&self.commands).address.clone();
        if address != current {
            let connect = |response| {
                timed(
                    self.timeout,
                    client.get_connection_manager_with_config(config(self.timeout, response)),
                )
            };
            let conn = connect(self.timeout).await?;
            let replays = connect(self.replay_timeout).await?;
            tracing::warn!(from = %current, to = %address, "redis: a new primary; following it");
            *crate::locks::write(&self.commands) = Current { conn, address };
            *crate::locks::write(&self.replays) = replays;
        }
        Ok(client)
    }

    /// Behind sentinels or in a Redis Cluster: whether the primary is still the one the
    /// connections go to (`None` when that cannot be asked now, and for one Redis).
    pub(super) async fn primary_moved(&self) -> Option<bool> {
        if let Target::Direct(_) = &self.target {
            return None;
        }
        let client = tokio::time::timeout(self.timeout, target_client(&self.target))
            .await
            .ok()?
            .ok()?;
        let current = &crate::locks::read(&self.commands).address;
        Some(address_of(client.get_connection_info()) != *current)
    }
}

/// What a failure to find the primary through sentinels means at start-up, in words: a
/// master name the sentinels do not know is the configuration's to fix; no sentinel answering
/// may pass. `Err(e)` gives back an error of any other kind.
fn sentinel_error(
    target: &Target,
    shown: &str,
    e: redis::RedisError,
) -> Result<BusError, redis::RedisError> {
    if !matches!(target, Target::Sentinel(_)) {
        return Err(e);
    }
    let what = match e.kind() {
        redis::ErrorKind::MasterNameNotFoundBySentinel => {
            return Ok(BusError::Config(
                Cause::new(format!(
                    "the sentinels of {shown} know no usable primary by that master name: check the name (or wait for the failover in progress to end)"
                )
                ),
            ))
        }
        _ if e.is_io_error() => format!("none of the sentinels of {shown} answered ({e})"),
        _ => return Err(e),
    };
    Ok(BusError::Unavailable(Cause::new(what)))
}

async fn target_client(target: &Target) -> Result<redis::Client, redis::RedisError> {
    match target {
        Target::Direct(client) => Ok(client.clone()),
        Target::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
        Target::Cluster(cluster) => cluster.master().await,
    }
}

#[cfg(test)]
mod tests;
