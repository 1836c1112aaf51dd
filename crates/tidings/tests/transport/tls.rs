//! TLS against the real binary, with certificates made in the test: HTTPS with HTTP/2 (and
//! HTTP/1.1 for clients that ask for it), a certificate reloaded on SIGHUP while a stream stays
//! open, a failed reload that keeps the certificate in use, and clear start-up errors.

use std::path::Path;
use std::time::Duration;

use crate::common::{test_certificates, wait_for, Hub, Stream};

/// A client that trusts only the CA in `ca`; HTTP/1.1 only when `http1` is set.
fn trusting(ca: &Path, http1: bool) -> reqwest::Client {
    tidings::cli::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let builder = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(10));
    let builder = if http1 { builder.http1_only() } else { builder };
    builder.build().unwrap()
}

/// A hub serving HTTPS with `cert` and `key` (and `extra` options), whose test client trusts
/// `ca`.
fn tls_hub(cert: &Path, key: &Path, ca: &Path, extra: &[&str]) -> Hub {
    let mut args = vec![
        "--auth",
        "none",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Hub::start(&args).with_client(trusting(ca, false))
}

async fn publish(http: &reqwest::Client, hub: &Hub, topic: &str, data: &str) -> String {
    let response = http
        .post(hub.url("/.well-known/mercure"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("topic", topic)
                .append_pair("data", data)
                .finish(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn https_serves_http2_and_http1_and_a_reloaded_certificate_keeps_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let [ca1, cert1, key1] = test_certificates(dir.path(), "first");
    // The files the hub reads; a reload copies another certificate over them.
    let (cert, key) = (dir.path().join("live.pem"), dir.path().join("live.key"));
    std::fs::copy(&cert1, &cert).unwrap();
    std::fs::copy(&key1, &key).unwrap();
    let hub = tls_hub(&cert, &key, &ca1, &[]);
    assert!(hub.base.starts_with("https://127.0.0.1:"), "{}", hub.base);

    let h2 = trusting(&ca1, false);
    let h1 = trusting(&ca1, true);
    let health = h2.get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    let health = h1.get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(health.version(), reqwest::Version::HTTP_11);

    let url = hub.url("/.well-known/mercure?topic=tls");
    let mut over_h2 = Stream::try_open_with(&h2, &url, &[]).await;
    assert_eq!(
        (over_h2.status.as_u16(), over_h2.version),
        (200, reqwest::Version::HTTP_2)
    );
    let id = publish(&h1, &hub, "tls", "before").await;
    let event = over_h2.next().await;
    assert_eq!((event.id, event.data.as_str()), (id, "before"));

    // A new certificate from another CA, then SIGHUP.
    let [ca2, cert2, key2] = test_certificates(dir.path(), "second");
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    hub.hang_up();
    let fresh = trusting(&ca2, false);
    wait_for("the new certificate", async || {
        fresh.get(hub.url("/healthz")).send().await.is_ok()
    })
    .await;
    assert!(
        trusting(&ca1, false)
            .get(hub.url("/healthz"))
            .send()
            .await
            .is_err(),
        "new connections no longer get the old certificate"
    );
    // The stream opened before the reload is still there.
    let id = publish(&fresh, &hub, "tls", "after").await;
    let event = over_h2.next().await;
    assert_eq!((event.id, event.data.as_str()), (id, "after"));

    // A reload that fails keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    hub.hang_up();
    hub.wait_for_log("TLS certificate not reloaded").await;
    let health = fresh.get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let id = publish(&fresh, &hub, "tls", "still").await;
    assert_eq!(over_h2.next().await.id, id);
}

#[tokio::test]
async fn an_oversized_header_list_over_http2_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = test_certificates(dir.path(), "heads");
    let hub = tls_hub(&cert, &key, &ca, &[]);
    let h2 = trusting(&ca, false);
    let big = "v".repeat(70_000);
    let refused = h2.get(hub.url("/healthz")).header("x-big", &big).send();
    let refused = refused.await.unwrap();
    assert_eq!(
        (refused.version(), refused.status().as_u16()),
        (reqwest::Version::HTTP_2, 431)
    );
    let fine = h2.get(hub.url("/healthz")).header("x-big", &big[..50_000]);
    assert_eq!(fine.send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_http2_connection_that_sends_no_request_is_closed_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = test_certificates(dir.path(), "idle");
    let hub = tls_hub(&cert, &key, &ca, &["--header-read-timeout", "1"]);
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca).unwrap())
        .unwrap();
    let mut config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(hub.addr()).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The client preface and an empty SETTINGS frame, then nothing: no request.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = tls.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle HTTP/2 connection was kept open");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    assert_eq!(hub.metric("tidings_ready").await, 1.0);
}

#[tokio::test]
async fn plain_http_to_a_tls_port_gets_no_answer_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = test_certificates(dir.path(), "plain");
    let hub = tls_hub(&cert, &key, &ca, &[]);
    let plain = format!("http://{}/healthz", hub.addr());
    assert!(crate::common::client().get(&plain).send().await.is_err());
    assert_eq!(hub.metric("tidings_ready").await, 1.0);
}

/// Starts `tidings serve --auth none` with `args`, which must fail; returns its error output.
fn failed_start(args: &[&str]) -> String {
    crate::common::failed_start(&[&["--auth", "none"], args].concat())
}

#[test]
fn unusable_tls_files_stop_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let [_, cert, key] = test_certificates(dir.path(), "one");
    let [_, _, other_key] = test_certificates(dir.path(), "two");
    let cert = cert.to_str().unwrap();
    let err = failed_start(&["--tls-cert", cert]);
    assert!(err.contains("tls-cert and tls-key go together"), "{err}");
    let missing = dir.path().join("missing.pem");
    let err = failed_start(&[
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        err.contains("cannot read the TLS certificate file"),
        "{err}"
    );
    let err = failed_start(&["--tls-cert", cert, "--tls-key", other_key.to_str().unwrap()]);
    assert!(err.contains("does not fit the certificate"), "{err}");
    let err = failed_start(&["--tls-cert", cert, "--tls-key", cert]);
    assert!(err.contains("no usable PEM private key"), "{err}");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    // Answering the hub's pings kept an HTTP/2 connection without a request open for ever
    // (review L4).
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = test_certificates(dir.path(), "h2-idle");
    let hub = tls_hub(&cert, &key, &ca, &["--h2-idle-timeout", "1"]);
    // One request on a connection of its own; the hub's client keeps asking on another.
    let idle = trusting(&ca, false);
    let response = idle.get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(hub.metric("tidings_open_connections").await, 2.0);
    let started = std::time::Instant::now();
    wait_for("the idle connection to be closed", async || {
        hub.metric("tidings_open_connections").await == 1.0
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    // The connection that keeps asking was never idle long enough.
    assert_eq!(hub.metric("tidings_open_connections").await, 1.0);
}
