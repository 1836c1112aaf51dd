//! The update — what the hub delivers — and the validated pieces it is made of.
//!
//! Everything an outside caller sends is turned into these types once, at the boundary
//! (`http`, later the bus wire-format decoder). A value of one of these types cannot hold
//! what would break the SSE framing: an [`UpdateId`] or an [`EventName`] never contains CR, LF
//! or NUL, and a [`Topic`] never contains a control character. Code inside the hub trusts them.

use std::fmt;
use std::sync::Arc;

use crate::telemetry::TraceParent;

/// Limits on what a caller may send. Every one has a config name and a default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `max-body-bytes`.
    pub max_body_bytes: usize,
    /// `max-selectors`.
    pub max_selectors: usize,
    /// `max-selector-length` (also the longest topic).
    pub max_selector_length: usize,
    /// `max-topics-per-update`.
    pub max_topics_per_update: usize,
    /// `max-id-length`.
    pub max_id_length: usize,
    /// `max-event-name-length`.
    pub max_event_name_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_selectors: 100,
            max_selector_length: 2048,
            max_topics_per_update: 100,
            max_id_length: 1024,
            max_event_name_length: 256,
        }
    }
}

/// Why a piece of input was refused. Carries which field was wrong, which rule it broke and a
/// sentence that says what to fix; the HTTP layer turns it into a `4xx` with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    /// The name of the field as the caller knows it (`topic`, `id`, `eventName`, …).
    pub field: &'static str,
    /// What is wrong with it, for a human.
    pub reason: String,
    /// The rule it broke, which decides the answer's status and code.
    pub rule: Rule,
}

/// The rules an input can break, one per distinct answer a caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A value's form: empty, too long, a forbidden character, not a number, not JSON.
    Form,
    /// An update without a topic.
    NoTopic,
    /// More topics than `max-topics-per-update`.
    TooManyTopics,
    /// A topic under the hub's own path, which only the hub publishes to.
    ReservedTopic,
}

impl InvalidInput {
    /// Builds an error for `field` with the given explanation: the value's form is wrong.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self::breaking(Rule::Form, field, reason)
    }

    /// Builds an error for `field` that broke `rule`.
    pub fn breaking(rule: Rule, field: &'static str, reason: impl Into<String>) -> Self {
        InvalidInput {
            field,
            reason: reason.into(),
            rule,
        }
    }
}

/// Checks the rules shared by every string field: not empty, not longer than `max_len` bytes,
/// and free of the characters `forbidden` rejects.
fn check_text(
    field: &'static str,
    value: &str,
    max_len: usize,
    forbidden: fn(char) -> bool,
    forbidden_what: &str,
) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(InvalidInput::new(
            field,
            format!("is {} bytes long, the limit is {max_len}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| forbidden(*c)) {
        return Err(InvalidInput::new(
            field,
            format!(
                "must not contain {forbidden_what} (found U+{:04X})",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// True for the characters that end an SSE line or truncate a field in a browser.
fn breaks_sse_line(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\0')
}

/// True for ASCII control characters (which have no place in a topic or a session id).
fn is_control(c: char) -> bool {
    c.is_ascii_control()
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, field = $field:literal, forbidden = $forbidden:path, what = $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value` (not empty, at most `max_len` bytes, no forbidden characters).
            ///
            /// # Errors
            /// [`InvalidInput`] naming the field and the rule that failed.
            pub fn new(value: &str, max_len: usize) -> Result<Self, InvalidInput> {
                check_text($field, value, max_len, $forbidden, $what)?;
                Ok($name(Arc::from(value)))
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

text_newtype!(
    /// The id of an update, sent as the SSE `id:` field and used by clients to resume
    /// (`Last-Event-ID`): generated unique by the hub, or chosen by the publisher. Never
    /// contains a control character, so that it always fits in a `Last-Event-ID` header.
    UpdateId, field = "id", forbidden = is_control, what = "control characters"
);

text_newtype!(
    /// An SSE event name (the `type` of a Mercure update, the `eventName` of the session API).
    /// Never contains CR, LF or NUL.
    EventName, field = "event name", forbidden = breaks_sse_line, what = "CR, LF or NUL"
);

text_newtype!(
    /// A topic an update is published to: usually an IRI, any string without control
    /// characters.
    Topic, field = "topic", forbidden = is_control, what = "control characters"
);

text_newtype!(
    /// The identity of a user or browser-tab group; one session may hold many streams.
    SessionId, field = "sessionId", forbidden = is_control, what = "control characters"
);

/// As a string (the control plane's signals name sessions).
impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Validated as any session id read from outside ([`MAX_SESSION_ID_LEN`]).
impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        SessionId::new(&text, MAX_SESSION_ID_LEN).map_err(serde::de::Error::custom)
    }
}

impl UpdateId {
    /// A fresh, random id in the form Mercure hubs use: `urn:uuid:<uuid v4>`.
    pub fn generate() -> Self {
        // Its length is GENERATED_ID_LENGTH.
        UpdateId(Arc::from(format!("urn:uuid:{}", uuid::Uuid::new_v4())))
    }

    /// The id of an update published onto the broker without one, from its place in the
    /// cluster's order (`urn:tidings:<place>`): every instance derives the same.
    pub fn derived(place: impl std::fmt::Display) -> Self {
        UpdateId(Arc::from(format!("urn:tidings:{place}")))
    }
}

/// The length of an id the hub generates ([`UpdateId::generate`]), and so the least
/// `max-id-length` may be: ids the hub gives out must be ids it takes back (`Last-Event-ID`).
/// Derived ids (`urn:tidings:<place>`) are shorter in practice.
pub const GENERATED_ID_LENGTH: usize = "urn:uuid:".len() + 36;

/// Longest session id accepted, in bytes (wherever one comes from: a token's claim, the
/// application's callback, a query parameter, a publish, the bus's registry).
pub const MAX_SESSION_ID_LEN: usize = 256;

/// The prefix of the internal topic that carries a session's updates.
pub const SESSION_TOPIC_PREFIX: &str = "urn:tidings:session:";

/// The topic every session stream holds besides its session's: the session API's broadcasts.
pub const EVERY_SESSION_TOPIC: &str = "urn:tidings:sessions";

impl Topic {
    /// The topic of broadcasts to every session stream ([`EVERY_SESSION_TOPIC`]).
    pub fn every_session() -> Topic {
        Topic(Arc::from(EVERY_SESSION_TOPIC))
    }

    /// The topic that carries the updates addressed to one session (the session API is a view
    /// of topics: `urn:tidings:session:<percent-encoded session id>`).
    pub fn for_session(session: &SessionId) -> Topic {
        let encoded = percent_encoding::utf8_percent_encode(
            session.as_str(),
            percent_encoding::NON_ALPHANUMERIC,
        );
        Topic(Arc::from(format!("{SESSION_TOPIC_PREFIX}{encoded}")))
    }
}

/// One update: published once, delivered to every subscriber that may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Globally unique id; assigned by the publisher or generated by the hub.
    pub id: UpdateId,
    /// The topics it is published to (at least one, no duplicates).
    pub topics: Vec<Topic>,
    /// The SSE event name, if any (`event:` field).
    pub event_type: Option<EventName>,
    /// The payload, UTF-8 text that may span several lines.
    pub data: String,
    /// Reconnection delay hint for the client, in milliseconds (`retry:` field).
    pub retry: Option<u64>,
    /// A private update reaches only subscribers authorized for one of its topics.
    pub private: bool,
    /// The trace its publish belongs to, carried to every instance so that its deliveries
    /// join it ([`crate::telemetry`]); `None` when tracing is off or the trace not sampled.
    pub trace: Option<TraceParent>,
}

impl Update {
    /// True when `other` is on the same topics (in any order): a publish of an id already
    /// taken on the same topics is a retry (a publisher allowed those topics may publish there
    /// anyway); on other topics it would take the id from whoever published there.
    pub fn same_topics(&self, other: &Update) -> bool {
        self.topics.len() == other.topics.len()
            && self.topics.iter().all(|t| other.topics.contains(t))
    }

    /// Builds an update from parts already validated, after checking the rules that span
    /// fields: at least one topic, and no topic twice (duplicates are dropped, keeping the
    /// first). What a caller sent goes through [`Draft::validate`] instead, which ends here.
    ///
    /// # Errors
    /// [`InvalidInput`] for `topic` when the list is empty.
    pub fn new(
        id: UpdateId,
        mut topics: Vec<Topic>,
        event_type: Option<EventName>,
        data: String,
        retry: Option<u64>,
        private: bool,
    ) -> Result<Self, InvalidInput> {
        if topics.is_empty() {
            return Err(InvalidInput::breaking(
                Rule::NoTopic,
                "topic",
                "at least one topic is required",
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(topics.len());
        topics.retain(|t| seen.insert(t.clone()));
        Ok(Update {
            id,
            topics,
            event_type,
            data,
            retry,
            private,
            trace: None,
        })
    }
}

/// The path below which the hub publishes its own events (subscription events).
pub const RESERVED_PATH: &str = "/.well-known/mercure";

/// True for topics under the hub's reserved path, written as a path or as an absolute IRI.
pub fn is_reserved(topic: &str) -> bool {
    let path = match topic.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => topic,
    };
    path.strip_prefix(RESERVED_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Refuses more than `max-topics-per-update` recipients (`count` of `what`, in `field`).
fn at_most_max_topics(
    count: usize,
    field: &'static str,
    what: &str,
    limits: &Limits,
) -> Result<(), InvalidInput> {
    if count <= limits.max_topics_per_update {
        return Ok(());
    }
    Err(InvalidInput::breaking(
        Rule::TooManyTopics,
        field,
        format!(
            "{count} {what}, the limit is max-topics-per-update = {}",
            limits.max_topics_per_update
        ),
    ))
}

/// The SSE event type of the hub's own events (Mercure 1.0 subscription events), refused to
/// publishers as the reference hub does: a client listening for it must be able to trust it.
pub const RESERVED_EVENT_TYPE: &str = "mercure";

/// Who wrote an update, which decides whether it may use the hub's reserved topics and event
/// type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    /// A publisher over HTTP: topics under [`RESERVED_PATH`] and the event type
    /// [`RESERVED_EVENT_TYPE`] are the hub's own.
    Publisher,
    /// A message read from the bus: written by an instance (its subscription events live
    /// under the reserved path) or by a service holding the broker's credentials, which the
    /// broker's own access control vouches for.
    Bus,
}

/// Where an update goes, as its publisher named it.
#[derive(Debug, Clone)]
pub enum Recipients<'a> {
    /// Topics, each checked against `max-selector-length` and the reserved path.
    Topics(Vec<&'a str>),
    /// One session's topic (the session API): derived from an id already validated.
    Session(&'a SessionId),
    /// Several sessions' topics (one update: delivered once to each of their streams, stored
    /// once, retried as one).
    Sessions(&'a [SessionId]),
    /// Every session stream ([`EVERY_SESSION_TOPIC`]).
    EverySession,
}

/// An update as its publisher wrote it, not checked yet: the one way in for an update,
/// whichever way it came (the Mercure form, the session API, a wire-format message on a
/// broker), so that every one is held to the same rules.
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    /// The publisher's id, if it chose one.
    pub id: Option<&'a str>,
    /// Where it goes.
    pub to: Recipients<'a>,
    /// The SSE event name.
    pub event_type: Option<&'a str>,
    /// The payload.
    pub data: String,
    /// The reconnection delay hint, in milliseconds.
    pub retry: Option<u64>,
    /// Whether only authorized subscribers may see it.
    pub private: bool,
}

impl Draft<'_> {
    /// Checks every field against `limits` (and, for an update from a publisher, that no
    /// topic is reserved) and builds the update; one without an id is named `fallback_id()`.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the first field that breaks a rule, and the rule.
    pub fn validate(
        self,
        limits: &Limits,
        author: Author,
        fallback_id: impl FnOnce() -> UpdateId,
    ) -> Result<Update, InvalidInput> {
        let topics = match self.to {
            Recipients::Topics(topics) => {
                // Counted before anything is checked: 10,000 topics cost one comparison.
                at_most_max_topics(topics.len(), "topic", "topics", limits)?;
                let topics = topics
                    .into_iter()
                    .map(|t| Topic::new(t, limits.max_selector_length))
                    .collect::<Result<Vec<_>, _>>()?;
                if author == Author::Publisher {
                    if let Some(t) = topics.iter().find(|t| is_reserved(t.as_str())) {
                        return Err(InvalidInput::breaking(
                            Rule::ReservedTopic,
                            "topic",
                            format!("{:?} is reserved for the hub's own events", t.as_str()),
                        ));
                    }
                }
                topics
            }
            Recipients::Session(session) => vec![Topic::for_session(session)],
            Recipients::Sessions(sessions) => {
                at_most_max_topics(sessions.len(), "sessionIds", "sessions", limits)?;
                // (A session named twice is one topic: the update drops repeats.)
                sessions.iter().map(Topic::for_session).collect()
            }
            Recipients::EverySession => vec![Topic::every_session()],
        };
        let id = match self.id {
            Some(id) => UpdateId::new(id, limits.max_id_length)?,
            None => fallback_id(),
        };
        if author == Author::Publisher && self.event_type == Some(RESERVED_EVENT_TYPE) {
            return Err(InvalidInput::new(
                "type",
                "mercure is the event type of the hub's own events (Mercure 1.0 subscription events): choose another",
            ));
        }
        let event_type = self
            .event_type
            .map(|e| EventName::new(e, limits.max_event_name_length))
            .transpose()?;
        Update::new(id, topics, event_type, self.data, self.retry, self.private)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_line_breaks_and_other_control_characters() {
        for bad in ["a\nb", "a\rb", "a\0b", "a\tb", "a\x01b", ""] {
            assert!(UpdateId::new(bad, 100).is_err(), "{bad:?}");
        }
        assert!(UpdateId::new("urn:uuid:1", 100).is_ok());
        assert!(UpdateId::new("xxxx", 3).is_err());
    }

    #[test]
    fn topics_refuse_control_characters() {
        assert!(Topic::new("a\tb", 100).is_err());
        assert!(Topic::new("https://example.com/books/ü", 100).is_ok());
    }

    #[test]
    fn session_topics_escape_the_session_id() {
        let s = SessionId::new("a b/c", 100).unwrap();
        assert_eq!(
            Topic::for_session(&s).as_str(),
            "urn:tidings:session:a%20b%2Fc"
        );
    }

    #[test]
    fn the_hub_path_is_reserved_in_both_spellings() {
        assert!(is_reserved("/.well-known/mercure/subscriptions/x"));
        assert!(is_reserved("https://example.com/.well-known/mercure"));
        assert!(!is_reserved("https://example.com/books/1"));
        assert!(!is_reserved("/.well-known/mercurex"));
    }

    fn draft(topics: Vec<&str>) -> Draft<'_> {
        Draft {
            id: None,
            to: Recipients::Topics(topics),
            event_type: None,
            data: "d".into(),
            retry: None,
            private: false,
        }
    }

    #[test]
    fn a_draft_breaks_one_named_rule_or_becomes_an_update() {
        let limits = Limits {
            max_topics_per_update: 2,
            ..Limits::default()
        };
        let rule = |d: Draft<'_>, author| {
            d.validate(&limits, author, || UpdateId::derived(0))
                .map_err(|e| (e.rule, e.field))
        };
        assert_eq!(
            rule(draft(vec![]), Author::Publisher).unwrap_err(),
            (Rule::NoTopic, "topic")
        );
        assert_eq!(
            rule(draft(vec!["a", "b", "c"]), Author::Bus).unwrap_err(),
            (Rule::TooManyTopics, "topic")
        );
        assert_eq!(
            rule(draft(vec!["a\nb"]), Author::Bus).unwrap_err(),
            (Rule::Form, "topic")
        );
        let reserved = draft(vec!["/.well-known/mercure/subscriptions/x"]);
        assert_eq!(
            rule(reserved.clone(), Author::Publisher).unwrap_err(),
            (Rule::ReservedTopic, "topic")
        );
        assert!(
            rule(reserved, Author::Bus).is_ok(),
            "instances publish their subscription events on the bus"
        );
        let bad_id = Draft {
            id: Some("a\rb"),
            ..draft(vec!["a"])
        };
        assert_eq!(
            rule(bad_id, Author::Publisher).unwrap_err(),
            (Rule::Form, "id")
        );
        let bad_type = Draft {
            event_type: Some("a\0b"),
            ..draft(vec!["a"])
        };
        assert_eq!(
            rule(bad_type, Author::Publisher).unwrap_err(),
            (Rule::Form, "event name")
        );
        let update = draft(vec!["a", "a"])
            .validate(&limits, Author::Publisher, || UpdateId::derived(7))
            .unwrap();
        assert_eq!(
            (update.id.as_str(), update.topics.len()),
            ("urn:tidings:7", 1)
        );
        let alice = SessionId::new("alice", 10).unwrap();
        let to_alice = Draft {
            to: Recipients::Session(&alice),
            ..draft(vec![])
        };
        let update = to_alice
            .validate(&limits, Author::Publisher, || UpdateId::derived(0))
            .unwrap();
        assert_eq!(update.topics, vec![Topic::for_session(&alice)]);
    }

    #[test]
    fn duplicate_topics_are_dropped() {
        let t = |s| Topic::new(s, 100).unwrap();
        let u = Update::new(
            UpdateId::generate(),
            vec![t("a"), t("b"), t("a")],
            None,
            String::new(),
            None,
            false,
        )
        .unwrap();
        assert_eq!(u.topics, vec![t("a"), t("b")]);
    }
}
