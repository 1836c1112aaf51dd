//! The `tidings` command line: `serve`, `publish`, `subscribe`, `token`, `health`. (The load generator
//! is a program of its own, `tidings-bench`.)
//!
//! The binary's `main` only calls [`main`]; each subcommand lives in its own module.

mod health;
mod publish;
mod serve;
mod subscribe;
mod token;

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue};
use clap::{CommandFactory, Parser, Subcommand};

/// A multi-instance Server-Sent Events hub that speaks the Mercure protocol.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a hub instance.
    Serve(Box<serve::ServeArgs>),
    /// Publish one update to a hub.
    Publish(publish::PublishArgs),
    /// Subscribe to topics and print the updates (resumes after a reconnect).
    Subscribe(subscribe::SubscribeArgs),
    /// Mint a JWT for development.
    Token(token::TokenArgs),
    /// Ask an instance whether it is alive (or ready): exit 0 if so, 1 if not (for a
    /// container's health check, where there is no curl).
    Health(health::HealthArgs),
    /// Moved: the load generator is the program `tidings-bench`.
    #[command(hide = true)]
    Bench {
        /// Whatever was given, refused with where the bench went.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

/// Where a client command finds the hub and its credentials (shared by `publish` and
/// `subscribe`).
#[derive(Debug, Clone, clap::Args)]
struct HubArgs {
    /// Base URL of the hub.
    #[arg(long, env = "TIDINGS_HUB", default_value = "http://127.0.0.1:3000")]
    hub: String,
    /// The JWT to send. Without it, one is minted from --jwt-key when that is given.
    #[arg(long, env = "TIDINGS_TOKEN")]
    token: Option<String>,
    /// Key to mint a token with when --token is not given: the HS256 secret, or for
    /// RS256/ES256 the path of a PEM private key.
    #[arg(long, env = "TIDINGS_JWT_KEY")]
    jwt_key: Option<String>,
    /// Algorithm of the minted token.
    #[arg(
        long,
        env = "TIDINGS_JWT_ALG",
        default_value = "HS256",
        ignore_case = true
    )]
    jwt_alg: crate::auth::JwtAlg,
}

impl HubArgs {
    /// A client of the hub, sending the token for `claim` (see [`HubArgs::token`]).
    fn client(&self, claim: crate::auth::MercureClaim) -> Result<tidings_client::Hub, String> {
        let hub = tidings_client::Hub::new(&self.hub).map_err(|e| format!("--hub: {e}"))?;
        Ok(match self.token(claim)? {
            Some(token) => hub.with_token(token),
            None => hub,
        })
    }

    /// The token to send: `--token`, else one minted with `--jwt-key` for `claim`.
    fn token(&self, claim: crate::auth::MercureClaim) -> Result<Option<String>, String> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(key) = &self.jwt_key else {
            return Ok(None);
        };
        let claims = crate::auth::Claims {
            mercure: Some(claim),
            ..Default::default()
        };
        crate::auth::mint(self.jwt_alg, key, &claims)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// What a client command says of `error`: the hub's words, and for a refused or missing token
/// how the command line sends one (the hub's hint speaks HTTP headers).
fn explain(error: &tidings_client::Error) -> String {
    match error {
        tidings_client::Error::Refused {
            status: 401 | 403, ..
        } => format!(
            "{error}\n  (this command sends the token given with --token or TIDINGS_TOKEN, or \
             mints one from --jwt-key or TIDINGS_JWT_KEY; with neither it sends none)"
        ),
        other => other.to_string(),
    }
}

/// Parses the command line, or exits with clap's message. A bad value that came from an
/// environment variable is reported under the flag's name, which the user did not type: the
/// message then names the variable too.
fn parse() -> Cli {
    Cli::try_parse().unwrap_or_else(|mut error| {
        if let Some(variable) = from_environment(&error) {
            error.insert(
                ContextKind::Suggested,
                ContextValue::StyledStrs(vec![format!(
                    "the value came from the environment variable {variable}"
                )
                .into()]),
            );
        }
        error.exit()
    })
}

/// The environment variable the refused value came from: the refused flag's, when it is set
/// and the flag is not on the command line.
fn from_environment(error: &clap::Error) -> Option<String> {
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let typed = std::env::args_os().any(|a| {
        a.to_str().is_some_and(|a| {
            a.strip_prefix("--")
                .and_then(|a| a.strip_prefix(long))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
        })
    });
    if typed {
        return None;
    }
    let command = Cli::command();
    let variable = command
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_str()?
        .to_owned();
    std::env::var_os(&variable).is_some().then_some(variable)
}

/// Installs ring as the process's rustls crypto provider (idempotent).
pub fn install_crypto_provider() {
    // Fails only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = parse();
    // Before any TLS configuration or HTTP client is built, whatever the command.
    install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => Box::pin(serve::run(*args)).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Subscribe(args) => subscribe::run(args).await,
            Command::Token(args) => token::run(args),
            Command::Health(args) => health::run(args).await,
            Command::Bench { .. } => Err("the load generator is a program of its own now: \
                 tidings-bench, with the same arguments (cargo build --release --workspace \
                 builds it beside tidings, as target/release/tidings-bench)"
                .into()),
        }
    });
    // Streams may still be open in detached tasks; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

#[allow(clippy::print_stderr)]
fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
