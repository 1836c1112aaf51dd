//! Mercure 1.0 discovery (RFC 9728): the protected resource metadata at
//! `/.well-known/oauth-protected-resource/.well-known/mercure`, and the `resource_metadata`
//! parameter added to every bearer challenge, so that a client refused for its token can learn
//! which token types, authorization servers and cookie the hub takes.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, AppState, ConnectionInfo, MERCURE_PATH};
use crate::auth::{AuthMode, AUTHORIZATION_DETAIL_TYPE};

/// Where the metadata is served: the well-known prefix, then the hub's path (RFC 9728 §3.1).
pub(super) const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/.well-known/mercure";

/// The metadata document: the RFC's members the hub can fill, and Mercure's own.
#[derive(Debug, Serialize)]
struct Metadata<'a> {
    resource: String,
    /// The issuers marked `authorization-server` (their metadata tells how to get a token).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authorization_servers: Vec<String>,
    /// Only the header: a token in a URL ends in logs (RFC 9700); the cookie has its member.
    bearer_methods_supported: [&'static str; 1],
    authorization_details_types_supported: [&'static str; 1],
    /// The cookie the hub reads a token from (the reference hub's form: its name).
    mercure_cookie: &'a str,
    mercure_subscriptions: bool,
    /// `QUERY` subscriptions are served.
    mercure_events_query: bool,
    mercure_matcher_types_supported: [&'static str; 2],
}

/// `GET /.well-known/oauth-protected-resource/.well-known/mercure`: the metadata, when the hub
/// verifies tokens (with `--auth none` there is no protected resource to describe: 404).
pub(super) async fn metadata(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let config = state.config();
    if config.auth.mode == AuthMode::None {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this hub verifies no tokens (auth none): there is no protected resource metadata",
        ));
    }
    let resource = Reached::of(&state, &request).resource(&state).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_input",
            "the request names no usable host (Host header): the hub's resource identifier is built from it unless jwt-audience is a URL",
        )
    })?;
    let body = Metadata {
        resource,
        authorization_servers: state.authenticator().authorization_servers(),
        bearer_methods_supported: ["header"],
        authorization_details_types_supported: [AUTHORIZATION_DETAIL_TYPE],
        mercure_cookie: &config.cookie_name,
        mercure_subscriptions: config.subscriptions,
        mercure_events_query: true,
        mercure_matcher_types_supported: ["exact", "urlpattern"],
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            // The resource is built from these when jwt-audience does not name it.
            (header::VARY, "Host, X-Forwarded-Host, X-Forwarded-Proto"),
        ],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response())
}

/// How a request reached the hub: what its resource identifier is built from. Taken from a
/// request by reference-counted clones (no copy, no parse), as every request pays it.
struct Reached {
    host: Option<HeaderValue>,
    authority: Option<axum::http::uri::Authority>,
    /// A trusted proxy's `X-Forwarded-Host` and `X-Forwarded-Proto` (their last lines: a
    /// proxy that appends to what the client sent writes after it).
    forwarded: Option<(Option<HeaderValue>, Option<HeaderValue>)>,
    tls: bool,
}

impl Reached {
    fn of(state: &AppState, request: &Request) -> Self {
        let config = state.config();
        let headers = request.headers();
        let peer = || {
            request
                .extensions()
                .get::<ConnectionInfo>()
                .map(|c| c.peer.ip())
        };
        let behind_proxy =
            || peer().is_some_and(|p| config.trusted_proxies.iter().any(|net| net.contains(&p)));
        let last = |name| headers.get_all(name).iter().next_back();
        let forwarded = (last("x-forwarded-host"), last("x-forwarded-proto"));
        Reached {
            host: headers.get(header::HOST).cloned(),
            authority: request.uri().authority().cloned(),
            forwarded: (forwarded != (None, None) && behind_proxy())
                .then(|| (forwarded.0.cloned(), forwarded.1.cloned())),
            tls: config.tls.is_some(),
        }
    }

    /// The hub's resource identifier: `jwt-audience` when it is an `http(s)` URL (the
    /// audience Mercure 1.0 tokens name is the hub's URL), else the hub's URL as the request
    /// reached it — its `Host` (or HTTP/2 authority) and the listener's scheme; behind a
    /// trusted proxy, its `X-Forwarded-Host` and `X-Forwarded-Proto`. `None` when no usable
    /// host is named.
    fn resource(&self, state: &AppState) -> Option<String> {
        if let Some(audience) = state.authenticator().audience() {
            if audience.starts_with("https://") || audience.starts_with("http://") {
                return Some(audience);
            }
        }
        // A forwarded header's entries are in the order the proxies wrote them: the last is
        // the trusted proxy's own.
        let last = |value: &Option<HeaderValue>| {
            let value = value.as_ref()?.to_str().ok()?;
            Some(value.rsplit(',').next()?.trim().to_owned())
        };
        let (forwarded_host, forwarded_proto) = match &self.forwarded {
            Some((host, proto)) => (last(host), last(proto)),
            None => (None, None),
        };
        let scheme = match forwarded_proto.as_deref() {
            Some(proto @ ("http" | "https")) => proto,
            _ if self.tls => "https",
            _ => "http",
        };
        let host = forwarded_host
            .or_else(|| self.host.as_ref()?.to_str().ok().map(str::to_owned))
            .or_else(|| self.authority.as_ref().map(|a| a.as_str().to_owned()))?;
        // A host is letters, digits, dots, dashes, colons and brackets; anything else (a quote
        // would break the challenge's quoted string) is not used.
        let plausible = !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        plausible.then(|| format!("{scheme}://{host}{MERCURE_PATH}"))
    }
}

/// The metadata's URL for the resource `resource`: its origin, then [`METADATA_PATH`].
fn metadata_url(resource: &str) -> Option<String> {
    let after_scheme = resource.find("://")? + 3;
    let origin_end = resource[after_scheme..]
        .find('/')
        .map_or(resource.len(), |i| after_scheme + i);
    Some(format!("{}{METADATA_PATH}", &resource[..origin_end]))
}

/// Adds `resource_metadata="…"` to the bearer challenge of a refusal (RFC 9728 §5.1: on every
/// challenge, not only when no token was sent), when the hub verifies tokens.
pub(super) async fn point_challenges_to_metadata(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.config().auth.mode == AuthMode::None {
        return next.run(request).await;
    }
    let reached = Reached::of(&state, &request);
    let mut response = next.run(request).await;
    let challenge = response
        .extensions()
        .get::<ApiError>()
        .and_then(|e| e.challenge);
    let url = challenge.and_then(|_| metadata_url(&reached.resource(&state)?));
    if let (Some(challenge), Some(url)) = (challenge, url) {
        let value = format!("{}, resource_metadata=\"{url}\"", challenge.header());
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_url_is_the_resources_origin_then_the_well_known_path() {
        assert_eq!(
            metadata_url("https://hub.example:8443/.well-known/mercure").as_deref(),
            Some(
                "https://hub.example:8443/.well-known/oauth-protected-resource/.well-known/mercure"
            )
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:3000").as_deref(),
            Some("http://127.0.0.1:3000/.well-known/oauth-protected-resource/.well-known/mercure")
        );
        assert_eq!(metadata_url("tidings"), None);
    }
}
