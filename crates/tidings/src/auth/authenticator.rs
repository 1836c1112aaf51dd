//! The [`Authenticator`]: verifies a request's token for its role — or asks the application —
//! and compiles what it grants into rights.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::callback::{Ask, Callback, Decision};
use super::claims::{is_access_token, Grants, Matcher, AUTHORIZATION_DETAIL_TYPE};
use super::jwks::KeySet;
use super::keys::{describe, Keys, Role, Verifier};
use super::settings::session_claim;
use super::{AuthConfigError, AuthError, AuthMode, AuthSettings, Claims};
use crate::metrics::Metrics;
use crate::selector::{Selector, SelectorCache};
use crate::subscriber::Access;
use crate::update::{SessionId, Topic, MAX_SESSION_ID_LEN};

/// Verifies tokens for both roles and compiles their claims.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    /// A std lock, not a tokio one: held only to clone the `Arc`, never across an await.
    keys: RwLock<Arc<Keys>>,
    anonymous: bool,
    session_claim: String,
    selectors: Arc<SelectorCache>,
    /// The JWKS endpoints' keys, kept across reloads.
    key_sets: KeySets,
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
    /// Who it is: the token's `sub`, or the callback's `subject` (an operator disconnects a
    /// subject's streams).
    pub subject: Option<Arc<str>>,
}

impl SubscriberIdentity {
    /// The admin key's: every private update, no session, no subject.
    pub fn admin_key() -> Self {
        SubscriberIdentity {
            access: Access::everything(),
            session: None,
            anonymous: false,
            payload: None,
            expires: None,
            subject: None,
        }
    }
}

/// What a publisher's credentials grant.
#[derive(Debug, Clone)]
pub struct PublisherRights {
    /// `None` means everything (`--auth none`).
    selectors: Option<Vec<Selector>>,
    /// The token's claims say `"tidings": {"admin": true}` (or `--auth none`): the admin API
    /// is open to it.
    pub admin: bool,
}

impl PublisherRights {
    /// Every right: the admin key's.
    pub fn admin_key() -> Self {
        PublisherRights {
            selectors: None,
            admin: true,
        }
    }

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

/// The JWKS endpoints' keys: `jwks-url`'s and the issuers', with their refresh period.
#[derive(Debug, Default)]
struct KeySets {
    hub: Option<Arc<KeySet>>,
    /// By `iss`.
    issuers: HashMap<String, Arc<KeySet>>,
    refresh: Duration,
}

impl KeySets {
    fn new(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        if settings.mode == AuthMode::None {
            return Ok(KeySets::default());
        }
        let hub = settings.jwks_url.as_deref().map(KeySet::new).transpose()?;
        let mut issuers = HashMap::new();
        for issuer in &settings.issuers {
            if let Some(url) = &issuer.jwks_url {
                issuers.insert(issuer.iss.clone(), KeySet::new(url)?);
            }
        }
        Ok(KeySets {
            hub,
            issuers,
            refresh: settings.jwks_refresh,
        })
    }

    /// True when `settings` names the same endpoints.
    fn same_urls(&self, settings: &AuthSettings) -> bool {
        let urls = settings
            .issuers
            .iter()
            .filter_map(|i| Some((i.iss.as_str(), i.jwks_url.as_deref()?)));
        settings.jwks_url.as_deref() == self.hub.as_ref().map(|set| set.url())
            && urls.clone().count() == self.issuers.len()
            && urls
                .into_iter()
                .all(|(iss, url)| self.issuers.get(iss).is_some_and(|set| set.url() == url))
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
        let key_sets = KeySets::new(settings)?;
        let callback = match &settings.callback {
            Some(_) if settings.mode == AuthMode::None => {
                return Err(AuthConfigError::Setting(
                    "auth-url asks the application about subscribers, but --auth none lets everyone in: use --auth jwt (publishers then need a token)",
                ))
            }
            Some(callback) => Some(Callback::new(callback, selectors.clone(), metrics)?),
            None => None,
        };
        Ok(Authenticator {
            callback,
            mode: settings.mode,
            keys: RwLock::new(Arc::new(Keys::load(
                settings,
                key_sets.hub.as_ref(),
                &key_sets.issuers,
            )?)),
            anonymous: settings.anonymous,
            session_claim: session_claim(settings).to_owned(),
            selectors,
            key_sets,
        })
    }

    /// With `jwks-url` (or issuers with theirs): fetches the key sets (a failure is logged;
    /// their tokens are refused until a later fetch succeeds) and keeps them fresh from then
    /// on.
    pub async fn start(&self) {
        let sets = &self.key_sets;
        for set in sets.hub.iter().chain(sets.issuers.values()) {
            set.start(sets.refresh).await;
        }
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
            || !self.key_sets.same_urls(settings)
            || settings.callback.as_ref() != self.callback.as_ref().map(Callback::settings)
        {
            return Err(AuthConfigError::Setting(
                "auth, anonymous, session-claim, jwks-url (the hub's and the issuers') and the auth-url settings change only with a restart",
            ));
        }
        let sets = &self.key_sets;
        let keys = Arc::new(Keys::load(settings, sets.hub.as_ref(), &sets.issuers)?);
        *crate::locks::write(&self.keys) = keys;
        Ok(())
    }

    fn keys(&self) -> Arc<Keys> {
        crate::locks::read(&self.keys).clone()
    }

    /// The authorization mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The audience tokens must name (`jwt-audience`), as last loaded.
    pub fn audience(&self) -> Option<String> {
        self.keys().audience.clone()
    }

    /// The issuers marked authorization servers, as last loaded.
    pub fn authorization_servers(&self) -> Vec<String> {
        self.keys().authorization_servers.clone()
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
                let key = keys.key(&kid, header.alg).await.ok_or_else(|| {
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
        if self.mode == AuthMode::None {
            return Ok(PublisherRights {
                selectors: None,
                admin: true,
            });
        }
        let keys = self.keys();
        let token = token.ok_or(AuthError::Missing(
            "publishing needs a JWT: send it as 'Authorization: Bearer <token>', a token cookie (cookie-name, __Secure-mercure_access_token by default, or mercureAuthorization) or the authorization query parameter",
        ))?;
        let verifier = keys.verifier(Role::Publisher, token)?;
        let (claims, access_token) = self.verify(verifier, token, keys.leeway_secs).await?;
        let admin = is_admin(&claims);
        let publish = Grants::of(claims, access_token)?.publish;
        // An admin token need not publish.
        let publish = publish.or_else(|| admin.then(Vec::new)).ok_or_else(|| {
            AuthError::Forbidden(match access_token {
                true => format!(
                    "the token has no authorization detail of type {AUTHORIZATION_DETAIL_TYPE} with the publish action"
                ),
                false => "the token has no mercure.publish claim".into(),
            })
        })?;
        Ok(PublisherRights {
            selectors: Some(self.compile(&publish)?),
            admin,
        })
    }

    /// Verifies a subscriber: by its token when it presents one that verifies; otherwise, for
    /// a stream (`ask`) with `auth-url` set, by the application's decision; otherwise
    /// anonymously when allowed.
    ///
    /// # Errors
    /// [`AuthError::Missing`] without a token when anonymous subscribers are not allowed,
    /// [`AuthError::Invalid`] for a token that does not verify; with `auth-url`, the
    /// application's refusal ([`AuthError::Unauthenticated`], [`AuthError::Denied`]) or
    /// [`AuthError::Unavailable`] when it could not decide.
    pub async fn subscriber(
        &self,
        token: Option<&str>,
        ask: Option<Ask>,
    ) -> Result<SubscriberIdentity, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(SubscriberIdentity {
                access: Access::everything(),
                session: None,
                anonymous: token.is_none(),
                payload: None,
                expires: None,
                subject: None,
            });
        };
        let keys = self.keys();
        let verified = match token {
            Some(token) => Some(match keys.verifier(Role::Subscriber, token) {
                Ok(verifier) => {
                    self.token_subscriber(verifier, token, keys.leeway_secs)
                        .await
                }
                Err(refused) => Err(refused),
            }),
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
                subject: None,
            }),
            (None, None) => Err(AuthError::Missing(
                "subscribing needs a JWT: send it as 'Authorization: Bearer <token>', a token cookie (cookie-name, __Secure-mercure_access_token by default, or mercureAuthorization) or the authorization query parameter",
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
            Decision::Refused { detail, .. } => Err(AuthError::Denied(detail.clone())),
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
                    subject: grant.subject.clone(),
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
        // `exp` was checked by the verification, so it is a number of seconds here when
        // present — a whole one, or a float as PyJWT's `time.time() + 60` writes it, which the
        // verification rounds to the nearest second: so is it here, or such a token would
        // never close its stream. The token verifies while the current second is at most
        // `exp` plus the leeway: it stops verifying one second after that. An `exp` too far
        // away for the clock (tokens that "never expire" use u64::MAX) never expires.
        let expires = claims
            .other
            .get("exp")
            .and_then(expiry_second)
            .and_then(|exp| exp.checked_add(leeway_secs.saturating_add(1)))
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
        // A session claim that cannot name a session (not a string, empty, too long) leaves
        // the subscriber without one: plain Mercure tokens must keep working whatever their
        // `sub` is; only the session API insists on a session.
        let session = match claims.other.get(&self.session_claim) {
            Some(serde_json::Value::String(s)) => SessionId::new(s, MAX_SESSION_ID_LEN).ok(),
            _ => None,
        };
        // (As a session: a `sub` that cannot name a subject leaves the stream without one.)
        let subject = match claims.other.get("sub") {
            Some(serde_json::Value::String(s)) => SessionId::new(s, MAX_SESSION_ID_LEN)
                .ok()
                .map(|s| Arc::from(s.as_str())),
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
            subject,
        })
    }
}

/// True when the claims say `"tidings": {"admin": true}`.
fn is_admin(claims: &super::claims::Claims) -> bool {
    claims
        .other
        .get("tidings")
        .and_then(|t| t.get("admin"))
        .and_then(serde_json::Value::as_bool)
        == Some(true)
}

/// The second an `exp` claim names, as the verification reads it: a whole number, or a float
/// rounded to the nearest second (jsonwebtoken's `numeric_type`).
fn expiry_second(exp: &serde_json::Value) -> Option<u64> {
    match exp.as_u64() {
        Some(secs) => Some(secs),
        // Verified: finite, not negative, below u64::MAX; `as` saturates anyway.
        None => exp.as_f64().map(|secs| secs.round() as u64),
    }
}
