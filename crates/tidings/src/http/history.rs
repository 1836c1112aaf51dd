//! `GET /history`: what a topic's history holds, without opening a stream — the last updates
//! of a topic (a dashboard's badge, a page's first state) or those after an id, page by page.
//! A caller sees what a stream of the same credentials would: public updates, and the private
//! ones its token (or the admin key) allows.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::request::{self, Query};
use super::{ApiError, AppState};
use crate::bus::ReplayFrom;
use crate::update::{Topic, UpdateId};

/// The most updates one call gives (`last`, `limit`).
const MAX_PAGE: usize = 100;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Item<'a> {
    id: &'a str,
    topics: Vec<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    event_type: Option<&'a str>,
    data: &'a str,
    private: bool,
}

/// A count of updates given in the query, 1 to [`MAX_PAGE`].
fn count(query: &request::Pairs, name: &str) -> Result<Option<usize>, ApiError> {
    let Some(text) = query.single(name)? else {
        return Ok(None);
    };
    match text.parse::<usize>() {
        Ok(n @ 1..=MAX_PAGE) => Ok(Some(n)),
        _ => Err(ApiError::bad_request(
            "invalid_input",
            format!("{name} must be a number from 1 to {MAX_PAGE} ({text:?} given)"),
        )),
    }
}

/// `GET /history?topic=…&last=N` (the last N updates of the topic, oldest first) or
/// `GET /history?topic=…&after=ID[&limit=N]` (those after the update ID, or after `earliest`:
/// from the start, at most N — 100 — and `next`: the id to ask after for the next page).
pub(super) async fn history(
    State(state): State<AppState>,
    Query(query): Query,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let limits = &state.config().limits;
    let topic = match query.single("topic")? {
        Some(topic) => Topic::new(topic, limits.max_selector_length)?,
        None => {
            return Err(ApiError::bad_request(
                "missing_topic",
                "name the topic: ?topic=…",
            ))
        }
    };
    let last = count(&query, "last")?;
    let limit = count(&query, "limit")?;
    let from = match (last, query.single("after")?, limit) {
        (Some(_), None, None) => ReplayFrom::Earliest,
        (None, Some("earliest"), _) => ReplayFrom::Earliest,
        (None, Some(id), _) => ReplayFrom::After(UpdateId::new(id, limits.max_id_length).map_err(
            |e| ApiError::bad_request("invalid_input", format!("after: {e}")),
        )?),
        (None, None, _) => {
            return Err(ApiError::bad_request(
                "invalid_input",
                "say which updates: last=N (the newest N) or after=ID (those after an id, or after=earliest)",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_input",
                "last=N gives the newest updates: give it alone (after= and limit= page forwards)",
            ))
        }
    };
    let identity = request::subscriber(&state, &headers, &query).await?;
    let topics = [std::sync::Arc::<str>::from(topic.as_str())];
    let replay = state.bus().replay(&from, Some(&topics)).await?;
    if matches!(from, ReplayFrom::After(_)) && replay.missing && replay.resumed_at.is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_id",
            "history does not hold this id (it expired, or was never published): ask for the last updates (last=N), or from the start (after=earliest)",
        ));
    }
    let visible: Vec<_> = replay
        .updates
        .iter()
        .map(|e| &e.update)
        .filter(|u| u.topics.contains(&topic))
        .filter(|u| !u.private || identity.access.may_see_private(&u.topics))
        .collect();
    let (page, next) = match last {
        Some(n) => (&visible[visible.len().saturating_sub(n)..], None),
        None => {
            let n = limit.unwrap_or(MAX_PAGE);
            let page = &visible[..visible.len().min(n)];
            let more = visible.len() > n;
            (
                page,
                more.then(|| page.last().map(|u| u.id.as_str())).flatten(),
            )
        }
    };
    let updates: Vec<Item<'_>> = page
        .iter()
        .map(|u| Item {
            id: u.id.as_str(),
            topics: u.topics.iter().map(Topic::as_str).collect(),
            event_type: u.event_type.as_ref().map(|t| t.as_str()),
            data: &u.data,
            private: u.private,
        })
        .collect();
    Ok(Json(serde_json::json!({
        "topic": topic.as_str(),
        "updates": updates,
        "next": next,
    }))
    .into_response())
}
