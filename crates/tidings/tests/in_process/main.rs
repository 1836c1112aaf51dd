//! Tests that need no socket and no process: the router answering bad input and CORS, and property
//! tests of the HTTP boundary, the SSE encoding and URI templates.

mod bad_input;
mod boundary_props;
mod cors;
mod properties;
