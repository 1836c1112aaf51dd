//! The `tidings-client` crate against the real hub: it publishes through both APIs, follows
//! streams, and turns refusals into typed errors that say whether retrying can help.

use futures_util::StreamExt;
use serde_json::json;
use tidings_client::{Error, Hub as Client, Publication, Subscription};

use crate::common::Hub;

async fn next(events: &mut tidings_client::Events) -> tidings_client::Event {
    tokio::time::timeout(crate::common::WAIT, events.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("an event, not an error")
}

#[tokio::test]
async fn publishes_and_subscribes_through_both_apis() {
    let hub = Hub::start(&["--jwt-key", crate::common::KEY]);
    let subscriber = Client::new(&hub.base)
        .unwrap()
        .with_token(crate::common::token(
            json!({"mercure": {"subscribe": ["*"]}, "sub": "alice"}),
        ));
    let publisher = Client::new(&hub.base)
        .unwrap()
        .with_token(crate::common::publisher_token());
    let topic = crate::common::unique_topic("client");

    // Streams connect when first polled: starting from the earliest history, they get what
    // was published before as well.
    let mut books = subscriber
        .subscribe(Subscription::topics([format!("{topic}/{{id}}")]).last_event_id("earliest"));
    let mut chat = subscriber.subscribe(Subscription::session("chat").last_event_id("earliest"));
    let mut every =
        subscriber.subscribe(Subscription::session_events::<_, &str>([]).last_event_id("earliest"));
    let id = publisher
        .publish(
            &Publication::new(format!("{topic}/1"))
                .data("line 1\nline 2")
                .event_type("book")
                .private(),
        )
        .await
        .unwrap();
    let event = next(&mut books).await;
    assert_eq!(
        (
            event.id.as_str(),
            event.event_type.as_str(),
            event.data.as_str()
        ),
        (id.as_str(), "book", "line 1\nline 2")
    );
    let id = publisher
        .send_event("alice", "chat", &json!({"text": "hi"}))
        .await
        .unwrap();
    let event = next(&mut chat).await;
    assert_eq!((event.id, event.data), (id, r#"{"text":"hi"}"#.to_owned()));
    // One stream for every event name of the session, each event with its name.
    publisher
        .send_event("alice", "alert", &json!("fire"))
        .await
        .unwrap();
    let names = [next(&mut every).await, next(&mut every).await].map(|e| e.event_type);
    assert_eq!(names, ["chat", "alert"]);
}

#[tokio::test]
async fn refusals_are_typed_and_say_whether_to_retry() {
    let hub = Hub::start(&["--jwt-key", crate::common::KEY]);
    let anonymous = Client::new(&hub.base).unwrap();
    let refused = anonymous
        .publish(&Publication::new("https://example.com/x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            Error::Refused {
                status: 401,
                error: Some(_),
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(refused.is_permanent());

    let mut events = anonymous.subscribe(Subscription::topics(["https://example.com/{"]));
    let refused = tokio::time::timeout(crate::common::WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            Error::Refused {
                status: 400 | 401,
                ..
            }
        ) && refused.is_permanent(),
        "{refused:?}"
    );
    assert!(events.next().await.is_none());
}
