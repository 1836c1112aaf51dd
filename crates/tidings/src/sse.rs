//! The SSE encoder: turns updates into `text/event-stream` bytes.
//!
//! An update is encoded once, when it enters the hub, and every subscriber that receives it
//! shares those bytes. The encoder relies on the validated types of [`crate::update`]: ids and
//! event names cannot hold a line break, so they cannot start a new field. The payload is
//! split on every line terminator the SSE parser knows (CRLF, CR, LF) and each line gets its
//! own `data:` field, so a payload can never inject a field or an event of its own. A browser's
//! `EventSource` joins the lines back with LF: CRLF and CR in a payload arrive as LF.

use bytes::{BufMut, Bytes, BytesMut};

use crate::update::Update;

/// The heartbeat: an SSE comment that keeps idle connections alive through proxies and lets
/// the server notice a client that has gone away.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// Encodes one update as an SSE event: `id`, `event` (if any), `retry` (if any), then one
/// `data` line per payload line, then a blank line.
pub fn encode_update(update: &Update) -> Bytes {
    encode_event(
        Some(update.id.as_str()),
        update.event_type.as_ref().map(|e| e.as_str()),
        update.retry,
        &update.data,
    )
}

/// Encodes an event from its parts. `id` and `event` must not contain CR, LF or NUL (the
/// validated types guarantee it; this function checks it in debug builds).
pub fn encode_event(
    id: Option<&str>,
    event: Option<&str>,
    retry: Option<u64>,
    data: &str,
) -> Bytes {
    debug_assert!(id.is_none_or(|s| !s.contains(['\r', '\n', '\0'])));
    debug_assert!(event.is_none_or(|s| !s.contains(['\r', '\n', '\0'])));
    let mut buf = BytesMut::with_capacity(data.len() + 64);
    if let Some(id) = id {
        put_field(&mut buf, "id", id);
    }
    if let Some(event) = event {
        put_field(&mut buf, "event", event);
    }
    if let Some(retry) = retry {
        put_field(&mut buf, "retry", &retry.to_string());
    }
    for line in split_lines(data) {
        put_field(&mut buf, "data", line);
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// An `id:` field alone: it sets the client's last event id without dispatching an event
/// (HTML's event-stream rules dispatch only events with data). `id` must not contain CR, LF or
/// NUL.
pub fn encode_id(id: &str) -> Bytes {
    debug_assert!(!id.contains(['\r', '\n', '\0']));
    let mut buf = BytesMut::with_capacity(id.len() + 6);
    put_field(&mut buf, "id", id);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// The `retry:` hint sent before a stream is closed on purpose (shutdown), so the client waits
/// this many milliseconds before it reconnects.
pub fn encode_retry(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

fn put_field(buf: &mut BytesMut, name: &str, value: &str) {
    buf.put_slice(name.as_bytes());
    buf.put_slice(b": ");
    buf.put_slice(value.as_bytes());
    buf.put_u8(b'\n');
}

/// Splits on CRLF, CR and LF, as the SSE parser does. An empty payload is one empty line.
fn split_lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_data_gets_one_field_per_line() {
        let bytes = encode_event(Some("1"), Some("greeting"), None, "a\nb\r\nc\rd");
        assert_eq!(
            &bytes[..],
            b"id: 1\nevent: greeting\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn trailing_newline_is_kept_as_an_empty_line() {
        let bytes = encode_event(None, None, Some(3000), "x\n");
        assert_eq!(&bytes[..], b"retry: 3000\ndata: x\ndata: \n\n");
    }

    #[test]
    fn leading_space_survives_because_one_space_always_follows_the_colon() {
        let bytes = encode_event(None, None, None, " indented");
        assert_eq!(&bytes[..], b"data:  indented\n\n");
    }
}
