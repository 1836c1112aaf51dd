//! Tests that need no socket and no process: the router answering bad input, CORS and the
//! protocols' single requests, the layers of the source, and property tests of the HTTP
//! boundary, the SSE encoding and URI templates, and the merge rule of sharded history.

mod admin;
mod app;
mod bad_input;
mod boundary_props;
mod cors;
mod fuzz_corpus;
mod history;
mod layers;
mod properties;
mod requests;
mod sharded_merge;
