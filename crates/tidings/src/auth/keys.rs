//! Keys: the verifiers of both roles (configured keys or a JWKS endpoint's), what every token
//! must satisfy besides its signature, and minting tokens for development.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{DecodingKey, Validation};

use super::jwks::KeySet;
use super::{AuthConfigError, AuthMode, AuthSettings, Claims, JwtAlg};

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

/// The verifiers of both roles (absent with `--auth none`), replaced as a whole on reload.
#[derive(Debug)]
pub(super) struct Keys {
    pub(super) publisher: Option<Verifier>,
    pub(super) subscriber: Option<Verifier>,
    pub(super) leeway_secs: u64,
}

impl Keys {
    /// Builds both roles' verifiers, reading PEM key files if the algorithm needs them.
    pub(super) fn load(
        settings: &AuthSettings,
        set: Option<&Arc<KeySet>>,
    ) -> Result<Keys, AuthConfigError> {
        let configured = [
            &settings.jwt_key,
            &settings.publisher_jwt_key,
            &settings.subscriber_jwt_key,
        ];
        if set.is_some() && configured.iter().any(|k| k.is_some()) {
            return Err(AuthConfigError::Setting(
                "jwks-url and jwt-key (or publisher-jwt-key, subscriber-jwt-key) exclude each other: keys come from one place",
            ));
        }
        if set.is_some()
            && settings.issuer.is_none()
            && settings.audience.is_none()
            && !settings.jwks_any_audience
        {
            return Err(AuthConfigError::AnyToken);
        }
        let verifier = |role: &'static str,
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
                return Err(AuthConfigError::NoKey { role });
            };
            if value.is_empty() {
                return Err(AuthConfigError::EmptyKey { role });
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
pub(super) fn validation(settings: &AuthSettings) -> Validation {
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
