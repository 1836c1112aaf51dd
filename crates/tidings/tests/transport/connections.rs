//! Connections from clients that misbehave at the TCP or HTTP level, against the real binary:
//! requests that never finish their headers, silent connections, half-closed clients, peers
//! that vanish without a word (half-open connections, in a network namespace made by the
//! test), bodies on GET, oversized heads, clients that stop reading. Each is closed or refused as documented in
//! `docs/security.md`, and none leaves a subscriber or a stream behind.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{publish, wait_for, Hub, Stream, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(hub: &Hub) -> SocketAddr {
    hub.addr()
}

/// Reads until the server closes the connection (or `WAIT` passes); returns what it sent and
/// how long that took.
async fn read_until_closed(socket: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    (
        String::from_utf8_lossy(&seen).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_request_that_never_finishes_its_headers_is_closed_after_the_header_read_timeout() {
    let hub = Hub::start(&["--auth", "none", "--header-read-timeout", "1"]);
    let mut socket = TcpStream::connect(addr(&hub)).await.unwrap();
    socket
        .write_all(b"GET /.well-known/mercure?topic=x HTTP/1.1\r\nHost: x\r\nAccept: text/")
        .await
        .unwrap();
    let (answer, took) = read_until_closed(&mut socket).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    assert_eq!(answer, "", "closed without an answer");
    // A connection that sends nothing at all is closed the same way.
    let mut silent = TcpStream::connect(addr(&hub)).await.unwrap();
    let (answer, took) = read_until_closed(&mut silent).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    assert_eq!(answer, "");
    // Meanwhile the hub serves everyone else.
    assert_eq!(crate::common::status(&hub, "/healthz").await, 200);
}

#[tokio::test]
async fn a_body_on_a_get_request_is_refused() {
    let hub = Hub::start(&["--auth", "none"]);
    let mut socket = TcpStream::connect(addr(&hub)).await.unwrap();
    socket
        .write_all(
            b"GET /.well-known/mercure?topic=x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"error\":\"unexpected_body\""), "{answer}");
    let mut chunked = TcpStream::connect(addr(&hub)).await.unwrap();
    chunked
        .write_all(
            b"GET /sse/event-stream?eventName=e&sessionId=s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut chunked).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(hub.metric("tidings_subscribers").await, 0.0);
}

#[tokio::test]
async fn a_client_that_half_closes_its_connection_leaves_nothing_behind() {
    let hub = Hub::start(&["--auth", "none"]);
    let mut socket = open_raw_stream(&hub).await;
    assert_eq!(hub.metric("tidings_subscribers").await, 1.0);
    socket.shutdown().await.unwrap();
    wait_for("the half-closed stream to go", async || {
        hub.metric("tidings_subscribers").await == 0.0
            && hub.metric("tidings_connections").await == 0.0
    })
    .await;
}

/// A stream on topic `x` over a raw socket, its status line read (and checked).
async fn open_raw_stream(hub: &Hub) -> TcpStream {
    let mut socket = TcpStream::connect(addr(hub)).await.unwrap();
    socket
        .write_all(b"GET /.well-known/mercure?topic=x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    socket.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    socket
}

/// A connection whose receive buffer is tiny and which never reads what it is sent.
async fn stalled_stream(hub: &Hub, topic: &str) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr(hub).into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut stream = TcpStream::from_std(socket.into()).unwrap();
    let request = format!("GET /.well-known/mercure?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_while_fast_clients_get_everything() {
    let hub = Hub::start(&[
        "--auth",
        "none",
        "--subscriber-queue",
        "1000",
        "--subscriber-queue-bytes",
        "200000",
    ]);
    let topic = "stall";
    let mut fast = Stream::open(
        &hub.url(&format!("/.well-known/mercure?topic={topic}")),
        &[],
    )
    .await;
    let mut stalled = stalled_stream(&hub, topic).await;
    wait_for("both subscribers", async || {
        hub.metric("tidings_subscribers").await == 2.0
    })
    .await;
    // 20 KB a piece: the stalled socket's buffers fill, then its 200 KB queue.
    let data = "x".repeat(20_000);
    let mut published = 0;
    while hub
        .metric("tidings_slow_consumers_disconnected_total")
        .await
        == 0.0
    {
        assert!(
            published < 2_000,
            "the stalled client was never disconnected"
        );
        let (status, _) = publish(&hub, None, &[("topic", topic), ("data", &data)]).await;
        assert_eq!(status, 200);
        published += 1;
    }
    // Its connection is closed at once, although the hub's writes to it were blocked.
    wait_for("the stalled connection to close", async || {
        hub.metric("tidings_connections").await == 1.0
    })
    .await;
    // With a reset: what the kernel still held for it is dropped, not delivered.
    let mut buf = vec![0u8; 1 << 16];
    let ending = tokio::time::timeout(WAIT, async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Err(e) => break Err(e.kind()),
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(
        ending.expect("the stalled client sees its connection end"),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    for i in 0..published {
        let event = fast.next().await;
        assert_eq!(event.data.len(), data.len(), "update {i}");
    }
    assert_eq!(hub.metric("tidings_subscribers").await, 1.0);
}

#[tokio::test]
async fn a_write_that_makes_no_progress_for_the_write_timeout_closes_the_connection() {
    // A queue far larger than what the socket buffers hold: the stalled connection is not a
    // slow consumer yet when its writes stop moving.
    let hub = Hub::start(&[
        "--auth",
        "none",
        "--write-timeout",
        "1",
        "--subscriber-queue",
        "100000",
        "--subscriber-queue-bytes",
        "1000000000",
    ]);
    let topic = "quiet";
    let _stalled = stalled_stream(&hub, topic).await;
    wait_for("the subscriber", async || {
        hub.metric("tidings_subscribers").await == 1.0
    })
    .await;
    let data = "y".repeat(100_000);
    // Enough to fill every buffer between the hub and the stalled socket.
    for _ in 0..200 {
        if hub.metric("tidings_connections").await == 0.0 {
            break;
        }
        let (status, _) = publish(&hub, None, &[("topic", topic), ("data", &data)]).await;
        assert_eq!(status, 200);
    }
    wait_for("the write timeout to close the connection", async || {
        hub.metric("tidings_connections").await == 0.0
    })
    .await;
    assert_eq!(
        hub.metric("tidings_slow_consumers_disconnected_total")
            .await,
        0.0
    );
    assert_eq!(hub.metric("tidings_subscribers").await, 0.0);
}

/// Sends `head` (ignoring a write cut short by the server) and returns the status line.
async fn status_line_for(hub: &Hub, head: Vec<u8>) -> String {
    let mut socket = TcpStream::connect(addr(hub)).await.unwrap();
    let _ = socket.write_all(&head).await;
    let (answer, _) = read_until_closed(&mut socket).await;
    answer.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let hub = Hub::start(&["--auth", "none"]);
    let request = |uri: &str, headers: &str| {
        format!("GET {uri} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").into_bytes()
    };
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "v".repeat(70_000));
    let long_uri = format!("/.well-known/mercure?{}", "topic=a&".repeat(10_000));
    for (head, status, case) in [
        (request("/healthz", &many), "431", "200 headers"),
        (request("/healthz", &huge), "431", "a 70 kB header"),
        (request(&long_uri, ""), "431", "an 80 kB URI"),
    ] {
        let line = status_line_for(&hub, head).await;
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status}")),
            "{case}: {line}"
        );
    }
    // A head just under the limit is served.
    let large = format!("X-Big: {}\r\n", "v".repeat(50_000));
    let line = status_line_for(&hub, request("/healthz", &large)).await;
    assert!(line.starts_with("HTTP/1.1 200"), "a 50 kB header: {line}");
    assert_eq!(crate::common::status(&hub, "/healthz").await, 200);
}

/// A network namespace joined to this one by a veth pair, made for one test and deleted when
/// dropped: a client in it can vanish (its link goes down) without a FIN or a RST.
struct Namespace {
    name: String,
    host_ip: String,
    link: String,
}

impl Namespace {
    /// `None` when namespaces cannot be made here (not root, no `ip`): the caller skips,
    /// unless `TIDINGS_REQUIRE_BROKERS=1` (CI), where that is a failure.
    #[allow(clippy::print_stderr)] // says why the test is skipped, as the broker tests do
    fn create() -> Option<Namespace> {
        let pid = std::process::id();
        let name = format!("tidings-{pid}");
        let (host_link, link) = (format!("tdh{pid}"), format!("tdn{pid}"));
        let subnet = format!("10.{}.{}", 200 + pid % 50, (pid / 50) % 250);
        let host_ip = format!("{subnet}.1");
        let steps = [
            format!("netns add {name}"),
            format!("link add {host_link} type veth peer name {link} netns {name}"),
            format!("addr add {host_ip}/30 dev {host_link}"),
            format!("link set {host_link} up"),
            format!("-n {name} addr add {subnet}.2/30 dev {link}"),
            format!("-n {name} link set {link} up"),
        ];
        // Made before the first step, so that whatever was made is deleted on the way out.
        let namespace = Namespace {
            name,
            host_ip,
            link,
        };
        for step in steps {
            let ok = std::process::Command::new("ip")
                .args(step.split(' '))
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                crate::common::missing(
                    "network namespaces",
                    &format!("`ip {step}` failed"),
                    "run them as root on Linux with iproute2",
                );
                return None;
            }
        }
        Some(namespace)
    }

    /// `ip netns exec <name> <program> <args>`.
    fn command(&self, program: &str, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test]
async fn a_peer_that_vanishes_without_a_word_is_dropped_after_the_write_timeout() {
    let Some(namespace) = Namespace::create() else {
        return;
    };
    let listen = format!("{}:0", namespace.host_ip);
    let hub = Hub::start(&[
        "--auth",
        "none",
        "--listen",
        &listen,
        "--heartbeat",
        "1",
        "--write-timeout",
        "2",
    ]);
    let mut client = namespace
        .command(
            "curl",
            &["-sN", &hub.url("/.well-known/mercure?topic=vanish")],
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the client's stream", async || {
        hub.metric("tidings_connections").await == 1.0
    })
    .await;
    // The client's link goes down, then the client dies: its FIN never leaves the namespace.
    let down = namespace
        .command("ip", &["link", "set", &namespace.link, "down"])
        .status()
        .unwrap();
    assert!(down.success());
    let _ = client.kill();
    let _ = client.wait();
    let gone = Instant::now();
    wait_for("the vanished stream to be dropped", async || {
        hub.metric("tidings_connections").await == 0.0
    })
    .await;
    // A heartbeat within 1 s, unacknowledged for the 2 s write timeout (TCP_USER_TIMEOUT);
    // without it, the kernel would retransmit for a quarter of an hour.
    let took = gone.elapsed();
    assert!(took < Duration::from_secs(10), "dropped after {took:?}");
    assert_eq!(hub.metric("tidings_subscribers").await, 0.0);
}

#[tokio::test]
async fn a_stream_after_another_request_on_the_same_connection_works_too() {
    // The first request of a connection that is not a stream goes to hyper with the bytes
    // already read; a stream requested next on that connection is served there.
    let hub = Hub::start(&["--auth", "none"]);
    let topic = crate::common::unique_topic("keep-alive");
    let mut socket = TcpStream::connect(addr(&hub)).await.unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /.well-known/mercure?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    wait_for("the stream to open", async || {
        hub.metric("tidings_subscribers").await == 1.0
    })
    .await;
    let (status, _) = publish(&hub, None, &[("topic", &topic), ("data", "after healthz")]).await;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: after healthz") {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the update")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
}

#[tokio::test]
async fn a_client_that_keeps_sending_on_its_open_stream_is_disconnected() {
    let hub = Hub::start(&["--auth", "none"]);
    let mut socket = open_raw_stream(&hub).await;
    // A pipelined request or two is dropped; 64 KiB of them ends the connection.
    let junk = vec![b'x'; 8 * 1024];
    for _ in 0..16 {
        if socket.write_all(&junk).await.is_err() {
            break;
        }
    }
    wait_for("the stream to go", async || {
        hub.metric("tidings_subscribers").await == 0.0
            && hub.metric("tidings_connections").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_stream_says_that_its_connection_closes_with_it() {
    // The hub closes the connection when it ends a stream (drain, an expired token): a proxy
    // that pooled it (nginx's keepalive) would send the next request into a closed socket and
    // answer 502 (review L5). The head says so.
    let hub = Hub::start(&["--auth", "none"]);
    let mut socket = TcpStream::connect(addr(&hub)).await.unwrap();
    socket
        .write_all(b"GET /.well-known/mercure?topic=x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the head")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_closed_at_once() {
    // One host could hold every file descriptor of the instance with idle connections
    // (review L4): past max-connections-per-address a new one is closed, unread.
    let hub = Hub::start(&[
        "--auth",
        "none",
        "--max-connections-per-address",
        "3",
        "--header-read-timeout",
        "30",
    ]);
    // From an address of their own: the test's scrapes of /metrics come from 127.0.0.1.
    let from = |_| async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(addr(&hub)).await.unwrap()
    };
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(from(i).await);
    }
    wait_for("the three connections to be counted", async || {
        hub.metric("tidings_open_connections").await >= 3.0
    })
    .await;
    let mut refused = from(3).await;
    let (answer, took) = read_until_closed(&mut refused).await;
    assert_eq!(answer, "", "closed without a word");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    assert_eq!(
        hub.metric("tidings_connections_refused_total{limit=\"address\"}")
            .await,
        1.0
    );
    // One gone, one place free.
    drop(held.pop());
    wait_for("a place to free up", async || {
        hub.metric("tidings_open_connections").await < 4.0
    })
    .await;
    let mut again = from(4).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut again).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_publish_whose_body_never_arrives_is_answered_408() {
    // An announced body sent a byte now and then held the request for ever (review L4).
    let hub = Hub::start(&["--auth", "none", "--header-read-timeout", "1"]);
    let mut socket = TcpStream::connect(addr(&hub)).await.unwrap();
    socket
        .write_all(b"POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntopic=a")
        .await
        .unwrap();
    let (answer, took) = read_until_closed(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
}
