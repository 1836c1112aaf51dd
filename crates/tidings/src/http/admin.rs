//! The admin API (`/admin/…`): what an operator or the application's back end does to the
//! cluster — see its instances, find where sessions are online and what a subject has open,
//! see what is subscribed to, and end streams — answered for the whole cluster by any
//! instance (`crate::cluster`). Every route needs the `admin-key`, or a publisher token whose
//! claims hold `"tidings": {"admin": true}`.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Html;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::request::{self, Query};
use super::{ApiError, AppState, ConnectionInfo};
use crate::cluster::{Answer, Gathered, Question, StreamRecord, MAX_LISTED};
use crate::config::AdminPage;
use crate::hub::{Farewell, Streams};
use crate::update::{SessionId, MAX_SESSION_ID_LEN};

/// The most sessions one presence call asks about.
const MAX_PRESENCE_SESSIONS: usize = 1000;
/// The longest `reason` a disconnect gives its streams, in characters.
const MAX_REASON_CHARS: usize = 200;

/// A caller the admin API lets in: the `admin-key` as a bearer token, or an admin publisher.
pub(super) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // (The admin key is checked there first.)
        let query = request::query(parts.uri.query())?;
        let rights = request::publisher(state, &parts.headers, &query).await?;
        match rights.admin {
            true => Ok(Admin),
            false => Err(ApiError::forbidden(
                "the admin API needs the admin key (admin-key) as a bearer token, or a publisher token whose claims hold \"tidings\": {\"admin\": true}",
            )),
        }
    }
}

/// A JSON body of the admin API, decoded strictly (unknown fields refused).
pub(super) struct Body<T>(T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = request::body_of(request, state, "application/json").await?;
        serde_json::from_slice(&body).map(Body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not what this route takes: {e}"),
            )
        })
    }
}

/// A session id as the admin API reads it.
fn session(id: &str) -> Result<SessionId, ApiError> {
    Ok(SessionId::new(id, MAX_SESSION_ID_LEN)?)
}

/// Which streams a call names: exactly one of `sessionId`, `subject` and `streamId`.
#[derive(Debug, Default)]
struct Which {
    session_id: Option<String>,
    subject: Option<String>,
    stream_id: Option<String>,
}

impl Which {
    fn streams(self) -> Result<Streams, ApiError> {
        let text = |what: &str, value: String| -> Result<std::sync::Arc<str>, ApiError> {
            match SessionId::new(&value, MAX_SESSION_ID_LEN) {
                Ok(_) => Ok(value.into()),
                Err(e) => Err(ApiError::bad_request(
                    "invalid_input",
                    format!("{what}: {}", e.to_string().replacen("sessionId", what, 1)),
                )),
            }
        };
        match (self.session_id, self.subject, self.stream_id) {
            (Some(s), None, None) => Ok(Streams::Session(session(&s)?)),
            (None, Some(s), None) => Ok(Streams::Subject(text("subject", s)?)),
            (None, None, Some(s)) => Ok(Streams::Stream(text("streamId", s)?)),
            (None, None, None) => Err(ApiError::bad_request(
                "missing_target",
                "name the streams: sessionId (a session's), subject (a user's, by the token's sub or the callback's subject) or streamId (one stream)",
            )),
            _ => Err(ApiError::bad_request(
                "invalid_input",
                "name one of sessionId, subject and streamId, not several",
            )),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceView {
    #[serde(flatten)]
    member: crate::cluster::Member,
    /// Milliseconds since its last heartbeat came (0 for the instance answering).
    last_seen_ms: u64,
    /// The instance that answered this call.
    answering: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Totals {
    instances: usize,
    streams: usize,
    sessions: usize,
}

/// `GET /admin/cluster`: the live instances, with their figures, and the totals.
pub(super) async fn cluster(State(state): State<AppState>, _: Admin) -> Response {
    let members = state.cluster().members();
    let totals = Totals {
        instances: members.len(),
        streams: members.iter().map(|(m, _)| m.streams).sum(),
        sessions: members.iter().map(|(m, _)| m.sessions).sum(),
    };
    let instances: Vec<InstanceView> = members
        .into_iter()
        .enumerate()
        .map(|(n, (member, seen))| InstanceView {
            member,
            last_seen_ms: seen.as_millis() as u64,
            answering: n == 0,
        })
        .collect();
    Json(serde_json::json!({ "instances": instances, "totals": totals })).into_response()
}

/// What a disconnect asks.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Disconnect {
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    stream_id: Option<String>,
    /// Come back (a `retry:` hint) or stay away (the default: a logout, a ban).
    #[serde(default)]
    reconnect: bool,
    /// Why, shown to the client.
    #[serde(default)]
    reason: Option<String>,
}

/// Each instance's count of one kind of answer, and the total.
fn per_instance(gathered: &Gathered, count: impl Fn(&Answer) -> usize) -> serde_json::Value {
    let instances: Vec<serde_json::Value> = gathered
        .answers
        .iter()
        .map(|(id, answer)| serde_json::json!({"instanceId": id, "streams": count(answer)}))
        .collect();
    let total: usize = gathered.answers.iter().map(|(_, a)| count(a)).sum();
    serde_json::json!({
        "streams": total,
        "instances": instances,
        "missing": gathered.missing,
    })
}

/// `POST /admin/disconnect`: ends a session's, a subject's or one stream, on every instance.
pub(super) async fn disconnect(
    State(state): State<AppState>,
    _: Admin,
    Body(asked): Body<Disconnect>,
) -> Result<Response, ApiError> {
    let reason = match asked.reason {
        Some(r) if r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control) => {
            return Err(ApiError::bad_request(
                "invalid_input",
                format!("reason must be at most {MAX_REASON_CHARS} characters, without control characters"),
            ))
        }
        reason => reason,
    };
    let which = Which {
        session_id: asked.session_id,
        subject: asked.subject,
        stream_id: asked.stream_id,
    }
    .streams()?;
    let farewell = Farewell {
        reconnect: asked.reconnect,
        reason,
    };
    let gathered = state.cluster().disconnect(which, farewell).await?;
    let ended = per_instance(&gathered, |answer| match answer {
        Answer::Disconnected { streams } => *streams,
        _ => 0,
    });
    Ok(Json(ended).into_response())
}

/// What a presence call asks.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Presence {
    session_ids: Vec<String>,
}

/// `POST /admin/presence`: where each of up to 1,000 sessions is online, in the order asked.
pub(super) async fn presence(
    State(state): State<AppState>,
    _: Admin,
    Body(asked): Body<Presence>,
) -> Result<Response, ApiError> {
    if asked.session_ids.is_empty() || asked.session_ids.len() > MAX_PRESENCE_SESSIONS {
        return Err(ApiError::bad_request(
            "invalid_input",
            format!(
                "sessionIds must name 1 to {MAX_PRESENCE_SESSIONS} sessions ({} given)",
                asked.session_ids.len()
            ),
        ));
    }
    let sessions: Vec<SessionId> = asked
        .session_ids
        .iter()
        .map(|s| session(s))
        .collect::<Result<_, _>>()?;
    let (presence, missing) = state.cluster().presence(&sessions).await?;
    let sessions: Vec<serde_json::Value> = sessions
        .iter()
        .zip(presence)
        .map(|(session, instances)| {
            let streams: usize = instances.iter().map(|(_, n)| n).sum();
            let instances: Vec<serde_json::Value> = instances
                .into_iter()
                .map(|(id, n)| serde_json::json!({"instanceId": id, "streams": n}))
                .collect();
            serde_json::json!({
                "sessionId": session.as_str(),
                "connected": streams > 0,
                "streams": streams,
                "instances": instances,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({"sessions": sessions, "missing": missing})).into_response())
}

/// `GET /admin/streams?sessionId=…|subject=…|streamId=…`: those streams, cluster-wide.
pub(super) async fn streams(
    State(state): State<AppState>,
    _: Admin,
    Query(query): Query,
) -> Result<Response, ApiError> {
    let which = Which {
        session_id: query.single("sessionId")?.map(str::to_owned),
        subject: query.single("subject")?.map(str::to_owned),
        stream_id: query.single("streamId")?.map(str::to_owned),
    }
    .streams()?;
    let gathered = state.cluster().ask(Question::Streams { which }).await?;
    let mut streams: Vec<StreamRecord> = Vec::new();
    let mut truncated = false;
    for (_, answer) in gathered.answers {
        if let Answer::Streams {
            streams: some,
            truncated: more,
        } = answer
        {
            streams.extend(some);
            truncated |= more;
        }
    }
    Ok(Json(serde_json::json!({
        "streams": streams,
        "truncated": truncated,
        "missing": gathered.missing,
    }))
    .into_response())
}

/// `GET /admin/selectors?prefix=…`: the selectors subscribed to across the cluster that start
/// with the prefix, each with its subscribers, sorted by selector (at most 1,000).
pub(super) async fn selectors(
    State(state): State<AppState>,
    _: Admin,
    Query(query): Query,
) -> Result<Response, ApiError> {
    let prefix = query.single("prefix")?.unwrap_or_default().to_owned();
    let question = Question::Selectors { prefix };
    let gathered = state.cluster().ask(question).await?;
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    let mut truncated = false;
    for (_, answer) in gathered.answers {
        if let Answer::Selectors {
            selectors,
            truncated: more,
        } = answer
        {
            truncated |= more;
            for (selector, n) in selectors {
                *counts.entry(selector).or_default() += n;
            }
        }
    }
    truncated |= counts.len() > MAX_LISTED;
    let selectors: Vec<serde_json::Value> = counts
        .into_iter()
        .take(MAX_LISTED)
        .map(|(selector, n)| serde_json::json!({"selector": selector, "subscribers": n}))
        .collect();
    Ok(Json(serde_json::json!({
        "selectors": selectors,
        "truncated": truncated,
        "missing": gathered.missing,
    }))
    .into_response())
}

/// The operator page: one HTML file with its script inline (no build step, nothing fetched
/// from elsewhere), which calls this API with the credential typed into it.
static PAGE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| super::page::themed(include_str!("admin.html")));

/// `GET /admin/`: the operator page, to the clients `admin-page` serves it to; a `404` to
/// the others, as if there were none.
pub(super) async fn page(
    State(state): State<AppState>,
    connection: Option<Extension<ConnectionInfo>>,
    headers: HeaderMap,
) -> Response {
    let proxied =
        headers.contains_key(header::FORWARDED) || headers.contains_key("x-forwarded-for");
    let served = match state.config().admin_page {
        AdminPage::Off => false,
        AdminPage::Loopback => {
            !proxied && connection.is_some_and(|Extension(c)| c.peer.ip().is_loopback())
        }
        AdminPage::On => true,
    };
    if !served {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no operator page here (admin-page: off by default; loopback serves it to this machine only)",
        )
        .into_response();
    }
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            // An admin page is not to be framed (clickjacking) nor to leak its URL.
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(PAGE.as_str()),
    )
        .into_response()
}

/// Any other path under `/admin/`.
pub(super) async fn unknown(_: Admin) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "the admin API has /admin/cluster, /admin/presence, /admin/streams, /admin/selectors and /admin/disconnect",
    )
}
