//! Authorization: verifying JWTs and turning their claims into compiled rights.
//!
//! Tokens follow the Mercure protocol: `{"mercure": {"publish": [selectors], "subscribe":
//! [selectors], "payload": …}}`, signed with HS256 (default), RS256 or ES256. `exp`, `nbf`
//! and `iat` are optional and checked when present, with a configurable leeway; a token of only
//! `{"mercure": {"publish": ["*"]}}` is a valid publisher. A token is verified once, when a
//! request arrives; its selectors are compiled through the shared [`SelectorCache`].

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::selector::{Selector, SelectorCache};
use crate::subscriber::Access;
use crate::update::{SessionId, Topic};

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
    /// A valid token that does not grant what was asked (403).
    #[error("{0}")]
    Forbidden(String),
}

/// Why the authorization settings themselves are unusable (start-up error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthConfigError(String);

/// The claims Tidings reads from a token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// The Mercure claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mercure: Option<MercureClaim>,
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
}

/// One role's verifier.
struct Verifier {
    key: DecodingKey,
    validation: Validation,
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
    fn load(settings: &AuthSettings) -> Result<Keys, AuthConfigError> {
        let verifier = |role: &str,
                        specific: &Option<String>|
         -> Result<Option<Verifier>, AuthConfigError> {
            if settings.mode == AuthMode::None {
                return Ok(None);
            }
            let Some(value) = specific.as_ref().or(settings.jwt_key.as_ref()) else {
                return Err(AuthConfigError(format!(
                    "no {role} key: set --jwt-key (or --{role}-jwt-key), or run with --auth none for development"
                )));
            };
            if value.is_empty() {
                return Err(AuthConfigError(format!("the {role} key is empty")));
            }
            let mut validation = Validation::new(settings.alg.algorithm());
            validation.required_spec_claims = HashSet::new();
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.validate_aud = false;
            validation.leeway = settings.leeway_secs;
            Ok(Some(Verifier {
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
    /// [`AuthConfigError`] when `auth = jwt` but a role has no key, or a key file cannot be
    /// read or parsed.
    pub fn new(
        settings: &AuthSettings,
        selectors: Arc<SelectorCache>,
    ) -> Result<Self, AuthConfigError> {
        Ok(Authenticator {
            mode: settings.mode,
            keys: RwLock::new(Arc::new(Keys::load(settings)?)),
            anonymous: settings.anonymous,
            session_claim: session_claim(settings).to_owned(),
            selectors,
        })
    }

    /// Takes the keys, algorithm and leeway of `settings` for every token verified from now
    /// on (key rotation without a restart). Streams already open stay open.
    ///
    /// # Errors
    /// [`AuthConfigError`] when a key cannot be loaded, or `settings` changes what only a
    /// restart can (`auth`, `anonymous`, `session-claim`); the keys in use stay.
    pub fn reload(&self, settings: &AuthSettings) -> Result<(), AuthConfigError> {
        if settings.mode != self.mode
            || settings.anonymous != self.anonymous
            || session_claim(settings) != self.session_claim
        {
            return Err(AuthConfigError(
                "auth, anonymous and session-claim change only with a restart".into(),
            ));
        }
        let keys = Arc::new(Keys::load(settings)?);
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

    fn verify(
        &self,
        verifier: &Verifier,
        token: &str,
        leeway_secs: u64,
    ) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|e| AuthError::Invalid(format!("the token was refused: {}", describe(&e))))?;
        let claims = data.claims;
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
        Ok(claims)
    }

    fn compile(&self, selectors: &[String]) -> Result<Vec<Selector>, AuthError> {
        selectors
            .iter()
            .map(|s| {
                self.selectors.get(s).map_err(|e| {
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
    pub fn publisher(&self, token: Option<&str>) -> Result<PublisherRights, AuthError> {
        let keys = self.keys();
        let Some(verifier) = &keys.publisher else {
            return Ok(PublisherRights { selectors: None });
        };
        let token = token.ok_or(AuthError::Missing(
            "publishing needs a JWT: send it as 'Authorization: Bearer <token>', the mercureAuthorization cookie or the authorization query parameter",
        ))?;
        let claims = self.verify(verifier, token, keys.leeway_secs)?;
        let publish = claims
            .mercure
            .and_then(|m| m.publish)
            .ok_or_else(|| AuthError::Forbidden("the token has no mercure.publish claim".into()))?;
        Ok(PublisherRights {
            selectors: Some(self.compile(&publish)?),
        })
    }

    /// Verifies a subscriber's token (or admits it anonymously when allowed).
    ///
    /// # Errors
    /// [`AuthError::Missing`] without a token when anonymous subscribers are not allowed,
    /// [`AuthError::Invalid`] for a token that does not verify.
    pub fn subscriber(&self, token: Option<&str>) -> Result<SubscriberIdentity, AuthError> {
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
        let Some(token) = token else {
            if self.anonymous {
                return Ok(SubscriberIdentity {
                    access: Access::public_only(),
                    session: None,
                    anonymous: true,
                    payload: None,
                    expires: None,
                });
            }
            return Err(AuthError::Missing(
                "subscribing needs a JWT: send it as 'Authorization: Bearer <token>', the mercureAuthorization cookie or the authorization query parameter",
            ));
        };
        let claims = self.verify(verifier, token, keys.leeway_secs)?;
        // `exp` was checked by the verification, so it is a whole number of seconds here when
        // present. The token verifies while the current second is at most `exp` plus the
        // leeway: it stops verifying one second after that. An `exp` too far away for the
        // clock (tokens that "never expire" use u64::MAX) never expires.
        let expires = claims
            .other
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .and_then(|exp| exp.checked_add(keys.leeway_secs.saturating_add(1)))
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
        let (subscribe, payload) = match claims.mercure {
            Some(m) => (m.subscribe.unwrap_or_default(), m.payload),
            None => (Vec::new(), None),
        };
        let access = Access::from_claim(self.compile(&subscribe)?);
        // A session claim that cannot name a session (not a string, empty, too long) leaves
        // the subscriber without one: plain Mercure tokens must keep working whatever their
        // `sub` is; only the session API insists on a session.
        let session = match claims.other.get(&self.session_claim) {
            Some(serde_json::Value::String(s)) => SessionId::new(s, MAX_SESSION_ID_LEN).ok(),
            _ => None,
        };
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
        Authenticator::new(s, Arc::new(SelectorCache::new(100, 1000))).unwrap()
    }

    fn token(key: &str, claims: serde_json::Value) -> String {
        let claims: Claims = serde_json::from_value(claims).unwrap();
        mint(JwtAlg::Hs256, key, &claims).unwrap()
    }

    fn topic(s: &str) -> Topic {
        Topic::new(s, 1000).unwrap()
    }

    #[test]
    fn a_mercure_publisher_token_without_exp_is_valid() {
        let a = auth(&settings());
        let t = token("secret", json!({"mercure": {"publish": ["*"]}}));
        a.publisher(Some(&t)).unwrap().check(&[topic("x")]).unwrap();
    }

    #[test]
    fn publish_claims_must_cover_every_topic() {
        let a = auth(&settings());
        let t = token("secret", json!({"mercure": {"publish": ["books/{id}"]}}));
        let rights = a.publisher(Some(&t)).unwrap();
        rights.check(&[topic("books/1")]).unwrap();
        assert!(matches!(
            rights.check(&[topic("books/1"), topic("x")]),
            Err(AuthError::Forbidden(_))
        ));
        let t = token("secret", json!({"mercure": {"subscribe": ["*"]}}));
        assert!(matches!(
            a.publisher(Some(&t)),
            Err(AuthError::Forbidden(_))
        ));
    }

    #[test]
    fn bad_signatures_expiry_and_missing_tokens_are_refused() {
        let a = auth(&settings());
        let wrong = token("other", json!({"mercure": {"publish": ["*"]}}));
        assert!(matches!(
            a.publisher(Some(&wrong)),
            Err(AuthError::Invalid(_))
        ));
        let expired = token(
            "secret",
            json!({"exp": 1000, "mercure": {"publish": ["*"]}}),
        );
        assert!(
            matches!(a.publisher(Some(&expired)), Err(AuthError::Invalid(m)) if m.contains("expired"))
        );
        let future = token(
            "secret",
            json!({"iat": 4_000_000_000u64, "mercure": {"publish": ["*"]}}),
        );
        assert!(matches!(
            a.publisher(Some(&future)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(a.publisher(None), Err(AuthError::Missing(_))));
        assert!(matches!(a.subscriber(None), Err(AuthError::Missing(_))));
        assert!(matches!(
            a.subscriber(Some("garbage")),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn subscribers_get_their_claims_and_session() {
        let a = auth(&AuthSettings {
            anonymous: true,
            ..settings()
        });
        let anon = a.subscriber(None).unwrap();
        assert!(anon.anonymous && !anon.access.may_see_private(&[topic("x")]));
        let t = token(
            "secret",
            json!({"sub": "alice", "mercure": {"subscribe": ["books/{id}"]}}),
        );
        let id = a.subscriber(Some(&t)).unwrap();
        assert_eq!(id.session.unwrap().as_str(), "alice");
        assert!(id.access.may_see_private(&[topic("books/1")]));
        assert!(!id.access.may_see_private(&[topic("x")]));
        // A Mercure token whose `sub` cannot name a session still subscribes.
        for sub in [json!(42), json!(""), json!("x".repeat(300))] {
            let t = token(
                "secret",
                json!({"sub": sub, "mercure": {"subscribe": ["*"]}}),
            );
            assert!(a.subscriber(Some(&t)).unwrap().session.is_none());
        }
    }

    #[test]
    fn a_missing_key_is_a_clear_startup_error() {
        let err = Authenticator::new(
            &AuthSettings::default(),
            Arc::new(SelectorCache::new(1, 10)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--jwt-key"), "{err}");
        let none = AuthSettings {
            mode: AuthMode::None,
            ..AuthSettings::default()
        };
        assert!(Authenticator::new(&none, Arc::new(SelectorCache::new(1, 10))).is_ok());
    }
}
