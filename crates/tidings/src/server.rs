//! Assembling and running one instance: hub, bus, authenticator, router, and a bounded,
//! two-stage graceful shutdown.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::bus::{self, BusOptions};
use crate::config::Config;
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::selector::SelectorCache;

/// How long requests still in flight get once the listener has closed.
const GRACE: Duration = Duration::from_secs(1);

/// Why an instance could not start; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The authorization settings are unusable (a missing key, an unreadable PEM file).
    #[error("authorization: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    /// The bus could not be set up.
    #[error("{0}")]
    Bus(#[from] bus::BusError),
    /// The listener failed.
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
}

/// A fully assembled instance, not yet serving.
#[derive(Debug, Clone)]
pub struct Instance {
    state: AppState,
}

impl Instance {
    /// Builds the hub, connects the bus and prepares the router.
    ///
    /// # Errors
    /// [`StartError`] when the authorization settings or the bus are unusable.
    pub async fn new(config: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(config.subscriber_queue, metrics.clone());
        let selectors = Arc::new(SelectorCache::new(
            config.selector_cache_size,
            config.limits.max_selector_length,
        ));
        let auth = Authenticator::new(&config.auth, selectors.clone())?;
        let options = BusOptions {
            history_size: config.history_size,
            history_id_ttl_secs: config.history_id_ttl,
            prefix: config.bus_prefix.clone(),
            instance_id: config.instance_id.clone(),
            session_ttl_secs: config.session_ttl,
            share_subscribers: config.subscriptions,
            limits: config.limits.clone(),
            routing: config.routing,
        };
        let bus = bus::connect(&config.bus, &options, hub.clone()).await?;
        metrics.ready.set(1);
        Ok(Instance {
            state: AppState::new(config, hub, bus, auth, selectors),
        })
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The router serving this instance.
    pub fn router(&self) -> Router {
        http::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then drains in two stages:
    ///
    /// 1. Readiness turns 503 and new streams are refused with 503 (other requests, such as a
    ///    publish in flight or a load balancer's health check, are still served), while each
    ///    open stream ends with a `retry:` hint at a random moment of the drain window.
    /// 2. When every stream has ended, or the window is over, the listener closes; requests in
    ///    flight get one more second, then serving stops whatever is left.
    ///
    /// # Errors
    /// [`StartError::Io`] when serving fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let addr = listener.local_addr()?;
        let config = self.state.config().clone();
        tracing::info!(
            listen = %addr,
            bus = %bus::redact(&config.bus),
            instance = %config.instance_id,
            "tidings ready, listening on http://{addr}"
        );
        let state = self.state.clone();
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let drained = async move {
            shutdown.await;
            tracing::info!(
                open_streams = state.metrics().connections.get(),
                "shutdown requested: draining open streams for up to {:?}",
                config.drain
            );
            state.begin_shutdown();
            let deadline = tokio::time::Instant::now() + config.drain;
            while state.metrics().connections.get() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = stopping_tx.send(());
        };
        let server = axum::serve(
            listener,
            self.router()
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(drained)
        .into_future();
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result.map_err(StartError::from),
            _ = stopping_rx => {}
        }
        match tokio::time::timeout(GRACE, server).await {
            Ok(result) => {
                tracing::info!("drained; bye");
                result.map_err(StartError::from)
            }
            Err(_) => {
                tracing::warn!(
                    open_streams = self.state.metrics().connections.get(),
                    "drain did not complete in {:?}; closing what is left",
                    GRACE
                );
                Ok(())
            }
        }
    }
}
