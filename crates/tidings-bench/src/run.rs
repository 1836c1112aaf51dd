//! A run: its phases, measured, and its report.
//!
//! (Over 600 lines: the phases share the run's clock, tally and workers in one function; the
//! summary (`summarize`, `emit`, `failure`) is the seam to cut into `report` next.)

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::args::BenchArgs;
use crate::plan::Plan;
use crate::profile::{Profile, Target};
use crate::publisher::Publishing;
use crate::report::Summary;
use crate::setup::Setup;
use crate::stream::{Broadcasts, Churn, StreamContext, StreamSpec};
use crate::tally::Tally;
use crate::workers::{self, Counts, Workers};
use crate::{publisher, report, stream, usage};

pub(crate) async fn run(args: BenchArgs) -> Result<(), String> {
    let setup = Setup::new(&args).await?;
    if let Some(index) = args.worker {
        return work(&args, setup, index).await;
    }
    let interrupted = CancellationToken::new();
    let on_ctrl_c = interrupted.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    let summary = execute(&args, setup, &interrupted).await;
    ctrl_c.abort();
    let summary = summary?;
    emit(&args, &summary)?;
    if summary.ok {
        Ok(())
    } else {
        Err(failure(&summary))
    }
}

/// The progress bars (hidden with `--quiet`); where standard error is not a terminal (a log
/// file, a script's pipe), a line every 10 s instead, so that a long run shows where it is.
struct Progress {
    streams: ProgressBar,
    updates: ProgressBar,
    deliveries: ProgressBar,
    lines: bool,
}

impl Progress {
    fn new(quiet: bool, plan: &Plan) -> Progress {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(5)
        };
        let bars = MultiProgress::with_draw_target(target);
        let style = ProgressStyle::with_template(
            "{prefix:>11} [{bar:40}] {human_pos}/{human_len} {per_sec:>12} {elapsed:>4}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = |name: &'static str, len: u64| {
            let bar = bars.add(ProgressBar::new(len).with_style(style.clone()));
            bar.set_prefix(name);
            bar
        };
        Progress {
            streams: bar("streams", plan.streams),
            updates: bar("updates", plan.updates + plan.broadcasts),
            deliveries: bar("deliveries", plan.expected()),
            lines: !quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    /// The progress as one line (see `lines`).
    #[allow(clippy::print_stderr)]
    fn line(&self, elapsed: Duration) {
        if self.lines {
            let of =
                |bar: &ProgressBar| format!("{}/{}", bar.position(), bar.length().unwrap_or(0));
            eprintln!(
                "[{:>5.0} s] streams {}  updates {}  deliveries {}",
                elapsed.as_secs_f64(),
                of(&self.streams),
                of(&self.updates),
                of(&self.deliveries)
            );
        }
    }

    fn show(&self, tally: &Tally, workers: Option<&Counts>) {
        let streams = stream_counts(tally, workers);
        self.streams.set_position(streams.opened + streams.failed);
        self.updates
            .set_position(tally.published.load(Relaxed) + tally.publish_failed.load(Relaxed));
        self.deliveries.set_position(streams.unique);
    }

    fn finish(&self, tally: &Tally) {
        self.show(tally, None);
        for bar in [&self.streams, &self.updates, &self.deliveries] {
            bar.abandon();
        }
    }
}

/// The streams' counts: this process's, or its workers'.
fn stream_counts(tally: &Tally, workers: Option<&Counts>) -> workers::Progress {
    match workers {
        Some(counts) => counts.sum(),
        None => workers::Progress {
            opened: tally.opened.load(Relaxed),
            failed: tally.open_failed.load(Relaxed),
            unique: tally.unique.load(Relaxed),
            rss_before: 0,
        },
    }
}

/// Opens streams `range` of the run (each a task of its own).
fn open_streams(
    args: &BenchArgs,
    setup: &Setup,
    context: &Arc<StreamContext>,
    range: std::ops::Range<u64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let plan = &setup.plan;
    let targets: Arc<[Arc<Target>]> = setup.targets.clone().into();
    range
        .map(|i| {
            let topic = plan.topic_of_stream(i);
            let spec = StreamSpec {
                targets: targets.clone(),
                first: i as usize % targets.len(),
                profile: args.profile,
                topic_name: plan.topic_name(topic),
                token: match setup.stream_tokens.len() {
                    0 => None,
                    1 => Some(setup.stream_tokens[0].clone()),
                    _ => Some(setup.stream_tokens[topic as usize].clone()),
                },
                source: (!setup.sources.is_empty())
                    .then(|| setup.sources[(i / args.streams_per_address) as usize]),
                topic,
                expected: plan.expected_on_stream(i),
            };
            tokio::spawn(stream::run(spec, context.clone()))
        })
        .collect()
}

fn stream_context(
    args: &BenchArgs,
    plan: &Plan,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
) -> Arc<StreamContext> {
    Arc::new(StreamContext {
        tally: tally.clone(),
        opening: Arc::new(Semaphore::new(args.open_concurrency)),
        open_timeout: args.open_timeout,
        reconnect_within: args.reconnect.then_some(args.reconnect_within),
        broadcasts: Broadcasts {
            topic: plan.broadcast_topic(),
            count: plan.broadcasts,
            name: (plan.broadcasts > 0 && args.profile == Profile::Mercure)
                .then(|| plan.broadcast_name()),
        },
        churn: (args.churn > 0.0).then(|| Churn {
            // Each stream closes at 1/mean per second: streams/mean over all of them.
            mean: Duration::from_secs_f64(plan.streams as f64 * 60.0 / args.churn),
            began: CancellationToken::new(),
            ended: CancellationToken::new(),
        }),
        stop: stop.clone(),
    })
}

/// A worker of `--workers`: opens its slice of the streams and reads them until its
/// coordinator says the run is over (see `workers`).
async fn work(args: &BenchArgs, setup: Setup, index: usize) -> Result<(), String> {
    let epoch_us = args
        .epoch_us
        .ok_or("--worker is started by a coordinator (--workers), which gives --epoch-us")?;
    let tally = Arc::new(Tally::at_epoch(
        epoch_us,
        setup.plan.updates,
        setup.plan.broadcasts,
    ));
    let stop = CancellationToken::new();
    let context = stream_context(args, &setup.plan, &tally, &stop);
    let range = workers::slice(setup.plan.streams, args.workers, index);
    let expected = range
        .clone()
        .map(|i| setup.plan.expected_on_stream(i))
        .sum();
    let rss_before = usage::rss_bytes(&[std::process::id()]).unwrap_or(0);
    let streams = open_streams(args, &setup, &context, range);
    let churn = context.churn.as_ref();
    let served = workers::serve(tally.clone(), expected, rss_before, churn).await;
    stop.cancel();
    context.opening.close();
    for stream in streams {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream).await;
    }
    served
}

/// Runs the phases and measures them.
async fn execute(
    args: &BenchArgs,
    setup: Setup,
    interrupted: &CancellationToken,
) -> Result<Summary, String> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let plan = setup.plan.clone();
    let tally = Arc::new(Tally::new(plan.updates, plan.broadcasts));
    let expected = plan.expected();
    let progress = Arc::new(Progress::new(args.quiet, &plan));
    let stop = CancellationToken::new();
    let rss_before = usage::rss_bytes(&args.pid)?;
    let kernel_before = usage::kernel();
    let own_rss_before = usage::rss_bytes(&[std::process::id()]).unwrap_or(0);

    // Open the streams: here, or in the workers.
    let context = stream_context(args, &plan, &tally, &stop);
    let opening = Instant::now();
    let (streams, mut workers) = match args.workers {
        1 => (open_streams(args, &setup, &context, 0..plan.streams), None),
        _ => (
            Vec::new(),
            Some(Workers::start(args, &plan, tally.epoch_us())?),
        ),
    };
    let counts = workers.as_ref().map(Workers::counts);
    let ticker = tokio::spawn({
        let (progress, tally, stop) = (progress.clone(), tally.clone(), stop.clone());
        let counts = counts.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            let mut ticks = 0u64;
            while stop.run_until_cancelled(every.tick()).await.is_some() {
                progress.show(&tally, counts.as_ref());
                ticks += 1;
                if ticks.is_multiple_of(100) {
                    progress.line(Duration::from_millis(ticks * 100));
                }
            }
        }
    });
    let all_open = wait_for(
        || {
            let c = stream_counts(&tally, counts.as_ref());
            c.opened + c.failed >= plan.streams || workers.as_ref().is_some_and(Workers::any_ended)
        },
        deadline,
        interrupted,
    )
    .await;
    let open_seconds = opening.elapsed().as_secs_f64();
    // A few streams that failed to open (a starved box at a million) fail the run, but do not
    // end it: their share of what is published is counted as forfeited, the rest measured.
    // Only a run in which nothing opened stops here.
    let go_on = all_open && stream_counts(&tally, counts.as_ref()).opened > 0;
    if go_on {
        tokio::select! {
            () = tokio::time::sleep(args.settle) => {}
            () = interrupted.cancelled() => {}
        }
    }
    let rss_idle = usage::rss_bytes(&args.pid)?;
    let cpu_idle = usage::cpu_seconds(&args.pid)?;
    let kernel_idle = usage::kernel();
    let client_pids = workers
        .as_ref()
        .map_or_else(|| vec![std::process::id()], Workers::pids);
    let client_rss = [
        counts
            .as_ref()
            .map_or(own_rss_before, |c| c.sum().rss_before),
        usage::rss_bytes(&client_pids).unwrap_or(0),
    ];

    // Publish (and hold, broadcast, churn), then wait for the last deliveries.
    let publishing = Instant::now();
    let mut publish_seconds = 0.0;
    let mut churn_seconds = 0.0;
    let publishes = plan.updates + plan.broadcasts;
    let publish = publishes > 0 || !args.hold.is_zero();
    if go_on && publish && !interrupted.is_cancelled() {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &setup.publisher_token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| "--token is not a valid header value".to_owned())?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(args.publishers)
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()
            .map_err(|e| format!("cannot build the publishers' HTTP client: {e}"))?;
        let shared = Arc::new(Publishing {
            client,
            profile: args.profile,
            targets: setup.publish_targets.clone(),
            plan: plan.clone(),
            tally: tally.clone(),
            rate: (args.rate > 0.0).then_some(args.rate),
            payload_size: args.payload_size,
            publishers: args.publishers as u64,
            start: Instant::now(),
            hold: args.hold,
        });
        let mut publishers: Vec<_> = (0..args.publishers)
            .map(|i| tokio::spawn(publisher::run(shared.clone(), i as u64)))
            .collect();
        if plan.broadcasts > 0 {
            publishers.push(tokio::spawn(publisher::broadcast(shared.clone())));
        }
        let killer = args.kill.map(|pid| {
            let (tally, after) = (tally.clone(), args.kill_after);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                tally.killing();
                kill(pid).map_err(|e| tally.error(e))
            })
        });
        // Until every update is sent and the hold is over; the churn from --churn-after.
        let hold_until = tokio::time::Instant::now() + args.hold;
        let churn_at = (args.churn > 0.0).then(|| publishing + args.churn_after);
        let mut churning: Option<Instant> = None;
        let mut all_sent = false;
        loop {
            if !all_sent
                && tally.published.load(Relaxed) + tally.publish_failed.load(Relaxed) >= publishes
            {
                all_sent = true;
                publish_seconds = publishing.elapsed().as_secs_f64();
            }
            let now = tokio::time::Instant::now();
            if (all_sent && now >= hold_until) || now >= deadline || interrupted.is_cancelled() {
                break;
            }
            if churn_at.is_some_and(|at| churning.is_none() && Instant::now() >= at) {
                churning = Some(Instant::now());
                match (&mut workers, &context.churn) {
                    (Some(workers), _) => workers.churn().await,
                    (None, Some(churn)) => churn.began.cancel(),
                    (None, None) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // (The workers' churn ends when they are told to drain.)
        if let Some(churn) = &context.churn {
            churn.ended.cancel();
        }
        churn_seconds = churning.map_or(0.0, |at| at.elapsed().as_secs_f64());
        if let Some(killer) = killer {
            if !killer.is_finished() {
                killer.abort();
                tally.error(format!(
                    "the publishing ended before --kill-after {:?}: nothing was killed",
                    args.kill_after
                ));
            }
        }
        if !all_sent {
            // Cut short (the timeout, Ctrl-C): the rate is of what was sent meanwhile.
            publish_seconds = publishing.elapsed().as_secs_f64();
            // Those never sent are counted apart (`never_sent`).
            for p in &publishers {
                p.abort();
            }
        }
        let drain_deadline = deadline.min(tokio::time::Instant::now() + args.drain);
        if workers.is_none() {
            wait_for(
                || tally.unique.load(Relaxed) + tally.given_up.load(Relaxed) >= expected,
                drain_deadline,
                interrupted,
            )
            .await;
        }
    }
    // The workers wait for their deliveries (up to the drain), then report.
    if let Some(workers) = workers {
        let drain = (go_on && publish && !interrupted.is_cancelled()).then_some(args.drain);
        workers.finish(drain, &tally).await;
    }
    let rss_after = usage::rss_bytes(&args.pid)?;
    let cpu_after = usage::cpu_seconds(&args.pid)?;
    stop.cancel();
    context.opening.close();
    for stream in streams {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream).await;
    }
    let _ = ticker.await;
    progress.finish(&tally);
    if interrupted.is_cancelled() {
        tally.error("interrupted (Ctrl-C)".into());
    } else if tokio::time::Instant::now() >= deadline {
        tally.error(format!("the run hit --timeout {:?}", args.timeout));
    }
    Ok(summarize(
        args,
        &setup,
        &tally,
        Timings {
            open_seconds,
            publish_seconds,
            churn_seconds,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            rss: [rss_before, rss_idle, rss_after],
            cpu_publishing: cpu_after - cpu_idle,
            // (No figure where /proc has no socket statistics; the run goes on.)
            machine: kernel_before
                .and_then(|before| Ok((before, kernel_idle?)))
                .ok()
                .map(|(before, idle)| report::Machine::new(args.workers, client_rss, before, idle)),
        },
    ))
}

/// Sends SIGKILL to `pid` (the failover benchmark's victim).
fn kill(pid: u32) -> Result<(), String> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .map_err(|e| format!("--kill {pid}: cannot run kill: {e}"))?;
    match status.success() {
        true => Ok(()),
        false => Err(format!(
            "--kill {pid}: kill failed ({status}): no such process?"
        )),
    }
}

/// Waits until `done` holds (true), or the deadline or Ctrl-C comes first (false).
async fn wait_for(
    done: impl Fn() -> bool,
    deadline: tokio::time::Instant,
    interrupted: &CancellationToken,
) -> bool {
    while !done() {
        if tokio::time::Instant::now() >= deadline || interrupted.is_cancelled() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Phase timings and memory readings the tally does not hold.
struct Timings {
    open_seconds: f64,
    publish_seconds: f64,
    /// From the churn's start to the end of the hold.
    churn_seconds: f64,
    elapsed_seconds: f64,
    /// Before opening, idle, after delivering.
    rss: [u64; 3],
    /// The hubs' CPU seconds from the first publish to the last delivery.
    cpu_publishing: f64,
    /// The load generator's and the kernel's memory.
    machine: Option<report::Machine>,
}

fn summarize(args: &BenchArgs, setup: &Setup, tally: &Tally, timings: Timings) -> Summary {
    let per_second = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let opened = tally.opened.load(Relaxed);
    let expected = setup.plan.expected();
    let unique = tally.unique.load(Relaxed);
    // Deliveries that could not arrive, apart from those lost: of updates never sent, and
    // of failed publishes and streams.
    let never_sent = expected.saturating_sub(tally.sent_for.load(Relaxed));
    let forfeited = tally.forfeited(&setup.plan);
    let published = tally.published.load(Relaxed);
    let delivery_seconds = tally.delivery_window().map_or(0.0, |d| d.as_secs_f64());
    let streams = report::Streams {
        opened,
        failed: tally.open_failed.load(Relaxed),
        dropped: tally.dropped.load(Relaxed),
        open_seconds: timings.open_seconds,
        opened_per_second: per_second(opened, timings.open_seconds),
        connect_ms: tally.connect_ms(),
    };
    let [before, idle, after] = timings.rss;
    let memory = (!args.pid.is_empty()).then(|| report::Memory {
        pids: args.pid.clone(),
        rss_before_bytes: before,
        rss_idle_bytes: idle,
        rss_after_bytes: after,
        per_idle_stream_bytes: idle.saturating_sub(before) as f64 / opened.max(1) as f64,
    });
    let server_cpu = (!args.pid.is_empty()).then(|| report::ServerCpu {
        publishing_seconds: timings.cpu_publishing,
        per_delivery_us: timings.cpu_publishing * 1e6 / unique.max(1) as f64,
    });
    let deliveries = report::Deliveries {
        expected,
        received: tally.received.load(Relaxed),
        lost: expected
            .saturating_sub(unique)
            .saturating_sub(never_sent)
            .saturating_sub(forfeited),
        never_sent,
        forfeited,
        duplicated: tally.duplicates.load(Relaxed),
        out_of_order: tally.out_of_order.load(Relaxed),
        stray: tally.stray.load(Relaxed),
        seconds: delivery_seconds,
        per_second: per_second(unique, delivery_seconds),
    };
    let publish = report::Publish {
        published,
        failed: tally.publish_failed.load(Relaxed),
        seconds: timings.publish_seconds,
        updates_per_second: per_second(published, timings.publish_seconds),
        ack_ms: tally.ack_ms(),
    };
    let failover = args.reconnect.then(|| {
        let r = &tally.reconnection;
        let (moved_ms, stayed_ms) = tally.after_kill_latency_ms();
        let (ack_before_ms, ack_after_ms) = tally.ack_around_kill_ms();
        report::Failover {
            killed_pid: args.kill,
            kill_after_seconds: args.kill.map(|_| args.kill_after.as_secs_f64()),
            streams_moved: r.moved.load(Relaxed),
            streams_resumed: r.resumed.load(Relaxed),
            reconnect_attempts: r.attempts.load(Relaxed),
            refused: r.refused.load(Relaxed),
            unreachable: r.unreachable.load(Relaxed),
            deferred: r.deferred.load(Relaxed),
            publish_retries: tally.publish_retries.load(Relaxed),
            why: tally.reconnect_errors(),
            after_kill_latency_ms: report::Split {
                moved: moved_ms,
                stayed: stayed_ms,
            },
            ack_before_kill_ms: ack_before_ms,
            ack_after_kill_ms: ack_after_ms,
        }
    });
    let machine = timings.machine.map(|m| m.per_stream(opened));
    let broadcasts = (setup.plan.broadcasts > 0).then(|| {
        report::Broadcasts::new(
            setup.plan.streams,
            tally.broadcast_latency_ms(),
            tally.broadcast_last_ms(),
            tally.broadcast_reached(),
        )
    });
    let churn = (args.churn > 0.0).then(|| {
        let churned = tally.reconnection.churned.load(Relaxed);
        report::Churn {
            asked_per_minute: args.churn,
            churned,
            seconds: timings.churn_seconds,
            per_minute: per_second(churned, timings.churn_seconds) * 60.0,
        }
    });
    let errors = tally.errors();
    let ok = errors.is_empty()
        && failover
            .as_ref()
            .is_none_or(|f| f.streams_resumed == f.streams_moved)
        && streams.failed == 0
        && streams.dropped == 0
        && publish.failed == 0
        && published == setup.plan.updates + setup.plan.broadcasts
        && deliveries.lost == 0
        && deliveries.duplicated == 0
        && deliveries.out_of_order == 0
        && deliveries.stray == 0;
    Summary {
        tool: "tidings-bench",
        version: env!("CARGO_PKG_VERSION"),
        label: args.label.clone(),
        profile: args.profile,
        urls: setup.targets.iter().map(|t| t.url.clone()).collect(),
        publish_urls: setup
            .publish_targets
            .iter()
            .map(|t| t.url.clone())
            .collect(),
        subscribers: setup.plan.streams,
        topics: setup.plan.topics,
        updates: setup.plan.updates,
        publishers: args.publishers,
        rate: (args.rate > 0.0).then_some(args.rate),
        payload_bytes: args.payload_size,
        streams,
        memory,
        server_cpu,
        machine,
        publish,
        deliveries,
        latency_ms: tally.latency_ms(),
        broadcasts,
        churn,
        failover,
        errors,
        elapsed_seconds: timings.elapsed_seconds,
        ok,
    }
}

/// Prints the table and writes the JSON where asked.
#[allow(clippy::print_stdout)]
fn emit(args: &BenchArgs, summary: &Summary) -> Result<(), String> {
    let json = serde_json::to_string_pretty(summary)
        .map_err(|e| format!("cannot encode the figures: {e}"))?;
    match &args.json {
        Some(path) if path.as_os_str() == "-" => println!("{json}"),
        Some(path) => {
            print!("{}", summary.table());
            std::fs::write(path, json + "\n")
                .map_err(|e| format!("--json {}: {e}", path.display()))?;
        }
        None => print!("{}", summary.table()),
    }
    Ok(())
}

/// Why a run that completed is a failure, in one line.
fn failure(summary: &Summary) -> String {
    let d = &summary.deliveries;
    let s = &summary.streams;
    let mut reasons = Vec::new();
    for (n, what) in [
        (s.failed, "streams failed to open"),
        (s.dropped, "streams dropped"),
        (
            summary.failover.as_ref().map_or(0, |f| {
                f.streams_moved - f.streams_resumed.min(f.streams_moved)
            }),
            "streams moved and did not come back",
        ),
        (summary.publish.failed, "publishes failed"),
        (d.lost, "deliveries lost"),
        (d.duplicated, "deliveries duplicated"),
        (d.out_of_order, "deliveries out of order"),
        (d.stray, "stray events"),
    ] {
        if n > 0 {
            reasons.push(format!("{n} {what}"));
        }
    }
    if let Some((message, _)) = summary.errors.iter().next() {
        reasons.push(format!("first error: {message}"));
    }
    format!("the run did not complete cleanly: {}", reasons.join(", "))
}
