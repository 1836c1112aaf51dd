//! What a token says: the claims Tidings reads, and the rights they grant — from a classic
//! `mercure` claim, or from a Mercure 1.0 access token's authorization details.

use serde::{Deserialize, Serialize};

use super::AuthError;

/// The `type` of a Mercure authorization detail in an access token (Mercure 1.0), as the
/// reference hub, its conformance suite and Symfony write it.
pub const AUTHORIZATION_DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";

/// The same type as the newest text of the specification writes it (`mercure`): a detail of
/// either type is read alike.
pub(super) const AUTHORIZATION_DETAIL_TYPE_SHORT: &str = "mercure";

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

/// True for the header `typ` of an RFC 9068 access token: `at+jwt`, in any case, with or
/// without the `application/` prefix.
pub(super) fn is_access_token(typ: Option<&str>) -> bool {
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
pub(super) enum Matcher {
    /// A classic `mercure` claim's selector: `*`, a URI template or an exact topic.
    Selector(String),
    /// An authorization detail's `exact` match (braces are characters).
    Exact(String),
    /// An authorization detail's `urlpattern` match.
    UrlPattern(String),
}

/// What a verified token grants, whatever its format.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Grants {
    /// What it may publish to; `None`: it grants no publishing at all.
    pub(super) publish: Option<Vec<Matcher>>,
    /// Whose private updates it may receive.
    pub(super) subscribe: Vec<Matcher>,
    /// Data about the subscriber (the subscriptions API shows it).
    pub(super) payload: Option<serde_json::Value>,
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
    pub(super) fn of(claims: Claims, access_token: bool) -> Result<Grants, AuthError> {
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
        let ours = details.into_iter().filter(|d| {
            matches!(
                d.get("type").and_then(|t| t.as_str()),
                Some(AUTHORIZATION_DETAIL_TYPE | AUTHORIZATION_DETAIL_TYPE_SHORT)
            )
        });
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
