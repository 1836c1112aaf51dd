//! Publishing straight onto Redis through the publish script, seen from HTTP: what the script
//! refuses, what every instance skips, and a minimal message delivered by both instances of a
//! live cluster under one derived id. (What producers publish straight onto each broker — the
//! Rust client, a raw message, the Python example — is the bus contract's
//! `delivers_what_is_published_straight_onto_the_broker`, held for every bus.)

use crate::common::{subscribe_url, Hub, RedisKeys, Stream};

fn two_instances(name: &str) -> Option<(RedisKeys, Vec<Hub>)> {
    let keys = crate::common::redis_keys(name)?;
    let hubs = crate::common::redis_cluster(&keys, 2, &[]);
    Some((keys, hubs))
}

#[tokio::test]
async fn a_minimal_message_gets_the_same_derived_id_everywhere_and_a_bad_one_is_skipped() {
    let Some((keys, hubs)) = two_instances("minimal") else {
        return;
    };
    let topic = crate::common::unique_topic("minimal");
    let mut a = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let mut b = Stream::open(&subscribe_url(&hubs[1], &[&topic], ""), &[]).await;
    let mut conn = redis::Client::open(keys.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let script = redis::Script::new(tidings::bus::redis::PUBLISH_SCRIPT);
    let try_run = |conn: &mut redis::Connection, message: &str| {
        script
            .arg(&keys.prefix)
            .arg(message)
            .arg(0)
            .arg("")
            .invoke::<(String, u64)>(conn)
    };
    let run = |conn: &mut redis::Connection, message: &str| try_run(conn, message).unwrap().0;
    // Not a message at all: the script refuses it, nothing is stored or sent.
    for garbage in [
        "not json",
        r#"{"v":1}"#,
        r#"{"v":1,"topics":[]}"#,
        r#"{"v":1,"topics":[7]}"#,
    ] {
        let refused = try_run(&mut conn, garbage).unwrap_err();
        assert!(
            refused.to_string().contains("tidings:"),
            "{garbage}: {refused}"
        );
    }
    // Not valid: unknown version, a line break in the type. Skipped by every instance.
    run(&mut conn, r#"{"v":2,"topics":["x"]}"#);
    run(
        &mut conn,
        &serde_json::json!({"v": 1, "topics": [topic], "type": "a\nb"}).to_string(),
    );
    let position = run(
        &mut conn,
        &serde_json::json!({"v": 1, "topics": [topic], "data": "minimal"}).to_string(),
    );
    let expected = format!("urn:tidings:{position}");
    for stream in [&mut a, &mut b] {
        let event = stream.next().await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (expected.as_str(), "minimal")
        );
    }
    assert_eq!(
        crate::common::client()
            .get(hubs[0].url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
