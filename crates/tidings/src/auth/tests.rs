//! The authenticator's tests: both token formats, keys, claims and refusals.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::metrics::Metrics;
use crate::selector::SelectorCache;
use crate::update::Topic;

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

#[tokio::test]
async fn a_float_exp_closes_the_stream_when_the_token_stops_verifying() {
    // PyJWT's `exp = time.time() + 60` is a float: it verifies (rounded to the nearest
    // second), so its stream must close too (review M2).
    let a = auth(&settings());
    let t = token(
        "secret",
        json!({"exp": 4_102_444_800.4f64, "mercure": {"subscribe": ["*"]}}),
    );
    let id = a.subscriber(Some(&t), None).await.unwrap();
    let closes = id.expires.expect("a float exp expires");
    assert_eq!(
        closes,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(4_102_444_801)
    );
    let up = token(
        "secret",
        json!({"exp": 4_102_444_800.5f64, "mercure": {"subscribe": ["*"]}}),
    );
    let closes = a.subscriber(Some(&up), None).await.unwrap().expires;
    assert_eq!(
        closes,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(4_102_444_802))
    );
    // A float nbf in the future refuses the token, as a whole one does.
    let early = token(
        "secret",
        json!({"nbf": 4_102_444_800.5f64, "mercure": {"subscribe": ["*"]}}),
    );
    assert!(
        matches!(a.subscriber(Some(&early), None).await, Err(AuthError::Invalid(m)) if m.contains("nbf"))
    );
    let expired = token(
        "secret",
        json!({"exp": 1000.5f64, "mercure": {"subscribe": ["*"]}}),
    );
    assert!(matches!(
        a.subscriber(Some(&expired), None).await,
        Err(AuthError::Invalid(m)) if m.contains("expired")
    ));
}

#[tokio::test]
async fn the_specifications_short_detail_type_is_read_alike() {
    // The reference hub and Symfony write the URI; the newest text of the specification
    // writes `mercure`.
    let a = auth(&settings());
    let t = access_token(
        "at+jwt",
        "secret",
        json!({"exp": FAR, "authorization_details": [
            {"type": "mercure", "actions": ["publish"], "topics": [{"match": "https://example.com/a"}]}
        ]}),
    );
    let rights = a.publisher(Some(&t)).await.unwrap();
    assert!(rights.check(&[topic("https://example.com/a")]).is_ok());
    assert!(rights.check(&[topic("https://example.com/b")]).is_err());
}

#[tokio::test]
async fn each_issuers_tokens_verify_with_its_own_keys_only() {
    // Mercure 1.0's several issuers: an identity provider and the application each mint
    // tokens; a key of one must never verify a token claiming to come from the other.
    let aud = "https://hub.example/.well-known/mercure";
    let (idp, app) = ("https://idp.example", "https://app.example");
    let s = AuthSettings {
        jwt_key: None,
        session_claim: "sub".into(),
        audience: Some(aud.into()),
        issuers: vec![
            IssuerSettings {
                iss: idp.into(),
                subscriber_jwt_key: Some("idp-key".into()),
                ..IssuerSettings::default()
            },
            IssuerSettings {
                iss: app.into(),
                jwt_key: Some("app-key".into()),
                audience: Some("tidings".into()),
                authorization_server: true,
                ..IssuerSettings::default()
            },
        ],
        ..AuthSettings::default()
    };
    let a = auth(&s);
    assert_eq!(s.authorization_servers().collect::<Vec<_>>(), [app]);
    let claims = |iss: &str, aud: &str| {
        json!({"iss": iss, "aud": aud, "sub": "alice",
               "mercure": {"publish": ["*"], "subscribe": ["*"]}})
    };
    let from_idp = token("idp-key", claims(idp, aud));
    assert!(a.subscriber(Some(&from_idp), None).await.is_ok());
    // The provider has no publisher key here: its tokens do not publish.
    assert!(matches!(
        a.publisher(Some(&from_idp)).await,
        Err(AuthError::Invalid(m)) if m.contains("not trusted for publishers")
    ));
    // The application's key does not verify a token claiming the provider as its issuer.
    let forged = token("app-key", claims(idp, aud));
    assert!(matches!(
        a.subscriber(Some(&forged), None).await,
        Err(AuthError::Invalid(m)) if m.contains("signature")
    ));
    // The application's tokens name its own audience.
    let from_app = token("app-key", claims(app, "tidings"));
    assert!(a.publisher(Some(&from_app)).await.is_ok());
    let elsewhere = token("app-key", claims(app, aud));
    assert!(matches!(
        a.publisher(Some(&elsewhere)).await,
        Err(AuthError::Invalid(m)) if m.contains("aud")
    ));
    // Without hub-wide keys, a token of another issuer, or of none, is refused.
    for claims in [claims("https://other.example", aud), json!({"aud": aud})] {
        let stranger = token("app-key", claims);
        assert!(matches!(
            a.subscriber(Some(&stranger), None).await,
            Err(AuthError::Invalid(m)) if m.contains("none of the trusted issuers")
        ));
    }

    // With hub-wide keys too: a token claiming a listed issuer is still verified with that
    // issuer's keys only, never the hub's; a token of another issuer goes to the hub's keys.
    let both = AuthSettings {
        jwt_key: Some("hub-key".into()),
        ..s.clone()
    };
    let a = auth(&both);
    let claiming = token("hub-key", claims(idp, aud));
    assert!(matches!(
        a.subscriber(Some(&claiming), None).await,
        Err(AuthError::Invalid(m)) if m.contains("signature")
    ));
    let other = token("hub-key", claims("https://other.example", aud));
    assert!(a.subscriber(Some(&other), None).await.is_ok());
    // Keys reload with the issuers; a changed key set URL needs a restart.
    let rotated = AuthSettings {
        jwt_key: Some("hub-key-2".into()),
        ..both.clone()
    };
    a.reload(&rotated).unwrap();
    assert!(a.subscriber(Some(&other), None).await.is_err());
    let mut moved = rotated.clone();
    moved.issuers[0].subscriber_jwt_key = None;
    moved.issuers[0].jwks_url = Some("https://idp.example/jwks".into());
    assert!(a
        .reload(&moved)
        .unwrap_err()
        .to_string()
        .contains("restart"));

    // Tables that cannot be used are refused at start-up, naming the issuer.
    let refused = |issuers: Vec<IssuerSettings>| {
        let s = AuthSettings {
            issuers,
            ..settings()
        };
        Authenticator::new(
            &s,
            Arc::new(SelectorCache::new(100, 1000)),
            Arc::new(Metrics::new()),
        )
        .unwrap_err()
        .to_string()
    };
    let keyless = IssuerSettings {
        iss: idp.into(),
        ..IssuerSettings::default()
    };
    assert!(refused(vec![keyless]).contains("no key"));
    let keyed = IssuerSettings {
        iss: idp.into(),
        jwt_key: Some("k".into()),
        ..IssuerSettings::default()
    };
    assert!(refused(vec![keyed.clone(), keyed.clone()]).contains("given twice"));
    let both = IssuerSettings {
        jwks_url: Some("https://idp.example/jwks".into()),
        ..keyed
    };
    assert!(refused(vec![both]).contains("exclude each other"));
}
