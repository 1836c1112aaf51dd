//! Streams opened and resumed against a bus whose update races the replay (with and without
//! history), resumes past updates a subscriber may not see, and the order of a shutdown.

use super::*;
use crate::auth::{AuthMode, AuthSettings, Authenticator};
use crate::bus::{Bus, BusError, Cause, Replay};
use crate::config::Config;
use crate::hub::Hub;
use crate::selector::{Selector, SelectorCache};
use crate::subscriber::Access;
use crate::update::{Topic, Update, UpdateId};
use futures_util::StreamExt;

/// A stream's admission, as the endpoints take it first.
fn permit(state: &AppState) -> Permit {
    admit(state, None, &HeaderMap::new()).expect("admitted")
}

/// A bus on which an update (u3) is published exactly between the subscriber's
/// registration and the read of history — the race `open` must survive. u1 and u2 were
/// published before.
#[derive(Debug)]
struct RacingBus {
    hub: Hub,
    /// False: the bus keeps no history (`history-size = 0`), only the newest id.
    keeps_history: bool,
    /// Set once u3 was published.
    raced: std::sync::atomic::AtomicBool,
}

fn envelope(position: u128) -> Arc<Envelope> {
    let update = Update::new(
        UpdateId::new(&format!("u{position}"), 100).unwrap(),
        vec![Topic::new("t", 100).unwrap()],
        None,
        String::new(),
        None,
        false,
    )
    .unwrap();
    Arc::new(Envelope::new(update, Position(position), 0))
}

#[async_trait::async_trait]
impl Bus for RacingBus {
    fn kind(&self) -> &'static str {
        "racing"
    }
    async fn publish(&self, _: Update) -> Result<crate::bus::Published, BusError> {
        Err(BusError::Unavailable(Cause::new("not used")))
    }
    async fn listening(&self) -> Result<(), BusError> {
        self.raced.store(true, std::sync::atomic::Ordering::SeqCst);
        self.hub.dispatch(&envelope(3));
        Ok(())
    }
    async fn replay(&self, from: &ReplayFrom, _: Option<&[Arc<str>]>) -> Result<Replay, BusError> {
        let raced = self.raced.load(std::sync::atomic::Ordering::SeqCst);
        let published = if raced { 3 } else { 2 };
        let history: Vec<Arc<Envelope>> = match self.keeps_history {
            true => (1..=published).map(envelope).collect(),
            false => Vec::new(),
        };
        let updates = match from {
            ReplayFrom::After(id) => history
                .iter()
                .skip_while(|e| &e.update.id != id)
                .skip(1)
                .cloned()
                .collect(),
            ReplayFrom::Earliest => history.clone(),
            ReplayFrom::Now => Vec::new(),
        };
        let resumed_at = match from {
            ReplayFrom::After(id) => history
                .iter()
                .find(|e| &e.update.id == id)
                .map(|e| e.position),
            _ => None,
        };
        Ok(Replay {
            updates,
            resumed_at,
            head_id: Some(UpdateId::new(&format!("u{published}"), 100).unwrap()),
            missing: false,
        })
    }
    fn state(&self) -> crate::bus::ConnectionState {
        crate::bus::ConnectionState::Connected
    }

    fn registry(&self) -> Option<Arc<dyn crate::bus::Registry>> {
        None
    }

    async fn signal(&self, _: Bytes) -> Result<(), BusError> {
        Ok(())
    }
}

fn state(keeps_history: bool) -> AppState {
    state_with(keeps_history, Config::default())
}

fn state_with(keeps_history: bool, config: Config) -> AppState {
    let hub = Hub::new(16, Arc::new(Metrics::new()));
    let bus = Arc::new(RacingBus {
        hub: hub.clone(),
        keeps_history,
        raced: Default::default(),
    });
    let selectors = Arc::new(SelectorCache::new(10, 100));
    let settings = AuthSettings {
        mode: AuthMode::None,
        ..AuthSettings::default()
    };
    let auth = Authenticator::new(&settings, selectors.clone(), hub.metrics().clone()).unwrap();
    AppState::new(
        config,
        hub,
        bus,
        auth,
        selectors,
        crate::consume::Consumers::default(),
    )
}

fn spec() -> SubscriberSpec {
    spec_for("t")
}

fn spec_for(selector: &str) -> SubscriberSpec {
    SubscriberSpec {
        label: crate::subscriber::SubscriberLabel::new(None),
        selectors: vec![Selector::compile(selector, 100).unwrap()],
        access: Access::everything(),
        event_names: Vec::new(),
        session: None,
        expires: None,
    }
}

/// A fresh stream of `spec()` on `state`, as asked by default.
async fn fresh(state: &AppState) -> Response {
    open(
        state,
        None,
        permit(state),
        spec(),
        ReplayFrom::Now,
        Asked::default(),
    )
    .await
    .unwrap()
}

/// A response body's text up to its `n`th `id:` line, and the rest of the body.
async fn text_through_ids(response: Response, n: usize) -> (String, axum::body::BodyDataStream) {
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while text.matches("id: ").count() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event")
            .expect("open stream")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    (text, body)
}

/// The ids of the first `n` events of a response body, and whether more bytes followed
/// within 300 ms.
async fn ids(response: Response, n: usize) -> (Vec<String>, bool) {
    let (text, mut body) = text_through_ids(response, n).await;
    let ids = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(str::to_owned)
        .collect();
    let more = tokio::time::timeout(Duration::from_millis(300), body.next())
        .await
        .is_ok();
    (ids, more)
}

#[tokio::test]
async fn a_fresh_subscriber_starts_at_the_head_before_it_and_gets_an_update_published_while_it_was_being_set_up(
) {
    let state = state(true);
    let response = fresh(&state).await;
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while !text.ends_with("data: \n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event")
            .expect("open stream")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // The head read before registration (u2), as an id without data, then u3 live.
    assert_eq!(text, ":\n\nid: u2\n\nid: u3\ndata: \n\n");
}

#[tokio::test]
async fn a_resume_through_updates_it_may_not_see_moves_its_last_id_past_them() {
    let state = state(true);
    let from = ReplayFrom::After(UpdateId::new("u1", 100).unwrap());
    let response = open(
        &state,
        None,
        permit(&state),
        spec_for("x"),
        from,
        Asked::default(),
    )
    .await
    .unwrap();
    assert_eq!(ids(response, 1).await, (vec!["u3".to_owned()], false));
}

#[tokio::test]
async fn a_resuming_subscriber_gets_the_racing_update_once() {
    let state = state(true);
    let from = ReplayFrom::After(UpdateId::new("u1", 100).unwrap());
    let response = open(&state, None, permit(&state), spec(), from, Asked::default())
        .await
        .unwrap();
    // The live copy of u3 is skipped: nothing follows the replay.
    assert_eq!(
        ids(response, 2).await,
        (vec!["u2".to_owned(), "u3".to_owned()], false)
    );
}

#[tokio::test]
async fn resuming_from_an_update_the_instance_delivers_late_does_not_repeat_it() {
    // The instance lagged: u3 reaches its hub only after the subscriber registered, and
    // the client resumes from u3 itself.
    let state = state(true);
    let from = ReplayFrom::After(UpdateId::new("u3", 100).unwrap());
    let response = open(&state, None, permit(&state), spec(), from, Asked::default())
        .await
        .unwrap();
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_millis(300), body.next()).await
    {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(text, ":\n\n", "nothing but the opening comment");
}

#[tokio::test]
async fn without_history_a_resuming_subscriber_still_gets_the_racing_update() {
    let state = state(false);
    let from = ReplayFrom::After(UpdateId::new("u1", 100).unwrap());
    let response = open(&state, None, permit(&state), spec(), from, Asked::default())
        .await
        .unwrap();
    assert_eq!(ids(response, 1).await, (vec!["u3".to_owned()], false));
}

#[tokio::test]
async fn a_passing_refusal_is_a_retry_hint_for_an_event_source_and_a_503_for_others() {
    use tower::ServiceExt;
    let state = state(true);
    state.begin_shutdown();
    let ask = |accept: Option<&'static str>, path: &str| {
        let mut request = axum::http::Request::get(path);
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let router = super::super::router(state.clone());
        let request = request.body(Body::empty()).unwrap();
        async move { router.oneshot(request).await.unwrap() }
    };
    let browser = Some("text/html, Text/Event-Stream;q=0.9");
    for path in [
        "/.well-known/mercure?topic=t",
        "/sse/event-stream?sessionId=s",
    ] {
        let response = ask(browser, path).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        let retry: u64 = text
            .strip_prefix(": draining: ")
            .and_then(|t| t.split_once("\nretry: "))
            .and_then(|(_, r)| r.strip_suffix("\n\n"))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("a comment, then a retry hint: {text:?}"));
        assert!((250..1000).contains(&retry), "{retry}");
    }
    assert_eq!(state.metrics().streams_deferred.get(), 2);
    // Other clients, and other endpoints, get the 503 itself.
    let refused = ask(None, "/.well-known/mercure?topic=t").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(state.metrics().streams_deferred.get(), 2);
}

#[tokio::test]
async fn on_shutdown_queued_updates_are_sent_before_the_retry_hint_and_the_end() {
    let config = Config {
        drain: Duration::ZERO,
        ..Config::default()
    };
    let state = state_with(true, config);
    let response = fresh(&state).await;
    state.hub().dispatch(&envelope(4));
    state.hub().dispatch(&envelope(5));
    state.begin_shutdown();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20);
    let bytes = tokio::time::timeout(Duration::from_secs(5), body)
        .await
        .expect("the stream ends")
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, ["u2", "u3", "u4", "u5"]);
    assert!(
        text.ends_with("\n\n") && text.contains("retry: "),
        "{text:?}"
    );
    assert!(
        text.rfind("retry: ") > text.rfind("id: u5"),
        "the hint comes last"
    );
}

#[tokio::test]
async fn a_rewinding_subscriber_gets_the_last_of_its_topic_then_the_racing_update_once() {
    // History holds u1 u2 when it registers; u3 races the read of history: the rewind of 2 is
    // u2 u3 (as history was read), and u3's live copy is skipped.
    let state = state(true);
    let response = open(
        &state,
        None,
        permit(&state),
        spec(),
        ReplayFrom::Now,
        rewind(2),
    )
    .await
    .unwrap();
    assert_eq!(
        ids(response, 2).await,
        (vec!["u2".to_owned(), "u3".to_owned()], false),
        "u2 and u3, whose id is the starting point: not sent again"
    );
    // Without history there is nothing to rewind: it starts as any fresh stream, at the head
    // read before it registered (u2), and gets u3 live.
    let bare = self::state(false);
    let response = open(
        &bare,
        None,
        permit(&bare),
        spec(),
        ReplayFrom::Now,
        rewind(2),
    )
    .await
    .unwrap();
    assert_eq!(
        ids(response, 2).await,
        (vec!["u2".to_owned(), "u3".to_owned()], false)
    );
    // A resume is a resume, whatever the URL says.
    let from = ReplayFrom::After(UpdateId::new("u2", 100).unwrap());
    let response = open(&state, None, permit(&state), spec(), from, rewind(2))
        .await
        .unwrap();
    assert_eq!(ids(response, 1).await, (vec!["u3".to_owned()], false));
}

fn rewind(n: usize) -> Asked {
    Asked {
        rewind: Some(n),
        ..Asked::default()
    }
}

#[tokio::test]
async fn with_selectors_each_event_names_the_selectors_it_matched_replayed_and_live() {
    let state = state(true);
    let mut spec = spec_for("t");
    for selector in ["x", "{a}", "*"] {
        spec.selectors
            .push(Selector::compile(selector, 100).unwrap());
    }
    let from = ReplayFrom::After(UpdateId::new("u1", 100).unwrap());
    let asked = Asked {
        with_selectors: true,
        ..Asked::default()
    };
    let response = open(&state, None, permit(&state), spec, from, asked)
        .await
        .unwrap();
    let (text, _) = text_through_ids(response, 2).await;
    // u2 replayed, u3 live: each led by the selectors that match its topic `t`, as written.
    let led = "selector: t\nselector: {a}\nselector: *\n";
    assert_eq!(
        text,
        format!(":\n\n{led}id: u2\ndata: \n\n{led}id: u3\ndata: \n\n")
    );
}
