//! Who subscribes to what and which update goes where: the arithmetic both the streams and
//! the publishers follow, and the payload every update carries.

use serde::Deserialize;

/// How many topics the streams share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Topics {
    /// This many topics, streams assigned round-robin.
    Count(u64),
    /// One topic per stream.
    Each,
}

impl std::str::FromStr for Topics {
    type Err = String;

    fn from_str(s: &str) -> Result<Topics, String> {
        if s == "each" {
            return Ok(Topics::Each);
        }
        match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Topics::Count(n)),
            _ => Err(format!(
                "{s:?} is not a number of topics (1 or more) or `each`"
            )),
        }
    }
}

/// Stream `i` is on topic `i % topics`; update `j` goes to topic `j % topics` as that
/// topic's update number `j / topics`. With broadcasts, every stream also holds the broadcast
/// topic, whose updates carry the topic number `topics` (one past the last).
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) streams: u64,
    pub(super) topics: u64,
    pub(super) updates: u64,
    /// Updates to the broadcast topic.
    pub(super) broadcasts: u64,
    prefix: String,
}

impl Plan {
    pub(super) fn new(
        streams: u64,
        topics: Topics,
        updates: u64,
        broadcasts: u64,
        prefix: &str,
    ) -> Plan {
        let topics = match topics {
            Topics::Count(n) => n,
            Topics::Each => streams,
        };
        Plan {
            streams,
            topics,
            updates,
            broadcasts,
            prefix: prefix.to_owned(),
        }
    }

    /// The topic stream `i` subscribes to.
    pub(super) fn topic_of_stream(&self, i: u64) -> u64 {
        i % self.topics
    }

    /// How many streams subscribe to `topic`.
    pub(super) fn streams_on(&self, topic: u64) -> u64 {
        share(self.streams, self.topics, topic)
    }

    /// How many updates `topic` gets.
    pub(super) fn updates_on(&self, topic: u64) -> u64 {
        share(self.updates, self.topics, topic)
    }

    /// The topic and per-topic sequence number of update `j`.
    pub(super) fn update(&self, j: u64) -> (u64, u64) {
        (j % self.topics, j / self.topics)
    }

    /// Deliveries the run expects: each update once to each stream on its topic, each
    /// broadcast once to every stream.
    pub(super) fn expected(&self) -> u64 {
        (0..self.topics.min(self.updates))
            .map(|t| self.streams_on(t) * self.updates_on(t))
            .sum::<u64>()
            + self.broadcasts * self.streams
    }

    /// Deliveries stream `i` expects.
    pub(super) fn expected_on_stream(&self, i: u64) -> u64 {
        self.updates_on(self.topic_of_stream(i)) + self.broadcasts
    }

    /// The number broadcast updates carry as their topic.
    pub(super) fn broadcast_topic(&self) -> u64 {
        self.topics
    }

    /// What every topic's name starts with.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic's name on the hub.
    pub(super) fn topic_name(&self, topic: u64) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// The broadcast topic's name on the hub.
    pub(super) fn broadcast_name(&self) -> String {
        format!("{}all", self.prefix)
    }
}

/// Items `0..total` dealt round-robin over `parts`: how many part `index` gets.
fn share(total: u64, parts: u64, index: u64) -> u64 {
    total / parts + u64::from(index < total % parts)
}

/// The JSON object an update carries, padded with `p` to about `size` bytes: `k` is the
/// topic, `s` the sequence number on it, `t` the send time on the run's clock (µs).
pub(super) fn payload(topic: u64, seq: u64, sent_us: u64, size: usize) -> String {
    let mut payload = format!(r#"{{"k":{topic},"s":{seq},"t":{sent_us},"p":""#);
    let pad = size.saturating_sub(payload.len() + 2);
    payload.extend(std::iter::repeat_n('x', pad));
    payload.push_str("\"}");
    payload
}

/// What a stream reads back from a payload.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) k: u64,
    pub(super) s: u64,
    pub(super) t: u64,
}

impl Stamp {
    /// The stamp of an event's data, or `None` for data that is not a bench payload.
    pub(super) fn parse(data: &str) -> Option<Stamp> {
        serde_json::from_str(data).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_update_and_stream_is_counted_once() {
        for (streams, topics, updates) in [(10, 3, 7), (5, 5, 5), (4, 1, 100), (3, 3, 1)] {
            let plan = Plan::new(streams, Topics::Count(topics), updates, 0, "t-");
            let by_topic: u64 = (0..topics).map(|t| plan.streams_on(t)).sum();
            assert_eq!(by_topic, streams);
            let mut expected = 0;
            for j in 0..updates {
                let (topic, _) = plan.update(j);
                expected += (0..streams)
                    .filter(|i| plan.topic_of_stream(*i) == topic)
                    .count() as u64;
            }
            assert_eq!(plan.expected(), expected, "{streams} {topics} {updates}");
        }
        assert_eq!(Plan::new(7, Topics::Each, 7, 0, "").expected(), 7);
        let plan = Plan::new(10, Topics::Count(3), 7, 2, "");
        // Topics 0, 1, 2 have 4, 3, 3 streams and 3, 2, 2 updates; 2 broadcasts to 10.
        assert_eq!(plan.expected(), 4 * 3 + 3 * 2 + 3 * 2 + 2 * 10);
        let each: u64 = (0..10).map(|i| plan.expected_on_stream(i)).sum();
        assert_eq!(each, plan.expected());
    }

    #[test]
    fn payloads_have_the_asked_size_and_read_back() {
        let p = payload(3, 9, 123_456, 200);
        assert_eq!(p.len(), 200);
        assert_eq!(
            Stamp::parse(&p),
            Some(Stamp {
                k: 3,
                s: 9,
                t: 123_456
            })
        );
        assert!(payload(1, 1, 1, 0).len() < 40);
        assert_eq!(Stamp::parse("hello"), None);
        assert_eq!("each".parse::<Topics>(), Ok(Topics::Each));
        assert!("0".parse::<Topics>().is_err());
    }
}
