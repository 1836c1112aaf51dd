//! The brokers tests run against: the machine's shared Redis, NATS, RabbitMQ and Kafka (reached,
//! or skipped unless `TIDINGS_REQUIRE_BROKERS=1`), clean-up guards for what a test creates on
//! them, and private brokers a test starts on free ports and stops by PID — one file per broker,
//! and here what they share.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, spawn_listening, uuid_like, Hub, WAIT};

mod amqp;
mod kafka;
mod nats;
mod postgres;
mod redis_nodes;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use self::{amqp::*, kafka::*, nats::*, postgres::*, redis_nodes::*};

/// The shared brokers the tests reach, with how to give the tests one.
#[derive(Debug, Clone, Copy)]
enum Broker {
    Redis,
    Nats,
    Amqp,
    Kafka,
    Postgres,
}
impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Redis => "Redis",
            Broker::Nats => "NATS",
            Broker::Amqp => "RabbitMQ",
            Broker::Kafka => "Kafka",
            Broker::Postgres => "PostgreSQL",
        }
    }

    /// The variable that points the tests at another one.
    fn variable(self) -> &'static str {
        match self {
            Broker::Redis => "TIDINGS_TEST_REDIS",
            Broker::Nats => "TIDINGS_TEST_NATS",
            Broker::Amqp => "TIDINGS_TEST_AMQP",
            Broker::Kafka => "TIDINGS_TEST_KAFKA",
            Broker::Postgres => "TIDINGS_TEST_POSTGRES",
        }
    }

    /// How to start one on its default port.
    fn start(self) -> &'static str {
        match self {
            Broker::Redis => "`redis-server --port 6379`",
            Broker::Nats => "`nats-server -js -p 4222`",
            Broker::Amqp => "`rabbitmq-server -detached`",
            Broker::Kafka => "Tansu on 9092, as `.ci/services` does",
            Broker::Postgres => "`pg_ctlcluster 15 main start`",
        }
    }
}
/// `Some(url)` when the broker answers `reach`; otherwise `None` (the test skips, said once per
/// binary), or a failure under `TIDINGS_REQUIRE_BROKERS=1`. The answer is kept for the binary's
/// run: tests that skip do not each wait on an unreachable broker.
fn available(
    broker: Broker,
    url: String,
    reach: impl FnOnce(&str) -> Result<(), String>,
) -> Option<String> {
    static REACHED: std::sync::Mutex<Vec<(String, Result<(), String>)>> =
        std::sync::Mutex::new(Vec::new());
    let known = REACHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(u, _)| *u == url)
        .map(|(_, r)| r.clone());
    let reached = known.unwrap_or_else(|| {
        let reached = reach(&url);
        let mut all = REACHED.lock().unwrap_or_else(|e| e.into_inner());
        all.push((url.clone(), reached.clone()));
        reached
    });
    match reached {
        Ok(()) => Some(url),
        Err(e) => {
            let what = format!("{} at {}", broker.name(), tidings::bus::redact(&url));
            super::missing(
                &what,
                &format!("it is unreachable ({e})"),
                &format!(
                    "start one ({}) or set {} to one",
                    broker.start(),
                    broker.variable()
                ),
            );
            None
        }
    }
}
/// Whether something accepts TCP connections at `address` (`host:port`).
fn accepts(address: &str) -> Result<(), String> {
    let address: std::net::SocketAddr = address.parse().map_err(|e| format!("{e}"))?;
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map(|_| ())
        .map_err(|e| e.to_string())
}
/// A key prefix unique to this test run and name.
pub fn unique_prefix(name: &str) -> String {
    format!("tidings-test:{name}:{}", uuid_like())
}
/// `n` instances on the bus `bus`, named `prefix` there; instance `i` has the id
/// `<prefix>-<i>`.
pub fn cluster_on(bus: &str, prefix: &str, n: usize, extra: &[&str]) -> Vec<Hub> {
    (0..n)
        .map(|i| instance_on(bus, prefix, &format!("{prefix}-{i}"), extra))
        .collect()
}
/// One instance (`--auth none`) with the id `id` on the bus `bus`, named `prefix` there, plus
/// `extra` flags.
pub fn instance_on(bus: &str, prefix: &str, id: &str, extra: &[&str]) -> Hub {
    let mut args = vec![
        "--auth",
        "none",
        "--bus",
        bus,
        "--bus-prefix",
        prefix,
        "--instance-id",
        id,
    ];
    args.extend_from_slice(extra);
    Hub::start(&args)
}
/// A broker of a test's own that a test may stop and start again (the bus contract's restart
/// case holds every bus to the same promise with one of these).
pub trait PrivateBroker {
    /// Its URL, as `--bus` takes it.
    fn url(&self) -> String;
    /// Stops it (its clients see their connections close).
    fn stop(&mut self);
    /// Starts it again on the same port (and data, where it keeps any).
    fn start_again(&mut self);
    /// Whether what it stored outlives a restart.
    fn keeps_data(&self) -> bool;
}
/// Runs a broker clean-up (or set-up) to its end on a runtime of its own, in a thread of its
/// own: a guard may be dropped outside of a runtime, or inside one that is ending, and a
/// broker's first check runs inside a test's runtime, where it cannot block on another.
pub fn clean_up(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work);
    })
    .join();
}
/// Turns a broker that cannot be started into a skip, or a failure under
/// `TIDINGS_REQUIRE_BROKERS=1`.
fn started<T>(what: &str, result: std::io::Result<T>) -> Option<T> {
    match result {
        Ok(server) => Some(server),
        Err(e) => {
            super::missing(
                &format!("a private {what}"),
                &format!("it cannot be started ({e})"),
                &format!("install {what}"),
            );
            None
        }
    }
}
/// Runs `examples/python/<script>` with `args` and returns what it printed (the id of the
/// update it published); a test failure, with what it wrote to stderr, when it fails.
pub fn run_python_example(script: &str, args: &[&str]) -> String {
    let output = python_example(script, args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}
/// Runs `examples/python/<script>` with `args`; what it did.
pub fn python_example(script: &str, args: &[&str]) -> std::process::Output {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/python")
        .join(script);
    std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3")
}

/// True when `python3` can import `module`; a failure under `TIDINGS_REQUIRE_BROKERS=1`.
pub fn python_ready(module: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        super::missing(
            &format!("the Python package {module}"),
            "python3 cannot import it",
            "pip install -r examples/python/requirements.txt",
        );
    }
    ok
}
