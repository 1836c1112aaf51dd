//! `tidings subscribe`: print the updates of some topics; on a dropped connection, wait the
//! server's `retry:` hint (or back off) and resume with `Last-Event-ID`.

use std::io::Write;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use super::{describe_error, http_client, HubArgs};
use crate::auth::MercureClaim;

/// Arguments of `tidings subscribe`.
#[derive(Debug, clap::Args)]
pub(super) struct SubscribeArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// A topic selector: a topic, `*` or a URI template (repeatable).
    #[arg(long, required = true, value_name = "SELECTOR")]
    topic: Vec<String>,
    /// Resume after this id (`earliest` for all history).
    #[arg(long, value_name = "ID")]
    last_event_id: Option<String>,
    /// Output: `text` (id, type and data) or `json` (one object per line).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
    /// Exit after this many updates.
    #[arg(long, value_name = "N")]
    max_events: Option<u64>,
}

/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) async fn run(args: SubscribeArgs) -> Result<(), String> {
    // Ctrl-C ends the command cleanly whatever it is doing.
    tokio::select! {
        result = follow(args) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Connects, prints, and reconnects after a dropped stream, resuming after the last id seen.
async fn follow(args: SubscribeArgs) -> Result<(), String> {
    let token = args.hub.token(MercureClaim {
        subscribe: Some(args.topic.clone()),
        ..MercureClaim::default()
    })?;
    let client = http_client(None)?;
    let mut url = reqwest::Url::parse(&args.hub.endpoint("/.well-known/mercure"))
        .map_err(|e| format!("--hub is not a valid URL: {e}"))?;
    for topic in &args.topic {
        url.query_pairs_mut().append_pair("topic", topic);
    }
    let mut last_id = args.last_event_id.clone();
    let mut retry = Duration::from_secs(1);
    let mut failures = 0u32;
    let mut received = 0u64;
    loop {
        let mut request = client
            .get(url.clone())
            .header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                failures = 0;
                let mut events = response.bytes_stream().eventsource();
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { break };
                    if let Some(r) = event.retry {
                        retry = r;
                    }
                    if event.data.is_empty() && event.id.is_empty() {
                        continue;
                    }
                    if !event.id.is_empty() {
                        last_id = Some(event.id.clone());
                    }
                    print_event(&args.format, &event)?;
                    received += 1;
                    if args.max_events.is_some_and(|max| received >= max) {
                        return Ok(());
                    }
                }
                tracing::debug!("stream ended; reconnecting");
            }
            Ok(response) if response.status().is_client_error() => {
                // Bad selectors or credentials will not get better by retrying.
                return Err(describe_error(response).await);
            }
            Ok(response) => {
                failures += 1;
                log_retry(&describe_error(response).await);
            }
            Err(e) => {
                failures += 1;
                log_retry(&format!("cannot reach the hub: {e}"));
            }
        }
        let backoff = retry
            .saturating_mul(2u32.saturating_pow(failures.min(5)))
            .min(MAX_BACKOFF);
        tokio::time::sleep(backoff).await;
    }
}

#[allow(clippy::print_stderr)]
fn log_retry(message: &str) {
    eprintln!("{message}; retrying");
}

fn print_event(format: &str, event: &eventsource_stream::Event) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let written = if format == "json" {
        let line = serde_json::json!({"id": event.id, "type": event.event, "data": event.data});
        writeln!(out, "{line}")
    } else {
        writeln!(out, "── {} [{}]\n{}", event.id, event.event, event.data)
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to standard output: {e}"))
}
