//! How a consumed message becomes an update: where it goes (topics, or a session and an event
//! name), what it carries, its type and its id — each a [`Template`] filled from the message —
//! and the presets that make the common shapes one line.

use super::template::{push_value, Template, Unfilled, Values};
use crate::update::{
    Author, Draft, InvalidInput, Limits, Recipients, SessionId, Update, UpdateId,
    MAX_SESSION_ID_LEN,
};

/// Where a consumed message's update goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Mercure topics (each template one topic).
    Topics(Vec<Template>),
    /// A session and an event name (the session API).
    Session {
        /// The session id.
        session: Template,
        /// The event name.
        event: Template,
    },
}

/// What an update carries.
#[derive(Debug, Clone)]
pub enum Data {
    /// The body as it is (UTF-8 text).
    Body,
    /// A field of the JSON body: a string as it is, anything else as its JSON text.
    Field(String),
}

/// A consumer's mapping, compiled.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Where it goes.
    pub target: Target,
    /// What it carries.
    pub data: Data,
    /// The SSE event type (Mercure target; the session target's is its event name).
    pub event_type: Option<Template>,
    /// The update's id; without it, the id derives from the message's place in the source.
    pub id: Option<Template>,
    /// Whether only authorized subscribers see it (session updates always are).
    pub private: bool,
}

/// The presets, by name: each a whole mapping.
pub const PRESETS: [&str; 1] = ["spring-sse-starter"];

impl Mapping {
    /// The preset `name`: `spring-sse-starter` reads the `SendSseEvent` JSON a Spring SSE
    /// starter's services publish (`{"eventName", "sessionId", "payload"}`) and sends the
    /// payload to that session's streams of that event name.
    pub fn preset(name: &str) -> Option<Self> {
        let field = |p: &str| Template::parse(p).ok();
        match name {
            "spring-sse-starter" => Some(Mapping {
                target: Target::Session {
                    session: field("{/sessionId}")?,
                    event: field("{/eventName}")?,
                },
                data: Data::Field("/payload".into()),
                event_type: None,
                id: None,
                private: true,
            }),
            _ => None,
        }
    }

    /// Whether it reads the body's JSON (so that a body that is not JSON is refused at once).
    pub fn reads_json(&self) -> bool {
        let templates = self.templates();
        matches!(self.data, Data::Field(_)) || templates.iter().any(|t| t.reads_json())
    }

    /// The highest wildcard its templates read.
    pub fn max_capture(&self) -> usize {
        self.templates()
            .iter()
            .map(|t| t.max_capture())
            .max()
            .unwrap_or(0)
    }

    fn templates(&self) -> Vec<&Template> {
        let mut all: Vec<&Template> = match &self.target {
            Target::Topics(topics) => topics.iter().collect(),
            Target::Session { session, event } => vec![session, event],
        };
        all.extend(self.event_type.iter().chain(self.id.iter()));
        all
    }

    /// The update `message` maps to, checked like any publish; `derived_id` names it when the
    /// mapping has no id template (the message's place in its source).
    ///
    /// # Errors
    /// [`Skip`]: why the message cannot become an update, with the reason's metric label.
    pub fn apply(
        &self,
        message: &Message<'_>,
        limits: &Limits,
        derived_id: impl FnOnce() -> UpdateId,
    ) -> Result<Update, Skip> {
        if message.body.len() > limits.max_body_bytes {
            return Err(Skip::new(
                "too_large",
                format!(
                    "a body of {} bytes, over max-body-bytes = {}",
                    message.body.len(),
                    limits.max_body_bytes
                ),
            ));
        }
        let json = if self.reads_json() {
            Some(
                serde_json::from_slice::<serde_json::Value>(message.body)
                    .map_err(|e| Skip::new("not_json", format!("the body is not JSON: {e}")))?,
            )
        } else {
            None
        };
        let values = Values {
            name: message.name,
            captures: &message.captures,
            json: json.as_ref(),
            key: message.key,
        };
        let fill = |t: &Template| t.fill(&values).map_err(Skip::from);
        let data = match &self.data {
            Data::Body => std::str::from_utf8(message.body)
                .map_err(|_| Skip::new("not_utf8", "the body is not UTF-8 text"))?
                .to_owned(),
            Data::Field(pointer) => {
                let value = json
                    .as_ref()
                    .and_then(|j| j.pointer(pointer))
                    .filter(|v| !v.is_null())
                    .ok_or_else(|| Skip::from(Unfilled::MissingField(pointer.clone())))?;
                let mut text = String::new();
                push_value(&mut text, value);
                text
            }
        };
        let id = self.id.as_ref().map(fill).transpose()?;
        let event_type = self.event_type.as_ref().map(fill).transpose()?;
        let invalid = |e: InvalidInput| Skip::new("invalid", e.to_string());
        match &self.target {
            Target::Topics(templates) => {
                let topics = templates.iter().map(fill).collect::<Result<Vec<_>, _>>()?;
                Draft {
                    id: id.as_deref(),
                    to: Recipients::Topics(topics.iter().map(String::as_str).collect()),
                    event_type: event_type.as_deref(),
                    data,
                    retry: None,
                    private: self.private,
                }
                .validate(limits, Author::Publisher, derived_id)
                .map_err(invalid)
            }
            Target::Session { session, event } => {
                let session =
                    SessionId::new(&fill(session)?, MAX_SESSION_ID_LEN).map_err(invalid)?;
                let event = fill(event)?;
                Draft {
                    id: id.as_deref(),
                    to: Recipients::Session(&session),
                    event_type: Some(&event),
                    data,
                    retry: None,
                    private: true,
                }
                .validate(limits, Author::Publisher, derived_id)
                .map_err(invalid)
            }
        }
    }
}

/// A message as a source hands it over.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The body.
    pub body: &'a [u8],
    /// The channel, routing key, subject or topic it came on.
    pub name: &'a str,
    /// What the wildcards of the pattern it matched matched.
    pub captures: Vec<&'a str>,
    /// The record's key (Kafka).
    pub key: Option<&'a str>,
}

/// Why a message was skipped: `reason` is the `outcome` label of
/// `tidings_consumer_messages_total`, `detail` what the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// `not_json`, `not_utf8`, `missing_field`, `missing_part`, `invalid`, `too_large`, or
    /// (from the bus) `id_conflict`.
    pub reason: &'static str,
    /// A sentence for the log.
    pub detail: String,
}

impl Skip {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Skip {
            reason,
            detail: detail.into(),
        }
    }
}

impl From<Unfilled> for Skip {
    fn from(u: Unfilled) -> Self {
        let reason = match &u {
            Unfilled::NotJson => "not_json",
            Unfilled::MissingField(_) => "missing_field",
            Unfilled::MissingPart(_) => "missing_part",
        };
        Skip::new(reason, u.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn message(body: &[u8]) -> Message<'_> {
        Message {
            body,
            name: "sse-events",
            captures: Vec::new(),
            key: None,
        }
    }

    fn fresh() -> UpdateId {
        UpdateId::generate()
    }

    #[test]
    fn the_spring_preset_sends_the_payload_to_the_session_and_event_name() {
        let spring = Mapping::preset("spring-sse-starter").unwrap();
        let body = br#"{"eventName":"order-update","sessionId":"s-1","payload":{"order":42,"state":"paid"}}"#;
        let update = spring.apply(&message(body), &limits(), fresh).unwrap();
        let session = SessionId::new("s-1", MAX_SESSION_ID_LEN).unwrap();
        assert_eq!(update.topics, [crate::update::Topic::for_session(&session)]);
        assert_eq!(update.event_type.unwrap().as_str(), "order-update");
        assert_eq!(update.data, r#"{"order":42,"state":"paid"}"#);
        assert!(update.private);
    }

    #[test]
    fn topics_come_from_templates_and_the_id_from_the_source_or_a_field() {
        let mapping = Mapping {
            target: Target::Topics(vec![
                Template::parse("https://example.com/jobs/{1}").unwrap()
            ]),
            data: Data::Body,
            event_type: Some(Template::parse("job-{/state}").unwrap()),
            id: None,
            private: false,
        };
        let mut m = message(br#"{"state":"done"}"#);
        m.name = "subtitles:job:42";
        m.captures = vec!["42"];
        let update = mapping
            .apply(&m, &limits(), || UpdateId::derived("jobs:1-0"))
            .unwrap();
        assert_eq!(update.topics[0].as_str(), "https://example.com/jobs/42");
        assert_eq!(update.event_type.unwrap().as_str(), "job-done");
        assert_eq!(update.data, r#"{"state":"done"}"#);
        assert_eq!(update.id.as_str(), "urn:tidings:jobs:1-0");
        let with_id = Mapping {
            id: Some(Template::parse("{/state}-id").unwrap()),
            ..mapping
        };
        assert_eq!(
            with_id.apply(&m, &limits(), fresh).unwrap().id.as_str(),
            "done-id"
        );
    }

    #[test]
    fn bad_messages_are_skipped_with_their_reason() {
        let spring = Mapping::preset("spring-sse-starter").unwrap();
        let reason = |body: &[u8]| {
            spring
                .apply(&message(body), &limits(), fresh)
                .unwrap_err()
                .reason
        };
        assert_eq!(reason(b"not json"), "not_json");
        assert_eq!(reason(br#"{"eventName":"e","payload":1}"#), "missing_field");
        assert_eq!(
            reason(br#"{"eventName":"e","sessionId":"s"}"#),
            "missing_field"
        );
        assert_eq!(
            reason(br#"{"eventName":"e","sessionId":"","payload":1}"#),
            "invalid"
        );
        let big = format!(
            r#"{{"eventName":"e","sessionId":"s","payload":"{}"}}"#,
            "x".repeat(limits().max_body_bytes)
        );
        assert_eq!(reason(big.as_bytes()), "too_large");
        let raw = Mapping {
            target: Target::Topics(vec![Template::parse("{0}").unwrap()]),
            data: Data::Body,
            event_type: None,
            id: None,
            private: false,
        };
        assert_eq!(
            raw.apply(&message(&[0xff, 0xfe]), &limits(), fresh)
                .unwrap_err()
                .reason,
            "not_utf8"
        );
        // A consumed message may not speak for the hub (its subscription events).
        let reserved = Mapping {
            target: Target::Topics(vec![Template::parse(
                "https://example.com/.well-known/mercure/subscriptions/{0}",
            )
            .unwrap()]),
            ..raw
        };
        assert_eq!(
            reserved
                .apply(&message(b"x"), &limits(), fresh)
                .unwrap_err()
                .reason,
            "invalid"
        );
    }
}
