//! `tidings subscribe`: print the updates of some topics; on a dropped connection, wait the
//! server's `retry:` hint (or back off) and resume with `Last-Event-ID` (all done by
//! [`tidings_client::Hub::subscribe`]).

use std::io::Write;

use futures_util::StreamExt;
use tidings_client::{Event, Subscription};

use super::HubArgs;
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

pub(super) async fn run(args: SubscribeArgs) -> Result<(), String> {
    // Ctrl-C ends the command cleanly whatever it is doing.
    tokio::select! {
        result = follow(args) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Prints events until `--max-events`, a refusal retrying cannot cure, or Ctrl-C.
async fn follow(args: SubscribeArgs) -> Result<(), String> {
    let hub = args.hub.client(MercureClaim {
        subscribe: Some(args.topic.clone()),
        ..MercureClaim::default()
    })?;
    // The events alone leave the terminal silent until the first update: say it is waiting.
    let mut subscription =
        Subscription::topics(args.topic.iter().cloned()).on_open(say_waiting(&args.hub.hub));
    if let Some(id) = &args.last_event_id {
        subscription = subscription.last_event_id(id);
    }
    let mut events = hub.subscribe(subscription);
    let mut received = 0u64;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                print_event(&args.format, &event)?;
                received += 1;
                if args.max_events.is_some_and(|max| received >= max) {
                    return Ok(());
                }
            }
            Err(e) if e.is_permanent() => return Err(super::explain(&e)),
            Err(e) => log_retry(&e.to_string()),
        }
    }
    Ok(())
}

/// What to call when a connection opens: a line on standard error, the first time and after
/// each reconnection.
#[allow(clippy::print_stderr)]
fn say_waiting(hub: &str) -> impl Fn() + Send + Sync + 'static {
    let hub = hub.to_owned();
    let opened = std::sync::atomic::AtomicBool::new(false);
    move || {
        let again = opened.swap(true, std::sync::atomic::Ordering::Relaxed);
        let what = if again {
            "connected again"
        } else {
            "connected"
        };
        eprintln!("{what} to {hub}: waiting for updates (Ctrl-C to stop)");
    }
}

#[allow(clippy::print_stderr)]
fn log_retry(message: &str) {
    eprintln!("{message}; retrying");
}

fn print_event(format: &str, event: &Event) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let written = if format == "json" {
        let line =
            serde_json::json!({"id": event.id, "type": event.event_type, "data": event.data});
        writeln!(out, "{line}")
    } else {
        writeln!(
            out,
            "── {} [{}]\n{}",
            event.id, event.event_type, event.data
        )
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to standard output: {e}"))
}
