//! The selector and URI-template matcher, checked against an independent RFC 6570 expander
//! (`iri-string`): compiling and matching never panic; an exact selector matches only itself;
//! a template that `iri-string` accepts (within the hub's limits) compiles, and matches every
//! URI and IRI it expands to; every topic a selector matches starts with the selector's topic
//! prefix, which is what interest routing subscribes to.
//!
//! The check itself is in `checks/selector.rs`, which the test suite also runs on every input of
//! the committed corpus.

#![no_main]

#[path = "../checks/selector.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|input: check::Input| check::run(input));
