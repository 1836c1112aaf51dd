//! Several real instances on real brokers: delivery across instances, failover and resume, broker
//! faults and restarts, routing, broker security, and publishing straight onto the broker.

#[path = "../common/mod.rs"]
mod common;

mod amqp;
mod consume;
mod direct_publish;
mod instances;
mod kafka;
mod nats;
mod redis_cluster;
mod redis_faults;
mod redis_replicas;
mod redis_routing;
mod redis_security;
mod redis_sentinel;
mod traces;
mod webhooks;
