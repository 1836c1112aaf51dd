//! The publish form and JSON decoders, and the subscription query decoders, through the real
//! router (no sockets): any body, content type and query string gets a success or one of the
//! documented refusals (`400`, `403`, `413`, `415`) with the JSON body `{"error", "detail"}`,
//! and never a panic or a `5xx`.
//!
//! The check itself is in `checks/publish.rs`, which the test suite also runs on every input of
//! the committed corpus.

#![no_main]

#[path = "../checks/publish.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|input: check::Input| check::run(input));
