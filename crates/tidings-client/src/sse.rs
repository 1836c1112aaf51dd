//! An incremental `text/event-stream` decoder, as the HTML standard's EventSource parses.
//!
//! Written here rather than taken from a crate because a subscriber that resumes correctly
//! needs what the common decoders drop: a `retry:` field sent in a block of its own (Tidings
//! sends one when it closes a stream on shutdown) and an `id:` without data both change the
//! stream's state without dispatching an event.

use std::time::Duration;

use crate::Event;

/// Decodes a stream's bytes, chunk by chunk, into events and the stream's state.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of an incomplete line.
    pending: Vec<u8>,
    /// Whether the stream's start (and a byte-order mark there) has been dealt with.
    started: bool,
    /// The previous chunk ended with CR: an LF opening this one belongs to that line end.
    after_cr: bool,
    event_type: String,
    data: String,
    /// The `id:` field read last: it becomes the stream's last event id only when its event
    /// is complete (the standard's "last event ID buffer").
    id_buffer: String,
    /// The id of the last complete event (or id-only block): what a reconnection resumes
    /// after. An `id:` line of an event the connection cut is not here — that event never
    /// arrived, and resuming after it would lose it.
    last_id: String,
    retry: Option<Duration>,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Decodes the next chunk of the stream; returns the events it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut chunk = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        self.pending.extend_from_slice(chunk);
        if !self.started {
            if self.pending.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.pending) {
                return Vec::new();
            }
            self.started = true;
            if self.pending.starts_with(b"\xEF\xBB\xBF") {
                self.pending.drain(..3);
            }
        }
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
        {
            let end = start + offset;
            let line = String::from_utf8_lossy(&self.pending[start..end]).into_owned();
            start = end + 1;
            if self.pending[end] == b'\r' {
                match self.pending.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    // The LF of a CRLF may open the next chunk.
                    None => self.after_cr = true,
                }
            }
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.pending.drain(..start);
        events
    }

    /// Readies the decoder for the next connection of the same source, as `EventSource`
    /// does: what the last connection left unfinished (a line, an event's fields) is dropped
    /// — that event never arrived, and its rest must not join the next connection's first
    /// event — while the last event id and the `retry:` hint are kept.
    pub fn reconnected(&mut self) {
        *self = Decoder {
            id_buffer: self.last_id.clone(),
            last_id: std::mem::take(&mut self.last_id),
            retry: self.retry,
            ..Decoder::default()
        };
    }

    /// The reconnection time the stream asked for last (`retry:`), if it did.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// The last event id the stream set (`id:`) in a complete block, empty when none.
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(millis) = value.parse() {
                    self.retry = Some(Duration::from_millis(millis));
                }
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        self.last_id.clone_from(&self.id_buffer);
        let event_type = std::mem::take(&mut self.event_type);
        let mut data = std::mem::take(&mut self.data);
        if data.is_empty() {
            return None;
        }
        data.pop();
        Some(Event {
            id: self.last_id.clone(),
            event_type: if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type
            },
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> (Vec<Event>, Decoder) {
        let mut decoder = Decoder::new();
        let events = chunks.iter().flat_map(|c| decoder.feed(c)).collect();
        (events, decoder)
    }

    fn event(id: &str, event_type: &str, data: &str) -> Event {
        Event {
            id: id.into(),
            event_type: event_type.into(),
            data: data.into(),
        }
    }

    #[test]
    fn decodes_events_whatever_the_line_ends_and_chunk_boundaries() {
        let stream = b"\xEF\xBB\xBF:open\n\nid: 1\nevent: book\ndata: a\ndata:b\r\n\r\ndata: c\r\rid\ndata\n\n";
        let expected = vec![
            event("1", "book", "a\nb"),
            event("1", "message", "c"),
            event("", "message", ""),
        ];
        for size in 1..stream.len() {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            assert_eq!(all(&chunks).0, expected, "chunks of {size}");
        }
    }

    #[test]
    fn retry_and_id_change_the_state_without_an_event() {
        let (events, decoder) = all(&[b"id: 7\n\nretry: 2500\n\nretry: x\n\n"]);
        assert!(events.is_empty());
        assert_eq!(decoder.retry(), Some(Duration::from_millis(2500)));
        assert_eq!(decoder.last_event_id(), "7");
    }

    #[test]
    fn the_id_of_an_event_cut_short_is_not_the_last_event_id() {
        // A connection that ends after "id: 2" never delivered event 2: a reconnection must
        // resume after 1, or 2 is lost.
        let (events, decoder) = all(&[b"id: 1\ndata: a\n\nid: 2\ndata: b"]);
        assert_eq!(events, vec![event("1", "message", "a")]);
        assert_eq!(decoder.last_event_id(), "1");
        let (_, decoder) = all(&[b"id: 1\ndata: a\n\nid: 2\n"]);
        assert_eq!(decoder.last_event_id(), "1");
    }

    #[test]
    fn a_new_connection_drops_what_the_last_one_left_unfinished() {
        let (_, mut decoder) =
            all(&[b"retry: 900\n\nid: 1\ndata: a\n\nid: 2\nevent: x\ndata: b\ndata: {\"par"]);
        decoder.reconnected();
        let events = decoder.feed(b": hello\n\nid: 3\ndata: c\n\ndata: d\n\n");
        assert_eq!(
            events,
            vec![event("3", "message", "c"), event("3", "message", "d")]
        );
        assert_eq!(decoder.retry(), Some(Duration::from_millis(900)));
        let (_, mut decoder) = all(&[b"id: 1\ndata: a\n\nid: 2\n"]);
        decoder.reconnected();
        assert_eq!(decoder.last_event_id(), "1");
        assert_eq!(
            decoder.feed(b"data: e\n\n"),
            vec![event("1", "message", "e")]
        );
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let (events, _) = all(&[b"data: half"]);
        assert!(events.is_empty());
        let (events, _) = all(&[b"data: whole\n"]);
        assert!(events.is_empty());
    }
}
