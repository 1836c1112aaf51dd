//! The hub's subscriber events: every subscriber that comes or goes, told to each listener
//! (subscription events, lifecycle webhooks) through a bounded queue of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::Hub;
use crate::metrics::EventListener;
use crate::subscriber::SubscriberSpec;

/// The most subscriber events a listener may fall behind by; past it the next ones are
/// dropped, counted (`tidings_subscriber_events_dropped_total`) and the listener told how
/// many it missed. A reconnect storm of 15,000 streams is 30,000 events: they fit.
pub const SUBSCRIBER_EVENTS_QUEUE: usize = 65_536;

/// One listener's end of the subscriber events, as the hub holds it.
#[derive(Debug)]
pub(super) struct Listener {
    who: EventListener,
    events: mpsc::Sender<SubscriberEvent>,
    missed: Arc<AtomicU64>,
}

/// What a listener hears from [`SubscriberEvents::recv`].
#[derive(Debug, Clone)]
pub enum Heard {
    /// A subscriber came or went.
    Event(SubscriberEvent),
    /// This many were dropped while the listener was behind: what it keeps of the hub's
    /// subscribers must be looked up again.
    Missed(u64),
}

/// A listener's end of the hub's subscriber events ([`Hub::subscriber_events`]). Dropping it
/// ends the listener.
#[derive(Debug)]
pub struct SubscriberEvents {
    events: mpsc::Receiver<SubscriberEvent>,
    missed: Arc<AtomicU64>,
}

impl SubscriberEvents {
    /// The next event, or how many were missed once the queue ran dry after a drop; `None`
    /// when the hub is gone.
    pub async fn recv(&mut self) -> Option<Heard> {
        if let Ok(event) = self.events.try_recv() {
            return Some(Heard::Event(event));
        }
        match self.missed.swap(0, Ordering::Relaxed) {
            0 => self.events.recv().await.map(Heard::Event),
            n => Some(Heard::Missed(n)),
        }
    }
}

/// A subscriber that came or went (see [`Hub::subscriber_events`]).
#[derive(Debug, Clone)]
pub struct SubscriberEvent {
    /// What the subscriber asked for.
    pub spec: Arc<SubscriberSpec>,
    /// True when it came, false when it went.
    pub active: bool,
}

impl Hub {
    /// From now on, tells `who` every subscriber that comes or goes, in the order the hub
    /// registers and removes them, through a queue of [`SUBSCRIBER_EVENTS_QUEUE`] (a listener
    /// that falls further behind misses events, and is told so). Each call makes one more
    /// listener.
    pub fn subscriber_events(&self, who: EventListener) -> SubscriberEvents {
        self.subscriber_events_within(who, SUBSCRIBER_EVENTS_QUEUE)
    }

    /// [`Hub::subscriber_events`] with a queue of `capacity`.
    pub(crate) fn subscriber_events_within(
        &self,
        who: EventListener,
        capacity: usize,
    ) -> SubscriberEvents {
        let (events, rx) = mpsc::channel(capacity.max(1));
        let missed = Arc::new(AtomicU64::new(0));
        self.listeners().push(Listener {
            who,
            events,
            missed: missed.clone(),
        });
        SubscriberEvents { events: rx, missed }
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, Vec<Listener>> {
        // Each mutation is one push or one retain: a panic cannot leave it half done.
        crate::locks::lock(&self.inner.subscriber_events)
    }

    pub(super) fn tell(&self, spec: &Arc<SubscriberSpec>, active: bool) {
        let mut listeners = self.listeners();
        if !listeners.is_empty() {
            listeners.retain(|listener| {
                let spec = spec.clone();
                match listener.events.try_send(SubscriberEvent { spec, active }) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        listener.missed.fetch_add(1, Ordering::Relaxed);
                        self.inner.metrics.subscriber_event_dropped(listener.who);
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        }
    }
}
