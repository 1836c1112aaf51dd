//! A webhook receiver on loopback: checks each request's signature with the secret, keeps the
//! events, and answers as the test says.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// The secret the test hubs sign webhooks with.
pub const WEBHOOK_SECRET: &str = "webhook-test-secret";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub body: Value,
    /// The signature checked out.
    pub signed: bool,
}

/// The receiver: what it got, and the statuses it answers with next (then `200`).
#[derive(Clone, Default)]
pub struct Receiver {
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
    pub answers: Arc<Mutex<Vec<StatusCode>>>,
}

impl Receiver {
    /// Serves on a free loopback port; returns the URL to give `--webhook-url`.
    pub async fn serve(&self) -> String {
        let receiver = self.clone();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let receiver = receiver.clone();
                async move { receiver.take(&headers, &body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn take(&self, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        let signed = headers
            .get("tidings-signature")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| verify(v, body));
        self.deliveries.lock().unwrap().push(Delivery {
            id: headers
                .get("tidings-webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            signed,
        });
        let mut answers = self.answers.lock().unwrap();
        match answers.is_empty() {
            true => StatusCode::OK,
            false => answers.remove(0),
        }
    }

    /// Every event received, in order, from requests answered `200` or not.
    pub fn events(&self) -> Vec<Value> {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .flat_map(|d| d.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The `(type, session)` of every session event received.
    pub fn session_events(&self) -> Vec<(String, String)> {
        self.events()
            .iter()
            .filter(|e| {
                e["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("session."))
            })
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["session"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// Checks `t=<secs>,v1=<hex>` against the HMAC-SHA256 of `"<secs>.<body>"`, and that the time
/// is recent.
fn verify(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = hex(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    ring::hmac::verify(&key, &signed, &v1).is_ok()
}

fn hex(text: &str) -> Option<Vec<u8>> {
    text.len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}
