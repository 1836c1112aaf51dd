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
//! shared [`SelectorCache`](crate::selector::SelectorCache).
//!
//! With `--auth-url` (module `callback`), a new stream that presents no token that verifies is
//! decided by the application itself, told the client's cookies and headers: for applications
//! that know their users by a session cookie and mint no JWT for browsers.

//!
//! | file | what it holds |
//! |---|---|
//! | `settings` | [`AuthSettings`], the modes and algorithms, [`AuthError`] and [`AuthConfigError`] |
//! | `claims` | [`Claims`] and what they grant, from either token format |
//! | `keys` | the verifiers of both roles, the checks besides the signature, [`mint`] |
//! | `authenticator` | [`Authenticator`]: a request's credentials to [`SubscriberIdentity`] or [`PublisherRights`] |
//! | `jwks` | keys from a JWKS endpoint |
//! | `callback` | the application's authorization callback |

mod authenticator;
mod callback;
mod claims;
mod jwks;
mod keys;
mod settings;
#[cfg(test)]
mod tests;

pub use authenticator::{Authenticator, PublisherRights, SubscriberIdentity};
pub use callback::{
    Api, Ask, CallbackSettings, Caller, StreamRequest, CACHE_ENTRIES, FORWARDED,
    FORWARDED_BY_PROXY, MAX_ANSWER_BYTES,
};
pub use claims::{Claims, MercureClaim, AUTHORIZATION_DETAIL_TYPE};
pub use keys::mint;
pub use settings::{AuthConfigError, AuthError, AuthMode, AuthSettings, IssuerSettings, JwtAlg};
