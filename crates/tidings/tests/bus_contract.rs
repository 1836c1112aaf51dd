//! The bus contract: what every bus backend must do, run against each one. Several
//! "instances" (a hub and a bus each) share one broker namespace in this process: for the
//! memory bus, hubs attached to one bus; for Redis, buses on one key prefix.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tidings::bus::memory::MemoryBus;
use tidings::bus::redis::RedisBus;
use tidings::bus::{Bus, BusOptions, ReplayFrom};
use tidings::config::Limits;
use tidings::hub::{Hub, Subscription};
use tidings::metrics::Metrics;
use tidings::selector::Selector;
use tidings::subscriber::{Access, SubscriberLabel, SubscriberSpec};
use tidings::update::{Topic, Update, UpdateId};

struct Instance {
    hub: Hub,
    bus: Arc<dyn Bus>,
}

fn options(history_size: usize, prefix: &str) -> BusOptions {
    BusOptions {
        history_size,
        history_id_ttl_secs: 600,
        redis_prefix: prefix.to_owned(),
        instance_id: format!("contract-{}", uuid_suffix()),
        session_ttl_secs: 30,
        share_subscribers: false,
        limits: Limits::default(),
    }
}

fn uuid_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn new_hub() -> Hub {
    Hub::new(4096, Arc::new(Metrics::new()))
}

fn memory(n: usize, history_size: usize) -> Vec<Instance> {
    let first = new_hub();
    let bus = MemoryBus::new(history_size, first.clone());
    let mut instances = vec![Instance {
        hub: first,
        bus: Arc::new(bus.clone()),
    }];
    for _ in 1..n {
        let hub = new_hub();
        instances.push(Instance {
            bus: Arc::new(bus.attach(hub.clone())),
            hub,
        });
    }
    instances
}

async fn redis(url: &str, prefix: &str, n: usize, history_size: usize) -> Vec<Instance> {
    let mut instances = Vec::new();
    for _ in 0..n {
        let hub = new_hub();
        let bus = RedisBus::connect(url, &options(history_size, prefix), hub.clone())
            .await
            .unwrap();
        instances.push(Instance {
            hub,
            bus: Arc::new(bus),
        });
    }
    instances
}

fn subscribe(hub: &Hub, selector: &str, access: Access) -> Subscription {
    hub.subscribe(SubscriberSpec {
        label: SubscriberLabel::new(None),
        selectors: vec![Selector::compile(selector, 1000).unwrap()],
        access,
        event_name: None,
        session: None,
    })
}

fn update(topic: &str, data: &str, private: bool) -> Update {
    Update::new(
        UpdateId::generate(),
        vec![Topic::new(topic, 1000).unwrap()],
        None,
        data.into(),
        None,
        private,
    )
    .unwrap()
}

async fn next(sub: &mut Subscription) -> Arc<tidings::envelope::Envelope> {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("an update")
        .expect("open")
}

async fn nothing_more(sub: &mut Subscription) {
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.recv())
            .await
            .is_err(),
        "no further update"
    );
}

// --- the contract ---------------------------------------------------------------------

async fn fans_out_to_every_instance(instances: Vec<Instance>) {
    let mut subs: Vec<_> = instances
        .iter()
        .map(|i| subscribe(&i.hub, "t", Access::public_only()))
        .collect();
    let mut other = subscribe(&instances[0].hub, "u", Access::public_only());
    let published = instances[1]
        .bus
        .publish(update("t", "hello", false))
        .await
        .unwrap();
    for sub in &mut subs {
        let got = next(sub).await;
        assert_eq!(
            (got.update.id.clone(), got.position),
            (published.update.id.clone(), published.position)
        );
        nothing_more(sub).await;
    }
    nothing_more(&mut other).await;
}

async fn keeps_publish_order_per_topic(instances: Vec<Instance>) {
    let mut sub = subscribe(&instances[0].hub, "t", Access::public_only());
    for i in 0..200 {
        instances[1]
            .bus
            .publish(update("t", &i.to_string(), false))
            .await
            .unwrap();
    }
    let mut last = None;
    for i in 0..200 {
        let got = next(&mut sub).await;
        assert_eq!(got.update.data, i.to_string());
        assert!(last < Some(got.position), "positions grow");
        last = Some(got.position);
    }
}

async fn filters_private_updates(instances: Vec<Instance>) {
    let mut public = subscribe(&instances[0].hub, "t", Access::public_only());
    let claim = Access::from_claim(vec![Selector::compile("t", 100).unwrap()]);
    let mut allowed = subscribe(&instances[0].hub, "t", claim);
    let private = instances[1]
        .bus
        .publish(update("t", "secret", true))
        .await
        .unwrap();
    let open = instances[1]
        .bus
        .publish(update("t", "open", false))
        .await
        .unwrap();
    assert_eq!(next(&mut allowed).await.update.id, private.update.id);
    assert_eq!(next(&mut allowed).await.update.id, open.update.id);
    assert_eq!(next(&mut public).await.update.id, open.update.id);
}

async fn replays_after_an_id_on_any_instance(instances: Vec<Instance>) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            instances[0]
                .bus
                .publish(update("t", &i.to_string(), false))
                .await
                .unwrap()
                .update
                .id
                .clone(),
        );
    }
    let other = &instances[1].bus;
    let replay = other
        .replay(&ReplayFrom::After(ids[1].clone()))
        .await
        .unwrap();
    let got: Vec<_> = replay.updates.iter().map(|e| e.update.id.clone()).collect();
    assert_eq!(got, ids[2..].to_vec());
    assert!(!replay.missing);
    assert_eq!(replay.head_id.as_ref(), Some(&ids[4]));
    let now = other.replay(&ReplayFrom::Now).await.unwrap();
    assert!(now.updates.is_empty() && now.head_id.as_ref() == Some(&ids[4]));
    let earliest = other.replay(&ReplayFrom::Earliest).await.unwrap();
    assert_eq!(earliest.updates.len(), 5);
    let unknown = other
        .replay(&ReplayFrom::After(
            UpdateId::new("never-published", 100).unwrap(),
        ))
        .await
        .unwrap();
    assert!(unknown.missing, "an unknown id is reported, not skipped");
    assert_eq!(unknown.updates.len(), 5, "with everything history holds");
    let newest = other
        .replay(&ReplayFrom::After(ids[4].clone()))
        .await
        .unwrap();
    assert!(!newest.missing && newest.updates.is_empty());
}

async fn without_history_reports_every_resume_as_a_gap(instances: Vec<Instance>) {
    let a = instances[0]
        .bus
        .publish(update("t", "a", false))
        .await
        .unwrap();
    instances[0]
        .bus
        .publish(update("t", "b", false))
        .await
        .unwrap();
    let replay = instances[1]
        .bus
        .replay(&ReplayFrom::After(a.update.id.clone()))
        .await
        .unwrap();
    assert!(replay.missing && replay.updates.is_empty());
}

// --- the backends ---------------------------------------------------------------------

macro_rules! contract {
    ($($name:ident, $history:expr;)*) => {
        mod memory_bus {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(memory(3, $history)).await;
                }
            )*
        }

        mod redis_bus {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(url) = common::redis_url() else { return };
                    let keys = common::RedisKeys { prefix: common::unique_prefix(stringify!($name)), url };
                    super::$name(redis(&keys.url, &keys.prefix, 3, $history).await).await;
                }
            )*
        }
    };
}

contract! {
    fans_out_to_every_instance, 100;
    keeps_publish_order_per_topic, 1000;
    filters_private_updates, 100;
    replays_after_an_id_on_any_instance, 100;
    without_history_reports_every_resume_as_a_gap, 0;
}
