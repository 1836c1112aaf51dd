//! The Mercure subscriptions API and subscription events (`--subscriptions`), over real
//! sockets against the real binary.

use crate::common::{client, token, unique_topic, Hub, Stream, KEY};
use serde_json::{json, Value};

const API_TEMPLATE: &str = "/.well-known/mercure/subscriptions{/topic}{/subscriber}";

fn enc(s: &str) -> String {
    // Every character but RFC 3986 unreserved ones, as the hub escapes path segments.
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn get(hub: &Hub, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = client().get(hub.url(path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn subscribers_coming_and_going_are_listed_and_announced() {
    let hub = Hub::start(&["--jwt-key", KEY, "--anonymous", "--subscriptions"]);
    let admin = token(json!({"mercure": {"subscribe": [API_TEMPLATE]}}));
    let watch_url = crate::common::subscribe_url(&hub, &[API_TEMPLATE], "");
    let mut watcher =
        Stream::open(&watch_url, &[("authorization", &format!("Bearer {admin}"))]).await;
    let own: Value = serde_json::from_str(&watcher.next().await.data).unwrap();
    assert_eq!(
        (own["topic"].as_str(), &own["active"]),
        (Some(API_TEMPLATE), &json!(true)),
        "its own arrival"
    );

    let topic = unique_topic("watched");
    let alice = token(json!({"mercure": {"subscribe": [], "payload": {"name": "alice"}}}));
    let client_stream = Stream::open(
        &crate::common::subscribe_url(&hub, &[&topic], ""),
        &[("authorization", &format!("Bearer {alice}"))],
    )
    .await;
    let arrival = watcher.next().await;
    let event: Value = serde_json::from_str(&arrival.data).unwrap();
    let subscriber = event["subscriber"].as_str().unwrap().to_owned();
    assert!(subscriber.starts_with("urn:uuid:"));
    let id = format!(
        "/.well-known/mercure/subscriptions/{}/{}",
        enc(&topic),
        enc(&subscriber)
    );
    assert_eq!(
        event,
        json!({"@context": "https://mercure.rocks/", "id": id, "type": "Subscription", "subscriber": subscriber,
               "topic": topic, "active": true, "payload": {"name": "alice"}})
    );

    // The collection lists both subscribers; per topic, only alice's; and alice's one.
    let (status, all) = get(&hub, "/.well-known/mercure/subscriptions", Some(&admin)).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        (
            all["type"].as_str(),
            all["subscriptions"].as_array().unwrap().len()
        ),
        (Some("Subscriptions"), 2)
    );
    let (_, by_topic) = get(
        &hub,
        &format!("/.well-known/mercure/subscriptions/{}", enc(&topic)),
        Some(&admin),
    )
    .await;
    let list = by_topic["subscriptions"].as_array().unwrap();
    assert_eq!(
        (list.len(), list[0]["subscriber"].as_str()),
        (1, Some(subscriber.as_str()))
    );
    let (status, one) = get(&hub, &id, Some(&admin)).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        (one["id"].as_str(), one["active"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    assert!(one["lastEventID"].is_string());

    // Alice leaves: an inactive event, and she is no longer listed.
    client_stream.close();
    let departure: Value = serde_json::from_str(&watcher.next().await.data).unwrap();
    assert_eq!(
        (departure["id"].as_str(), &departure["active"]),
        (Some(id.as_str()), &json!(false))
    );
    let (status, _) = get(&hub, &id, Some(&admin)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn mercure_1_0_subscribers_are_named_by_their_matches() {
    // A subscriber that writes match…= selectors is announced and listed as Mercure 1.0
    // names it: by match type and match, with the SSE type mercure, as plain JSON.
    let hub = Hub::start(&["--jwt-key", KEY, "--anonymous", "--subscriptions"]);
    let admin = token(json!({"mercure": {"subscribe": ["*"]}}));
    let bearer = format!("Bearer {admin}");
    let watch = hub.url(
        "/.well-known/mercure?match_urlpattern=/.well-known/mercure/subscriptions/:match_type/:match/:subscriber",
    );
    let mut watcher = Stream::open(&watch, &[("authorization", &bearer)]).await;
    let own = watcher.next().await;
    assert_eq!(own.event, "mercure");
    let own: Value = serde_json::from_str(&own.data).unwrap();
    assert_eq!(own["match_type"], "urlpattern");

    let topic = unique_topic("matched");
    let pattern = format!("{topic}/:part");
    let url = hub.url(&format!(
        "/.well-known/mercure?match={}&match_urlpattern={}",
        enc(&topic),
        enc(&pattern)
    ));
    let client_stream = Stream::open(&url, &[]).await;
    let mut told = Vec::new();
    for _ in 0..2 {
        let event = watcher.next().await;
        assert_eq!(event.event, "mercure");
        told.push(serde_json::from_str::<Value>(&event.data).unwrap());
    }
    let subscriber = told[0]["subscriber"].as_str().unwrap().to_owned();
    let exact_id = format!(
        "/.well-known/mercure/subscriptions/exact/{}/{}",
        enc(&topic),
        enc(&subscriber)
    );
    assert_eq!(
        told[0],
        json!({"id": exact_id, "type": "subscription", "subscriber": subscriber,
               "match": topic, "match_type": "exact", "active": true})
    );
    assert_eq!(
        (told[1]["match_type"].as_str(), told[1]["match"].as_str()),
        (Some("urlpattern"), Some(pattern.as_str()))
    );

    // The routes of Mercure 1.0: one match's subscriptions, and one subscription.
    let response = client()
        .get(hub.url(&format!(
            "/.well-known/mercure/subscriptions/exact/{}",
            enc(&topic)
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let link = response.headers()["link"].to_str().unwrap().to_owned();
    let collection: Value = response.json().await.unwrap();
    assert_eq!(collection["type"], "subscriptions");
    let cursor = collection["last_event_id"].as_str().unwrap();
    assert_eq!(
        link,
        format!("</.well-known/mercure>; rel=\"mercure\"; last-event-id=\"{cursor}\"")
    );
    let list = collection["subscriptions"].as_array().unwrap();
    assert_eq!((list.len(), &list[0]["id"]), (1, &json!(exact_id)));
    let (status, one) = get(&hub, &exact_id, Some(&admin)).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        (one["match"].as_str(), one["last_event_id"].is_string()),
        (Some(topic.as_str()), true)
    );
    let (status, _) = get(
        &hub,
        &format!(
            "/.well-known/mercure/subscriptions/regexp/x/{}",
            enc(&subscriber)
        ),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 400, "an unknown match type");
    // The whole list shows each subscriber in its own form.
    let (_, all) = get(&hub, "/.well-known/mercure/subscriptions", Some(&admin)).await;
    assert_eq!(all["subscriptions"].as_array().unwrap().len(), 3);

    client_stream.close();
    for _ in 0..2 {
        let left: Value = serde_json::from_str(&watcher.next().await.data).unwrap();
        assert_eq!(left["active"], false);
    }
    let (status, _) = get(&hub, &exact_id, Some(&admin)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn anonymous_subscribers_see_no_subscription_event() {
    // Subscription events are private updates. (The API's refusals are router tests:
    // `in_process/requests.rs`.)
    let hub = Hub::start(&["--jwt-key", KEY, "--anonymous", "--subscriptions"]);
    let mut anonymous = Stream::open(&crate::common::subscribe_url(&hub, &["*"], ""), &[]).await;
    let _other = Stream::open(&crate::common::subscribe_url(&hub, &["x"], ""), &[]).await;
    assert!(anonymous
        .next_within(std::time::Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn a_client_churning_streams_cannot_push_real_updates_out_of_history() {
    // Subscription events are kept in history like any update: a client opening and closing
    // streams of many selectors pushed real updates out, and a legitimate resume got
    // tidings-gap (review M6). Its address's events are bounded now.
    let hub = Hub::start(&[
        "--auth",
        "none",
        "--subscriptions",
        "--history-size",
        "300",
        "--subscription-events-per-address",
        "2",
    ]);
    let topic = unique_topic("kept");
    let (status, kept) =
        crate::common::publish(&hub, None, &[("topic", &topic), ("data", "kept")]).await;
    assert_eq!(status, 200);
    let (status, after) =
        crate::common::publish(&hub, None, &[("topic", &topic), ("data", "after")]).await;
    assert_eq!(status, 200);
    // 20 streams of 20 selectors, opened and closed: 800 events without the bound.
    let selectors: Vec<String> = (0..20).map(|i| format!("{topic}/churn/{i}")).collect();
    let selectors: Vec<&str> = selectors.iter().map(String::as_str).collect();
    for _ in 0..20 {
        Stream::open(&crate::common::subscribe_url(&hub, &selectors, ""), &[])
            .await
            .close();
    }
    crate::common::wait_for("the churn's events to be dropped", async || {
        hub.metric("tidings_subscriber_events_dropped_total{listener=\"subscriptions\"}")
            .await
            > 0.0
    })
    .await;
    let resume = crate::common::subscribe_url(&hub, &[&topic], &format!("&lastEventID={kept}"));
    let mut stream = Stream::open(&resume, &[]).await;
    let first = stream.next().await;
    assert_eq!(
        (first.event.as_str(), first.id.as_str()),
        ("message", after.as_str()),
        "resumed without a gap"
    );
}
