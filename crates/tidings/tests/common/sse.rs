//! The client side: HTTP clients, publishing, and SSE streams read in the background with an
//! independent parser (`eventsource-stream`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{uuid_like, Hub, WAIT};

pub fn client() -> reqwest::Client {
    tidings::cli::install_crypto_provider();
    reqwest::Client::builder().build().unwrap()
}

/// GETs `url` and decodes the JSON answer.
pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An open SSE stream, read in the background.
pub struct Stream {
    pub status: reqwest::StatusCode,
    pub version: reqwest::Version,
    pub headers: reqwest::header::HeaderMap,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    /// Raw bytes as received (for exact assertions).
    pub raw: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    /// Opens `url` with extra headers; panics unless the answer is 200.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Stream {
        let s = Self::try_open(url, headers).await;
        assert_eq!(s.status, 200, "opening {url}");
        s
    }

    /// Opens `url`, whatever the status.
    pub async fn try_open(url: &str, headers: &[(&str, &str)]) -> Stream {
        Self::try_open_with(&client(), url, headers).await
    }

    /// Opens `url` through `http`, whatever the status.
    pub async fn try_open_with(
        http: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Stream {
        let mut req = http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("connect timeout")
            .expect("connect");
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let (tx, events) = mpsc::unbounded_channel();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let raw_sink = raw.clone();
        let task = tokio::spawn(async move {
            let bytes = response.bytes_stream().map(move |chunk| {
                if let Ok(c) = &chunk {
                    raw_sink.lock().unwrap().extend_from_slice(c);
                }
                chunk
            });
            let mut parsed = bytes.eventsource();
            while let Some(item) = parsed.next().await {
                if tx.send(item.map_err(|e| e.to_string())).is_err() {
                    break;
                }
            }
        });
        Stream {
            status,
            version,
            headers,
            events,
            raw,
            task,
        }
    }

    /// The next event (comments are not events), within [`WAIT`].
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("stream ended")
            .expect("stream error")
    }

    /// `None` if no event arrives within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(Ok(e))) => Some(e),
            _ => None,
        }
    }

    /// Waits until the server ends the stream; returns the events that came before.
    pub async fn until_closed(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("stream did not close")
            {
                Some(Ok(e)) => events.push(e),
                Some(Err(_)) | None => return events,
            }
        }
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }

    /// Closes the connection from the client side.
    pub fn close(self) {
        self.task.abort();
    }
}

/// POSTs a Mercure form; returns status and body.
pub async fn publish(hub: &Hub, token: Option<&str>, form: &[(&str, &str)]) -> (u16, String) {
    let body = form
        .iter()
        .fold(
            form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(k, v);
                s
            },
        )
        .finish();
    let mut req = client()
        .post(hub.url("/.well-known/mercure"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let response = req.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The URL of a Mercure subscription to `selectors`, plus extra raw query text.
pub fn subscribe_url(hub: &Hub, selectors: &[&str], extra: &str) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for sel in selectors {
        s.append_pair("topic", sel);
    }
    let q = s.finish();
    hub.url(&format!("/.well-known/mercure?{q}{extra}"))
}

/// A topic unique to this call, so tests never see each other's updates.
pub fn unique_topic(name: &str) -> String {
    format!("https://example.com/{name}/{}", uuid_like())
}
