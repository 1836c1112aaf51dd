//! Consuming what services already publish: messages on exchanges, channels, topics and
//! outbox tables, in the shapes their publishers write, mapped to updates — so that a team can
//! put Tidings behind its existing publishers without changing one (`docs/consumers.md`).
//!
//! A consumed message goes the way of any publish: its [`mapping::Mapping`] fills the update's
//! fields from the message ([`template::Template`]s over the body's JSON and what the source's
//! [`pattern::Pattern`] matched in its name), [`crate::update::Draft::validate`] holds it to
//! the hub's rules, and the bus stores and delivers it. Its id derives from its place in the
//! source, so that a redelivery is the idempotent retry of the same update.

#[cfg(feature = "amqp")]
mod amqp;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "redis")]
mod lease;
pub mod mapping;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod outbox;
pub mod pattern;
#[cfg(feature = "redis")]
mod redis_pubsub;
#[cfg(feature = "redis")]
mod redis_stream;
mod run;
pub mod spec;
pub mod template;

pub use run::Consumers;
