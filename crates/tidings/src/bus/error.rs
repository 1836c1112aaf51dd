//! What a bus operation can fail with: [`BusError`] says what the caller must do (retry later,
//! retry with the same id, fix the configuration), its [`Cause`] what happened, with the broker
//! client's own error kept as its source (as async-nats does with `Error<Kind>`).

use std::sync::Arc;

/// Why a bus operation failed: what the caller must do differs by kind (retry later, retry
/// with the same id, fix the configuration); the [`Cause`] says what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// The bus cannot take or serve updates now (broker unreachable, instance draining).
    Unavailable(Cause),
    /// A publish was sent to the broker but not acknowledged in time: it may or may not have
    /// been stored. Retrying it *with the same id* is safe: the bus stores an id once (see
    /// [`Bus::publish`](super::Bus::publish)).
    OutcomeUnknown(Cause),
    /// The bus URL or options are wrong, or the broker refuses this instance for a reason
    /// retrying cannot cure (start-up only).
    Config(Cause),
    /// The id of the publish names an update the bus holds on other topics: an id taken by
    /// an update elsewhere is refused rather than silently dropped, so that a publisher of
    /// one topic cannot suppress another's updates by taking their ids first (review L2).
    Conflict(Cause),
}

impl BusError {
    /// The refusal of `update`, whose id names `stored`, unless both are on the same topics
    /// (then it is a retry).
    ///
    /// # Errors
    /// [`BusError::Conflict`] when their topics differ.
    pub fn unless_retry(
        stored: &crate::update::Update,
        update: &crate::update::Update,
    ) -> Result<(), BusError> {
        match stored.same_topics(update) {
            true => Ok(()),
            false => Err(BusError::Conflict(Cause::new(format!(
                "the id {} names an update on other topics",
                update.id
            )))),
        }
    }
}

impl BusError {
    /// What happened, whatever the kind.
    pub fn cause(&self) -> &Cause {
        match self {
            BusError::Unavailable(c)
            | BusError::OutcomeUnknown(c)
            | BusError::Config(c)
            | BusError::Conflict(c) => c,
        }
    }

    /// The same kind of error, its message preceded by `context` and `: `.
    #[must_use]
    pub fn context(self, context: impl std::fmt::Display) -> BusError {
        let add = |c: Cause| Cause {
            message: format!("{context}: {}", c.message),
            source: c.source,
        };
        match self {
            BusError::Unavailable(c) => BusError::Unavailable(add(c)),
            BusError::OutcomeUnknown(c) => BusError::OutcomeUnknown(add(c)),
            BusError::Config(c) => BusError::Config(add(c)),
            BusError::Conflict(c) => BusError::Conflict(add(c)),
        }
    }
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            BusError::Unavailable(_) => "bus unavailable",
            BusError::OutcomeUnknown(_) => "publish outcome unknown",
            BusError::Config(_) => "bus configuration",
            BusError::Conflict(_) => "id conflict",
        };
        write!(f, "{kind}: {}", self.cause())
    }
}

impl std::error::Error for BusError {
    /// The broker client's own error, where one was the cause.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause().source()
    }
}

/// What happened on the broker: a message for people (it names the broker and what was being
/// done, and says why: logs and start-up errors print it whole) and, where a client library
/// reported the failure, that library's error, kept for code that needs its kind (a refused
/// certificate, a reset connection) rather than its words.
#[derive(Debug, Clone)]
pub struct Cause {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// A cause with only a message (no library error under it).
    pub fn new(message: impl Into<String>) -> Self {
        Cause {
            message: message.into(),
            source: None,
        }
    }

    /// A cause with the library error `source` under it; `message` should say what `source`
    /// says too, since people read only the message.
    pub fn caused_by(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Cause {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The library error under it, if any.
    pub fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Two causes are the same when they say the same (library errors do not compare).
impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Cause {}
