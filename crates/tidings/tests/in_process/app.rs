//! The router of a real instance, called without a socket: what the protocol answers to one
//! request needs no process and no port.

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use clap::Parser;
use serde_json::{json, Value};
use tidings::config::Options;
use tidings::server::Instance;
use tower::ServiceExt;

/// The HS256 key of [`App::start`]'s instances when their flags say `--jwt-key KEY`.
pub(crate) const KEY: &str = "router-test-key-of-a-decent-length";

/// Mints an HS256 token with these claims, signed with [`KEY`].
pub(crate) fn token(claims: Value) -> String {
    let claims = serde_json::from_value(claims).unwrap();
    tidings::auth::mint(tidings::auth::JwtAlg::Hs256, KEY, &claims).unwrap()
}

/// A token that may publish anything.
pub(crate) fn publisher_token() -> String {
    token(json!({"mercure": {"publish": ["*"]}}))
}

/// `tidings serve`'s flags, parsed as the command line parses them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    options: Options,
}

/// The router of an instance started with these options (on the memory bus unless they name
/// another).
pub(crate) async fn router(options: Options) -> axum::Router {
    let config = options.resolve().unwrap();
    Instance::new(config).await.unwrap().router()
}

/// One instance's router.
pub(crate) struct App(axum::Router);

impl App {
    /// An instance started with these `tidings serve` flags (on the memory bus unless they
    /// name another).
    pub(crate) async fn start(flags: &[&str]) -> App {
        let flags =
            Flags::try_parse_from(std::iter::once("tidings").chain(flags.iter().copied())).unwrap();
        App(router(flags.options).await)
    }

    /// Sends one request; its answer (a stream's body is not read: dropping it ends the
    /// stream).
    pub(crate) async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.0.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// `GET uri` with these headers.
    pub(crate) async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(request("GET", uri, headers, Body::empty())).await
    }

    /// `GET uri` with a bearer token, if given.
    pub(crate) async fn get_as(&self, uri: &str, token: Option<&str>) -> Answer {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let headers = authorization_header(authorization.as_deref());
        self.get(uri, &headers).await
    }

    /// A Mercure publish of an update on these topics, with a bearer token if given.
    pub(crate) async fn publish_as(&self, token: Option<&str>, topics: &[&str]) -> Answer {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let headers = authorization_header(authorization.as_deref());
        let form: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
        self.post_form("/.well-known/mercure", &form, &headers)
            .await
    }

    /// `POST uri` of a form, with these headers.
    pub(crate) async fn post_form(
        &self,
        uri: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut headers = headers.to_vec();
        headers.push(("content-type", "application/x-www-form-urlencoded"));
        self.send(request("POST", uri, &headers, body.into())).await
    }

    /// `POST uri` of a JSON body, with a bearer token if given.
    pub(crate) async fn post_json(&self, uri: &str, body: &Value, bearer: Option<&str>) -> Answer {
        let authorization = bearer.map(|t| format!("Bearer {t}"));
        let mut headers = authorization_header(authorization.as_deref());
        headers.push(("content-type", "application/json"));
        self.send(request("POST", uri, &headers, body.to_string().into()))
            .await
    }
}

/// The `Authorization` header with this value, if any.
fn authorization_header(value: Option<&str>) -> Vec<(&'static str, &str)> {
    value.map(|v| ("authorization", v)).into_iter().collect()
}

/// A request with these headers.
pub(crate) fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body).unwrap()
}

/// The subscribe URL (`/.well-known/mercure?topic=…`) of these selectors.
pub(crate) fn subscribe_uri(selectors: &[&str]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for selector in selectors {
        query.append_pair("topic", selector);
    }
    format!("/.well-known/mercure?{}", query.finish())
}

/// What the router answered.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    body: Body,
}

impl Answer {
    /// The body as text (only for answers that end).
    pub(crate) async fn text(self) -> String {
        let bytes = axum::body::to_bytes(self.body, 1 << 20).await.unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The body, to read as it comes (a stream's).
    pub(crate) fn into_body(self) -> Body {
        self.body
    }

    /// The body as JSON (`null` when it is not).
    pub(crate) async fn json(self) -> Value {
        serde_json::from_str(&self.text().await).unwrap_or(Value::Null)
    }
}
