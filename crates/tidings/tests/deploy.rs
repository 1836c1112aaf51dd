//! The deployment kit in `deploy/`, as shipped: the sample `tidings.toml` starts an instance
//! of a cluster, and the nginx and HAProxy configurations, pointed at three real instances on
//! Redis, spread streams over them round-robin and pass events and publishes through.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Hub, Stream};

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shipped configuration with its three instance addresses replaced by `hubs`'.
fn aimed_at(config: &str, hubs: &[Hub]) -> String {
    let mut config = config.to_owned();
    for (i, hub) in hubs.iter().enumerate() {
        let shipped = format!("127.0.0.1:{}", 3001 + i);
        assert!(config.contains(&shipped), "the config names {shipped}");
        config = config.replace(&shipped, &hub.addr().to_string());
    }
    config
}

/// A proxy process on a free loopback port, stopped on drop.
struct Proxy {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `program` (nginx or haproxy) with the configuration `write` puts in the
    /// directory, or `None` (skip) when it is not installed — a failure under
    /// `TIDINGS_REQUIRE_BROKERS=1`, where `.ci/services` installs both.
    #[allow(clippy::print_stderr)]
    fn start(
        program: &str,
        args: impl FnOnce(&Path) -> Vec<PathBuf>,
        config: impl FnOnce(&Path, u16),
    ) -> Option<Proxy> {
        if Command::new(program).arg("-v").output().is_err() {
            assert!(
                std::env::var("TIDINGS_REQUIRE_BROKERS").as_deref() != Ok("1"),
                "{program} is required (TIDINGS_REQUIRE_BROKERS=1)"
            );
            eprintln!("skipping: {program} is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        config(dir.path(), port);
        let child = Command::new(program)
            .args(args(dir.path()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{program} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Proxy {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// nginx with `deploy/nginx/tidings.conf` inside a minimal main configuration.
    fn nginx(hubs: &[Hub]) -> Option<Proxy> {
        let site = aimed_at(&deploy_file("nginx/tidings.conf"), hubs);
        Proxy::start(
            "nginx",
            |d| vec!["-p".into(), d.into(), "-c".into(), d.join("nginx.conf")],
            |d, port| {
                assert!(site.contains("listen 80;"));
                let site = site.replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
                std::fs::write(d.join("tidings.conf"), site).unwrap();
                let d = d.display();
                let main = format!(
                    "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
                     error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
                     http {{\n access_log off;\n client_body_temp_path {d}/body;\n\
                     proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
                     uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
                     include {d}/tidings.conf;\n}}\n"
                );
                std::fs::write(format!("{d}/nginx.conf"), main).unwrap();
            },
        )
    }

    /// HAProxy with `deploy/haproxy/haproxy.cfg`, checked with `haproxy -c` first.
    fn haproxy(hubs: &[Hub]) -> Option<Proxy> {
        let shipped = aimed_at(&deploy_file("haproxy/haproxy.cfg"), hubs);
        Proxy::start(
            "haproxy",
            |d| vec!["-f".into(), d.join("haproxy.cfg")],
            |d, port| {
                assert!(shipped.contains("bind :80") && shipped.contains("maxconn 100000"));
                // HAProxy needs twice `maxconn` open files, more than a test process may have.
                let config = shipped
                    .replace("bind :80", &format!("bind 127.0.0.1:{port}"))
                    .replace("maxconn 100000", "maxconn 4096");
                let path = d.join("haproxy.cfg");
                std::fs::write(&path, config).unwrap();
                let checked = Command::new("haproxy")
                    .arg("-c")
                    .arg("-f")
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(
                    checked.status.success(),
                    "haproxy -c: {}",
                    String::from_utf8_lossy(&checked.stderr)
                );
            },
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM: nginx's and HAProxy's fast shutdown (nginx's master stops its worker).
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

/// Streams through `proxy` land on every instance, and updates published on an instance or
/// through the proxy reach all of them, promptly (nothing buffered).
async fn streams_and_publishes_pass(proxy: &Proxy, hubs: &[Hub]) {
    let topic = common::unique_topic("deploy");
    let url = format!(
        "{}/.well-known/mercure?topic={}",
        proxy.base,
        urlencoding(&topic)
    );
    let mut streams = Vec::new();
    for _ in 0..hubs.len() {
        streams.push(Stream::open(&url, &[]).await);
    }
    for hub in hubs {
        common::wait_for("one stream on each instance (round-robin)", async || {
            hub.metric("tidings_subscribers").await == 1.0
        })
        .await;
    }
    let (status, id) =
        common::publish(&hubs[1], None, &[("topic", &topic), ("data", "direct")]).await;
    assert_eq!(status, 200, "{id}");
    for stream in &mut streams {
        let event = stream.next().await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (id.as_str(), "direct")
        );
    }
    let published = common::client()
        .post(format!("{}/.well-known/mercure", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "topic={}&data=through+the+proxy",
            urlencoding(&topic)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    let id = published.text().await.unwrap();
    for stream in &mut streams {
        let event = stream.next().await;
        assert_eq!(event.id, id.trim());
        assert_eq!(event.data, "through the proxy");
    }
}

fn urlencoding(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn nginx_spreads_streams_over_three_instances_and_passes_events_at_once() {
    let Some(keys) = common::redis_keys("deploy-nginx") else {
        return;
    };
    let hubs = common::redis_cluster(&keys, 3, &[]);
    let Some(proxy) = Proxy::nginx(&hubs) else {
        return;
    };
    streams_and_publishes_pass(&proxy, &hubs).await;
}

#[tokio::test]
async fn haproxy_spreads_streams_over_three_instances_and_passes_events_at_once() {
    let Some(keys) = common::redis_keys("deploy-haproxy") else {
        return;
    };
    let hubs = common::redis_cluster(&keys, 3, &[]);
    let Some(proxy) = Proxy::haproxy(&hubs) else {
        return;
    };
    streams_and_publishes_pass(&proxy, &hubs).await;
}

#[tokio::test]
async fn the_sample_configuration_starts_an_instance_of_a_cluster() {
    let Some(keys) = common::redis_keys("deploy-toml") else {
        return;
    };
    // As the systemd unit runs it: the file, the key from the environment, the address and
    // id on the command line (and here the test's Redis and prefix, and readable logs).
    let hub = Hub::start_with(
        &[
            "--config",
            &format!("{}/../../deploy/tidings.toml", env!("CARGO_MANIFEST_DIR")),
            "--bus",
            &keys.url,
            "--bus-prefix",
            &keys.prefix,
            "--instance-id",
            "deploy-sample-1",
            "--log-format",
            "pretty",
        ],
        &[("TIDINGS_JWT_KEY", "a-long-random-secret-for-the-test")],
        None,
    );
    let ready = common::get_json(&hub.url("/readyz")).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    // The file's settings took effect: tokens are required, history is on.
    let refused = common::client()
        .get(hub.url("/.well-known/mercure?topic=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}
