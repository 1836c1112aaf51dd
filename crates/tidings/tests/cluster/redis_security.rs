//! Reaching a Redis that protects itself: over TLS (`rediss://`), against a private TLS-only
//! `redis-server` whose certificate is signed by a CA generated in the test — trusted through
//! `SSL_CERT_FILE`, the cluster works; without that trust, the instance refuses to start and
//! says why — and with a password, where a wrong one is refused without being printed; and a
//! message written on a channel by hand with a position far ahead, which is skipped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{publish, subscribe_url, Hub, PrivateRedis, Stream};

#[tokio::test]
async fn a_cluster_on_a_tls_redis_trusting_its_ca_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = crate::common::test_certificates(dir.path(), "tidings-test");
    let Some(redis) = PrivateRedis::start_tls(&cert, &key) else {
        return;
    };
    let url = redis.url();
    assert!(url.starts_with("rediss://"));
    let trust = [("SSL_CERT_FILE", ca.to_str().unwrap())];
    let args = ["--auth", "none", "--bus", &url];
    let a = Hub::start_with(&args, &trust, None);
    let b = Hub::start_with(&args, &trust, None);
    let topic = crate::common::unique_topic("tls");
    let mut stream = Stream::open(&subscribe_url(&a, &[&topic], ""), &[]).await;
    let (code, id) = publish(&b, None, &[("topic", &topic), ("data", "over tls")]).await;
    assert_eq!(code, 200, "{id}");
    let event = stream.next().await;
    assert_eq!((event.id, event.data.as_str()), (id, "over tls"));
}

/// Starts an instance on `bus` that must fail to start; returns its error output.
fn failed_start(bus: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0", "--auth", "none"])
        .args(["--bus", bus])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("an instance on {bus} kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

#[tokio::test]
async fn an_untrusted_redis_certificate_stops_the_instance_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let [_, cert, key] = crate::common::test_certificates(dir.path(), "tidings-test");
    let Some(redis) = PrivateRedis::start_tls(&cert, &key) else {
        return;
    };
    let stderr = failed_start(&redis.url());
    assert!(
        stderr.contains("cannot reach Redis") && stderr.contains("certificate"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_password_protected_redis_takes_the_password_from_the_url_and_never_prints_it() {
    let Some(redis) = PrivateRedis::start_with_password("s3cret-pass") else {
        return;
    };
    let url = redis.url();
    let a = Hub::start(&["--auth", "none", "--bus", &url]);
    let topic = crate::common::unique_topic("password");
    let mut stream = Stream::open(&subscribe_url(&a, &[&topic], ""), &[]).await;
    let (code, id) = publish(&a, None, &[("topic", &topic), ("data", "authenticated")]).await;
    assert_eq!(code, 200, "{id}");
    assert_eq!(stream.next().await.id, id);
    assert!(!a.log.lock().unwrap().join("\n").contains("s3cret-pass"));

    let wrong = url.replace("s3cret-pass", "wrong-pass");
    let stderr = failed_start(&wrong);
    assert!(
        stderr.contains("cannot reach Redis at redis://***@127.0.0.1"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-pass"), "{stderr}");
}

#[tokio::test]
async fn a_message_with_a_forged_position_does_not_silence_later_updates() {
    // Positions come from the publish script; one written by hand far ahead made the instance
    // take every later update for a repeat until it reconnected (review L11).
    let Some(keys) = crate::common::redis_keys("forged") else {
        return;
    };
    let hubs = crate::common::redis_cluster(&keys, 1, &[]);
    let topic = crate::common::unique_topic("forged");
    let mut stream = Stream::open(&subscribe_url(&hubs[0], &[&topic], ""), &[]).await;
    let mut redis = redis::Client::open(keys.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let forged = format!(
        "18446744073709551615-0 0 {{\"v\": 1, \"topics\": [\"{topic}\"], \"data\": \"forged\"}}"
    );
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}:t:{topic}", keys.prefix))
        .arg(forged)
        .query(&mut redis)
        .unwrap();
    let (status, _) = publish(&hubs[0], None, &[("topic", &topic), ("data", "real")]).await;
    assert_eq!(status, 200);
    assert_eq!(stream.next().await.data, "real");
    assert_eq!(hubs[0].metric("tidings_bus_skipped_total").await, 1.0);
}
