//! Test harness, shared by every test binary: runs the real `tidings` binary on a free loopback
//! port ([`hub`]), reads its streams with an independent SSE parser ([`sse`]), mints tokens and
//! certificates ([`tokens`]), reaches or starts brokers ([`brokers`]) and proxies ([`proxies`]),
//! and receives webhooks ([`receiver`]).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::print_stderr)]

pub mod brokers;
pub mod hub;
pub mod proxies;
pub mod receiver;
pub mod sse;
pub mod tokens;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use self::{brokers::*, hub::*, proxies::*, receiver::*, sse::*, tokens::*};

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Every wait in a test is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` every 25 ms until it holds; panics after [`WAIT`].
pub async fn wait_for(what: &str, check: impl AsyncFnMut() -> bool) {
    wait_until(what, WAIT, check).await;
}

/// Polls `check` every 25 ms until it holds; panics after `limit` (for what takes longer than
/// [`WAIT`], such as a broker coming back).
pub async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    // Never the same port twice in one test binary: tests run in parallel, and two private
    // brokers given one port would find each other.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Starts a server process (output discarded) and waits until it accepts connections on
/// `port`.
fn spawn_listening(mut command: Command, port: u16, wait: Duration) -> std::io::Result<Child> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + wait;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(format!(
                "{:?} did not start listening on port {port}",
                command.get_program()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Something else may hold the port (the server then exits at once): not ours.
    std::thread::sleep(Duration::from_millis(50));
    if let Ok(Some(status)) = child.try_wait() {
        return Err(std::io::Error::other(format!(
            "{:?} exited ({status}): port {port} is taken",
            command.get_program()
        )));
    }
    Ok(child)
}

/// Whether a program a test needs is installed: `false` means the test skips — a failure
/// under `TIDINGS_REQUIRE_BROKERS=1`, where `.ci/services` installs it.
pub fn installed(what: &str, present: bool) -> bool {
    if !present {
        missing(
            what,
            "it is not installed",
            "install it (`.ci/services` does)",
        );
    }
    present
}

/// What a test needs and cannot have (a broker, a program, a Python package): under
/// `TIDINGS_REQUIRE_BROKERS=1` (CI) a failure; otherwise the test skips, and the first test of
/// the binary to skip for `what` says so, with `how` to run them.
///
/// The line is written to the terminal itself, not through `eprintln!`: the test runner hides
/// what a passing test prints that way, and a skip must be seen.
pub fn missing(what: &str, why: &str, how: &str) {
    use std::io::Write;
    if std::env::var("TIDINGS_REQUIRE_BROKERS").as_deref() == Ok("1") {
        panic!("{what} is required (TIDINGS_REQUIRE_BROKERS=1) but {why}; {how}");
    }
    static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.iter().any(|s| s == what) {
        said.push(what.to_owned());
        // One write, on a line of its own: the runner's own lines are written in pieces.
        let line = format!("\nskipping the tests that need {what}: {why}; to run them, {how}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
