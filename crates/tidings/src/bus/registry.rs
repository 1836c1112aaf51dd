//! The cluster's registry: which sessions are connected where, and every subscriber (for the
//! subscriptions API). A bus that keeps one hands it out ([`super::Bus::registry`]); without one
//! each instance knows only its own hub. Kept apart from the bus as centrifuge keeps its
//! presence manager apart from its broker: publishing and replay are what every bus does; a
//! registry is a power some have.

use async_trait::async_trait;

use super::BusError;
use crate::update::SessionId;

/// The cluster-wide record of sessions and subscribers. Redis keeps one today
/// (`bus::redis::registry`).
#[async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Where a session's streams are, cluster-wide: each live instance holding some, with how
    /// many, sorted by instance id.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the registry cannot be read now.
    async fn session_presence(&self, session: &SessionId)
        -> Result<Vec<(String, usize)>, BusError>;

    /// Marks `session` online, recording this instance's `streams` of it first: `true` when it
    /// was not online (this instance tells it), `false` when it already was.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the registry cannot be written now.
    async fn session_online(&self, session: &SessionId, streams: usize) -> Result<bool, BusError>;

    /// Marks `session` offline when no live instance holds a stream of it (checked and marked
    /// at once): `true` when this call took it offline.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the registry cannot be written now.
    async fn session_offline(&self, session: &SessionId) -> Result<bool, BusError>;

    /// The sessions marked online that no live instance has held for two sweeps in a row —
    /// their instance died and its registry entries expired — marked offline now. One
    /// instance of the cluster sweeps per `session-ttl`; the others get nothing.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the registry cannot be read now.
    async fn sweep_sessions(&self) -> Result<Vec<SessionId>, BusError>;

    /// Every subscriber of the cluster (for the subscriptions API); `None` when this instance
    /// does not share its subscribers (the API is off).
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the record cannot be read now.
    async fn subscribers(&self) -> Result<Option<Vec<SubscriberRecord>>, BusError>;
}

/// One subscriber as the subscriptions API shows it, shared between instances.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubscriberRecord {
    /// Its `urn:uuid:…`.
    pub subscriber: String,
    /// Its selectors as written, without repeats.
    pub topics: Vec<String>,
    /// The `mercure.payload` claim of its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

impl SubscriberRecord {
    /// The record of a local subscriber.
    pub fn of(spec: &crate::subscriber::SubscriberSpec) -> Self {
        let mut topics: Vec<String> = Vec::with_capacity(spec.selectors.len());
        for selector in &spec.selectors {
            if !topics.iter().any(|t| t == selector.source()) {
                topics.push(selector.source().to_owned());
            }
        }
        SubscriberRecord {
            subscriber: spec.label.iri.to_string(),
            topics,
            payload: spec.label.payload.as_deref().cloned(),
        }
    }
}
