//! The instance's record of live interests — which exact topics and which wide selectors have
//! subscribers — that a bus routing by interest watches, and what changed since it last looked.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::watch;

use super::Hub;
use crate::selector::Selector;

/// Exact topics that gained their first subscriber or lost their last one, recorded for
/// [`Hub::take_interest_changes`] so that a router's work per change does not grow with the
/// number of topics.
#[derive(Debug, Default)]
pub(super) struct InterestLog {
    pub(super) exact: HashSet<Arc<str>>,
    /// Read everything: the wide selectors changed, or too many exact topics did.
    pub(super) everything: bool,
}

/// More exact topics changed than this between two looks and the log gives up on them: the
/// router re-reads the whole interest, and the log's memory stays bounded while nobody looks
/// (a delivery connection that is down).
pub(super) const MAX_LOGGED_TOPICS: usize = 65_536;

impl InterestLog {
    pub(super) fn exact(&mut self, topic: &Arc<str>) {
        if self.everything {
            return;
        }
        if self.exact.len() >= MAX_LOGGED_TOPICS {
            self.everything();
        } else {
            self.exact.insert(topic.clone());
        }
    }

    /// Gives up on the details: the router must re-read the whole interest.
    pub(super) fn everything(&mut self) {
        self.everything = true;
        self.exact = HashSet::new();
    }
}

/// How a hub's interest changed since the previous [`Hub::take_interest_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterestChanges {
    /// Anything may have changed: read [`Hub::interest`] whole. Returned by the first call,
    /// after a wide selector came or went, and after very many exact topics changed.
    Everything,
    /// Only exact topics changed.
    Exact {
        /// Topics that have subscribers now (and may not have had before).
        wanted: Vec<Arc<str>>,
        /// Topics that have none now (and may have had before).
        unwanted: Vec<Arc<str>>,
    },
}

/// The topics and selectors this instance's subscribers need, for interest routing.
#[derive(Debug, Clone, Default)]
pub struct Interest {
    /// Exact topics with at least one subscriber.
    pub exact: Vec<Arc<str>>,
    /// Non-exact selectors (`*`, templates, URL patterns) with at least one subscriber, each
    /// once.
    pub wide: Vec<Selector>,
}

impl Hub {
    /// The exact topics and wide selectors that have subscribers now.
    pub fn interest(&self) -> Interest {
        let reg = self.read();
        Interest {
            exact: reg.exact.keys().cloned().collect(),
            wide: reg
                .wide
                .values()
                .map(|(selector, _)| selector.clone())
                .collect(),
        }
    }

    /// How the interest changed since the previous call, for a router that keeps its own
    /// copy of [`Hub::interest`] up to date at a cost that does not grow with the number of
    /// topics. The first call returns [`InterestChanges::Everything`] and starts the record.
    pub fn take_interest_changes(&self) -> InterestChanges {
        let mut reg = self.write();
        let Some(log) = reg.changes.replace(InterestLog::default()) else {
            return InterestChanges::Everything;
        };
        if log.everything {
            return InterestChanges::Everything;
        }
        let (wanted, unwanted) = log
            .exact
            .into_iter()
            .partition(|topic| reg.exact.contains_key(topic));
        InterestChanges::Exact { wanted, unwanted }
    }

    /// The number of changes [`Hub::interest`] has seen so far (bumped after each change).
    pub fn interest_version(&self) -> u64 {
        *self.inner.interest_version.borrow()
    }

    /// A receiver that changes whenever [`Hub::interest`] does.
    pub fn interest_changes(&self) -> watch::Receiver<u64> {
        self.inner.interest_version.subscribe()
    }
}
