//! Instances on NATS with JetStream, on a private `nats-server` this test starts on a free port
//! (with its store in a temporary directory) and restarts by PID — never the machine's shared
//! one: a NATS that comes back without its store. (A restart that keeps the store is the bus
//! contract's `survives_a_broker_restart`, held for every bus.)

use std::time::Duration;

use crate::common::{publish, publish_once_recovered, subscribe_url, Hub, PrivateNats, Stream};

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
