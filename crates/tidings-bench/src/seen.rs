//! What one stream has received: which updates of its topic and of the broadcasts arrived,
//! and whether each was new, a repeat (and of what: a resume's replay, or the same connection),
//! out of order, or not the bench's at all — counted in the run's [`Tally`].

use std::sync::atomic::Ordering::Relaxed;

use super::plan::Stamp;
use super::stream::Broadcasts;
use super::tally::{Tally, Update};

/// The event a hub sends before replaying all it holds, when it cannot resume exactly
/// (`docs/clustering.md`, "Resume"): what follows repeats what the stream had.
const GAP_EVENT: &str = "tidings-gap";

/// Which updates a stream has received: of its topic, and of the broadcasts.
pub(super) struct Seen {
    topic: u64,
    /// Its connection ended before and it came back (`--reconnect`).
    pub(super) moved: bool,
    own: Received,
    /// The broadcast topic's number: one past the last topic, so also how many there are.
    broadcast_topic: u64,
    broadcasts: Received,
}

/// Which of one topic's updates have arrived.
struct Received {
    bits: Vec<u64>,
    /// Those that arrived on the current connection: a repeat of one that did not was
    /// replayed by a resume, a repeat of one that did was sent twice on one connection.
    this_connection: Vec<u64>,
    expected: u64,
    unique: u64,
    /// The highest sequence number received so far.
    highest: Option<u64>,
}

/// What one received update was to its stream.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// Received for the first time; `in_order` unless a later one came first.
    First { in_order: bool },
    /// Received before: on this connection, or on an earlier one.
    Repeat { same_connection: bool },
    /// A number the topic never gets.
    Unknown,
}

impl Seen {
    /// A stream on `topic` that expects `expected` deliveries, the broadcasts included.
    pub(super) fn new(topic: u64, expected: u64, broadcasts: &Broadcasts) -> Seen {
        Seen {
            topic,
            moved: false,
            own: Received::new(expected - broadcasts.count),
            broadcast_topic: broadcasts.topic,
            broadcasts: Received::new(broadcasts.count),
        }
    }

    /// Deliveries received at least once.
    pub(super) fn unique(&self) -> u64 {
        self.own.unique + self.broadcasts.unique
    }

    /// The stream connects again: what arrives next arrives on a new connection.
    pub(super) fn reconnected(&mut self) {
        self.own.this_connection.fill(0);
        self.broadcasts.this_connection.fill(0);
    }

    /// Checks one event (its `event:` type and data) and counts it.
    pub(super) fn event(&mut self, event_type: &str, data: &str, tally: &Tally) {
        if event_type == GAP_EVENT {
            // The hub could not resume exactly and replays all it holds: repeats follow.
            let reason = serde_json::from_str::<serde_json::Value>(data)
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_owned))
                .unwrap_or_else(|| data.to_owned());
            return tally.error(format!("a resume got a gap notice: {reason}"));
        }
        let stamp = Stamp::parse(data);
        let (received, update) = match &stamp {
            // (Update `j` of the plan is number `j / topics` of topic `j % topics`.)
            Some(stamp) if stamp.k == self.topic => (
                &mut self.own,
                Update::Topic(stamp.s * self.broadcast_topic + stamp.k),
            ),
            Some(stamp) if stamp.k == self.broadcast_topic && self.broadcasts.expected > 0 => {
                (&mut self.broadcasts, Update::Broadcast(stamp.s))
            }
            _ => {
                tally.stray.fetch_add(1, Relaxed);
                return;
            }
        };
        let Some(stamp) = stamp else { return };
        match received.record(stamp.s) {
            Arrival::First { in_order } => {
                tally.delivered(stamp.t, true, self.moved, update);
                if !in_order {
                    tally.out_of_order.fetch_add(1, Relaxed);
                }
            }
            Arrival::Repeat { same_connection } => {
                tally.delivered(stamp.t, false, self.moved, update);
                tally.error(match same_connection {
                    true => "an update arrived twice on one connection".into(),
                    false => "an update arrived again after a resume (the replay overlapped what had arrived)".into(),
                });
            }
            Arrival::Unknown => tally.error(format!(
                "update {} on topic {} is past the topic's last",
                stamp.s, stamp.k
            )),
        }
    }
}

impl Received {
    fn new(expected: u64) -> Received {
        Received {
            bits: vec![0; expected.div_ceil(64) as usize],
            this_connection: vec![0; expected.div_ceil(64) as usize],
            expected,
            unique: 0,
            highest: None,
        }
    }

    fn record(&mut self, seq: u64) -> Arrival {
        if seq >= self.expected {
            return Arrival::Unknown;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        let same_connection = self.this_connection[word] & bit != 0;
        self.this_connection[word] |= bit;
        if self.bits[word] & bit != 0 {
            return Arrival::Repeat { same_connection };
        }
        self.bits[word] |= bit;
        self.unique += 1;
        let in_order = self.highest.is_none_or(|h| seq > h);
        self.highest = self.highest.max(Some(seq));
        Arrival::First { in_order }
    }
}

#[cfg(test)]
mod tests {
    use super::{Arrival, Broadcasts, Received, Seen, GAP_EVENT};
    use crate::plan::payload;
    use crate::tally::Tally;
    use std::sync::atomic::Ordering::Relaxed;

    /// `count` broadcasts, numbered as topic 10.
    fn on_topic_10(count: u64) -> Broadcasts {
        Broadcasts {
            topic: 10,
            count,
            name: None,
        }
    }

    #[test]
    fn a_stream_tells_first_deliveries_from_repeats_late_ones_and_strays() {
        let mut seen = Received::new(130);
        assert_eq!(seen.record(0), Arrival::First { in_order: true });
        assert_eq!(seen.record(129), Arrival::First { in_order: true });
        assert_eq!(seen.record(5), Arrival::First { in_order: false });
        assert_eq!(
            seen.record(0),
            Arrival::Repeat {
                same_connection: true
            }
        );
        assert_eq!(seen.record(130), Arrival::Unknown);
        assert_eq!(seen.unique, 3);
    }

    #[test]
    fn broadcasts_are_counted_apart_from_the_stream_s_topic() {
        let broadcasts = on_topic_10(2);
        let tally = Tally::new(50, 2);
        let mut seen = Seen::new(3, 5 + 2, &broadcasts);
        for (topic, seq) in [(3, 0), (10, 0), (10, 1), (10, 0), (3, 1), (4, 0)] {
            seen.event("message", &payload(topic, seq, 0, 50), &tally);
        }
        seen.event("message", "not a bench update", &tally);
        assert_eq!((seen.own.unique, seen.broadcasts.unique), (2, 2));
        assert_eq!(seen.unique(), 4);
        assert_eq!(tally.duplicates.load(Relaxed), 1);
        assert_eq!(tally.stray.load(Relaxed), 2);
        assert_eq!(tally.broadcast_reached(), vec![1, 1]);
        let mut without = Seen::new(3, 5, &on_topic_10(0));
        without.event("message", &payload(10, 0, 0, 50), &tally);
        assert_eq!(tally.stray.load(Relaxed), 3);
    }

    #[test]
    fn repeats_say_whether_a_resume_replayed_them_and_gap_notices_are_errors() {
        let broadcasts = on_topic_10(1);
        let tally = Tally::new(30, 1);
        let mut seen = Seen::new(3, 3 + 1, &broadcasts);
        seen.event("message", &payload(3, 0, 0, 50), &tally);
        seen.event("message", &payload(3, 0, 0, 50), &tally);
        seen.reconnected();
        seen.event("message", &payload(3, 0, 0, 50), &tally);
        seen.event("message", &payload(3, 1, 0, 50), &tally);
        let gap = r#"{"lastEventId":"x","reason":"the id is not in history","replayedFrom":null}"#;
        seen.event(GAP_EVENT, gap, &tally);
        assert_eq!(tally.duplicates.load(Relaxed), 2);
        assert_eq!(tally.stray.load(Relaxed), 0);
        let errors = tally.errors();
        assert_eq!(errors["an update arrived twice on one connection"], 1);
        assert_eq!(
            errors
                ["an update arrived again after a resume (the replay overlapped what had arrived)"],
            1
        );
        assert_eq!(
            errors["a resume got a gap notice: the id is not in history"],
            1
        );
    }
}
