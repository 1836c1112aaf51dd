//! The bus wire-format decoder: any text a broker hands over is decoded without panicking, and
//! a message it accepts encodes to one that decodes to the same update (so an update crossing
//! several buses or instances is never altered). Every update it accepts passes the same
//! validation an HTTP publish does.
//!
//! The check itself is in `checks/wire.rs`, which the test suite also runs on every input of
//! the committed corpus.

#![no_main]

#[path = "../checks/wire.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|input: &str| check::run(input));
