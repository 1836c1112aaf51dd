//! A bounded history kept in the instance's memory: the last updates it delivered, in order,
//! with an index from id to position, bounded by count and by age. The in-memory bus keeps its history here, and so does
//! the RabbitMQ bus, which fills it from the stream every instance reads.
//!
//! The owner records an update and dispatches it under one lock, and replays under the same
//! lock: a replay is then a consistent suffix of what was delivered, and every later update is
//! delivered live.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::{Replay, ReplayFrom};
use crate::envelope::{now_micros, Envelope, Position};
use crate::update::UpdateId;

/// The last `size` updates, younger than `ttl`, oldest first. See the module documentation.
#[derive(Debug, Default)]
pub struct LocalHistory {
    size: usize,
    /// How long an update stays (by its publish time), when history has an age limit.
    ttl: Option<Duration>,
    /// Ascending positions (not necessarily contiguous).
    updates: VecDeque<Arc<Envelope>>,
    /// Id → position of the newest update in `updates` with that id.
    index: HashMap<UpdateId, Position>,
    /// The id and position of the newest update ever recorded, kept even when history is
    /// disabled.
    newest: Option<(UpdateId, Position)>,
}

impl LocalHistory {
    /// A history of the last `size` updates (0: none, only the newest id), each kept for
    /// `ttl` when given.
    pub fn new(size: usize, ttl: Option<Duration>) -> Self {
        LocalHistory {
            size,
            ttl,
            ..LocalHistory::default()
        }
    }

    /// Records an update, newer than every one recorded before; evicts the oldest past
    /// `size`, and those older than `ttl`.
    pub fn record(&mut self, envelope: &Arc<Envelope>) {
        self.newest = Some((envelope.update.id.clone(), envelope.position));
        if self.size == 0 {
            return;
        }
        if self.updates.len() == self.size {
            self.evict_oldest();
        }
        self.index
            .insert(envelope.update.id.clone(), envelope.position);
        self.updates.push_back(envelope.clone());
        self.expire();
    }

    /// Evicts the updates older than `ttl` (history may be idle, so a replay calls it too).
    pub fn expire(&mut self) {
        let Some(ttl) = self.ttl else { return };
        let oldest_kept = now_micros().saturating_sub(ttl.as_micros() as u64);
        while self
            .updates
            .front()
            .is_some_and(|e| e.published_at_micros < oldest_kept)
        {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.updates.pop_front() {
            // The id may have been reused by a newer update, which keeps the entry.
            if self.index.get(&old.update.id) == Some(&old.position) {
                self.index.remove(&old.update.id);
            }
        }
    }

    /// True when `id` is the newest update or one history holds.
    pub fn knows(&self, id: &UpdateId) -> bool {
        self.position_of(id).is_some()
    }

    /// The position of the update `id`, when it is the newest or one history holds.
    pub fn position_of(&self, id: &UpdateId) -> Option<Position> {
        match &self.newest {
            Some((newest, position)) if newest == id => Some(*position),
            _ => self.index.get(id).copied(),
        }
    }

    /// The update `id` names, when history holds it.
    pub fn update_of(&self, id: &UpdateId) -> Option<&crate::update::Update> {
        let position = self.index.get(id)?;
        let at = self
            .updates
            .binary_search_by_key(position, |e| e.position)
            .ok()?;
        Some(&self.updates[at].update)
    }

    /// What a subscriber resuming `from` gets (see [`Replay`]); with `topics`, only the updates
    /// on one of them (see [`Bus::replay`](super::Bus::replay)): a storm of resumes then copies
    /// what each one needs, not all of history each.
    pub fn replay(&mut self, from: &ReplayFrom, topics: Option<&[Arc<str>]>) -> Replay {
        self.expire();
        let mut replay = Replay {
            head_id: self.newest.as_ref().map(|(id, _)| id.clone()),
            ..Replay::default()
        };
        let wanted = |e: &&Arc<Envelope>| {
            topics.is_none_or(|topics| {
                e.update
                    .topics
                    .iter()
                    .any(|t| topics.iter().any(|w| **w == *t.as_str()))
            })
        };
        let skip = match from {
            ReplayFrom::Now => return replay,
            ReplayFrom::Earliest => 0,
            ReplayFrom::After(id) => match self.index.get(id) {
                Some(position) => {
                    replay.resumed_at = Some(*position);
                    self.updates.partition_point(|e| e.position <= *position)
                }
                // Resuming from the newest id misses nothing, even without history.
                None => match &self.newest {
                    Some((newest, position)) if newest == id => {
                        replay.resumed_at = Some(*position);
                        return replay;
                    }
                    _ => {
                        replay.missing = true;
                        0
                    }
                },
            },
        };
        replay.updates = self
            .updates
            .iter()
            .skip(skip)
            .filter(wanted)
            .cloned()
            .collect();
        replay
    }
}
