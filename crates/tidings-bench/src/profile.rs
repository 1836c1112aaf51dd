//! What `tidings-bench` drives: the hub's URLs, and how each kind of hub is subscribed to and
//! published to.

use std::net::SocketAddr;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Serialize;

/// The API a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Profile {
    /// Tidings (or any Mercure hub): `GET /.well-known/mercure?topic=…`, publish by form POST.
    Mercure,
    /// Tidings' session API: one session per topic, `GET /sse/event-stream?eventName=bench`,
    /// publish by `POST /sse/events`.
    Session,
    /// Nchan: `GET /sub/{channel}` as EventSource, publish by `POST /pub/{channel}`.
    Nchan,
}

/// The event name the session profile subscribes to and sends.
const EVENT_NAME: &str = "bench";

impl Profile {
    /// True when a publish may be sent again without being delivered twice (Tidings stores
    /// an update id once).
    pub(super) fn idempotent(self) -> bool {
        self != Profile::Nchan
    }

    /// The name `--profile` takes.
    pub(super) fn name(self) -> &'static str {
        match self {
            Profile::Mercure => "mercure",
            Profile::Session => "session",
            Profile::Nchan => "nchan",
        }
    }

    /// The path and query a stream on `topic` requests, under the target's base path; with
    /// `broadcast`, a Mercure stream holds that topic too (a session stream always holds the
    /// sessions' broadcasts).
    pub(super) fn stream_path(
        self,
        target: &Target,
        topic: &str,
        broadcast: Option<&str>,
    ) -> String {
        let topic = utf8_percent_encode(topic, NON_ALPHANUMERIC);
        let base = &target.base_path;
        match self {
            Profile::Mercure => match broadcast {
                Some(all) => format!(
                    "{base}/.well-known/mercure?topic={topic}&topic={}",
                    utf8_percent_encode(all, NON_ALPHANUMERIC)
                ),
                None => format!("{base}/.well-known/mercure?topic={topic}"),
            },
            Profile::Session => {
                format!("{base}/sse/event-stream?eventName={EVENT_NAME}&sessionId={topic}")
            }
            Profile::Nchan => format!("{base}/sub/{topic}"),
        }
    }

    /// The request that publishes `payload` (a JSON object) to `topic`, as the update `id`
    /// (Tidings stores an id once, so the same request may be sent again; Nchan takes no id).
    /// A `broadcast` goes to every stream: for the session API, to every session.
    pub(super) fn publish(
        self,
        client: &reqwest::Client,
        target: &Target,
        topic: &str,
        broadcast: bool,
        id: &str,
        payload: String,
    ) -> reqwest::RequestBuilder {
        let base = format!("http://{}{}", target.authority, target.base_path);
        match self {
            Profile::Mercure => {
                let form = form_urlencoded::Serializer::new(String::new())
                    .append_pair("topic", topic)
                    .append_pair("id", id)
                    .append_pair("data", &payload)
                    .finish();
                client
                    .post(format!("{base}/.well-known/mercure"))
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form)
            }
            Profile::Session => {
                let to = match broadcast {
                    true => r#""broadcast":true"#.to_owned(),
                    false => format!(r#""sessionId":{}"#, serde_json::Value::from(topic)),
                };
                client
                    .post(format!("{base}/sse/events"))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(format!(
                        r#"{{{to},"eventName":"{EVENT_NAME}","id":{},"payload":{payload}}}"#,
                        serde_json::Value::from(id)
                    ))
            }
            Profile::Nchan => client
                .post(format!(
                    "{base}/pub/{}",
                    utf8_percent_encode(topic, NON_ALPHANUMERIC)
                ))
                .body(payload),
        }
    }
}

/// A hub instance on this machine, from a `--url`.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The URL as given, for the report.
    pub(super) url: String,
    /// Where to connect.
    pub(super) addr: SocketAddr,
    /// `host:port`, for the `Host` header and the publishers' URLs.
    pub(super) authority: String,
    /// The path the hub is mounted under, without a trailing `/` (usually empty).
    pub(super) base_path: String,
}

impl Target {
    /// Parses and resolves `url`, which must be `http://` and on a loopback address: the bench
    /// loads the machine it runs on and nothing else.
    pub(super) async fn resolve(url: &str) -> Result<Target, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
        if parsed.scheme() != "http" {
            return Err(format!(
                "{url:?}: only http:// URLs can be benchmarked (TLS would measure the TLS library)"
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("{url:?}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("{url:?}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url:?}: {host} has no address"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{url:?} resolves to {}: tidings-bench only loads hubs on this machine \
                 (127.0.0.0/8 or ::1)",
                addr.ip()
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("{url:?}: a base URL takes no query or fragment"));
        }
        let authority = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        Ok(Target {
            url: url.to_owned(),
            addr,
            authority,
            base_path: parsed.path().trim_end_matches('/').to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_plain_http_on_loopback_is_accepted() {
        let t = Target::resolve("http://127.0.0.1:3000/hub/").await.unwrap();
        assert_eq!(t.addr, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(t.base_path, "/hub");
        assert_eq!(
            Profile::Mercure.stream_path(&t, "a/b", None),
            "/hub/.well-known/mercure?topic=a%2Fb"
        );
        assert_eq!(
            Profile::Mercure.stream_path(&t, "a", Some("b/all")),
            "/hub/.well-known/mercure?topic=a&topic=b%2Fall"
        );
        for (url, says) in [
            ("https://127.0.0.1:3000", "only http://"),
            ("http://10.1.2.3:3000", "only loads hubs on this machine"),
            ("http://127.0.0.1:3000/?a=1", "no query"),
            ("not a url", "relative URL"),
        ] {
            let e = Target::resolve(url).await.unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
