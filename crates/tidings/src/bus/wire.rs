//! The bus wire format, version 1: the JSON message every broker-backed bus carries, and that
//! a service in any language may write to the broker itself (see `docs/wire-format.md`).
//!
//! ```json
//! {"v": 1, "id": "urn:uuid:…", "topics": ["https://example.com/books/1"],
//!  "data": "…", "type": "book", "private": false, "retry": 3000,
//!  "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
//! ```
//!
//! Only `v` and `topics` are required. Without `id`, the id is derived from the update's place
//! in the bus order (`urn:tidings:<position>`), so every instance assigns the same one. A
//! message is validated by the same [`Draft::validate`] as an HTTP publish (but for the hub's
//! reserved topics, see [`decode`]): a bad one is dropped (and counted), never delivered
//! half-checked.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::envelope::{now_micros, Envelope, Position};
use crate::metrics::Metrics;
use crate::telemetry::TraceParent;
use crate::update::{Author, Draft, InvalidInput, Limits, Recipients, Update, UpdateId};

/// The only version this build reads and writes.
pub const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message<'a> {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    topics: Vec<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    data: std::borrow::Cow<'a, str>,
    #[serde(
        default,
        rename = "type",
        skip_serializing_if = "Option::is_none",
        borrow
    )]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    private: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<u64>,
    /// The W3C trace context of the publish (only while tracing is on: see the docs on
    /// rolling upgrades). A malformed one is ignored, as the W3C format says.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    traceparent: Option<std::borrow::Cow<'a, str>>,
}

/// Encodes an update as a version 1 message.
pub fn encode(update: &Update) -> String {
    let message = Message {
        v: VERSION,
        id: Some(update.id.as_str().into()),
        topics: update.topics.iter().map(|t| t.as_str().into()).collect(),
        data: update.data.as_str().into(),
        event_type: update.event_type.as_ref().map(|e| e.as_str().into()),
        private: update.private,
        retry: update.retry,
        traceparent: update.trace.as_ref().map(|t| t.to_string().into()),
    };
    // A struct of strings, numbers and booleans always serializes.
    serde_json::to_string(&message).unwrap_or_default()
}

/// Decodes and validates a message; `fallback_id` names the update when the message has no id.
///
/// # Errors
/// [`InvalidInput`] for malformed JSON, an unknown version or field, or any value an HTTP
/// publish would refuse but a topic under the hub's reserved path: instances publish their
/// own subscription events there, through the bus.
pub fn decode(
    text: &str,
    fallback_id: impl FnOnce() -> UpdateId,
    limits: &Limits,
) -> Result<Update, InvalidInput> {
    let Message {
        v,
        id,
        topics,
        data,
        event_type,
        private,
        retry,
        traceparent,
    } = serde_json::from_str(text)
        .map_err(|e| InvalidInput::new("message", format!("not a wire-format message: {e}")))?;
    if v != VERSION {
        return Err(InvalidInput::new(
            "v",
            format!("version {v} is not supported (this build reads version {VERSION})"),
        ));
    }
    let mut update = Draft {
        id: id.as_deref(),
        to: Recipients::Topics(topics.iter().map(|t| t.as_ref()).collect()),
        event_type: event_type.as_deref(),
        data: data.into_owned(),
        retry,
        private,
    }
    .validate(limits, Author::Bus, fallback_id)?;
    update.trace = traceparent.as_deref().and_then(TraceParent::parse);
    Ok(update)
}

/// Turns what a broker holds into an envelope, the one way every bus does it. A message that
/// is not text, not a wire-format message, or one an HTTP publish of would be refused is
/// skipped — counted in `tidings_bus_skipped_total` and logged with its place and why, at most
/// once a second (a publisher writing garbage in a loop must not flood the log) — never
/// delivered half-checked, and never stops the reader.
#[derive(Debug, Clone)]
pub struct Decoder {
    broker: &'static str,
    limits: Limits,
    metrics: Arc<Metrics>,
    log_gate: Arc<crate::throttle::LogOncePerSecond>,
}

impl Decoder {
    /// A decoder for the bus of `kind`, holding messages to `limits`.
    pub fn new(kind: super::Kind, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Decoder {
            broker: kind.broker(),
            limits,
            metrics,
            log_gate: Arc::default(),
        }
    }

    /// The update in `bytes`, read at `position`; `place` (the broker's own name for where it
    /// was read: a stream entry id, a sequence) names it in logs and gives an id to an update
    /// published without one. `micros` is its publish time; 0 (a publisher that did not say)
    /// means now.
    pub fn envelope(
        &self,
        bytes: &[u8],
        place: impl std::fmt::Display,
        position: Position,
        micros: u64,
    ) -> Option<Arc<Envelope>> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.skip(&place, "a message that is not text");
            return None;
        };
        match decode(text, || UpdateId::derived(&place), &self.limits) {
            Ok(update) => {
                let micros = if micros > 0 { micros } else { now_micros() };
                Some(Arc::new(Envelope::new(update, position, micros)))
            }
            Err(e) => {
                self.skip(&place, &format!("a malformed message ({e})"));
                None
            }
        }
    }

    /// The broker's name, as logs say it.
    pub fn broker(&self) -> &'static str {
        self.broker
    }

    /// Skips the message at `place`, for `why` (also for a broker's own framing around the
    /// wire format, that this decoder never sees).
    pub fn skip(&self, place: &dyn std::fmt::Display, why: &str) {
        self.metrics.bus_skipped.inc();
        if self.log_gate.allow() {
            tracing::warn!(place = %place, "{}: {why}; skipped (each counted in tidings_bus_skipped_total; this is said at most once a second)", self.broker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{EventName, Topic};

    fn update() -> Update {
        Update::new(
            UpdateId::new("u1", 10).unwrap(),
            vec![Topic::new("a", 10).unwrap(), Topic::new("b", 10).unwrap()],
            Some(EventName::new("e", 10).unwrap()),
            "line\nline".into(),
            Some(5),
            true,
        )
        .unwrap()
    }

    #[test]
    fn round_trips() {
        let text = encode(&update());
        assert_eq!(
            decode(&text, || unreachable!(), &Limits::default()).unwrap(),
            update()
        );
    }

    #[test]
    fn the_trace_context_travels_and_a_malformed_one_is_dropped() {
        let context = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut traced = update();
        traced.trace = TraceParent::parse(context);
        let text = encode(&traced);
        assert!(
            text.contains(&format!(r#""traceparent":"{context}""#)),
            "{text}"
        );
        assert_eq!(
            decode(&text, || unreachable!(), &Limits::default()).unwrap(),
            traced
        );
        assert!(
            !encode(&update()).contains("traceparent"),
            "none without tracing"
        );
        let malformed = decode(
            r#"{"v":1,"topics":["t"],"traceparent":"00-not-a-context"}"#,
            || UpdateId::derived(1),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(malformed.trace, None, "the update is delivered, untraced");
    }

    #[test]
    fn a_minimal_message_gets_the_fallback_id() {
        let u = decode(
            r#"{"v":1,"topics":["t"]}"#,
            || UpdateId::derived(9),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            (u.id.as_str(), u.data.as_str(), u.private),
            ("urn:tidings:9", "", false)
        );
    }

    #[test]
    fn bad_messages_are_refused_with_the_reason() {
        let limits = Limits::default();
        for (text, field) in [
            ("not json", "message"),
            (r#"{"v":2,"topics":["t"]}"#, "v"),
            (r#"{"v":1,"topics":[]}"#, "topic"),
            (r#"{"v":1,"topics":["t"],"id":"a\nb"}"#, "id"),
            (r#"{"v":1,"topics":["t"],"type":"a\rb"}"#, "event name"),
            (r#"{"v":1,"topics":["t"],"extra":1}"#, "message"),
        ] {
            assert_eq!(
                decode(text, || UpdateId::derived(0), &limits)
                    .unwrap_err()
                    .field,
                field,
                "{text}"
            );
        }
    }

    #[test]
    fn the_decoder_names_counts_and_skips_what_it_cannot_deliver() {
        let metrics = Arc::new(Metrics::new());
        let decoder = Decoder::new(super::super::Kind::Nats, Limits::default(), metrics.clone());
        let at = Position(7);
        let envelope = decoder
            .envelope(br#"{"v":1,"topics":["t"],"data":"x"}"#, 7, at, 0)
            .unwrap();
        assert_eq!(
            envelope.update.id.as_str(),
            "urn:tidings:7",
            "named by its place"
        );
        assert_eq!(envelope.position, at);
        assert!(envelope.published_at_micros > 0, "0 means now");
        let timed = decoder
            .envelope(br#"{"v":1,"id":"a","topics":["t"]}"#, 8, Position(8), 42)
            .unwrap();
        assert_eq!(
            (timed.update.id.as_str(), timed.published_at_micros),
            ("a", 42)
        );
        assert_eq!(metrics.bus_skipped.get(), 0);
        for bad in [&b"\xff\xfe"[..], b"{}", br#"{"v":2,"topics":["t"]}"#] {
            assert!(decoder.envelope(bad, 9, Position(9), 0).is_none());
        }
        decoder.skip(&"channel", "a message without a position");
        assert_eq!(metrics.bus_skipped.get(), 4);
    }
}
