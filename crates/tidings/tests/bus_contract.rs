//! The bus contract: what every bus backend must do, run against each one. Several
//! "instances" (a hub and a bus each) share one broker namespace in this process: for the
//! memory bus, hubs attached to one bus; for Redis, buses on one key prefix, under each
//! routing mode; for NATS, buses on one JetStream stream; for RabbitMQ, buses on one exchange
//! (and its stream, with history). Every bus on a broker is also held to what only a broker
//! brings: a broker of the test's own restarting under its instances, and producers that
//! publish straight onto it without an instance.
//!
//! Over 600 lines on purpose: one suite holds every bus to the same cases, so a new promise is
//! one more case here and every bus meets it (the backends' set-up is the first part, the cases
//! the rest).

mod common;

use std::sync::Arc;
use std::time::Duration;

use tidings::bus::memory::MemoryBus;
use tidings::bus::{Backoff, Bus, BusError, BusOptions, Published, ReplayFrom, Routing, Timeouts};
use tidings::cluster::{Answer, Cluster, ClusterSettings};
use tidings::envelope::Envelope;
use tidings::hub::{Farewell, Hub, Streams, Subscription};
use tidings::metrics::Metrics;
use tidings::selector::Selector;
use tidings::subscriber::{Access, SubscriberLabel, SubscriberSpec};
use tidings::telemetry::TraceParent;
use tidings::update::Limits;
use tidings::update::{SessionId, Topic, Update, UpdateId};
use tidings_client::Publication;

struct Instance {
    /// Its `instance-id`, as its bus knows it.
    id: String,
    hub: Hub,
    bus: Arc<dyn Bus>,
}

/// The history a case's instances keep: the last `size` updates, younger than `ttl_secs`
/// (0: no age limit).
#[derive(Clone, Copy)]
struct History {
    size: usize,
    ttl_secs: u64,
}

/// The last `size` updates, whatever their age.
const fn kept(size: usize) -> History {
    History { size, ttl_secs: 0 }
}

fn options(history: History, prefix: &str, routing: Routing) -> BusOptions {
    BusOptions {
        history_size: history.size,
        history_ttl_secs: history.ttl_secs,
        // As the configuration has it: with an age limit, ids live as long as history.
        history_id_ttl_secs: match history.ttl_secs {
            0 => 600,
            ttl => ttl,
        },
        prefix: prefix.to_owned(),
        instance_id: format!("contract-{}", uuid_suffix()),
        session_ttl_secs: 30,
        share_subscribers: false,
        limits: Limits::default(),
        routing,
        backoff: Backoff::default(),
        timeouts: Timeouts::default(),
        min_replicas: 0,
        max_patterns: 100,
        unsubscribe_after: Duration::from_secs(30),
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

/// A bus backend, as the cases need it: instances on a namespace of their own, on the shared
/// broker or on one a test started.
#[derive(Clone, Copy)]
enum Backend {
    Memory,
    Redis(Routing),
    Nats,
    Amqp,
    Kafka,
}

/// Where a test's instances meet on the shared broker: its URL and a prefix of the test's own,
/// removed from the broker when dropped.
struct Namespace {
    url: String,
    prefix: String,
    _guard: Box<dyn std::any::Any>,
}

impl Backend {
    /// `n` instances on a namespace named after the test, on the shared broker; `None` (skip)
    /// when the broker is not there (a failure under `TIDINGS_REQUIRE_BROKERS=1`).
    async fn instances(
        self,
        name: &str,
        n: usize,
        history: History,
    ) -> Option<(Namespace, Vec<Instance>)> {
        let prefix = common::unique_prefix(name);
        let (url, guard): (String, Box<dyn std::any::Any>) = match self {
            Backend::Memory => (String::new(), Box::new(())),
            Backend::Redis(_) => {
                let url = common::redis_url()?;
                let keys = common::RedisKeys {
                    prefix: prefix.clone(),
                    url: url.clone(),
                };
                (url, Box::new(keys))
            }
            Backend::Nats => {
                let url = common::nats_url()?;
                let stream = common::NatsStream {
                    prefix: prefix.clone(),
                    url: url.clone(),
                };
                (url, Box::new(stream))
            }
            Backend::Amqp => {
                let url = common::amqp_url()?;
                let objects = common::AmqpObjects {
                    prefix: prefix.clone(),
                    url: url.clone(),
                };
                (url, Box::new(objects))
            }
            Backend::Kafka => {
                let url = common::kafka_url()?;
                let topic = common::KafkaTopic {
                    prefix: prefix.clone(),
                    url: url.clone(),
                };
                (url, Box::new(topic))
            }
        };
        let instances = match self {
            Backend::Memory => memory(n, history),
            _ => self.on(&url, &prefix, n, history).await,
        };
        Some((
            Namespace {
                url,
                prefix,
                _guard: guard,
            },
            instances,
        ))
    }

    /// `n` instances connected to the broker at `url`, under `prefix`.
    async fn on(self, url: &str, prefix: &str, n: usize, history: History) -> Vec<Instance> {
        let mut instances = Vec::new();
        for _ in 0..n {
            let hub = new_hub();
            // Routing matters to Redis only; the others broadcast whatever it says.
            let routing = match self {
                Backend::Redis(routing) => routing,
                _ => Routing::Broadcast,
            };
            let options = options(history, prefix, routing);
            // The bus named by the URL's scheme, as an instance connects it.
            let bus = tidings::bus::connect(url, &options, hub.clone())
                .await
                .unwrap();
            instances.push(Instance {
                id: options.instance_id,
                hub,
                bus,
            });
        }
        instances
    }

    /// A broker of the test's own, or `None` (skip) as for [`Backend::instances`].
    fn private(self) -> Option<Box<dyn common::PrivateBroker>> {
        Some(match self {
            Backend::Memory => unreachable!("the memory bus has no broker"),
            Backend::Redis(_) => Box::new(common::PrivateRedis::start()?),
            Backend::Nats => Box::new(common::PrivateNats::start()?),
            Backend::Amqp => Box::new(common::PrivateRabbit::start()?),
            Backend::Kafka => Box::new(common::PrivateTansu::start()?),
        })
    }
}

fn memory(n: usize, history: History) -> Vec<Instance> {
    let first = new_hub();
    let ttl = (history.ttl_secs > 0).then(|| Duration::from_secs(history.ttl_secs));
    let bus = MemoryBus::with_ttl(history.size, ttl, first.clone());
    let mut instances = vec![Instance {
        id: format!("memory-{}", uuid_suffix()),
        hub: first,
        bus: Arc::new(bus.clone()),
    }];
    for _ in 1..n {
        let hub = new_hub();
        instances.push(Instance {
            id: format!("memory-{}", uuid_suffix()),
            bus: Arc::new(bus.attach(hub.clone())),
            hub,
        });
    }
    instances
}

/// Waits until the instance's bus listens for the subscribers registered so far. A bus refuses
/// new subscribers while its delivery connection is down or slow to confirm their interest (a
/// stream is told to come back: `503`); as a client would, a case comes back, for 10 s at most.
/// (A Redis Cluster just formed on a loaded machine refused the first subscriber of a case
/// once.)
async fn listening(instance: &Instance) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = instance.bus.listening().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bus did not listen for 10 s: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        event_names: Vec::new(),
        session: None,
        expires: None,
    });
    listening(instance).await;
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

/// The trace context an update carries (tracing on at the publishing instance) reaches every
/// instance with it, so that each delivery joins the publish's trace; an update without one
/// arrives without one.
async fn carries_the_trace_context_to_every_instance(instances: Vec<Instance>) {
    let mut subs = Vec::new();
    for instance in &instances {
        subs.push(subscribe(instance, "t", Access::public_only()).await);
    }
    let context = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced = update("t", "traced", false);
    traced.trace = TraceParent::parse(context);
    publish(&instances[0], traced).await;
    publish(&instances[0], update("t", "untraced", false)).await;
    for sub in &mut subs {
        let got = next(sub).await;
        let carried = got.update.trace.as_ref().map(ToString::to_string);
        assert_eq!(carried.as_deref(), Some(context));
        assert_eq!(next(sub).await.update.trace, None);
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
        .replay(&ReplayFrom::After(ids[1].clone()), None)
        .await
        .unwrap();
    let got: Vec<_> = replay.updates.iter().map(|e| e.update.id.clone()).collect();
    assert_eq!(got, ids[2..].to_vec());
    assert!(!replay.missing);
    assert_eq!(replay.head_id.as_ref(), Some(&ids[4]));
    let now = other.replay(&ReplayFrom::Now, None).await.unwrap();
    assert!(now.updates.is_empty() && now.head_id.as_ref() == Some(&ids[4]));
    let earliest = other.replay(&ReplayFrom::Earliest, None).await.unwrap();
    assert_eq!(earliest.updates.len(), 5);
    let unknown = other
        .replay(
            &ReplayFrom::After(UpdateId::new("never-published", 100).unwrap()),
            None,
        )
        .await
        .unwrap();
    assert!(unknown.missing, "an unknown id is reported, not skipped");
    assert_eq!(unknown.updates.len(), 5, "with everything history holds");
    let newest = other
        .replay(&ReplayFrom::After(ids[4].clone()), None)
        .await
        .unwrap();
    assert!(!newest.missing && newest.updates.is_empty());
}

/// A resume from an id older than history's age limit is told of the gap and gets what
/// history holds: the updates younger than the limit, never one published before its id (the
/// subscriber had those). Redis trims its stream a node at a time, so the stream may still
/// hold older updates; with ids living as long as history, the id itself is forgotten.
async fn resumes_past_history_s_age_with_nothing_from_before_its_id(instances: Vec<Instance>) {
    let mut watcher = subscribe(&instances[1], "t", Access::public_only()).await;
    let mut before = Vec::new();
    for data in ["a", "b"] {
        before.push(publish(&instances[0], update("t", data, false)).await.id);
    }
    for id in &before {
        assert_eq!(&next(&mut watcher).await.update.id, id);
    }
    // Past the age limit of 1 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let after = publish(&instances[0], update("t", "c", false)).await.id;
    assert_eq!(next(&mut watcher).await.update.id, after);
    let exact: [Arc<str>; 1] = [Arc::from("t")];
    for topics in [None, Some(&exact[..])] {
        let replay = instances[1]
            .bus
            .replay(&ReplayFrom::After(before[1].clone()), topics)
            .await
            .unwrap();
        let got: Vec<_> = replay.updates.iter().map(|e| e.update.id.clone()).collect();
        assert!(
            replay.missing,
            "a resume past history is told so ({topics:?})"
        );
        assert_eq!(
            got,
            vec![after.clone()],
            "only what history holds ({topics:?})"
        );
    }
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
        .replay(&ReplayFrom::After(ids[0].clone()), Some(&t[..]))
        .await
        .unwrap();
    assert!(!after_first.missing);
    assert_eq!(
        on_t(&after_first),
        [ids[2].clone(), ids[3].clone(), ids[5].clone()]
    );
    assert_eq!(after_first.head_id.as_ref(), Some(&ids[5]));
    let unknown = bus
        .replay(
            &ReplayFrom::After(UpdateId::new("never", 10).unwrap()),
            Some(&t[..]),
        )
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
        .replay(&ReplayFrom::After(ids[3].clone()), Some(&both[..]))
        .await
        .unwrap();
    let got: Vec<&UpdateId> = after_both.updates.iter().map(|e| &e.update.id).collect();
    assert_eq!(got, [&ids[4], &ids[5]], "an update on both topics once");
    let quiet: Vec<std::sync::Arc<str>> = vec!["nobody-publishes-here".into()];
    let none = bus
        .replay(&ReplayFrom::After(ids[0].clone()), Some(&quiet[..]))
        .await
        .unwrap();
    assert!(!none.missing);
    assert!(none.updates.iter().all(|e| !e
        .update
        .topics
        .iter()
        .any(|t| t.as_str() == "nobody-publishes-here")));
}

/// What a stream that rewinds (`rewind=N`) reads: every update still in history on its topics
/// from the earliest, private ones too (the subscriber's rights filter them), once each, in
/// order; nothing for a topic nobody published to.
async fn replays_whole_topics_for_a_rewind(instances: Vec<Instance>) {
    let mut watcher = subscribe_to(&instances[1], &["r", "s"], Access::everything()).await;
    let mut on_r = Vec::new();
    for i in 0..5 {
        let (topic, private) = match i {
            1 => ("s", false),
            3 => ("r", true),
            _ => ("r", false),
        };
        let published = publish(&instances[0], update(topic, &i.to_string(), private)).await;
        if topic == "r" {
            on_r.push(published.id.clone());
        }
        assert_eq!(next(&mut watcher).await.update.id, published.id);
    }
    // On the instance that delivered them (a bus may serve history from what it read).
    let topics: Vec<std::sync::Arc<str>> = vec!["r".into(), "quiet".into()];
    let replay = instances[1]
        .bus
        .replay(&ReplayFrom::Earliest, Some(&topics[..]))
        .await
        .unwrap();
    assert!(!replay.missing);
    let got: Vec<&UpdateId> = replay
        .updates
        .iter()
        .filter(|e| e.update.topics.iter().any(|t| t.as_str() == "r"))
        .map(|e| &e.update.id)
        .collect();
    assert_eq!(
        got,
        on_r.iter().collect::<Vec<_>>(),
        "every update on r, in order"
    );
    assert!(replay
        .updates
        .iter()
        .filter(|e| e.update.topics.iter().any(|t| t.as_str() == "r"))
        .any(|e| e.update.private));
    assert!(!replay
        .updates
        .iter()
        .any(|e| e.update.topics.iter().any(|t| t.as_str() == "quiet")));
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
        .replay(&ReplayFrom::Earliest, None)
        .await
        .unwrap();
    let ids: Vec<&UpdateId> = replay.updates.iter().map(|e| &e.update.id).collect();
    assert_eq!(ids, [&first.id, &after.id]);
}

async fn refuses_an_id_taken_on_other_topics(instances: Vec<Instance>) {
    // An id taken on another topic was answered 200 and the update silently dropped, for as
    // long as ids are remembered (review L2): a publisher could suppress updates of others.
    let mut subs = Vec::new();
    for instance in &instances {
        subs.push(subscribe_to(instance, &["t", "u"], Access::public_only()).await);
    }
    let first = publish(&instances[1], update("t", "first", false)).await;
    // Every instance has read it (a log bus compares what it read).
    for sub in &mut subs {
        assert_eq!(next(sub).await.update.id, first.id);
    }
    let mut elsewhere = update("u", "first", false);
    elsewhere.id = first.id.clone();
    for instance in &instances {
        let refused = instance.bus.publish(elsewhere.clone()).await;
        assert!(
            matches!(refused, Err(BusError::Conflict(_))),
            "{}: {refused:?}",
            instance.bus.kind()
        );
    }
    // On the same topic it is the retry it always was, whatever else it holds (the official
    // Mercure suite publishes a private twin under a public update's id).
    let mut again = update("t", "other data", true);
    again.id = first.id.clone();
    assert_eq!(publish(&instances[2], again).await.id, first.id);
    for sub in &mut subs {
        nothing_more(sub).await;
    }
}

async fn without_history_reports_every_resume_as_a_gap(instances: Vec<Instance>) {
    let mut watcher = subscribe(&instances[1], "t", Access::public_only()).await;
    let a = publish(&instances[0], update("t", "a", false)).await;
    publish(&instances[0], update("t", "b", false)).await;
    next(&mut watcher).await;
    next(&mut watcher).await;
    let replay = instances[1]
        .bus
        .replay(&ReplayFrom::After(a.id.clone()), None)
        .await
        .unwrap();
    assert!(replay.missing && replay.updates.is_empty());
}

/// A broker that stops and comes back: open subscriptions stay open, a publish while it is away
/// is never acknowledged (refused, or its outcome unknown), every instance reconnects by
/// itself, and what is published afterwards reaches every subscriber once, in order, and
/// replays on another instance. A gap is counted exactly when the broker lost what it stored.
async fn survives_a_broker_restart(
    broker: &mut dyn common::PrivateBroker,
    instances: Vec<Instance>,
) {
    let mut subs = Vec::new();
    for instance in &instances {
        subs.push(subscribe(instance, "t", Access::public_only()).await);
    }
    let first = publish(&instances[1], update("t", "0", false)).await;
    for sub in &mut subs {
        assert_eq!(next(sub).await.update.id, first.id);
    }

    broker.stop();
    common::wait_until(
        "every instance to see the broker gone",
        Duration::from_secs(15),
        async || instances.iter().all(|i| !i.bus.is_ready()),
    )
    .await;
    match instances[1].bus.publish(update("t", "lost?", false)).await {
        Err(BusError::Unavailable(_) | BusError::OutcomeUnknown(_)) => {}
        other => panic!("a publish the broker did not take is not acknowledged: {other:?}"),
    }
    for sub in &mut subs {
        nothing_more(sub).await; // and still open: no `None`
    }

    broker.start_again();
    common::wait_until(
        "every instance to reconnect",
        Duration::from_secs(60),
        async || instances.iter().all(|i| i.bus.is_ready()),
    )
    .await;
    let mut ids = vec![first.id];
    for i in 1..=5 {
        ids.push(publish_when_back(&instances[2], update("t", &i.to_string(), false)).await);
    }
    for sub in &mut subs {
        for id in &ids[1..] {
            assert_eq!(
                &next(sub).await.update.id,
                id,
                "every update once, in order"
            );
        }
        nothing_more(sub).await;
    }
    let replay = instances[2]
        .bus
        .replay(&ReplayFrom::After(ids[2].clone()), None)
        .await
        .unwrap();
    let replayed: Vec<&UpdateId> = replay.updates.iter().map(|e| &e.update.id).collect();
    assert_eq!(replayed, ids[3..].iter().collect::<Vec<_>>());
    for instance in &instances {
        let metrics = instance.hub.metrics();
        assert!(
            metrics.bus_reconnects.get() >= 1,
            "the reconnect is counted"
        );
        if broker.keeps_data() {
            assert_eq!(
                metrics.bus_gaps.get(),
                0,
                "the broker kept everything: no gap"
            );
        } else {
            assert!(
                metrics.bus_gaps.get() >= 1,
                "the broker lost its history: a gap"
            );
        }
    }
}

/// Publishes an update once the broker takes it again: a publish refused or left unanswered
/// is retried with the same id, which the bus stores once.
async fn publish_when_back(instance: &Instance, update: Update) -> UpdateId {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match instance.bus.publish(update.clone()).await {
            Ok(published) => return published.id,
            Err(e) => assert!(std::time::Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a broker's own producers publish straight onto it, as `docs/wire-format.md` says —
/// the Rust client's publisher, a raw message from the broker's own client library, the
/// Python example — reaches every instance as if it had been published through one, and
/// replays on any instance.
async fn delivers_what_is_published_straight_onto_the_broker(
    producer: Producer,
    instances: Vec<Instance>,
) {
    let mut subs = Vec::new();
    for instance in &instances {
        subs.push(subscribe(instance, "t", Access::public_only()).await);
    }
    let with_id = Publication::new("t")
        .id("urn:example:1")
        .data("a\nb")
        .event_type("note");
    let with_id = producer.publish(&with_id).await;
    assert_eq!(with_id.id, "urn:example:1");
    if let Some(receivers) = with_id.receivers {
        assert_eq!(
            receivers,
            instances.len() as u64,
            "every instance wants the topic"
        );
    }
    let generated = producer.publish(&Publication::new("t").data("no id")).await;
    match &generated.position {
        Some(position) => assert_eq!(generated.id, format!("urn:tidings:{position}")),
        None => assert!(generated.id.starts_with("urn:uuid:"), "{}", generated.id),
    }
    // A message without an id, from the broker's own client: every instance derives the same
    // id from its place in the cluster's order.
    producer
        .publish_raw(&Publication::new("t").data("raw").wire_message())
        .await;
    let mut derived = Vec::new();
    for sub in &mut subs {
        let first = next(sub).await;
        let event_type = first.update.event_type.as_ref().map(|t| t.as_str());
        assert_eq!(
            (
                first.update.id.as_str(),
                event_type,
                first.update.data.as_str()
            ),
            ("urn:example:1", Some("note"), "a\nb")
        );
        assert_eq!(next(sub).await.update.id.as_str(), generated.id);
        let raw = next(sub).await;
        assert_eq!(raw.update.data, "raw");
        assert!(
            raw.update.id.as_str().starts_with("urn:tidings:"),
            "{}",
            raw.update.id.as_str()
        );
        derived.push(raw.update.id.clone());
    }
    let mut published = vec![
        with_id.id.clone(),
        generated.id.clone(),
        derived[0].as_str().to_owned(),
    ];
    assert!(
        derived.windows(2).all(|w| w[0] == w[1]),
        "one derived id everywhere: {derived:?}"
    );
    let after = |id: &str| ReplayFrom::After(UpdateId::new(id, 1000).unwrap());
    let replay = instances[1]
        .bus
        .replay(&after(&generated.id), None)
        .await
        .unwrap();
    let replayed: Vec<&UpdateId> = replay.updates.iter().map(|e| &e.update.id).collect();
    assert_eq!(
        replayed,
        [&derived[0]],
        "found in history on another instance"
    );

    // The Python example, once with a type and data, once without.
    if let Some(example) = producer.example() {
        let id = example.run(&["--data", "from python\nsecond line", "--type", "book"]);
        assert!(id.starts_with("urn:uuid:"), "{id}");
        let then = example.run(&[]);
        for sub in &mut subs {
            let event = next(sub).await;
            let event_type = event.update.event_type.as_ref().map(|t| t.as_str());
            assert_eq!(
                (
                    event.update.id.as_str(),
                    event_type,
                    event.update.data.as_str()
                ),
                (id.as_str(), Some("book"), "from python\nsecond line")
            );
            assert_eq!(next(sub).await.update.id.as_str(), then);
        }
        let replay = instances[1].bus.replay(&after(&id), None).await.unwrap();
        let replayed: Vec<&str> = replay
            .updates
            .iter()
            .map(|e| e.update.id.as_str())
            .collect();
        assert_eq!(replayed, [then.as_str()]);
        published.extend([id, then]);
    }
    // Everything is in history, in order: a resume from its start replays it all.
    let earliest = instances[1]
        .bus
        .replay(&ReplayFrom::Earliest, None)
        .await
        .unwrap();
    let replayed: Vec<&str> = earliest
        .updates
        .iter()
        .map(|e| e.update.id.as_str())
        .collect();
    assert_eq!(replayed, published);

    // A broker that is not there is a clear error at once.
    let (unreachable, name) = producer.unreachable().await;
    assert!(
        matches!(&unreachable, tidings_client::Error::Broker(m) if m.contains(&format!("cannot reach {name}"))),
        "{unreachable}"
    );
    // So it is for the Python example, in one line; and where only an instance makes the
    // stream or exchange, the example says to start one.
    if let Some(example) = producer.example() {
        let (url, name) = producer.nowhere();
        let said = example.refused(url, &producer.prefix);
        assert!(said.contains(name) && said.contains(url), "{said}");
        if producer.needs_an_instance() {
            let never = format!("{}-never-made", producer.prefix);
            let said = example.refused(&producer.url, &never);
            assert!(
                said.contains("start an instance first: tidings serve --bus"),
                "{said}"
            );
        }
    }
}

// --- the cluster over the bus's signals ---------------------------------------------------

/// Heartbeats in the cluster cases: a member is gone 600 ms after its last one.
const BEAT: Duration = Duration::from_millis(200);

/// Every instance in its cluster, each knowing the others once this returns.
async fn clusters(instances: &[Instance]) -> Vec<Cluster> {
    let clusters: Vec<Cluster> = instances
        .iter()
        .enumerate()
        .map(|(n, instance)| {
            let settings = ClusterSettings {
                instance_id: instance.id.clone(),
                address: format!("127.0.0.1:{}", 3000 + n),
                heartbeat: BEAT,
                deadline: Duration::from_secs(3),
            };
            Cluster::start(instance.hub.clone(), instance.bus.clone(), settings)
        })
        .collect();
    common::wait_for("every instance to know the others", async || {
        clusters
            .iter()
            .all(|c| c.members().len() == instances.len())
    })
    .await;
    clusters
}

/// A session stream of `subject` on an instance.
async fn session_stream(instance: &Instance, session: &str, subject: &str) -> Subscription {
    let session = SessionId::new(session, 256).unwrap();
    let subscription = instance.hub.subscribe(SubscriberSpec {
        label: SubscriberLabel::new(None).of_subject(Some(subject.into())),
        selectors: vec![Selector::compile(&format!("urn:s:{session}"), 1000).unwrap()],
        access: Access::public_only(),
        event_names: Vec::new(),
        session: Some(session),
        expires: None,
    });
    listening(instance).await;
    subscription
}

/// Every instance knows every other, with its figures; one that stops says so and is gone at
/// once; one that stops beating without a word (killed) is gone three heartbeats later.
async fn knows_its_members_and_drops_the_dead(instances: Vec<Instance>) {
    let clusters = clusters(&instances).await;
    let _stream = session_stream(&instances[1], "s", "alice").await;
    common::wait_for("instance 1's stream in its heartbeat", async || {
        let members = clusters[0].members();
        members
            .iter()
            .any(|(m, _)| m.id == clusters[1].id() && m.streams == 1 && m.sessions == 1)
    })
    .await;
    let (me, _) = &clusters[0].members()[0];
    assert_eq!(me.id, clusters[0].id());
    assert_eq!(me.bus, "connected");
    assert!(!me.version.is_empty() && me.started_at > 0);
    // Stopping: gone from the others at once (well before three heartbeats).
    clusters[2].stop().await;
    tokio::time::timeout(Duration::from_millis(400), async {
        while clusters[0].members().len() != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a stopping instance leaves at once");
    // Killed: heard once, then never again.
    let ghost = serde_json::json!({"signal": "beat", "member": {
        "id": "ghost", "address": "127.0.0.9:1", "version": "0", "startedAt": 1, "streams": 0,
        "sessions": 0, "bus": "connected", "deliveryLagMs": null, "draining": false,
        "heartbeatMs": BEAT.as_millis() as u64}});
    instances[1]
        .bus
        .signal(ghost.to_string().into())
        .await
        .unwrap();
    common::wait_for("the ghost to be heard", async || {
        clusters[0].members().iter().any(|(m, _)| m.id == "ghost")
    })
    .await;
    let heard = std::time::Instant::now();
    common::wait_for("the ghost to be gone", async || {
        !clusters[0].members().iter().any(|(m, _)| m.id == "ghost")
    })
    .await;
    let gone = heard.elapsed();
    assert!(
        gone >= BEAT * 2 && gone <= BEAT * 3 + Duration::from_millis(400),
        "gone three heartbeats after its last: {gone:?}"
    );
}

/// Where sessions are online, asked of any instance, answers for the whole cluster, and for
/// many sessions at once.
async fn answers_presence_for_the_cluster(instances: Vec<Instance>) {
    let clusters = clusters(&instances).await;
    let _a = session_stream(&instances[1], "a", "alice").await;
    let _b = session_stream(&instances[1], "a", "alice").await;
    let _c = session_stream(&instances[2], "a", "alice").await;
    let _d = session_stream(&instances[2], "d", "dan").await;
    let sessions: Vec<SessionId> = ["a", "nobody", "d"]
        .iter()
        .map(|s| SessionId::new(s, 256).unwrap())
        .collect();
    let (one, two) = (clusters[1].id().to_owned(), clusters[2].id().to_owned());
    // (Each session's instances sorted by id.)
    let mut both = vec![(one.clone(), 2), (two.clone(), 1)];
    both.sort();
    let expected = vec![both, vec![], vec![(two.clone(), 1)]];
    common::wait_for("presence to answer for every instance", async || {
        let (presence, missing) = clusters[0].presence(&sessions).await.unwrap();
        assert!(missing.is_empty(), "every instance answers: {missing:?}");
        presence == expected
    })
    .await;
}

/// A disconnect asked of any instance ends the streams it names on every instance, each with
/// its farewell, and no other.
async fn disconnects_across_the_cluster(instances: Vec<Instance>) {
    let clusters = clusters(&instances).await;
    let mut alice = vec![
        session_stream(&instances[1], "a1", "alice").await,
        session_stream(&instances[2], "a2", "alice").await,
    ];
    let mut bob = session_stream(&instances[2], "b", "bob").await;
    let farewell = Farewell {
        reconnect: false,
        reason: Some("logged out".into()),
    };
    let gathered = clusters[0]
        .disconnect(Streams::Subject("alice".into()), farewell.clone())
        .await
        .unwrap();
    assert!(gathered.missing.is_empty());
    let ended: usize = gathered
        .answers
        .iter()
        .map(|(_, a)| match a {
            Answer::Disconnected { streams } => *streams,
            other => panic!("not a disconnect's answer: {other:?}"),
        })
        .sum();
    assert_eq!(ended, 2);
    for stream in &mut alice {
        let end = tokio::time::timeout(Duration::from_secs(5), stream.recv()).await;
        assert!(end.expect("the stream ends").is_none());
        assert_eq!(stream.farewell(), Some(&farewell));
    }
    // Bob's stream is untouched; then ended by its id, and asked to come back.
    publish(&instances[0], update("urn:s:b", "still here", false)).await;
    assert_eq!(next(&mut bob).await.update.data, "still here");
    let id: Arc<str> = bob.spec.label.iri.clone();
    let again = Farewell {
        reconnect: true,
        reason: None,
    };
    clusters[1]
        .disconnect(Streams::Stream(id), again.clone())
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), bob.recv()).await;
    assert!(end.expect("the stream ends").is_none());
    assert_eq!(bob.farewell(), Some(&again));
}

// --- producers ------------------------------------------------------------------------

/// Publishes straight onto a cluster's broker (its URL and prefix), without an instance.
struct Producer {
    backend: Backend,
    url: String,
    prefix: String,
}

/// What a producer's publish gave.
struct Produced {
    id: String,
    /// The update's position, where the broker answers one.
    position: Option<String>,
    /// How many instances the broker sent it to, where the broker says.
    receivers: Option<u64>,
}

impl Producer {
    /// Publishes with `tidings-client`'s publisher for the broker.
    async fn publish(&self, publication: &Publication) -> Produced {
        let (url, prefix) = (self.url.as_str(), self.prefix.as_str());
        match self.backend {
            Backend::Memory => unreachable!("the memory bus has no broker"),
            Backend::Redis(_) => {
                let publisher = tidings_client::redis::RedisPublisher::connect(url, prefix)
                    .await
                    .unwrap();
                let published = publisher.publish(publication).await.unwrap();
                Produced {
                    id: published.id,
                    position: Some(published.position),
                    receivers: Some(published.receivers),
                }
            }
            Backend::Nats => {
                let publisher = tidings_client::nats::NatsPublisher::connect(url, prefix)
                    .await
                    .unwrap();
                let published = publisher.publish(publication).await.unwrap();
                Produced {
                    id: published.id,
                    position: Some(published.sequence.to_string()),
                    receivers: None,
                }
            }
            Backend::Amqp => {
                let publisher = tidings_client::amqp::AmqpPublisher::connect(url, prefix)
                    .await
                    .unwrap();
                Produced {
                    id: publisher.publish(publication).await.unwrap(),
                    position: None,
                    receivers: None,
                }
            }
            Backend::Kafka => {
                let publisher = tidings_client::kafka::KafkaPublisher::connect(url, prefix)
                    .await
                    .unwrap();
                Produced {
                    id: publisher.publish(publication).await.unwrap().id,
                    position: None,
                    receivers: None,
                }
            }
        }
    }

    /// Publishes a wire-format message with the broker's own client library, as a service in
    /// any language would.
    async fn publish_raw(&self, message: &str) {
        match self.backend {
            Backend::Memory => unreachable!("the memory bus has no broker"),
            Backend::Redis(_) => {
                let client = redis::Client::open(self.url.as_str()).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let _: (String, u64) = redis::Script::new(tidings::bus::redis::PUBLISH_SCRIPT)
                    .arg(&self.prefix)
                    .arg(message)
                    .arg(0)
                    .arg("")
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
            }
            Backend::Nats => {
                let client = async_nats::connect(self.url.as_str()).await.unwrap();
                let stream = tidings::bus::nats::stream_name(&self.prefix);
                let subject = tidings_client::nats::subject(&stream, None);
                async_nats::jetstream::new(client)
                    .publish(subject, message.to_owned().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            Backend::Amqp => {
                let properties = lapin::ConnectionProperties::default();
                let connection = lapin::Connection::connect(&self.url, properties)
                    .await
                    .unwrap();
                let channel = connection.create_channel().await.unwrap();
                let exchange = tidings::bus::amqp::Names::new(&self.prefix).exchange;
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "".into(),
                        Default::default(),
                        message.as_bytes(),
                        Default::default(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            Backend::Kafka => {
                // A bare record: the message as its value, no key, no header, in a batch
                // compressed as producers often do.
                let url = tidings::bus::kafka::KafkaUrl::parse(&self.url).unwrap();
                let client = url.client_builder().unwrap().build().await.unwrap();
                let topic = tidings::bus::kafka::topic_name(&self.prefix);
                let partition = client
                    .partition_client(
                        topic,
                        0,
                        rskafka::client::partition::UnknownTopicHandling::Retry,
                    )
                    .await
                    .unwrap();
                let record = rskafka::record::Record {
                    key: None,
                    value: Some(message.as_bytes().to_vec()),
                    headers: Default::default(),
                    timestamp: rskafka::chrono::DateTime::from_timestamp_millis(1_700_000_000_000)
                        .unwrap(),
                };
                partition
                    .produce(vec![record], rskafka::client::partition::Compression::Zstd)
                    .await
                    .unwrap();
            }
        }
    }

    /// The broker's Python example, when `python3` can run it (a failure under
    /// `TIDINGS_REQUIRE_BROKERS=1` when it cannot).
    fn example(&self) -> Option<Example> {
        let (module, script, flag) = match self.backend {
            Backend::Memory => unreachable!("the memory bus has no broker"),
            Backend::Redis(_) => ("redis", "publish.py", "--redis"),
            Backend::Nats => ("nats", "publish_nats.py", "--nats"),
            Backend::Amqp => ("pika", "publish_amqp.py", "--amqp"),
            Backend::Kafka => ("confluent_kafka", "publish_kafka.py", "--kafka"),
        };
        common::python_ready(module).then(|| Example {
            script,
            args: vec![
                flag.into(),
                self.url.clone(),
                "--prefix".into(),
                self.prefix.clone(),
                "--topic".into(),
                "t".into(),
            ],
        })
    }

    /// A URL of the broker where nothing listens, and the broker's name.
    fn nowhere(&self) -> (&'static str, &'static str) {
        match self.backend {
            Backend::Memory => unreachable!("the memory bus has no broker"),
            Backend::Redis(_) => ("redis://127.0.0.1:1/0", "Redis"),
            Backend::Nats => ("nats://127.0.0.1:1", "NATS"),
            Backend::Amqp => ("amqp://guest:guest@127.0.0.1:1/%2f", "RabbitMQ"),
            Backend::Kafka => ("kafka://127.0.0.1:1", "Kafka"),
        }
    }

    /// What the publisher says when the broker is not there, and the broker's name.
    async fn unreachable(&self) -> (tidings_client::Error, &'static str) {
        let (url, name) = self.nowhere();
        let error = match self.backend {
            Backend::Memory => unreachable!("the memory bus has no broker"),
            Backend::Redis(_) => tidings_client::redis::RedisPublisher::connect(url, "x")
                .await
                .unwrap_err(),
            Backend::Nats => tidings_client::nats::NatsPublisher::connect(url, "x")
                .await
                .unwrap_err(),
            Backend::Amqp => tidings_client::amqp::AmqpPublisher::connect(url, "x")
                .await
                .unwrap_err(),
            Backend::Kafka => tidings_client::kafka::KafkaPublisher::connect(url, "x")
                .await
                .unwrap_err(),
        };
        (error, name)
    }

    /// Whether the broker's stream or exchange exists only once an instance made it (the
    /// Python example then says to start one).
    fn needs_an_instance(&self) -> bool {
        matches!(self.backend, Backend::Nats | Backend::Amqp)
    }
}

/// One of `examples/python`, with the arguments that point it at a cluster.
struct Example {
    script: &'static str,
    args: Vec<String>,
}

impl Example {
    /// Runs it against `url` and `prefix` instead, where it must fail: its one line of error
    /// (and no traceback).
    fn refused(&self, url: &str, prefix: &str) -> String {
        let output = common::python_example(
            self.script,
            &[&self.args[0], url, "--prefix", prefix, "--topic", "t"],
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("error: "),
            "one line of error, not: {stderr}"
        );
        lines[0].to_owned()
    }

    /// Runs it with `more` arguments; the id it printed.
    fn run(&self, more: &[&str]) -> String {
        let args: Vec<&str> = self
            .args
            .iter()
            .map(String::as_str)
            .chain(more.iter().copied())
            .collect();
        common::run_python_example(self.script, &args)
    }
}

// --- the backends ---------------------------------------------------------------------

/// The cases every bus is held to, with the history each needs, handed to `$then!` after its
/// own arguments.
macro_rules! each_case {
    ($then:ident!($($args:tt)*)) => {
        $then! { $($args)*;
            fans_out_to_every_instance, kept(100);
            carries_the_trace_context_to_every_instance, kept(100);
            keeps_publish_order_per_topic, kept(1000);
            filters_private_updates, kept(100);
            wide_selectors_hear_every_topic_they_match, kept(100);
            delivers_an_update_with_several_topics_once, kept(100);
            follows_subscribers_coming_and_going, kept(100);
            replays_after_an_id_on_any_instance, kept(100);
            stores_a_retried_publish_once, kept(100);
            refuses_an_id_taken_on_other_topics, kept(100);
            replays_the_topics_of_a_subscriber_after_an_id, kept(100);
            replays_whole_topics_for_a_rewind, kept(100);
            without_history_reports_every_resume_as_a_gap, kept(0);
            knows_its_members_and_drops_the_dead, kept(10);
            answers_presence_for_the_cluster, kept(10);
            disconnects_across_the_cluster, kept(10);
            resumes_past_history_s_age_with_nothing_from_before_its_id, History { size: 100, ttl_secs: 1 };
        }
    };
}

/// The cases every bus is held to, for one backend: a test each.
macro_rules! contract {
    ($backend:expr) => {
        use super::*;
        each_case!(cases!($backend));
    };
}

/// The cases only a bus on a broker is held to: its broker restarting, and producers that
/// publish straight onto it.
macro_rules! broker_contract {
    ($backend:expr) => {
        contract!($backend);

        #[tokio::test]
        async fn survives_a_broker_restart() {
            let Some(mut broker) = $backend.private() else {
                return;
            };
            let instances = $backend.on(&broker.url(), "tidings", 3, kept(100)).await;
            super::survives_a_broker_restart(&mut *broker, instances).await;
        }

        #[tokio::test]
        async fn delivers_what_is_published_straight_onto_the_broker() {
            let Some((namespace, instances)) = $backend.instances("straight", 3, kept(100)).await
            else {
                return;
            };
            let producer = Producer {
                backend: $backend,
                url: namespace.url.clone(),
                prefix: namespace.prefix.clone(),
            };
            super::delivers_what_is_published_straight_onto_the_broker(producer, instances).await;
        }
    };
}

macro_rules! cases {
    ($backend:expr; $($name:ident, $history:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some((_namespace, instances)) = $backend.instances(stringify!($name), 3, $history).await else {
                    return;
                };
                super::$name(instances).await;
            }
        )*
    };
}

mod memory_bus {
    contract!(Backend::Memory);
}

mod redis_interest {
    broker_contract!(Backend::Redis(Routing::Interest));
}

mod redis_broadcast {
    broker_contract!(Backend::Redis(Routing::Broadcast));
}

mod nats_bus {
    broker_contract!(Backend::Nats);
}

mod amqp_bus {
    broker_contract!(Backend::Amqp);
}

mod kafka_bus {
    broker_contract!(Backend::Kafka);
}

/// Runs each case in turn on instances connected to `$url`, each case under a prefix of its own.
macro_rules! in_turn {
    ($url:ident; $($name:ident, $history:expr;)*) => {
        $(
            let prefix = common::unique_prefix(stringify!($name));
            let instances = Backend::Redis(Routing::Interest).on(&$url, &prefix, 3, $history).await;
            super::$name(instances).await;
        )*
    };
}

/// A Redis Cluster (`redis+cluster://`) is held to the contract too. Six `redis-server`s are
/// too many to start for each case: the cases run in turn on one private cluster (three
/// masters, three replicas), then the master that holds the bus's slot fails over under three
/// instances, as a broker restarts under the others.
mod redis_cluster {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_to_the_contract_and_survives_a_master_failover() {
        let Some(mut cluster) = common::PrivateRedisCluster::start() else {
            return;
        };
        let url = cluster.url();
        each_case!(in_turn!(url));
        let instances = Backend::Redis(Routing::Interest)
            .on(&url, "tidings", 3, kept(100))
            .await;
        super::survives_a_broker_restart(&mut cluster, instances).await;
    }
}
