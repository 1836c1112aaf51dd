//! The envelope: an update as it travels inside an instance, with its place in the bus's order
//! and its SSE bytes, encoded once and shared by every subscriber.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::sse;
use crate::update::Update;

/// An update's place in the bus's total order. Larger is later. The memory bus counts from 1;
/// a durable bus maps its own log position (a stream id, a sequence number) onto it. Two
/// envelopes from one bus never share a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u128);

/// An update with its position, the time it was accepted, and its encoded SSE event.
#[derive(Debug)]
pub struct Envelope {
    /// The update itself.
    pub update: Update,
    /// Its place in the bus's order: used to join replayed history and live updates without
    /// a gap or a duplicate.
    pub position: Position,
    /// When the bus accepted it, in microseconds since the Unix epoch (delivery latency is
    /// measured from here).
    pub published_at_micros: u64,
    /// The SSE encoding of the update, shared by every subscriber.
    sse: Bytes,
}

impl Envelope {
    /// Wraps an update accepted by a bus at `published_at_micros`, encoding it once.
    pub fn new(update: Update, position: Position, published_at_micros: u64) -> Self {
        let sse = sse::encode_update(&update);
        Envelope {
            update,
            position,
            published_at_micros,
            sse,
        }
    }

    /// The length of the encoded SSE event, in bytes.
    pub fn sse_len(&self) -> usize {
        self.sse.len()
    }

    /// The encoded SSE event (a cheap, reference-counted clone).
    pub fn sse(&self) -> Bytes {
        self.sse.clone()
    }
}

/// The current time in microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
