//! The SSE encoder, checked by an independent parser: every update that passes validation is
//! encoded, cut into chunks, parsed back by `eventsource-stream`, and must come back as exactly
//! one event with the same id, type, retry and payload (line terminators normalised to LF, as
//! a browser's `EventSource` delivers them). Nothing in a payload may start an event or a field
//! of its own.

use arbitrary::Arbitrary;
use eventsource_stream::Eventsource;
use futures_util::{FutureExt, StreamExt};
use tidings::sse::encode_update;
use tidings::update::{EventName, Topic, Update, UpdateId};

#[derive(Debug, Arbitrary)]
pub(crate) struct Input {
    events: Vec<(String, Option<String>, String, Option<u64>)>,
    chunk: u8,
}

/// Runs the check on one input; panics when it does not hold.
pub(crate) fn run(input: Input) {
    let updates: Vec<Update> = input
        .events
        .iter()
        .take(8)
        .filter_map(|(id, event, data, retry)| {
            let event = match event {
                Some(e) => Some(EventName::new(e, 256).ok()?),
                None => None,
            };
            Update::new(
                UpdateId::new(id, 1024).ok()?,
                vec![Topic::new("t", 10).unwrap()],
                event,
                data.clone(),
                *retry,
                false,
            )
            .ok()
        })
        .collect();
    let bytes: Vec<u8> = updates
        .iter()
        .flat_map(|u| encode_update(u).to_vec())
        .collect();
    let chunks: Vec<Result<bytes::Bytes, std::convert::Infallible>> = bytes
        .chunks(usize::from(input.chunk).max(1))
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let events: Vec<_> = futures_util::stream::iter(chunks)
        .eventsource()
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("parsing an in-memory stream never waits");
    assert_eq!(events.len(), updates.len(), "one event per update, no more");
    for (event, update) in events.into_iter().zip(&updates) {
        let event = event.expect("the encoder's output parses");
        assert_eq!(event.id, update.id.as_str());
        let expected_type = update.event_type.as_ref().map_or("message", |e| e.as_str());
        assert_eq!(event.event, expected_type);
        assert_eq!(
            event.data,
            update.data.replace("\r\n", "\n").replace('\r', "\n")
        );
        assert_eq!(
            event.retry,
            update.retry.map(std::time::Duration::from_millis)
        );
    }
}
