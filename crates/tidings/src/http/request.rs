//! Reading untrusted request parts: query strings and forms (strict UTF-8), the token in its
//! three Mercure locations, `Last-Event-ID`, content types and bodies; and the extractors
//! built on them ([`Query`], [`Publisher`], [`Form`]), so that a handler's
//! arguments say what the protocol asks of a request.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Extension;

use super::ConnectionInfo;
use super::{ApiError, AppState};
use crate::auth::{Ask, AuthMode, Caller, PublisherRights, StreamRequest, SubscriberIdentity};
use crate::bus::ReplayFrom;
use crate::telemetry::{self, TraceParent};
use crate::update::UpdateId;

/// Decoded `name=value` pairs of a query string or a form body, in order.
#[derive(Debug, Default)]
pub(super) struct Pairs(Vec<(String, String)>);

impl Pairs {
    /// Decodes `application/x-www-form-urlencoded` text. Unlike lenient decoders, refuses
    /// percent-escapes that decode to invalid UTF-8 instead of replacing them.
    pub(super) fn parse(input: &[u8], what: &str) -> Result<Pairs, ApiError> {
        let mut pairs = Vec::new();
        for part in input.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match part.iter().position(|b| *b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &b""[..]),
            };
            pairs.push((decode(name, what)?, decode(value, what)?));
        }
        Ok(Pairs(pairs))
    }

    /// Adds `more`'s pairs after these.
    pub(super) fn extend(&mut self, more: Pairs) {
        self.0.extend(more.0);
    }

    /// Every value of `name`.
    pub(super) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every name, in order (repeated as given).
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// The value of `name`, which may be given at most once.
    pub(super) fn single<'a>(&'a self, name: &'a str) -> Result<Option<&'a str>, ApiError> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_request(
                "invalid_input",
                format!("{name} is given more than once"),
            ));
        }
        Ok(first)
    }
}

fn decode(raw: &[u8], what: &str) -> Result<String, ApiError> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_encoding::percent_decode(&plus_as_space)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            ApiError::bad_request("invalid_encoding", format!("the {what} is not valid UTF-8"))
        })
}

/// The query string's pairs.
pub(super) fn query(raw: Option<&str>) -> Result<Pairs, ApiError> {
    Pairs::parse(raw.unwrap_or("").as_bytes(), "query string")
}

/// The query string, decoded strictly.
pub(super) struct Query(pub(super) Pairs);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        query(parts.uri.query()).map(Query)
    }
}

/// The caller, verified as a publisher (see [`publisher`]).
pub(super) struct Publisher(pub(super) PublisherRights);

impl FromRequestParts<AppState> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let query = query(parts.uri.query())?;
        publisher(state, &parts.headers, &query)
            .await
            .map(Publisher)
    }
}

/// The W3C `traceparent` the caller sent: a publish joins the caller's trace. Read only while
/// tracing is on; a malformed one is ignored (a new trace begins, as the W3C format says).
pub(super) struct CallerTrace(pub(super) Option<TraceParent>);

impl<S: Send + Sync> FromRequestParts<S> for CallerTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let trace = telemetry::on()
            .then(|| parts.headers.get("traceparent")?.to_str().ok())
            .flatten()
            .and_then(TraceParent::parse);
        Ok(CallerTrace(trace))
    }
}

/// An `application/x-www-form-urlencoded` body within `max-body-bytes`, decoded strictly.
pub(super) struct Form(pub(super) Pairs);

impl FromRequest<AppState> for Form {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = body_of(request, state, "application/x-www-form-urlencoded").await?;
        Pairs::parse(&body, "form").map(Form)
    }
}

/// The body of `request`, of media type `expected`, within `max-body-bytes`, arrived within
/// `header-read-timeout` (a client that announces a body and sends it a byte a minute would
/// hold its connection and this request for ever).
pub(super) async fn body_of(
    request: Request,
    state: &AppState,
    expected: &str,
) -> Result<Bytes, ApiError> {
    require_content_type(request.headers(), expected)?;
    let within = state.config().header_read_timeout;
    match tokio::time::timeout(within, Bytes::from_request(request, state)).await {
        Ok(read) => body(read, state.config().limits.max_body_bytes),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within header-read-timeout ({} s)",
                within.as_secs()
            ),
        )),
    }
}

/// The connection the request came on, as the server records it (absent when the router is
/// called without sockets, as in router tests).
pub(super) type Connection = Option<Extension<ConnectionInfo>>;

/// The client's address, for the stream limits (see [`crate::admission::client_address`]).
pub(super) fn client_address(
    state: &AppState,
    connection: Option<&ConnectionInfo>,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    crate::admission::client_address(
        connection.map(|c| c.peer),
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok()),
        &state.config().trusted_proxies,
    )
}

/// Where the request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Cookie,
    Query,
}

/// Verifies the caller's credentials as a subscriber.
pub(super) async fn subscriber(
    state: &AppState,
    headers: &HeaderMap,
    query: &Pairs,
) -> Result<SubscriberIdentity, ApiError> {
    if bears_admin_key(state, headers) {
        return Ok(SubscriberIdentity::admin_key());
    }
    let token = presented_token(state, headers, query)?.map(|(t, _)| t);
    Ok(state.authenticator().subscriber(token, None).await?)
}

/// True when the request's `Authorization` header carries the `admin-key` (compared in
/// constant time: the key is a password). The admin key holds every right: the admin API's,
/// a publisher's and a subscriber's to every private update (the operator page tails and
/// publishes with it).
pub(super) fn bears_admin_key(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(key) = &state.config().admin_key else {
        return false;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    #[allow(deprecated)]
    bearer.is_some_and(|b| {
        ring::constant_time::verify_slices_are_equal(b.as_bytes(), key.as_bytes()).is_ok()
    })
}

/// Verifies the caller of a new stream asking for `request`: by its token when one verifies,
/// else (with `auth-url`) by the application's decision, told the client's headers.
///
/// With `auth-url`, an `Authorization` header that is not a bearer token is the application's
/// to read, not an error.
pub(super) async fn stream_subscriber(
    state: &AppState,
    connection: Option<&ConnectionInfo>,
    headers: &HeaderMap,
    query: &Pairs,
    request: StreamRequest,
) -> Result<SubscriberIdentity, ApiError> {
    if bears_admin_key(state, headers) {
        return Ok(SubscriberIdentity::admin_key());
    }
    let auth = state.authenticator();
    let token = match presented_token(state, headers, query) {
        Ok(token) => token.map(|(t, _)| t),
        Err(_) if auth.asks_application() => None,
        Err(e) => return Err(e),
    };
    let ask = auth.asks_application().then(|| {
        let peer = connection.map(|c| c.peer.ip());
        let trusted = &state.config().trusted_proxies;
        let caller = Caller {
            peer,
            peer_trusted: peer.is_some_and(|p| trusted.iter().any(|net| net.contains(&p))),
            address: client_address(state, connection, headers).map(crate::admission::address_key),
        };
        Ask::new(request, headers, caller)
    });
    Ok(auth.subscriber(token, ask).await?)
}

/// Verifies the caller's credentials as a publisher.
///
/// A browser attaches the `mercureAuthorization` cookie to any site's form POST, so a token
/// from the cookie publishes only when the request's `Origin` (or `Referer`) is one of the
/// configured `publish-origin`s (cross-site request forgery protection, as Mercure's
/// `publish_origins`).
pub(super) async fn publisher(
    state: &AppState,
    headers: &HeaderMap,
    query: &Pairs,
) -> Result<PublisherRights, ApiError> {
    if bears_admin_key(state, headers) {
        return Ok(PublisherRights::admin_key());
    }
    let presented = presented_token(state, headers, query)?;
    if let Some((_, Source::Cookie)) = presented {
        let origin = request_origin(headers);
        let allowed = &state.config().publish_origins;
        if !origin.is_some_and(|o| allowed.iter().any(|a| a == o)) {
            return Err(ApiError::forbidden(
                "publishing with a token cookie needs the page's origin in --publish-origin; \
                 or send the token as 'Authorization: Bearer <token>'",
            ));
        }
    }
    Ok(state
        .authenticator()
        .publisher(presented.map(|(t, _)| t))
        .await?)
}

/// The origin a browser says the request comes from: `Origin`, else the origin of `Referer`.
fn request_origin(headers: &HeaderMap) -> Option<&str> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin.to_str().ok();
    }
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let after_scheme = referer.find("://")? + 3;
    let end = referer[after_scheme..]
        .find('/')
        .map_or(referer.len(), |i| after_scheme + i);
    Some(&referer[..end])
}

/// The token the request presents, and where; with `--auth none` none is even looked for.
fn presented_token<'a>(
    state: &AppState,
    headers: &'a HeaderMap,
    query: &'a Pairs,
) -> Result<Option<(&'a str, Source)>, ApiError> {
    if state.authenticator().mode() == AuthMode::None {
        return Ok(None);
    }
    token(headers, query, &state.config().cookie_name)
}

/// Finds the JWT: the `Authorization: Bearer` header first, then a cookie — Mercure 1.0's
/// (`cookie-name`, `__Secure-mercure_access_token` by default), then the classic
/// `mercureAuthorization` — then the classic `authorization` query parameter, as both
/// revisions of the Mercure protocol order them. Only the first found is used.
fn token<'a>(
    headers: &'a HeaderMap,
    query: &'a Pairs,
    cookie_name: &str,
) -> Result<Option<(&'a str, Source)>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or("");
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "the Authorization header must be 'Bearer <token>'",
                )
                .challenging(super::error::Challenge::InvalidToken)
            })?;
        return Ok(Some((token, Source::Header)));
    }
    if let Some(token) =
        cookie(headers, cookie_name).or_else(|| cookie(headers, "mercureAuthorization"))
    {
        return Ok(Some((token, Source::Cookie)));
    }
    Ok(query
        .single("authorization")?
        .filter(|t| !t.is_empty())
        .map(|t| (t, Source::Query)))
}

/// The value of cookie `name`, if the request carries it.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// Where to resume: the `Last-Event-ID` header (sent by a reconnecting `EventSource`, so it
/// wins over the URL's) or the `lastEventID` query parameter; `earliest` means all history.
pub(super) fn resume_point(
    headers: &HeaderMap,
    query: &Pairs,
    max_id_len: usize,
) -> Result<ReplayFrom, ApiError> {
    let from_header = match headers.get("last-event-id") {
        Some(v) => Some(std::str::from_utf8(v.as_bytes()).map_err(|_| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "the Last-Event-ID header is not valid text",
            )
        })?),
        None => None,
    };
    // The query parameter: Mercure 1.0's `last_event_id`, the classic draft's `lastEventID`
    // (which Symfony's Twig helper still writes), the header's name (older hubs).
    let raw = match from_header {
        Some(v) => Some(v),
        None => match query.single("last_event_id")? {
            Some(v) => Some(v),
            None => match query.single("lastEventID")? {
                Some(v) => Some(v),
                None => query.single("Last-Event-ID")?,
            },
        },
    };
    match raw {
        None | Some("") => Ok(ReplayFrom::Now),
        Some("earliest") => Ok(ReplayFrom::Earliest),
        Some(id) => UpdateId::new(id, max_id_len)
            .map(ReplayFrom::After)
            .map_err(|e| ApiError::bad_request("invalid_last_event_id", e.to_string())),
    }
}

/// The most updates per topic a fresh stream may ask to rewind (`rewind=N`).
pub(super) const MAX_REWIND: usize = 100;

/// `rewind=N`: a fresh stream first gets the last `N` updates of each of its exact topics.
pub(super) fn rewind(query: &Pairs) -> Result<Option<usize>, ApiError> {
    let Some(raw) = query.single("rewind")? else {
        return Ok(None);
    };
    match raw.parse::<usize>() {
        Ok(n @ 1..=MAX_REWIND) => Ok(Some(n)),
        _ => Err(ApiError::bad_request(
            "invalid_rewind",
            format!(
                "rewind is the number of updates of each exact topic to start with: a whole number from 1 to {MAX_REWIND}, not {:?}",
                raw.chars().take(32).collect::<String>()
            ),
        )),
    }
}

/// `withSelectors=1`: each event of a Mercure stream names the stream's selectors it matched
/// (`selector:` fields), so that one stream can serve several consumers — the browser client's
/// leader tab hands each tab the events of its own selectors. `0`, `false`, or absent: not.
pub(super) fn with_selectors(query: &Pairs) -> Result<bool, ApiError> {
    match query.single("withSelectors")? {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_input",
            format!(
                "withSelectors is 1 or true (each event names the selectors it matched), 0 or false, not {:?}",
                other.chars().take(32).collect::<String>()
            ),
        )),
    }
}

/// Checks the request's media type (parameters such as `charset` are ignored).
fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let actual = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = actual.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body must be {expected}, not {:?}",
                if actual.is_empty() { "(none)" } else { actual }
            ),
        ))
    }
}

/// The body, or a 413 naming the limit when it was too large.
fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than max-body-bytes ({limit} bytes)"),
            )
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_plus_and_escapes_strictly() {
        let p = Pairs::parse(b"topic=a+b&topic=c%2Fd&data=%C3%A9&flag", "form").unwrap();
        assert_eq!(p.all("topic").collect::<Vec<_>>(), ["a b", "c/d"]);
        assert_eq!(p.single("data").unwrap(), Some("é"));
        assert_eq!(p.single("flag").unwrap(), Some(""));
        assert!(Pairs::parse(b"data=%FF", "form").is_err());
        assert!(p.single("topic").is_err());
    }

    #[test]
    fn the_header_token_wins_and_must_be_bearer() {
        let q = Pairs::parse(b"authorization=q", "q").unwrap();
        let mut h = HeaderMap::new();
        const V1: &str = "__Secure-mercure_access_token";
        assert_eq!(token(&h, &q, V1).unwrap(), Some(("q", Source::Query)));
        h.insert(
            header::COOKIE,
            "a=1; mercureAuthorization=c".parse().unwrap(),
        );
        assert_eq!(token(&h, &q, V1).unwrap(), Some(("c", Source::Cookie)));
        // Mercure 1.0's cookie comes before the classic one.
        h.insert(
            header::COOKIE,
            "mercureAuthorization=c; __Secure-mercure_access_token=v1"
                .parse()
                .unwrap(),
        );
        assert_eq!(token(&h, &q, V1).unwrap(), Some(("v1", Source::Cookie)));
        h.insert(header::AUTHORIZATION, "Bearer h".parse().unwrap());
        assert_eq!(token(&h, &q, V1).unwrap(), Some(("h", Source::Header)));
        h.insert(header::AUTHORIZATION, "Basic x".parse().unwrap());
        assert_eq!(
            token(&h, &q, V1).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn the_origin_comes_from_origin_or_referer() {
        let mut h = HeaderMap::new();
        assert_eq!(request_origin(&h), None);
        h.insert(
            header::REFERER,
            "https://app.example:8443/page?x=1".parse().unwrap(),
        );
        assert_eq!(request_origin(&h), Some("https://app.example:8443"));
        h.insert(header::REFERER, "https://app.example".parse().unwrap());
        assert_eq!(request_origin(&h), Some("https://app.example"));
        h.insert(header::ORIGIN, "https://other.example".parse().unwrap());
        assert_eq!(request_origin(&h), Some("https://other.example"));
    }
}
