//! Where the bus's connections go: one Redis (`redis://`, `rediss://`), or the primary that the
//! sentinels name now (`redis+sentinel://`, `rediss+sentinel://`).
//!
//! Every part of the bus takes its command connection (and the replay reader its own) from
//! [`Connections`] each time it needs one, rather than keeping one: after a failover the
//! delivery connection, reconnecting, asks the sentinels again ([`Connections::primary`]), and
//! when they name another primary both connections are replaced, so that publishes, the
//! registry and replays follow it too.

use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, ConnectionInfo};

use super::{timed, BusError};

/// A Sentinel URL, parsed: `redis+sentinel://[[user]:password@]host:port[,host:port…]/<master
/// name>[/<db>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SentinelUrl {
    tls: bool,
    username: Option<String>,
    password: Option<String>,
    sentinels: Vec<(String, u16)>,
    master: String,
    db: i64,
}

impl SentinelUrl {
    /// Parses `url`, whose scheme is `redis+sentinel` or `rediss+sentinel`.
    ///
    /// # Errors
    /// A sentence saying what is missing or wrong.
    pub(super) fn parse(url: &str) -> Result<SentinelUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else {
            return Err(
                "a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://".into(),
            );
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
                .map_err(|_| "the credentials are not valid UTF-8 once decoded".to_owned())
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
        let sentinels = hosts
            .split(',')
            .map(|host| {
                let (name, port) = host.rsplit_once(':').ok_or_else(|| {
                    format!("the sentinel {host:?} has no port (host:port, 26379 by convention)")
                })?;
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("the sentinel {host:?} has a bad port"))?;
                if name.is_empty() {
                    return Err(format!("the sentinel {host:?} has no host"));
                }
                Ok((name.trim_matches(['[', ']']).to_owned(), port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master = segments.next().map(decode).transpose()?.ok_or_else(|| {
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
        Ok(SentinelUrl {
            tls,
            username,
            password,
            sentinels,
            master,
            db,
        })
    }

    fn client(&self) -> Result<SentinelClient, redis::RedisError> {
        let addresses = self.sentinels.iter().map(|(host, port)| match self.tls {
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
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        }
        if let Some(username) = &self.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        builder.build()
    }
}

/// Where the connections go.
enum Target {
    /// One Redis.
    Direct(redis::Client),
    /// The primary the sentinels name (asked again each time).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
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
        timeout: Duration,
        replay_timeout: Duration,
    ) -> Result<Connections, BusError> {
        let shown = super::super::redact(url);
        let bad_url = |why: String| {
            BusError::Config(format!("{shown:?} is not a usable Redis URL: {why}").into())
        };
        let target =
            if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
                let parsed = SentinelUrl::parse(url).map_err(bad_url)?;
                Target::Sentinel(tokio::sync::Mutex::new(
                    parsed.client().map_err(|e| bad_url(e.to_string()))?,
                ))
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
                return Err(BusError::Unavailable(
                    format!("cannot reach Redis at {shown}: no answer within {timeout:?}").into(),
                ))
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
        self.commands
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .conn
            .clone()
    }

    /// The replay reader's connection (a cheap handle).
    pub(super) fn replays(&self) -> ConnectionManager {
        self.replays
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A client for the primary now, for a new delivery connection. Behind sentinels, when
    /// they name another primary than the connections go to, both are replaced first.
    ///
    /// # Errors
    /// Why the primary cannot be found or reached.
    pub(super) async fn primary(&self) -> Result<redis::Client, String> {
        let client = target_client(&self.target)
            .await
            .map_err(|e| format!("cannot find the primary: {e}"))?;
        let address = address_of(client.get_connection_info());
        let current = self
            .commands
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .address
            .clone();
        if address != current {
            let connect = |response| {
                timed(
                    self.timeout,
                    client.get_connection_manager_with_config(config(self.timeout, response)),
                )
            };
            let conn = connect(self.timeout).await.map_err(|e| e.to_string())?;
            let replays = connect(self.replay_timeout)
                .await
                .map_err(|e| e.to_string())?;
            tracing::warn!(from = %current, to = %address, "redis: the sentinels name a new primary; following it");
            *self.commands.write().unwrap_or_else(|e| e.into_inner()) = Current { conn, address };
            *self.replays.write().unwrap_or_else(|e| e.into_inner()) = replays;
        }
        Ok(client)
    }

    /// Behind sentinels: whether they still name the primary the connections go to (`None`
    /// when they cannot be asked now, and for one Redis).
    pub(super) async fn primary_moved(&self) -> Option<bool> {
        let Target::Sentinel(_) = &self.target else {
            return None;
        };
        let client = tokio::time::timeout(self.timeout, target_client(&self.target))
            .await
            .ok()?
            .ok()?;
        let current = &self
            .commands
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .address;
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
                format!(
                    "the sentinels of {shown} know no usable primary by that master name: check the name (or wait for the failover in progress to end)"
                )
                .into(),
            ))
        }
        _ if e.is_io_error() => format!("none of the sentinels of {shown} answered ({e})"),
        _ => return Err(e),
    };
    Ok(BusError::Unavailable(what.into()))
}

async fn target_client(target: &Target) -> Result<redis::Client, redis::RedisError> {
    match target {
        Target::Direct(client) => Ok(client.clone()),
        Target::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_sentinels_a_master_and_a_database() {
        let url =
            SentinelUrl::parse("redis+sentinel://:p%40ss@s1:26379,s2:26380/mymaster/2").unwrap();
        assert_eq!(
            url,
            SentinelUrl {
                tls: false,
                username: None,
                password: Some("p@ss".into()),
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26380)],
                master: "mymaster".into(),
                db: 2,
            }
        );
        let url = SentinelUrl::parse("rediss+sentinel://user:pw@[::1]:26379/m").unwrap();
        assert!(url.tls);
        assert_eq!(url.username.as_deref(), Some("user"));
        assert_eq!(url.sentinels, [("::1".to_owned(), 26379)]);
        assert_eq!(url.db, 0);
    }

    #[test]
    fn a_bad_sentinel_url_says_what_is_wrong() {
        for (url, says) in [
            ("redis+sentinel://s1:26379", "no master name"),
            ("redis+sentinel://s1:26379/", "no master name"),
            ("redis+sentinel://s1/m", "has no port"),
            ("redis+sentinel://s1:x/m", "bad port"),
            ("redis+sentinel://s1:26379/m/zero", "is not a number"),
            ("redis+sentinel://s1:26379/m/0/x", "after the database"),
            ("redis+sentinel://:26379/m", "has no host"),
        ] {
            let why = SentinelUrl::parse(url).unwrap_err();
            assert!(why.contains(says), "{url}: {why}");
        }
    }
}
