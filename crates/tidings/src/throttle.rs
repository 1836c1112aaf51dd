//! Logging what repeats with every request or message at most once a second: a client, an
//! application or a broker that misbehaves in a loop must not flood the log (what happened is
//! counted in metrics either way).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lets a line through at most once a second.
#[derive(Debug, Default)]
pub(crate) struct LogOncePerSecond {
    /// The second (since the epoch) of the last line let through.
    last: AtomicU64,
}

impl LogOncePerSecond {
    /// True for the first call in each second.
    pub(crate) fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.last.swap(now, Ordering::Relaxed) != now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_a_second() {
        let gate = LogOncePerSecond::default();
        assert!(gate.allow());
        assert!(!gate.allow(), "the same second");
    }
}
