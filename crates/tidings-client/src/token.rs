//! Tokens a hub accepts, minted where the key is at hand: a publishing service that holds the
//! hub's HS256 secret (or an RS256/ES256 private key), a test, a load generator. Production
//! subscribers get theirs from the application, which signs them the same way.
//!
//! ```
//! use tidings_client::token::{mint, JwtAlg};
//!
//! let claims = serde_json::json!({"mercure": {"publish": ["*"]}});
//! let token = mint(JwtAlg::Hs256, "a secret of 32 bytes or more ........", &claims).unwrap();
//! assert_eq!(token.split('.').count(), 3);
//! ```

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// The signature algorithm of a hub's tokens (the hub's `jwt-alg`).
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

impl JwtAlg {
    /// The names a hub's configuration accepts (in any case).
    pub const NAMES: [&'static str; 3] = ["HS256", "RS256", "ES256"];

    /// The algorithm as the JWT library names it.
    pub fn algorithm(self) -> Algorithm {
        match self {
            JwtAlg::Hs256 => Algorithm::HS256,
            JwtAlg::Rs256 => Algorithm::RS256,
            JwtAlg::Es256 => Algorithm::ES256,
        }
    }
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

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The private key file cannot be read.
    #[error("cannot read the signing key file {path:?}: {source}")]
    ReadKey {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key is not a PEM private key of the algorithm.
    #[error("{path:?} is not a PEM private key for {alg:?}: {source}")]
    Key {
        /// The file.
        path: String,
        /// The algorithm it should serve.
        alg: JwtAlg,
        /// What the JWT library found.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The claims cannot be signed.
    #[error("cannot sign the token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// Signs `claims` (the Mercure claim, `sub`, `exp`, …) into a token.
///
/// `key` is the HS256 secret, or for RS256/ES256 the path of a PEM *private* key.
///
/// # Errors
/// [`MintError`] when the key cannot be read or used.
pub fn mint(alg: JwtAlg, key: &str, claims: &impl Serialize) -> Result<String, MintError> {
    let encoding = match alg {
        JwtAlg::Hs256 => EncodingKey::from_secret(key.as_bytes()),
        JwtAlg::Rs256 | JwtAlg::Es256 => {
            let pem = std::fs::read(key).map_err(|source| MintError::ReadKey {
                path: key.to_owned(),
                source,
            })?;
            let parsed = if alg == JwtAlg::Rs256 {
                EncodingKey::from_rsa_pem(&pem)
            } else {
                EncodingKey::from_ec_pem(&pem)
            };
            parsed.map_err(|source| MintError::Key {
                path: key.to_owned(),
                alg,
                source,
            })?
        }
    };
    jsonwebtoken::encode(&Header::new(alg.algorithm()), claims, &encoding).map_err(MintError::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_case_and_others_are_refused() {
        for name in JwtAlg::NAMES {
            assert_eq!(
                name.to_lowercase()
                    .parse::<JwtAlg>()
                    .map(|a| format!("{a:?}").to_uppercase()),
                Ok(name.to_owned())
            );
        }
        assert!("none".parse::<JwtAlg>().unwrap_err().contains("HS256"));
    }

    #[test]
    fn a_missing_key_file_is_named() {
        let err = mint(
            JwtAlg::Es256,
            "/nonexistent/key.pem",
            &serde_json::json!({}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
    }
}
