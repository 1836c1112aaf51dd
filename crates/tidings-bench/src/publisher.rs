//! The publishers of a run: tasks sharing keep-alive connections, each sending the updates of
//! its share of the topics in order, on schedule (or at once when the rate is unbounded).
//!
//! A topic's updates all go through one publisher, one after the other, so the order they
//! must arrive in is defined and a stream that gets them otherwise counts as out of order.
//!
//! With several publish URLs, publisher `i` starts on URL `i % n`; a publish that finds its
//! instance gone or unable to take it (no connection, `5xx`) is sent again, with the same
//! update id, to the next URL — as a publisher behind a load balancer would — for up to
//! [`RETRY_FOR`]. Tidings stores an id once, so a retry of a publish the instance did take
//! is not delivered twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::{payload, Plan};
use super::profile::{Profile, Target};
use super::tally::{Tally, Update};

/// What every publisher task shares.
pub(super) struct Publishing {
    pub(super) client: reqwest::Client,
    pub(super) profile: Profile,
    /// Where to publish (see the module documentation).
    pub(super) targets: Vec<Target>,
    pub(super) plan: Plan,
    pub(super) tally: Arc<Tally>,
    /// Updates per second over all publishers; `None` sends as fast as answers come.
    pub(super) rate: Option<f64>,
    pub(super) payload_size: usize,
    pub(super) publishers: u64,
    /// When update 0 (and broadcast 0) is due.
    pub(super) start: Instant,
    /// What the broadcasts are spread over (`--hold`).
    pub(super) hold: Duration,
}

/// How long a publish is tried on the next publish URL after a failure that another instance
/// may not have.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// Publisher `index`: sends the updates of the topics `t` with `t % publishers == index`.
pub(super) async fn run(publishing: Arc<Publishing>, index: u64) {
    let p = &*publishing;
    let mut target = index as usize % p.targets.len();
    let mine = (0..p.plan.updates).filter(|j| p.plan.update(*j).0 % p.publishers == index);
    for j in mine {
        if let Some(rate) = p.rate {
            tokio::time::sleep_until((p.start + Duration::from_secs_f64(j as f64 / rate)).into())
                .await;
        }
        let (topic, seq) = p.plan.update(j);
        let name = p.plan.topic_name(topic);
        publish(p, &mut target, topic, seq, &name, Update::Topic(j)).await;
    }
}

/// The broadcasts: `--broadcasts` updates to the topic every stream holds, spread evenly over
/// `--hold` from the start of the publishing (sent as publisher 0's next target).
pub(super) async fn broadcast(publishing: Arc<Publishing>) {
    let p = &*publishing;
    let count = p.plan.broadcasts;
    let name = p.plan.broadcast_name();
    let mut target = 0;
    for b in 0..count {
        let due = p.start + p.hold.mul_f64(b as f64 / count as f64);
        tokio::time::sleep_until(due.into()).await;
        let topic = p.plan.broadcast_topic();
        publish(p, &mut target, topic, b, &name, Update::Broadcast(b)).await;
    }
}

/// Publishes update `seq` of `topic` (named `name` on the hub), counted in the tally; a
/// failure another instance may not have is sent there again (see the module documentation).
async fn publish(
    p: &Publishing,
    target: &mut usize,
    topic: u64,
    seq: u64,
    name: &str,
    update: Update,
) {
    let sent = p.tally.now_us();
    p.tally.publishing(sent);
    let body = payload(topic, seq, sent, p.payload_size);
    let id = format!("{name}-{seq}");
    let began = Instant::now();
    let broadcast = matches!(update, Update::Broadcast(_));
    let retrying = p.targets.len() > 1 && p.profile.idempotent();
    let outcome = loop {
        let to = &p.targets[*target];
        let request = p
            .profile
            .publish(&p.client, to, name, broadcast, &id, body.clone());
        match send(request).await {
            Err(e) if e.passing && retrying && began.elapsed() < RETRY_FOR => {
                p.tally.publish_retried(e.message);
                *target = (*target + 1) % p.targets.len();
            }
            outcome => break outcome,
        }
    };
    let streams = match broadcast {
        true => p.plan.streams,
        false => p.plan.streams_on(topic),
    };
    match outcome {
        Ok(()) => p.tally.published(began.elapsed(), sent, topic, streams),
        Err(e) => p.tally.publish_failed(e.message, update, streams),
    }
}

/// Why a publish failed, and whether another instance might take it.
struct Failed {
    message: String,
    /// No connection, or a `5xx`: the instance is gone or cannot take it now.
    passing: bool,
}

/// Sends one publish and reads the whole answer (so the connection is reused).
async fn send(request: reqwest::RequestBuilder) -> Result<(), Failed> {
    let response = request.send().await.map_err(|e| Failed {
        message: format!("publish: {}", error_chain(&e)),
        passing: true,
    })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| Failed {
        message: format!("publish: reading the answer: {e}"),
        passing: true,
    })?;
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    Err(Failed {
        message: format!("publish answered {status}: {}", text.trim()),
        passing: status.is_server_error(),
    })
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
