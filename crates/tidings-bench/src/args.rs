//! The arguments of a run.

use std::path::PathBuf;
use std::time::Duration;

use tidings_client::token::JwtAlg;

use crate::plan::Topics;
use crate::profile::Profile;

/// The largest payload a run sends.
pub(crate) const MAX_PAYLOAD: usize = 1024 * 1024;
/// Source addresses 127.0.0.1 to 127.0.0.254.
pub(crate) const MAX_SOURCE_ADDRESSES: usize = 254;

/// Load an SSE hub (Tidings or Nchan) with streams and updates; report loss, speed, latency
/// and memory.
#[derive(Debug, clap::Parser)]
#[command(name = "tidings-bench", version)]
pub(crate) struct BenchArgs {
    /// The API to drive: `mercure` or `session` (Tidings), `nchan` (/sub/{ch}, /pub/{ch}).
    #[arg(long, value_enum, default_value = "mercure")]
    pub(crate) profile: Profile,
    /// Base URL of an instance the streams connect to (repeatable: streams are spread over
    /// them round-robin). Only http:// on this machine.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub(crate) urls: Vec<String>,
    /// Base URL the publishers post to (repeatable: publishers are spread over them, and a
    /// publish an instance cannot take is sent to the next) [default: the first --url].
    #[arg(long = "publish-url", value_name = "URL")]
    pub(crate) publish_urls: Vec<String>,
    /// Subscriber streams to open.
    #[arg(short = 'c', long, default_value_t = 1000, value_name = "N")]
    pub(crate) subscribers: u64,
    /// Topics the streams are spread over: a number, or `each` for one topic per stream.
    #[arg(long, default_value = "1", value_name = "N|each")]
    pub(crate) topics: Topics,
    /// Updates to publish, dealt round-robin over the topics (0: only open the streams).
    #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
    pub(crate) updates: u64,
    /// Updates per second over all publishers (0: as fast as the hub answers).
    #[arg(long, default_value_t = 0.0, value_name = "PER_SEC")]
    pub(crate) rate: f64,
    /// Publishers, each on its own keep-alive connection; topic `t`'s updates all go through
    /// publisher `t % publishers`, in order.
    #[arg(short = 'p', long, default_value_t = 1, value_name = "N")]
    pub(crate) publishers: usize,
    /// Size of each update's payload, in bytes (at least the ~40 bytes of its stamp).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pub(crate) payload_size: usize,
    /// Topic names are this prefix followed by the topic's number [default: `bench-` and a
    /// random run id, so that no run sees another's updates or history].
    #[arg(long, value_name = "PREFIX")]
    pub(crate) topic_prefix: Option<String>,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub(crate) open_concurrency: usize,
    /// A stream that is not open after this long counts as failed.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = seconds)]
    pub(crate) open_timeout: Duration,
    /// Streams per loopback source address (127.0.0.1, .2, …). One address has about 28,000
    /// ports, but the kernel's search for a free one slows down as they fill: 40,000 streams
    /// opened at 7,170/s at 10,000 per address, and at 1,044/s, 339 failing, at 20,000.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub(crate) streams_per_address: u64,
    /// Pause between the last stream opening and the first publish (and the idle memory
    /// reading), so that every instance knows every subscription.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = seconds)]
    pub(crate) settle: Duration,
    /// How long to wait for deliveries after the last publish was answered.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = seconds)]
    pub(crate) drain: Duration,
    /// Bound on the whole run.
    #[arg(long, default_value = "300", value_name = "SECS", value_parser = seconds)]
    pub(crate) timeout: Duration,
    /// Streams whose connection ends come back, as a browser's EventSource does: after the
    /// stream's `retry:` hint (or a random wait up to --reconnect-within), to the next --url,
    /// with the last event id they saw.
    #[arg(long)]
    pub(crate) reconnect: bool,
    /// With --reconnect: the longest wait before coming back when the stream gave no hint.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = seconds)]
    pub(crate) reconnect_within: Duration,
    /// Updates to a topic every stream holds besides its own (Mercure: a second `topic=` on
    /// every stream; session: a broadcast to every session), spaced evenly over --hold. The
    /// report gives, for each, when the last stream had it.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) broadcasts: u64,
    /// Keep publishing (and the streams open) at least this long from the first publish; the
    /// broadcasts are spread over it, the first at its start.
    #[arg(long, default_value = "0", value_name = "SECS", value_parser = seconds)]
    pub(crate) hold: Duration,
    /// Streams closed and reopened per minute, over all streams, from --churn-after to the
    /// end of --hold: each stream closes its connection at random times (on average every
    /// streams / rate minutes) and comes straight back, on the next --url, with the last event
    /// id it saw — a page reloaded. Needs --reconnect (which says how to retry a refusal).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "PER_MIN",
        requires = "reconnect"
    )]
    pub(crate) churn: f64,
    /// When the churn starts, counted from the first publish.
    #[arg(long, default_value = "0", value_name = "SECS", value_parser = seconds)]
    pub(crate) churn_after: Duration,
    /// Kill (SIGKILL) this process of the hub --kill-after seconds into the publishing: the
    /// failover benchmark. Needs --reconnect.
    #[arg(long, value_name = "PID", requires = "reconnect")]
    pub(crate) kill: Option<u32>,
    /// When to kill, counted from the first publish.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = seconds)]
    pub(crate) kill_after: Duration,
    /// A process of the hub under test whose resident memory to read (repeatable: summed).
    #[arg(long, value_name = "PID")]
    pub(crate) pid: Vec<u32>,
    /// Bearer token for the publishers.
    #[arg(long, env = "TIDINGS_TOKEN", value_name = "JWT")]
    pub(crate) token: Option<String>,
    /// Bearer token for the streams.
    #[arg(long, value_name = "JWT")]
    pub(crate) subscriber_token: Option<String>,
    /// Mint the tokens not given with this key (HS256 secret, or a PEM private key path);
    /// with `--profile session`, each session's stream gets its own token with `sub` set.
    #[arg(long, env = "TIDINGS_JWT_KEY", value_name = "KEY")]
    pub(crate) jwt_key: Option<String>,
    /// Algorithm of the minted tokens.
    #[arg(long, default_value = "HS256", ignore_case = true)]
    pub(crate) jwt_alg: JwtAlg,
    /// Write the figures as JSON to this file (`-`: standard output, instead of the table).
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,
    /// A label recorded in the JSON (what was measured, for plots).
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// No progress bars.
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Spread the streams over this many worker processes (each under the open-files limit,
    /// each from source addresses of its own); this process publishes, gathers their counts
    /// and reports one run. Their memory is reported apart from the hub's.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) workers: usize,
    /// (Internal) This process is worker I of --workers, started by its coordinator.
    #[arg(long, hide = true, value_name = "I")]
    pub(crate) worker: Option<usize>,
    /// (Internal) The coordinator's clock, in microseconds after the Unix epoch.
    #[arg(long, hide = true, value_name = "MICROS")]
    pub(crate) epoch_us: Option<u64>,
}

/// `--settle 0.5` and the like.
fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|x| Duration::try_from_secs_f64(x).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}
