//! Connections and what stands in front of them: misbehaving clients at the TCP and HTTP level,
//! TLS, and the deployment kit (nginx, HAProxy) in front of real instances.

#[path = "../common/mod.rs"]
mod common;

mod connections;
mod deploy;
mod tls;
