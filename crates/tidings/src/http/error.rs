//! The HTTP error type: every refusal is a JSON body `{"error": "...", "detail": "..."}` with
//! the status that says whose fault it is. Mapped from the library's typed errors exactly once,
//! here. Internal failures become a generic message; their cause goes to the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::admission::{Refusal, CLIENT_LIMIT_RETRY_AFTER_SECS, INSTANCE_FULL_RETRY_AFTER_SECS};
use crate::auth::AuthError;
use crate::bus::BusError;
use crate::update::{InvalidInput, Rule};

/// The `Retry-After` of a stream the application's authorization callback could not decide.
const AUTH_RETRY_AFTER_SECS: u64 = 2;

/// An error answered to an HTTP caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short, stable, machine-readable code (`invalid_topic`, `missing_token`, …).
    pub error: &'static str,
    /// A sentence for a human that says what to fix.
    pub detail: String,
    /// Seconds for the `Retry-After` header, when waiting may cure the refusal.
    pub retry_after_secs: Option<u64>,
    /// The bearer-token challenge of a refusal about a token (RFC 6750 §3), when it is one.
    pub challenge: Option<Challenge>,
}

/// What a `WWW-Authenticate: Bearer` challenge says (RFC 6750 §3.1, as Mercure 1.0 asks):
/// no error code when no token was sent, `invalid_token` for one that does not verify,
/// `insufficient_scope` for one that does not grant what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No credentials were presented (or the application's callback answered `401`).
    Bare,
    /// The token does not verify (401).
    InvalidToken,
    /// The token does not grant the request (403).
    InsufficientScope,
}

impl Challenge {
    /// The header's value, without the `resource_metadata` parameter the router may add.
    pub fn header(self) -> &'static str {
        match self {
            Challenge::Bare => "Bearer realm=\"tidings\"",
            Challenge::InvalidToken => "Bearer realm=\"tidings\", error=\"invalid_token\"",
            Challenge::InsufficientScope => {
                "Bearer realm=\"tidings\", error=\"insufficient_scope\""
            }
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    detail: &'a str,
}

impl ApiError {
    /// An error with the given status, code and explanation.
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
            retry_after_secs: None,
            challenge: (status == StatusCode::UNAUTHORIZED).then_some(Challenge::Bare),
        }
    }

    /// The same error, challenging the caller's token as `challenge` says.
    pub fn challenging(self, challenge: Challenge) -> Self {
        ApiError {
            challenge: Some(challenge),
            ..self
        }
    }

    /// The same error, with a `Retry-After` header of `secs` seconds.
    pub fn retry_after(self, secs: u64) -> Self {
        ApiError {
            retry_after_secs: Some(secs),
            ..self
        }
    }

    /// `400 Bad Request`.
    pub fn bad_request(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, detail)
    }

    /// `403 Forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// `503 Service Unavailable` while the instance drains.
    pub fn draining() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this instance is shutting down; connect to another one",
        )
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> Self {
        let detail = e.to_string();
        match e.rule {
            Rule::Form => ApiError::bad_request("invalid_input", detail),
            Rule::NoTopic => ApiError::bad_request("missing_topic", detail),
            Rule::TooManyTopics => ApiError::bad_request("too_many_topics", detail),
            Rule::ReservedTopic => ApiError::forbidden(detail),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let detail = refusal.to_string();
        let error = match refusal {
            Refusal::WideAddress(_) | Refusal::WideInstance(_) => "too_many_wide_selectors",
            _ => "too_many_streams",
        };
        match refusal {
            Refusal::Instance(_) | Refusal::WideInstance(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error, detail)
                    .retry_after(INSTANCE_FULL_RETRY_AFTER_SECS)
            }
            Refusal::Address(_) | Refusal::Session(_) | Refusal::WideAddress(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, error, detail)
                    .retry_after(CLIENT_LIMIT_RETRY_AFTER_SECS)
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing(d) => ApiError::new(StatusCode::UNAUTHORIZED, "missing_token", d),
            AuthError::Invalid(d) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", d)
                .challenging(Challenge::InvalidToken),
            AuthError::Forbidden(d) => {
                ApiError::forbidden(d).challenging(Challenge::InsufficientScope)
            }
            AuthError::Denied(d) => ApiError::forbidden(d),
            AuthError::Unauthenticated(d) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", d)
            }
            AuthError::Unavailable(d) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", d)
                    .retry_after(AUTH_RETRY_AFTER_SECS)
            }
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Unavailable(cause) => {
                tracing::warn!(%cause, "bus unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "bus_unavailable",
                    "the bus did not accept the request; retry later",
                )
            }
            BusError::OutcomeUnknown(cause) => {
                tracing::warn!(%cause, "publish outcome unknown");
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "publish_outcome_unknown",
                    "the update was sent to the broker but its acknowledgement did not come in time: it may have been stored; retry with the same id (a publish is stored once per id)",
                )
            }
            BusError::Conflict(cause) => ApiError::new(
                StatusCode::CONFLICT,
                "id_conflict",
                format!(
                    "{}: an id is one update; give this one an id of its own",
                    cause.message()
                ),
            ),
            BusError::Config(cause) => {
                tracing::error!(%cause, "bus configuration error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: self.error,
            detail: &self.detail,
        })
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge.header()),
            );
        }
        // Kept for the middleware that answers a browser's refused stream differently
        // (`stream::defer_passing_refusals`).
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Cause;

    #[test]
    fn a_publish_whose_outcome_is_unknown_is_a_504_that_says_to_retry_with_the_same_id() {
        let e = ApiError::from(BusError::OutcomeUnknown(Cause::new("redis: no answer")));
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.error, "publish_outcome_unknown");
        assert!(e.detail.contains("same id"), "{}", e.detail);
        let e = ApiError::from(BusError::Unavailable(Cause::new("redis: refused")));
        assert_eq!(
            (e.status, e.error),
            (StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable")
        );
    }
}
