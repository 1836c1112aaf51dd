//! The authorization settings as configuration gives them, and what authorization can fail with.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CallbackSettings;
use crate::outbound::OutboundConfigError;

/// How requests are authorized (`auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// JWTs are required (subscribers may be anonymous if `anonymous` is set).
    #[default]
    Jwt,
    /// Development mode: no tokens at all; everyone may publish and see everything.
    None,
}

/// The signature algorithm of tokens (`jwt-alg`): the client library's, which mints them.
pub use tidings_client::token::JwtAlg;

impl AuthMode {
    /// The names the configuration accepts, as in `tidings.toml`.
    pub const NAMES: [&'static str; 2] = ["jwt", "none"];
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "jwt" => Ok(AuthMode::Jwt),
            "none" => Ok(AuthMode::None),
            _ => Err(format!("unknown authorization mode {name:?}: jwt or none")),
        }
    }
}

/// Why a request was not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required (401).
    #[error("{0}")]
    Missing(&'static str),
    /// A token that does not verify: bad signature, expired, malformed (401).
    #[error("{0}")]
    Invalid(String),
    /// A valid token that does not grant what was asked, or the application's `403` (403).
    #[error("{0}")]
    Forbidden(String),
    /// The application's authorization callback answered `401` (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The application's authorization callback answered `403` (403): its decision about the
    /// caller, not a token's scope (so no bearer challenge).
    #[error("{0}")]
    Denied(String),
    /// The application could not be asked, or its answer not be used: a passing condition,
    /// answered with a retry (503).
    #[error("{0}")]
    Unavailable(String),
}

/// Why the authorization settings themselves are unusable (start-up error, or a reload
/// refused); each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A role has no verification key.
    #[error("no {role} key: set --jwt-key (or --{role}-jwt-key), or run with --auth none for development")]
    NoKey {
        /// `publisher` or `subscriber`.
        role: &'static str,
    },
    /// A role's key is empty.
    #[error("the {role} key is empty")]
    EmptyKey {
        /// `publisher` or `subscriber`.
        role: &'static str,
    },
    /// A PEM key file cannot be read.
    #[error("cannot read the {role} key file {path:?} ({source}); with --jwt-alg RS256 or ES256 the key is the path of a PEM public key")]
    ReadKey {
        /// `publisher` or `subscriber`.
        role: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file is not a PEM key of the algorithm.
    #[error("the {role} key file {path:?} is not a valid PEM key: {source}")]
    BadKey {
        /// `publisher` or `subscriber`.
        role: &'static str,
        /// The file.
        path: String,
        /// What the JWT library found.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// A key set with nothing to tell this hub's tokens from the provider's others.
    #[error("jwks-url without jwt-audience or jwt-issuer accepts every token the identity provider signs — ID tokens and tokens meant for other services too — and a token's sub opens that user's session stream: set jwt-audience (the audience the provider writes into tokens meant for this hub), or jwt-issuer, or jwks-any-audience = true if every token of that provider may be used here")]
    AnyToken,
    /// Settings that exclude each other, or one that cannot be used; the message names them.
    #[error("{0}")]
    Setting(&'static str),
    /// An `[[issuer]]` table that cannot be used; the message names it and says why.
    #[error("[[issuer]] {iss:?}: {problem}")]
    Issuer {
        /// Its `iss`.
        iss: String,
        /// What to fix.
        problem: &'static str,
    },
    /// An endpoint (the JWKS URL, the callback) is unusable.
    #[error(transparent)]
    Outbound(#[from] OutboundConfigError),
    /// A token cannot be minted with the key given.
    #[error(transparent)]
    Mint(#[from] tidings_client::token::MintError),
}

/// The authorization settings, as configuration gives them. (`Debug` shows no key, and the
/// URLs with their credentials masked.)
#[derive(Clone, Default)]
pub struct AuthSettings {
    /// `jwt` or `none`.
    pub mode: AuthMode,
    /// Key for both roles (a secret for HS256, a PEM file path for RS256/ES256).
    pub jwt_key: Option<String>,
    /// Key for publishers only (overrides `jwt_key`).
    pub publisher_jwt_key: Option<String>,
    /// Key for subscribers only (overrides `jwt_key`).
    pub subscriber_jwt_key: Option<String>,
    /// Signature algorithm.
    pub alg: JwtAlg,
    /// Subscribers may connect without a token (public updates only).
    pub anonymous: bool,
    /// Seconds of clock skew tolerated on `exp`, `nbf`, `iat`.
    pub leeway_secs: u64,
    /// The claim that names a subscriber's session (default `sub`).
    pub session_claim: String,
    /// The `iss` every token must carry, when set.
    pub issuer: Option<String>,
    /// The audience every token's `aud` must name, when set.
    pub audience: Option<String>,
    /// A JWKS endpoint the verification keys come from (instead of the keys above).
    pub jwks_url: Option<String>,
    /// How often the key set is fetched again.
    pub jwks_refresh: Duration,
    /// With `jwks_url` and neither `issuer` nor `audience`: every token the provider signs is
    /// accepted (refused at start-up otherwise: see [`AuthConfigError::AnyToken`]).
    pub jwks_any_audience: bool,
    /// The application's authorization callback for streams without a valid token.
    pub callback: Option<CallbackSettings>,
    /// Issuers trusted with keys of their own (`[[issuer]]`): a token whose `iss` names one is
    /// verified with its keys only; other tokens with the keys above.
    pub issuers: Vec<IssuerSettings>,
}

impl AuthSettings {
    /// The issuers the protected resource metadata names as authorization servers.
    pub fn authorization_servers(&self) -> impl Iterator<Item = &str> {
        self.issuers
            .iter()
            .filter(|i| i.authorization_server)
            .map(|i| i.iss.as_str())
    }
}

/// An issuer trusted with keys of its own — Mercure 1.0's `issuer` blocks: an identity
/// provider and the application may both mint tokens, each verified only with its own keys
/// (a key of one must never verify a token claiming to come from the other). A token whose
/// `iss` is this issuer's is verified with these keys, and must name `audience` (the hub's
/// `jwt-audience` when this one sets none). (`Debug` shows no key.)
#[derive(Clone, Default, PartialEq)]
pub struct IssuerSettings {
    /// The `iss` its tokens carry.
    pub iss: String,
    /// The algorithm of its configured keys.
    pub alg: JwtAlg,
    /// Its key for both roles.
    pub jwt_key: Option<String>,
    /// Its key for publishers only; without one (and without `jwt_key`), its tokens do not
    /// publish.
    pub publisher_jwt_key: Option<String>,
    /// Its key for subscribers only; without one (and without `jwt_key`), its tokens do not
    /// subscribe.
    pub subscriber_jwt_key: Option<String>,
    /// Its JWKS endpoint (instead of keys), for both roles.
    pub jwks_url: Option<String>,
    /// The audience its tokens must name, when it is not the hub's.
    pub audience: Option<String>,
    /// Listed as an authorization server in the protected resource metadata.
    pub authorization_server: bool,
}

impl std::fmt::Debug for IssuerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |key: &Option<String>| key.as_ref().map(|_| "***");
        f.debug_struct("IssuerSettings")
            .field("iss", &self.iss)
            .field("alg", &self.alg)
            .field("jwt_key", &hidden(&self.jwt_key))
            .field("publisher_jwt_key", &hidden(&self.publisher_jwt_key))
            .field("subscriber_jwt_key", &hidden(&self.subscriber_jwt_key))
            .field(
                "jwks_url",
                &self.jwks_url.as_deref().map(crate::bus::redact),
            )
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |key: &Option<String>| key.as_ref().map(|_| "***");
        let url = |url: Option<&String>| url.map(|u| crate::bus::redact(u));
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("jwt_key", &hidden(&self.jwt_key))
            .field("publisher_jwt_key", &hidden(&self.publisher_jwt_key))
            .field("subscriber_jwt_key", &hidden(&self.subscriber_jwt_key))
            .field("alg", &self.alg)
            .field("anonymous", &self.anonymous)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks_url", &url(self.jwks_url.as_ref()))
            .field("auth_url", &url(self.callback.as_ref().map(|c| &c.url)))
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

/// The claim that names a subscriber's session: `session-claim`, `sub` when it is empty.
pub(super) fn session_claim(settings: &AuthSettings) -> &str {
    match settings.session_claim.as_str() {
        "" => "sub",
        claim => claim,
    }
}
