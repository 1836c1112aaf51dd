//! Publishing straight onto a Tidings cluster's NATS (JetStream), without HTTP (feature
//! `nats`).
//!
//! [`NatsPublisher::publish`] stores the update's wire-format message in the cluster's
//! JetStream stream, on the subject instances look it up by, exactly as an instance does for
//! `POST /.well-known/mercure`: the update is in the cluster's order and history when the call
//! returns, and every instance delivers it. See `docs/wire-format.md`.
//!
//! ```no_run
//! use tidings_client::nats::NatsPublisher;
//! use tidings_client::Publication;
//!
//! # async fn example() -> Result<(), tidings_client::Error> {
//! let publisher = NatsPublisher::connect("nats://127.0.0.1:4222", "tidings").await?;
//! let published = publisher
//!     .publish(&Publication::new("https://example.com/books/1").data("{}"))
//!     .await?;
//! println!("{} at {}", published.id, published.sequence);
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::{Error, Publication};

/// The message header carrying the publish time, in microseconds since the Unix epoch.
pub const TIME_HEADER: &str = "Tidings-Time";

/// The last token of the subject of an update published without an id.
const NO_ID: &str = "none";

/// Longest wait for NATS to connect or to acknowledge a publish.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The name of a cluster's stream, also the first token of its subjects: the prefix with
/// every character other than letters, digits, `-` and `_` replaced by `_` (what NATS accepts
/// in both).
pub fn stream_name(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The subject of an update in the stream `stream`: `<stream>.u.<hex of the first 16 bytes of
/// SHA-256(id)>`, so that the last message on it is where the id is in history; `<stream>.u.none`
/// for an update without an id.
pub fn subject(stream: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => {
            let digest = Sha256::digest(id.as_bytes());
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("{stream}.u.{hex}")
        }
        None => format!("{stream}.u.{NO_ID}"),
    }
}

/// What a publish onto NATS gave the update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its id: the publication's, or `urn:tidings:<sequence>` when it had none.
    pub id: String,
    /// Its stream sequence: its position in the cluster's order.
    pub sequence: u64,
}

/// A publisher onto one cluster's NATS (its URL and `--bus-prefix`, which names the
/// stream). Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    js: async_nats::jetstream::Context,
    stream: String,
}

impl NatsPublisher {
    /// Connects to the cluster's NATS server.
    ///
    /// # Errors
    /// [`Error::Broker`] when the URL is not usable or NATS cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, Error> {
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(TIMEOUT)
            .connect(url);
        let client = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| Error::Broker(format!("cannot reach NATS within {TIMEOUT:?}")))?
            .map_err(|e| Error::Broker(format!("cannot reach NATS: {e}")))?;
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(TIMEOUT);
        Ok(NatsPublisher {
            js,
            stream: stream_name(prefix),
        })
    }

    /// Publishes an update; returns once JetStream stored it.
    ///
    /// Instances skip (and log) a message that breaks a rule of the wire format, as they would
    /// refuse it over HTTP.
    ///
    /// # Errors
    /// [`Error::Broker`] when JetStream did not take it (no stream: no instance of the cluster
    /// ever started with this prefix).
    pub async fn publish(&self, publication: &Publication) -> Result<Published, Error> {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TIME_HEADER, micros.to_string().as_str());
        if let Some(id) = &publication.id {
            // JetStream stores a message id once within its duplicate window: a retry of
            // this publish with the same id is not stored again.
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        let subject = subject(&self.stream, publication.id.as_deref());
        let ack = self
            .js
            .publish_with_headers(subject, headers, publication.wire_message().into())
            .await
            .map_err(|e| Error::Broker(e.to_string()))?
            .await
            .map_err(|e| Error::Broker(e.to_string()))?;
        let id = match &publication.id {
            Some(id) => id.clone(),
            None => format!("urn:tidings:{}", ack.sequence),
        };
        Ok(Published {
            id,
            sequence: ack.sequence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subjects_are_what_nats_accepts() {
        assert_eq!(
            stream_name("tidings-test:a b.c*>/"),
            "tidings-test_a_b_c___"
        );
        let s = subject("p", Some("urn:uuid:1"));
        assert!(s.starts_with("p.u.") && s.len() == "p.u.".len() + 32);
        assert_eq!(s, subject("p", Some("urn:uuid:1")));
        assert_ne!(s, subject("p", Some("urn:uuid:2")));
        assert_eq!(subject("p", None), "p.u.none");
    }
}
