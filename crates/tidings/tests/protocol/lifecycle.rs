//! Connection lifecycle against the real binary: disconnects are noticed at once and leak
//! nothing, heartbeats keep idle streams alive, shutdown drains with a `retry:` hint.

use std::time::{Duration, Instant};

use crate::common::{wait_for, Hub, Stream, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a raw SSE connection and waits until the stream's opening comment arrived.
async fn raw_stream(hub: &Hub, topic: &str) -> TcpStream {
    let addr = hub.base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /.well-known/mercure?topic={topic} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\n:\n\n") {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("stream opening")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    socket
}

#[tokio::test]
async fn a_thousand_clients_come_and_go_without_leaking_subscribers_or_tasks() {
    let hub = Hub::start(&["--auth", "none"]);
    let base_subscribers = hub.metric("tidings_subscribers").await;
    let base_tasks = hub.metric("tidings_tokio_alive_tasks").await;
    for round in 0..2 {
        let mut sockets = Vec::with_capacity(1000);
        for i in 0..1000 {
            sockets.push(raw_stream(&hub, &format!("t{}", i % 7)).await);
        }
        assert_eq!(
            hub.metric("tidings_subscribers").await,
            base_subscribers + 1000.0,
            "round {round}"
        );
        assert_eq!(hub.metric("tidings_connections").await, 1000.0);
        drop(sockets);
        wait_for("subscribers to return to the baseline", async || {
            hub.metric("tidings_subscribers").await == base_subscribers
        })
        .await;
    }
    assert_eq!(hub.metric("tidings_connections").await, 0.0);
    wait_for("tasks to return to the baseline", async || {
        hub.metric("tidings_tokio_alive_tasks").await <= base_tasks
    })
    .await;
}

#[tokio::test]
async fn a_client_that_hangs_up_is_removed_at_once() {
    let hub = Hub::start(&["--auth", "none"]);
    let socket = raw_stream(&hub, "x").await;
    assert_eq!(hub.metric("tidings_subscribers").await, 1.0);
    let closed = Instant::now();
    drop(socket);
    wait_for("the subscriber to go", async || {
        hub.metric("tidings_subscribers").await == 0.0
    })
    .await;
    assert!(
        closed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        closed.elapsed()
    );
}

#[tokio::test]
async fn the_metrics_count_streams_opened_time_publishes_and_say_the_bus_state() {
    let hub = Hub::start(&["--auth", "none"]);
    assert_eq!(
        hub.metric("tidings_bus_state{state=\"connected\"}").await,
        1.0
    );
    for state in ["connecting", "reconnecting"] {
        let name = format!("tidings_bus_state{{state=\"{state}\"}}");
        assert_eq!(hub.metric(&name).await, 0.0, "{name}");
    }
    assert_eq!(hub.metric("tidings_streams_opened_total").await, 0.0);
    assert_eq!(
        hub.metric("tidings_publish_duration_seconds_count").await,
        0.0
    );
    let first = raw_stream(&hub, "x").await;
    drop(first);
    let _second = raw_stream(&hub, "x").await;
    crate::common::publish(&hub, None, &[("topic", "x"), ("data", "1")]).await;
    assert_eq!(
        hub.metric("tidings_streams_opened_total").await,
        2.0,
        "each stream opened counts, after it closed too"
    );
    wait_for("the first stream to be gone", async || {
        hub.metric("tidings_connections").await == 1.0
    })
    .await;
    assert_eq!(
        hub.metric("tidings_publish_duration_seconds_count").await,
        1.0
    );
    // The memory bus stores in well under a second.
    assert_eq!(
        hub.metric("tidings_publish_duration_seconds_bucket{le=\"1.0\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() {
    let hub = Hub::start(&["--auth", "none", "--heartbeat", "1"]);
    let mut socket = raw_stream(&hub, "quiet").await;
    let mut buf = [0u8; 64];
    let started = Instant::now();
    let mut beats = 0;
    while beats < 2 {
        let n = tokio::time::timeout(Duration::from_secs(3), socket.read(&mut buf))
            .await
            .expect("heartbeat")
            .unwrap();
        assert!(n > 0);
        beats += buf[..n].windows(3).filter(|w| w == b":\n\n").count();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "heartbeats are spaced by --heartbeat"
    );
}

#[tokio::test]
async fn sigterm_turns_readiness_off_ends_streams_with_a_retry_hint_and_exits() {
    let mut hub = Hub::start(&["--auth", "none", "--drain-secs", "2"]);
    let mut stream = Stream::open(&hub.url("/.well-known/mercure?topic=x"), &[]).await;
    // Each stream ends at a random moment of the drain window, and the instance exits after
    // the last one: with several, the drain surely lasts long enough to be watched.
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(Stream::open(&hub.url("/.well-known/mercure?topic=x"), &[]).await);
    }
    // A client whose connection is open before the shutdown (a load balancer's, a
    // publisher's kept-alive one).
    let client = crate::common::client();
    let ready = client.get(hub.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let started = Instant::now();
    hub.terminate();
    // The port is free at once; on the connection already open, the instance still answers:
    // not ready, and no new streams.
    wait_for("the instance to stop listening", async || {
        TcpStream::connect(hub.addr()).await.is_err()
    })
    .await;
    let ready = client.get(hub.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let refused = client
        .get(hub.url("/.well-known/mercure?topic=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    stream.until_closed().await;
    assert!(
        stream.raw_text().contains("retry: "),
        "{:?}",
        stream.raw_text()
    );
    assert_eq!(
        hub.wait_exit(Duration::from_secs(5)),
        Some(true),
        "exits cleanly after the drain"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_instance_restarted_in_place_serves_at_once_while_the_old_one_drains() {
    // systemd's restart, a container restarted with host networking: SIGTERM, and the new
    // process on the same port right away.
    let listen = format!("127.0.0.1:{}", crate::common::free_port());
    let args = ["--auth", "none", "--listen", &listen, "--drain-secs", "3"];
    let mut old = Hub::start(&args);
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(Stream::open(&old.url("/.well-known/mercure?topic=x"), &[]).await);
    }
    old.terminate();
    let started = Instant::now();
    let new = Hub::start(&args);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the new instance bound while the old one drains: {:?}",
        started.elapsed()
    );
    let old_alive = std::process::Command::new("kill")
        .args(["-0", &old.pid().to_string()])
        .status()
        .unwrap();
    assert!(old_alive.success(), "the old one still drains");
    // Publishes reach the new instance, whose streams get them.
    let mut fresh = Stream::open(&new.url("/.well-known/mercure?topic=x"), &[]).await;
    let (code, id) = crate::common::publish(&new, None, &[("topic", "x"), ("data", "new")]).await;
    assert_eq!(code, 200, "{id}");
    assert_eq!(fresh.next().await.id, id);
    // The old instance's streams end with their retry hint within its drain, and it exits.
    for stream in &mut streams {
        stream.until_closed().await;
        assert!(
            stream.raw_text().contains("retry: "),
            "{:?}",
            stream.raw_text()
        );
    }
    assert_eq!(old.wait_exit(Duration::from_secs(6)), Some(true));
}
