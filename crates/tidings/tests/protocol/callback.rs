//! The application's authorization callback (`--auth-url`), against an application served by
//! the test on loopback that decides by a session cookie: streams let in, refusals passed on,
//! one call for many streams, a slow, failing, absent or misbehaving application answered with
//! a retry (never a hang, a 500 or an open stream), a grant's expiry closing the stream, and
//! what cannot be configured refused at start-up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::common::{
    client, publisher_token, token, unique_topic, uuid_like, wait_for, Hub, Stream, KEY,
};

/// How the application answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// By the `sid` cookie: none → 401, `banned` → 403, a user → 200 for that user.
    Decide,
    /// Answers after 3 s.
    Slow,
    /// A 200 that is not an authorization.
    Garbage,
    /// A 200 of 1 MiB.
    Huge,
    /// A redirect to a login page.
    Redirect,
    /// A 500.
    Broken,
}

/// The application on loopback: how it answers, what it was asked.
#[derive(Clone)]
struct App {
    behaviour: Arc<Mutex<Behaviour>>,
    /// The `expiresIn` of its grants.
    expires_in: Arc<Mutex<Option<u64>>>,
    /// Every question: the headers and the body.
    asked: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    calls: Arc<AtomicUsize>,
    /// Questions being answered now, and the most at once.
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    port: u16,
    server: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl App {
    async fn start() -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App {
            behaviour: Arc::new(Mutex::new(Behaviour::Decide)),
            expires_in: Arc::default(),
            asked: Arc::default(),
            calls: Arc::default(),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
            port: listener.local_addr().unwrap().port(),
            server: Arc::default(),
        };
        app.serve(listener);
        app
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/tidings/auth", self.port)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = self.clone();
        let router = axum::Router::new().route(
            "/tidings/auth",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let app = app.clone();
                async move { app.answer(headers, body).await }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        *self.server.lock().unwrap() = Some(task);
    }

    /// Stops listening: connections are refused.
    fn stop(&self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_asked(&self) -> (HeaderMap, Value) {
        self.asked.lock().unwrap().last().cloned().expect("asked")
    }

    async fn answer(&self, headers: HeaderMap, body: String) -> Response {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let _answered = Answered(self.in_flight.clone());
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        self.asked.lock().unwrap().push((headers.clone(), body));
        let behaviour = *self.behaviour.lock().unwrap();
        match behaviour {
            Behaviour::Slow => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                axum::Json(json!({"session": "slow"})).into_response()
            }
            Behaviour::Garbage => "<html>welcome</html>".into_response(),
            Behaviour::Huge => "x".repeat(1 << 20).into_response(),
            Behaviour::Redirect => {
                (StatusCode::FOUND, [("location", "/login")], "").into_response()
            }
            Behaviour::Broken => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            Behaviour::Decide => {
                let user = headers
                    .get("cookie")
                    .and_then(|c| c.to_str().ok())
                    .and_then(|c| c.split(';').find_map(|kv| kv.trim().strip_prefix("sid=")))
                    .map(str::to_owned);
                match user.as_deref() {
                    None => (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"detail": "log in first"})),
                    )
                        .into_response(),
                    Some("banned") => StatusCode::FORBIDDEN.into_response(),
                    Some(user) => {
                        let mut grant = json!({
                            "session": user,
                            "subscribe": [format!("https://example.com/users/{user}/{{x}}")],
                            "payload": {"user": user},
                        });
                        if let Some(secs) = *self.expires_in.lock().unwrap() {
                            grant["expiresIn"] = json!(secs);
                        }
                        axum::Json(grant).into_response()
                    }
                }
            }
        }
    }
}

/// Counts a question as answered when dropped (also when the hub hung up first).
struct Answered(Arc<AtomicUsize>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

const BROWSER: (&str, &str) = ("accept", "text/event-stream");

fn cookie(user: &str) -> (&'static str, String) {
    ("cookie", format!("theme=dark; sid={user}"))
}

/// Opens a Mercure stream of `topic` with the given headers.
async fn mercure(hub: &Hub, topic: &str, headers: &[(&str, &str)]) -> Stream {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic", topic)
        .finish();
    Stream::try_open(&hub.url(&format!("/.well-known/mercure?{query}")), headers).await
}

async fn publish_private(hub: &Hub, topic: &str, data: &str) {
    let (status, body) = crate::common::publish(
        hub,
        Some(&publisher_token()),
        &[("topic", topic), ("data", data), ("private", "on")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn send_session_event(hub: &Hub, session: &str, name: &str, payload: &str) {
    let response = client()
        .post(hub.url("/sse/events"))
        .bearer_auth(publisher_token())
        .json(&json!({"sessionId": session, "eventName": name, "payload": payload}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

// Several threads: the application must answer while `Hub::start` blocks this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_lets_in_refuses_and_is_told_what_the_stream_asks() {
    let app = App::start().await;
    let hub = Hub::start(&["--jwt-key", KEY, "--auth-url", &app.url()]);
    let topic = format!("https://example.com/users/alice/{}", uuid_like());

    // Let in, with the private updates the application granted.
    let (name, value) = cookie("alice");
    let mut alice = mercure(
        &hub,
        &topic,
        &[(name, &value), ("origin", "https://app.example"), BROWSER],
    )
    .await;
    assert_eq!(alice.status, 200);
    let (headers, body) = app.last_asked();
    assert_eq!(body, json!({"api": "mercure", "topics": [topic]}));
    assert_eq!(headers["cookie"], "theme=dark; sid=alice");
    assert_eq!(headers["origin"], "https://app.example");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["content-type"], "application/json");
    publish_private(&hub, &topic, "for alice").await;
    assert_eq!(alice.next().await.data, "for alice");

    // 401 and 403 reach the client as they are, with a JSON body.
    let refused = mercure(&hub, &topic, &[BROWSER]).await;
    assert_eq!(refused.status, 401);
    let answer = client()
        .get(hub.url("/.well-known/mercure?topic=x"))
        .header("cookie", "sid=banned")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    // The application's decision about the caller, not a token's scope: no bearer challenge.
    assert!(!answer.headers().contains_key("www-authenticate"));
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "forbidden", "{body}");
    let answer = client()
        .get(hub.url("/.well-known/mercure?topic=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "unauthenticated", "detail": "log in first"})
    );

    // The session API: the session is the application's, several event names on one stream.
    let mut both = Stream::try_open(
        &hub.url("/sse/event-stream?eventName=chat&eventName=alert"),
        &[(name, &value)],
    )
    .await;
    assert_eq!(both.status, 200);
    assert_eq!(
        app.last_asked().1,
        json!({"api": "session", "eventNames": ["chat", "alert"]})
    );
    let mut all = Stream::try_open(&hub.url("/sse/event-stream"), &[(name, &value)]).await;
    assert_eq!(all.status, 200);
    assert_eq!(
        app.last_asked().1,
        json!({"api": "session", "eventNames": []})
    );
    for (event, payload) in [("chat", "hi"), ("news", "extra"), ("alert", "fire")] {
        send_session_event(&hub, "alice", event, payload).await;
    }
    let got: Vec<(String, String)> = [both.next().await, both.next().await]
        .into_iter()
        .map(|e| (e.event, e.data))
        .collect();
    assert_eq!(
        got,
        [
            ("chat".into(), "hi".into()),
            ("alert".into(), "fire".into())
        ]
    );
    for expected in ["chat", "news", "alert"] {
        assert_eq!(all.next().await.event, expected);
    }

    // A valid token wins: the application is not asked.
    let calls = app.calls();
    let bearer = format!("Bearer {}", token(json!({"sub": "carol"})));
    let with_token = Stream::try_open(
        &hub.url("/sse/event-stream?eventName=chat"),
        &[("authorization", &bearer), (name, &value)],
    )
    .await;
    assert_eq!(with_token.status, 200);
    assert_eq!(app.calls(), calls);
    // An Authorization header that is no token of ours is the application's to read.
    let basic = Stream::try_open(
        &hub.url("/sse/event-stream?eventName=chat"),
        &[("authorization", "Basic YWxpY2U6cHc="), (name, &value)],
    )
    .await;
    assert_eq!(basic.status, 200);
    assert_eq!(app.last_asked().0["authorization"], "Basic YWxpY2U6cHc=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_decides_for_many_streams_with_the_same_credentials() {
    let app = App::start().await;
    let hub = Hub::start(&["--jwt-key", KEY, "--auth-url", &app.url()]);
    let topic = unique_topic("cached");
    let (name, value) = cookie("dave");
    // Opened together: one call in flight serves all of them.
    let headers = [(name, value.as_str()), BROWSER];
    let streams =
        futures_util::future::join_all((0..5).map(|_| mercure(&hub, &topic, &headers))).await;
    assert!(streams.iter().all(|s| s.status == 200));
    // And later ones from the cache.
    for _ in 0..3 {
        assert_eq!(mercure(&hub, &topic, &[(name, &value)]).await.status, 200);
    }
    assert_eq!(app.calls(), 1);
    assert_eq!(
        hub.metric("tidings_auth_callback_cache_hits_total").await,
        7.0
    );
    assert_eq!(
        hub.metric("tidings_auth_callbacks_total{outcome=\"granted\"}")
            .await,
        1.0
    );
    // Another user, or other selectors: another question.
    let (name2, value2) = cookie("erin");
    assert_eq!(mercure(&hub, &topic, &[(name2, &value2)]).await.status, 200);
    assert_eq!(mercure(&hub, "other", &[(name, &value)]).await.status, 200);
    assert_eq!(app.calls(), 3);
    // Refusals are decisions too: cached the same way.
    for _ in 0..3 {
        assert_eq!(mercure(&hub, &topic, &[]).await.status, 401);
    }
    assert_eq!(app.calls(), 4);

    // With --auth-cache-ttl 0, every stream asks.
    let uncached = Hub::start(&[
        "--jwt-key",
        KEY,
        "--auth-url",
        &app.url(),
        "--auth-cache-ttl",
        "0",
    ]);
    let before = app.calls();
    for _ in 0..3 {
        assert_eq!(
            mercure(&uncached, &topic, &[(name, &value)]).await.status,
            200
        );
    }
    assert_eq!(app.calls(), before + 3);
}

/// What a stream request gets while the application cannot decide: an `EventSource` a `200`
/// stream that only says to retry (and ends), any other client a `503` with `Retry-After`.
async fn told_to_retry(hub: &Hub, topic: &str) {
    let (name, value) = cookie("frank");
    let mut browser = mercure(hub, topic, &[(name, &value), BROWSER]).await;
    assert_eq!(browser.status, 200);
    assert!(browser.until_closed().await.is_empty());
    let text = browser.raw_text();
    assert!(
        text.starts_with(": auth_unavailable: ") && text.contains("\nretry: "),
        "{text:?}"
    );
    let answer = client()
        .get(hub.url(&format!(
            "/.well-known/mercure?topic={}",
            form_urlencoded::byte_serialize(topic.as_bytes()).collect::<String>()
        )))
        .header(name, &value)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["retry-after"], "2");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "auth_unavailable", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_failing_or_absent_application_is_a_retry_never_a_hang() {
    let app = App::start().await;
    let hub = Hub::start(&[
        "--jwt-key",
        KEY,
        "--auth-url",
        &app.url(),
        "--auth-timeout",
        "1",
    ]);
    let topic = format!("https://example.com/users/frank/{}", uuid_like());
    for (behaviour, logged) in [
        (Behaviour::Slow, "no answer in time"),
        (Behaviour::Garbage, "is not an authorization"),
        (Behaviour::Huge, "larger than 65536 bytes"),
        (Behaviour::Redirect, "redirects are not followed"),
        (Behaviour::Broken, "answered 500"),
    ] {
        app.set(behaviour);
        let started = std::time::Instant::now();
        told_to_retry(&hub, &topic).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{behaviour:?}: answered within the timeout"
        );
        hub.wait_for_log(logged).await;
        // Failures leave no trace in the cache: the next stream asks again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Down: nothing listens.
    app.set(Behaviour::Decide);
    app.stop();
    told_to_retry(&hub, &topic).await;
    hub.wait_for_log("cannot connect").await;
    // Back: the next attempt is let in at once.
    app.restart().await;
    let (name, value) = cookie("frank");
    let mut back = mercure(&hub, &topic, &[(name, &value), BROWSER]).await;
    assert_eq!(back.status, 200);
    publish_private(&hub, &topic, "back").await;
    assert_eq!(back.next().await.data, "back");
    // Six failures, each met by a browser (told to retry) and another client (503).
    let failed = hub
        .metric("tidings_auth_callbacks_total{outcome=\"failed\"}")
        .await;
    assert_eq!(failed, 12.0);
    assert_eq!(hub.metric("tidings_streams_deferred_total").await, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_waits_for_any_more_is_dropped() {
    // A call ran to its end after every client waiting for it had gone: abandoned requests
    // were work for the application all the same (review M5).
    let app = App::start().await;
    app.set(Behaviour::Slow);
    let hub = Hub::start(&["--jwt-key", KEY, "--auth-url", &app.url()]);
    let (name, value) = cookie("slow");
    // The client gives up long before the application answers (in 3 s).
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(hub.url("/.well-known/mercure?topic=x"))
        .header(name, &value)
        .send()
        .await;
    assert!(gave_up.is_err());
    // Past the moment the application answered: the hub dropped the call, and read nothing.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        hub.metric("tidings_auth_callbacks_total{outcome=\"granted\"}")
            .await,
        0.0
    );
    // The next request asks again.
    assert_eq!(mercure(&hub, "x", &[(name, &value)]).await.status, 200);
    assert_eq!(app.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_expires_closes_its_stream_with_a_retry_hint() {
    let app = App::start().await;
    *app.expires_in.lock().unwrap() = Some(2);
    let hub = Hub::start(&["--jwt-key", KEY, "--auth-url", &app.url()]);
    let (name, value) = cookie("gina");
    let started = std::time::Instant::now();
    let mut stream = Stream::try_open(
        &hub.url("/sse/event-stream?eventName=chat"),
        &[(name, &value)],
    )
    .await;
    assert_eq!(stream.status, 200);
    send_session_event(&hub, "gina", "chat", "before").await;
    let events = stream.until_closed().await;
    assert_eq!(events.len(), 1);
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(1500) && lasted < Duration::from_secs(6),
        "{lasted:?}"
    );
    assert!(stream.raw_text().contains("retry: "));
    wait_for("the expiry counted", async || {
        hub.metric("tidings_streams_expired_total").await == 1.0
    })
    .await;
    // The cache never outlives the grant: reconnecting asks again.
    let calls = app.calls();
    assert_eq!(
        Stream::try_open(
            &hub.url("/sse/event-stream?eventName=chat"),
            &[(name, &value)]
        )
        .await
        .status,
        200
    );
    assert_eq!(app.calls(), calls + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_without_a_session_cannot_open_a_session_stream() {
    let app = App::start().await;
    app.set(Behaviour::Decide);
    let hub = Hub::start(&["--jwt-key", KEY, "--auth-url", &app.url()]);
    // A token that verifies but names no session wins over the application, and is refused.
    let bearer = format!("Bearer {}", token(json!({"mercure": {"subscribe": ["*"]}})));
    let answer = client()
        .get(hub.url("/sse/event-stream?eventName=chat"))
        .header("authorization", bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    assert_eq!(app.calls(), 0);
}

#[test]
fn what_cannot_be_configured_stops_start_up() {
    for (args, says) in [
        (
            &["--jwt-key", "k", "--auth-url", "ftp://app/auth"][..],
            "auth-url \"ftp://app/auth\" is not an http:// or https:// URL",
        ),
        (
            &["--auth", "none", "--auth-url", "http://127.0.0.1:1/auth"][..],
            "use --auth jwt",
        ),
        (
            &[
                "--jwt-key",
                "k",
                "--auth-url",
                "http://127.0.0.1:1/auth",
                "--auth-timeout",
                "0",
            ][..],
            "auth-timeout must be at least 1",
        ),
        (
            &["--jwt-key", "k", "--auth-url", ""][..],
            "auth-url is empty",
        ),
    ] {
        crate::common::refuses_to_start(args, says);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_stream_cap_costs_the_application_nothing() {
    // Admission comes first: a client that holds its streams already is refused before the
    // application is asked (and before a selector is compiled) — review H1 and M5.
    let app = App::start().await;
    let hub = Hub::start(&[
        "--jwt-key",
        KEY,
        "--auth-url",
        &app.url(),
        "--auth-cache-ttl",
        "0",
        "--max-streams-per-address",
        "1",
    ]);
    let (name, value) = cookie("alice");
    let first = mercure(&hub, &unique_topic("cap"), &[(name, &value)]).await;
    assert_eq!(first.status, 200);
    assert_eq!(app.calls(), 1);
    for i in 0..5 {
        let topic = format!("https://example.com/{i}/{{id}}");
        let refused = mercure(&hub, &topic, &[(name, &value)]).await;
        assert_eq!(refused.status, 429);
    }
    assert_eq!(app.calls(), 1, "refused streams were not asked about");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_are_capped_and_dropped_when_nobody_waits() {
    // Each request with a new question made one call, unbounded, which ran to its end after
    // the client had gone (review M5).
    let app = App::start().await;
    app.set(Behaviour::Slow);
    let hub = Hub::start(&[
        "--jwt-key",
        KEY,
        "--auth-url",
        &app.url(),
        "--auth-cache-ttl",
        "0",
        "--auth-concurrency",
        "2",
    ]);
    let abandoned = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let (name, value) = cookie("alice");
    let requests = (0..10).map(|i| {
        let url = hub.url(&format!("/.well-known/mercure?topic=abandoned-{i}"));
        abandoned.get(url).header(name, &value).send()
    });
    let answers = futures_util::future::join_all(requests).await;
    let busy = answers
        .iter()
        .filter(|a| a.as_ref().is_ok_and(|r| r.status() == 503))
        .count();
    assert!(busy >= 8, "{busy} told to retry at once");
    assert_eq!(app.most_in_flight.load(Ordering::SeqCst), 2);
    assert!(
        hub.metric("tidings_auth_callbacks_total{outcome=\"busy\"}")
            .await
            >= 8.0
    );
    // The two calls whose clients hung up were dropped: their places are free at once,
    // although the application is still busy with them.
    app.set(Behaviour::Decide);
    let alice = mercure(&hub, &unique_topic("after"), &[(name, &value)]).await;
    assert_eq!(alice.status, 200);
}
