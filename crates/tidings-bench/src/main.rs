//! `tidings-bench`: a load generator for SSE hubs — Tidings through its Mercure or session
//! API, or Nchan — that opens many subscriber streams over one or more instances, publishes
//! numbered, timestamped updates, and reports what arrived (lost, repeated, out of order),
//! how fast, with what latency, and what each idle stream cost the server in memory.
//!
//! A run has four phases, each bounded: open the streams (at most `--open-concurrency` at a
//! time, from 127.0.0.x source addresses when one address has too few ports), settle, publish
//! (`--publishers` keep-alive connections, at `--rate` or flat out), and drain (wait up to
//! `--drain` for the last deliveries). `--timeout` bounds the whole run; Ctrl-C ends it early
//! and still reports.
//!
//! The failover benchmark is a run with `--reconnect` and `--kill`: streams whose connection
//! ends come back as a browser's `EventSource` does (after the `retry:` hint, to the next
//! instance, with their last event id), publishers move to another instance when theirs is
//! gone (same update id: stored once), and one instance is killed partway through the
//! publishing. The report then says how many streams moved and came back, how their
//! reconnections were answered, how long updates published after the kill took to reach the
//! moved streams and the others, and how publishing fared before and after.
//!
//! It is a program of its own, on the client library (`tidings-client`), so that the hub's
//! binary carries neither it nor what only it needs (histograms, progress bars); and so that
//! it can run from another machine, or many processes, against hubs it does not build.

mod args;
mod body;
mod plan;
mod profile;
mod publisher;
mod report;
mod run;
mod seen;
mod setup;
mod stream;
mod tally;
mod usage;
mod workers;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = args::BenchArgs::parse();
    // The HTTP client's TLS needs a crypto provider chosen before it is built (the bench
    // speaks http:// only, but reqwest builds its TLS configuration regardless).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(run::run(args));
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
