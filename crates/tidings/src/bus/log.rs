//! Reading a log that every instance reads whole, in the same order, by offset: a NATS
//! JetStream stream, a RabbitMQ stream, a Kafka partition. Each instance turns offsets into positions, counts what it
//! could not read as a gap, skips an id it has already delivered (a retried publish that
//! the broker stored twice: every instance reads the same log and remembers the same ids, so
//! every one skips the same copies), and keeps what it delivered in a [`LocalHistory`] that
//! serves resumes.
//!
//! Written here rather than in each bus because the rules are the product's, not the
//! broker's: the same offsets must give the same positions and the same skips on every bus
//! that reads a log.
//!
//! The bus around a log read this way, that RabbitMQ and Kafka share, is `log_bus`.

use super::history::LocalHistory;
use super::wire::Decoder;
use crate::envelope::Position;
use crate::hub::Hub;

/// What an instance read of its log, and the history it keeps of it. Callers hold it under
/// one lock with the dispatch (see [`LocalHistory`]).
#[derive(Debug)]
pub(super) struct ReadLog {
    /// The last updates delivered, for resumes.
    pub(super) history: LocalHistory,
    /// The last offset read.
    last: Option<u64>,
    /// Bumped when the log was lost and its offsets started over, so that positions still
    /// grow: a position is `epoch << 64 | offset + 1`.
    epoch: u128,
    /// What the log's messages are turned into updates by (and names the broker in logs).
    decoder: Decoder,
}

impl ReadLog {
    /// Nothing read yet; `history` keeps what will be.
    pub(super) fn new(history: LocalHistory, decoder: Decoder) -> Self {
        ReadLog {
            history,
            last: None,
            epoch: 0,
            decoder,
        }
    }

    /// The last offset read, if any (since the log was last lost).
    pub(super) fn last(&self) -> Option<u64> {
        self.last
    }

    /// Takes `offset` as read: its position, or `None` when it was read before (a consumer
    /// that started again at an earlier point). Offsets skipped since the last one left the
    /// log before this instance read them: a gap, counted and logged.
    pub(super) fn advance(&mut self, offset: u64, hub: &Hub) -> Option<Position> {
        match self.last {
            Some(last) if offset <= last => return None,
            Some(last) if offset > last + 1 => {
                hub.metrics().bus_gaps.inc();
                tracing::warn!(
                    from = last + 1,
                    to = offset - 1,
                    "{}: updates left the log before this instance read them",
                    self.decoder.broker()
                );
            }
            _ => {}
        }
        self.last = Some(offset);
        Some(self.position_of(offset))
    }

    /// The position of the message at `offset` of the log as read now.
    pub(super) fn position_of(&self, offset: u64) -> Position {
        Position((self.epoch << 64) | (u128::from(offset) + 1))
    }

    /// Takes `offset` as read, holding no update (a transaction's marker): the next offset
    /// after it is no gap.
    #[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
    pub(super) fn pass(&mut self, offset: u64) {
        if self.last.is_none_or(|last| offset > last) {
            self.last = Some(offset);
        }
    }

    /// The log this instance read is gone (the broker lost it): what comes next is read from
    /// its start, at positions past every one given so far.
    pub(super) fn lost(&mut self) {
        self.epoch += 1;
        self.last = None;
    }

    /// Decodes the wire-format message in `bytes` read at `position` and hands it to `hub`,
    /// unless its id was delivered before (a skipped malformed message is the decoder's). Its
    /// number in the log (offset + 1) names it in logs and gives an id to an update that has
    /// none.
    pub(super) fn deliver(&mut self, hub: &Hub, position: Position, bytes: &[u8], micros: u64) {
        let number = position.0 & u128::from(u64::MAX);
        let Some(envelope) = self.decoder.envelope(bytes, number, position, micros) else {
            return;
        };
        if self.history.knows(&envelope.update.id) {
            tracing::debug!(
                number,
                id = %envelope.update.id,
                "{}: a repeated id; skipped",
                self.decoder.broker()
            );
            return;
        }
        self.history.record(&envelope);
        hub.dispatch(&envelope);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn hub() -> Hub {
        Hub::new(8, Arc::new(crate::metrics::Metrics::new()))
    }

    fn log(hub: &Hub) -> ReadLog {
        let decoder = Decoder::new(
            super::super::Kind::Kafka,
            crate::update::Limits::default(),
            hub.metrics().clone(),
        );
        ReadLog::new(LocalHistory::new(10, None), decoder)
    }

    #[test]
    fn offsets_give_growing_positions_across_a_lost_log() {
        let hub = hub();
        let mut log = log(&hub);
        assert_eq!(log.last(), None);
        assert_eq!(log.advance(4, &hub), Some(Position(5)));
        assert_eq!(log.advance(4, &hub), None);
        assert_eq!(log.advance(2, &hub), None);
        assert_eq!(hub.metrics().bus_gaps.get(), 0);
        assert_eq!(log.advance(7, &hub), Some(Position(8)));
        assert_eq!(hub.metrics().bus_gaps.get(), 1, "5 and 6 were never read");
        log.lost();
        assert_eq!(log.last(), None);
        let position = log.advance(0, &hub).unwrap();
        assert!(position > Position(8), "{position:?}");
        assert_eq!(position, Position((1 << 64) | 1));
        assert_eq!(hub.metrics().bus_gaps.get(), 1);
    }

    #[test]
    fn a_repeated_id_is_delivered_once() {
        let hub = hub();
        let mut log = log(&hub);
        let message = br#"{"v":1,"id":"same","topics":["t"],"data":"x"}"#;
        for offset in 0..2 {
            let position = log.advance(offset, &hub).unwrap();
            log.deliver(&hub, position, message, 1);
        }
        log.deliver(&hub, Position(3), b"\xff", 1);
        log.deliver(&hub, Position(4), b"{}", 1);
        assert_eq!(hub.metrics().bus_skipped.get(), 2, "the two malformed ones");
        let replay = log
            .history
            .replay(&super::super::ReplayFrom::Earliest, None);
        let ids: Vec<&str> = replay
            .updates
            .iter()
            .map(|e| e.update.id.as_str())
            .collect();
        assert_eq!(ids, ["same"]);
    }
}
