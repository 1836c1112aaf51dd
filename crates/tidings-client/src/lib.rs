//! # tidings-client
//!
//! Publish to and subscribe from a [Tidings](https://github.com/tidings-hub/tidings) hub — or
//! any hub that speaks the Mercure protocol — over HTTP.
//!
//! - [`Hub::publish`] posts an update ([`Publication`]) and returns the id the hub gave it;
//!   [`Hub::send_event`] uses Tidings' session API.
//! - [`Hub::subscribe`] returns a stream of [`Event`]s that survives dropped connections: it
//!   waits the hub's `retry:` hint (or backs off while the hub is unreachable) and resumes with
//!   `Last-Event-ID`, so no update is missed while the hub's history holds it. Refusals that
//!   retrying cannot cure (bad selectors, a missing or wrong token) end the stream with an
//!   [`Error`].
//! - With the `redis` feature, [`redis::RedisPublisher`] publishes straight onto a cluster's
//!   Redis, without HTTP, exactly as an instance would; with the `nats` feature,
//!   [`nats::NatsPublisher`] onto its NATS JetStream stream; with the `amqp` feature,
//!   [`amqp::AmqpPublisher`] onto its RabbitMQ exchange; with the `kafka` feature,
//!   [`kafka::KafkaPublisher`] onto its Kafka topic.
//! - With the `token` feature, [`token::mint`] signs the tokens a hub accepts, where the key
//!   is at hand.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tidings_client::{Hub, Publication, Subscription};
//!
//! # async fn example() -> Result<(), tidings_client::Error> {
//! let hub = Hub::new("http://127.0.0.1:3000")?.with_token("eyJhbGciOi…");
//! let mut events = hub.subscribe(Subscription::topics(["https://example.com/books/{id}"]));
//! let id = hub
//!     .publish(&Publication::new("https://example.com/books/1").data(r#"{"title": "Dune"}"#))
//!     .await?;
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{} {} {}", event.id, event.event_type, event.data);
//!     if event.id == id {
//!         break;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "amqp")]
pub mod amqp;
mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
mod publish;
#[cfg(feature = "redis")]
pub mod redis;
pub mod sse;
mod subscribe;
#[cfg(feature = "token")]
pub mod token;

pub use error::Error;
pub use publish::Publication;
pub use subscribe::{Event, Events, Subscription};

use std::time::Duration;

/// A hub, and how to talk to it: its base URL and the token to send. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
    /// Longest wait for a publish's answer.
    publish_timeout: Duration,
}

impl Hub {
    /// A hub at `base` (e.g. `http://127.0.0.1:3000`), without a token.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when `base` is not an `http` or `https` URL.
    pub fn new(base: &str) -> Result<Self, Error> {
        let base =
            reqwest::Url::parse(base).map_err(|e| Error::InvalidUrl(format!("{base:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::InvalidUrl(format!(
                "{base}: the scheme must be http or https"
            )));
        }
        // reqwest is built without a default TLS provider; use ring unless the program chose.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("tidings-client/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(Error::Transport)?;
        Ok(Hub {
            base,
            token: None,
            http,
            publish_timeout: Duration::from_secs(30),
        })
    }

    /// The longest wait for the answer to one publish attempt (default 30 s); past it the
    /// outcome is unknown and the publish is retried with the same id (see [`Hub::publish`]),
    /// then fails with [`Error::Transport`].
    #[must_use]
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sends `token` (a JWT) as `Authorization: Bearer` on every request.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The URL of `path` on this hub.
    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}
