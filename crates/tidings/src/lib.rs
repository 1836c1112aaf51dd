//! # Tidings
//!
//! A Server-Sent Events hub that keeps working when one server becomes many. Clients hold
//! `EventSource` connections to any instance; publishers send an update — to a topic, or to a
//! session's event name — to any instance, and the instance holding the connection delivers
//! it, in order, once, and again after a reconnect if it was missed. It speaks the Mercure
//! protocol and a simpler session API; both are views of one core model.
//!
//! ## Map of the code
//!
//! | module | what it holds |
//! |---|---|
//! | [`update`] | the validated input types: [`update::Update`], topics, ids, event names, sessions, and the [`update::Limits`] on them |
//! | [`selector`] | topic selectors (`*`, exact, RFC 6570 templates, URL patterns) compiled once, cached |
//! | [`sse`] | the SSE encoder (one `data:` line per payload line; nothing can inject a field) |
//! | [`envelope`] | an update inside an instance: position in the bus order, SSE bytes encoded once |
//! | [`subscriber`] | a subscriber's selectors, rights ([`subscriber::Access`]) and filters |
//! | `locks` | taking a lock whose holder panicked (one place says why that is safe) |
//! | `throttle` | logging what repeats with every request or message at most once a second |
//! | [`admission`] | the caps on open streams (per instance, client address, session) and on the distinct wildcard selectors they hold, and the client address |
//! | [`hub`] | the local registry of subscribers, indexed by selector, and dispatch |
//! | [`consume`] | consuming what services already publish (a RabbitMQ exchange, a Redis stream or Pub/Sub channels, a NATS subject or JetStream stream, a Kafka topic, a PostgreSQL outbox table): the consumer's spec, patterns, templates, the mapping of a message to an update, and the consumers' tasks |
//! | [`bus`] | the [`bus::Bus`] trait (publish, deliver to every instance, replay), the cluster's [`bus::Registry`] of sessions and subscribers where a bus keeps one, the backends (cargo features), the wire format, the reconnect machine and start-up |
//! | [`auth`] | JWT verification (HS256/RS256/ES256 keys, or a JWKS endpoint), Mercure claims and Mercure 1.0 access tokens, the application's authorization callback, minting dev tokens |
//! | [`state`] | [`state::AppState`]: one instance's parts (config, hub, bus, authenticator, metrics, admission), shared by every request |
//! | [`http`] | the axum router: Mercure subscribe/publish and subscriptions API, session API, `/healthz`, `/readyz`, `/metrics`, the page at `/` |
//! | [`metrics`] | the instance's Prometheus metrics |
//! | [`telemetry`] | distributed tracing (OpenTelemetry over OTLP, off by default): spans for a publish, its store and its delivery on every instance, the W3C trace context an update carries through the bus |
//! | [`outbound`] | the HTTP requests the hub makes itself (JWKS, authorization callback, webhooks): URLs checked, timeouts, no redirects, bounded answers |
//! | [`cluster`] | the control plane over the bus's signals, the same on every bus: membership (heartbeats with each instance's figures), questions asked of every instance with a deadline (presence, a subject's streams, selectors, disconnects) |
//! | [`webhook`] | lifecycle webhooks: sessions online/offline (cluster-wide through the bus's registry), streams subscribed/unsubscribed, signed, batched, retried |
//! | [`config`] | options: defaults (each written once) → `tidings.toml` → `TIDINGS_*` → flags, resolved into each part's settings |
//! | [`server`] | assembling an [`server::Instance`] and serving it with a bounded graceful shutdown; the connections, TLS, and HTTP/1.1 streams written by hand (`h1_stream`: a stream's chunks straight from the shared bytes) |
//! | [`cli`] | the `tidings` command line |
//!
//! Layers point one way, each using only those below it: `cli` → [`server`] (sockets, TLS,
//! shutdown) → [`http`] (the protocols) → [`state`] → [`config`] → [`auth`], [`bus`] (the
//! buses behind one trait), [`consume`] (which publishes through the bus), [`cluster`], [`webhook`] and
//! [`outbound`] → the core ([`hub`], [`subscriber`],
//! [`admission`], [`envelope`], [`sse`], [`selector`], [`update`], [`metrics`], [`telemetry`]). The core knows
//! nothing of HTTP, the command line or any broker client.
//!
//! ## One update, from publish to socket
//!
//! 1. `POST /.well-known/mercure` reaches [`http`]'s publish handler. The form is decoded
//!    strictly, every field validated into [`update`] types, the publisher's JWT verified and
//!    its `mercure.publish` selectors checked against every topic ([`auth`]).
//! 2. The handler calls [`bus::Bus::publish`]. The memory bus, under one lock, gives the update
//!    the next [`envelope::Position`], wraps it in an [`envelope::Envelope`] — which encodes the
//!    SSE bytes once — appends it to history and hands it to [`hub::Hub::dispatch`]. Only then
//!    is the publisher answered with the id. (A broker-backed bus stores it in the broker, and
//!    each instance's reader dispatches what it receives.)
//! 3. Dispatch looks the topics up in the exact-topic index and matches each distinct wide
//!    selector once; for each subscriber found it checks the compiled rights (private updates,
//!    event-name filter) and `try_send`s the shared `Arc<Envelope>` into its bounded queue. A
//!    full queue disconnects that subscriber only; it resumes from history.
//! 4. The subscriber's response body (`http::stream`) wakes, skips anything its replay already
//!    covered, and hands the shared `Bytes` on: over HTTP/1.1, plain or TLS, the server
//!    writes them to the socket itself (`server::h1_stream`, several updates in one write
//!    when the stream is behind); over HTTP/2, hyper does. Heartbeat comments keep idle
//!    streams alive; on shutdown each stream ends with a `retry:` hint.
//!
//! A fresh stream reads the head of history *before* its subscriber is registered and sends
//! it as an `id:` line without data: every later update reaches it live (or from history),
//! and a client whose instance dies before its first event resumes from there.
//! A reconnecting client sends `Last-Event-ID`: its subscriber is registered first, the bus
//! confirms it listens for the subscriber's topics second ([`bus::Bus::listening`]: a Redis
//! bus under interest routing subscribes to their channels), history is read third (every
//! update after that id, up to the newest), and live updates at or before the last replayed
//! one are skipped — no gap, no duplicate.

pub mod admission;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod consume;
pub mod envelope;
pub mod http;
pub mod hub;
mod locks;
pub mod metrics;
pub mod outbound;
pub mod selector;
pub mod server;
pub mod sse;
pub mod state;
pub mod subscriber;
pub mod telemetry;
mod throttle;
pub mod update;
pub mod webhook;
