//! The bus contract: what every bus backend must do, run against each one. Several
//! "instances" (a hub and a bus each) share one broker namespace in this process: for the
//! memory bus, hubs attached to one bus; for Redis, buses on one key prefix, under each
//! routing mode; for NATS, buses on one JetStream stream; for RabbitMQ, buses on one exchange
//! (and its stream, with history).

mod common;

use std::sync::Arc;
use std::time::Duration;

use tidings::bus::amqp::AmqpBus;
use tidings::bus::memory::MemoryBus;
use tidings::bus::nats::NatsBus;
use tidings::bus::redis::RedisBus;
use tidings::bus::{Backoff, Bus, BusOptions, Published, ReplayFrom, Routing};
use tidings::envelope::Envelope;
use tidings::hub::{Hub, Subscription};
use tidings::metrics::Metrics;
use tidings::selector::Selector;
use tidings::subscriber::{Access, SubscriberLabel, SubscriberSpec};
use tidings::update::Limits;
use tidings::update::{Topic, Update, UpdateId};

struct Instance {
    hub: Hub,
    bus: Arc<dyn Bus>,
}

fn options(history_size: usize, prefix: &str, routing: Routing) -> BusOptions {
    BusOptions {
        history_size,
        history_ttl_secs: 0,
        history_id_ttl_secs: 600,
        prefix: prefix.to_owned(),
        instance_id: format!("contract-{}", uuid_suffix()),
        session_ttl_secs: 30,
        share_subscribers: false,
        limits: Limits::default(),
        routing,
        backoff: Backoff::default(),
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

async fn redis(
    url: &str,
    prefix: &str,
    routing: Routing,
    n: usize,
    history_size: usize,
) -> Vec<Instance> {
    let mut instances = Vec::new();
    for _ in 0..n {
        let hub = new_hub();
        let bus = RedisBus::connect(url, &options(history_size, prefix, routing), hub.clone())
            .await
            .unwrap();
        instances.push(Instance {
            hub,
            bus: Arc::new(bus),
        });
    }
    instances
}

async fn nats(url: &str, prefix: &str, n: usize, history_size: usize) -> Vec<Instance> {
    let mut instances = Vec::new();
    for _ in 0..n {
        let hub = new_hub();
        let options = options(history_size, prefix, Routing::Broadcast);
        let bus = NatsBus::connect(url, &options, hub.clone()).await.unwrap();
        instances.push(Instance {
            hub,
            bus: Arc::new(bus),
        });
    }
    instances
}

async fn amqp(url: &str, prefix: &str, n: usize, history_size: usize) -> Vec<Instance> {
    let mut instances = Vec::new();
    for _ in 0..n {
        let hub = new_hub();
        let options = options(history_size, prefix, Routing::Broadcast);
        let bus = AmqpBus::connect(url, &options, hub.clone()).await.unwrap();
        instances.push(Instance {
            hub,
            bus: Arc::new(bus),
        });
    }
    instances
}

/// Registers a subscriber on an instance, as a stream does: once this returns, every update
/// published that the subscriber may see reaches it.
async fn subscribe_to(instance: &Instance, selectors: &[&str], access: Access) -> Subscription {
    let subscription = instance.hub.subscribe(SubscriberSpec {
        label: SubscriberLabel::new(None),
        selectors: selectors
            .iter()
            .map(|s| Selector::compile(s, 1000).unwrap())
            .collect(),
        access,
        event_name: None,
        session: None,
        expires: None,
    });
    instance.bus.listening().await.unwrap();
    subscription
}

async fn subscribe(instance: &Instance, selector: &str, access: Access) -> Subscription {
    subscribe_to(instance, &[selector], access).await
}

fn update(topic: &str, data: &str, private: bool) -> Update {
    update_on(&[topic], data, private)
}

fn update_on(topics: &[&str], data: &str, private: bool) -> Update {
    Update::new(
        UpdateId::generate(),
        topics
            .iter()
            .map(|t| Topic::new(t, 1000).unwrap())
            .collect(),
        None,
        data.into(),
        None,
        private,
    )
    .unwrap()
}

/// Publishes through an instance's bus; what the bus answered.
async fn publish(instance: &Instance, update: Update) -> Published {
    instance.bus.publish(update).await.unwrap()
}

async fn next(sub: &mut Subscription) -> Arc<Envelope> {
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
    let mut subs = Vec::new();
    for instance in &instances {
        subs.push(subscribe(instance, "t", Access::public_only()).await);
    }
    let mut other = subscribe(&instances[0], "u", Access::public_only()).await;
    let published = publish(&instances[1], update("t", "hello", false)).await;
    let mut positions = Vec::new();
    for sub in &mut subs {
        let got = next(sub).await;
        assert_eq!(got.update.id, published.id);
        positions.push(got.position);
        nothing_more(sub).await;
    }
    nothing_more(&mut other).await;
    assert!(
        positions.windows(2).all(|w| w[0] == w[1]),
        "one position on every instance: {positions:?}"
    );
    // A bus that learns the position only when it reads the update does not answer one.
    if let Some(position) = published.position {
        assert_eq!(positions[0], position);
    }
}

async fn keeps_publish_order_per_topic(instances: Vec<Instance>) {
    let mut sub = subscribe(&instances[0], "t", Access::public_only()).await;
    for i in 0..200 {
        publish(&instances[1], update("t", &i.to_string(), false)).await;
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
    let mut public = subscribe(&instances[0], "t", Access::public_only()).await;
    let claim = Access::from_claim(vec![Selector::compile("t", 100).unwrap()]);
    let mut allowed = subscribe(&instances[0], "t", claim).await;
    let private = publish(&instances[1], update("t", "secret", true)).await;
    let open = publish(&instances[1], update("t", "open", false)).await;
    assert_eq!(next(&mut allowed).await.update.id, private.id);
    assert_eq!(next(&mut allowed).await.update.id, open.id);
    assert_eq!(next(&mut public).await.update.id, open.id);
}

async fn wide_selectors_hear_every_topic_they_match(instances: Vec<Instance>) {
    let public = Access::public_only;
    let mut everything = subscribe(&instances[0], "*", public()).await;
    let mut books = subscribe(&instances[1], "https://x/books/{id}", public()).await;
    let mut any_kind = subscribe(&instances[1], "https://x/{kind}/1", public()).await;
    let mut exact = subscribe(&instances[2], "https://x/books/2", public()).await;
    let one = publish(&instances[2], update("https://x/books/1", "1", false)).await;
    let two = publish(&instances[2], update("https://x/books/2", "2", false)).await;
    let film = publish(&instances[0], update("https://x/films/1", "f", false)).await;
    for (sub, expected) in [
        (&mut everything, vec![&one, &two, &film]),
        (&mut books, vec![&one, &two]),
        (&mut any_kind, vec![&one, &film]),
        (&mut exact, vec![&two]),
    ] {
        for e in expected {
            assert_eq!(next(sub).await.update.id, e.id);
        }
        nothing_more(sub).await;
    }
}

async fn delivers_an_update_with_several_topics_once(instances: Vec<Instance>) {
    let public = Access::public_only;
    let mut both = subscribe_to(&instances[0], &["a", "b"], public()).await;
    let mut a = subscribe(&instances[0], "a", public()).await;
    let mut b = subscribe(&instances[0], "b", public()).await;
    let published = publish(&instances[1], update_on(&["a", "b", "c"], "ab", false)).await;
    for sub in [&mut both, &mut a, &mut b] {
        assert_eq!(next(sub).await.update.id, published.id);
        nothing_more(sub).await;
    }
}

async fn follows_subscribers_coming_and_going(instances: Vec<Instance>) {
    let public = Access::public_only;
    for round in 0..3 {
        let mut sub = subscribe(&instances[0], "t", public()).await;
        let published = publish(&instances[1], update("t", &round.to_string(), false)).await;
        assert_eq!(next_but_unheard(&mut sub).await, published.id);
        drop(sub);
        // Nobody wants `t` now: an update published meanwhile reaches no one (unless it was
        // still on its way to the instance when the next subscriber came).
        publish(&instances[1], update("t", "unheard", false)).await;
    }
    let mut late = subscribe(&instances[0], "t", public()).await;
    let published = publish(&instances[1], update("t", "late", false)).await;
    assert_eq!(next_but_unheard(&mut late).await, published.id);
    nothing_more(&mut late).await;
}

/// The id of the next update that is not an "unheard" one.
async fn next_but_unheard(sub: &mut Subscription) -> UpdateId {
    loop {
        let got = next(sub).await;
        if got.update.data != "unheard" {
            return got.update.id.clone();
        }
    }
}

async fn replays_after_an_id_on_any_instance(instances: Vec<Instance>) {
    // Once the other instance delivered them (a bus may serve history from what it read;
    // whatever it has not read yet reaches a resumed subscriber live).
    let mut watcher = subscribe(&instances[1], "t", Access::public_only()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            publish(&instances[0], update("t", &i.to_string(), false))
                .await
                .id,
        );
    }
    for id in &ids {
        assert_eq!(&next(&mut watcher).await.update.id, id);
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

async fn replays_the_topics_of_a_subscriber_after_an_id(instances: Vec<Instance>) {
    let mut watcher = subscribe_to(&instances[1], &["t", "u"], Access::public_only()).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let topics: &[&str] = match i % 3 {
            0 => &["t"],
            1 => &["u"],
            _ => &["t", "u"],
        };
        let published = publish(&instances[0], update_on(topics, &i.to_string(), false)).await;
        ids.push(published.id.clone());
    }
    for id in &ids {
        assert_eq!(&next(&mut watcher).await.update.id, id);
    }
    // A bus may give more than the topics asked for (the subscriber's filter drops the
    // rest), but every update on them, once each, in order.
    let on_t = |replay: &tidings::bus::Replay| -> Vec<UpdateId> {
        let all: Vec<&UpdateId> = replay.updates.iter().map(|e| &e.update.id).collect();
        let distinct: std::collections::HashSet<&&UpdateId> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "no update twice");
        replay
            .updates
            .iter()
            .filter(|e| e.update.topics.iter().any(|t| t.as_str() == "t"))
            .map(|e| e.update.id.clone())
            .collect()
    };
    let t: Vec<std::sync::Arc<str>> = vec!["t".into()];
    let bus = &instances[1].bus;
    let after_first = bus
        .replay_topics(&ReplayFrom::After(ids[0].clone()), &t)
        .await
        .unwrap();
    assert!(!after_first.missing);
    assert_eq!(
        on_t(&after_first),
        [ids[2].clone(), ids[3].clone(), ids[5].clone()]
    );
    assert_eq!(after_first.head_id.as_ref(), Some(&ids[5]));
    let unknown = bus
        .replay_topics(&ReplayFrom::After(UpdateId::new("never", 10).unwrap()), &t)
        .await
        .unwrap();
    assert!(unknown.missing);
    assert_eq!(
        on_t(&unknown),
        [
            ids[0].clone(),
            ids[2].clone(),
            ids[3].clone(),
            ids[5].clone()
        ]
    );
    let both: Vec<std::sync::Arc<str>> = vec!["t".into(), "u".into()];
    let after_both = bus
        .replay_topics(&ReplayFrom::After(ids[3].clone()), &both)
        .await
        .unwrap();
    let got: Vec<&UpdateId> = after_both.updates.iter().map(|e| &e.update.id).collect();
    assert_eq!(got, [&ids[4], &ids[5]], "an update on both topics once");
    let quiet: Vec<std::sync::Arc<str>> = vec!["nobody-publishes-here".into()];
    let none = bus
        .replay_topics(&ReplayFrom::After(ids[0].clone()), &quiet)
        .await
        .unwrap();
    assert!(!none.missing);
    assert!(none.updates.iter().all(|e| !e
        .update
        .topics
        .iter()
        .any(|t| t.as_str() == "nobody-publishes-here")));
}

async fn stores_a_retried_publish_once(instances: Vec<Instance>) {
    let mut subs = Vec::new();
    for instance in &instances {
        subs.push(subscribe(instance, "t", Access::public_only()).await);
    }
    let once = update("t", "once", false);
    let first = publish(&instances[1], once.clone()).await;
    // The publisher did not hear the answer and retries, through another instance.
    let retried = publish(&instances[2], once.clone()).await;
    let after = publish(&instances[1], update("t", "after", false)).await;
    assert_eq!(retried.id, first.id);
    if first.position.is_some() {
        assert_eq!(
            retried.position, first.position,
            "the retry answers the first position"
        );
    }
    // A retry that comes after other updates is still recognised.
    publish(&instances[0], once).await;
    for sub in &mut subs {
        assert_eq!(next(sub).await.update.id, first.id);
        assert_eq!(next(sub).await.update.id, after.id);
        nothing_more(sub).await;
    }
    // History holds it once (the first instance delivered everything, so it has read it).
    let replay = instances[0]
        .bus
        .replay(&ReplayFrom::Earliest)
        .await
        .unwrap();
    let ids: Vec<&UpdateId> = replay.updates.iter().map(|e| &e.update.id).collect();
    assert_eq!(ids, [&first.id, &after.id]);
}

async fn without_history_reports_every_resume_as_a_gap(instances: Vec<Instance>) {
    let mut watcher = subscribe(&instances[1], "t", Access::public_only()).await;
    let a = publish(&instances[0], update("t", "a", false)).await;
    publish(&instances[0], update("t", "b", false)).await;
    next(&mut watcher).await;
    next(&mut watcher).await;
    let replay = instances[1]
        .bus
        .replay(&ReplayFrom::After(a.id.clone()))
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

        mod redis_interest {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(url) = common::redis_url() else { return };
                    let keys = common::RedisKeys { prefix: common::unique_prefix(stringify!($name)), url };
                    super::$name(redis(&keys.url, &keys.prefix, Routing::Interest, 3, $history).await).await;
                }
            )*
        }

        mod nats_bus {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(url) = common::nats_url() else { return };
                    let stream = common::NatsStream { prefix: common::unique_prefix(stringify!($name)), url };
                    super::$name(nats(&stream.url, &stream.prefix, 3, $history).await).await;
                }
            )*
        }

        mod amqp_bus {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(url) = common::amqp_url() else { return };
                    let objects = common::AmqpObjects { prefix: common::unique_prefix(stringify!($name)), url };
                    super::$name(amqp(&objects.url, &objects.prefix, 3, $history).await).await;
                }
            )*
        }

        mod redis_broadcast {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(url) = common::redis_url() else { return };
                    let keys = common::RedisKeys { prefix: common::unique_prefix(stringify!($name)), url };
                    super::$name(redis(&keys.url, &keys.prefix, Routing::Broadcast, 3, $history).await).await;
                }
            )*
        }
    };
}

contract! {
    fans_out_to_every_instance, 100;
    keeps_publish_order_per_topic, 1000;
    filters_private_updates, 100;
    wide_selectors_hear_every_topic_they_match, 100;
    delivers_an_update_with_several_topics_once, 100;
    follows_subscribers_coming_and_going, 100;
    replays_after_an_id_on_any_instance, 100;
    stores_a_retried_publish_once, 100;
    replays_the_topics_of_a_subscriber_after_an_id, 100;
    without_history_reports_every_resume_as_a_gap, 0;
}
