//! The cluster: what the instances of one bus know of each other and do for each other, over
//! the bus's signals (the control plane, [`Bus::signal`]) — on every bus alike.
//!
//! - **Membership**: every instance says it is alive every `cluster-heartbeat`, with its
//!   figures ([`Member`]), and at once to an instance it hears for the first time (so that a
//!   newcomer knows everyone within a round trip); one that misses three of its heartbeats is
//!   gone from the others' view, and one that stops cleanly says so at once.
//! - **Questions** ([`Question`]): an operation that concerns the whole cluster — where
//!   sessions are online, a subject's streams, the selectors subscribed to, a disconnect — is
//!   asked of every instance at once (this one answers for itself), and the answers are
//!   gathered until every live member answered or `cluster-deadline` passed: an instance that
//!   did not answer is named, never silently left out.
//! - **Presence** is a question too, except on a bus that keeps a registry (Redis), which
//!   answers it from what it stored.
//!
//! Signals are not updates: an instance that is not connected when one is sent never hears
//! it (a disconnect then misses the streams it holds, which the answer shows: it did not
//! answer).

mod signal;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use crate::bus::{Bus, BusError};
use crate::hub::{Farewell, Hub, Streams};
use crate::subscriber::SubscriberSpec;
use crate::update::SessionId;
use signal::Signal;
pub use signal::{Answer, Member, Question, StreamRecord, MAX_LISTED};

/// Heartbeats a member may miss before the others count it gone.
pub const MISSED_BEATS: u32 = 3;

/// How an instance takes part in its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This instance's id (`instance-id`).
    pub instance_id: String,
    /// Where it listens, as others should be told (until the server says where it listens:
    /// [`Cluster::listening_on`]).
    pub address: String,
    /// Between two heartbeats (`cluster-heartbeat`).
    pub heartbeat: Duration,
    /// How long a question waits for the instances' answers (`cluster-deadline`).
    pub deadline: Duration,
}

/// What a question to the cluster gathered.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    /// Each instance's answer, this instance's first, then by instance id.
    pub answers: Vec<(String, Answer)>,
    /// The live members that did not answer in time, by id.
    pub missing: Vec<String>,
}

/// One instance's part in its cluster; cheap to clone. Its task runs until [`Cluster::stop`].
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hub: Hub,
    bus: Arc<dyn Bus>,
    settings: ClusterSettings,
    /// Where this instance listens, as its heartbeat says.
    address: Mutex<String>,
    version: &'static str,
    started_at: u64,
    /// The other instances, by id, with when their last heartbeat came.
    members: Mutex<HashMap<String, (Member, Instant)>>,
    /// The questions this instance waits for answers to, by number.
    asks: Mutex<HashMap<u64, mpsc::UnboundedSender<(String, Answer)>>>,
    next_ask: AtomicU64,
    draining: AtomicBool,
    /// The delivery latency histogram's count and sum at the last heartbeat.
    delivered: Mutex<(u64, u64)>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Signals it cannot read are logged at most once a second.
    unreadable: crate::throttle::LogOncePerSecond,
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// Joins the cluster of `bus`: listens to its signals and beats from now on.
    pub fn start(hub: Hub, bus: Arc<dyn Bus>, settings: ClusterSettings) -> Self {
        let signals = hub.signals();
        let cluster = Cluster {
            inner: Arc::new(Inner {
                hub,
                bus,
                address: Mutex::new(settings.address.clone()),
                settings,
                version: env!("CARGO_PKG_VERSION"),
                started_at: now_millis(),
                members: Mutex::new(HashMap::new()),
                asks: Mutex::new(HashMap::new()),
                next_ask: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                delivered: Mutex::new((0, 0)),
                task: Mutex::new(None),
                unreadable: crate::throttle::LogOncePerSecond::default(),
            }),
        };
        let task = tokio::spawn(cluster.clone().run(signals));
        *crate::locks::lock(&cluster.inner.task) = Some(task);
        cluster
    }

    /// This instance's id.
    pub fn id(&self) -> &str {
        &self.inner.settings.instance_id
    }

    /// Says where this instance listens (its URL), from now on.
    pub fn listening_on(&self, address: String) {
        *crate::locks::lock(&self.inner.address) = address;
    }

    /// Marks this instance draining (its next heartbeat says so).
    pub fn draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Leaves the cluster: tells the others (best effort) and stops beating.
    pub async fn stop(&self) {
        if let Some(task) = crate::locks::lock(&self.inner.task).take() {
            task.abort();
        }
        let leave = Signal::Leave {
            id: self.id().to_owned(),
        };
        let _ = self.send(&leave).await;
    }

    /// This instance as its heartbeat describes it now.
    pub fn me(&self) -> Member {
        let inner = &self.inner;
        Member {
            id: inner.settings.instance_id.clone(),
            address: crate::locks::lock(&inner.address).clone(),
            version: inner.version.to_owned(),
            started_at: inner.started_at,
            streams: inner.hub.subscriber_count(),
            sessions: inner.hub.session_count(),
            bus: inner.bus.state().name().to_owned(),
            delivery_lag_ms: None,
            draining: inner.draining.load(Ordering::Relaxed),
            heartbeat_ms: inner.settings.heartbeat.as_millis() as u64,
        }
    }

    /// Every live instance — this one first, then the others by id — with how long ago each
    /// was last heard from (this one: 0).
    pub fn members(&self) -> Vec<(Member, Duration)> {
        let mut others: Vec<(Member, Duration)> = self
            .live()
            .into_iter()
            .map(|(member, at)| (member, at.elapsed()))
            .collect();
        others.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut all = vec![(self.me(), Duration::ZERO)];
        all.extend(others);
        all
    }

    /// The other members whose heartbeat is recent enough, dropping those that are not.
    fn live(&self) -> Vec<(Member, Instant)> {
        let mut members = crate::locks::lock(&self.inner.members);
        members.retain(|id, (member, at)| {
            let alive = at.elapsed() < gone_after(member);
            if !alive {
                tracing::warn!(instance = %id, "cluster: an instance stopped beating; counting it gone");
            }
            alive
        });
        members.values().cloned().collect()
    }

    /// Where each of `sessions` is online, cluster-wide: for each, in order, the instances
    /// holding streams of it with how many (empty: offline). Answered by the bus's registry
    /// where it keeps one, else asked of every instance.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when neither can be reached.
    pub async fn presence(
        &self,
        sessions: &[SessionId],
    ) -> Result<(Vec<Vec<(String, usize)>>, Vec<String>), BusError> {
        if let Some(registry) = self.inner.bus.registry() {
            return Ok((registry.sessions_presence(sessions).await?, Vec::new()));
        }
        let question = Question::Presence {
            sessions: sessions.to_vec(),
        };
        let gathered = self.ask(question).await?;
        let mut presence = vec![Vec::new(); sessions.len()];
        for (instance, answer) in gathered.answers {
            if let Answer::Presence { held } = answer {
                for (at, streams) in held {
                    if let Some(slot) = presence.get_mut(at) {
                        slot.push((instance.clone(), streams));
                    }
                }
            }
        }
        for slot in &mut presence {
            slot.sort();
        }
        Ok((presence, gathered.missing))
    }

    /// Asks every live instance `question` and gathers the answers (see the module
    /// documentation).
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the question cannot be sent (this instance's own
    /// answer is then not given either: a disconnect is all or nothing at the sender).
    pub async fn ask(&self, question: Question) -> Result<Gathered, BusError> {
        let inner = &self.inner;
        let expected: HashSet<String> = self.live().into_iter().map(|(m, _)| m.id).collect();
        let ask = inner.next_ask.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        crate::locks::lock(&inner.asks).insert(ask, tx);
        let _forget = Forget(self, ask);
        self.send(&Signal::Ask {
            from: self.id().to_owned(),
            ask,
            question: question.clone(),
        })
        .await?;
        let own = self.answer(&question);
        let mut answers: HashMap<String, Answer> = HashMap::new();
        let deadline = tokio::time::sleep(inner.settings.deadline);
        tokio::pin!(deadline);
        while !expected.iter().all(|id| answers.contains_key(id)) {
            tokio::select! {
                answer = rx.recv() => match answer {
                    Some((from, answer)) => { answers.insert(from, answer); }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let mut missing: Vec<String> = expected
            .into_iter()
            .filter(|id| !answers.contains_key(id))
            .collect();
        missing.sort();
        let mut others: Vec<(String, Answer)> = answers.into_iter().collect();
        others.sort_by(|a, b| a.0.cmp(&b.0));
        let mut all = vec![(self.id().to_owned(), own)];
        all.extend(others);
        Ok(Gathered {
            answers: all,
            missing,
        })
    }

    /// This instance's answer to `question`.
    fn answer(&self, question: &Question) -> Answer {
        let hub = &self.inner.hub;
        match question {
            Question::Presence { sessions } => Answer::Presence {
                held: sessions
                    .iter()
                    .enumerate()
                    .filter_map(|(at, s)| match hub.session_streams(s) {
                        0 => None,
                        n => Some((at, n)),
                    })
                    .collect(),
            },
            Question::Streams { which } => {
                let streams = hub.streams(which);
                Answer::Streams {
                    truncated: streams.len() > MAX_LISTED,
                    streams: streams
                        .iter()
                        .take(MAX_LISTED)
                        .map(|spec| self.record(spec))
                        .collect(),
                }
            }
            Question::Selectors { prefix } => {
                let selectors = hub.selector_counts(prefix);
                Answer::Selectors {
                    truncated: selectors.len() > MAX_LISTED,
                    selectors: selectors
                        .into_iter()
                        .take(MAX_LISTED)
                        .map(|(s, n)| (s.to_string(), n))
                        .collect(),
                }
            }
            Question::Disconnect { which, farewell } => Answer::Disconnected {
                streams: hub.disconnect(which, farewell),
            },
        }
    }

    fn record(&self, spec: &SubscriberSpec) -> StreamRecord {
        StreamRecord {
            id: spec.label.iri.to_string(),
            instance: self.id().to_owned(),
            session: spec.session.as_ref().map(|s| s.as_str().to_owned()),
            subject: spec.label.subject.as_deref().map(str::to_owned),
            selectors: spec
                .selectors
                .iter()
                .map(|s| s.source().to_owned())
                .collect(),
            address: spec.label.address.map(|a| a.to_string()),
        }
    }

    /// Ends `which` streams on every instance, each with `farewell`: how many each ended.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the bus cannot send the question now.
    pub async fn disconnect(
        &self,
        which: Streams,
        farewell: Farewell,
    ) -> Result<Gathered, BusError> {
        self.ask(Question::Disconnect { which, farewell }).await
    }

    async fn send(&self, signal: &Signal) -> Result<(), BusError> {
        let text = serde_json::to_vec(signal).unwrap_or_default();
        self.inner.bus.signal(Bytes::from(text)).await
    }

    /// Beats, and hears and answers the others, until stopped.
    async fn run(self, mut signals: broadcast::Receiver<Bytes>) {
        let mut beat = tokio::time::interval(self.inner.settings.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let member = self.beat();
                    if let Err(e) = self.send(&Signal::Beat { member }).await {
                        tracing::debug!(error = %e, "cluster: cannot send a heartbeat");
                    }
                    // Drops the members that stopped beating (and says so).
                    self.live();
                }
                heard = signals.recv() => match heard {
                    Ok(signal) => self.hear(&signal).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "cluster: fell behind the control plane; some signals were missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// This instance's heartbeat: [`Cluster::me`] with its delivery lag since the last one.
    fn beat(&self) -> Member {
        let mut member = self.me();
        let (count, sum) = self.inner.hub.metrics().delivery_latency.totals();
        let mut last = crate::locks::lock(&self.inner.delivered);
        let (n, micros) = (count.saturating_sub(last.0), sum.saturating_sub(last.1));
        *last = (count, sum);
        member.delivery_lag_ms = (n > 0).then(|| micros as f64 / n as f64 / 1000.0);
        member
    }

    async fn hear(&self, signal: &[u8]) {
        let signal: Signal = match serde_json::from_slice(signal) {
            Ok(signal) => signal,
            Err(e) => {
                if self.inner.unreadable.allow() {
                    tracing::warn!(error = %e, "cluster: skipping a signal it cannot read");
                }
                return;
            }
        };
        let me = self.id();
        match signal {
            Signal::Beat { member } if member.id != me => {
                let (id, address) = (member.id.clone(), member.address.clone());
                let joined = crate::locks::lock(&self.inner.members)
                    .insert(id.clone(), (member, Instant::now()))
                    .is_none();
                // A newcomer hears from everyone at once, not a heartbeat later.
                if joined {
                    tracing::info!(instance = %id, %address, "cluster: an instance joined");
                    let member = self.me();
                    if let Err(e) = self.send(&Signal::Beat { member }).await {
                        tracing::debug!(error = %e, "cluster: cannot greet an instance");
                    }
                }
            }
            Signal::Leave { id } if id != me && self.forget(&id) => {
                tracing::info!(instance = %id, "cluster: an instance left");
            }
            Signal::Ask {
                from,
                ask,
                question,
            } if from != me => {
                let answer = self.answer(&question);
                let reply = Signal::Answer {
                    to: from,
                    from: me.to_owned(),
                    ask,
                    answer,
                };
                if let Err(e) = self.send(&reply).await {
                    tracing::debug!(error = %e, "cluster: cannot answer a question");
                }
            }
            Signal::Answer {
                to,
                from,
                ask,
                answer,
            } if to == me => {
                if let Some(waiting) = crate::locks::lock(&self.inner.asks).get(&ask) {
                    let _ = waiting.send((from, answer));
                }
            }
            _ => {}
        }
    }
}

impl Cluster {
    /// Counts a member out: whether it was in.
    fn forget(&self, id: &str) -> bool {
        crate::locks::lock(&self.inner.members).remove(id).is_some()
    }
}

/// How long after its last heartbeat a member counts as gone.
fn gone_after(member: &Member) -> Duration {
    Duration::from_millis(member.heartbeat_ms.max(1)).saturating_mul(MISSED_BEATS)
}

/// Forgets a question when its asker stops waiting (answered, timed out, or dropped).
struct Forget<'a>(&'a Cluster, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        crate::locks::lock(&self.0.inner.asks).remove(&self.1);
    }
}
