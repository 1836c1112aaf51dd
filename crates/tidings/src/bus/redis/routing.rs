//! Which Pub/Sub channels and patterns an instance listens to, from its hub's interest.
//!
//! The publish script sends every update on `<prefix>:all` and on `<prefix>:t:<topic>` for
//! each of its topics; Redis only sends a message to the connections subscribed to it. Under
//! broadcast routing an instance subscribes to `<prefix>:all`. Under interest routing it
//! subscribes to the channel of each exact topic its subscribers want, `PSUBSCRIBE`s
//! `<prefix>:t:<literal prefix>*` for each URI template that starts with literal text, and
//! falls back to `<prefix>:all` alone while it holds a selector that no channel maps to (`*`,
//! a URL pattern, a template that starts with an expression) — or more distinct template
//! prefixes than `redis-max-patterns`: Redis matches every pattern of every connection against
//! each channel of every publish in the cluster, so one client subscribing to thousands of
//! distinct templates would tax every publish of every instance (review H1). Listening to more
//! than needed is harmless: the hub filters, and the reader drops the second copy of an update
//! that arrives on two channels.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Keys;
use crate::hub::Interest;

/// What one delivery connection is subscribed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Listening {
    /// Channels (`SUBSCRIBE`).
    pub(super) channels: BTreeSet<String>,
    /// Glob patterns (`PSUBSCRIBE`).
    pub(super) patterns: BTreeSet<String>,
}

impl Listening {
    /// Every update: broadcast routing, or an interest with a selector no channel maps to.
    pub(super) fn everything(keys: &Keys) -> Self {
        Listening {
            channels: BTreeSet::from([keys.all.clone()]),
            patterns: BTreeSet::new(),
        }
    }

    /// What an instance with `interest` listens to under interest routing, with at most
    /// `max_patterns` patterns.
    #[cfg(test)]
    pub(super) fn of(interest: &Interest, keys: &Keys, max_patterns: usize) -> Self {
        Self::planned(interest, keys, max_patterns).0
    }

    /// [`Listening::of`], and whether it is everything because the patterns would have been
    /// more than `max_patterns` (the cap bit).
    pub(super) fn planned(interest: &Interest, keys: &Keys, max_patterns: usize) -> (Self, bool) {
        let mut patterns = BTreeSet::new();
        for selector in &interest.wide {
            match selector.topic_prefix() {
                Some(prefix) => {
                    patterns.insert(format!("{}*", glob_escape(&keys.topic(prefix))));
                    if patterns.len() > max_patterns {
                        return (Listening::everything(keys), true);
                    }
                }
                None => return (Listening::everything(keys), false),
            }
        }
        let listening = Listening {
            channels: interest.exact.iter().map(|t| keys.topic(t)).collect(),
            patterns,
        };
        (listening, false)
    }
}

/// The subscription commands that move a connection from one [`Listening`] to another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Change {
    pub(super) subscribe: Vec<String>,
    pub(super) psubscribe: Vec<String>,
    pub(super) unsubscribe: Vec<String>,
    pub(super) punsubscribe: Vec<String>,
}

impl Change {
    /// From listening to `from` to listening to `to`.
    pub(super) fn between(from: &Listening, to: &Listening) -> Self {
        let only_in = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
            a.difference(b).cloned().collect()
        };
        Change {
            subscribe: only_in(&to.channels, &from.channels),
            psubscribe: only_in(&to.patterns, &from.patterns),
            unsubscribe: only_in(&from.channels, &to.channels),
            punsubscribe: only_in(&from.patterns, &to.patterns),
        }
    }

    /// What changes in `listening` when only exact topics came (`wanted`) or went
    /// (`unwanted`): their channels, unless the connection listens to everything anyway.
    pub(super) fn exact(
        listening: &Listening,
        wanted: &[Arc<str>],
        unwanted: &[Arc<str>],
        keys: &Keys,
    ) -> Self {
        if listening.channels.contains(&keys.all) {
            return Change::default();
        }
        let channels = |topics: &[Arc<str>], subscribed: bool| -> Vec<String> {
            topics
                .iter()
                .map(|t| keys.topic(t))
                .filter(|c| listening.channels.contains(c) != subscribed)
                .collect()
        };
        Change {
            subscribe: channels(wanted, true),
            unsubscribe: channels(unwanted, false),
            ..Change::default()
        }
    }

    /// Nothing to send.
    pub(super) fn is_empty(&self) -> bool {
        self.subscribe.is_empty()
            && self.psubscribe.is_empty()
            && self.unsubscribe.is_empty()
            && self.punsubscribe.is_empty()
    }

    /// Applies the change to the record of what the connection listens to.
    pub(super) fn apply(self, listening: &mut Listening) {
        for c in &self.unsubscribe {
            listening.channels.remove(c);
        }
        for p in &self.punsubscribe {
            listening.patterns.remove(p);
        }
        listening.channels.extend(self.subscribe);
        listening.patterns.extend(self.psubscribe);
    }
}

/// The channels of exact topics the hub no longer wants that the connection goes on listening
/// to for a while: a topic whose last subscriber left is often wanted again moments later (a
/// page reloaded, a stream back from another instance). Unsubscribed at once, every such
/// reconnection cost an `UNSUBSCRIBE` and a `SUBSCRIBE` that each waits for Redis to confirm:
/// at 200,000 reconnections a minute over 56 instances (1.8 streams per topic per instance)
/// the confirmations came later than the bus timeout on a saturated box, and the delivery
/// connections dropped (docs/scaling.md). What lingers costs only messages the hub has no
/// subscriber for.
#[derive(Debug, Default)]
pub(super) struct Lingering {
    /// Each lingering channel, with when its topic stopped being wanted.
    since: HashMap<String, Instant>,
}

impl Lingering {
    /// Takes `change`'s channel unsubscriptions out (they linger from `now`), and forgets the
    /// lingering channels wanted again (`wanted`).
    pub(super) fn hold(
        &mut self,
        change: &mut Change,
        wanted: impl IntoIterator<Item = String>,
        now: Instant,
    ) {
        for channel in change.unsubscribe.drain(..) {
            self.since.entry(channel).or_insert(now);
        }
        for channel in wanted {
            self.since.remove(&channel);
        }
    }

    /// The unsubscription of the channels that have lingered `linger` or longer by `now`.
    pub(super) fn due(&mut self, now: Instant, linger: Duration) -> Change {
        let mut unsubscribe = Vec::new();
        self.since.retain(|channel, since| {
            let keep = now.duration_since(*since) < linger;
            if !keep {
                unsubscribe.push(channel.clone());
            }
            keep
        });
        unsubscribe.sort();
        Change {
            unsubscribe,
            ..Change::default()
        }
    }

    /// Forgets every lingering channel (the whole interest is being read again, which
    /// unsubscribes whatever is not wanted).
    pub(super) fn clear(&mut self) {
        self.since.clear();
    }
}

/// Escapes the characters Redis glob patterns give a meaning to.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;

    #[test]
    fn a_channel_no_longer_wanted_lingers_and_is_unsubscribed_later_unless_wanted_again() {
        let start = Instant::now();
        let linger = Duration::from_secs(30);
        let at = |secs| start + Duration::from_secs(secs);
        let mut lingering = Lingering::default();
        let mut change = Change {
            subscribe: vec!["p:t:new".into()],
            unsubscribe: vec!["p:t:a".into(), "p:t:b".into()],
            ..Change::default()
        };
        lingering.hold(&mut change, [], start);
        assert_eq!(change.subscribe, ["p:t:new"]);
        assert!(
            change.unsubscribe.is_empty(),
            "nothing unsubscribed at once"
        );
        // `b` is wanted again 10 s later; `c` leaves 20 s later.
        lingering.hold(&mut Change::default(), ["p:t:b".to_owned()], at(10));
        let mut c = Change {
            unsubscribe: vec!["p:t:c".into()],
            ..Change::default()
        };
        lingering.hold(&mut c, [], at(20));
        assert!(lingering.due(at(29), linger).unsubscribe.is_empty());
        assert_eq!(lingering.due(at(30), linger).unsubscribe, ["p:t:a"]);
        assert!(lingering.due(at(49), linger).unsubscribe.is_empty());
        assert_eq!(lingering.due(at(50), linger).unsubscribe, ["p:t:c"]);
        assert!(
            lingering.due(at(1000), linger).unsubscribe.is_empty(),
            "b is wanted"
        );
        let mut d = Change {
            unsubscribe: vec!["p:t:d".into()],
            ..Change::default()
        };
        lingering.hold(&mut d, [], at(1000));
        lingering.clear();
        assert!(lingering.due(at(2000), linger).unsubscribe.is_empty());
    }

    fn interest(exact: &[&str], wide: &[&str]) -> Interest {
        Interest {
            exact: exact.iter().map(|t| Arc::from(*t)).collect(),
            wide: wide
                .iter()
                .map(|w| Selector::compile(w, 1024).unwrap())
                .collect(),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn exact_topics_get_their_own_channels_and_templates_a_pattern() {
        let keys = Keys::new("p");
        let listening = Listening::of(
            &interest(&["a", "b c"], &["https://x/books/{id}", "q?[*]{x}"]),
            &keys,
            100,
        );
        assert_eq!(listening.channels, set(&["p:t:a", "p:t:b c"]));
        assert_eq!(
            listening.patterns,
            set(&["p:t:https://x/books/*", r"p:t:q\?\[\*\]*"])
        );
        assert_eq!(
            Listening::of(&interest(&[], &[]), &keys, 100),
            Listening::default()
        );
    }

    #[test]
    fn changes_move_a_connection_and_exact_ones_touch_only_their_channels() {
        let keys = Keys::new("p");
        let from = Listening::of(&interest(&["a", "b"], &["u/{x}"]), &keys, 100);
        let to = Listening::of(&interest(&["b", "c"], &["v/{x}"]), &keys, 100);
        let change = Change::between(&from, &to);
        assert_eq!(change.subscribe, vec!["p:t:c".to_owned()]);
        assert_eq!(change.unsubscribe, vec!["p:t:a".to_owned()]);
        assert_eq!(change.psubscribe, vec!["p:t:v/*".to_owned()]);
        assert_eq!(change.punsubscribe, vec!["p:t:u/*".to_owned()]);
        let mut moved = from.clone();
        change.apply(&mut moved);
        assert_eq!(moved, to);

        let topics =
            |names: &[&str]| -> Vec<Arc<str>> { names.iter().map(|n| Arc::from(*n)).collect() };
        // "b" is already heard and "z" never was: neither needs a command.
        let change = Change::exact(&to, &topics(&["b", "d"]), &topics(&["c", "z"]), &keys);
        assert_eq!(change.subscribe, vec!["p:t:d".to_owned()]);
        assert_eq!(change.unsubscribe, vec!["p:t:c".to_owned()]);
        let mut moved = to.clone();
        change.apply(&mut moved);
        assert_eq!(
            moved,
            Listening::of(&interest(&["b", "d"], &["v/{x}"]), &keys, 100)
        );

        // Listening to everything, exact topics change nothing.
        let everything = Listening::of(&interest(&["a"], &["*"]), &keys, 100);
        assert_eq!(
            Change::exact(&everything, &topics(&["b"]), &topics(&["a"]), &keys),
            Change::default()
        );
    }

    #[test]
    fn selectors_without_a_literal_prefix_listen_to_everything() {
        let keys = Keys::new("p");
        for wide in ["*", "{+anything}", "https://x/{id}"] {
            let listening = Listening::of(&interest(&["a"], &["b/{x}", wide]), &keys, 100);
            let expected_all = wide != "https://x/{id}";
            assert_eq!(listening.channels.contains("p:all"), expected_all, "{wide}");
        }
        let url_pattern = Interest {
            exact: Vec::new(),
            wide: vec![Selector::url_pattern("https://x/:id", 1024).unwrap()],
        };
        assert_eq!(
            Listening::of(&url_pattern, &keys, 100).channels,
            set(&["p:all"])
        );
        assert_eq!(Listening::everything(&keys).channels, set(&["p:all"]));
    }

    #[test]
    fn more_template_prefixes_than_the_cap_listen_to_everything() {
        // Each distinct prefix would be a pattern Redis matches on every publish of the
        // cluster (review H1): past the cap, one channel instead.
        let keys = Keys::new("p");
        let templates: Vec<String> = (0..4).map(|i| format!("https://x/p{i}/{{id}}")).collect();
        let wide: Vec<&str> = templates.iter().map(String::as_str).collect();
        let three = Listening::of(&interest(&["a"], &wide[..3]), &keys, 3);
        assert_eq!(three.patterns.len(), 3);
        assert!(!three.channels.contains("p:all"));
        // Two templates of one prefix are one pattern.
        let shared = interest(
            &["a"],
            &[wide[0], wide[1], wide[2], "https://x/p0/{id}/{x}"],
        );
        assert_eq!(Listening::of(&shared, &keys, 3).patterns.len(), 3);
        let four = Listening::of(&interest(&["a"], &wide), &keys, 3);
        assert_eq!(four, Listening::everything(&keys));
        assert_eq!(
            Listening::of(&interest(&[], &wide[..1]), &keys, 0),
            Listening::everything(&keys)
        );
    }
}
