//! The cluster's registry: which sessions are connected where, and every subscriber (for the
//! subscriptions API). A bus that keeps one hands it out ([`super::Bus::registry`]); without one
//! each instance knows only its own hub. Kept apart from the bus as centrifuge keeps its
//! presence manager apart from its broker: publishing and replay are what every bus does; a
//! registry is a power some have.

use async_trait::async_trait;

use super::BusError;
use crate::subscriber::{Match, MatchType, SelectorSyntax};
use crate::update::{SessionId, EVERY_SESSION_TOPIC};

/// The cluster-wide record of sessions and subscribers. Redis keeps one today
/// (`bus::redis::registry`).
#[async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Where each of `sessions`' streams are, cluster-wide, in order: each live instance
    /// holding some, with how many, sorted by instance id (empty: offline).
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the registry cannot be read now.
    async fn sessions_presence(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<Vec<(String, usize)>>, BusError>;

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
    /// Its `topic=` selectors as written, without repeats (a classic subscriber).
    pub topics: Vec<String>,
    /// Its `match…=` selectors, without repeats (a Mercure 1.0 subscriber). Absent from the
    /// records of earlier versions, which knew only `topics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Match>,
    /// The `mercure.payload` claim of its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

impl SubscriberRecord {
    /// Its selectors as written, whichever way (`topic=` or `match…=`).
    pub fn selectors(&self) -> impl Iterator<Item = &str> {
        let matches = self.matches.iter().map(|m| m.matcher.as_str());
        self.topics.iter().map(String::as_str).chain(matches)
    }

    /// The record of a local subscriber.
    pub fn of(spec: &crate::subscriber::SubscriberSpec) -> Self {
        use crate::selector::Selector;
        let mut topics: Vec<String> = Vec::new();
        let mut matches: Vec<Match> = Vec::new();
        for selector in &spec.selectors {
            let source = selector.source();
            // A session stream's broadcast topic is the hub's doing, not a selector it wrote.
            if spec.session.is_some() && source == EVERY_SESSION_TOPIC {
                continue;
            }
            match spec.label.syntax {
                SelectorSyntax::Topic => {
                    if !topics.iter().any(|t| t == source) {
                        topics.push(source.to_owned());
                    }
                }
                SelectorSyntax::Match => {
                    let match_type = match selector {
                        Selector::UrlPattern { .. } => MatchType::Urlpattern,
                        _ => MatchType::Exact,
                    };
                    if !matches
                        .iter()
                        .any(|m| m.match_type == match_type && m.matcher == source)
                    {
                        matches.push(Match {
                            match_type,
                            matcher: source.to_owned(),
                        });
                    }
                }
            }
        }
        SubscriberRecord {
            subscriber: spec.label.iri.to_string(),
            topics,
            matches,
            payload: spec.label.payload.as_deref().cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_an_earlier_version_reads_as_a_classic_subscriber() {
        // Instances of a rolling upgrade read each other's records.
        let old: SubscriberRecord =
            serde_json::from_str(r#"{"subscriber":"urn:uuid:1","topics":["a/{x}"]}"#).unwrap();
        assert!(old.matches.is_empty());
        assert_eq!(old.selectors().collect::<Vec<_>>(), ["a/{x}"]);
        let new = SubscriberRecord {
            matches: vec![Match {
                match_type: MatchType::Urlpattern,
                matcher: "/b/:y".into(),
            }],
            ..old
        };
        let written = serde_json::to_string(&new).unwrap();
        assert!(written.contains(r#""matches":[{"match_type":"urlpattern","match":"/b/:y"}]"#));
        let read: SubscriberRecord = serde_json::from_str(&written).unwrap();
        assert_eq!(read.selectors().collect::<Vec<_>>(), ["a/{x}", "/b/:y"]);
    }
}
