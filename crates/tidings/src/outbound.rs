//! The HTTP requests the hub itself makes — to a JWKS endpoint, to the application's
//! authorization callback, to a webhook receiver — share one way of being made: only `http://`
//! and `https://` URLs, checked at start-up; a timeout on the whole exchange; redirects never
//! followed (a moved endpoint is a configuration to fix, and following one would carry the
//! client's cookies elsewhere); answers read up to a bound.

use std::time::Duration;

/// Why an outbound endpoint's configuration is unusable (start-up error).
#[derive(Debug, thiserror::Error)]
pub enum OutboundConfigError {
    /// The option's value is not an `http://` or `https://` URL with a host.
    #[error("{option} {url:?} is not an http:// or https:// URL")]
    NotHttp {
        /// The option (`auth-url`, `jwks-url`, `webhook-url`).
        option: String,
        /// Its value, credentials masked.
        url: String,
    },
    /// The HTTP client cannot be made (its TLS setup).
    #[error("cannot make an HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A setting the endpoint needs is missing or unusable; the message names it.
    #[error("{0}")]
    Setting(&'static str),
}

/// `url`, the value of option `option`, when it is an `http://` or `https://` URL with a host.
///
/// # Errors
/// [`OutboundConfigError`] naming the option otherwise.
pub fn http_url(option: &str, url: &str) -> Result<reqwest::Url, OutboundConfigError> {
    reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        .ok_or_else(|| OutboundConfigError::NotHttp {
            option: option.to_owned(),
            url: crate::bus::redact(url),
        })
}

/// `url` as logs may show it: its credentials (which reqwest sends as Basic auth) masked.
pub fn redacted(url: &reqwest::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // (Both succeed on a URL with a host, which every outbound URL has: see `http_url`.)
    let _ = shown.set_password(None);
    let _ = shown.set_username("***");
    shown.to_string()
}

/// A client whose requests end after `timeout` (connecting included) and that follows no
/// redirect.
///
/// # Errors
/// [`OutboundConfigError`] when the TLS setup cannot be made.
pub fn client(timeout: Duration) -> Result<reqwest::Client, OutboundConfigError> {
    // reqwest is built without a default TLS provider; use ring unless the program chose.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(OutboundConfigError::Client)
}

/// The body of `response`, or an error once it is larger than `max` bytes (read chunk by
/// chunk: a huge answer is never held whole).
///
/// # Errors
/// A sentence saying what went wrong.
pub async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("the answer is larger than {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > max {
            return Err(format!("the answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A short description of a failed request: timed out, refused, or what reqwest says.
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(e))
    } else {
        format!("the request failed: {}", root_cause(e))
    }
}

/// The innermost error's message (reqwest's own says only "error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_taken() {
        for bad in [
            "file:///etc/keys.json",
            "ftp://x/keys",
            "not a url",
            "http://",
        ] {
            let refused = http_url("some-url", bad).unwrap_err();
            assert!(
                refused.to_string().starts_with("some-url "),
                "{bad}: {refused}"
            );
        }
        assert!(http_url("u", "https://id.example/.well-known/jwks.json").is_ok());
        assert!(http_url("u", "http://127.0.0.1:8080/auth").is_ok());
    }
}
