//! The session API, a view of topics: a session's updates are private updates on the topic
//! `urn:tidings:session:<id>`, carrying the event name as their SSE type.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::request::{self, CallerTrace, Publisher, Query};
use super::{stream, ApiError, AppState};
use crate::auth::{Api, AuthMode, StreamRequest};
use crate::selector::Selector;
use crate::subscriber::{SubscriberLabel, SubscriberSpec};
use crate::update::{
    Author, Draft, EventName, Recipients, SessionId, Topic, UpdateId, EVERY_SESSION_TOPIC,
    MAX_SESSION_ID_LEN,
};

/// `GET /sse/event-stream?eventName=…`: a stream of the caller's session's events of the
/// names given (`eventName` repeated), or of every name when none is given. Each event keeps
/// its name as its SSE type, so one `EventSource` tells them apart with `addEventListener`:
/// one connection per tab instead of one per event name.
pub(super) async fn event_stream(
    State(state): State<AppState>,
    Query(query): Query,
    connection: request::Connection,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let connection = connection.map(|Extension(c)| c);
    let connection = connection.as_ref();
    let limits = &state.config().limits;
    let names: Vec<&str> = query.all("eventName").collect();
    if names.len() > limits.max_selectors {
        return Err(ApiError::bad_request(
            "too_many_event_names",
            format!(
                "{} event names, the limit is max-selectors = {}; leave eventName out for all of the session's events",
                names.len(),
                limits.max_selectors
            ),
        ));
    }
    let event_names = names
        .iter()
        .map(|n| EventName::new(n, limits.max_event_name_length))
        .collect::<Result<Vec<_>, _>>()?;
    let asked = StreamRequest {
        api: Api::Session,
        topics: Vec::new(),
        exact: Vec::new(),
        match_urlpattern: Vec::new(),
        event_names: Some(names.iter().map(|n| (*n).to_owned()).collect()),
    };
    let mut permit = stream::admit(&state, connection, &headers)?;
    let identity = request::stream_subscriber(&state, connection, &headers, &query, asked).await?;
    let session = if state.authenticator().mode() == AuthMode::None {
        let raw = query
            .single("sessionId")?
            .or_else(|| request::cookie(&headers, "sessionId"))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "missing_session",
                    "without tokens (--auth none) the session comes from the sessionId query parameter or cookie",
                )
            })?;
        SessionId::new(raw, MAX_SESSION_ID_LEN)?
    } else {
        match identity.session {
            Some(session) => session,
            None if identity.anonymous => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_token",
                    "session streams need a JWT whose session claim names the session",
                ))
            }
            None if state.authenticator().asks_application() => {
                return Err(ApiError::forbidden(
                    "neither a token nor the application's authorization names a session (its answer needs \"session\")",
                ))
            }
            None => {
                return Err(ApiError::forbidden(
                    "the token has no usable session claim (sub, or the configured session-claim): it must be a non-empty string of at most 256 bytes without control characters",
                ))
            }
        }
    };
    permit.join_session(&session)?;
    let from = request::resume_point(&headers, &query, limits.max_id_length)?;
    // (Session events carry their name: a consumer tells them apart without selectors.)
    let asked = stream::Asked {
        rewind: request::rewind(&query)?,
        with_selectors: false,
    };
    let topic = Topic::for_session(&session);
    let spec = SubscriberSpec {
        label: SubscriberLabel::new(identity.payload)
            .from_address(permit.address())
            .of_subject(identity.subject),
        // Its session's topic, and the broadcasts to every session.
        selectors: vec![
            Selector::Exact(topic.as_str().into()),
            Selector::Exact(EVERY_SESSION_TOPIC.into()),
        ],
        access: identity.access.with_session(&session).with_broadcasts(),
        event_names,
        session: Some(session),
        expires: identity.expires,
    };
    stream::open(&state, connection, permit, spec, from, asked).await
}

/// The body of `POST /sse/events`: to one session (`sessionId`), several (`sessionIds`) or
/// every session stream (`broadcast: true`) — exactly one of the three.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SessionEvent {
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    session_ids: Option<Vec<String>>,
    #[serde(default)]
    broadcast: bool,
    event_name: String,
    payload: serde_json::Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    retry: Option<u64>,
}

#[derive(Serialize)]
struct Published {
    id: String,
}

/// Whom a session event is for.
enum Addressed {
    One(SessionId),
    Several(Vec<SessionId>),
    Everyone,
}

impl SessionEvent {
    /// Its recipients: exactly one of `sessionId`, `sessionIds` (not empty) and `broadcast`.
    fn addressed(&self) -> Result<Addressed, ApiError> {
        let session = |id: &String| SessionId::new(id, MAX_SESSION_ID_LEN);
        match (&self.session_id, &self.session_ids, self.broadcast) {
            (Some(id), None, false) => Ok(Addressed::One(session(id)?)),
            (None, Some(ids), false) if !ids.is_empty() => Ok(Addressed::Several(
                ids.iter().map(session).collect::<Result<_, _>>()?,
            )),
            (None, Some(_), false) => Err(ApiError::bad_request(
                "missing_session",
                "sessionIds is empty: name at least one session",
            )),
            (None, None, true) => Ok(Addressed::Everyone),
            (None, None, false) => Err(ApiError::bad_request(
                "missing_session",
                "name the recipients: sessionId (one session), sessionIds (several) or broadcast: true (every session stream)",
            )),
            _ => Err(ApiError::bad_request(
                "invalid_input",
                "give one of sessionId, sessionIds and broadcast: true, not several",
            )),
        }
    }
}

/// `POST /sse/events`: delivers a payload to every stream of a session (of several sessions,
/// of every session) with that event name.
pub(super) async fn publish(
    State(state): State<AppState>,
    Publisher(rights): Publisher,
    CallerTrace(trace): CallerTrace,
    event: SessionEvent,
) -> Result<Response, ApiError> {
    let addressed = event.addressed()?;
    let draft = Draft {
        id: event.id.as_deref(),
        to: match &addressed {
            Addressed::One(session) => Recipients::Session(session),
            Addressed::Several(sessions) => Recipients::Sessions(sessions),
            Addressed::Everyone => Recipients::EverySession,
        },
        event_type: Some(&event.event_name),
        // Strings are sent as they are; any other JSON value as its JSON text.
        data: match event.payload {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        },
        retry: event.retry,
        private: true,
    };
    let update = draft.validate(
        &state.config().limits,
        Author::Publisher,
        UpdateId::generate,
    )?;
    let id = super::publish(&state, &rights, update, trace).await?;
    Ok(Json(Published { id: id.to_string() }).into_response())
}

impl FromRequest<AppState> for SessionEvent {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = request::body_of(request, state, "application/json").await?;
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not a valid session event: {e}"),
            )
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionInfo {
    session_id: String,
    connected: bool,
    streams: usize,
    /// Always `cluster` (earlier versions answered `instance` on buses without a registry).
    scope: &'static str,
    instances: Vec<InstanceStreams>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceStreams {
    instance_id: String,
    streams: usize,
}

/// `GET /sse/sessions/{id}`: whether a session is connected, where, with how many streams.
/// Reveals who is online, so it needs a publisher token.
pub(super) async fn describe(
    State(state): State<AppState>,
    session_id: Result<Path<String>, PathRejection>,
    Publisher(rights): Publisher,
) -> Result<Response, ApiError> {
    let Path(session_id) =
        session_id.map_err(|e| ApiError::bad_request("invalid_input", e.body_text()))?;
    let session = SessionId::new(&session_id, MAX_SESSION_ID_LEN)?;
    // Only a publisher that may write to the session may learn whether it is online.
    rights.check(&[Topic::for_session(&session)])?;
    // The bus's registry answers where it keeps one; every instance does otherwise.
    let (presence, _) = state
        .cluster()
        .presence(std::slice::from_ref(&session))
        .await?;
    let instances: Vec<InstanceStreams> = presence
        .into_iter()
        .flatten()
        .map(|(instance_id, streams)| InstanceStreams {
            instance_id,
            streams,
        })
        .collect();
    let scope = "cluster";
    let streams = instances.iter().map(|i| i.streams).sum();
    Ok(Json(SessionInfo {
        session_id,
        connected: streams > 0,
        streams,
        scope,
        instances,
    })
    .into_response())
}
