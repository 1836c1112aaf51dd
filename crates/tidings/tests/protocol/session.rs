//! The session API over real sockets: several streams per session, each filtered by its event
//! name; publishing by session id; the session registry.

use std::time::Duration;

use crate::common::{client, publisher_token, token, Hub, Stream, KEY};
use serde_json::{json, Value};

async fn send(hub: &Hub, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = client().post(hub.url("/sse/events")).json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn describe(hub: &Hub, session: &str) -> Value {
    client()
        .get(hub.url(&format!("/sse/sessions/{session}")))
        .bearer_auth(publisher_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_stream_of_a_session_gets_only_its_event_name() {
    let hub = Hub::start(&["--jwt-key", KEY, "--instance-id", "node-a"]);
    let alice = token(json!({"sub": "alice"}));
    let bob = token(json!({"sub": "bob"}));
    let auth = |t: &str| format!("Bearer {t}");
    let mut chat = Stream::open(
        &hub.url("/sse/event-stream?eventName=chat"),
        &[("authorization", &auth(&alice))],
    )
    .await;
    let mut news = Stream::open(
        &hub.url("/sse/event-stream?eventName=news"),
        &[("authorization", &auth(&alice))],
    )
    .await;
    let mut bobs_chat = Stream::open(
        &hub.url("/sse/event-stream?eventName=chat"),
        &[("authorization", &auth(&bob))],
    )
    .await;

    let info = describe(&hub, "alice").await;
    assert_eq!(
        info,
        json!({"sessionId": "alice", "connected": true, "streams": 2, "scope": "cluster", "instances": [{"instanceId": "node-a", "streams": 2}]})
    );

    let p = publisher_token();
    let (status, body) = send(
        &hub,
        Some(&p),
        json!({"sessionId": "alice", "eventName": "chat", "payload": {"text": "hi\nthere"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (_, _) = send(
        &hub,
        Some(&p),
        json!({"sessionId": "alice", "eventName": "news", "payload": "plain text"}),
    )
    .await;

    let e = chat.next().await;
    assert_eq!((e.id.as_str(), e.event.as_str()), (id.as_str(), "chat"));
    assert_eq!(
        serde_json::from_str::<Value>(&e.data).unwrap(),
        json!({"text": "hi\nthere"})
    );
    let e = news.next().await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("news", "plain text"),
        "strings are sent as they are"
    );
    assert!(
        chat.next_within(Duration::from_millis(200)).await.is_none(),
        "chat stream does not get news"
    );
    assert!(
        bobs_chat
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "bob does not get alice's events"
    );

    chat.close();
    news.close();
    crate::common::wait_for("the session to go once its streams closed", async || {
        describe(&hub, "alice").await["connected"] == json!(false)
    })
    .await;
    let described = describe(&hub, "alice").await;
    assert_eq!(described["instances"], json!([]));
    assert_eq!(
        described["scope"], "cluster",
        "every bus answers for its cluster"
    );
}

#[tokio::test]
async fn session_events_are_private_to_the_session_on_the_mercure_side_too() {
    let hub = Hub::start(&["--jwt-key", KEY, "--anonymous"]);
    let url = hub.url("/.well-known/mercure?topic=*");
    let bearer = |claims: Value| format!("Bearer {}", token(claims));
    let mut anonymous = Stream::open(&url, &[]).await;
    let mut mallory = Stream::open(
        &url,
        &[("authorization", &bearer(json!({"sub": "mallory"})))],
    )
    .await;
    let mut books = Stream::open(
        &url,
        &[(
            "authorization",
            &bearer(
                json!({"sub": "x", "mercure": {"subscribe": ["https://example.com/books/{id}"]}}),
            ),
        )],
    )
    .await;
    // The session's own user, and an administrator whose claim covers every topic.
    let mut carol =
        Stream::open(&url, &[("authorization", &bearer(json!({"sub": "carol"})))]).await;
    let mut admin = Stream::open(
        &url,
        &[(
            "authorization",
            &bearer(json!({"mercure": {"subscribe": ["*"]}})),
        )],
    )
    .await;
    let (status, body) = send(
        &hub,
        Some(&publisher_token()),
        json!({"sessionId": "carol", "eventName": "x", "payload": 1}),
    )
    .await;
    assert_eq!(status, 200);
    let id = body["id"].as_str().unwrap();
    assert_eq!(carol.next().await.id, id);
    assert_eq!(admin.next().await.id, id);
    for s in [&mut anonymous, &mut mallory, &mut books] {
        assert!(s.next_within(Duration::from_millis(200)).await.is_none());
    }
}

#[tokio::test]
async fn session_streams_resume_from_history() {
    let hub = Hub::start(&["--jwt-key", KEY]);
    let dave = format!("Bearer {}", token(json!({"sub": "dave"})));
    let p = publisher_token();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, body) = send(
            &hub,
            Some(&p),
            json!({"sessionId": "dave", "eventName": "job", "payload": i}),
        )
        .await;
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let mut s = Stream::open(
        &hub.url("/sse/event-stream?eventName=job"),
        &[("authorization", &dave), ("last-event-id", &ids[0])],
    )
    .await;
    assert_eq!(s.next().await.data, "1");
    assert_eq!(s.next().await.data, "2");
}

#[tokio::test]
async fn auth_none_takes_the_session_from_the_query_or_a_cookie() {
    let hub = Hub::start(&["--auth", "none"]);
    let mut by_query =
        Stream::open(&hub.url("/sse/event-stream?eventName=e&sessionId=s1"), &[]).await;
    let mut by_cookie = Stream::open(
        &hub.url("/sse/event-stream?eventName=e"),
        &[("cookie", "sessionId=s1")],
    )
    .await;
    let (status, _) = send(
        &hub,
        None,
        json!({"sessionId": "s1", "eventName": "e", "payload": [1, 2]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(by_query.next().await.data, "[1,2]");
    assert_eq!(by_cookie.next().await.data, "[1,2]");
    let missing = Stream::try_open(&hub.url("/sse/event-stream?eventName=e"), &[]).await;
    assert_eq!(missing.status, 400);
}

#[tokio::test]
async fn one_publish_reaches_several_sessions_or_every_session_stream() {
    let hub = Hub::start(&["--jwt-key", KEY, "--anonymous"]);
    let stream = async |session: &str, name: &str| {
        let bearer = format!("Bearer {}", token(json!({"sub": session})));
        Stream::open(
            &hub.url(&format!("/sse/event-stream?eventName={name}")),
            &[("authorization", &bearer)],
        )
        .await
    };
    let (mut alice, mut bob, mut carol) = (
        stream("alice", "chat").await,
        stream("bob", "chat").await,
        stream("carol", "news").await,
    );
    let mut anonymous = Stream::open(&hub.url("/.well-known/mercure?topic=*"), &[]).await;
    // A Mercure stream whose token names a session is not a session stream.
    let dave = format!("Bearer {}", token(json!({"sub": "dave"})));
    let mut mercure_dave = Stream::open(
        &hub.url("/.well-known/mercure?topic=urn:tidings:sessions"),
        &[("authorization", &dave)],
    )
    .await;
    let p = publisher_token();
    let quiet = Duration::from_millis(200);

    // Several sessions: one update, once to each of their streams; a retry is the same one.
    let body = json!({"sessionIds": ["alice", "bob", "alice"], "eventName": "chat",
                      "payload": "lunch?", "id": "fan-out-1"});
    for _ in 0..2 {
        let (status, answer) = send(&hub, Some(&p), body.clone()).await;
        assert_eq!((status, &answer["id"]), (200, &json!("fan-out-1")));
    }
    for s in [&mut alice, &mut bob] {
        let event = s.next().await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            ("fan-out-1", "lunch?")
        );
        assert!(s.next_within(quiet).await.is_none(), "once");
    }
    assert!(carol.next_within(quiet).await.is_none());

    // Every session stream listening for the name, in order with each session's own events;
    // never an anonymous Mercure subscriber.
    let direct = |n: u32| json!({"sessionId": "alice", "eventName": "chat", "payload": n});
    send(&hub, Some(&p), direct(1)).await;
    let everyone = json!({"broadcast": true, "eventName": "chat", "payload": "all"});
    assert_eq!(send(&hub, Some(&p), everyone).await.0, 200);
    send(&hub, Some(&p), direct(2)).await;
    let got: Vec<String> = [alice.next().await, alice.next().await, alice.next().await]
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["1", "all", "2"]);
    assert_eq!(bob.next().await.data, "all");
    let news = json!({"broadcast": true, "eventName": "news", "payload": "extra"});
    assert_eq!(send(&hub, Some(&p), news).await.0, 200);
    assert_eq!(carol.next().await.data, "extra");
    assert!(
        bob.next_within(quiet).await.is_none(),
        "bob listens for chat"
    );
    assert!(anonymous.next_within(quiet).await.is_none(), "private");
    assert!(
        mercure_dave.next_within(quiet).await.is_none(),
        "to session streams"
    );

    // A publisher allowed the sessions' topics only cannot broadcast.
    let sessions_only = token(json!({"mercure": {"publish": ["urn:tidings:session:{id}"]}}));
    let (status, _) = send(
        &hub,
        Some(&sessions_only),
        json!({"broadcast": true, "eventName": "chat", "payload": 0}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        &hub,
        Some(&sessions_only),
        json!({"sessionIds": ["alice", "bob"], "eventName": "chat", "payload": 0}),
    )
    .await;
    assert_eq!(status, 200);
}
