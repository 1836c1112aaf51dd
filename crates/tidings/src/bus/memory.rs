//! The in-memory bus: one instance, history in a bounded ring.
//!
//! Publishing appends to history and dispatches to the hub under one lock, so positions,
//! history order and delivery order are the same total order, and a replay taken under the
//! same lock sees a consistent, contiguous suffix of history.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::history::LocalHistory;
use super::{Bus, BusError, Published, Replay, ReplayFrom};
use crate::envelope::{now_micros, Envelope, Position};
use crate::hub::Hub;
use crate::update::Update;

/// The in-memory bus (`memory://`). Several hubs in one process may share one (see
/// [`MemoryBus::attach`]), which is how the bus contract tests model several instances.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    /// A std mutex: publish holds it across the (synchronous) dispatch, never across an await.
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// The position the next update gets (the first is 1).
    next: u128,
    history: LocalHistory,
    /// Every hub the bus delivers to.
    hubs: Vec<Hub>,
}

impl MemoryBus {
    /// A bus keeping the last `history_size` updates, delivering to `hub`.
    pub fn new(history_size: usize, hub: Hub) -> Self {
        Self::with_ttl(history_size, None, hub)
    }

    /// A bus keeping the last `history_size` updates, each for `ttl` when given, delivering to
    /// `hub`.
    pub fn with_ttl(history_size: usize, ttl: Option<Duration>, hub: Hub) -> Self {
        MemoryBus {
            state: Arc::new(Mutex::new(State {
                next: 1,
                history: LocalHistory::new(history_size, ttl),
                hubs: vec![hub],
            })),
        }
    }

    /// Attaches another hub (another "instance" in the same process) to this bus: it receives
    /// every update from then on and shares the history.
    pub fn attach(&self, hub: Hub) -> MemoryBus {
        self.lock().hubs.push(hub);
        self.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each mutation is completed before anything that could panic runs.
        crate::locks::lock(&self.state)
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn kind(&self) -> &'static str {
        super::Kind::Memory.name()
    }

    async fn publish(&self, update: Update) -> Result<Published, BusError> {
        let mut state = self.lock();
        // A retry of a publish history still holds: stored and delivered once.
        state.history.expire();
        if let Some(first) = state.history.position_of(&update.id) {
            if let Some(stored) = state.history.update_of(&update.id) {
                BusError::unless_retry(stored, &update)?;
            }
            return Ok(Published {
                id: update.id,
                position: Some(first),
            });
        }
        let position = Position(state.next);
        state.next += 1;
        let envelope = Arc::new(Envelope::new(update, position, now_micros()));
        state.history.record(&envelope);
        for hub in &state.hubs {
            hub.dispatch(&envelope);
        }
        Ok(Published {
            id: envelope.update.id.clone(),
            position: Some(position),
        })
    }

    async fn listening(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn replay(
        &self,
        from: &ReplayFrom,
        topics: Option<&[Arc<str>]>,
    ) -> Result<Replay, BusError> {
        Ok(self.lock().history.replay(from, topics))
    }

    fn state(&self) -> crate::bus::ConnectionState {
        crate::bus::ConnectionState::Connected
    }

    fn registry(&self) -> Option<Arc<dyn crate::bus::Registry>> {
        None
    }

    async fn signal(&self, signal: bytes::Bytes) -> Result<(), BusError> {
        for hub in &self.lock().hubs {
            hub.receive_signal(signal.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::update::{Topic, UpdateId};

    fn update(id: &str) -> Update {
        Update::new(
            UpdateId::new(id, 100).unwrap(),
            vec![Topic::new("t", 100).unwrap()],
            None,
            id.into(),
            None,
            false,
        )
        .unwrap()
    }

    fn ids(replay: &Replay) -> Vec<&str> {
        replay
            .updates
            .iter()
            .map(|e| e.update.id.as_str())
            .collect()
    }

    #[tokio::test]
    async fn replays_after_an_id_and_reports_evicted_ids() {
        let bus = MemoryBus::new(3, Hub::new(8, Arc::new(Metrics::new())));
        for id in ["a", "b", "c", "d"] {
            bus.publish(update(id)).await.unwrap();
        }
        let after_b = bus
            .replay(&ReplayFrom::After(UpdateId::new("b", 10).unwrap()), None)
            .await
            .unwrap();
        assert_eq!(ids(&after_b), ["c", "d"]);
        assert!(!after_b.missing);
        assert_eq!(after_b.updates.last().unwrap().position, Position(4));
        let after_a = bus
            .replay(&ReplayFrom::After(UpdateId::new("a", 10).unwrap()), None)
            .await
            .unwrap();
        assert!(after_a.missing, "a was evicted");
        assert_eq!(ids(&after_a), ["b", "c", "d"]);
        let now = bus.replay(&ReplayFrom::Now, None).await.unwrap();
        assert!(now.updates.is_empty());
        assert_eq!(now.head_id.unwrap().as_str(), "d");
    }

    #[tokio::test]
    async fn a_repeated_id_is_stored_once_while_history_holds_it() {
        let bus = MemoryBus::new(3, Hub::new(8, Arc::new(Metrics::new())));
        let mut positions = Vec::new();
        for id in ["a", "b", "a", "c"] {
            positions.push(bus.publish(update(id)).await.unwrap().position.unwrap());
        }
        assert_eq!(
            positions[2], positions[0],
            "the retry answers the first position"
        );
        let all = bus.replay(&ReplayFrom::Earliest, None).await.unwrap();
        assert_eq!(ids(&all), ["a", "b", "c"]);
        // Once history no longer holds it, the id is new again.
        bus.publish(update("d")).await.unwrap();
        bus.publish(update("a")).await.unwrap();
        let all = bus.replay(&ReplayFrom::Earliest, None).await.unwrap();
        assert_eq!(ids(&all), ["c", "d", "a"]);
    }

    #[tokio::test]
    async fn history_forgets_updates_older_than_its_ttl() {
        let ttl = Duration::from_millis(300);
        let bus = MemoryBus::with_ttl(100, Some(ttl), Hub::new(8, Arc::new(Metrics::new())));
        bus.publish(update("a")).await.unwrap();
        tokio::time::sleep(ttl * 2).await;
        bus.publish(update("b")).await.unwrap();
        let all = bus.replay(&ReplayFrom::Earliest, None).await.unwrap();
        assert_eq!(ids(&all), ["b"]);
        let after_a = bus
            .replay(&ReplayFrom::After(UpdateId::new("a", 10).unwrap()), None)
            .await
            .unwrap();
        assert!(after_a.missing, "a expired");
        // An idle history expires too, and an expired id is new again.
        tokio::time::sleep(ttl * 2).await;
        assert!(bus
            .replay(&ReplayFrom::Earliest, None)
            .await
            .unwrap()
            .updates
            .is_empty());
        bus.publish(update("a")).await.unwrap();
        assert_eq!(
            ids(&bus.replay(&ReplayFrom::Earliest, None).await.unwrap()),
            ["a"]
        );
    }

    #[tokio::test]
    async fn without_history_every_resume_is_a_gap() {
        let bus = MemoryBus::new(0, Hub::new(8, Arc::new(Metrics::new())));
        bus.publish(update("a")).await.unwrap();
        let r = bus
            .replay(&ReplayFrom::After(UpdateId::new("a", 10).unwrap()), None)
            .await
            .unwrap();
        assert!(!r.missing, "resuming from the newest id misses nothing");
        bus.publish(update("b")).await.unwrap();
        let r = bus
            .replay(&ReplayFrom::After(UpdateId::new("a", 10).unwrap()), None)
            .await
            .unwrap();
        assert!(r.missing && r.updates.is_empty());
        assert_eq!(r.head_id.unwrap().as_str(), "b");
    }
}
