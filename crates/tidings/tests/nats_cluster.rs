//! Instances on NATS with JetStream: a private `nats-server` this test starts on a free port
//! (with its store in a temporary directory) and restarts by PID — never the machine's shared
//! one. Subscribe on A, publish on B; restart NATS; open streams stay open, readiness comes
//! back, nothing published around the restart is lost, and a client resumes on another
//! instance with its last id.

#![allow(clippy::print_stderr)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{publish, subscribe_url, Hub, Stream};

/// A `nats-server -js` of this test's own.
struct PrivateNats {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    fn start() -> Option<PrivateNats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = PrivateNats {
            port,
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        match nats.spawn() {
            Ok(()) => Some(nats),
            Err(e) if std::env::var("TIDINGS_REQUIRE_BROKERS").as_deref() == Ok("1") => {
                panic!("nats-server is required (TIDINGS_REQUIRE_BROKERS=1): {e}")
            }
            Err(e) => {
                eprintln!("skipping: cannot start nats-server ({e})");
                None
            }
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("nats-server did not start listening"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
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

async fn ready(hub: &Hub) -> bool {
    common::client()
        .get(hub.url("/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn publish_once_recovered(hub: &Hub, topic: &str, data: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, id) = publish(hub, None, &[("topic", topic), ("data", data)]).await;
        if code == 200 {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "publishing did not recover: {code} {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn three_instances_fan_out_survive_a_nats_restart_and_resume_anywhere() {
    let Some(mut nats) = PrivateNats::start() else {
        return;
    };
    let url = nats.url();
    let hubs: Vec<Hub> = (0..3)
        .map(|_| Hub::start(&["--auth", "none", "--bus", &url]))
        .collect();
    let topic = common::unique_topic("nats");
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let (code, first) = publish(&hubs[1], None, &[("topic", &topic), ("data", "0")]).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(stream.next().await.id, first);

    nats.stop();
    let (code, _) = publish(&hubs[1], None, &[("topic", &topic), ("data", "lost?")]).await;
    assert_eq!(code, 503, "a publish NATS did not take is refused");
    nats.spawn().unwrap();
    let mut ids = vec![first];
    for i in 1..=5 {
        ids.push(publish_once_recovered(&hubs[2], &topic, &i.to_string()).await);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready(&hubs[0]).await {
        assert!(Instant::now() < deadline, "readiness did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut got = vec![ids[0].clone()];
    while got.len() < ids.len() {
        match stream.next_within(Duration::from_secs(10)).await {
            Some(event) => got.push(event.id),
            None => panic!(
                "got {got:?} of {ids:?}; log of A:\n{}",
                hubs[0].log.lock().unwrap().join("\n")
            ),
        }
    }
    assert_eq!(got, ids, "the open stream got every update once, in order");

    // A client of A resumes on C after the id it saw third.
    let resume = format!("&lastEventID={}", ids[2]);
    let mut resumed = Stream::open(&subscribe_url(&hubs[2], &[&topic], &resume), &[]).await;
    for id in &ids[3..] {
        assert_eq!(&resumed.next().await.id, id);
    }
}

#[tokio::test]
async fn a_nats_that_lost_its_store_gets_the_stream_back_and_delivery_goes_on() {
    let Some(mut nats) = PrivateNats::start() else {
        return;
    };
    let url = nats.url();
    let a = Hub::start(&["--auth", "none", "--bus", &url]);
    let b = Hub::start(&["--auth", "none", "--bus", &url]);
    let topic = common::unique_topic("nats-lost");
    let mut stream = Stream::open(&subscribe_url(&a, &[&topic], ""), &[]).await;
    for i in 0..3 {
        let (code, id) = publish(&b, None, &[("topic", &topic), ("data", &i.to_string())]).await;
        assert_eq!(code, 200, "{id}");
        assert_eq!(stream.next().await.id, id);
    }
    // NATS comes back without its store: the stream, and its sequence, are gone.
    nats.stop();
    std::fs::remove_dir_all(nats.store.path()).unwrap();
    std::fs::create_dir_all(nats.store.path()).unwrap();
    nats.spawn().unwrap();
    let id = publish_once_recovered(&b, &topic, "after").await;
    match stream.next_within(Duration::from_secs(15)).await {
        Some(event) => assert_eq!(event.id, id),
        None => panic!("log of A:\n{}", a.log.lock().unwrap().join("\n")),
    }
    assert!(
        a.metric("tidings_bus_gaps_total").await >= 1.0,
        "the loss is counted"
    );
}
