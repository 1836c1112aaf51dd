//! What can go wrong talking to a hub.

/// Why a request to the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hub URL is not usable.
    #[error("invalid hub URL {0}")]
    InvalidUrl(String),
    /// The hub could not be reached, or the connection failed.
    #[error("cannot reach the hub: {0}")]
    Transport(#[source] reqwest::Error),
    /// A broker did not take a direct publish (unreachable, or it refused the message).
    #[error("broker: {0}")]
    Broker(String),
    /// The hub answered with an error status. `error` and `detail` come from its JSON body
    /// (`{"error": "...", "detail": "..."}`) when it has one.
    #[error("the hub answered {status}: {}", describe(.error, .detail))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error's short code (`bad_request`, `unauthorized`, `bus_unavailable`, …).
        error: Option<String>,
        /// The explanation, or the body as text.
        detail: String,
        /// The wait the hub asked for in `Retry-After` (stream limits, overload), if any.
        retry_after: Option<std::time::Duration>,
    },
}

fn describe(error: &Option<String>, detail: &str) -> String {
    match error {
        Some(error) => format!("{error}: {detail}"),
        None => detail.to_owned(),
    }
}

impl Error {
    /// True when the hub may have taken the publish that failed: it answered `504
    /// publish_outcome_unknown` (sent to the broker, not acknowledged in time), or its answer
    /// did not come in time. Retrying with the same id is then safe: the hub stores an id
    /// once. [`crate::Hub::publish`] does so by itself.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            Error::Refused { status, error, .. } => {
                *status == 504 && error.as_deref() == Some("publish_outcome_unknown")
            }
            Error::Transport(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// Reads an error response into [`Error::Refused`].
    pub(crate) async fn refused(response: reqwest::Response) -> Error {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let body: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Error::Refused {
            status,
            error: field("error"),
            detail: field("detail").unwrap_or(text),
            retry_after,
        }
    }

    /// The wait the hub asked for before trying again (`Retry-After` in seconds), if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True for refusals that retrying cannot cure (4xx other than 408 and 429).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::InvalidUrl(_))
            || matches!(self, Error::Refused { status, .. }
                if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}
