//! Instances on NATS with JetStream: a private `nats-server` this test starts on a free port
//! (with its store in a temporary directory) and restarts by PID — never the machine's shared
//! one. Subscribe on A, publish on B; restart NATS; open streams stay open, readiness comes
//! back, nothing published around the restart is lost, and a client resumes on another
//! instance with its last id.

use std::time::{Duration, Instant};

use crate::common::{publish, publish_once_recovered, subscribe_url, Hub, PrivateNats, Stream};

#[tokio::test]
async fn three_instances_fan_out_survive_a_nats_restart_and_resume_anywhere() {
    let Some(mut nats) = PrivateNats::start() else {
        return;
    };
    let url = nats.url();
    let hubs: Vec<Hub> = (0..3)
        .map(|_| Hub::start(&["--auth", "none", "--bus", &url]))
        .collect();
    let topic = crate::common::unique_topic("nats");
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let (code, first) = publish(&hubs[1], None, &[("topic", &topic), ("data", "0")]).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(stream.next().await.id, first);

    nats.stop();
    let (code, body) = publish(&hubs[1], None, &[("topic", &topic), ("data", "lost?")]).await;
    // Refused before it was sent (503), or sent and never acknowledged (504: retry with
    // the same id); never a 200 for an update NATS did not take.
    assert!(
        (code == 503 && body.contains("bus_unavailable"))
            || (code == 504 && body.contains("publish_outcome_unknown")),
        "a publish NATS did not take is refused: {code} {body}"
    );
    nats.spawn().unwrap();
    let mut ids = vec![first];
    for i in 1..=5 {
        ids.push(publish_once_recovered(&hubs[2], &topic, &i.to_string()).await);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while crate::common::status(&hubs[0], "/readyz").await != 200 {
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
    let topic = crate::common::unique_topic("nats-lost");
    let mut stream = Stream::open(&subscribe_url(&a, &[&topic], ""), &[]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (code, id) = publish(&b, None, &[("topic", &topic), ("data", &i.to_string())]).await;
        assert_eq!(code, 200, "{id}");
        assert_eq!(stream.next().await.id, id);
        ids.push(id);
    }
    // A stream that resumed before the loss: its replay ended at the third sequence.
    let resume = format!("&lastEventID={}", ids[1]);
    let mut resumed = Stream::open(&subscribe_url(&a, &[&topic], &resume), &[]).await;
    assert_eq!(resumed.next().await.id, ids[2]);
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
    // Sequences started over, positions did not: the resumed stream is not told to skip it.
    assert_eq!(resumed.next().await.id, id);
    assert!(
        a.metric("tidings_bus_gaps_total").await >= 1.0,
        "the loss is counted"
    );
}
