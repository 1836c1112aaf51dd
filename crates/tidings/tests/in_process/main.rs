//! Tests that need no socket and no process: the router answering bad input and CORS, the layers
//! of the source, and property tests of the HTTP boundary, the SSE encoding and URI templates.

mod bad_input;
mod boundary_props;
mod cors;
mod fuzz_corpus;
mod layers;
mod properties;
