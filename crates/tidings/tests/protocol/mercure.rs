//! The Mercure protocol over real sockets, against the real binary: delivery, private updates,
//! resuming, selectors. (What one request answers is in `in_process/requests.rs`.)

use std::time::Duration;

use crate::common::{
    publish, publisher_token, subscribe_url, token, unique_topic, Hub, Stream, KEY,
};
use serde_json::json;

fn jwt_hub(extra: &[&str]) -> Hub {
    let mut args = vec!["--jwt-key", KEY];
    args.extend_from_slice(extra);
    Hub::start(&args)
}

#[tokio::test]
async fn a_published_update_reaches_exact_template_and_wildcard_subscribers() {
    let hub = jwt_hub(&["--anonymous"]);
    let topic = unique_topic("books");
    let template = format!("{}/{{rest}}", topic.rsplit_once('/').unwrap().0);
    let mut exact = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
    let mut templated = Stream::open(&subscribe_url(&hub, &[&template], ""), &[]).await;
    let mut all = Stream::open(&subscribe_url(&hub, &["*"], ""), &[]).await;
    let mut other = Stream::open(
        &subscribe_url(&hub, &["https://example.com/other"], ""),
        &[],
    )
    .await;
    let (status, id) = publish(
        &hub,
        Some(&publisher_token()),
        &[
            ("topic", &topic),
            ("data", "line one\nline two\n\nline four"),
            ("type", "book"),
            ("retry", "2500"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{id}");
    assert!(id.starts_with("urn:uuid:"), "{id}");
    for stream in [&mut exact, &mut templated, &mut all] {
        let event = stream.next().await;
        assert_eq!(event.id, id);
        assert_eq!(event.event, "book");
        assert_eq!(
            event.data, "line one\nline two\n\nline four",
            "multi-line data arrives intact"
        );
        assert_eq!(event.retry, Some(Duration::from_millis(2500)));
    }
    assert!(other
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn private_updates_reach_only_subscribers_whose_claim_matches() {
    let hub = jwt_hub(&["--anonymous"]);
    let topic = unique_topic("orders");
    let allowed = token(
        json!({"mercure": {"subscribe": [format!("{}/{{id}}", topic.rsplit_once('/').unwrap().0)]}}),
    );
    let denied = token(json!({"mercure": {"subscribe": ["https://example.com/elsewhere"]}}));
    let url = subscribe_url(&hub, &[&topic], "");
    let mut by_header =
        Stream::open(&url, &[("authorization", &format!("Bearer {allowed}"))]).await;
    let mut by_cookie = Stream::open(
        &url,
        &[("cookie", &format!("mercureAuthorization={allowed}"))],
    )
    .await;
    let mut by_query = Stream::open(&format!("{url}&authorization={allowed}"), &[]).await;
    let mut wrong_claim =
        Stream::open(&url, &[("authorization", &format!("Bearer {denied}"))]).await;
    let mut anonymous = Stream::open(&url, &[]).await;
    let (status, private_id) = publish(
        &hub,
        Some(&publisher_token()),
        &[("topic", &topic), ("data", "secret"), ("private", "on")],
    )
    .await;
    assert_eq!(status, 200);
    let (_, public_id) = publish(
        &hub,
        Some(&publisher_token()),
        &[("topic", &topic), ("data", "public")],
    )
    .await;
    for s in [&mut by_header, &mut by_cookie, &mut by_query] {
        assert_eq!(s.next().await.id, private_id);
        assert_eq!(s.next().await.id, public_id);
    }
    for s in [&mut wrong_claim, &mut anonymous] {
        let e = s.next().await;
        assert_eq!(
            (e.id.as_str(), e.data.as_str()),
            (public_id.as_str(), "public"),
            "the private update is skipped"
        );
    }
}

#[tokio::test]
async fn resuming_with_last_event_id_replays_what_was_missed_then_goes_live() {
    let hub = jwt_hub(&["--anonymous"]);
    let topic = unique_topic("resume");
    let p = publisher_token();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, id) = publish(
            &hub,
            Some(&p),
            &[("topic", &topic), ("data", &i.to_string())],
        )
        .await;
        assert_eq!(status, 200);
        ids.push(id);
    }
    // Noise on another topic is not replayed.
    publish(
        &hub,
        Some(&p),
        &[("topic", "https://example.com/noise"), ("data", "x")],
    )
    .await;
    let url = subscribe_url(&hub, &[&topic], "");
    let mut by_header = Stream::open(&url, &[("last-event-id", &ids[1])]).await;
    let query = format!("{url}&lastEventID={}", urlencode(&ids[1]));
    let mut by_query = Stream::open(&query, &[]).await;
    assert_ne!(by_header.headers["last-event-id"], "earliest");
    let (_, live) = publish(&hub, Some(&p), &[("topic", &topic), ("data", "live")]).await;
    for s in [&mut by_header, &mut by_query] {
        let got: Vec<String> = [
            s.next().await,
            s.next().await,
            s.next().await,
            s.next().await,
        ]
        .into_iter()
        .map(|e| e.id)
        .collect();
        assert_eq!(
            got,
            [ids[2].clone(), ids[3].clone(), ids[4].clone(), live.clone()]
        );
        assert!(
            s.next_within(Duration::from_millis(200)).await.is_none(),
            "no duplicate"
        );
    }
    // `earliest` replays everything history holds.
    let mut all = Stream::open(&format!("{url}&lastEventID=earliest"), &[]).await;
    for id in ids.iter().chain([&live]) {
        assert_eq!(&all.next().await.id, id);
    }
}

#[tokio::test]
async fn an_evicted_or_unknown_id_is_announced_before_the_history_that_remains() {
    let hub = jwt_hub(&["--anonymous", "--history-size", "3"]);
    let topic = unique_topic("gap");
    let p = publisher_token();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            publish(
                &hub,
                Some(&p),
                &[("topic", &topic), ("data", &i.to_string())],
            )
            .await
            .1,
        );
    }
    let mut s = Stream::open(
        &subscribe_url(&hub, &[&topic], ""),
        &[("last-event-id", &ids[0])],
    )
    .await;
    let gap = s.next().await;
    assert_eq!(gap.event, "tidings-gap");
    assert_eq!(
        gap.id, "",
        "the gap notice does not move the client's last id"
    );
    let notice: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(notice["lastEventId"], ids[0]);
    assert_eq!(notice["replayedFrom"], ids[2]);
    for id in &ids[2..] {
        assert_eq!(&s.next().await.id, id);
    }
    assert_eq!(hub.metric("tidings_replay_gaps_total").await, 1.0);
}

#[tokio::test]
async fn an_update_published_right_after_the_stream_opens_is_delivered() {
    let hub = jwt_hub(&["--anonymous"]);
    let p = publisher_token();
    for _ in 0..20 {
        let topic = unique_topic("race");
        let mut s = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
        let (_, id) = publish(&hub, Some(&p), &[("topic", &topic)]).await;
        assert_eq!(s.next().await.id, id);
    }
}

#[tokio::test]
async fn updates_on_one_topic_arrive_in_publish_order() {
    let hub = jwt_hub(&["--anonymous"]);
    let topic = unique_topic("order");
    let mut s = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
    let p = publisher_token();
    for i in 0..200 {
        assert_eq!(
            publish(
                &hub,
                Some(&p),
                &[("topic", &topic), ("data", &i.to_string())]
            )
            .await
            .0,
            200
        );
    }
    for i in 0..200 {
        assert_eq!(s.next().await.data, i.to_string());
    }
}

#[tokio::test]
async fn auth_none_needs_no_tokens_and_shows_private_updates() {
    let hub = Hub::start(&["--auth", "none"]);
    let topic = unique_topic("dev");
    let mut s = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
    let (status, id) = publish(&hub, None, &[("topic", &topic), ("private", "on")]).await;
    assert_eq!(status, 200);
    assert_eq!(s.next().await.id, id);
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn draft_match_and_match_urlpattern_selectors_work() {
    let hub = jwt_hub(&["--anonymous"]);
    let base = unique_topic("draft");
    let literal = format!("{base}/{{id}}");
    let mut exact = Stream::open(
        &hub.url(&format!(
            "/.well-known/mercure?match={}",
            urlencode(&literal)
        )),
        &[],
    )
    .await;
    let mut pattern = Stream::open(
        &hub.url(&format!(
            "/.well-known/mercure?match_urlpattern={}",
            urlencode(&format!("{base}/:id"))
        )),
        &[],
    )
    .await;
    let p = publisher_token();
    let (_, braces) = publish(&hub, Some(&p), &[("topic", &literal)]).await;
    let (_, seven) = publish(&hub, Some(&p), &[("topic", &format!("{base}/7"))]).await;
    publish(&hub, Some(&p), &[("topic", &format!("{base}/7/deeper"))]).await;
    assert_eq!(
        exact.next().await.id,
        braces,
        "match= is exact even with braces"
    );
    assert!(exact
        .next_within(Duration::from_millis(200))
        .await
        .is_none());
    assert_eq!(
        pattern.next().await.id,
        braces,
        ":id matches one segment, braces included"
    );
    assert_eq!(pattern.next().await.id, seven);
    assert!(
        pattern
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "not two segments"
    );
    let bad = Stream::try_open(
        &hub.url("/.well-known/mercure?match_urlpattern=%2Fbooks%2F(%5Cd%2B)"),
        &[],
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_non_ascii_id_resumes_from_a_utf8_last_event_id_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = jwt_hub(&["--anonymous"]);
    let topic = unique_topic("unicode");
    let p = publisher_token();
    for id in ["bücher-1", "bücher-2", "bücher-3"] {
        assert_eq!(
            publish(&hub, Some(&p), &[("topic", &topic), ("id", id)])
                .await
                .0,
            200
        );
    }
    // A browser sends the last id as UTF-8 bytes in the header.
    let addr = hub.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /.well-known/mercure?topic={} HTTP/1.1\r\nHost: {addr}\r\nLast-Event-ID: bücher-1\r\n\r\n",
        urlencode(&topic)
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("id: bücher-3\n") {
        let n = tokio::time::timeout(crate::common::WAIT, socket.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.contains("id: bücher-1\n") && text.contains("id: bücher-2\n"),
        "{text}"
    );
    assert!(text.contains("last-event-id: bücher-3"), "{text}");
}

#[tokio::test]
async fn the_private_field_makes_an_update_private_whatever_its_value() {
    let hub = jwt_hub(&["--anonymous"]);
    let topic = unique_topic("private-values");
    let mut anonymous = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
    let p = publisher_token();
    for value in ["on", "0", "false", "off", ""] {
        assert_eq!(
            publish(&hub, Some(&p), &[("topic", &topic), ("private", value)])
                .await
                .0,
            200
        );
    }
    let (_, public) = publish(&hub, Some(&p), &[("topic", &topic)]).await;
    assert_eq!(
        anonymous.next().await.id,
        public,
        "every private=… update was withheld"
    );
}

#[tokio::test]
async fn a_mercure_1_0_apps_cookie_and_resume_parameter_are_read() {
    // A Mercure 1.0 app (Symfony with protocol_version 1.0) puts its token in
    // __Secure-mercure_access_token, and resumes with last_event_id.
    let hub = jwt_hub(&[]);
    let topic = unique_topic("v1-cookie");
    let subscriber = token(json!({"mercure": {"subscribe": [topic]}}));
    let cookie = format!("theme=dark; __Secure-mercure_access_token={subscriber}");
    let mut stream =
        Stream::open(&subscribe_url(&hub, &[&topic], ""), &[("cookie", &cookie)]).await;
    let private = [
        ("topic", topic.as_str()),
        ("data", "secret"),
        ("private", "on"),
    ];
    let (status, first) = publish(&hub, Some(&publisher_token()), &private).await;
    assert_eq!(status, 200);
    assert_eq!(stream.next().await.id, first);
    let (_, second) = publish(&hub, Some(&publisher_token()), &private).await;
    // last_event_id resumes after the id it names, and the answer says where it resumed.
    let resume = subscribe_url(&hub, &[&topic], &format!("&last_event_id={first}"));
    let mut resumed = Stream::open(&resume, &[("cookie", &cookie)]).await;
    assert_eq!(resumed.headers["mercure-last-event-id"], first.as_str());
    assert_eq!(resumed.next().await.id, second);
    let unknown = subscribe_url(&hub, &[&topic], "&last_event_id=urn:nowhere");
    let gap = Stream::open(&unknown, &[("cookie", &cookie)]).await;
    assert_eq!(gap.headers["mercure-last-event-id"], "earliest");
    // Another name, as Symfony's debug mode writes it.
    let debug = jwt_hub(&["--cookie-name", "mercure_access_token"]);
    let cookie = format!("mercure_access_token={subscriber}");
    let mut stream = Stream::open(
        &subscribe_url(&debug, &[&topic], ""),
        &[("cookie", &cookie)],
    )
    .await;
    let (_, id) = publish(&debug, Some(&publisher_token()), &private).await;
    assert_eq!(stream.next().await.id, id);
    crate::common::refuses_to_start(
        &["--jwt-key", KEY, "--cookie-name", "a b"],
        "is not a cookie name",
    );
}

#[tokio::test]
async fn an_id_reused_on_other_topics_is_refused_409() {
    // A publisher limited to topic a could publish id X first; a later publish of X on topic
    // b by another publisher got 200 and was never stored or delivered (review L2).
    let hub = jwt_hub(&["--anonymous"]);
    let (a, b) = (unique_topic("owner-a"), unique_topic("owner-b"));
    let id = format!("urn:uuid:{}", crate::common::uuid_like());
    let only = |topic: &str| token(json!({"mercure": {"publish": [topic]}}));
    let first = [
        ("topic", a.as_str()),
        ("id", id.as_str()),
        ("data", "first"),
    ];
    assert_eq!(publish(&hub, Some(&only(&a)), &first).await.0, 200);
    let mut watcher = Stream::open(&subscribe_url(&hub, &[&b], ""), &[]).await;
    let taken = [("topic", b.as_str()), ("id", id.as_str()), ("data", "hi")];
    let (status, body) = publish(&hub, Some(&only(&b)), &taken).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("id_conflict"), "{body}");
    // The same update again is the retry it always was.
    let (status, answer) = publish(&hub, Some(&only(&a)), &first).await;
    assert_eq!((status, answer.as_str()), (200, id.as_str()));
    // What b's subscriber gets next is b's next update, not a silence.
    let (_, next) = publish(
        &hub,
        Some(&only(&b)),
        &[("topic", b.as_str()), ("data", "next")],
    )
    .await;
    assert_eq!(watcher.next().await.id, next);
}

#[tokio::test]
async fn query_subscribes_with_its_selectors_in_the_body() {
    // Mercure 1.0's reference hub takes QUERY (RFC 10008): the parameters in a form body.
    let hub = jwt_hub(&["--anonymous"]);
    let topic = unique_topic("query");
    let query = reqwest::Method::from_bytes(b"QUERY").unwrap();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("match", &topic)
        .finish();
    let mut response = crate::common::client()
        .request(query.clone(), hub.url("/.well-known/mercure"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, id) = publish(
        &hub,
        Some(&publisher_token()),
        &[("topic", &topic), ("data", "via query")],
    )
    .await;
    let mut seen = String::new();
    while !seen.contains("data: via query") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("the update")
            .unwrap()
            .expect("the stream is open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(&format!("id: {id}")), "{seen}");
    // The body must be a form; other methods are refused.
    let refused = crate::common::client()
        .request(query, hub.url("/.well-known/mercure"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 415);
    let put = crate::common::client()
        .put(hub.url("/.well-known/mercure"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
}

#[tokio::test]
async fn a_fresh_stream_that_rewinds_opens_with_the_last_updates_of_each_exact_topic() {
    // A page opens with the current state: the last N updates of each of its exact topics it
    // may see, in publish order, then the live ones.
    let hub = jwt_hub(&["--anonymous"]);
    let (a, b, quiet) = (
        unique_topic("rewind-a"),
        unique_topic("rewind-b"),
        unique_topic("rewind-quiet"),
    );
    let p = publisher_token();
    for (topic, data, private) in [
        (&a, "a1", false),
        (&b, "b1", false),
        (&a, "a2", false),
        (&a, "secret", true),
        (&a, "a3", false),
        (&b, "b2", false),
    ] {
        let mut form = vec![("topic", topic.as_str()), ("data", data)];
        if private {
            form.push(("private", "on"));
        }
        assert_eq!(publish(&hub, Some(&p), &form).await.0, 200);
    }
    // Only a stream of exact topics rewinds.
    let wide = subscribe_url(&hub, &[&a, "https://example.com/{x}"], "&rewind=2");
    assert_eq!(Stream::try_open(&wide, &[]).await.status, 400);
    let url = subscribe_url(&hub, &[&a, &b, &quiet], "&rewind=2");
    let mut stream = Stream::open(&url, &[]).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(stream.next().await.data);
    }
    // Two of a it may see (the private one is not its), b's two, in publish order; nothing of
    // the quiet topic.
    assert_eq!(got, ["b1", "a2", "a3", "b2"].map(String::from).to_vec());
    let (_, live) = publish(&hub, Some(&p), &[("topic", &a), ("data", "a4")]).await;
    assert_eq!(stream.next().await.id, live);
    // Its reconnection resumes (the URL still says rewind): what it missed, once.
    let (_, missed) = publish(&hub, Some(&p), &[("topic", &b), ("data", "b3")]).await;
    let mut resumed = Stream::open(&url, &[("last-event-id", &live)]).await;
    assert_eq!(resumed.next().await.id, missed);
    assert!(resumed
        .next_within(Duration::from_millis(200))
        .await
        .is_none());
    // A subscriber allowed the private update gets it among the last three of a.
    let reader = token(json!({"mercure": {"subscribe": [a.as_str()]}}));
    let mut allowed = Stream::open(
        &subscribe_url(&hub, &[&a], "&rewind=3"),
        &[("authorization", &format!("Bearer {reader}"))],
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(allowed.next().await.data);
    }
    assert_eq!(got, ["secret", "a3", "a4"].map(String::from).to_vec());
}
