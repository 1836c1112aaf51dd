//! The control plane's signals: what instances say to each other over the bus
//! ([`Bus::signal`](crate::bus::Bus::signal)), as JSON. Every signal reaches every instance;
//! an answer names the instance it is for. A signal an instance cannot read (a later version's
//! kind, during a rolling upgrade) is skipped.

use serde::{Deserialize, Serialize};

use crate::hub::{Farewell, Streams};
use crate::update::SessionId;

/// One instance as the others see it: what its heartbeat says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Its `instance-id`.
    pub id: String,
    /// Where it listens, as its configuration says.
    pub address: String,
    /// Its version of Tidings.
    pub version: String,
    /// When it started, in milliseconds since the epoch.
    pub started_at: u64,
    /// Its open streams.
    pub streams: usize,
    /// The sessions with streams on it.
    pub sessions: usize,
    /// Its bus connection (`connected`, `reconnecting`, …).
    pub bus: String,
    /// The mean time from publish to a subscriber's connection of the updates it delivered
    /// since its previous heartbeat, in milliseconds (`None`: it delivered none).
    pub delivery_lag_ms: Option<f64>,
    /// It is draining: its streams are moving elsewhere.
    pub draining: bool,
    /// Milliseconds between its heartbeats: it counts as gone after three missed.
    pub heartbeat_ms: u64,
}

/// What one instance sends to all.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "camelCase")]
pub(super) enum Signal {
    /// I am alive, and this is how I am.
    Beat { member: Member },
    /// I am stopping: count me out now.
    Leave { id: String },
    /// Everyone, answer this (`ask` numbers the question at the asking instance).
    Ask {
        from: String,
        ask: u64,
        question: Question,
    },
    /// My answer to `to`'s question `ask`.
    Answer {
        to: String,
        from: String,
        ask: u64,
        answer: Answer,
    },
}

/// A question every instance answers for itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "question", rename_all = "camelCase")]
pub enum Question {
    /// How many streams each of these sessions holds here.
    Presence {
        /// The sessions.
        sessions: Vec<SessionId>,
    },
    /// These streams, as they are here.
    Streams {
        /// Which.
        which: Streams,
    },
    /// The selectors subscribed to here that start with `prefix`, with their subscribers.
    Selectors {
        /// What they start with.
        prefix: String,
    },
    /// End these streams here, each with `farewell`.
    Disconnect {
        /// Which.
        which: Streams,
        /// How they end.
        farewell: Farewell,
    },
}

/// One instance's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "camelCase")]
pub enum Answer {
    /// The sessions asked about that have streams here.
    Presence {
        /// Each one's place in the question, and how many streams it holds here.
        held: Vec<(usize, usize)>,
    },
    /// The streams asked for.
    Streams {
        /// At most [`MAX_LISTED`] of them.
        streams: Vec<StreamRecord>,
        /// There were more.
        truncated: bool,
    },
    /// The selectors asked for.
    Selectors {
        /// At most [`MAX_LISTED`] of them, each with its subscribers here.
        selectors: Vec<(String, usize)>,
        /// There were more.
        truncated: bool,
    },
    /// The streams ended here.
    Disconnected {
        /// How many.
        streams: usize,
    },
}

/// The most streams or selectors one instance lists in an answer.
pub const MAX_LISTED: usize = 1000;

/// One stream, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRecord {
    /// Its subscriber's `urn:uuid:…` (what a disconnect of one stream names).
    pub id: String,
    /// The instance that holds it.
    pub instance: String,
    /// Its session (session API streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Its credentials' subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Its selectors as written.
    pub selectors: Vec<String>,
    /// The client address it was admitted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_read_back_as_written_and_unknown_kinds_do_not_read() {
        let ask = Signal::Ask {
            from: "a".into(),
            ask: 7,
            question: Question::Disconnect {
                which: Streams::Session(SessionId::new("s 1", 256).unwrap()),
                farewell: Farewell {
                    reconnect: false,
                    reason: Some("logout".into()),
                },
            },
        };
        let text = serde_json::to_string(&ask).unwrap();
        assert_eq!(
            text,
            r#"{"signal":"ask","from":"a","ask":7,"question":{"question":"disconnect","which":{"session":"s 1"},"farewell":{"reconnect":false,"reason":"logout"}}}"#
        );
        let back: Signal = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Signal::Ask { ask: 7, .. }));
        assert!(serde_json::from_str::<Signal>(r#"{"signal":"gossip"}"#).is_err());
        // A session id that no instance would accept from a client is not accepted here.
        let bad = r#"{"question":"presence","sessions":["a\u0001b"]}"#;
        assert!(serde_json::from_str::<Question>(bad).is_err());
    }
}
