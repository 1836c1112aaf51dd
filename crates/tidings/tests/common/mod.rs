//! Test harness: runs the real `tidings` binary on a free loopback port, and reads its streams
//! with an independent SSE parser (`eventsource-stream`).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

/// The HS256 key the test hubs are started with.
pub const KEY: &str = "test-secret-key-of-a-decent-length";

/// Every wait in a test is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

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
        wait_for(&format!("a log line with {needle:?}"), async || {
            self.log.lock().unwrap().iter().any(|l| l.contains(needle))
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

    /// Reads one metric's value from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
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
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a CA certificate named `name`, and a certificate for 127.0.0.1 signed by it with
/// its key, into `dir`; returns their paths (ca, cert, key).
pub fn test_certificates(dir: &std::path::Path, name: &str) -> [std::path::PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    let paths = [
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-server.pem")),
        dir.join(format!("{name}-server.key")),
    ];
    std::fs::write(&paths[0], ca_cert.pem()).unwrap();
    std::fs::write(&paths[1], server_cert.pem()).unwrap();
    std::fs::write(&paths[2], server_key.serialize_pem()).unwrap();
    paths
}

/// Polls `check` every 25 ms until it holds; panics after [`WAIT`].
pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn client() -> reqwest::Client {
    tidings::cli::install_crypto_provider();
    reqwest::Client::builder().build().unwrap()
}

/// GETs `url` and decodes the JSON answer.
pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Mints an HS256 token with the given claims.
pub fn token(claims: Value) -> String {
    token_with(KEY, claims)
}

/// Mints an HS256 token with the given claims, signed with `key`.
pub fn token_with(key: &str, claims: Value) -> String {
    let claims: tidings::auth::Claims = serde_json::from_value(claims).unwrap();
    tidings::auth::mint(tidings::auth::JwtAlg::Hs256, key, &claims).unwrap()
}

/// Seconds since the Unix epoch, plus `offset`.
pub fn unix_time(offset: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now + offset
}

pub fn publisher_token() -> String {
    token(serde_json::json!({"mercure": {"publish": ["*"]}}))
}

/// An open SSE stream, read in the background.
pub struct Stream {
    pub status: reqwest::StatusCode,
    pub version: reqwest::Version,
    pub headers: reqwest::header::HeaderMap,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    /// Raw bytes as received (for exact assertions).
    pub raw: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    /// Opens `url` with extra headers; panics unless the answer is 200.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Stream {
        let s = Self::try_open(url, headers).await;
        assert_eq!(s.status, 200, "opening {url}");
        s
    }

    /// Opens `url`, whatever the status.
    pub async fn try_open(url: &str, headers: &[(&str, &str)]) -> Stream {
        Self::try_open_with(&client(), url, headers).await
    }

    /// Opens `url` through `http`, whatever the status.
    pub async fn try_open_with(
        http: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Stream {
        let mut req = http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("connect timeout")
            .expect("connect");
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let (tx, events) = mpsc::unbounded_channel();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let raw_sink = raw.clone();
        let task = tokio::spawn(async move {
            let bytes = response.bytes_stream().map(move |chunk| {
                if let Ok(c) = &chunk {
                    raw_sink.lock().unwrap().extend_from_slice(c);
                }
                chunk
            });
            let mut parsed = bytes.eventsource();
            while let Some(item) = parsed.next().await {
                if tx.send(item.map_err(|e| e.to_string())).is_err() {
                    break;
                }
            }
        });
        Stream {
            status,
            version,
            headers,
            events,
            raw,
            task,
        }
    }

    /// The next event (comments are not events), within [`WAIT`].
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("stream ended")
            .expect("stream error")
    }

    /// `None` if no event arrives within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(Ok(e))) => Some(e),
            _ => None,
        }
    }

    /// Waits until the server ends the stream; returns the events that came before.
    pub async fn until_closed(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("stream did not close")
            {
                Some(Ok(e)) => events.push(e),
                Some(Err(_)) | None => return events,
            }
        }
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }

    /// Closes the connection from the client side.
    pub fn close(self) {
        self.task.abort();
    }
}

/// POSTs a Mercure form; returns status and body.
pub async fn publish(hub: &Hub, token: Option<&str>, form: &[(&str, &str)]) -> (u16, String) {
    let body = form
        .iter()
        .fold(
            form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(k, v);
                s
            },
        )
        .finish();
    let mut req = client()
        .post(hub.url("/.well-known/mercure"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let response = req.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The URL of a Mercure subscription to `selectors`, plus extra raw query text.
pub fn subscribe_url(hub: &Hub, selectors: &[&str], extra: &str) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for sel in selectors {
        s.append_pair("topic", sel);
    }
    let q = s.finish();
    hub.url(&format!("/.well-known/mercure?{q}{extra}"))
}

/// A topic unique to this call, so tests never see each other's updates.
pub fn unique_topic(name: &str) -> String {
    format!("https://example.com/{name}/{}", uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The Redis the tests use (`TIDINGS_TEST_REDIS`, default the machine's 127.0.0.1:6379), or
/// `None` when it is unreachable — in which case the caller skips, unless
/// `TIDINGS_REQUIRE_BROKERS=1`, which turns the skip into a failure.
pub fn redis_url() -> Option<String> {
    let url = std::env::var("TIDINGS_TEST_REDIS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let reachable = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .map(|_| ())
        .map_err(|e| e.to_string());
    available("Redis", &url, "TIDINGS_TEST_REDIS", reachable)
}

/// `Some(url)` when the broker answered; otherwise `None` (the test skips), or a failure under
/// `TIDINGS_REQUIRE_BROKERS=1`.
fn available(
    broker: &str,
    url: &str,
    variable: &str,
    reachable: Result<(), String>,
) -> Option<String> {
    let shown = tidings::bus::redact(url);
    match reachable {
        Ok(()) => Some(url.to_owned()),
        Err(e) if std::env::var("TIDINGS_REQUIRE_BROKERS").as_deref() == Ok("1") => {
            panic!(
                "{broker} at {shown} is required (TIDINGS_REQUIRE_BROKERS=1) but unreachable: {e}"
            )
        }
        Err(e) => {
            eprintln!("skipping: {broker} at {shown} is unreachable ({e}); set {variable}");
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

/// Deletes every key under `prefix` (tests leave the shared Redis as they found it).
pub fn redis_cleanup(url: &str, prefix: &str) {
    let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
    }
}

/// Removes a test's Redis keys when dropped, even when the test fails.
pub struct RedisKeys {
    pub url: String,
    pub prefix: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        redis_cleanup(&self.url, &self.prefix);
    }
}

/// A fresh key prefix on the test Redis, or `None` (skip) as [`redis_url`] says.
pub fn redis_keys(name: &str) -> Option<RedisKeys> {
    let url = redis_url()?;
    Some(RedisKeys {
        prefix: unique_prefix(name),
        url,
    })
}

/// `n` instances (`--auth none`) on the test Redis under `keys`' prefix, plus `extra` flags.
pub fn redis_cluster(keys: &RedisKeys, n: usize, extra: &[&str]) -> Vec<Hub> {
    cluster_on(&keys.url, &keys.prefix, n, extra)
}

/// `n` instances on the bus `bus`, named `prefix` there; instance `i` has the id
/// `<prefix>-<i>`.
pub fn cluster_on(bus: &str, prefix: &str, n: usize, extra: &[&str]) -> Vec<Hub> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let mut args = vec![
                "--auth",
                "none",
                "--bus",
                bus,
                "--bus-prefix",
                prefix,
                "--instance-id",
                &id,
            ];
            args.extend_from_slice(extra);
            Hub::start(&args)
        })
        .collect()
}

/// A `redis-server` of a test's own, on a free port, stopped by PID (never the machine's
/// shared Redis). Without persistence: a restart loses everything, as a crash would.
pub struct PrivateRedis {
    pub port: u16,
    /// TLS only: the server certificate and key files (`rediss://`).
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `requirepass`: clients must authenticate.
    password: Option<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one, or `None` (skip) when `redis-server` is not installed — a failure under
    /// `TIDINGS_REQUIRE_BROKERS=1`.
    pub fn start() -> Option<PrivateRedis> {
        Self::start_inner(None, None)
    }

    /// Starts one that requires this password ([`PrivateRedis::url`] carries it).
    pub fn start_with_password(password: &str) -> Option<PrivateRedis> {
        Self::start_inner(None, Some(password.to_owned()))
    }

    /// Starts one that speaks TLS only, with this certificate chain and key (PEM files).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Option<PrivateRedis> {
        Self::start_inner(Some((cert.to_owned(), key.to_owned())), None)
    }

    fn start_inner(
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
        password: Option<String>,
    ) -> Option<PrivateRedis> {
        let mut redis = PrivateRedis {
            port: free_port(),
            tls,
            password,
            child: None,
        };
        started("redis-server", redis.spawn().map(|()| redis))
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let port = self.port.to_string();
        let mut args: Vec<String> = vec!["--bind".into(), "127.0.0.1".into()];
        match &self.tls {
            None => args.extend(["--port".into(), port]),
            Some((cert, key)) => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
        }
        args.extend(["--save", "", "--appendonly", "no"].map(String::from));
        if let Some(password) = &self.password {
            args.extend(["--requirepass".into(), password.clone()]);
        }
        let mut command = Command::new("redis-server");
        command.args(args);
        self.child = Some(spawn_listening(command, self.port, WAIT)?);
        Ok(())
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn().expect("restart redis-server");
    }

    /// Runs one command on a plain (non-TLS) private Redis.
    pub fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut conn = redis::Client::open(self.url())?.get_connection()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The NATS server the tests use (`TIDINGS_TEST_NATS`, default the machine's
/// 127.0.0.1:4222, with JetStream), or `None` (skip) as for [`redis_url`].
pub fn nats_url() -> Option<String> {
    let url = std::env::var("TIDINGS_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let reachable = accepts(url.trim_start_matches("nats://"));
    available("NATS", &url, "TIDINGS_TEST_NATS", reachable)
}

/// Runs a broker clean-up to its end on a runtime of its own, in a thread of its own: a guard
/// may be dropped outside of a runtime, or inside one that is ending.
fn clean_up(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work);
    })
    .join();
}

/// Deletes a test's JetStream stream when dropped, even when the test fails.
pub struct NatsStream {
    pub url: String,
    /// The prefix the buses were given; the stream is named from it.
    pub prefix: String,
}

impl Drop for NatsStream {
    fn drop(&mut self) {
        let name = tidings::bus::nats::stream_name(&self.prefix);
        let url = self.url.clone();
        clean_up(async move {
            if let Ok(client) = async_nats::connect(url).await {
                let _ = async_nats::jetstream::new(client).delete_stream(name).await;
            }
        });
    }
}

/// The RabbitMQ the tests use (`TIDINGS_TEST_AMQP`, default the machine's 127.0.0.1:5672 as
/// guest), or `None` (skip) as for [`redis_url`].
pub fn amqp_url() -> Option<String> {
    let url = std::env::var("TIDINGS_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let authority = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let reachable = accepts(host_port);
    available("RabbitMQ", &url, "TIDINGS_TEST_AMQP", reachable)
}

/// Deletes a test's RabbitMQ exchange and stream when dropped, even when the test fails.
pub struct AmqpObjects {
    pub url: String,
    /// The prefix the buses were given; the exchange and the stream are named from it.
    pub prefix: String,
}

impl Drop for AmqpObjects {
    fn drop(&mut self) {
        let names = tidings::bus::amqp::Names::new(&self.prefix);
        let url = self.url.clone();
        clean_up(async move {
            let properties = lapin::ConnectionProperties::default();
            let Ok(connection) = lapin::Connection::connect(&url, properties).await else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(names.stream.as_str().into(), Default::default())
                    .await;
                let _ = channel
                    .exchange_delete(names.exchange.as_str().into(), Default::default())
                    .await;
            }
            let _ = connection.close(200, "done".into()).await;
        });
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

/// A RabbitMQ node of the test's own — its own node name, ports and data directory, listening
/// on loopback only — started as its own process group and stopped by killing that group:
/// never the machine's shared RabbitMQ. It takes seconds to boot.
pub struct PrivateRabbit {
    pub port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRabbit {
    /// How long a node may take to boot.
    const BOOT: Duration = Duration::from_secs(90);

    /// Starts one, or `None` (skip) when RabbitMQ is not installed — a failure under
    /// `TIDINGS_REQUIRE_BROKERS=1`.
    pub fn start() -> Option<PrivateRabbit> {
        let mut rabbit = PrivateRabbit {
            port: free_port(),
            dist_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        started("rabbitmq-server", rabbit.spawn().map(|()| rabbit))
    }

    /// Starts it again (after [`PrivateRabbit::stop`]), on the same ports and data.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let dir = self.dir.path();
        std::fs::write(dir.join("enabled_plugins"), "[].")?;
        let mut command = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        command
            .process_group(0)
            .env("HOME", dir)
            .env(
                "RABBITMQ_NODENAME",
                format!("tidings-test-{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", dir.join("feature_flags"));
        self.child = Some(spawn_listening(command, self.port, Self::BOOT)?);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the node as a service manager would (SIGTERM to every process of its group:
    /// RabbitMQ shuts down cleanly), killing it if it takes longer than 30 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !std::process::Command::new("kill")
                .args(["-0", "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| !s.success())
            {
                if std::time::Instant::now() > deadline {
                    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                    break;
                }
                let _ = child.try_wait();
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Turns a broker that cannot be started into a skip, or a failure under
/// `TIDINGS_REQUIRE_BROKERS=1`.
fn started<T>(what: &str, result: std::io::Result<T>) -> Option<T> {
    match result {
        Ok(server) => Some(server),
        Err(e) if std::env::var("TIDINGS_REQUIRE_BROKERS").as_deref() == Ok("1") => {
            panic!("{what} is required (TIDINGS_REQUIRE_BROKERS=1): {e}")
        }
        Err(e) => {
            eprintln!("skipping: cannot start {what} ({e})");
            None
        }
    }
}

/// A `nats-server -js` of a test's own, on a free port, with its store in a temporary
/// directory, stopped by PID (never the machine's shared one).
pub struct PrivateNats {
    pub port: u16,
    pub store: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts one, or `None` (skip) when `nats-server` is not installed — a failure under
    /// `TIDINGS_REQUIRE_BROKERS=1`.
    pub fn start() -> Option<PrivateNats> {
        let mut nats = PrivateNats {
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        started("nats-server", nats.spawn().map(|()| nats))
    }

    /// Starts it again (after [`PrivateNats::stop`]), on the same port and store.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        let mut command = Command::new("nats-server");
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path());
        self.child = Some(spawn_listening(command, self.port, WAIT)?);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
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
    loop {
        let (code, id) = publish(hub, None, &[("topic", topic), ("data", data)]).await;
        if code == 200 {
            return id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "publishing did not recover: {code} {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a program a test needs is installed: `false` means the test skips — a failure
/// under `TIDINGS_REQUIRE_BROKERS=1`, where `.ci/services` installs it.
pub fn installed(what: &str, present: bool) -> bool {
    if !present {
        assert!(
            std::env::var("TIDINGS_REQUIRE_BROKERS").as_deref() != Ok("1"),
            "{what} is required (TIDINGS_REQUIRE_BROKERS=1)"
        );
        eprintln!("skipping: {what} is not installed");
    }
    present
}

/// A server program a test runs on a free loopback port (nginx, HAProxy), with its files in a
/// directory of its own; stopped on drop.
pub struct Proxy {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `program` with the arguments `configure(dir, port)` returns (after writing its
    /// configuration into `dir`), and waits until it accepts connections on `port`.
    pub fn start(
        program: &str,
        configure: impl FnOnce(&std::path::Path, u16) -> Vec<std::ffi::OsString>,
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let args = configure(dir.path(), port);
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let proxy = Proxy {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{program} did not start: {}",
                std::fs::read_to_string(proxy.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    /// nginx, one worker, in the foreground, every file it writes in its directory:
    /// `main` goes before the `http` block, `http(port)` inside it.
    pub fn nginx(main: &str, http: impl FnOnce(u16) -> String) -> Proxy {
        Proxy::start("nginx", |dir, port| {
            let d = dir.display();
            let conf = format!(
                "{main}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {d}/body;\n\
                 proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{}\n}}\n",
                http(port)
            );
            let path = dir.join("nginx.conf");
            std::fs::write(&path, conf).unwrap();
            vec!["-p".into(), dir.into(), "-c".into(), path.into()]
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM is nginx's and HAProxy's fast shutdown: nginx's master stops its worker and
        // exits (SIGKILL would leave the worker running; SIGQUIT would wait for the streams).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
