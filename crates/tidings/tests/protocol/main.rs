//! The protocols over real sockets, against one real `tidings` binary: Mercure, the session API,
//! the subscriptions API, token algorithms, key sets and lifetimes, the authorization callback, lifecycle webhooks, stream limits and the connection
//! lifecycle.

#[path = "../common/mod.rs"]
mod common;

mod callback;
mod jwks;
mod lifecycle;
mod limits;
mod mercure;
mod session;
mod signatures;
mod subscriptions;
mod token_lifetimes;
mod webhooks;
