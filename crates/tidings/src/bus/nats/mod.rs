//! The NATS bus (`nats://host:4222`): many instances on one NATS server with JetStream.
//!
//! (Just over 600 lines: the publish, replay and connection of one bus, which share the
//! delivered log; the reader is `reader.rs` already.)
//!
//! - **Publish** stores the wire-format message in one JetStream stream (named from the
//!   prefix), on the subject `<prefix>.u.<digest of the update id>`, and is acknowledged once
//!   JetStream stored it. The stream sequence is the update's position: one total order.
//! - **Delivery** (broadcast routing): every instance reads the stream with an ordered
//!   consumer from where it is and hands each update to its hub in sequence order, by the
//!   rules every bus that reads a log keeps (`bus/log.rs`): a sequence that jumps is a gap
//!   (trimmed before it could be read), counted; a repeated id is skipped; a stream NATS lost
//!   is read again from its start at positions past the old ones.
//! - **Replay** is served from what the instance delivered, kept in its memory (the last
//!   `history-size` updates, younger than `history-ttl`): every instance reads the whole
//!   stream, so a resume after a recent id — all of them when an instance dies and its clients
//!   come back elsewhere — costs NATS nothing. An id this instance has not delivered yet
//!   (the client saw it on a faster instance) is placed with one direct get of the last
//!   message on its subject, and waited for. Only an id older than the instance's memory (it
//!   started since), `earliest`, or an unknown id read the stream from JetStream.
//!
//! - **Signals** (the control plane) are core NATS messages on `<stream>.control`, outside the
//!   stream: never stored.
//!
//! JetStream on NATS 2.9 filters a consumer by one subject only, so this bus routes by
//! broadcast whatever `routing` says.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, stream};
use async_nats::ConnectErrorKind;
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::history::LocalHistory;
use super::log::ReadLog;
use super::reconnect::{ConnectionState, Reconnect};
use super::wire::{self, Decoder};
use super::{Bus, BusError, BusOptions, Cause, Published, Replay, ReplayFrom};
use crate::envelope::{now_micros, Envelope};
use crate::hub::Hub;
use crate::locks::lock;
use crate::update::{Update, UpdateId};

mod reader;

pub use tidings_client::nats::{stream_name, subject, TIME_HEADER};

/// The NATS bus. Dropping it stops its delivery task.
#[derive(Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    subject_prefix: String,
    history: bool,
    /// Decodes what history reads from the stream, as the delivery task does.
    decoder: Decoder,
    /// What this instance delivered, kept to serve resumes (see the module documentation).
    delivered: Arc<Delivered>,
    /// The stream was empty when this instance started: what it delivered is all the stream
    /// ever held, so `earliest` and unknown ids are served from memory too.
    memory_complete: bool,
    /// How long one operation may take.
    timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
    /// The control plane's subject, and the task handing what it hears to the hub.
    control: String,
    signals: tokio::task::JoinHandle<()>,
}

/// What the delivery task read and handed to the hub, shared with the bus's replays.
#[derive(Debug)]
struct Delivered {
    /// The stream as read: a message's offset in the log is its sequence - 1 (JetStream
    /// counts from 1), so its position is `epoch << 64 | sequence`. Recorded and dispatched
    /// under this one lock, and replayed under it: a replay is a consistent suffix of what
    /// was delivered, and every later update is delivered live.
    log: Mutex<ReadLog>,
    /// The sequence of the last message read, for a replay waiting for an id it has not
    /// delivered yet.
    last: tokio::sync::watch::Sender<u64>,
}

impl Delivered {
    fn log(&self) -> MutexGuard<'_, ReadLog> {
        lock(&self.log)
    }
}

/// Longest wait for the delivery task to read up to an id a client resumes from.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

impl Drop for NatsBus {
    fn drop(&mut self) {
        self.reader.abort();
        self.signals.abort();
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    super::broker::broker_error(super::Kind::Nats, e)
}

/// A failure the NATS client reported, kept as the error's source.
fn failed(e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    super::broker::client_error(super::Kind::Nats, e)
}

async fn timed<T, E: std::error::Error + Send + Sync + 'static>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BusError> {
    super::broker::with_limit(super::Kind::Nats, limit, f).await
}

/// The offset in the log of the message at `sequence` (JetStream counts from 1).
fn offset(sequence: u64) -> u64 {
    sequence.saturating_sub(1)
}

/// The sequence to read from after the log's last offset read (from the start when nothing
/// was).
fn next_sequence(last: Option<u64>) -> u64 {
    last.map_or(1, |offset| offset + 2)
}

/// True when a stream whose last sequence is `head` cannot be the one this instance read up to
/// `last` (an offset): NATS lost it (restarted without its store) and its sequences started
/// over.
fn stream_lost(head: u64, last: Option<u64>) -> bool {
    last.is_some_and(|offset| head <= offset)
}

/// The publish time a message carries (its `Tidings-Time` header), 0 when it has none.
fn published_at(headers: Option<&async_nats::HeaderMap>) -> u64 {
    headers
        .and_then(|h| h.get(TIME_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

/// Where a replay is served from (see the module documentation): this instance's memory of
/// what it delivered, or JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// What this instance delivered.
    Memory,
    /// Memory if it holds the resume id; else the id is placed in the stream first.
    MemoryOrPlace,
    /// The stream.
    Stream,
}

/// Where a replay from `from` starts looking, with `history` kept and the stream read
/// whole since it was empty (`memory_complete`).
fn source(from: &ReplayFrom, history: bool, memory_complete: bool) -> Source {
    match from {
        ReplayFrom::Now => Source::Memory,
        ReplayFrom::Earliest if history && memory_complete => Source::Memory,
        ReplayFrom::After(_) if history => Source::MemoryOrPlace,
        _ => Source::Stream,
    }
}

impl NatsBus {
    /// Connects to the NATS server at `url`, creates the stream if needed, and starts
    /// delivering to `hub`.
    ///
    /// # Errors
    /// [`BusError::Config`] for a bad address, refused credentials or TLS setup;
    /// [`BusError::Unavailable`] when NATS or JetStream cannot be reached at start-up.
    pub async fn connect(url: &str, options: &BusOptions, hub: Hub) -> Result<Self, BusError> {
        // Bumped at each (re)connection: the delivery consumer is then recreated at once
        // (waiting for the ordered consumer to notice missed heartbeats takes 30 s).
        let (connections_tx, connections) = watch::channel(0u64);
        let connections_tx = Arc::new(connections_tx);
        let backoff = options.backoff;
        let timeout = options.timeouts.operation(super::Kind::Nats);
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| backoff.delay(attempts as u32))
            .event_callback(move |event| {
                let connections = connections_tx.clone();
                async move {
                    if let async_nats::Event::Connected = event {
                        connections.send_modify(|n| *n += 1);
                    }
                }
            })
            .connect(url);
        let client = tokio::time::timeout(timeout.saturating_mul(2), connect)
            .await
            .map_err(|_| {
                BusError::Unavailable(Cause::new(format!(
                    "cannot reach NATS at {}",
                    super::redact(url)
                )))
            })?
            .map_err(|e| {
                let what = format!("cannot reach NATS at {}: {e}", super::redact(url));
                let kind = e.kind();
                let what = Cause::caused_by(what, e);
                // Refused credentials, a bad address or TLS setup: retrying cannot cure them.
                match kind {
                    ConnectErrorKind::ServerParse
                    | ConnectErrorKind::Authentication
                    | ConnectErrorKind::AuthorizationViolation
                    | ConnectErrorKind::Tls => BusError::Config(what),
                    _ => BusError::Unavailable(what),
                }
            })?;
        let mut js = jetstream::new(client.clone());
        // JetStream requests and acknowledgements wait this long too (the library's own
        // limit would otherwise cut a longer one short).
        js.set_timeout(timeout);
        let name = stream_name(&options.prefix);
        let subject_prefix = name.clone();
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject_prefix}.u.>")],
            max_messages: options.history_size.max(1) as i64,
            max_age: options.history_ttl().unwrap_or_default(),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            allow_direct: true,
            // JetStream wants the window within the age limit.
            duplicate_window: match options.history_ttl() {
                Some(ttl) => options.dedup_window().min(ttl),
                None => options.dedup_window(),
            },
            ..Default::default()
        };
        let stream = timed(timeout, js.get_or_create_stream(config.clone()))
            .await
            .map_err(|e| {
                BusError::Unavailable(Cause::caused_by(format!("cannot use JetStream: {e}"), e))
            })?;
        let state = timed(timeout, stream.get_info()).await?.state;
        let (start, memory_complete) = (state.last_sequence, state.messages == 0);
        let decoder = Decoder::new(
            super::Kind::Nats,
            options.limits.clone(),
            hub.metrics().clone(),
        );
        let mut log = ReadLog::new(
            LocalHistory::new(options.history_size, options.history_ttl()),
            decoder.clone(),
        );
        // This instance delivers what is published from now on; the stream's newest update
        // is where fresh streams start, before it delivers anything.
        if start > 0 {
            log.pass(offset(start));
            if let Ok(message) = timed(timeout, stream.get_raw_message(start)).await {
                let at = log.position_of(offset(start));
                let micros = published_at(Some(&message.headers));
                if let Some(newest) = decoder.envelope(&message.payload, start, at, micros) {
                    log.history.record(&newest);
                }
            }
        }
        let delivered = Arc::new(Delivered {
            log: Mutex::new(log),
            last: tokio::sync::watch::Sender::new(start),
        });
        let reconnect = Reconnect::new(
            super::Kind::Nats.broker(),
            options.backoff,
            hub.metrics().bus_reconnects.clone(),
        );
        // The client subscribes again by itself after a reconnect.
        let control = format!("{subject_prefix}.control");
        let mut heard = timed(timeout, client.subscribe(control.clone())).await?;
        let to = hub.clone();
        let signals = tokio::spawn(async move {
            while let Some(message) = heard.next().await {
                to.receive_signal(message.payload);
            }
        });
        let reader = reader::Reader {
            js: js.clone(),
            config,
            stream: stream.clone(),
            filter: format!("{subject_prefix}.u.>"),
            hub,
            delivered: delivered.clone(),
            connections,
            timeout,
        };
        let reader = tokio::spawn(reconnect.run(reader, None));
        Ok(NatsBus {
            client,
            js,
            stream,
            subject_prefix,
            history: options.history_size > 0,
            decoder,
            delivered,
            memory_complete,
            timeout,
            reader,
            control,
            signals,
        })
    }

    /// Reads the stream's messages `from..=to` into envelopes.
    async fn range(&self, from: u64, to: u64) -> Result<Vec<Arc<Envelope>>, BusError> {
        if from > to || to == 0 {
            return Ok(Vec::new());
        }
        let consumer = timed(
            self.timeout,
            self.stream.create_consumer(pull::OrderedConfig {
                filter_subject: format!("{}.u.>", self.subject_prefix),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            }),
        )
        .await?;
        let mut messages = timed(self.timeout, consumer.messages()).await?;
        let mut envelopes = Vec::new();
        loop {
            let message = match tokio::time::timeout(self.timeout, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(failed(e)),
                Ok(None) | Err(_) => return Err(unavailable("history could not be read")),
            };
            let sequence = message.info().map_err(unavailable)?.stream_sequence;
            if sequence >= from {
                let micros = published_at(message.headers.as_ref());
                envelopes.extend(self.envelope(sequence, &message.payload, micros));
            }
            if sequence >= to {
                return Ok(envelopes);
            }
        }
    }

    /// Where the update `id` is in the stream: the last message on its subject, or, for an
    /// id derived from a sequence (`urn:tidings:<n>`, a message published without one), that
    /// sequence if the message there has this id.
    async fn place_of(&self, id: &UpdateId) -> Result<Option<u64>, BusError> {
        let subject = subject(&self.subject_prefix, Some(id.as_str()));
        let last = self.stream.get_last_raw_message_by_subject(&subject);
        match tokio::time::timeout(self.timeout, last).await {
            Ok(Ok(message)) => return Ok(Some(message.sequence)),
            Ok(Err(e)) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
            // Not an answer: an id that may well be there must not be reported as a gap.
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => return Err(unavailable("no answer placing a resume id")),
        }
        let derived = id
            .as_str()
            .strip_prefix("urn:tidings:")
            .and_then(|n| n.parse::<u64>().ok());
        match derived {
            Some(sequence) if self.id_at(sequence).await?.as_ref() == Some(id) => {
                Ok(Some(sequence))
            }
            _ => Ok(None),
        }
    }

    /// The id of the update at `sequence`, if the stream holds it.
    async fn id_at(&self, sequence: u64) -> Result<Option<UpdateId>, BusError> {
        let message = match timed(self.timeout, self.stream.get_raw_message(sequence)).await {
            Ok(message) => message,
            Err(_) => return Ok(None),
        };
        let micros = published_at(Some(&message.headers));
        Ok(self
            .envelope(sequence, &message.payload, micros)
            .map(|e| e.update.id.clone()))
    }

    /// The message at `sequence`, read from the stream, as the delivery task would deliver it.
    fn envelope(&self, sequence: u64, payload: &[u8], micros: u64) -> Option<Arc<Envelope>> {
        let at = self.delivered.log().position_of(offset(sequence));
        self.decoder.envelope(payload, sequence, at, micros)
    }

    /// For a publish JetStream took for a duplicate: refuses it when the update this instance
    /// delivered under that id is on other topics. One it has not delivered yet is taken for
    /// the retry it most likely is (a publish does not wait for the reader).
    fn unless_retry(&self, update: &Update) -> Result<(), BusError> {
        let log = self.delivered.log();
        match log.history.update_of(&update.id) {
            Some(stored) => BusError::unless_retry(stored, update),
            None => Ok(()),
        }
    }

    /// Reads history from JetStream (an id older than what this instance delivered, or
    /// unknown; `earliest`).
    async fn replay_from_stream(&self, from: &ReplayFrom) -> Result<Replay, BusError> {
        let state = timed(self.timeout, self.stream.get_info()).await?.state;
        let (first, head) = (state.first_sequence, state.last_sequence);
        let mut replay = Replay {
            head_id: if head > 0 {
                self.id_at(head).await?
            } else {
                None
            },
            ..Replay::default()
        };
        match from {
            ReplayFrom::Now => {}
            ReplayFrom::Earliest if self.history => {
                replay.updates = self.range(first, head).await?
            }
            ReplayFrom::Earliest => {}
            ReplayFrom::After(id) => {
                let place = match self.history {
                    true => self.place_of(id).await?,
                    false => None,
                };
                match place {
                    Some(sequence) if sequence >= first => {
                        replay.updates = self.range(sequence + 1, head).await?;
                        replay.resumed_at =
                            Some(self.delivered.log().position_of(offset(sequence)));
                    }
                    _ if replay.head_id.as_ref() == Some(id) => {}
                    _ => {
                        replay.missing = true;
                        if self.history {
                            replay.updates = self.range(first, head).await?;
                        }
                    }
                }
            }
        }
        Ok(replay)
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn kind(&self) -> &'static str {
        super::Kind::Nats.name()
    }

    async fn publish(&self, update: Update) -> Result<Published, BusError> {
        // The client would queue a publish while disconnected and send it on reconnect, after
        // the publisher was told it failed: refuse it here instead.
        if self.state() != ConnectionState::Connected {
            return Err(unavailable("not connected"));
        }
        let micros = now_micros();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TIME_HEADER, micros.to_string().as_str());
        // JetStream stores a message id once within the stream's duplicate window.
        headers.insert(async_nats::header::NATS_MESSAGE_ID, update.id.as_str());
        let subject = subject(&self.subject_prefix, Some(update.id.as_str()));
        let message = wire::encode(&update);
        let sent = timed(
            self.timeout,
            self.js
                .publish_with_headers(subject, headers, message.into()),
        )
        .await?;
        let ack = match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) if e.kind() == PublishErrorKind::StreamNotFound => return Err(failed(e)),
            // Sent, but no acknowledgement: JetStream may have stored it.
            Ok(Err(e)) => {
                return Err(BusError::OutcomeUnknown(Cause::caused_by(
                    format!("nats: {e}"),
                    e,
                )))
            }
            Err(_) => {
                return Err(BusError::OutcomeUnknown(Cause::new(format!(
                    "nats: no acknowledgement within {:?}",
                    self.timeout
                ))))
            }
        };
        if ack.duplicate {
            self.unless_retry(&update)?;
        }
        Ok(Published {
            id: update.id,
            position: Some(self.delivered.log().position_of(offset(ack.sequence))),
        })
    }

    /// Serves a replay from memory where it can (see the module documentation), else from
    /// JetStream.
    async fn replay(
        &self,
        from: &ReplayFrom,
        topics: Option<&[Arc<str>]>,
    ) -> Result<Replay, BusError> {
        let from_memory = || Ok(self.delivered.log().history.replay(from, topics));
        // Checked and read under one lock, so that the id cannot be evicted in between.
        let if_known = |id: &UpdateId| {
            let history = &mut self.delivered.log().history;
            history.knows(id).then(|| history.replay(from, topics))
        };
        match (source(from, self.history, self.memory_complete), from) {
            (Source::Memory, _) => return from_memory(),
            (Source::MemoryOrPlace, ReplayFrom::After(id)) => {
                if let Some(replay) = if_known(id) {
                    return Ok(replay);
                }
                match self.place_of(id).await? {
                    // Published, and not read here yet: wait until it is.
                    Some(sequence) => {
                        let mut last = self.delivered.last.subscribe();
                        let read = tokio::time::timeout(
                            CATCH_UP_WAIT,
                            last.wait_for(|last| *last >= sequence),
                        )
                        .await;
                        if read.is_ok_and(|r| r.is_ok()) {
                            if let Some(replay) = if_known(id) {
                                return Ok(replay);
                            }
                        }
                    }
                    // Unknown to the stream too: a gap either way.
                    None if self.memory_complete => return from_memory(),
                    None => {}
                }
            }
            _ => {}
        }
        self.replay_from_stream(from).await
    }

    fn state(&self) -> ConnectionState {
        // Built only once connected: anything but connected is a reconnection.
        match self.client.connection_state() {
            async_nats::connection::State::Connected => ConnectionState::Connected,
            _ => ConnectionState::Reconnecting,
        }
    }

    fn registry(&self) -> Option<Arc<dyn super::Registry>> {
        None
    }

    async fn signal(&self, signal: bytes::Bytes) -> Result<(), BusError> {
        // The client would queue it while disconnected: it would come late, or never.
        if self.state() != ConnectionState::Connected {
            return Err(unavailable("not connected"));
        }
        let control = self.control.clone();
        timed(self.timeout, self.client.publish(control, signal)).await
    }

    /// Every instance consumes the whole stream: it hears everything as soon as it is connected.
    async fn listening(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Position;

    #[test]
    fn sequences_are_offsets_from_one_and_keep_their_positions() {
        assert_eq!(offset(1), 0);
        assert_eq!(next_sequence(None), 1, "nothing read: from the start");
        assert_eq!(next_sequence(Some(offset(7))), 8);
        let hub = Hub::new(8, Arc::new(crate::metrics::Metrics::new()));
        let decoder = Decoder::new(
            super::super::Kind::Nats,
            crate::update::Limits::default(),
            hub.metrics().clone(),
        );
        let mut log = ReadLog::new(LocalHistory::new(10, None), decoder);
        // An instance starting on a stream whose head is 5 delivers from 6 on.
        log.pass(offset(5));
        assert_eq!(next_sequence(log.last()), 6);
        assert_eq!(log.advance(offset(5), &hub), None, "read before it started");
        assert_eq!(log.advance(offset(6), &hub), Some(Position(6)));
        assert_eq!(log.position_of(offset(9)), Position(9));
    }

    #[test]
    fn a_stream_behind_what_was_read_was_lost() {
        assert!(!stream_lost(0, None), "nothing read: nothing to lose");
        assert!(!stream_lost(5, Some(offset(5))), "the same head");
        assert!(!stream_lost(9, Some(offset(5))), "published since");
        assert!(stream_lost(4, Some(offset(5))), "sequences started over");
        assert!(stream_lost(0, Some(offset(1))), "an empty new stream");
    }

    #[test]
    fn replays_are_served_from_memory_where_it_holds_them() {
        let after = ReplayFrom::After(UpdateId::new("u", 10).unwrap());
        for (history, complete) in [(true, true), (true, false), (false, true), (false, false)] {
            assert_eq!(source(&ReplayFrom::Now, history, complete), Source::Memory);
        }
        assert_eq!(source(&ReplayFrom::Earliest, true, true), Source::Memory);
        assert_eq!(
            source(&ReplayFrom::Earliest, true, false),
            Source::Stream,
            "an instance that started on a non-empty stream did not read it all"
        );
        assert_eq!(source(&after, true, false), Source::MemoryOrPlace);
        assert_eq!(source(&after, true, true), Source::MemoryOrPlace);
        assert_eq!(
            source(&after, false, true),
            Source::Stream,
            "without history the stream answers the gap"
        );
    }

    #[test]
    fn a_message_without_a_time_header_is_published_now() {
        let mut headers = async_nats::HeaderMap::new();
        assert_eq!(published_at(None), 0);
        assert_eq!(published_at(Some(&headers)), 0);
        headers.insert(TIME_HEADER, "1700000000000000");
        assert_eq!(published_at(Some(&headers)), 1_700_000_000_000_000);
        headers.insert(TIME_HEADER, "soon");
        assert_eq!(published_at(Some(&headers)), 0);
    }
}
