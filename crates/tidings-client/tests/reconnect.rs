//! The client against a scripted hub on loopback: the subscriber resumes with `Last-Event-ID`
//! after a dropped connection, honours a `retry:` hint sent on its own, reports failures it
//! retries and stops at a refusal retrying cannot cure; a publish whose outcome is unknown is
//! retried with the same id.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tidings_client::{Error, Hub, Subscription};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the scripted hub received: its head (and body), and when it arrived.
struct Seen {
    head: String,
    at: Instant,
}

/// Serves `answers` in order, one per connection, closing each after writing it; reports
/// every request head.
async fn scripted_hub(answers: Vec<String>) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for answer in answers {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            // A request's body, when it has one, is kept with its head.
            let text = String::from_utf8_lossy(&head).to_lowercase();
            let length = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok());
            if let (Some(length), Some(end)) = (length, text.find("\r\n\r\n")) {
                while head.len() < end + 4 + length {
                    let n = socket.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
            }
            let _ = tx.send(Seen {
                head: String::from_utf8_lossy(&head).to_lowercase(),
                at: Instant::now(),
            });
            socket.write_all(answer.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        }
    });
    (base, rx)
}

fn sse(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}")
}

fn status(code: u16, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("in time")
}

#[tokio::test]
async fn resumes_after_the_last_id_once_the_retry_hint_has_passed() {
    let (base, mut seen) = scripted_hub(vec![
        sse(":\n\nid: a\ndata: one\n\nretry: 400\n\n"),
        status(
            503,
            r#"{"error":"bus_unavailable","detail":"redis is down"}"#,
        ),
        sse("id: b\nevent: book\ndata: two\ndata: lines\n\n"),
        status(
            401,
            r#"{"error":"unauthorized","detail":"a token is required"}"#,
        ),
    ])
    .await;
    let hub = Hub::new(&base).unwrap().with_token("t0k3n");
    // Until the hub says otherwise, reconnect after 50 ms.
    let mut events = hub.subscribe(
        Subscription::topics(["https://x/{id}"])
            .last_event_id("start")
            .retry(Duration::from_millis(50)),
    );

    let one = within(events.next()).await.unwrap().unwrap();
    assert_eq!((one.id.as_str(), one.data.as_str()), ("a", "one"));
    let first = within(seen.recv()).await.unwrap();
    assert!(
        first
            .head
            .starts_with("get /.well-known/mercure?topic=https%3a%2f%2fx%2f%7bid%7d "),
        "{}",
        first.head
    );
    assert!(
        first.head.contains("last-event-id: start"),
        "{}",
        first.head
    );
    assert!(
        first.head.contains("authorization: bearer t0k3n"),
        "{}",
        first.head
    );

    // The hub is unavailable once: reported, and retried.
    let unavailable = within(events.next()).await.unwrap().unwrap_err();
    assert!(!unavailable.is_permanent());
    assert!(
        unavailable
            .to_string()
            .contains("bus_unavailable: redis is down"),
        "{unavailable}"
    );
    let second = within(seen.recv()).await.unwrap();
    assert!(second.head.contains("last-event-id: a"), "{}", second.head);
    assert!(
        second.at - first.at >= Duration::from_millis(400),
        "the retry hint sent on its own was honoured"
    );

    let two = within(events.next()).await.unwrap().unwrap();
    assert_eq!(
        (two.id.as_str(), two.event_type.as_str(), two.data.as_str()),
        ("b", "book", "two\nlines")
    );
    let third = within(seen.recv()).await.unwrap();
    assert!(third.head.contains("last-event-id: a"), "{}", third.head);
    assert!(
        third.at - second.at >= Duration::from_millis(800),
        "backed off after a failure"
    );

    let refused = within(events.next()).await.unwrap().unwrap_err();
    assert!(refused.is_permanent());
    assert!(
        matches!(&refused, Error::Refused { status: 401, error: Some(e), .. } if e == "unauthorized"),
        "{refused:?}"
    );
    assert!(
        within(events.next()).await.is_none(),
        "a permanent refusal ends the stream"
    );
}

#[tokio::test]
async fn a_refusal_with_retry_after_waits_as_long_as_the_hub_asked() {
    let (base, mut seen) = scripted_hub(vec![
        "HTTP/1.1 429 X\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_owned(),
        sse("id: a\ndata: in\n\n"),
    ])
    .await;
    let hub = Hub::new(&base).unwrap();
    let mut events = hub.subscribe(Subscription::topics(["t"]).retry(Duration::from_millis(50)));
    let refused = within(events.next()).await.unwrap().unwrap_err();
    assert!(!refused.is_permanent(), "429 is retried");
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
    let event = within(events.next()).await.unwrap().unwrap();
    assert_eq!(event.data, "in");
    let first = within(seen.recv()).await.unwrap();
    let second = within(seen.recv()).await.unwrap();
    assert!(
        second.at - first.at >= Duration::from_secs(1),
        "waited for Retry-After, not the 100 ms backoff"
    );
}

#[tokio::test]
async fn a_hub_that_is_not_there_is_reported_and_retried() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hub = Hub::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let mut events = hub.subscribe(
        Subscription::session("chat")
            .session_id("alice")
            .retry(Duration::from_millis(10)),
    );
    for _ in 0..2 {
        let error = within(events.next()).await.unwrap().unwrap_err();
        assert!(
            matches!(error, Error::Transport(_)) && !error.is_permanent(),
            "{error}"
        );
    }
}

/// The `id` field of a publish form.
fn form_id(request: &str) -> String {
    let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.into_owned())
        .expect("an id field")
}

#[tokio::test]
async fn a_publish_whose_outcome_is_unknown_is_retried_with_the_same_id() {
    let unknown = r#"{"error":"publish_outcome_unknown","detail":"retry with the same id"}"#;
    let (base, mut seen) = scripted_hub(vec![
        status(504, unknown),
        status(504, unknown),
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned(),
        status(503, r#"{"error":"bus_unavailable","detail":"down"}"#),
    ])
    .await;
    let hub = Hub::new(&base).unwrap();
    let answer = within(hub.publish(&tidings_client::Publication::new("t").data("d")))
        .await
        .unwrap();
    assert_eq!(answer, "ok");
    let ids: Vec<String> = [
        within(seen.recv()).await.unwrap(),
        within(seen.recv()).await.unwrap(),
        within(seen.recv()).await.unwrap(),
    ]
    .iter()
    .map(|s| form_id(&s.head))
    .collect();
    assert!(
        ids[0].starts_with("urn:uuid:"),
        "an id is generated: {ids:?}"
    );
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "one id for every attempt: {ids:?}"
    );
    // A refusal (the bus did not take it) is the publisher's to handle: not retried.
    let refused = within(hub.publish(&tidings_client::Publication::new("t").id("mine")))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::Refused { status: 503, .. }) && !refused.is_outcome_unknown(),
        "{refused:?}"
    );
    assert_eq!(form_id(&within(seen.recv()).await.unwrap().head), "mine");
}

#[test]
fn only_http_urls_are_hubs() {
    assert!(matches!(Hub::new("ftp://x"), Err(Error::InvalidUrl(_))));
    assert!(matches!(Hub::new("not a url"), Err(Error::InvalidUrl(_))));
    assert!(Hub::new("https://hub.example.com/base/").is_ok());
}
