//! `tidings token`: mint a development JWT.

use crate::auth::{mint, Claims, JwtAlg, MercureClaim};

/// Arguments of `tidings token`.
#[derive(Debug, clap::Args)]
pub(super) struct TokenArgs {
    /// The HS256 secret, or for RS256/ES256 the path of a PEM private key.
    #[arg(long, env = "TIDINGS_JWT_KEY")]
    jwt_key: String,
    /// Signature algorithm.
    #[arg(
        long,
        env = "TIDINGS_JWT_ALG",
        default_value = "HS256",
        ignore_case = true
    )]
    jwt_alg: JwtAlg,
    /// A selector the token may publish to (repeatable).
    #[arg(long, value_name = "SELECTOR")]
    publish: Vec<String>,
    /// A selector whose private updates the token may receive (repeatable).
    #[arg(long, value_name = "SELECTOR")]
    subscribe: Vec<String>,
    /// The `sub` claim (the session of a session-API subscriber).
    #[arg(long, value_name = "SESSION")]
    sub: Option<String>,
    /// The token opens the admin API (the claim `"tidings": {"admin": true}`).
    #[arg(long)]
    admin: bool,
    /// Lifetime in seconds (sets `exp`); without it the token does not expire.
    #[arg(long, value_name = "SECS")]
    ttl: Option<u64>,
}

#[allow(clippy::print_stdout)]
pub(super) fn run(args: TokenArgs) -> Result<(), String> {
    if args.publish.is_empty() && args.subscribe.is_empty() && args.sub.is_none() && !args.admin {
        return Err("say what the token grants: --publish SELECTOR, --subscribe SELECTOR, --sub SESSION and/or --admin".into());
    }
    let mut claims = Claims {
        mercure: Some(MercureClaim {
            publish: (!args.publish.is_empty()).then_some(args.publish),
            subscribe: (!args.subscribe.is_empty()).then_some(args.subscribe),
            payload: None,
        }),
        ..Claims::default()
    };
    if let Some(sub) = args.sub {
        claims.other.insert("sub".into(), sub.into());
    }
    if args.admin {
        claims
            .other
            .insert("tidings".into(), serde_json::json!({"admin": true}));
    }
    if let Some(ttl) = args.ttl {
        let exp = jsonwebtoken::get_current_timestamp().saturating_add(ttl);
        claims.other.insert("exp".into(), exp.into());
    }
    let token = mint(args.jwt_alg, &args.jwt_key, &claims).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}
