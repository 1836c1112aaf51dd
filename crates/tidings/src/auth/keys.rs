//! Keys: the verifiers of both roles (configured keys or a JWKS endpoint's), hub-wide and per
//! trusted issuer, what every token must satisfy besides its signature, and minting tokens for
//! development.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jsonwebtoken::{DecodingKey, Validation};

use super::jwks::KeySet;
use super::{AuthConfigError, AuthError, AuthMode, AuthSettings, Claims, JwtAlg};

/// One role's verifier: where its keys come from, and what else a token must satisfy.
pub(super) enum Verifier {
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

/// A token's role: which of an issuer's keys verifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Publisher,
    Subscriber,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Subscriber => "subscriber",
        }
    }
}

/// The verifiers of both roles of one issuer (or of the hub-wide keys); a role without one
/// refuses its tokens.
#[derive(Debug, Default)]
pub(super) struct Roles {
    publisher: Option<Verifier>,
    subscriber: Option<Verifier>,
}

impl Roles {
    fn of(&self, role: Role) -> Option<&Verifier> {
        match role {
            Role::Publisher => self.publisher.as_ref(),
            Role::Subscriber => self.subscriber.as_ref(),
        }
    }
}

/// Every verifier (none with `--auth none`), replaced as a whole on reload: the hub-wide keys,
/// and each `[[issuer]]`'s.
#[derive(Debug)]
pub(super) struct Keys {
    /// For tokens whose `iss` is none of `issuers`.
    hub: Roles,
    /// By `iss`.
    issuers: HashMap<String, Roles>,
    pub(super) leeway_secs: u64,
    /// What the protected resource metadata says, reloaded with the keys: the hub's audience
    /// (`jwt-audience`) and the issuers marked authorization servers.
    pub(super) audience: Option<String>,
    pub(super) authorization_servers: Vec<String>,
}

impl Keys {
    /// Builds every verifier, reading PEM key files if the algorithm needs them; `hub_set` is
    /// the JWKS endpoint of `jwks-url`, `issuer_sets` those of the issuers, by `iss`.
    pub(super) fn load(
        settings: &AuthSettings,
        hub_set: Option<&Arc<KeySet>>,
        issuer_sets: &HashMap<String, Arc<KeySet>>,
    ) -> Result<Keys, AuthConfigError> {
        let mut keys = Keys {
            hub: Roles::default(),
            issuers: HashMap::new(),
            leeway_secs: settings.leeway_secs,
            audience: settings.audience.clone(),
            authorization_servers: settings
                .authorization_servers()
                .map(str::to_owned)
                .collect(),
        };
        if settings.mode == AuthMode::None {
            return Ok(keys);
        }
        let configured = [
            &settings.jwt_key,
            &settings.publisher_jwt_key,
            &settings.subscriber_jwt_key,
        ];
        if hub_set.is_some() && configured.iter().any(|k| k.is_some()) {
            return Err(AuthConfigError::Setting(
                "jwks-url and jwt-key (or publisher-jwt-key, subscriber-jwt-key) exclude each other: keys come from one place",
            ));
        }
        if hub_set.is_some()
            && settings.issuer.is_none()
            && settings.audience.is_none()
            && !settings.jwks_any_audience
        {
            return Err(AuthConfigError::AnyToken);
        }
        // With issuers of their own, the hub-wide keys are optional: without them, a token
        // must come from one of those issuers.
        let optional = !settings.issuers.is_empty();
        let hub_validation = validation(
            settings.alg,
            settings.issuer.as_deref(),
            settings.audience.as_deref(),
            settings.leeway_secs,
        );
        let hub_key = KeySource {
            alg: settings.alg,
            shared: settings.jwt_key.as_ref(),
            set: hub_set,
            validation: &hub_validation,
        };
        keys.hub = hub_key.roles(
            settings.publisher_jwt_key.as_ref(),
            settings.subscriber_jwt_key.as_ref(),
            optional,
        )?;
        for issuer in &settings.issuers {
            let problem = |problem| AuthConfigError::Issuer {
                iss: issuer.iss.clone(),
                problem,
            };
            if issuer.iss.is_empty() {
                return Err(problem(
                    "iss is empty: it is the iss claim of the issuer's tokens",
                ));
            }
            if keys.issuers.contains_key(&issuer.iss) {
                return Err(problem("given twice: one table per issuer"));
            }
            if settings.issuer.as_deref() == Some(issuer.iss.as_str()) {
                return Err(problem("it is also jwt-issuer: give its keys in one place (the [[issuer]] table, without jwt-issuer)"));
            }
            let keyed = [
                &issuer.jwt_key,
                &issuer.publisher_jwt_key,
                &issuer.subscriber_jwt_key,
            ];
            let set = issuer_sets.get(&issuer.iss);
            match (set.is_some(), keyed.iter().any(|k| k.is_some())) {
                (true, true) => return Err(problem("jwks-url and jwt-key (or publisher-jwt-key, subscriber-jwt-key) exclude each other")),
                (false, false) => return Err(problem("no key: set jwks-url, jwt-key, publisher-jwt-key or subscriber-jwt-key")),
                _ => {}
            }
            let issuer_validation = validation(
                issuer.alg,
                Some(&issuer.iss),
                issuer.audience.as_deref().or(settings.audience.as_deref()),
                settings.leeway_secs,
            );
            let source = KeySource {
                alg: issuer.alg,
                shared: issuer.jwt_key.as_ref(),
                set,
                validation: &issuer_validation,
            };
            let roles = source.roles(
                issuer.publisher_jwt_key.as_ref(),
                issuer.subscriber_jwt_key.as_ref(),
                true,
            )?;
            keys.issuers.insert(issuer.iss.clone(), roles);
        }
        Ok(keys)
    }

    /// The verifier of `token` in `role`: its issuer's when its `iss` (read before any
    /// check, only to choose) names one of the issuers, else the hub-wide one.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] when that issuer (or the hub) has no key for the role.
    pub(super) fn verifier(&self, role: Role, token: &str) -> Result<&Verifier, AuthError> {
        let iss = match self.issuers.is_empty() {
            true => None,
            false => unverified_issuer(token),
        };
        if let Some((iss, roles)) = iss.and_then(|iss| self.issuers.get_key_value(&iss)) {
            return roles.of(role).ok_or_else(|| {
                AuthError::Invalid(format!(
                    "the token was refused: its issuer {iss:?} is not trusted for {}s",
                    role.name()
                ))
            });
        }
        self.hub.of(role).ok_or_else(|| {
            AuthError::Invalid(match self.issuers.is_empty() {
                true => format!("the token was refused: this hub has no {} key", role.name()),
                false => "the token was refused: its iss is none of the trusted issuers".into(),
            })
        })
    }
}

/// The `iss` claim of a token, read without verifying it: only to choose the keys that will.
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Issuer {
        iss: Option<String>,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Issuer>(token)
        .ok()?
        .iss
}

/// Where one issuer's (or the hub's) keys come from.
struct KeySource<'a> {
    alg: JwtAlg,
    /// The key of both roles.
    shared: Option<&'a String>,
    set: Option<&'a Arc<KeySet>>,
    validation: &'a Validation,
}

impl KeySource<'_> {
    /// Both roles' verifiers, each role's own key given (see [`KeySource::verifier`]).
    fn roles(
        &self,
        publisher: Option<&String>,
        subscriber: Option<&String>,
        optional: bool,
    ) -> Result<Roles, AuthConfigError> {
        Ok(Roles {
            publisher: self.verifier(Role::Publisher, publisher, optional)?,
            subscriber: self.verifier(Role::Subscriber, subscriber, optional)?,
        })
    }

    /// The verifier of `role`, whose own key is `specific`; `None` for a role without a key
    /// when `optional`, else [`AuthConfigError::NoKey`].
    fn verifier(
        &self,
        role: Role,
        specific: Option<&String>,
        optional: bool,
    ) -> Result<Option<Verifier>, AuthConfigError> {
        if let Some(set) = self.set {
            let mut validation = self.validation.clone();
            validation.algorithms.clear();
            return Ok(Some(Verifier::Set {
                keys: set.clone(),
                validation,
            }));
        }
        let role = role.name();
        let Some(value) = specific.or(self.shared) else {
            return match optional {
                true => Ok(None),
                false => Err(AuthConfigError::NoKey { role }),
            };
        };
        if value.is_empty() {
            return Err(AuthConfigError::EmptyKey { role });
        }
        Ok(Some(Verifier::Key {
            key: load_key(self.alg, value, role)?,
            validation: self.validation.clone(),
        }))
    }
}

/// What every token must satisfy besides its signature: `exp` and `nbf` when present, with the
/// leeway; `iss` and `aud` when given.
pub(super) fn validation(
    alg: JwtAlg,
    issuer: Option<&str>,
    audience: Option<&str>,
    leeway_secs: u64,
) -> Validation {
    let mut validation = Validation::new(alg.algorithm());
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    if let Some(audience) = audience {
        validation.set_audience(&[audience]);
        validation.validate_aud = true;
        validation.required_spec_claims.insert("aud".to_owned());
    }
    validation.leeway = leeway_secs;
    validation
}

fn load_key(alg: JwtAlg, value: &str, role: &'static str) -> Result<DecodingKey, AuthConfigError> {
    match alg {
        JwtAlg::Hs256 => Ok(DecodingKey::from_secret(value.as_bytes())),
        JwtAlg::Rs256 | JwtAlg::Es256 => {
            let pem = std::fs::read(value).map_err(|source| AuthConfigError::ReadKey {
                role,
                path: value.to_owned(),
                source,
            })?;
            let key = if alg == JwtAlg::Rs256 {
                DecodingKey::from_rsa_pem(&pem)
            } else {
                DecodingKey::from_ec_pem(&pem)
            };
            key.map_err(|source| AuthConfigError::BadKey {
                role,
                path: value.to_owned(),
                source,
            })
        }
    }
}

/// A short, safe description of a JWT error (never the token itself).
pub(super) fn describe(e: &jsonwebtoken::errors::Error) -> String {
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

/// Mints a token for development and tests.
///
/// `key` is the HS256 secret, or for RS256/ES256 the path of a PEM *private* key.
///
/// # Errors
/// [`AuthConfigError`] when the key cannot be read or used.
pub fn mint(alg: JwtAlg, key: &str, claims: &Claims) -> Result<String, AuthConfigError> {
    Ok(tidings_client::token::mint(alg, key, claims)?)
}
