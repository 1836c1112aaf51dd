//! Sending the queue's batches to the application: signed, one at a time, retried with
//! backoff while the failure may pass, dropped (and counted) when it will not.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{now_millis, Batch, Queue, Written, ID_HEADER, SIGNATURE_HEADER};
use crate::metrics::WebhookDrop;
use crate::outbound;
use crate::telemetry::{self, Kind, Parent};

/// How long events gather before a batch is sent (a burst goes out as one request).
const LINGER: Duration = Duration::from_millis(100);
/// The first wait before a batch is retried; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Sends the queue's batches, one at a time.
pub(super) struct Sender {
    pub(super) client: reqwest::Client,
    pub(super) url: reqwest::Url,
    pub(super) key: ring::hmac::Key,
    pub(super) instance: String,
    pub(super) queue: Arc<Queue>,
    pub(super) retry_for: Duration,
}

impl Sender {
    /// Delivers batches as the queue fills, for as long as the task runs.
    pub(super) async fn run(self) {
        loop {
            self.queue.ready.notified().await;
            tokio::time::sleep(LINGER).await;
            loop {
                self.queue.sending.store(true, Ordering::SeqCst);
                let events = self.queue.take();
                if events.is_empty() {
                    self.queue.sending.store(false, Ordering::SeqCst);
                    break;
                }
                self.deliver(&events).await;
            }
        }
    }

    /// Delivers one batch, retrying with backoff; counts what happened to it.
    async fn deliver(&self, events: &[Written]) {
        let id = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let body = serde_json::to_vec(&Batch {
            id: &id,
            instance: &self.instance,
            events,
        })
        .unwrap_or_default();
        let started = tokio::time::Instant::now();
        let mut backoff = FIRST_BACKOFF;
        // One span per batch, its attempts included; the receiver gets its context.
        let span = telemetry::span("tidings.webhook", Kind::Client, Parent::Root);
        span.set("tidings.webhook.events", events.len() as i64);
        let trace = span.traceparent().map(|t| t.to_string());
        let mut attempts = 0_i64;
        loop {
            attempts += 1;
            span.set("tidings.webhook.attempts", attempts);
            let why = match self.send(&id, &body, trace.as_deref()).await {
                Ok(()) => {
                    self.queue.metrics.webhook_delivered(events.len() as u64);
                    return;
                }
                Err(Failure::Refused(why)) => {
                    span.fail(why.clone());
                    self.queue.dropped(
                        WebhookDrop::Refused,
                        events.len(),
                        &format!("the webhook receiver refused a batch ({why}); dropped"),
                    );
                    return;
                }
                Err(Failure::Passing(why)) => why,
            };
            self.queue.metrics.webhook_failed_attempts.inc();
            // Half to all of the backoff, so that instances do not retry in lock-step.
            let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            if started.elapsed() + wait > self.retry_for {
                span.fail(why.clone());
                self.queue.dropped(
                    WebhookDrop::Undelivered,
                    events.len(),
                    &format!(
                        "a webhook batch was not delivered within webhook-retry-for ({:?}: {why}); dropped",
                        self.retry_for
                    ),
                );
                return;
            }
            tracing::debug!(error = %why, "webhook: delivery failed; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn send(&self, id: &str, body: &[u8], trace: Option<&str>) -> Result<(), Failure> {
        let mut request = self.client.post(self.url.clone());
        if let Some(trace) = trace {
            request = request.header("traceparent", trace);
        }
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, id)
            .header(SIGNATURE_HEADER, sign(&self.key, now_millis() / 1000, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| Failure::Passing(outbound::describe(&e)))?;
        let status = response.status();
        match status.as_u16() {
            200..=299 => Ok(()),
            // Timeouts and rate limits pass; other refusals would come back the same.
            408 | 429 => Err(Failure::Passing(format!("answered {status}"))),
            400..=499 => Err(Failure::Refused(format!("answered {status}"))),
            _ => Err(Failure::Passing(format!("answered {status}"))),
        }
    }
}

enum Failure {
    /// Worth retrying: no answer, a 5xx, a 408 or 429, a redirect.
    Passing(String),
    /// A 4xx: the receiver will not take it.
    Refused(String),
}

/// The signature header's value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. The
/// time is signed too, so that a receiver can refuse a replayed request by its age.
pub fn sign(key: &ring::hmac::Key, unix_secs: u64, body: &[u8]) -> String {
    let mut signed = format!("{unix_secs}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = ring::hmac::sign(key, &signed);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix_secs},v1={hex}")
}
