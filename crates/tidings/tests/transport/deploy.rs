//! The deployment kit in `deploy/`, as shipped: the sample `tidings.toml` starts an instance
//! of a cluster, and the nginx and HAProxy configurations, pointed at three real instances on
//! Redis, spread streams over them round-robin and pass events and publishes through.

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

/// nginx with `deploy/nginx/tidings.conf` in front of `hubs`, or `None` (skip) when nginx is
/// missing — a failure under `TIDINGS_REQUIRE_BROKERS=1`, where `.ci/services` installs it.
fn nginx(hubs: &[Hub]) -> Option<Proxy> {
    if !crate::common::installed("nginx", Command::new("nginx").arg("-v").output().is_ok()) {
        return None;
    }
    let site = aimed_at(&deploy_file("nginx/tidings.conf"), hubs);
    assert!(site.contains("listen 80;"));
    Some(Proxy::nginx("", |port| {
        site.replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
    }))
}

/// HAProxy with `deploy/haproxy/haproxy.cfg` in front of `hubs`, checked with `haproxy -c`
/// first, or `None` (skip) as for nginx.
fn haproxy(hubs: &[Hub]) -> Option<Proxy> {
    if !crate::common::installed(
        "haproxy",
        Command::new("haproxy").arg("-v").output().is_ok(),
    ) {
        return None;
    }
    let shipped = aimed_at(&deploy_file("haproxy/haproxy.cfg"), hubs);
    assert!(shipped.contains("bind :80") && shipped.contains("maxconn 100000"));
    Some(Proxy::start("haproxy", |dir, port| {
        // HAProxy needs twice `maxconn` open files, more than a test process may have.
        let config = shipped
            .replace("bind :80", &format!("bind 127.0.0.1:{port}"))
            .replace("maxconn 100000", "maxconn 4096");
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
    }))
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

/// Three instances on Redis behind the proxy `start` runs; see [`streams_and_publishes_pass`].
async fn behind(name: &str, start: fn(&[Hub]) -> Option<Proxy>) {
    let Some(keys) = crate::common::redis_keys(name) else {
        return;
    };
    let hubs = crate::common::redis_cluster(&keys, 3, &[]);
    let Some(proxy) = start(&hubs) else {
        return;
    };
    streams_and_publishes_pass(&proxy, &hubs).await;
}

#[tokio::test]
async fn nginx_spreads_streams_over_three_instances_and_passes_events_at_once() {
    behind("deploy-nginx", nginx).await;
}

#[tokio::test]
async fn haproxy_spreads_streams_over_three_instances_and_passes_events_at_once() {
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
