//! Operations endpoints: liveness, readiness, Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::bus::ConnectionState;

/// `GET /healthz`: the process is alive and serving HTTP.
pub(super) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 while the bus is connected and the instance is not draining; 503
/// otherwise, so a load balancer stops sending new clients.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let (status, text) = readiness(&state);
    let mut body = json!({
        "status": text,
        "bus": state.bus().kind(),
        "busConnection": state.bus().state().name(),
        "instanceId": state.config().instance_id,
    });
    // A consumer's source being away does not make the instance unready: it still serves
    // its streams and publishes; the state says what it is waiting for.
    let consumers = state.consumers().states();
    if !consumers.is_empty() {
        body["consumers"] = consumers
            .into_iter()
            .map(|(name, connection)| json!({"name": name, "connection": connection.name()}))
            .collect();
    }
    (status, Json(body)).into_response()
}

/// Whether the instance takes traffic now, and why not; also refreshes the `ready` and
/// `bus_state` gauges.
fn readiness(state: &AppState) -> (StatusCode, &'static str) {
    state.metrics().bus_state(
        &ConnectionState::ALL.map(ConnectionState::name),
        state.bus().state().name(),
    );
    let (status, text) = if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !state.bus().is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable")
    } else {
        (StatusCode::OK, "ready")
    };
    state
        .metrics()
        .ready
        .set(i64::from(status == StatusCode::OK));
    (status, text)
}

/// `GET /metrics`: every metric in the OpenMetrics text format (which Prometheus scrapes).
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    readiness(&state);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().render(),
    )
        .into_response()
}
