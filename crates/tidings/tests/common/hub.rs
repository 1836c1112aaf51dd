//! A `tidings serve` process of a test's own, and clusters of them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{client, publish, wait_for, WAIT};

/// A `tidings serve` process.
pub struct Hub {
    child: Child,
    /// `http://127.0.0.1:PORT`, or `https://…` when the hub serves TLS.
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The client [`Hub::metric`] uses (one that trusts the hub's certificate, for TLS).
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Hub {
    /// Starts `tidings serve --listen 127.0.0.1:0 <args>` (unless `args` has a `--listen` of
    /// its own) and waits for its ready line.
    pub fn start(args: &[&str]) -> Hub {
        Self::start_with(args, &[], None)
    }

    /// As [`Hub::start`], with extra environment variables and an optional `tidings.toml`.
    pub fn start_with(args: &[&str], env: &[(&str, &str)], toml: Option<&str>) -> Hub {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(toml) = toml {
            std::fs::write(dir.path().join("tidings.toml"), toml).expect("write tidings.toml");
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("TIDINGS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied())
            .env("TIDINGS_LOG", "info")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tidings");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let base: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(base);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let base = match rx.recv_timeout(WAIT) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "tidings did not become ready; log: {:?}",
                    log.lock().unwrap()
                );
            }
        };
        Hub {
            child,
            base,
            log,
            http: client(),
            _dir: dir,
        }
    }

    /// The same hub, reached through `http` (for a hub whose certificate needs a trust root).
    pub fn with_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// The directory the hub runs in (where its `tidings.toml` is).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        self.wait_for_logs(needle, 1).await;
    }

    /// The log lines so far that hold `needle`.
    pub fn log_lines(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `n` log lines hold `needle`.
    pub async fn wait_for_logs(&self, needle: &str, n: usize) {
        wait_for(&format!("{n} log lines with {needle:?}"), async || {
            self.log_lines(needle) >= n
        })
        .await
    }

    /// The `127.0.0.1:PORT` the hub listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base.split("://").nth(1).unwrap().parse().unwrap()
    }

    /// Sends SIGHUP (reload).
    pub fn hang_up(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Reads one metric's value from `/metrics` (`name` with its labels, as the text writes
    /// them, for a metric of a family).
    pub async fn metric(&self, name: &str) -> f64 {
        self.try_metric(name)
            .await
            .unwrap_or_else(|| panic!("metric {name} not found on {}", self.base))
    }

    /// Reads one metric's value from `/metrics`, or `None` when it is not there (yet).
    pub async fn try_metric(&self, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status a GET of `path` gets (0 when the hub cannot be reached).
pub async fn status(hub: &Hub, path: &str) -> u16 {
    client()
        .get(hub.url(path))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Publishes `data` on `topic`, retrying while the bus recovers (at most 15 s); returns the
/// update's id.
pub async fn publish_once_recovered(hub: &Hub, topic: &str, data: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    // One id for every attempt: an attempt answered with an error may still have been stored,
    // and a retry with its id is stored once.
    let id = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    loop {
        let fields = [("topic", topic), ("data", data), ("id", id.as_str())];
        let (code, answer) = publish(hub, None, &fields).await;
        if code == 200 {
            assert_eq!(answer, id);
            return id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "publishing did not recover: {code} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `tidings serve --listen 127.0.0.1:0 <args>`, which must fail; returns its error
/// output.
pub fn failed_start(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{args:?} started: {stderr}");
    stderr
}

/// As [`failed_start`], and the message holds `says`.
pub fn refuses_to_start(args: &[&str], says: &str) {
    let stderr = failed_start(args);
    assert!(stderr.contains(says), "{args:?}: {stderr}");
}
