//! The deployment kit in `deploy/`, as shipped: the sample `tidings.toml` starts an instance
//! of a cluster, and the nginx and HAProxy configurations, pointed at three real instances on
//! Redis, spread streams over them round-robin and pass events and publishes through, and
//! serve HTTPS with HTTP/2, many streams on one connection.

use std::path::Path;
use std::process::Command;

use crate::common::{Hub, Proxy, Stream};

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// nginx with `deploy/nginx/tidings.conf` in front of `hubs`, serving HTTP and HTTPS (a
/// certificate made by the test, trusted by [`Proxied::tls_client`]), or `None` (skip) when
/// nginx is missing — a failure under `TIDINGS_REQUIRE_BROKERS=1`, where `.ci/services`
/// installs it.
fn nginx(hubs: &[Hub]) -> Option<Proxied> {
    if !crate::common::installed("nginx", Command::new("nginx").arg("-v").output().is_ok()) {
        return None;
    }
    let site = aimed_at(&deploy_file("nginx/tidings.conf"), hubs);
    for shipped in [
        "listen 80;",
        "listen 443 ssl http2;",
        "/etc/ssl/tidings/fullchain.pem",
        "/etc/ssl/tidings/privkey.pem",
    ] {
        assert!(site.contains(shipped), "the site says {shipped}");
    }
    let tls_port = crate::common::free_port();
    let mut ca = String::new();
    let proxy = Proxy::nginx("", |dir, port| {
        let [ca_path, cert, key] = crate::common::test_certificates(dir, "nginx");
        ca = std::fs::read_to_string(ca_path).unwrap();
        site.replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
            .replace(
                "listen 443 ssl http2;",
                &format!("listen 127.0.0.1:{tls_port} ssl http2;"),
            )
            .replace("/etc/ssl/tidings/fullchain.pem", cert.to_str().unwrap())
            .replace("/etc/ssl/tidings/privkey.pem", key.to_str().unwrap())
    });
    Some(Proxied {
        proxy: proxy.with_tls(tls_port),
        ca,
    })
}

/// HAProxy with `deploy/haproxy/haproxy.cfg` in front of `hubs`, serving HTTP and HTTPS as
/// nginx does, checked with `haproxy -c` first, or `None` (skip) as for nginx.
fn haproxy(hubs: &[Hub]) -> Option<Proxied> {
    if !crate::common::installed(
        "haproxy",
        Command::new("haproxy").arg("-v").output().is_ok(),
    ) {
        return None;
    }
    let shipped = aimed_at(&deploy_file("haproxy/haproxy.cfg"), hubs);
    let tls_bind = "bind :443 ssl crt /etc/haproxy/certs/tidings.pem alpn h2,http/1.1";
    assert!(
        shipped.contains("bind :80\n")
            && shipped.contains(tls_bind)
            && shipped.contains("maxconn 8000\n")
    );
    let tls_port = crate::common::free_port();
    let mut ca = String::new();
    let proxy = Proxy::start("haproxy", |dir, port| {
        let [ca_path, cert, key] = crate::common::test_certificates(dir, "haproxy");
        ca = std::fs::read_to_string(ca_path).unwrap();
        let pem = dir.join("tidings.pem");
        std::fs::write(
            &pem,
            std::fs::read_to_string(cert).unwrap() + &std::fs::read_to_string(key).unwrap(),
        )
        .unwrap();
        // `maxconn` as shipped: it fits the open-files limit a test process has.
        let config = shipped
            .replace("bind :80\n", &format!("bind 127.0.0.1:{port}\n"))
            .replace(
                tls_bind,
                &format!(
                    "bind 127.0.0.1:{tls_port} ssl crt {} alpn h2,http/1.1",
                    pem.display()
                ),
            );
        let path = dir.join("haproxy.cfg");
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
        vec!["-f".into(), path.into()]
    });
    Some(Proxied {
        proxy: proxy.with_tls(tls_port),
        ca,
    })
}

/// A proxy of the kit, and the CA its certificate chains to.
struct Proxied {
    proxy: Proxy,
    ca: String,
}

impl Proxied {
    /// A client that trusts the proxy's certificate and speaks HTTP/2 when offered (ALPN).
    fn tls_client(&self) -> reqwest::Client {
        tidings::cli::install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(self.ca.as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap()
    }
}

/// Over HTTPS the proxy speaks HTTP/2: one client connection carries more streams than a
/// browser's six HTTP/1.1 connections per origin, and each gets its events.
async fn streams_share_one_http2_connection(proxied: &Proxied, hubs: &[Hub]) {
    const STREAMS: usize = 10;
    let base = proxied.proxy.tls_base.as_ref().unwrap();
    let topic = crate::common::unique_topic("deploy-h2");
    let url = format!("{base}/.well-known/mercure?topic={}", urlencoding(&topic));
    let client = proxied.tls_client();
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let stream = Stream::try_open_with(&client, &url, &[]).await;
        assert_eq!(stream.status, 200);
        assert_eq!(stream.version, reqwest::Version::HTTP_2);
        streams.push(stream);
    }
    let (status, id) =
        crate::common::publish(&hubs[0], None, &[("topic", &topic), ("data", "over h2")]).await;
    assert_eq!(status, 200, "{id}");
    for stream in &mut streams {
        assert_eq!(stream.next().await.data, "over h2");
    }
}

/// Streams through `proxy` land on every instance, and updates published on an instance or
/// through the proxy reach all of them, promptly (nothing buffered).
async fn streams_and_publishes_pass(proxy: &Proxy, hubs: &[Hub]) {
    let topic = crate::common::unique_topic("deploy");
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
        crate::common::wait_for("one stream on each instance (round-robin)", async || {
            hub.metric("tidings_subscribers").await == 1.0
        })
        .await;
    }
    let (status, id) =
        crate::common::publish(&hubs[1], None, &[("topic", &topic), ("data", "direct")]).await;
    assert_eq!(status, 200, "{id}");
    for stream in &mut streams {
        let event = stream.next().await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (id.as_str(), "direct")
        );
    }
    let published = crate::common::client()
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

/// Three instances on Redis behind the proxy `start` runs; see [`streams_and_publishes_pass`]
/// and [`streams_share_one_http2_connection`].
async fn behind(name: &str, start: fn(&[Hub]) -> Option<Proxied>) {
    let Some(keys) = crate::common::redis_keys(name) else {
        return;
    };
    let hubs = crate::common::redis_cluster(&keys, 3, &[]);
    let Some(proxied) = start(&hubs) else {
        return;
    };
    streams_and_publishes_pass(&proxied.proxy, &hubs).await;
    streams_share_one_http2_connection(&proxied, &hubs).await;
}

#[tokio::test]
async fn nginx_spreads_streams_over_three_instances_passes_events_at_once_and_speaks_h2() {
    behind("deploy-nginx", nginx).await;
}

#[tokio::test]
async fn haproxy_spreads_streams_over_three_instances_passes_events_at_once_and_speaks_h2() {
    behind("deploy-haproxy", haproxy).await;
}

#[tokio::test]
async fn the_sample_configuration_starts_an_instance_of_a_cluster() {
    let Some(keys) = crate::common::redis_keys("deploy-toml") else {
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
    let ready = crate::common::get_json(&hub.url("/readyz")).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    // The file's settings took effect: tokens are required, history is on.
    let refused = crate::common::client()
        .get(hub.url("/.well-known/mercure?topic=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}

/// The directives of the `location / { … }` block of an nginx configuration, comments and
/// blank lines left out, each as written.
fn location_directives(config: &str) -> Vec<String> {
    let block = config
        .split_once("location / {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(block, _)| block)
        .expect("a `location / { … }` block");
    block
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn compose_s_nginx_passes_streams_as_the_kit_s_nginx_does() {
    // compose.yaml's nginx differs from the kit's in its instances' addresses and its
    // listeners only: what it does with a request is the kit's, setting for setting.
    let kit = location_directives(&deploy_file("nginx/tidings.conf"));
    let compose = location_directives(&deploy_file("compose/nginx.conf"));
    assert!(kit.len() > 10, "the kit's location block: {kit:?}");
    assert_eq!(compose, kit);
    for instance in ["tidings-1:3000", "tidings-2:3000", "tidings-3:3000"] {
        let server = format!("server {instance} max_fails=0;");
        assert!(
            deploy_file("compose/nginx.conf").contains(&server),
            "{server}"
        );
    }
}
