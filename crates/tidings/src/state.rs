//! The state of one instance, shared by every request: configuration, hub, bus,
//! authenticator, selector cache, metrics, consumers and stream admission, and whether it is
//! draining.
//!
//! It sits above the core and the buses and below `http` (which reads it) and `server` (which
//! assembles it), so that neither of those has to reach into the other.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::Config;
use crate::consume::Consumers;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::selector::SelectorCache;

/// Everything a request handler needs, shared by all requests of an instance.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    config: Config,
    hub: Hub,
    bus: Arc<dyn Bus>,
    /// This instance's part in its cluster (membership, questions over the bus's signals).
    cluster: Cluster,
    auth: Authenticator,
    selectors: Arc<SelectorCache>,
    metrics: Arc<Metrics>,
    /// The consumers of the application's own sources (`/readyz` shows them; the drain stops
    /// them first).
    consumers: Consumers,
    /// The stream counts and their caps.
    admission: Arc<Admission>,
    /// Cancelled when the instance starts shutting down: every stream ends itself.
    shutdown: CancellationToken,
    /// Holds a token for every open stream: the drain waits until none is left. Closed when
    /// the drain begins, which is how `/readyz` and the handlers refusing new streams know.
    streams: TaskTracker,
}

impl AppState {
    /// Bundles the parts of an instance.
    pub fn new(
        config: Config,
        hub: Hub,
        bus: Arc<dyn Bus>,
        auth: Authenticator,
        selectors: Arc<SelectorCache>,
        consumers: Consumers,
    ) -> Self {
        let metrics = hub.metrics().clone();
        let cluster = Cluster::start(
            hub.clone(),
            bus.clone(),
            ClusterSettings {
                instance_id: config.instance_id.clone(),
                address: config.listen.to_string(),
                heartbeat: config.cluster_heartbeat,
                deadline: config.cluster_deadline,
            },
        );
        AppState {
            inner: Arc::new(StateInner {
                cluster,
                admission: Admission::new(config.streams.clone(), metrics.clone()),
                config,
                hub,
                bus,
                auth,
                selectors,
                metrics,
                consumers,
                shutdown: CancellationToken::new(),
                streams: TaskTracker::new(),
            }),
        }
    }

    /// Starts draining: `/readyz` answers 503, new streams are refused, and every open stream
    /// is told to close (each after a random part of the drain window, with a `retry:` hint).
    pub fn begin_shutdown(&self) {
        self.inner.cluster.draining();
        self.inner.consumers.cancel();
        self.inner.streams.close();
        self.inner.metrics.ready.set(0);
        self.inner.shutdown.cancel();
    }

    /// True once [`AppState::begin_shutdown`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.streams.is_closed()
    }

    /// The instance's hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The instance's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The instance's token verifier.
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// The instance's stream counts.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.inner.admission
    }

    /// The instance's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The instance's consumers.
    pub fn consumers(&self) -> &Consumers {
        &self.inner.consumers
    }

    /// This instance's part in its cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The instance's bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    /// The instance's compiled-selector cache.
    pub fn selectors(&self) -> &SelectorCache {
        &self.inner.selectors
    }

    /// Cancelled when the instance starts draining: every open stream ends itself.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The open streams: each holds a token of this tracker while it lives.
    pub fn streams(&self) -> &TaskTracker {
        &self.inner.streams
    }
}
