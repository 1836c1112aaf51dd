//! Verification keys from a JWKS endpoint (`--jwks-url`), served by the test on loopback: keys
//! chosen by `kid` (ES256, RS256, EdDSA), a new key fetched for when a token names it, unknown
//! key ids not turned into a load on the endpoint, the keys held kept while it is down, and
//! what cannot be configured refused at start-up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Json;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{json, Value};

use crate::common::{publish, Hub};

/// The audience the provider writes into tokens meant for the hub.
const AUDIENCE: &str = "https://hub.test/.well-known/mercure";

/// A signing key, and its public half as a JWK named `kid`.
struct SigningKey {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

impl SigningKey {
    fn es256(kid: &'static str) -> SigningKey {
        let secret = p256::SecretKey::random(&mut rand_core06::OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        SigningKey {
            kid,
            alg: Algorithm::ES256,
            key,
        }
    }

    fn rs256(kid: &'static str) -> SigningKey {
        let secret = rsa::RsaPrivateKey::new(&mut rand_core06::OsRng, 2048).unwrap();
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        SigningKey {
            kid,
            alg: Algorithm::RS256,
            key,
        }
    }

    fn eddsa(kid: &'static str) -> SigningKey {
        // rcgen writes PKCS#8 v2 (the public key included); the signer takes v1: the same
        // 32-byte seed behind the v1 header.
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let seed = &pair.serialize_der()[16..48];
        let mut v1 = hex_bytes("302e020100300506032b657004220420");
        v1.extend_from_slice(seed);
        let key = EncodingKey::from_ed_der(&v1);
        SigningKey {
            kid,
            alg: Algorithm::EdDSA,
            key,
        }
    }

    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    /// A publisher token for this hub naming this key (or, with `kid: None`, no key).
    fn publisher(&self, kid: Option<&str>) -> String {
        self.sign(kid, json!({"aud": AUDIENCE, "mercure": {"publish": ["*"]}}))
    }

    /// A token with these claims naming this key (or, with `kid: None`, no key).
    fn sign(&self, kid: Option<&str>, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A JWKS endpoint on loopback: what it serves, how often it was asked, whether it is down.
#[derive(Clone, Default)]
struct Endpoint {
    keys: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
    down: Arc<Mutex<bool>>,
}

impl Endpoint {
    async fn serve(&self) -> String {
        let endpoint = self.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let endpoint = endpoint.clone();
                async move {
                    endpoint.hits.fetch_add(1, Ordering::SeqCst);
                    if *endpoint.down.lock().unwrap() {
                        return Err(StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(Json(json!({"keys": *endpoint.keys.lock().unwrap()})))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn publishes(hub: &Hub, token: &str) -> (u16, String) {
    publish(hub, Some(token), &[("topic", "https://example.com/jwks")]).await
}

// Several threads: the endpoint must answer while `Hub::start` blocks this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_the_endpoint_by_kid_and_a_new_kid_is_fetched_for_once() {
    let (ec, rsa, ed, stranger) = (
        SigningKey::es256("ec-1"),
        SigningKey::rs256("rsa-1"),
        SigningKey::eddsa("ed-1"),
        SigningKey::es256("never-served"),
    );
    let endpoint = Endpoint::default();
    endpoint.keys.lock().unwrap().extend([ec.jwk(), rsa.jwk()]);
    let url = endpoint.serve().await;
    let hub = Hub::start(&["--jwks-url", &url, "--jwt-audience", AUDIENCE]);
    assert_eq!(endpoint.hits(), 1, "fetched at start-up");
    for key in [&ec, &rsa] {
        let (status, body) = publishes(&hub, &key.publisher(Some(key.kid))).await;
        assert_eq!(status, 200, "{}: {body}", key.kid);
    }
    // The provider rotates in a new key: a token naming it makes the hub fetch again.
    endpoint.keys.lock().unwrap().push(ed.jwk());
    let (status, body) = publishes(&hub, &ed.publisher(Some(ed.kid))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(endpoint.hits(), 2);
    // A key id nobody serves: refused, and within the next 10 s not fetched for again.
    for _ in 0..3 {
        let (status, body) = publishes(&hub, &stranger.publisher(Some(stranger.kid))).await;
        assert_eq!(status, 401, "{body}");
        assert!(
            body.contains("the key set has no key") && body.contains("never-served"),
            "{body}"
        );
    }
    assert_eq!(
        endpoint.hits(),
        2,
        "unknown key ids do not hammer the endpoint"
    );
    // A token naming no key, or a key of the set with another algorithm's signature.
    let (status, body) = publishes(&hub, &ec.publisher(None)).await;
    assert_eq!(status, 401);
    assert!(body.contains("names no key (kid)"), "{body}");
    let (status, _) = publishes(&hub, &rsa.publisher(Some(ec.kid))).await;
    assert_eq!(
        status, 401,
        "a token is checked with the key it names, and its algorithm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_held_are_kept_while_the_endpoint_is_down() {
    let key = SigningKey::es256("kept");
    let endpoint = Endpoint::default();
    endpoint.keys.lock().unwrap().push(key.jwk());
    let url = endpoint.serve().await;
    let hub = Hub::start(&[
        "--jwks-url",
        &url,
        "--jwt-audience",
        AUDIENCE,
        "--jwks-refresh",
        "1",
    ]);
    assert_eq!(publishes(&hub, &key.publisher(Some(key.kid))).await.0, 200);
    *endpoint.down.lock().unwrap() = true;
    let before = endpoint.hits();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(endpoint.hits() > before, "the hub kept asking");
    let (status, body) = publishes(&hub, &key.publisher(Some(key.kid))).await;
    assert_eq!(status, 200, "{body}");
    hub.wait_for_log("jwks: cannot fetch the key set; keeping the keys held")
        .await;
}

#[test]
fn what_cannot_be_configured_stops_start_up() {
    for (args, says) in [
        (
            &["--jwks-url", "file:///etc/keys.json"][..],
            "is not an http:// or https:// URL",
        ),
        (
            &[
                "--jwks-url",
                "http://127.0.0.1:1/jwks.json",
                "--jwt-key",
                "k",
            ][..],
            "exclude each other",
        ),
        (
            &["--jwks-url", "http://127.0.0.1:1/k", "--jwks-refresh", "0"][..],
            "jwks-refresh must be at least 1",
        ),
        // Nothing tells this hub's tokens from the others the provider signs (review M7).
        (
            &["--jwks-url", "http://127.0.0.1:1/k"][..],
            "set jwt-audience",
        ),
    ] {
        crate::common::refuses_to_start(args, says);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_provider_signed_for_another_audience_opens_nothing() {
    // An ID token, or an access token for another service of the same provider: same keys,
    // its sub a user's session (review M7).
    let key = SigningKey::es256("idp");
    let endpoint = Endpoint::default();
    endpoint.keys.lock().unwrap().push(key.jwk());
    let url = endpoint.serve().await;
    let hub = Hub::start(&["--jwks-url", &url, "--jwt-audience", AUDIENCE]);
    let alice_for = |aud: &str| {
        key.sign(
            Some(key.kid),
            json!({"aud": aud, "sub": "alice", "exp": 4_102_444_800u64}),
        )
    };
    let elsewhere = alice_for("account-console");
    let (status, body) = session_stream(&hub, &elsewhere).await;
    assert_eq!(status, 401);
    assert!(body.contains("aud"), "{body}");
    // The hub's own audience opens alice's stream.
    assert_eq!(session_stream(&hub, &alice_for(AUDIENCE)).await.0, 200);
    // Whoever means every token of the provider says so.
    let any = Hub::start(&["--jwks-url", &url, "--jwks-any-audience"]);
    assert_eq!(session_stream(&any, &elsewhere).await.0, 200);
}

/// Opens the session stream of `token`'s subject: the status, and the body of a refusal.
async fn session_stream(hub: &Hub, token: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(hub.url("/sse/event-stream"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    match status {
        200 => (status, String::new()),
        _ => (status, response.text().await.unwrap()),
    }
}
