//! What an operator does to the hub's streams (the admin API, through the cluster): find them,
//! end them with a [`Farewell`], count their selectors; and the control plane's signals the
//! bus hands on. Apart from registration and dispatch, which stay in `mod.rs`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use super::{Entry, Hub, SubscriberId};
use crate::subscriber::SubscriberSpec;
use crate::update::SessionId;

/// How a stream an operator disconnects ends, after what it was already sent: told why, then
/// asked to come back (a `retry:` hint: it reconnects, resumes, and is authorized again) or to
/// stay away (a final event; the authorization then decides whether it may return).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Farewell {
    /// Come back (true) or stay away (false).
    pub reconnect: bool,
    /// Why, in the operator's words, shown to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which streams an operation concerns: those of a session (session API streams), those whose
/// credentials name a subject (any stream), or one stream by its id (its subscriber's IRI).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Streams {
    /// The streams of a session.
    Session(SessionId),
    /// The streams whose token `sub` (or callback `subject`) is this.
    Subject(Arc<str>),
    /// One stream, by its subscriber's `urn:uuid:…`.
    Stream(Arc<str>),
}

impl Streams {
    fn holds(&self, spec: &SubscriberSpec) -> bool {
        match self {
            Streams::Session(session) => spec.session.as_ref() == Some(session),
            Streams::Subject(subject) => spec.label.subject.as_ref() == Some(subject),
            Streams::Stream(iri) => spec.label.iri == *iri,
        }
    }
}

impl Hub {
    /// The subscribers of `which` streams registered now.
    pub fn streams(&self, which: &Streams) -> Vec<Arc<SubscriberSpec>> {
        let reg = self.read();
        match which {
            Streams::Session(session) if !reg.sessions.contains_key(session) => Vec::new(),
            _ => reg
                .all
                .values()
                .filter(|e| which.holds(&e.spec))
                .map(|e| e.spec.clone())
                .collect(),
        }
    }

    /// Ends `which` streams: each is sent what was queued for it, then its `farewell`, and
    /// ends; its subscriber leaves at once. Returns how many there were.
    pub fn disconnect(&self, which: &Streams, farewell: &Farewell) -> usize {
        let ended: Vec<(SubscriberId, Arc<Entry>)> = {
            let reg = self.read();
            if matches!(which, Streams::Session(s) if !reg.sessions.contains_key(s)) {
                return 0;
            }
            reg.all
                .iter()
                .filter(|(_, e)| which.holds(&e.spec))
                .map(|(id, e)| (*id, e.clone()))
                .collect()
        };
        // Told before the queue closes: a stream that finds its queue closed reads it then.
        for (id, entry) in &ended {
            let _ = entry.shared.farewell.set(farewell.clone());
            self.remove(*id);
        }
        ended.len()
    }

    /// Every `(selector, subscribers)` registered now whose selector starts with `prefix`:
    /// exact topics and wide selectors as written, sorted by selector.
    pub fn selector_counts(&self, prefix: &str) -> Vec<(Arc<str>, usize)> {
        let reg = self.read();
        let exact = reg.exact.iter().map(|(t, m)| (t.clone(), m.len()));
        let wide = reg
            .wide
            .values()
            .map(|(s, m)| (Arc::from(s.source()), m.len()));
        let mut counts: Vec<(Arc<str>, usize)> = exact
            .chain(wide)
            .filter(|(s, _)| s.starts_with(prefix))
            .collect();
        counts.sort();
        counts
    }

    /// Hands on a signal of the control plane the bus heard (dropped when nobody listens).
    pub fn receive_signal(&self, signal: Bytes) {
        let _ = self.inner.signals.send(signal);
    }

    /// From now on, every signal of the control plane the bus hears — this instance's own
    /// too — through a queue of [`SIGNALS_QUEUE`].
    pub fn signals(&self) -> broadcast::Receiver<Bytes> {
        self.inner.signals.subscribe()
    }
}
