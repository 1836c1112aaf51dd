//! The tools, run as a user would: the `tidings` command line, `tidings-bench`, and the `tidings-
//! client` crate.

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod cli;
mod client;
