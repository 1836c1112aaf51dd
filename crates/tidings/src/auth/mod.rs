//! Authorization: verifying JWTs and turning their claims into compiled rights.
//!
//! Two token formats, signed with HS256 (default), RS256 or ES256:
//!
//! - the classic Mercure token: `{"mercure": {"publish": [selectors], "subscribe":
//!   [selectors], "payload": …}}`; `exp`, `nbf` and `iat` are optional and checked when
//!   present, with a configurable leeway; a token of only `{"mercure": {"publish": ["*"]}}` is a
//!   valid publisher;
//! - the Mercure 1.0 access token (RFC 9068: header `typ: at+jwt`, `exp` required), whose rights
//!   are its `authorization_details` (RFC 9396) of type [`AUTHORIZATION_DETAIL_TYPE`]: each
//!   with `actions` (`publish`, `subscribe`), `topics` matchers (`{"match": …, "match_type":
//!   "exact" | "urlpattern"}`, `"*"` for every topic) and, for subscribers, a `payload`. Details
//!   of other types are someone else's and skipped; a malformed Mercure one refuses the token.
//!
//! The keys are configured (`--jwt-key`, a secret or PEM files), or come from a JWKS endpoint
//! (`--jwks-url`, module `jwks`) by each token's `kid`. With `--jwt-issuer` and
//! `--jwt-audience`, every token must carry that `iss` and name that audience in `aud`. A
//! token is verified once, when a request arrives; its selectors are compiled through the
//! shared [`SelectorCache`].
//!
//! With `--auth-url` (module `callback`), a new stream that presents no token that verifies is
//! decided by the application itself, told the client's cookies and headers: for applications
//! that know their users by a session cookie and mint no JWT for browsers.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::selector::{Selector, SelectorCache};

mod callback;
mod jwks;
use crate::metrics::Metrics;
use crate::outbound::OutboundConfigError;
use crate::subscriber::Access;
use crate::update::{SessionId, Topic};
pub use callback::{
    Api, Ask, CallbackSettings, StreamRequest, CACHE_ENTRIES, FORWARDED, MAX_ANSWER_BYTES,
};
use callback::{Callback, Decision};
use jwks::KeySet;

/// The `type` of a Mercure authorization detail in an access token (Mercure 1.0).
pub const AUTHORIZATION_DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";

/// Longest session id accepted, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 256;

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

/// The signature algorithm of tokens (`jwt-alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum JwtAlg {
    /// HMAC with SHA-256; keys are shared secrets.
    #[default]
    #[serde(rename = "HS256", alias = "hs256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256; keys are PEM files.
    #[serde(rename = "RS256", alias = "rs256")]
    Rs256,
    /// ECDSA P-256 with SHA-256; keys are PEM files.
    #[serde(rename = "ES256", alias = "es256")]
    Es256,
}

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

impl JwtAlg {
    /// The names the configuration accepts (in any case), as in `tidings.toml`.
    pub const NAMES: [&'static str; 3] = ["HS256", "RS256", "ES256"];
}

impl std::str::FromStr for JwtAlg {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.to_ascii_uppercase().as_str() {
            "HS256" => Ok(JwtAlg::Hs256),
            "RS256" => Ok(JwtAlg::Rs256),
            "ES256" => Ok(JwtAlg::Es256),
            _ => Err(format!(
                "unknown JWT algorithm {name:?}: HS256, RS256 or ES256"
            )),
        }
    }
}

impl JwtAlg {
    fn algorithm(self) -> Algorithm {
        match self {
            JwtAlg::Hs256 => Algorithm::HS256,
            JwtAlg::Rs256 => Algorithm::RS256,
            JwtAlg::Es256 => Algorithm::ES256,
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
    /// The application could not be asked, or its answer not be used: a passing condition,
    /// answered with a retry (503).
    #[error("{0}")]
    Unavailable(String),
}

/// Why the authorization settings themselves are unusable (start-up error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthConfigError(String);

impl From<OutboundConfigError> for AuthConfigError {
    fn from(e: OutboundConfigError) -> Self {
        AuthConfigError(e.0)
    }
}

/// The claims Tidings reads from a token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// The Mercure claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mercure: Option<MercureClaim>,
    /// RFC 9396 authorization details: an access token's rights (Mercure 1.0), read only from
    /// a token of type `at+jwt`. Entries are kept raw: those of other types are not ours to
    /// parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<Vec<serde_json::Value>>,
    /// Every other claim (`sub`, `exp`, a configured session claim, …).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// `{"publish": [...], "subscribe": [...], "payload": ...}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MercureClaim {
    /// Selectors of the topics the bearer may publish to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Selectors of the topics whose private updates the bearer may receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    /// Arbitrary data about the subscriber (exposed by the subscriptions API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// The authorization settings, as configuration gives them.
#[derive(Debug, Clone, Default)]
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
    /// The application's authorization callback for streams without a valid token.
    pub callback: Option<CallbackSettings>,
}

/// One role's verifier: where its keys come from, and what else a token must satisfy.
enum Verifier {
    /// One configured key, with its algorithm.
    Key {
        key: DecodingKey,
        validation: Validation,
    },
    /// The keys of a JWKS endpoint, chosen by the token's `kid`, each with its own algorithm.
    Set {
        keys: Arc<KeySet>,
        validation: Validation,
    },
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

/// The verifiers of both roles (absent with `--auth none`), replaced as a whole on reload.
#[derive(Debug)]
struct Keys {
    publisher: Option<Verifier>,
    subscriber: Option<Verifier>,
    leeway_secs: u64,
}

/// Verifies tokens for both roles and compiles their claims.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    /// A std lock, not a tokio one: held only to clone the `Arc`, never across an await.
    keys: RwLock<Arc<Keys>>,
    anonymous: bool,
    session_claim: String,
    selectors: Arc<SelectorCache>,
    /// The JWKS endpoint's keys (`jwks-url`), kept across reloads, with their refresh period.
    key_set: Option<(Arc<KeySet>, Duration)>,
    /// The application's authorization callback (`auth-url`).
    callback: Option<Callback>,
}

/// What a subscriber's credentials grant.
#[derive(Debug, Clone)]
pub struct SubscriberIdentity {
    /// Its rights to private updates.
    pub access: Access,
    /// Its session, from the session claim (absent for anonymous subscribers).
    pub session: Option<SessionId>,
    /// True when no token was presented.
    pub anonymous: bool,
    /// The token's `mercure.payload` claim (shown by the subscriptions API).
    pub payload: Option<serde_json::Value>,
    /// When the token stops verifying (one second past `exp` plus the leeway), if it expires.
    pub expires: Option<SystemTime>,
}

/// What a publisher's credentials grant.
#[derive(Debug, Clone)]
pub struct PublisherRights {
    /// `None` means everything (`--auth none`).
    selectors: Option<Vec<Selector>>,
}

impl PublisherRights {
    /// Checks that every topic may be published to.
    ///
    /// # Errors
    /// [`AuthError::Forbidden`] naming the first topic the token does not cover.
    pub fn check(&self, topics: &[Topic]) -> Result<(), AuthError> {
        let Some(selectors) = &self.selectors else {
            return Ok(());
        };
        match topics
            .iter()
            .find(|t| !selectors.iter().any(|s| s.matches(t.as_str())))
        {
            Some(t) => Err(AuthError::Forbidden(format!(
                "the token's mercure.publish claim does not cover topic {:?}",
                t.as_str()
            ))),
            None => Ok(()),
        }
    }
}

impl Keys {
    /// Builds both roles' verifiers, reading PEM key files if the algorithm needs them.
    fn load(settings: &AuthSettings, set: Option<&Arc<KeySet>>) -> Result<Keys, AuthConfigError> {
        let configured = [
            &settings.jwt_key,
            &settings.publisher_jwt_key,
            &settings.subscriber_jwt_key,
        ];
        if set.is_some() && configured.iter().any(|k| k.is_some()) {
            return Err(AuthConfigError(
                "jwks-url and jwt-key (or publisher-jwt-key, subscriber-jwt-key) exclude each other: keys come from one place".into(),
            ));
        }
        let verifier = |role: &str,
                        specific: &Option<String>|
         -> Result<Option<Verifier>, AuthConfigError> {
            if settings.mode == AuthMode::None {
                return Ok(None);
            }
            if let Some(set) = set {
                let mut validation = validation(settings);
                validation.algorithms.clear();
                return Ok(Some(Verifier::Set {
                    keys: set.clone(),
                    validation,
                }));
            }
            let Some(value) = specific.as_ref().or(settings.jwt_key.as_ref()) else {
                return Err(AuthConfigError(format!(
                    "no {role} key: set --jwt-key (or --{role}-jwt-key), or run with --auth none for development"
                )));
            };
            if value.is_empty() {
                return Err(AuthConfigError(format!("the {role} key is empty")));
            }
            let validation = validation(settings);
            Ok(Some(Verifier::Key {
                key: load_key(settings.alg, value, role)?,
                validation,
            }))
        };
        Ok(Keys {
            publisher: verifier("publisher", &settings.publisher_jwt_key)?,
            subscriber: verifier("subscriber", &settings.subscriber_jwt_key)?,
            leeway_secs: settings.leeway_secs,
        })
    }
}

/// What every token must satisfy besides its signature: `exp` and `nbf` when present, with the
/// leeway; `iss` and `aud` when configured.
fn validation(settings: &AuthSettings) -> Validation {
    let mut validation = Validation::new(settings.alg.algorithm());
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    if let Some(audience) = &settings.audience {
        validation.set_audience(&[audience]);
        validation.validate_aud = true;
        validation.required_spec_claims.insert("aud".to_owned());
    }
    validation.leeway = settings.leeway_secs;
    validation
}

fn load_key(alg: JwtAlg, value: &str, role: &str) -> Result<DecodingKey, AuthConfigError> {
    match alg {
        JwtAlg::Hs256 => Ok(DecodingKey::from_secret(value.as_bytes())),
        JwtAlg::Rs256 | JwtAlg::Es256 => {
            let pem = std::fs::read(value).map_err(|e| {
                AuthConfigError(format!(
                    "cannot read the {role} key file {value:?} ({e}); with --jwt-alg RS256 or ES256 the key is the path of a PEM public key"
                ))
            })?;
            let key = if alg == JwtAlg::Rs256 {
                DecodingKey::from_rsa_pem(&pem)
            } else {
                DecodingKey::from_ec_pem(&pem)
            };
            key.map_err(|e| {
                AuthConfigError(format!(
                    "the {role} key file {value:?} is not a valid PEM key: {e}"
                ))
            })
        }
    }
}

impl Authenticator {
    /// Builds the authenticator, reading PEM key files if the algorithm needs them.
    ///
    /// # Errors
    /// [`AuthConfigError`] when `auth = jwt` but a role has no key, a key file cannot be
    /// read or parsed, or a URL (`jwks-url`, `auth-url`) is not `http(s)://`.
    pub fn new(
        settings: &AuthSettings,
        selectors: Arc<SelectorCache>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuthConfigError> {
        let key_set = match &settings.jwks_url {
            Some(url) if settings.mode == AuthMode::Jwt => Some(KeySet::new(url)?),
            _ => None,
        };
        let callback = match &settings.callback {
            Some(_) if settings.mode == AuthMode::None => {
                return Err(AuthConfigError(
                    "auth-url asks the application about subscribers, but --auth none lets everyone in: use --auth jwt (publishers then need a token)".into(),
                ))
            }
            Some(callback) => Some(Callback::new(callback, selectors.clone(), metrics)?),
            None => None,
        };
        Ok(Authenticator {
            callback,
            mode: settings.mode,
            keys: RwLock::new(Arc::new(Keys::load(settings, key_set.as_ref())?)),
            anonymous: settings.anonymous,
            session_claim: session_claim(settings).to_owned(),
            selectors,
            key_set: key_set.map(|set| (set, settings.jwks_refresh)),
        })
    }

    /// With `jwks-url`: fetches the key set (a failure is logged; tokens are refused until a
    /// later fetch succeeds) and keeps it fresh from then on.
    pub async fn start(&self) {
        if let Some((set, every)) = &self.key_set {
            set.start(*every).await;
        }
    }

    /// Takes the keys, algorithm and leeway of `settings` for every token verified from now
    /// on (key rotation without a restart). Streams already open stay open.
    ///
    /// # Errors
    /// [`AuthConfigError`] when a key cannot be loaded, or `settings` changes what only a
    /// restart can (`auth`, `anonymous`, `session-claim`); the keys in use stay.
    pub fn reload(&self, settings: &AuthSettings) -> Result<(), AuthConfigError> {
        let jwks_url = self.key_set.as_ref().map(|(set, _)| set.url());
        if settings.mode != self.mode
            || settings.anonymous != self.anonymous
            || session_claim(settings) != self.session_claim
            || settings.jwks_url.as_deref() != jwks_url
            || settings.callback.as_ref() != self.callback.as_ref().map(Callback::settings)
        {
            return Err(AuthConfigError(
                "auth, anonymous, session-claim, jwks-url and the auth-url settings change only with a restart".into(),
            ));
        }
        let keys = Arc::new(Keys::load(
            settings,
            self.key_set.as_ref().map(|(set, _)| set),
        )?);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The authorization mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// True when streams without a valid token are decided by the application (`auth-url`).
    pub fn asks_application(&self) -> bool {
        self.callback.is_some()
    }

    /// Verifies a token; its claims, and whether it is a Mercure 1.0 access token.
    async fn verify(
        &self,
        verifier: &Verifier,
        token: &str,
        leeway_secs: u64,
    ) -> Result<(Claims, bool), AuthError> {
        let refused = |e: jsonwebtoken::errors::Error| {
            AuthError::Invalid(format!("the token was refused: {}", describe(&e)))
        };
        let data = match verifier {
            Verifier::Key { key, validation } => {
                jsonwebtoken::decode::<Claims>(token, key, validation).map_err(refused)?
            }
            Verifier::Set { keys, validation } => {
                let header = jsonwebtoken::decode_header(token).map_err(refused)?;
                let kid = header.kid.ok_or_else(|| {
                    AuthError::Invalid(
                        "the token was refused: it names no key (kid), and the keys come from a key set".into(),
                    )
                })?;
                let key = keys.key(&kid).await.ok_or_else(|| {
                    let kid: String = kid.chars().take(64).collect();
                    AuthError::Invalid(format!(
                        "the token was refused: the key set has no key {kid:?}"
                    ))
                })?;
                let mut validation = validation.clone();
                validation.algorithms = vec![key.alg];
                jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(refused)?
            }
        };
        let access_token = is_access_token(data.header.typ.as_deref());
        let claims = data.claims;
        if access_token && !claims.other.contains_key("exp") {
            return Err(AuthError::Invalid(
                "the token was refused: an access token (typ at+jwt) must carry exp".into(),
            ));
        }
        if let Some(iat) = claims.other.get("iat") {
            let iat = iat.as_f64().ok_or_else(|| {
                AuthError::Invalid("the token's iat claim is not a number".into())
            })?;
            let now = jsonwebtoken::get_current_timestamp() as f64;
            if iat > now + leeway_secs as f64 {
                return Err(AuthError::Invalid(
                    "the token was issued in the future (iat)".into(),
                ));
            }
        }
        Ok((claims, access_token))
    }

    fn compile(&self, matchers: &[Matcher]) -> Result<Vec<Selector>, AuthError> {
        matchers
            .iter()
            .map(|m| {
                match m {
                    Matcher::Selector(s) => self.selectors.get(s),
                    Matcher::Exact(s) => self.selectors.get_exact(s),
                    Matcher::UrlPattern(s) => self.selectors.get_url_pattern(s),
                }
                .map_err(|e| {
                    AuthError::Invalid(format!("the token's claim holds a bad selector: {e}"))
                })
            })
            .collect()
    }

    /// Verifies a publisher's token.
    ///
    /// # Errors
    /// [`AuthError::Missing`] without a token, [`AuthError::Invalid`] for a token that does not
    /// verify, [`AuthError::Forbidden`] for a token without a `mercure.publish` claim.
    pub async fn publisher(&self, token: Option<&str>) -> Result<PublisherRights, AuthError> {
        let keys = self.keys();
        let Some(verifier) = &keys.publisher else {
            return Ok(PublisherRights { selectors: None });
        };
        let token = token.ok_or(AuthError::Missing(
            "publishing needs a JWT: send it as 'Authorization: Bearer <token>', the mercureAuthorization cookie or the authorization query parameter",
        ))?;
        let (claims, access_token) = self.verify(verifier, token, keys.leeway_secs).await?;
        let publish = Grants::of(claims, access_token)?.publish.ok_or_else(|| {
            AuthError::Forbidden(match access_token {
                true => format!(
                    "the token has no authorization detail of type {AUTHORIZATION_DETAIL_TYPE} with the publish action"
                ),
                false => "the token has no mercure.publish claim".into(),
            })
        })?;
        Ok(PublisherRights {
            selectors: Some(self.compile(&publish)?),
        })
    }

    /// Verifies a subscriber: by its token when it presents one that verifies; otherwise, for
    /// a stream (`ask`) with `auth-url` set, by the application's decision; otherwise
    /// anonymously when allowed.
    ///
    /// # Errors
    /// [`AuthError::Missing`] without a token when anonymous subscribers are not allowed,
    /// [`AuthError::Invalid`] for a token that does not verify; with `auth-url`, the
    /// application's refusal ([`AuthError::Unauthenticated`], [`AuthError::Forbidden`]) or
    /// [`AuthError::Unavailable`] when it could not decide.
    pub async fn subscriber(
        &self,
        token: Option<&str>,
        ask: Option<Ask>,
    ) -> Result<SubscriberIdentity, AuthError> {
        let keys = self.keys();
        let Some(verifier) = &keys.subscriber else {
            return Ok(SubscriberIdentity {
                access: Access::everything(),
                session: None,
                anonymous: token.is_none(),
                payload: None,
                expires: None,
            });
        };
        let verified = match token {
            Some(token) => Some(
                self.token_subscriber(verifier, token, keys.leeway_secs)
                    .await,
            ),
            None => None,
        };
        match (verified, self.callback.as_ref().zip(ask)) {
            (Some(Ok(identity)), _) => Ok(identity),
            (_, Some((callback, ask))) => Self::granted(callback.decide(ask).await),
            (Some(Err(refused)), None) => Err(refused),
            (None, None) if self.anonymous => Ok(SubscriberIdentity {
                access: Access::public_only(),
                session: None,
                anonymous: true,
                payload: None,
                expires: None,
            }),
            (None, None) => Err(AuthError::Missing(
                "subscribing needs a JWT: send it as 'Authorization: Bearer <token>', the mercureAuthorization cookie or the authorization query parameter",
            )),
        }
    }

    /// The subscriber the application's decision describes.
    fn granted(decision: Result<Arc<Decision>, Arc<str>>) -> Result<SubscriberIdentity, AuthError> {
        // Why is logged (module `callback`); it is the application's business, not the
        // client's.
        let decision = decision.map_err(|_| {
            AuthError::Unavailable(
                "the application could not authorize the stream just now; retry later".into(),
            )
        })?;
        match decision.as_ref() {
            Decision::Refused {
                status: 401,
                detail,
            } => Err(AuthError::Unauthenticated(detail.clone())),
            Decision::Refused { detail, .. } => Err(AuthError::Forbidden(detail.clone())),
            Decision::Granted(grant) => {
                let access = Access::from_claim(grant.subscribe.clone());
                Ok(SubscriberIdentity {
                    access: match &grant.session {
                        Some(s) => access.with_session(s),
                        None => access,
                    },
                    session: grant.session.clone(),
                    anonymous: false,
                    payload: grant.payload.clone(),
                    expires: grant.expires,
                })
            }
        }
    }

    /// The subscriber a token describes, once it verifies.
    async fn token_subscriber(
        &self,
        verifier: &Verifier,
        token: &str,
        leeway_secs: u64,
    ) -> Result<SubscriberIdentity, AuthError> {
        let (claims, access_token) = self.verify(verifier, token, leeway_secs).await?;
        // `exp` was checked by the verification, so it is a whole number of seconds here when
        // present. The token verifies while the current second is at most `exp` plus the
        // leeway: it stops verifying one second after that. An `exp` too far away for the
        // clock (tokens that "never expire" use u64::MAX) never expires.
        let expires = claims
            .other
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .and_then(|exp| exp.checked_add(leeway_secs.saturating_add(1)))
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
        // A session claim that cannot name a session (not a string, empty, too long) leaves
        // the subscriber without one: plain Mercure tokens must keep working whatever their
        // `sub` is; only the session API insists on a session.
        let session = match claims.other.get(&self.session_claim) {
            Some(serde_json::Value::String(s)) => SessionId::new(s, MAX_SESSION_ID_LEN).ok(),
            _ => None,
        };
        let Grants {
            subscribe, payload, ..
        } = Grants::of(claims, access_token)?;
        let access = Access::from_claim(self.compile(&subscribe)?);
        let access = match &session {
            Some(s) => access.with_session(s),
            None => access,
        };
        Ok(SubscriberIdentity {
            access,
            session,
            anonymous: false,
            payload,
            expires,
        })
    }
}

/// True for the header `typ` of an RFC 9068 access token: `at+jwt`, in any case, with or
/// without the `application/` prefix.
fn is_access_token(typ: Option<&str>) -> bool {
    typ.is_some_and(|typ| {
        let typ = match typ.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
            _ => typ,
        };
        typ.eq_ignore_ascii_case("at+jwt")
    })
}

/// A topic matcher of a token, before it is compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// A classic `mercure` claim's selector: `*`, a URI template or an exact topic.
    Selector(String),
    /// An authorization detail's `exact` match (braces are characters).
    Exact(String),
    /// An authorization detail's `urlpattern` match.
    UrlPattern(String),
}

/// What a verified token grants, whatever its format.
#[derive(Debug, Default, PartialEq)]
struct Grants {
    /// What it may publish to; `None`: it grants no publishing at all.
    publish: Option<Vec<Matcher>>,
    /// Whose private updates it may receive.
    subscribe: Vec<Matcher>,
    /// Data about the subscriber (the subscriptions API shows it).
    payload: Option<serde_json::Value>,
}

/// A Mercure authorization detail as the token carries it (its `type` already checked).
#[derive(Debug, Deserialize)]
struct Detail {
    actions: Vec<String>,
    topics: Vec<DetailTopic>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

/// One of a detail's `topics`.
#[derive(Debug, Deserialize)]
struct DetailTopic {
    #[serde(rename = "match")]
    pattern: String,
    #[serde(default)]
    match_type: Option<String>,
}

impl Grants {
    /// The grants of a verified token: an access token's from its authorization details, any
    /// other's from its `mercure` claim.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] for a malformed Mercure authorization detail.
    fn of(claims: Claims, access_token: bool) -> Result<Grants, AuthError> {
        if !access_token {
            let Some(m) = claims.mercure else {
                return Ok(Grants::default());
            };
            let selectors = |list: Vec<String>| list.into_iter().map(Matcher::Selector).collect();
            return Ok(Grants {
                publish: m.publish.map(selectors),
                subscribe: m.subscribe.map(selectors).unwrap_or_default(),
                payload: m.payload,
            });
        }
        let mut grants = Grants::default();
        let details = claims.authorization_details.unwrap_or_default();
        let ours = details
            .into_iter()
            .filter(|d| d.get("type").and_then(|t| t.as_str()) == Some(AUTHORIZATION_DETAIL_TYPE));
        for (n, detail) in ours.enumerate() {
            let bad = |why: String| {
                AuthError::Invalid(format!(
                    "the token was refused: its Mercure authorization detail #{} {why}",
                    n + 1
                ))
            };
            let detail: Detail =
                serde_json::from_value(detail).map_err(|e| bad(format!("is malformed: {e}")))?;
            if detail.actions.is_empty() || detail.topics.is_empty() {
                return Err(bad("needs at least one action and one topic".into()));
            }
            let mut matchers = Vec::with_capacity(detail.topics.len());
            for topic in detail.topics {
                matchers.push(
                    match (topic.pattern.as_str(), topic.match_type.as_deref()) {
                        ("", _) => return Err(bad("has an empty match".into())),
                        ("*", _) => Matcher::Selector("*".into()),
                        (_, None | Some("exact")) => Matcher::Exact(topic.pattern),
                        (_, Some("urlpattern")) => Matcher::UrlPattern(topic.pattern),
                        (_, Some(other)) => {
                            return Err(bad(format!(
                                "has the match_type {other:?}: exact or urlpattern"
                            )))
                        }
                    },
                );
            }
            for action in &detail.actions {
                match action.as_str() {
                    "publish" => grants
                        .publish
                        .get_or_insert_with(Vec::new)
                        .extend(matchers.iter().cloned()),
                    "subscribe" => {
                        grants.subscribe.extend(matchers.iter().cloned());
                        if grants.payload.is_none() {
                            grants.payload = detail.payload.clone();
                        }
                    }
                    other => {
                        return Err(bad(format!(
                            "has the action {other:?}: publish or subscribe"
                        )))
                    }
                }
            }
        }
        Ok(grants)
    }
}

/// A short, safe description of a JWT error (never the token itself).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "it has expired (exp)".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "its signature does not match the configured key".into(),
        ErrorKind::InvalidAlgorithm => {
            "it is signed with another algorithm than the configured one".into()
        }
        ErrorKind::InvalidToken => "it is not a well-formed JWT".into(),
        ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            "it is not a well-formed JWT".into()
        }
        ErrorKind::InvalidClaimFormat(c) => format!("its {c} claim is malformed"),
        ErrorKind::InvalidIssuer => "its iss claim is not the configured issuer".into(),
        ErrorKind::InvalidAudience => "its aud claim does not name the configured audience".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("it has no {c} claim"),
        other => format!("{other:?}"),
    }
}

/// The claim that names a subscriber's session: `session-claim`, `sub` when it is empty.
fn session_claim(settings: &AuthSettings) -> &str {
    match settings.session_claim.as_str() {
        "" => "sub",
        claim => claim,
    }
}

/// Mints a token for development and tests.
///
/// `key` is the HS256 secret, or for RS256/ES256 the path of a PEM *private* key.
///
/// # Errors
/// [`AuthConfigError`] when the key cannot be read or used.
pub fn mint(alg: JwtAlg, key: &str, claims: &Claims) -> Result<String, AuthConfigError> {
    let encoding = match alg {
        JwtAlg::Hs256 => EncodingKey::from_secret(key.as_bytes()),
        JwtAlg::Rs256 | JwtAlg::Es256 => {
            let pem = std::fs::read(key).map_err(|e| {
                AuthConfigError(format!("cannot read the signing key file {key:?}: {e}"))
            })?;
            let k = if alg == JwtAlg::Rs256 {
                EncodingKey::from_rsa_pem(&pem)
            } else {
                EncodingKey::from_ec_pem(&pem)
            };
            k.map_err(|e| {
                AuthConfigError(format!("{key:?} is not a PEM private key for {alg:?}: {e}"))
            })?
        }
    };
    jsonwebtoken::encode(&Header::new(alg.algorithm()), claims, &encoding)
        .map_err(|e| AuthConfigError(format!("cannot sign the token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> AuthSettings {
        AuthSettings {
            jwt_key: Some("secret".into()),
            session_claim: "sub".into(),
            ..AuthSettings::default()
        }
    }

    fn auth(s: &AuthSettings) -> Authenticator {
        Authenticator::new(
            s,
            Arc::new(SelectorCache::new(100, 1000)),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    fn token(key: &str, claims: serde_json::Value) -> String {
        let claims: Claims = serde_json::from_value(claims).unwrap();
        mint(JwtAlg::Hs256, key, &claims).unwrap()
    }

    fn topic(s: &str) -> Topic {
        Topic::new(s, 1000).unwrap()
    }

    /// An RFC 9068 access token (`typ` as given) with these claims, signed with `key`.
    fn access_token(typ: &str, key: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(typ.into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
    }

    fn detail(actions: &[&str], topics: serde_json::Value) -> serde_json::Value {
        json!({"type": AUTHORIZATION_DETAIL_TYPE, "actions": actions, "topics": topics})
    }

    const FAR: u64 = 4_102_444_800;

    #[tokio::test]
    async fn a_mercure_1_0_access_token_grants_what_its_authorization_details_say() {
        let a = auth(&settings());
        let t = access_token(
            "at+jwt",
            "secret",
            json!({"exp": FAR, "sub": "alice", "authorization_details": [
                {"type": "https://other.example/detail", "anything": true},
                detail(&["publish"], json!([
                    {"match": "https://example.com/books/{id}"},
                    {"match": "https://example.com/films/:id", "match_type": "urlpattern"},
                ])),
                detail(&["subscribe"], json!([{"match": "https://example.com/orders/7"}])),
                {"type": AUTHORIZATION_DETAIL_TYPE, "actions": ["subscribe"],
                 "topics": [{"match": "urn:x", "match_type": "exact"}], "payload": {"role": "a"}},
            ]}),
        );
        let rights = a.publisher(Some(&t)).await.unwrap();
        // `exact` is exact: braces are characters, not a template.
        rights
            .check(&[topic("https://example.com/books/{id}")])
            .unwrap();
        assert!(rights
            .check(&[topic("https://example.com/books/1")])
            .is_err());
        rights
            .check(&[topic("https://example.com/films/9")])
            .unwrap();
        assert!(rights
            .check(&[topic("https://example.com/orders/7")])
            .is_err());
        let id = a.subscriber(Some(&t), None).await.unwrap();
        assert!(id
            .access
            .may_see_private(&[topic("https://example.com/orders/7")]));
        assert!(id.access.may_see_private(&[topic("urn:x")]));
        assert!(!id
            .access
            .may_see_private(&[topic("https://example.com/books/{id}")]));
        assert_eq!(id.payload, Some(json!({"role": "a"})));
        assert_eq!(id.session.unwrap().as_str(), "alice");
        // `*` is every topic; the typ is read in any case, with or without `application/`.
        for typ in ["AT+JWT", "application/at+jwt"] {
            let t = access_token(
                typ,
                "secret",
                json!({"exp": FAR, "authorization_details": [detail(&["publish", "subscribe"], json!([{"match": "*"}]))]}),
            );
            a.publisher(Some(&t))
                .await
                .unwrap()
                .check(&[topic("anything")])
                .unwrap();
            assert!(a
                .subscriber(Some(&t), None)
                .await
                .unwrap()
                .access
                .may_see_private(&[topic("x")]));
        }
    }

    #[tokio::test]
    async fn an_access_token_is_read_by_its_details_and_must_expire() {
        let a = auth(&settings());
        // Without a Mercure detail with the publish action, nothing may be published (a
        // `mercure` claim in an access token is not read).
        let subscriber_only = access_token(
            "at+jwt",
            "secret",
            json!({"exp": FAR, "mercure": {"publish": ["*"]},
                   "authorization_details": [detail(&["subscribe"], json!([{"match": "*"}]))]}),
        );
        let refused = a.publisher(Some(&subscriber_only)).await.unwrap_err();
        assert!(
            matches!(&refused, AuthError::Forbidden(m) if m.contains("publish action")),
            "{refused:?}"
        );
        let no_exp = access_token(
            "at+jwt",
            "secret",
            json!({"authorization_details": [detail(&["publish"], json!([{"match": "*"}]))]}),
        );
        assert!(
            matches!(a.publisher(Some(&no_exp)).await, Err(AuthError::Invalid(m)) if m.contains("exp"))
        );
        // A classic token keeps its `mercure` claim, whatever else it carries.
        let classic = token(
            "secret",
            json!({"mercure": {"publish": ["*"]},
                   "authorization_details": [detail(&["subscribe"], json!([{"match": "x"}]))]}),
        );
        a.publisher(Some(&classic))
            .await
            .unwrap()
            .check(&[topic("y")])
            .unwrap();
    }

    #[tokio::test]
    async fn a_malformed_mercure_authorization_detail_refuses_the_token() {
        let a = auth(&settings());
        for (bad, says) in [
            (
                detail(&["delete"], json!([{"match": "*"}])),
                "action \"delete\"",
            ),
            (detail(&[], json!([{"match": "*"}])), "at least one action"),
            (
                detail(&["publish"], json!([])),
                "at least one action and one topic",
            ),
            (detail(&["publish"], json!([{"match": ""}])), "empty match"),
            (
                detail(&["publish"], json!(["https://example.com/x"])),
                "malformed",
            ),
            (
                detail(
                    &["publish"],
                    json!([{"match": "x", "match_type": "template"}]),
                ),
                "match_type",
            ),
            (
                json!({"type": AUTHORIZATION_DETAIL_TYPE, "topics": [{"match": "*"}]}),
                "malformed",
            ),
        ] {
            let t = access_token(
                "at+jwt",
                "secret",
                json!({"exp": FAR, "authorization_details": [bad]}),
            );
            let refused = a.publisher(Some(&t)).await.unwrap_err();
            assert!(
                matches!(&refused, AuthError::Invalid(m) if m.contains(says) && m.contains("detail #1")),
                "{says}: {refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_configured() {
        let a = auth(&AuthSettings {
            issuer: Some("https://id.example".into()),
            audience: Some("https://hub.example/.well-known/mercure".into()),
            ..settings()
        });
        let grant = json!({"publish": ["*"]});
        let aud = "https://hub.example/.well-known/mercure";
        let ok = [
            json!({"iss": "https://id.example", "aud": aud, "mercure": grant}),
            json!({"iss": "https://id.example", "aud": ["other", aud], "mercure": grant}),
        ];
        for claims in ok {
            a.publisher(Some(&token("secret", claims))).await.unwrap();
        }
        let refused = [
            json!({"aud": aud, "mercure": grant}),
            json!({"iss": "https://evil.example", "aud": aud, "mercure": grant}),
            json!({"iss": "https://id.example", "mercure": grant}),
            json!({"iss": "https://id.example", "aud": "https://other.example", "mercure": grant}),
        ];
        for claims in refused {
            assert!(
                matches!(
                    a.publisher(Some(&token("secret", claims.clone()))).await,
                    Err(AuthError::Invalid(_))
                ),
                "{claims}"
            );
        }
        // Unset, neither is looked at.
        let open = auth(&settings());
        open.publisher(Some(&token(
            "secret",
            json!({"iss": "anyone", "aud": "any", "mercure": grant}),
        )))
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_mercure_publisher_token_without_exp_is_valid() {
        let a = auth(&settings());
        let t = token("secret", json!({"mercure": {"publish": ["*"]}}));
        a.publisher(Some(&t))
            .await
            .unwrap()
            .check(&[topic("x")])
            .unwrap();
    }

    #[tokio::test]
    async fn publish_claims_must_cover_every_topic() {
        let a = auth(&settings());
        let t = token("secret", json!({"mercure": {"publish": ["books/{id}"]}}));
        let rights = a.publisher(Some(&t)).await.unwrap();
        rights.check(&[topic("books/1")]).unwrap();
        assert!(matches!(
            rights.check(&[topic("books/1"), topic("x")]),
            Err(AuthError::Forbidden(_))
        ));
        let t = token("secret", json!({"mercure": {"subscribe": ["*"]}}));
        assert!(matches!(
            a.publisher(Some(&t)).await,
            Err(AuthError::Forbidden(_))
        ));
    }

    #[tokio::test]
    async fn bad_signatures_expiry_and_missing_tokens_are_refused() {
        let a = auth(&settings());
        let wrong = token("other", json!({"mercure": {"publish": ["*"]}}));
        assert!(matches!(
            a.publisher(Some(&wrong)).await,
            Err(AuthError::Invalid(_))
        ));
        let expired = token(
            "secret",
            json!({"exp": 1000, "mercure": {"publish": ["*"]}}),
        );
        assert!(
            matches!(a.publisher(Some(&expired)).await, Err(AuthError::Invalid(m)) if m.contains("expired"))
        );
        let future = token(
            "secret",
            json!({"iat": 4_000_000_000u64, "mercure": {"publish": ["*"]}}),
        );
        assert!(matches!(
            a.publisher(Some(&future)).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.publisher(None).await,
            Err(AuthError::Missing(_))
        ));
        assert!(matches!(
            a.subscriber(None, None).await,
            Err(AuthError::Missing(_))
        ));
        assert!(matches!(
            a.subscriber(Some("garbage"), None).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn subscribers_get_their_claims_and_session() {
        let a = auth(&AuthSettings {
            anonymous: true,
            ..settings()
        });
        let anon = a.subscriber(None, None).await.unwrap();
        assert!(anon.anonymous && !anon.access.may_see_private(&[topic("x")]));
        let t = token(
            "secret",
            json!({"sub": "alice", "mercure": {"subscribe": ["books/{id}"]}}),
        );
        let id = a.subscriber(Some(&t), None).await.unwrap();
        assert_eq!(id.session.unwrap().as_str(), "alice");
        assert!(id.access.may_see_private(&[topic("books/1")]));
        assert!(!id.access.may_see_private(&[topic("x")]));
        // A Mercure token whose `sub` cannot name a session still subscribes.
        for sub in [json!(42), json!(""), json!("x".repeat(300))] {
            let t = token(
                "secret",
                json!({"sub": sub, "mercure": {"subscribe": ["*"]}}),
            );
            assert!(a
                .subscriber(Some(&t), None)
                .await
                .unwrap()
                .session
                .is_none());
        }
    }

    #[tokio::test]
    async fn a_missing_key_is_a_clear_startup_error() {
        let err = Authenticator::new(
            &AuthSettings::default(),
            Arc::new(SelectorCache::new(1, 10)),
            Arc::new(Metrics::new()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--jwt-key"), "{err}");
        let none = AuthSettings {
            mode: AuthMode::None,
            ..AuthSettings::default()
        };
        assert!(Authenticator::new(
            &none,
            Arc::new(SelectorCache::new(1, 10)),
            Arc::new(Metrics::new())
        )
        .is_ok());
    }
}
