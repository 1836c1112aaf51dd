//! A bounded history kept in the instance's memory: the last updates it delivered, in order,
//! with an index from id to position. The in-memory bus keeps its history here, and so does
//! the RabbitMQ bus, which fills it from the stream every instance reads.
//!
//! The owner records an update and dispatches it under one lock, and replays under the same
//! lock: a replay is then a consistent suffix of what was delivered, and every later update is
//! delivered live.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Replay, ReplayFrom};
use crate::envelope::{Envelope, Position};
use crate::update::UpdateId;

/// The last `size` updates, oldest first. See the module documentation.
#[derive(Debug, Default)]
pub struct LocalHistory {
    size: usize,
    /// Ascending positions (not necessarily contiguous).
    updates: VecDeque<Arc<Envelope>>,
    /// Id → position of the newest update in `updates` with that id.
    index: HashMap<UpdateId, Position>,
    /// The id and position of the newest update ever recorded, kept even when history is
    /// disabled.
    newest: Option<(UpdateId, Position)>,
}

impl LocalHistory {
    /// A history of the last `size` updates (0: none, only the newest id).
    pub fn new(size: usize) -> Self {
        LocalHistory {
            size,
            ..LocalHistory::default()
        }
    }

    /// Records an update, newer than every one recorded before; evicts the oldest past
    /// `size`.
    pub fn record(&mut self, envelope: &Arc<Envelope>) {
        self.newest = Some((envelope.update.id.clone(), envelope.position));
        if self.size == 0 {
            return;
        }
        if self.updates.len() == self.size {
            if let Some(old) = self.updates.pop_front() {
                // The id may have been reused by a newer update, which keeps the entry.
                if self.index.get(&old.update.id) == Some(&old.position) {
                    self.index.remove(&old.update.id);
                }
            }
        }
        self.index
            .insert(envelope.update.id.clone(), envelope.position);
        self.updates.push_back(envelope.clone());
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

    /// What a subscriber resuming `from` gets (see [`Replay`]).
    pub fn replay(&self, from: &ReplayFrom) -> Replay {
        let mut replay = Replay {
            head_id: self.newest.as_ref().map(|(id, _)| id.clone()),
            ..Replay::default()
        };
        match from {
            ReplayFrom::Now => {}
            ReplayFrom::Earliest => replay.updates = self.updates.iter().cloned().collect(),
            ReplayFrom::After(id) => match self.index.get(id) {
                Some(position) => {
                    let skip = self.updates.partition_point(|e| e.position <= *position);
                    replay.updates = self.updates.iter().skip(skip).cloned().collect();
                    replay.resumed_at = Some(*position);
                }
                // Resuming from the newest id misses nothing, even without history.
                None => match &self.newest {
                    Some((newest, position)) if newest == id => {
                        replay.resumed_at = Some(*position);
                    }
                    _ => {
                        replay.missing = true;
                        replay.updates = self.updates.iter().cloned().collect();
                    }
                },
            },
        }
        replay
    }
}
