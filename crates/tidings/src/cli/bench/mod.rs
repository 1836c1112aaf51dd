//! `tidings bench`: a load generator for SSE hubs — Tidings through its Mercure or session
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
//! Over 600 lines for now: the load generator leaves the server crate for its own
//! (`crates/tidings-bench`, issue 29), where its run, its arguments and its token minting will
//! be files of their own.

mod body;
mod memory;
mod plan;
mod profile;
mod publisher;
mod report;
mod stream;
mod tally;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::{Claims, JwtAlg, MercureClaim};
use plan::{Plan, Topics};
use profile::{Profile, Target};
use publisher::Publishing;
use report::Summary;
use stream::{StreamContext, StreamSpec};
use tally::Tally;

/// The largest payload a run sends.
const MAX_PAYLOAD: usize = 1024 * 1024;
/// Source addresses 127.0.0.1 to 127.0.0.254.
const MAX_SOURCE_ADDRESSES: usize = 254;

/// Arguments of `tidings bench`.
#[derive(Debug, clap::Args)]
pub(super) struct BenchArgs {
    /// The API to drive: `mercure` or `session` (Tidings), `nchan` (/sub/{ch}, /pub/{ch}).
    #[arg(long, value_enum, default_value = "mercure")]
    profile: Profile,
    /// Base URL of an instance the streams connect to (repeatable: streams are spread over
    /// them round-robin). Only http:// on this machine.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "http://127.0.0.1:3000"
    )]
    urls: Vec<String>,
    /// Base URL the publishers post to (repeatable: publishers are spread over them, and a
    /// publish an instance cannot take is sent to the next) [default: the first --url].
    #[arg(long = "publish-url", value_name = "URL")]
    publish_urls: Vec<String>,
    /// Subscriber streams to open.
    #[arg(short = 'c', long, default_value_t = 1000, value_name = "N")]
    subscribers: u64,
    /// Topics the streams are spread over: a number, or `each` for one topic per stream.
    #[arg(long, default_value = "1", value_name = "N|each")]
    topics: Topics,
    /// Updates to publish, dealt round-robin over the topics (0: only open the streams).
    #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
    updates: u64,
    /// Updates per second over all publishers (0: as fast as the hub answers).
    #[arg(long, default_value_t = 0.0, value_name = "PER_SEC")]
    rate: f64,
    /// Publishers, each on its own keep-alive connection; topic `t`'s updates all go through
    /// publisher `t % publishers`, in order.
    #[arg(short = 'p', long, default_value_t = 1, value_name = "N")]
    publishers: usize,
    /// Size of each update's payload, in bytes (at least the ~40 bytes of its stamp).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    payload_size: usize,
    /// Topic names are this prefix followed by the topic's number [default: `bench-` and a
    /// random run id, so that no run sees another's updates or history].
    #[arg(long, value_name = "PREFIX")]
    topic_prefix: Option<String>,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 500, value_name = "N")]
    open_concurrency: usize,
    /// A stream that is not open after this long counts as failed.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = seconds)]
    open_timeout: Duration,
    /// Streams per loopback source address (127.0.0.1, .2, …); one address has about 28,000
    /// ports.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    streams_per_address: u64,
    /// Pause between the last stream opening and the first publish (and the idle memory
    /// reading), so that every instance knows every subscription.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = seconds)]
    settle: Duration,
    /// How long to wait for deliveries after the last publish was answered.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = seconds)]
    drain: Duration,
    /// Bound on the whole run.
    #[arg(long, default_value = "300", value_name = "SECS", value_parser = seconds)]
    timeout: Duration,
    /// Streams whose connection ends come back, as a browser's EventSource does: after the
    /// stream's `retry:` hint (or a random wait up to --reconnect-within), to the next --url,
    /// with the last event id they saw.
    #[arg(long)]
    reconnect: bool,
    /// With --reconnect: the longest wait before coming back when the stream gave no hint.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = seconds)]
    reconnect_within: Duration,
    /// Kill (SIGKILL) this process of the hub --kill-after seconds into the publishing: the
    /// failover benchmark. Needs --reconnect.
    #[arg(long, value_name = "PID", requires = "reconnect")]
    kill: Option<u32>,
    /// When to kill, counted from the first publish.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = seconds)]
    kill_after: Duration,
    /// A process of the hub under test whose resident memory to read (repeatable: summed).
    #[arg(long, value_name = "PID")]
    pid: Vec<u32>,
    /// Bearer token for the publishers.
    #[arg(long, env = "TIDINGS_TOKEN", value_name = "JWT")]
    token: Option<String>,
    /// Bearer token for the streams.
    #[arg(long, value_name = "JWT")]
    subscriber_token: Option<String>,
    /// Mint the tokens not given with this key (HS256 secret, or a PEM private key path);
    /// with `--profile session`, each session's stream gets its own token with `sub` set.
    #[arg(long, env = "TIDINGS_JWT_KEY", value_name = "KEY")]
    jwt_key: Option<String>,
    /// Algorithm of the minted tokens.
    #[arg(long, default_value = "HS256", ignore_case = true)]
    jwt_alg: JwtAlg,
    /// Write the figures as JSON to this file (`-`: standard output, instead of the table).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// A label recorded in the JSON (what was measured, for plots).
    #[arg(long)]
    label: Option<String>,
    /// No progress bars.
    #[arg(short, long)]
    quiet: bool,
}

/// `--settle 0.5` and the like.
fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|x| Duration::try_from_secs_f64(x).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

pub(super) async fn run(args: BenchArgs) -> Result<(), String> {
    let setup = Setup::new(&args).await?;
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

/// What the arguments resolve to before anything is opened.
struct Setup {
    targets: Vec<Arc<Target>>,
    publish_targets: Vec<Target>,
    plan: Plan,
    /// Source addresses to spread the streams over; empty: the kernel's choice.
    sources: Vec<IpAddr>,
    publisher_token: Option<String>,
    /// One token for every stream, or (session profile, minted) one per topic.
    stream_tokens: Vec<Arc<str>>,
}

impl Setup {
    async fn new(args: &BenchArgs) -> Result<Setup, String> {
        if args.subscribers == 0 {
            return Err("--subscribers must be at least 1".into());
        }
        if args.publishers == 0 {
            return Err("--publishers must be at least 1".into());
        }
        if args.open_concurrency == 0 {
            return Err("--open-concurrency must be at least 1".into());
        }
        if args.streams_per_address == 0 {
            return Err("--streams-per-address must be at least 1".into());
        }
        if !(args.rate >= 0.0 && args.rate.is_finite()) {
            return Err(format!(
                "--rate {}: give updates per second, or 0 for flat out",
                args.rate
            ));
        }
        if args.payload_size > MAX_PAYLOAD {
            return Err(format!(
                "--payload-size {} is over the {MAX_PAYLOAD} bytes a run sends",
                args.payload_size
            ));
        }
        if let Topics::Count(n) = args.topics {
            if n > args.subscribers {
                return Err(format!(
                    "--topics {n} is more than --subscribers {}: some topics would have no stream",
                    args.subscribers
                ));
            }
        }
        memory::rss_bytes(&args.pid)?;
        let mut targets = Vec::with_capacity(args.urls.len());
        for url in &args.urls {
            targets.push(Arc::new(
                Target::resolve(url)
                    .await
                    .map_err(|e| format!("--url {e}"))?,
            ));
        }
        let mut publish_targets = Vec::with_capacity(args.publish_urls.len());
        for url in &args.publish_urls {
            publish_targets.push(
                Target::resolve(url)
                    .await
                    .map_err(|e| format!("--publish-url {e}"))?,
            );
        }
        if publish_targets.is_empty() {
            publish_targets.push((*targets[0]).clone());
        }
        if let Some(pid) = args.kill {
            if pid == std::process::id() || pid <= 1 {
                return Err(format!("--kill {pid}: give the pid of a hub instance"));
            }
        }
        let prefix = match &args.topic_prefix {
            Some(prefix) => prefix.clone(),
            None => format!("bench-{:08x}-", rand::random::<u32>()),
        };
        let plan = Plan::new(args.subscribers, args.topics, args.updates, &prefix);
        let sources = source_addresses(args, &targets)?;
        raise_open_files_limit(args.subscribers + args.publishers as u64 + 64)?;
        let (publisher_token, stream_tokens) = tokens(args, &plan)?;
        Ok(Setup {
            targets,
            publish_targets,
            plan,
            sources,
            publisher_token,
            stream_tokens,
        })
    }
}

/// Loopback source addresses enough for the streams, when one is not enough.
fn source_addresses(args: &BenchArgs, targets: &[Arc<Target>]) -> Result<Vec<IpAddr>, String> {
    let needed = args.subscribers.div_ceil(args.streams_per_address) as usize;
    if needed <= 1 {
        return Ok(Vec::new());
    }
    if targets.iter().any(|t| !t.addr.is_ipv4()) {
        return Err(format!(
            "{} streams need {needed} source addresses at --streams-per-address {}; that \
             takes an IPv4 loopback --url (127.0.0.x), not ::1",
            args.subscribers, args.streams_per_address
        ));
    }
    if needed > MAX_SOURCE_ADDRESSES {
        return Err(format!(
            "{} streams at --streams-per-address {} need {needed} source addresses; \
             127.0.0.1 to 127.0.0.254 are {MAX_SOURCE_ADDRESSES}",
            args.subscribers, args.streams_per_address
        ));
    }
    Ok((1..=needed as u8)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .collect())
}

fn raise_open_files_limit(needed: u64) -> Result<(), String> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| format!("cannot raise the open files limit: {e}"))?;
    if limit < needed {
        return Err(format!(
            "the open files limit is {limit} and this run needs {needed}; raise the hard \
             limit (ulimit -Hn, or LimitNOFILE= for a service) or open fewer streams"
        ));
    }
    Ok(())
}

/// The publishers' token and the streams' tokens, as given or minted with `--jwt-key`.
fn tokens(args: &BenchArgs, plan: &Plan) -> Result<(Option<String>, Vec<Arc<str>>), String> {
    let mint = |mercure: MercureClaim, sub: Option<String>| -> Result<String, String> {
        let key = args.jwt_key.as_deref().unwrap_or_default();
        let mut claims = Claims {
            mercure: Some(mercure),
            ..Default::default()
        };
        if let Some(sub) = sub {
            claims.other.insert("sub".into(), sub.into());
        }
        crate::auth::mint(args.jwt_alg, key, &claims).map_err(|e| format!("--jwt-key: {e}"))
    };
    let minting = args.jwt_key.is_some();
    let publisher = match (&args.token, minting) {
        (Some(token), _) => Some(token.clone()),
        (None, true) => Some(mint(
            MercureClaim {
                publish: Some(vec!["*".into()]),
                ..Default::default()
            },
            None,
        )?),
        (None, false) => None,
    };
    let subscribe_all = || MercureClaim {
        subscribe: Some(vec!["*".into()]),
        ..Default::default()
    };
    let streams = match (&args.subscriber_token, minting) {
        (Some(token), _) => vec![Arc::from(token.as_str())],
        (None, true) if args.profile == Profile::Session => (0..plan.topics)
            .map(|t| mint(subscribe_all(), Some(plan.topic_name(t))).map(Arc::from))
            .collect::<Result<_, _>>()?,
        (None, true) => vec![Arc::from(mint(subscribe_all(), None)?.as_str())],
        (None, false) => Vec::new(),
    };
    Ok((publisher, streams))
}

/// The progress bars (hidden with `--quiet` or when standard error is not a terminal).
struct Progress {
    streams: ProgressBar,
    updates: ProgressBar,
    deliveries: ProgressBar,
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
            updates: bar("updates", plan.updates),
            deliveries: bar("deliveries", plan.expected()),
        }
    }

    fn show(&self, tally: &Tally) {
        self.streams
            .set_position(tally.opened.load(Relaxed) + tally.open_failed.load(Relaxed));
        self.updates
            .set_position(tally.published.load(Relaxed) + tally.publish_failed.load(Relaxed));
        self.deliveries.set_position(tally.unique.load(Relaxed));
    }

    fn finish(&self, tally: &Tally) {
        self.show(tally);
        for bar in [&self.streams, &self.updates, &self.deliveries] {
            bar.abandon();
        }
    }
}

/// Runs the phases and measures them.
async fn execute(
    args: &BenchArgs,
    setup: Setup,
    interrupted: &CancellationToken,
) -> Result<Summary, String> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let tally = Arc::new(Tally::new());
    let plan = setup.plan.clone();
    let expected = plan.expected();
    let progress = Arc::new(Progress::new(args.quiet, &plan));
    let stop = CancellationToken::new();
    let ticker = tokio::spawn({
        let (progress, tally, stop) = (progress.clone(), tally.clone(), stop.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            while stop.run_until_cancelled(every.tick()).await.is_some() {
                progress.show(&tally);
            }
        }
    });
    let rss_before = memory::rss_bytes(&args.pid)?;

    // Open the streams.
    let context = Arc::new(StreamContext {
        tally: tally.clone(),
        opening: Arc::new(Semaphore::new(args.open_concurrency)),
        open_timeout: args.open_timeout,
        reconnect_within: args.reconnect.then_some(args.reconnect_within),
        stop: stop.clone(),
    });
    let targets: Arc<[Arc<Target>]> = setup.targets.clone().into();
    let opening = Instant::now();
    let streams: Vec<_> = (0..plan.streams)
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
                expected: plan.updates_on(topic),
            };
            tokio::spawn(stream::run(spec, context.clone()))
        })
        .collect();
    let all_open = wait_for(
        || tally.opened.load(Relaxed) + tally.open_failed.load(Relaxed) >= plan.streams,
        deadline,
        interrupted,
    )
    .await;
    let open_seconds = opening.elapsed().as_secs_f64();
    let go_on = all_open && tally.open_failed.load(Relaxed) == 0;
    if go_on {
        tokio::select! {
            () = tokio::time::sleep(args.settle) => {}
            () = interrupted.cancelled() => {}
        }
    }
    let rss_idle = memory::rss_bytes(&args.pid)?;

    // Publish, then wait for the last deliveries.
    let publishing = Instant::now();
    let mut publish_seconds = 0.0;
    if go_on && plan.updates > 0 && !interrupted.is_cancelled() {
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
        });
        let publishers: Vec<_> = (0..args.publishers)
            .map(|i| tokio::spawn(publisher::run(shared.clone(), i as u64)))
            .collect();
        let killer = args.kill.map(|pid| {
            let (tally, after) = (tally.clone(), args.kill_after);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                tally.killing();
                kill(pid).map_err(|e| tally.error(e))
            })
        });
        let all_sent = wait_for(
            || tally.published.load(Relaxed) + tally.publish_failed.load(Relaxed) >= plan.updates,
            deadline,
            interrupted,
        )
        .await;
        publish_seconds = publishing.elapsed().as_secs_f64();
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
            // Those never sent are lost.
            for p in &publishers {
                p.abort();
            }
        }
        let drain_deadline = deadline.min(tokio::time::Instant::now() + args.drain);
        wait_for(
            || tally.unique.load(Relaxed) + tally.forfeited.load(Relaxed) >= expected,
            drain_deadline,
            interrupted,
        )
        .await;
    }
    let rss_after = memory::rss_bytes(&args.pid)?;
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
            elapsed_seconds: started.elapsed().as_secs_f64(),
            rss: [rss_before, rss_idle, rss_after],
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
    elapsed_seconds: f64,
    /// Before opening, idle, after delivering.
    rss: [u64; 3],
}

fn summarize(args: &BenchArgs, setup: &Setup, tally: &Tally, timings: Timings) -> Summary {
    let per_second = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let opened = tally.opened.load(Relaxed);
    let expected = setup.plan.expected();
    let unique = tally.unique.load(Relaxed);
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
    let deliveries = report::Deliveries {
        expected,
        received: tally.received.load(Relaxed),
        lost: expected - unique,
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
    let errors = tally.errors();
    let ok = errors.is_empty()
        && failover
            .as_ref()
            .is_none_or(|f| f.streams_resumed == f.streams_moved)
        && streams.failed == 0
        && streams.dropped == 0
        && publish.failed == 0
        && published == setup.plan.updates
        && deliveries.lost == 0
        && deliveries.duplicated == 0
        && deliveries.out_of_order == 0
        && deliveries.stray == 0;
    Summary {
        tool: "tidings bench",
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
        publish,
        deliveries,
        latency_ms: tally.latency_ms(),
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
