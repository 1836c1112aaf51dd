//! The hub's tests: registration, dispatch, slow consumers, sessions and interest.

use super::interest::MAX_LOGGED_TOPICS;
use super::*;
use crate::envelope::Position;
use crate::metrics::EventListener;
use crate::subscriber::Access;
use crate::update::{Topic, Update, UpdateId};

fn hub(capacity: usize) -> Hub {
    Hub::new(capacity, Arc::new(Metrics::new()))
}

fn spec(selectors: &[&str]) -> SubscriberSpec {
    SubscriberSpec {
        label: crate::subscriber::SubscriberLabel::new(None),
        selectors: selectors
            .iter()
            .map(|s| Selector::compile(s, 1000).unwrap())
            .collect(),
        access: Access::public_only(),
        event_names: Vec::new(),
        session: None,
        expires: None,
    }
}

fn envelope(pos: u128, topics: &[&str]) -> Arc<Envelope> {
    let update = Update::new(
        UpdateId::generate(),
        topics
            .iter()
            .map(|t| Topic::new(t, 1000).unwrap())
            .collect(),
        None,
        format!("{pos}"),
        None,
        false,
    )
    .unwrap();
    Arc::new(Envelope::new(update, Position(pos), 0))
}

#[tokio::test]
async fn exact_wide_and_multi_selector_subscribers_get_one_copy() {
    let hub = hub(8);
    let mut exact = hub.subscribe(spec(&["a"]));
    let mut wide = hub.subscribe(spec(&["*"]));
    let mut multi = hub.subscribe(spec(&["a", "b", "{x}"]));
    let mut other = hub.subscribe(spec(&["c"]));
    let out = hub.dispatch(&envelope(1, &["a", "b"]));
    assert_eq!(out.queued, 3);
    for sub in [&mut exact, &mut wide, &mut multi] {
        assert_eq!(sub.recv().await.unwrap().position, Position(1));
        assert!(sub.rx.try_recv().is_err(), "exactly one copy");
    }
    assert!(other.rx.try_recv().is_err());
}

#[tokio::test]
async fn selectors_spelled_alike_but_of_different_kinds_deliver_once() {
    let hub = hub(8);
    // A template and a URL pattern with the same text both match "/a/x"; `*` and a
    // `match=*` exact selector both match the topic "*".
    let mut sub = hub.subscribe(SubscriberSpec {
        selectors: vec![
            Selector::url_pattern("/a/{x}", 100).unwrap(),
            Selector::compile("/a/{x}", 100).unwrap(),
            Selector::exact("*", 100).unwrap(),
            Selector::Any,
        ],
        ..spec(&[])
    });
    assert_eq!(hub.dispatch(&envelope(1, &["/a/x"])).queued, 1);
    assert_eq!(sub.recv().await.unwrap().position, Position(1));
    assert!(sub.rx.try_recv().is_err());
    assert_eq!(hub.dispatch(&envelope(2, &["*"])).queued, 1);
    assert_eq!(sub.recv().await.unwrap().position, Position(2));
    assert!(sub.rx.try_recv().is_err());
}

#[tokio::test]
async fn selectors_spelled_alike_are_indexed_apart() {
    let hub = hub(8);
    let mut sub = hub.subscribe(SubscriberSpec {
        selectors: vec![
            Selector::exact("a/{x}", 100).unwrap(),
            Selector::compile("a/{x}", 100).unwrap(),
        ],
        ..spec(&[])
    });
    assert_eq!(hub.dispatch(&envelope(1, &["a/{x}"])).queued, 1);
    assert_eq!(sub.recv().await.unwrap().position, Position(1));
    assert!(sub.rx.try_recv().is_err());
}

#[tokio::test]
async fn dropping_a_subscription_unregisters_it_and_its_interest() {
    let hub = hub(8);
    let a = hub.subscribe(spec(&["t", "u/{x}"]));
    let b = hub.subscribe(spec(&["t"]));
    assert_eq!(hub.subscriber_count(), 2);
    let before = hub.interest_version();
    assert_eq!(hub.interest().wide[0].source(), "u/{x}");
    drop(a);
    assert_eq!(hub.interest().exact, vec![Arc::from("t")]);
    assert!(hub.interest().wide.is_empty());
    assert!(hub.interest_version() > before);
    drop(b);
    assert_eq!(hub.subscriber_count(), 0);
    assert!(hub.interest().exact.is_empty() && hub.interest().wide.is_empty());
    assert_eq!(hub.metrics().subscribers.get(), 0);
}

#[tokio::test]
async fn interest_changes_name_the_exact_topics_that_came_and_went() {
    let hub = hub(8);
    let sorted = |mut topics: Vec<Arc<str>>| {
        topics.sort();
        topics
    };
    let exact = |changes: InterestChanges| match changes {
        InterestChanges::Exact { wanted, unwanted } => (sorted(wanted), sorted(unwanted)),
        InterestChanges::Everything => panic!("expected exact changes"),
    };
    let a = hub.subscribe(spec(&["a"]));
    // Nothing was recorded before the first look.
    assert_eq!(hub.take_interest_changes(), InterestChanges::Everything);
    assert_eq!(exact(hub.take_interest_changes()), (vec![], vec![]));

    let b = hub.subscribe(spec(&["b", "c"]));
    let second_a = hub.subscribe(spec(&["a"]));
    drop(a);
    assert_eq!(
        exact(hub.take_interest_changes()),
        (vec![Arc::from("b"), Arc::from("c")], vec![]),
        "a still has a subscriber, so it did not change"
    );
    drop(second_a);
    let back = hub.subscribe(spec(&["c"]));
    drop(b);
    assert_eq!(
        exact(hub.take_interest_changes()),
        (vec![], vec![Arc::from("a"), Arc::from("b")]),
    );
    drop(back);
    let c_went = exact(hub.take_interest_changes());
    assert_eq!(c_went, (vec![], vec![Arc::from("c")]));

    // A wide selector coming or going asks for a full re-read.
    let wide = hub.subscribe(spec(&["u/{x}"]));
    assert_eq!(hub.take_interest_changes(), InterestChanges::Everything);
    drop(wide);
    assert_eq!(hub.take_interest_changes(), InterestChanges::Everything);

    // So do very many changes at once, without the record growing past its bound.
    let many: Vec<_> = (0..=MAX_LOGGED_TOPICS)
        .map(|i| hub.subscribe(spec(&[&format!("t{i}")])))
        .collect();
    assert!(hub.read().changes.as_ref().unwrap().exact.len() <= MAX_LOGGED_TOPICS);
    assert_eq!(hub.take_interest_changes(), InterestChanges::Everything);
    drop(many);
}

#[tokio::test]
async fn a_full_queue_disconnects_only_that_subscriber() {
    let hub = hub(2);
    let mut slow = hub.subscribe(spec(&["t"]));
    let mut fast = hub.subscribe(spec(&["t"]));
    for i in 1..=3 {
        hub.dispatch(&envelope(i, &["t"]));
        assert_eq!(fast.recv().await.unwrap().position, Position(i));
    }
    assert_eq!(hub.subscriber_count(), 1);
    assert_eq!(slow.recv().await.unwrap().position, Position(1));
    assert_eq!(slow.recv().await.unwrap().position, Position(2));
    assert!(slow.recv().await.is_none(), "the slow stream ends");
    assert_eq!(hub.metrics().slow_consumers.get(), 1);
}

#[tokio::test]
async fn a_listener_that_falls_behind_is_told_how_many_events_it_missed() {
    let hub = hub(8);
    let mut events = hub.subscriber_events_within(EventListener::Webhooks, 2);
    let subscriptions: Vec<_> = (0..5).map(|_| hub.subscribe(spec(&["a"]))).collect();
    for _ in 0..2 {
        assert!(matches!(
            events.recv().await,
            Some(Heard::Event(SubscriberEvent { active: true, .. }))
        ));
    }
    assert!(matches!(events.recv().await, Some(Heard::Missed(3))));
    assert!(hub
        .metrics()
        .render()
        .contains(r#"tidings_subscriber_events_dropped_total{listener="webhooks"} 3"#));
    // Caught up: what comes next is heard again, in order.
    drop(subscriptions);
    assert!(matches!(
        events.recv().await,
        Some(Heard::Event(SubscriberEvent { active: false, .. }))
    ));
}

#[tokio::test]
async fn a_disconnected_stream_gets_what_was_queued_then_its_farewell_and_leaves() {
    let hub = hub(8);
    let session = SessionId::new("s", 100).unwrap();
    let mut mine = spec(&["a"]);
    mine.session = Some(session.clone());
    mine.label = mine.label.of_subject(Some("alice".into()));
    let mut sub = hub.subscribe(mine);
    let mut other = hub.subscribe(spec(&["a"]));
    hub.dispatch(&envelope(1, &["a"]));
    let farewell = Farewell {
        reconnect: true,
        reason: Some("role changed".into()),
    };
    assert_eq!(
        hub.disconnect(&Streams::Subject("bob".into()), &farewell),
        0
    );
    assert_eq!(
        hub.disconnect(&Streams::Session(session.clone()), &farewell),
        1
    );
    assert_eq!(hub.session_streams(&session), 0);
    assert_eq!(hub.subscriber_count(), 1);
    assert_eq!(sub.recv().await.unwrap().position, Position(1));
    assert!(sub.recv().await.is_none());
    assert_eq!(sub.farewell(), Some(&farewell));
    // The other stream is untouched, and ended by its id.
    assert_eq!(other.recv().await.unwrap().position, Position(1));
    assert!(other.farewell().is_none());
    let id = Streams::Stream(other.spec.label.iri.clone());
    assert_eq!(hub.streams(&id).len(), 1);
    assert_eq!(hub.disconnect(&id, &farewell), 1);
    assert!(other.recv().await.is_none());
    assert_eq!(hub.disconnect(&id, &farewell), 0, "gone already");
}

#[tokio::test]
async fn selector_counts_name_each_selector_once_with_its_subscribers() {
    let hub = hub(8);
    let _a = hub.subscribe(spec(&["books/1", "books/{id}"]));
    let _b = hub.subscribe(spec(&["books/1"]));
    let _c = hub.subscribe(spec(&["music/1"]));
    let counts = hub.selector_counts("books/");
    let counts: Vec<(&str, usize)> = counts.iter().map(|(s, n)| (&**s, *n)).collect();
    assert_eq!(counts, [("books/1", 2), ("books/{id}", 1)]);
    assert_eq!(hub.selector_counts("").len(), 3);
}
