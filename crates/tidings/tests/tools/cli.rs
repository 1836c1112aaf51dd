//! The command line, run as a user would: `token`, `publish`, `subscribe` (with resumption
//! after a dropped connection), and configuration layering of `serve`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::{publish, publisher_token, status, subscribe_url, Hub, Stream, KEY, WAIT};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn tidings(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("TIDINGS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = tidings(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn token_mints_what_the_hub_accepts_and_publish_prints_the_id() {
    let hub = Hub::start(&["--jwt-key", KEY, "--anonymous"]);
    let (ok, token, err) = run(&["token", "--jwt-key", KEY, "--publish", "*"]);
    assert!(ok, "{err}");
    let topic = crate::common::unique_topic("cli");
    let mut s = Stream::open(&subscribe_url(&hub, &[&topic], ""), &[]).await;
    let (status, _) = publish(
        &hub,
        Some(&token),
        &[("topic", &topic), ("data", "via token")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s.next().await.data, "via token");
    let (ok, id, err) = run(&[
        "publish",
        "--hub",
        &hub.base,
        "--jwt-key",
        KEY,
        "--topic",
        &topic,
        "--data",
        "two\nlines",
        "--type",
        "note",
    ]);
    assert!(ok, "{err}");
    let event = s.next().await;
    assert_eq!(
        (event.id, event.event, event.data),
        (id, "note".to_owned(), "two\nlines".to_owned())
    );
    // Errors from the hub are reported with its explanation and a failure exit code.
    let (ok, _, err) = run(&[
        "publish",
        "--hub",
        &hub.base,
        "--jwt-key",
        "wrong",
        "--topic",
        &topic,
    ]);
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("invalid_token") && err.contains("--jwt-key"),
        "{err}"
    );
    let (ok, _, err) = run(&["token", "--jwt-key", KEY]);
    assert!(!ok && err.contains("--publish"), "{err}");
}

/// A loopback TCP proxy whose connections the test can cut.
async fn proxy(upstream: String) -> (String, watch::Sender<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (cut, cuts) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            let mut cuts = cuts.clone();
            cuts.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cuts.changed() => {}
                }
            });
        }
    });
    (addr, cut)
}

#[tokio::test]
async fn subscribe_prints_events_and_resumes_after_the_connection_drops() {
    let hub = Hub::start(&["--jwt-key", KEY]);
    let (proxied, cut) = proxy(hub.base.trim_start_matches("http://").to_owned()).await;
    let topic = crate::common::unique_topic("resume-cli");
    let mut child = tidings(&[
        "subscribe",
        "--hub",
        &proxied,
        "--jwt-key",
        KEY,
        "--topic",
        &topic,
        "--format",
        "json",
        "--max-events",
        "6",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).map(|_| text)
    });
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // Wait for the subscriber to be connected.
    crate::common::wait_for("the subscriber to connect", async || {
        hub.metric("tidings_subscribers").await >= 1.0
    })
    .await;
    let p = publisher_token();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            publish(
                &hub,
                Some(&p),
                &[("topic", &topic), ("data", &format!("before {i}"))],
            )
            .await
            .1,
        );
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            tokio::time::timeout(WAIT, lines.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Cut the connection, publish while the subscriber is away, and let it come back.
    cut.send_modify(|n| *n += 1);
    crate::common::wait_for("the cut connection to leave", async || {
        hub.metric("tidings_subscribers").await == 0.0
    })
    .await;
    for i in 0..3 {
        ids.push(
            publish(
                &hub,
                Some(&p),
                &[("topic", &topic), ("data", &format!("during {i}"))],
            )
            .await
            .1,
        );
    }
    for _ in 0..3 {
        got.push(
            tokio::time::timeout(WAIT, lines.recv())
                .await
                .expect("resumed events")
                .unwrap(),
        );
    }
    let received: Vec<String> = got
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        received, ids,
        "every update once, in order, across the reconnect"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "--max-events ends the command");
    // It said when it was listening, and when it was again after the cut.
    let said = said.join().unwrap().unwrap();
    assert!(
        said.starts_with(&format!(
            "connected to {proxied}: waiting for updates (Ctrl-C to stop)\n"
        )) && said.contains(&format!(
            "connected again to {proxied}: waiting for updates"
        )),
        "{said}"
    );
}

fn instance_id_of(args: &[&str], env: &[(&str, &str)], toml: Option<&str>) -> String {
    let hub = Hub::start_with(args, env, toml);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let body = crate::common::get_json(&hub.url("/readyz")).await;
        body["instanceId"].as_str().unwrap().to_owned()
    })
}

#[test]
fn configuration_layers_defaults_file_environment_flags() {
    let file = Some("instance-id = \"from-file\"\nauth = \"none\"\n");
    assert_eq!(instance_id_of(&[], &[], file), "from-file");
    assert_eq!(
        instance_id_of(&[], &[("TIDINGS_INSTANCE_ID", "from-env")], file),
        "from-env"
    );
    assert_eq!(
        instance_id_of(
            &["--instance-id", "from-flag"],
            &[("TIDINGS_INSTANCE_ID", "from-env")],
            file
        ),
        "from-flag"
    );
    assert!(
        instance_id_of(&["--auth", "none"], &[], None).starts_with("tidings-"),
        "generated by default"
    );
}

#[test]
fn bad_configuration_is_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "histroy-size = 3\n").unwrap();
    let (ok, _, err) = run(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok && err.contains("histroy-size"), "{err}");
    let (ok, _, err) = run(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(
        !ok && err.contains("--jwt-key") && err.contains("--auth none"),
        "{err}"
    );
    let (ok, _, err) = run(&["serve", "--auth", "none", "--listen", "nowhere"]);
    assert!(!ok && err.contains("listen"), "{err}");
    let (ok, _, err) = run(&[
        "serve",
        "--auth",
        "none",
        "--listen",
        "127.0.0.1:0",
        "--bus",
        "mqtt://x",
    ]);
    assert!(!ok && err.contains("mqtt://x"), "{err}");
    // A bad value from the environment names the variable, not only the flag it stands for;
    // the same value typed as the flag is reported as the flag's alone.
    let out = tidings(&["serve", "--auth", "none"])
        .env("TIDINGS_MAX_STREAMS", "lots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("'lots' for '--max-streams")
            && err.contains("the value came from the environment variable TIDINGS_MAX_STREAMS"),
        "{err}"
    );
    let (ok, _, err) = run(&["serve", "--auth", "none", "--max-streams", "lots"]);
    assert!(!ok && !err.contains("environment"), "{err}");
    // A consumer that cannot be used is refused with what to fix, its credentials hidden.
    let (ok, _, err) = run(&[
        "serve",
        "--auth",
        "none",
        "--consume",
        "amqp://me:secret@127.0.0.1:1/%2f?topic=t",
    ]);
    assert!(
        !ok && err.contains("exchange=…")
            && err.contains("amqp://***@127.0.0.1:1/%2f")
            && !err.contains("secret"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "serve",
        "--auth",
        "none",
        "--consume",
        "postgres://me:secret@127.0.0.1:1/shop?table=orders;drop&topic=t",
    ]);
    assert!(
        !ok && err.contains("letters, digits")
            && err.contains("postgres://***@127.0.0.1:1/shop")
            && !err.contains("secret"),
        "{err}"
    );
    // The load generator left for a program of its own: the old name says where it went.
    let (ok, _, err) = run(&["bench", "--url", "http://127.0.0.1:3000", "-c", "10"]);
    assert!(!ok && err.contains("tidings-bench"), "{err}");
}

#[tokio::test]
async fn a_broker_not_there_yet_keeps_the_instance_waiting_and_its_credentials_hidden() {
    // Not a configuration error: the broker may be starting too. The instance serves, not
    // ready, and says what it waits for.
    let hub = Hub::start(&["--auth", "none", "--bus", "redis://:hunter2@127.0.0.1:1/0"]);
    hub.wait_for_log("cannot reach Redis at redis://***@127.0.0.1:1/0")
        .await;
    let readiness = crate::common::get_json(&format!("{}/readyz", hub.base)).await;
    assert_eq!(
        (&readiness["status"], &readiness["busConnection"]),
        (&Value::from("bus_unavailable"), &Value::from("connecting"))
    );
    assert_eq!(
        hub.metric("tidings_bus_state{state=\"connecting\"}").await,
        1.0
    );
    // What a container's health check and a readiness probe say of it.
    let (alive, out, _) = run(&["health", "--url", &hub.base]);
    assert!(alive && out.contains("200"), "{out}");
    let (ready, _, err) = run(&["health", "--url", &hub.base, "--ready"]);
    assert!(
        !ready && err.contains("503") && err.contains("bus_unavailable"),
        "{err}"
    );
    let (closed, _, err) = run(&["health", "--url", "http://127.0.0.1:1"]);
    assert!(!closed && err.contains("cannot connect"), "{err}");
    let log = hub.log.lock().unwrap().join("\n");
    assert!(
        log.contains("waiting for its bus") && !log.contains("hunter2"),
        "credentials stay out of messages: {log}"
    );
}

#[tokio::test]
async fn passwords_in_urls_stay_out_of_logs_and_messages_however_they_are_written() {
    // A Kafka password may hold `/`, `?` or `#` (its parser reads credentials up to the last
    // `@`), and reqwest sends a JWKS URL's credentials as Basic auth: neither is ever shown.
    let hub = Hub::start(&[
        "--auth",
        "jwt",
        "--bus",
        "kafka://me:pa/ss?x#y@127.0.0.1:1",
        "--jwks-url",
        "http://keys:jw-secret@127.0.0.1:1/keys",
        "--jwt-audience",
        "hub",
    ]);
    hub.wait_for_log("waiting for its bus").await;
    hub.wait_for_log("jwks: cannot fetch the key set").await;
    let log = hub.log.lock().unwrap().join("\n");
    assert!(log.contains("kafka://***@127.0.0.1:1"), "{log}");
    assert!(log.contains("http://***@127.0.0.1:1/keys"), "{log}");
    for secret in ["pa/ss", "jw-secret", "keys:"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    // A URL refused at start-up (here, a raw `/` in the password) is shown without its
    // credentials too.
    let (ok, _, err) = run(&[
        "serve",
        "--jwks-url",
        "http://keys:jw/secret@127.0.0.1:1/keys",
    ]);
    assert!(!ok && err.contains("http://***@127.0.0.1:1/keys"), "{err}");
    assert!(!err.contains("jw/secret"), "{err}");
}

#[test]
fn help_shows_no_secret_from_the_environment() {
    // clap shows an option's environment value in --help unless told not to (review L6).
    let secrets = [
        ("TIDINGS_JWT_KEY", "S3CR3T-jwt"),
        ("TIDINGS_PUBLISHER_JWT_KEY", "S3CR3T-pub"),
        ("TIDINGS_SUBSCRIBER_JWT_KEY", "S3CR3T-sub"),
        ("TIDINGS_WEBHOOK_SECRET", "S3CR3T-hook"),
        ("TIDINGS_BUS", "redis://:S3CR3T-bus@127.0.0.1"),
        ("TIDINGS_JWKS_URL", "https://u:S3CR3T-jwks@idp.example/k"),
        ("TIDINGS_AUTH_URL", "https://u:S3CR3T-cb@app.example/a"),
        ("TIDINGS_WEBHOOK_URL", "https://u:S3CR3T-url@app.example/h"),
        (
            "TIDINGS_OTLP_ENDPOINT",
            "https://u:S3CR3T-otlp@otel.example",
        ),
        (
            "TIDINGS_CONSUME",
            "amqp://u:S3CR3T-amqp@127.0.0.1/%2f?exchange=x",
        ),
    ];
    let out = tidings(&["serve", "--help"])
        .envs(secrets)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && help.contains("TIDINGS_JWT_KEY"),
        "{help}"
    );
    assert!(!help.contains("S3CR3T"), "a secret in --help: {help}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_ready_message() {
    let mut child = tidings(&[
        "serve",
        "--auth",
        "none",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let line = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let record: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(record["level"], "INFO");
    assert!(
        record["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("listening on http://127.0.0.1:"),
        "{record}"
    );
}

#[tokio::test]
async fn a_source_not_there_keeps_its_consumer_retrying_and_the_instance_serving() {
    // The application's database or broker may be starting too: the instance serves (its
    // bus is up), the consumer says it is connecting, and the log says why, credentials hidden.
    let hub = Hub::start(&[
        "--auth",
        "none",
        "--consume",
        "postgres://me:hunter2@127.0.0.1:1/shop?session=%7B/customer%7D&event=e",
        "--consume",
        "nats://me:hunter2@127.0.0.1:1?subject=orders.%3E&topic=https://example.com/%7B1%7D",
    ]);
    hub.wait_for_log("consumer postgres:tidings_outbox: cannot connect")
        .await;
    hub.wait_for_log("consumer nats:orders.>: cannot connect")
        .await;
    assert_eq!(hub.log_lines("hunter2"), 0, "credentials hidden");
    let readiness = crate::common::get_json(&format!("{}/readyz", hub.base)).await;
    assert_eq!(readiness["status"], "ready", "{readiness}");
    for consumer in readiness["consumers"].as_array().unwrap() {
        assert_eq!(consumer["connection"], "connecting", "{readiness}");
    }
    assert_eq!(status(&hub, "/healthz").await, 200);
}
