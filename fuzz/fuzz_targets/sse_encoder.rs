//! The SSE encoder, checked by an independent parser: every update that passes validation is
//! encoded, cut into chunks, parsed back by `eventsource-stream`, and must come back as exactly
//! one event with the same id, type, retry and payload (line terminators normalised to LF, as
//! a browser's `EventSource` delivers them). Nothing in a payload may start an event or a field
//! of its own.
//!
//! The check itself is in `checks/sse_encoder.rs`, which the test suite also runs on every input of
//! the committed corpus.

#![no_main]

#[path = "../checks/sse_encoder.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|input: check::Input| check::run(input));
