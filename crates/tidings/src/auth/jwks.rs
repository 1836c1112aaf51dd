//! Verification keys from a JWKS endpoint (`--jwks-url`): an identity provider publishes its
//! public keys there and rotates them; a token names its key by `kid`.
//!
//! Keys are fetched at start-up, again every `--jwks-refresh` seconds, and at once when a token
//! names a key id not held — at most once per [`MIN_REFETCH`], so that tokens with made-up key
//! ids cannot turn the hub into a load on the provider. An answer that cannot be used (the
//! endpoint unreachable, not a key set, no usable key) keeps the keys already held. Only
//! public keys for signatures are taken: RSA (RS256), EC P-256 (ES256) and Ed25519 (EdDSA); a
//! key of another kind, a symmetric key, one without `kid` and one whose `use` or `key_ops`
//! says it is not for verifying signatures (an encryption key) is skipped. Keys may share a
//! `kid` when their algorithms differ (RFC 7517 §4.5 allows such alternatives): the token's
//! `alg` chooses. Two keys with the same `kid` and algorithm are ambiguous: neither is taken,
//! and the fetch says so.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthConfigError;
use crate::outbound;

/// The least time between two fetches caused by unknown key ids.
pub(super) const MIN_REFETCH: Duration = Duration::from_secs(10);
/// The longest wait for the endpoint to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key set read, in bytes.
const MAX_BYTES: usize = 1 << 20;

/// One verification key, with the only algorithm it verifies (shared: a token's check takes
/// it without copying the key).
pub(super) struct Key {
    pub(super) key: DecodingKey,
    pub(super) alg: Algorithm,
}

/// The keys held, by key id; a `kid` may name keys of different algorithms.
type Keys = HashMap<String, Vec<Arc<Key>>>;

/// The keys of one JWKS endpoint, by key id.
pub(super) struct KeySet {
    /// The URL as configured (a reload compares it).
    configured: String,
    url: reqwest::Url,
    client: reqwest::Client,
    keys: RwLock<Arc<Keys>>,
    /// When a fetch for an unknown key id last started; held across that fetch, so that
    /// concurrent tokens with the same new key id wait for one fetch.
    refetched: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("url", &outbound::redacted(&self.url))
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// A key set to be fetched from `url` (nothing is fetched yet: see [`KeySet::start`]).
    ///
    /// # Errors
    /// [`AuthConfigError`] when `url` is not an `http` or `https` URL.
    pub(super) fn new(url: &str) -> Result<Arc<KeySet>, AuthConfigError> {
        let parsed = outbound::http_url("jwks-url", url)?;
        let client = outbound::client(FETCH_TIMEOUT)?;
        Ok(Arc::new(KeySet {
            configured: url.to_owned(),
            url: parsed,
            client,
            keys: RwLock::new(Arc::new(HashMap::new())),
            refetched: tokio::sync::Mutex::new(None),
        }))
    }

    /// The URL the keys come from, as configured.
    pub(super) fn url(&self) -> &str {
        &self.configured
    }

    /// Fetches the keys once, then every `every` in a task of its own, which ends when the
    /// key set is dropped.
    pub(super) async fn start(self: &Arc<Self>, every: Duration) {
        self.refresh().await;
        let weak: Weak<KeySet> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(set) = weak.upgrade() else { return };
                set.refresh().await;
            }
        });
    }

    /// The key named `kid` for a token signed with `alg` (of the keys named `kid`, the one of
    /// that algorithm, or another, which then refuses the token for its algorithm); one not
    /// held is fetched for, unless a fetch for an unknown key id happened less than
    /// [`MIN_REFETCH`] ago.
    pub(super) async fn key(&self, kid: &str, alg: Algorithm) -> Option<Arc<Key>> {
        if let Some(key) = self.held(kid, alg) {
            return Some(key);
        }
        let mut refetched = self.refetched.lock().await;
        // Another token may have fetched it while this one waited.
        if let Some(key) = self.held(kid, alg) {
            return Some(key);
        }
        if refetched.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return None;
        }
        *refetched = Some(Instant::now());
        self.refresh().await;
        self.held(kid, alg)
    }

    fn held(&self, kid: &str, alg: Algorithm) -> Option<Arc<Key>> {
        let keys = crate::locks::read(&self.keys);
        let named = keys.get(kid)?;
        named
            .iter()
            .find(|k| k.alg == alg)
            .or(named.first())
            .cloned()
    }

    /// Fetches the key set and takes it if it holds a usable key; otherwise logs why and keeps
    /// the keys held.
    async fn refresh(&self) {
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(url = %outbound::redacted(&self.url), keys = keys.len(), "jwks: keys fetched");
                *crate::locks::write(&self.keys) = Arc::new(keys);
            }
            Err(why) => {
                tracing::warn!(url = %outbound::redacted(&self.url), error = %why, "jwks: cannot fetch the key set; keeping the keys held");
            }
        }
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| outbound::describe(&e))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = outbound::read_limited(response, MAX_BYTES).await?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let keys = by_kid(set.keys.iter().filter_map(usable));
        match keys.is_empty() {
            true => Err("no usable key (RSA, EC P-256 or Ed25519, with a kid)".into()),
            false => Ok(keys),
        }
    }
}

/// The keys by key id; two of the same `kid` and algorithm are left out (which of them the
/// provider meant cannot be told), with a warning.
fn by_kid(keys: impl Iterator<Item = (String, Key)>) -> Keys {
    let mut by_kid = Keys::new();
    for (kid, key) in keys {
        by_kid.entry(kid).or_default().push(Arc::new(key));
    }
    by_kid.retain(|kid, named| {
        let twice = |alg: Algorithm| named.iter().filter(|k| k.alg == alg).count() > 1;
        let kept: Vec<Arc<Key>> = named.iter().filter(|k| !twice(k.alg)).cloned().collect();
        if kept.len() < named.len() {
            let kid: String = kid.chars().take(64).collect();
            tracing::warn!(kid, "jwks: the key set holds several keys with this kid and algorithm; none of them is used");
        }
        *named = kept;
        !named.is_empty()
    });
    by_kid
}

/// A JWK as a verification key, when it is a public key of a supported kind with a `kid`,
/// meant for signatures (its `use`, if any, is `sig`; its `key_ops`, if any, hold `verify`).
fn usable(jwk: &Jwk) -> Option<(String, Key)> {
    let kid = jwk.common.key_id.clone()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
        || jwk
            .common
            .key_operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::OctetKey(_), _) => return None,
        (_, Some(named)) => Algorithm::try_from(named).ok()?,
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(p), None) if p.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        (AlgorithmParameters::OctetKeyPair(p), None) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    if !matches!(alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, Key { key, alg }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_keys_of_supported_kinds_with_a_kid_are_taken() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "RSA", "kid": "rsa", "alg": "RS256",
             "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
             "e": "AQAB"},
            // For encryption, not signatures (review L10).
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "wraps", "key_ops": ["wrapKey"],
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            // The same kid for an EdDSA key beside the ES256 one: the token's alg chooses.
            {"kty": "OKP", "crv": "Ed25519", "kid": "ec", "use": "sig", "key_ops": ["verify"],
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            // Twice the same kid and algorithm: neither can be trusted to be the one meant.
            {"kty": "OKP", "crv": "Ed25519", "kid": "twice",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "twice",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "crv": "P-384", "kid": "p384",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        ]}))
        .unwrap();
        let mut taken: Vec<(String, Algorithm)> = by_kid(set.keys.iter().filter_map(usable))
            .into_iter()
            .flat_map(|(kid, keys)| keys.into_iter().map(move |k| (kid.clone(), k.alg)))
            .collect();
        taken.sort_by_key(|(kid, alg)| (kid.clone(), format!("{alg:?}")));
        assert_eq!(
            taken,
            [
                ("ec".to_owned(), Algorithm::ES256),
                ("ec".to_owned(), Algorithm::EdDSA),
                ("ed".to_owned(), Algorithm::EdDSA),
                ("rsa".to_owned(), Algorithm::RS256),
            ]
        );
    }
}
