//! `GET /history` on one instance: the last updates of a topic or those after an id, page by
//! page, private ones only for a token allowed them, and the bad inputs it refuses. (What each
//! bus's history holds for a topic: the bus contract's rewind case.)

use serde_json::{json, Value};

use crate::app::{publisher_token, token, App, KEY};

async fn publish(app: &App, topic: &str, data: &str, private: bool) -> String {
    let mut form = vec![("topic", topic), ("data", data)];
    if private {
        form.push(("private", "on"));
    }
    let bearer = format!("Bearer {}", publisher_token());
    let answer = app
        .post_form("/.well-known/mercure", &form, &[("authorization", &bearer)])
        .await;
    assert_eq!(answer.status, 200);
    answer.text().await
}

async fn history(app: &App, query: &str, bearer: Option<&str>) -> (u16, Value) {
    let answer = app.get_as(&format!("/history?{query}"), bearer).await;
    (answer.status, answer.json().await)
}

fn data(body: &Value) -> Vec<&str> {
    body["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["data"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn it_gives_the_last_updates_or_those_after_an_id_page_by_page() {
    let app = App::start(&["--jwt-key", KEY, "--anonymous"]).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(publish(&app, "/t", &n.to_string(), false).await);
        publish(&app, "/other", "x", false).await;
    }
    let secret = publish(&app, "/t", "secret", true).await;
    // Anonymous: the public ones only.
    let (status, body) = history(&app, "topic=/t&last=2", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data(&body), ["3", "4"]);
    assert_eq!(body["updates"][0]["topics"], json!(["/t"]));
    assert_eq!(body["next"], Value::Null);
    // A token allowed the topic sees the private one too.
    let reader = token(json!({"mercure": {"subscribe": ["/t"]}}));
    let (_, body) = history(&app, "topic=/t&last=2", Some(&reader)).await;
    assert_eq!(data(&body), ["4", "secret"]);
    assert_eq!(body["updates"][1]["private"], true);
    // Pages forwards from the start, then from where the last page ended.
    let (_, first) = history(&app, "topic=/t&after=earliest&limit=2", None).await;
    assert_eq!(data(&first), ["0", "1"]);
    assert_eq!(first["next"], ids[1].as_str());
    let next = first["next"].as_str().unwrap();
    let (_, second) = history(&app, &format!("topic=/t&after={next}&limit=10"), None).await;
    assert_eq!(data(&second), ["2", "3", "4"]);
    assert_eq!(second["next"], Value::Null);
    // After the newest: nothing. A quiet topic: nothing.
    let (_, body) = history(&app, &format!("topic=/t&after={secret}"), None).await;
    assert_eq!(data(&body), Vec::<&str>::new());
    let (status, body) = history(&app, "topic=/quiet&last=5", None).await;
    assert_eq!((status, data(&body)), (200, vec![]));
}

#[tokio::test]
async fn bad_history_queries_get_specific_errors() {
    let app = App::start(&["--jwt-key", KEY, "--anonymous"]).await;
    publish(&app, "/t", "0", false).await;
    for (query, status, code) in [
        ("last=1", 400, "missing_topic"),
        ("topic=/t", 400, "invalid_input"),
        ("topic=/t&last=0", 400, "invalid_input"),
        ("topic=/t&last=101", 400, "invalid_input"),
        ("topic=/t&last=many", 400, "invalid_input"),
        ("topic=/t&last=1&after=earliest", 400, "invalid_input"),
        ("topic=/t&last=1&limit=5", 400, "invalid_input"),
        ("topic=/t&after=x&limit=1000", 400, "invalid_input"),
        ("topic=/t&after=a%01b", 400, "invalid_input"),
        ("topic=/t&topic=/u&last=1", 400, "invalid_input"),
        ("topic=a%00b&last=1", 400, "invalid_input"),
        ("topic=/t&after=urn:uuid:never-published", 404, "unknown_id"),
    ] {
        let (got, body) = history(&app, query, None).await;
        assert_eq!(got, status, "{query}: {body}");
        assert_eq!(body["error"], code, "{query}: {body}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // Without --anonymous, a token is needed.
    let closed = App::start(&["--jwt-key", KEY]).await;
    assert_eq!(history(&closed, "topic=/t&last=1", None).await.0, 401);
}
