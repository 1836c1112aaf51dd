//! A subscriber: one SSE connection's selectors, rights, session and event filter, and the
//! decision "may this subscriber see this update?", which the hub takes for live updates and
//! the stream takes for replayed ones.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::selector::Selector;
use crate::update::{EventName, SessionId, Topic, Update, EVERY_SESSION_TOPIC};

/// Which private updates a subscriber may see. Compiled once, when the subscriber connects,
/// from its verified token; per update only the compiled matchers run.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Sees every private update (`--auth none`, or a `subscribe` claim containing `*`).
    all_private: bool,
    /// The selectors of the token's `mercure.subscribe` claim.
    private_selectors: Vec<Selector>,
    /// The topic of the subscriber's own session: its updates are private to it.
    session_topic: Option<Topic>,
    /// A session stream: the broadcasts to every session ([`EVERY_SESSION_TOPIC`]) are its too.
    broadcasts: bool,
}

impl Access {
    /// Sees public updates only (anonymous subscribers).
    pub fn public_only() -> Self {
        Access::default()
    }

    /// Sees every update (development mode without tokens).
    pub fn everything() -> Self {
        Access {
            all_private: true,
            ..Access::default()
        }
    }

    /// Sees the private updates whose topics match one of `selectors` (a token's `subscribe`
    /// claim).
    pub fn from_claim(selectors: Vec<Selector>) -> Self {
        let all_private = selectors.iter().any(|s| matches!(s, Selector::Any));
        Access {
            all_private,
            private_selectors: if all_private { Vec::new() } else { selectors },
            ..Access::default()
        }
    }

    /// Adds the private updates of `session` (the session API's own channel).
    pub fn with_session(mut self, session: &SessionId) -> Self {
        self.session_topic = Some(Topic::for_session(session));
        self
    }

    /// Adds the broadcasts to every session (a session stream's, not a Mercure stream's whose
    /// token merely names a session).
    pub fn with_broadcasts(mut self) -> Self {
        self.broadcasts = true;
        self
    }

    /// True when a private update published to `topics` may be shown.
    pub fn may_see_private(&self, topics: &[Topic]) -> bool {
        self.all_private
            || self
                .session_topic
                .as_ref()
                .is_some_and(|own| topics.contains(own))
            || (self.broadcasts && topics.iter().any(|t| t.as_str() == EVERY_SESSION_TOPIC))
            || self.private_selectors.iter().any(|s| s.matches_any(topics))
    }
}

/// How the subscriptions API names a subscriber, and what it says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriberLabel {
    /// A fresh `urn:uuid:…` per connection.
    pub iri: Arc<str>,
    /// The `mercure.payload` claim of the subscriber's token, if any.
    pub payload: Option<Arc<serde_json::Value>>,
    /// The client address its stream was admitted under (for the per-address bound on
    /// subscription events); never shown.
    pub address: Option<IpAddr>,
    /// How its selectors were written, which is how they are named back.
    pub syntax: SelectorSyntax,
    /// Who it is: its token's `sub`, or the `subject` the authorization callback answered. An
    /// operator disconnects every stream of a subject at once (a logout, a ban).
    pub subject: Option<Arc<str>>,
}

/// A Mercure 1.0 selector: what it matches, and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Match {
    /// How `matcher` is compared with topics.
    pub match_type: MatchType,
    /// The selector as written.
    #[serde(rename = "match")]
    pub matcher: String,
}

/// How a Mercure 1.0 selector is compared with topics (its `match_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchType {
    /// Byte for byte (`match=`, `match_exact=`).
    Exact,
    /// A WHATWG URL Pattern (`match_urlpattern=`).
    Urlpattern,
}

impl MatchType {
    /// Its name in paths and documents.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchType::Exact => "exact",
            MatchType::Urlpattern => "urlpattern",
        }
    }

    /// The type a path segment names, if it names one.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "exact" => Some(MatchType::Exact),
            "urlpattern" => Some(MatchType::Urlpattern),
            _ => None,
        }
    }
}

/// How a Mercure subscriber wrote its selectors: the subscriptions API and subscription
/// events name its subscriptions the same way, so that a client of either revision of the
/// protocol reads what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectorSyntax {
    /// `topic=` (the classic protocol): a subscription is a topic selector.
    #[default]
    Topic,
    /// `match=`, `match_exact=`, `match_urlpattern=` (Mercure 1.0): a subscription is a
    /// match and its type.
    Match,
}

impl SubscriberLabel {
    /// A label with a fresh IRI and the given payload.
    pub fn new(payload: Option<serde_json::Value>) -> Self {
        SubscriberLabel {
            iri: Arc::from(format!("urn:uuid:{}", uuid::Uuid::new_v4())),
            payload: payload.map(Arc::new),
            address: None,
            syntax: SelectorSyntax::Topic,
            subject: None,
        }
    }

    /// The label of a subscriber whose credentials name `subject`.
    pub fn of_subject(mut self, subject: Option<Arc<str>>) -> Self {
        self.subject = subject;
        self
    }

    /// The label of a subscriber whose selectors are written as `syntax` says.
    pub fn written_as(mut self, syntax: SelectorSyntax) -> Self {
        self.syntax = syntax;
        self
    }

    /// The label of a stream admitted from `address`.
    pub fn from_address(mut self, address: Option<IpAddr>) -> Self {
        self.address = address;
        self
    }
}

/// What a new subscriber asks for: built by the HTTP layer from a request, handed to the
/// hub, which registers it.
#[derive(Debug, Clone)]
pub struct SubscriberSpec {
    /// How the subscriptions API names it.
    pub label: SubscriberLabel,
    /// The topic selectors (at least one).
    pub selectors: Vec<Selector>,
    /// Its rights to private updates.
    pub access: Access,
    /// When not empty, only updates with one of these event names are delivered (session API
    /// streams that name events).
    pub event_names: Vec<EventName>,
    /// The session the subscriber belongs to, if any (counted in the session registry).
    pub session: Option<SessionId>,
    /// When its token stops being valid (`exp` plus the leeway); the stream is closed then,
    /// unless `close-expired-streams` is off.
    pub expires: Option<SystemTime>,
}

impl SubscriberSpec {
    /// True when this subscriber's own rights and filters let it see `update`. Topic matching
    /// is not repeated here: the hub found the subscriber through a matching selector.
    pub fn may_receive(&self, update: &Update) -> bool {
        if !self.event_names.is_empty()
            && !update
                .event_type
                .as_ref()
                .is_some_and(|name| self.event_names.contains(name))
        {
            return false;
        }
        !update.private || self.access.may_see_private(&update.topics)
    }

    /// True when one of the selectors matches one of the update's topics and the subscriber
    /// may receive it (used for replayed updates, which do not go through the hub's index).
    pub fn wants(&self, update: &Update) -> bool {
        self.selectors.iter().any(|s| s.matches_any(&update.topics)) && self.may_receive(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::UpdateId;

    fn update(topic: &str, private: bool, event: Option<&str>) -> Update {
        Update::new(
            UpdateId::generate(),
            vec![Topic::new(topic, 100).unwrap()],
            event.map(|e| EventName::new(e, 100).unwrap()),
            "x".into(),
            None,
            private,
        )
        .unwrap()
    }

    fn spec(access: Access, events: &[&str]) -> SubscriberSpec {
        SubscriberSpec {
            label: SubscriberLabel::new(None),
            selectors: vec![Selector::Any],
            access,
            event_names: events
                .iter()
                .map(|e| EventName::new(e, 100).unwrap())
                .collect(),
            session: None,
            expires: None,
        }
    }

    #[test]
    fn private_updates_need_a_matching_claim() {
        let claim = Access::from_claim(vec![Selector::compile("books/{id}", 100).unwrap()]);
        assert!(spec(claim.clone(), &[]).wants(&update("books/1", true, None)));
        assert!(!spec(claim, &[]).wants(&update("authors/1", true, None)));
        assert!(!spec(Access::public_only(), &[]).wants(&update("books/1", true, None)));
        assert!(spec(Access::public_only(), &[]).wants(&update("books/1", false, None)));
        assert!(spec(Access::everything(), &[]).wants(&update("x", true, None)));
    }

    #[test]
    fn a_session_sees_its_own_private_updates_only() {
        let me = SessionId::new("me", 10).unwrap();
        let other = SessionId::new("other", 10).unwrap();
        let mine = Topic::for_session(&me);
        let theirs = Topic::for_session(&other);
        let access = Access::public_only().with_session(&me);
        assert!(spec(access.clone(), &[]).wants(&update(mine.as_str(), true, None)));
        assert!(!spec(access, &[]).wants(&update(theirs.as_str(), true, None)));
    }

    #[test]
    fn event_filters_compare_names() {
        let s = spec(Access::everything(), &["chat"]);
        assert!(s.wants(&update("t", false, Some("chat"))));
        assert!(!s.wants(&update("t", false, Some("news"))));
        assert!(!s.wants(&update("t", false, None)));
        let several = spec(Access::everything(), &["chat", "news"]);
        assert!(several.wants(&update("t", false, Some("chat"))));
        assert!(several.wants(&update("t", false, Some("news"))));
        assert!(!several.wants(&update("t", false, Some("alert"))));
        let all = spec(Access::everything(), &[]);
        assert!(all.wants(&update("t", false, Some("alert"))));
        assert!(all.wants(&update("t", false, None)));
    }
}
