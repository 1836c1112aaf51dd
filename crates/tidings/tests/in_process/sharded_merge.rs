//! The merge rule of history sharded over several primaries (`docs/scaling.md`), as a model,
//! held to its promise by a property test: a subscriber whose selectors span shards gets every
//! update of those shards once, in one order (the same for every subscriber), across any
//! number of disconnects and resumes — whatever the delays between shards and instance, and
//! however skewed the shards' clocks.
//!
//! The rule: each shard stamps its updates with a hybrid time `t` (its clock, but always above
//! its last stamp) and its own position; the merged order is `(t, shard, position)`. A shard
//! also sends a watermark when idle: a promise that nothing it sends later is stamped at or
//! below it. An instance releases the smallest update it holds once every selected shard's
//! watermark (or latest update) has reached that update's `t`. A client resumes from the key
//! of the last update it got: each shard replays what it holds after that key.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// An update's place in the merged order.
type Key = (u64, usize, u64);

/// One shard: a primary with its own clock and its own log.
struct Shard {
    skew: i64,
    last_t: u64,
    log: Vec<Key>,
}

impl Shard {
    fn clock(&self, now: u64) -> u64 {
        now.saturating_add_signed(self.skew)
    }

    /// Stores an update published at `now`; its key.
    fn publish(&mut self, id: usize, now: u64) -> Key {
        self.last_t = self.clock(now).max(self.last_t + 1);
        let key = (self.last_t, id, self.log.len() as u64);
        self.log.push(key);
        key
    }

    /// A watermark: nothing later from this shard is stamped at or below it.
    fn watermark(&mut self, now: u64) -> u64 {
        self.last_t = self.last_t.max(self.clock(now));
        self.last_t
    }
}

/// What a shard sends an instance, in the shard's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Message {
    Update(Key),
    Watermark(u64),
}

/// One subscriber's merge on an instance.
struct Merger {
    selected: Vec<usize>,
    /// Per selected shard, the highest stamp it sent (update or watermark).
    seen: BTreeMap<usize, u64>,
    held: BTreeSet<Key>,
    /// The last key released (or the resume point).
    through: Option<Key>,
}

impl Merger {
    fn new(selected: &[usize], from: Option<Key>) -> Merger {
        Merger {
            selected: selected.to_vec(),
            seen: BTreeMap::new(),
            held: BTreeSet::new(),
            through: from,
        }
    }

    fn receive(&mut self, shard: usize, message: Message) {
        let stamp = match message {
            Message::Update(key) => {
                if self.through.is_none_or(|t| key > t) {
                    self.held.insert(key);
                }
                key.0
            }
            Message::Watermark(t) => t,
        };
        let seen = self.seen.entry(shard).or_insert(0);
        *seen = (*seen).max(stamp);
    }

    /// Releases, in order, what no shard can still precede.
    fn release(&mut self, out: &mut Vec<Key>) {
        while let Some(&first) = self.held.first() {
            let safe = self
                .selected
                .iter()
                .all(|s| self.seen.get(s).is_some_and(|&t| t >= first.0));
            if !safe {
                return;
            }
            self.held.remove(&first);
            self.through = Some(first);
            out.push(first);
        }
    }
}

/// A delivery to the instance at a time, in order of time, then of sending.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Arrival {
    at: std::cmp::Reverse<(u64, u64)>,
    shard: usize,
    /// The subscriber's connection it was sent on (stale after a reconnect).
    connection: u64,
    message: Message,
}

/// The links from the shards to the instance: each delivers in order, after a random delay.
struct Links {
    queue: BinaryHeap<Arrival>,
    /// Per shard, the time its last message reaches the instance.
    free_at: Vec<u64>,
    sent: u64,
}

impl Links {
    fn send(
        &mut self,
        rng: &mut StdRng,
        shard: usize,
        connection: u64,
        now: u64,
        message: Message,
    ) {
        let at = (now + rng.random_range(0..40)).max(self.free_at[shard]);
        self.free_at[shard] = at;
        self.sent += 1;
        self.queue.push(Arrival {
            at: std::cmp::Reverse((at, self.sent)),
            shard,
            connection,
            message,
        });
    }
}

/// Runs one scenario; returns what the subscriber got, and what it should have got.
fn run(seed: u64, shards: usize, selected: &[usize], updates: usize) -> (Vec<Key>, Vec<Key>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut shards: Vec<Shard> = (0..shards)
        .map(|_| Shard {
            skew: rng.random_range(-50..=50),
            last_t: 0,
            log: Vec::new(),
        })
        .collect();
    let mut links = Links {
        queue: BinaryHeap::new(),
        free_at: vec![0; shards.len()],
        sent: 0,
    };
    let mut connection = 0u64;
    let mut merger = Merger::new(selected, None);
    let mut got = Vec::new();
    let mut now = 0u64;
    let mut published = 0;
    let mut last_event = 0u64;
    while published < updates || !links.queue.is_empty() {
        now += rng.random_range(1..10);
        // Publish on a random shard, or send a watermark from one.
        if published < updates && rng.random_bool(0.7) {
            let shard = rng.random_range(0..shards.len());
            let key = shards[shard].publish(shard, now);
            published += 1;
            if selected.contains(&shard) {
                links.send(&mut rng, shard, connection, now, Message::Update(key));
            }
        } else {
            for shard in selected {
                let t = shards[*shard].watermark(now);
                links.send(&mut rng, *shard, connection, now, Message::Watermark(t));
            }
        }
        // Sometimes the connection drops; the client resumes from the last key it got: a new
        // merge on (perhaps) another instance, and each shard replays what it holds after it.
        if rng.random_bool(0.03) {
            connection += 1;
            let from = merger.through.or(got.last().copied());
            merger = Merger::new(selected, from);
            for &shard in selected {
                let replay: Vec<Key> = shards[shard]
                    .log
                    .iter()
                    .copied()
                    .filter(|k| from.is_none_or(|f| *k > f))
                    .collect();
                for key in replay {
                    links.send(&mut rng, shard, connection, now, Message::Update(key));
                }
                let t = shards[shard].watermark(now);
                links.send(&mut rng, shard, connection, now, Message::Watermark(t));
            }
        }
        // Deliver what has arrived by now.
        while links
            .queue
            .peek()
            .is_some_and(|a| a.at.0 .0 <= now || published == updates)
        {
            let arrival = links.queue.pop().unwrap();
            last_event = last_event.max(arrival.at.0 .0);
            if arrival.connection != connection {
                continue;
            }
            merger.receive(arrival.shard, arrival.message);
            merger.release(&mut got);
        }
        if published == updates && links.queue.is_empty() {
            // The end: every shard's last watermark flushes what is held.
            for &shard in selected {
                let t = shards[shard].watermark(now.max(last_event) + 1000);
                merger.receive(shard, Message::Watermark(t));
            }
            merger.release(&mut got);
        }
    }
    let mut expected: Vec<Key> = selected
        .iter()
        .flat_map(|s| shards[*s].log.iter().copied())
        .collect();
    expected.sort();
    (got, expected)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn merged_shards_lose_nothing_repeat_nothing_and_keep_one_order(
        seed in any::<u64>(),
        shards in 1usize..6,
        mask in 1u8..64,
        updates in 1usize..300,
    ) {
        let selected: Vec<usize> = (0..shards).filter(|s| mask & (1 << s) != 0).collect();
        prop_assume!(!selected.is_empty());
        let (got, expected) = run(seed, shards, &selected, updates);
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn without_the_watermark_rule_a_late_shard_is_reordered() {
    // The model can fail: releasing each update as it arrives (no watermarks) loses the order
    // as soon as one shard's messages are slower than another's.
    let mut fast = Shard {
        skew: 0,
        last_t: 0,
        log: Vec::new(),
    };
    let mut slow = Shard {
        skew: 0,
        last_t: 0,
        log: Vec::new(),
    };
    let early = slow.publish(1, 10);
    let late = fast.publish(0, 20);
    let mut naive = vec![late, early]; // arrival order
    let mut merger = Merger::new(&[0, 1], None);
    let mut got = Vec::new();
    merger.receive(0, Message::Update(late));
    merger.release(&mut got);
    assert!(got.is_empty(), "held until the slow shard has spoken");
    merger.receive(1, Message::Update(early));
    merger.receive(1, Message::Watermark(slow.watermark(30)));
    merger.release(&mut got);
    assert_eq!(got, [early, late]);
    naive.sort();
    assert_eq!(naive, got);
}
