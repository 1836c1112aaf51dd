//! The publishers of a run: tasks sharing keep-alive connections, each sending the updates of
//! its share of the topics in order, on schedule (or at once when the rate is unbounded).
//!
//! A topic's updates all go through one publisher, one after the other, so the order they
//! must arrive in is defined and a stream that gets them otherwise counts as out of order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::{payload, Plan};
use super::profile::{Profile, Target};
use super::tally::Tally;

/// What every publisher task shares.
pub(super) struct Publishing {
    pub(super) client: reqwest::Client,
    pub(super) profile: Profile,
    pub(super) target: Target,
    pub(super) plan: Plan,
    pub(super) tally: Arc<Tally>,
    /// Updates per second over all publishers; `None` sends as fast as answers come.
    pub(super) rate: Option<f64>,
    pub(super) payload_size: usize,
    pub(super) publishers: u64,
    /// When update 0 is due.
    pub(super) start: Instant,
}

/// Publisher `index`: sends the updates of the topics `t` with `t % publishers == index`.
pub(super) async fn run(publishing: Arc<Publishing>, index: u64) {
    let p = &*publishing;
    let mine = (0..p.plan.updates).filter(|j| p.plan.update(*j).0 % p.publishers == index);
    for j in mine {
        if let Some(rate) = p.rate {
            tokio::time::sleep_until((p.start + Duration::from_secs_f64(j as f64 / rate)).into())
                .await;
        }
        let (topic, seq) = p.plan.update(j);
        let sent = p.tally.now_us();
        p.tally.publishing(sent);
        let body = payload(topic, seq, sent, p.payload_size);
        let request = p
            .profile
            .publish(&p.client, &p.target, &p.plan.topic_name(topic), body);
        let began = Instant::now();
        match send(request).await {
            Ok(()) => p.tally.published(began.elapsed()),
            Err(e) => p.tally.publish_failed(e, p.plan.streams_on(topic)),
        }
    }
}

/// Sends one publish and reads the whole answer (so the connection is reused).
async fn send(request: reqwest::RequestBuilder) -> Result<(), String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("publish: {}", error_chain(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("publish: reading the answer: {e}"))?;
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    Err(format!("publish answered {status}: {}", text.trim()))
}

/// An error with its sources, which reqwest keeps apart ("error sending request" alone says
/// nothing).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
