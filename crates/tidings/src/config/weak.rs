//! What a configuration that starts may still get wrong: settings that work but leave a door
//! open, each said at start-up with what to do (review L8). They are warnings, not refusals:
//! development and a private network have their reasons.

use std::net::IpAddr;

use super::Config;
use crate::auth::{AuthMode, JwtAlg};

/// The shortest HS256 key not warned about: as long as the hash's output (RFC 7518 §3.2).
const MIN_HS256_KEY_BYTES: usize = 32;

impl Config {
    /// The weak points of this configuration, one sentence each (empty when there is none).
    pub fn weak_points(&self) -> Vec<String> {
        let mut weak = Vec::new();
        let auth = &self.auth;
        if auth.mode == AuthMode::None && !self.listen.ip().is_loopback() {
            weak.push(format!(
                "--auth none on {}, which is not a loopback address: whoever reaches it may publish, read every private update and open any session's stream (?sessionId=); use --auth jwt outside development",
                self.listen
            ));
        }
        if auth.mode == AuthMode::Jwt && auth.alg == JwtAlg::Hs256 && auth.jwks_url.is_none() {
            let keys = [
                &auth.jwt_key,
                &auth.publisher_jwt_key,
                &auth.subscriber_jwt_key,
            ];
            short_keys("", keys, &mut weak);
        }
        for issuer in auth.issuers.iter().filter(|i| i.alg == JwtAlg::Hs256) {
            let keys = [
                &issuer.jwt_key,
                &issuer.publisher_jwt_key,
                &issuer.subscriber_jwt_key,
            ];
            short_keys(&format!("[[issuer]] {:?}: ", issuer.iss), keys, &mut weak);
        }
        for issuer in &auth.issuers {
            if issuer.jwks_url.is_some() && issuer.audience.is_none() && auth.audience.is_none() {
                weak.push(format!("[[issuer]] {:?} with jwks-url but no jwt-audience (its own or the hub's): tokens the provider issued to its other clients verify too; set jwt-audience", issuer.iss));
            }
            plain(
                "an [[issuer]]'s jwks-url",
                issuer.jwks_url.as_deref(),
                "anyone on the way can swap the keys and forge tokens",
                &mut weak,
            );
        }
        if auth.jwks_url.is_some() && auth.audience.is_none() && auth.issuer.is_some() {
            weak.push("jwks-url with jwt-issuer but no jwt-audience: tokens the provider issued to its other clients verify too; set jwt-audience".into());
        }
        if auth.mode == AuthMode::Jwt {
            let jwks = auth.jwks_url.as_deref();
            let callback = auth.callback.as_ref().map(|c| c.url.as_str());
            plain(
                "jwks-url",
                jwks,
                "anyone on the way can swap the keys and forge tokens",
                &mut weak,
            );
            plain(
                "auth-url",
                callback,
                "the clients' cookies and tokens cross the network in the clear",
                &mut weak,
            );
        }
        let webhooks = self.webhooks.as_ref().map(|w| w.url.as_str());
        plain(
            "webhook-url",
            webhooks,
            "the events (signed, but readable) cross the network in the clear",
            &mut weak,
        );
        weak
    }
}

/// A warning for each HS256 key too short: `keys` are `jwt-key`, `publisher-jwt-key` and
/// `subscriber-jwt-key`, of the hub or (`whose`) of an issuer.
fn short_keys(whose: &str, keys: [&Option<String>; 3], weak: &mut Vec<String>) {
    let options = ["jwt-key", "publisher-jwt-key", "subscriber-jwt-key"];
    for (option, key) in options.into_iter().zip(keys) {
        if let Some(key) = key.as_ref().filter(|k| k.len() < MIN_HS256_KEY_BYTES) {
            weak.push(format!(
                "{whose}{option} is {} bytes: an HS256 key shorter than {MIN_HS256_KEY_BYTES} bytes can be guessed offline from any token signed with it; use a random one (openssl rand -base64 32)",
                key.len()
            ));
        }
    }
}

/// A warning when `url` is `http://` to a host other than this one.
fn plain(option: &str, url: Option<&str>, risk: &str, weak: &mut Vec<String>) {
    let Some(url) = url.and_then(|u| reqwest::Url::parse(u).ok()) else {
        return;
    };
    let host = url.host_str().unwrap_or_default();
    let local = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() == "http" && !local {
        weak.push(format!(
            "{option} is http:// to {}: {risk}; use https:// unless the network between is private to you",
            host
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Options;

    fn weak(toml: &str) -> Vec<String> {
        let options: Options = toml::from_str(toml).unwrap();
        options.resolve().unwrap().weak_points()
    }

    #[test]
    fn a_strong_setup_has_no_weak_point() {
        assert_eq!(
            weak("jwt-key = \"0123456789abcdef0123456789abcdef\"\nauth-url = \"https://app.example/auth\"\nwebhook-url = \"http://127.0.0.1:9/hooks\"\nwebhook-secret = \"s\""),
            Vec::<String>::new()
        );
        assert_eq!(weak("auth = \"none\""), Vec::<String>::new(), "on loopback");
    }

    #[test]
    fn each_weak_point_is_named_with_what_to_do() {
        let said = weak("auth = \"none\"\nlisten = \"0.0.0.0:3000\"");
        assert!(
            said.len() == 1 && said[0].contains("--auth none on 0.0.0.0:3000"),
            "{said:?}"
        );
        let said =
            weak("jwt-key = \"secret\"\nsubscriber-jwt-key = \"0123456789abcdef0123456789abcdef\"");
        assert!(
            said.len() == 1 && said[0].starts_with("jwt-key is 6 bytes"),
            "{said:?}"
        );
        let said =
            weak("jwks-url = \"http://idp.example/keys\"\njwt-issuer = \"https://idp.example\"");
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].contains("no jwt-audience"), "{said:?}");
        assert!(
            said[1].starts_with(
                "jwks-url is http:// to idp.example: anyone on the way can swap the keys"
            ),
            "{said:?}"
        );
        let said = weak("jwt-key = \"0123456789abcdef0123456789abcdef\"\nauth-url = \"http://app:8000/auth\"\nwebhook-url = \"http://hooks.example/in\"\nwebhook-secret = \"s\"");
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("auth-url is http:// to app:"),
            "{said:?}"
        );
        assert!(
            said[1].starts_with("webhook-url is http:// to hooks.example"),
            "{said:?}"
        );
    }
}
