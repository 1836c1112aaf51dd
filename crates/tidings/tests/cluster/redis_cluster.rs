//! Redis Cluster (`redis+cluster://`), with a private cluster of three masters and three
//! replicas: instances keep every key of theirs in one hash slot, deliver and resume across
//! instances, and take what a service publishes straight onto the cluster with a Redis Cluster
//! client (the Python example). A master failing over under them is the bus contract's case
//! (`bus_contract.rs`, `redis_cluster`). Bad URLs stop start-up with a message that says what to
//! fix.

use crate::common::{
    publish, python_ready, redis_url, subscribe_url, unique_prefix, unique_topic, wait_until,
    PrivateRedisCluster, Stream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_a_redis_cluster_keep_one_slot_deliver_resume_and_take_direct_publishes() {
    let Some(cluster) = PrivateRedisCluster::start() else {
        return;
    };
    let prefix = unique_prefix("redis-cluster");
    let hubs: Vec<_> = (0..2)
        .map(|i| crate::common::instance_on(&cluster.url(), &prefix, &format!("{prefix}-{i}"), &[]))
        .collect();
    let topic = unique_topic("cluster");
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let (status, first) = publish(&hubs[1], None, &[("topic", &topic), ("data", "one")]).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(stream.next().await.id, first);

    // A service publishes straight onto the cluster, with a Redis Cluster client.
    let mut ids = vec![first.clone()];
    if python_ready("redis") {
        let url = cluster.url();
        let id = crate::common::run_python_example(
            "publish.py",
            &[
                "--redis", &url, "--prefix", &prefix, "--topic", &topic, "--data", "straight",
            ],
        );
        let event = stream.next().await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (id.as_str(), "straight")
        );
        ids.push(id);
    }
    let (status, last) = publish(&hubs[0], None, &[("topic", &topic), ("data", "three")]).await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(stream.next().await.id, last);
    ids.push(last);

    // Resuming on the other instance.
    let resume = format!("&lastEventID={first}");
    let mut resumed = Stream::open(&subscribe_url(&hubs[1], &[&topic], &resume), &[]).await;
    for id in &ids[1..] {
        assert_eq!(&resumed.next().await.id, id);
    }

    // Every key is in the slot of `{prefix}`: on its master, none on the other masters.
    let holder = cluster
        .master_of(&format!("{{{prefix}}}"))
        .expect("a master");
    wait_until(
        "the instances' keys",
        std::time::Duration::from_secs(5),
        async || !keys_of(&cluster, holder, &prefix).is_empty(),
    )
    .await;
    for port in &cluster.ports {
        let keys = keys_of(&cluster, *port, &prefix);
        let role: Option<String> = cluster
            .command(*port, &["ROLE"])
            .ok()
            .and_then(|r| redis::from_redis_value::<Vec<redis::Value>>(r).ok())
            .and_then(|r| redis::from_redis_value(r.into_iter().next()?).ok());
        if role.as_deref() == Some("master") && *port != holder {
            assert!(keys.is_empty(), "keys outside the slot on {port}: {keys:?}");
        }
        assert!(
            keys.iter()
                .all(|k| k.starts_with(&format!("{{{prefix}}}:"))),
            "{keys:?}"
        );
    }
}

/// The keys on the node at `port` that name `prefix`.
fn keys_of(cluster: &PrivateRedisCluster, port: u16, prefix: &str) -> Vec<String> {
    cluster
        .command(port, &["KEYS", &format!("*{prefix}*")])
        .ok()
        .and_then(|keys| redis::from_redis_value(keys).ok())
        .unwrap_or_default()
}

#[test]
fn a_cluster_url_at_a_redis_that_is_not_a_cluster_stops_start_up() {
    let Some(url) = redis_url() else {
        return;
    };
    let node = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .to_owned();
    crate::common::refuses_to_start(
        &[
            "--auth",
            "none",
            "--bus",
            &format!("redis+cluster://{node}/"),
        ],
        "not a Redis Cluster",
    );
}

#[test]
fn bad_cluster_urls_and_prefixes_stop_start_up() {
    for (bus, prefix, says) in [
        (
            "redis+cluster://127.0.0.1:7000/1",
            "tidings",
            "only database 0",
        ),
        ("redis+cluster://127.0.0.1/", "tidings", "has no port"),
        ("redis+cluster://127.0.0.1:7000/", "a{b}", "holds a brace"),
    ] {
        crate::common::refuses_to_start(
            &["--auth", "none", "--bus", bus, "--bus-prefix", prefix],
            says,
        );
    }
}
