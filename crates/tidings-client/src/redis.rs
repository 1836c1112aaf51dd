//! Publishing straight onto a Tidings cluster's Redis, without HTTP (feature `redis`).
//!
//! [`RedisPublisher::publish`] runs the cluster's publish script ([`PUBLISH_SCRIPT`]) with the
//! update's wire-format message, exactly as an instance does for `POST /.well-known/mercure`:
//! the update is in the cluster's history and on its channels when the call returns. See
//! `docs/wire-format.md`.
//!
//! ```no_run
//! use tidings_client::redis::RedisPublisher;
//! use tidings_client::Publication;
//!
//! # async fn example() -> Result<(), tidings_client::Error> {
//! let publisher = RedisPublisher::connect("redis://127.0.0.1:6379/0", "tidings").await?;
//! let published = publisher
//!     .publish(&Publication::new("https://example.com/books/1").data("{}"))
//!     .await?;
//! println!("{} at {}", published.id, published.position);
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Publication};

/// The publish script (Lua, wire format v1): see `docs/wire-format.md` for its arguments.
pub const PUBLISH_SCRIPT: &str = include_str!("redis_publish.lua");

/// Longest wait for Redis to answer a publish.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a publish onto Redis gave the update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its id: the publication's, or `urn:tidings:<position>` when it had none.
    pub id: String,
    /// Its position in the cluster's order (the stream entry id, `0-<n>` without history).
    pub position: String,
    /// How many messages Redis sent to instances for it (those that wanted it).
    pub receivers: u64,
}

/// A publisher onto one cluster's Redis (its URL and `--bus-prefix`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisPublisher {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl RedisPublisher {
    /// Connects to the cluster's Redis (`redis://` or `rediss://`, password in the URL).
    ///
    /// # Errors
    /// [`Error::Broker`] when the URL is not usable or Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::Broker(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| Error::Broker(format!("cannot reach Redis: {e}")))?;
        Ok(RedisPublisher {
            conn,
            prefix: prefix.to_owned(),
            script: redis::Script::new(PUBLISH_SCRIPT),
        })
    }

    /// Publishes an update; returns once Redis stored and sent it.
    ///
    /// The update is checked by Redis only for a non-empty list of topics; instances skip
    /// (and log) one that breaks a finer rule, as they would refuse it over HTTP.
    ///
    /// # Errors
    /// [`Error::Broker`] when Redis did not take it.
    pub async fn publish(&self, publication: &Publication) -> Result<Published, Error> {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let mut conn = self.conn.clone();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(publication.wire_message())
            .arg(micros.to_string())
            .arg(publication.id.as_deref().unwrap_or(""));
        let (position, receivers): (String, u64) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Error::Broker(e.to_string()))?;
        let id = match &publication.id {
            Some(id) => id.clone(),
            None => format!("urn:tidings:{position}"),
        };
        Ok(Published {
            id,
            position,
            receivers,
        })
    }
}
