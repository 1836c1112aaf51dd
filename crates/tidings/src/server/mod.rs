//! Assembling and running one instance: hub, bus, authenticator, router, the accept loop
//! (plain HTTP/1.1, or TLS with HTTP/2 and HTTP/1.1), and a bounded, two-stage graceful
//! shutdown. [`connection`] serves one connection — its first request through [`h1_stream`]
//! when that opens an event stream over HTTP/1.1, else through hyper (after [`rewind`] gives
//! back what was read); [`tls`] holds the reloadable certificate.

mod connection;
mod h1_stream;
mod rewind;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::connection::Timeouts;
use self::tls::{Certificates, TlsError};
use crate::auth::Authenticator;
use crate::bus;
use crate::config::Config;
use crate::consume::Consumers;
use crate::http;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::selector::SelectorCache;
use crate::state::AppState;
use crate::webhook::Webhooks;

/// How long requests still in flight get once the listener has closed.
const GRACE: Duration = Duration::from_secs(1);

/// The pause after a failed accept (out of file descriptors, typically).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Why an instance could not start; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The authorization settings are unusable (a missing key, an unreadable PEM file).
    #[error("authorization: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    /// The bus could not be set up.
    #[error("{0}")]
    Bus(#[from] bus::BusError),
    /// The TLS certificate or key is unusable.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The listener failed.
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
    /// The webhook settings are unusable.
    #[error("webhooks: {0}")]
    Webhooks(#[from] crate::outbound::OutboundConfigError),
}

/// A fully assembled instance, not yet serving.
#[derive(Debug, Clone)]
pub struct Instance {
    state: AppState,
    /// The TLS certificate, when the instance serves HTTPS.
    tls: Option<Arc<Certificates>>,
    /// Set when connecting the bus met an error that retrying cannot cure.
    bus_failed: watch::Receiver<Option<bus::BusError>>,
    /// The lifecycle webhooks, when configured.
    webhooks: Option<Arc<Webhooks>>,
}

impl Instance {
    /// Builds the hub, connects the bus and prepares the router. A broker that cannot be
    /// reached yet does not stop it: the instance serves, not ready, while the bus keeps
    /// trying ([`bus::start`]).
    ///
    /// # Errors
    /// [`StartError`] when the TLS files, the authorization settings or the bus's
    /// configuration are unusable.
    pub async fn new(config: Config) -> Result<Self, StartError> {
        let tls = match &config.tls {
            Some(files) => Some(Certificates::load(&files.cert, &files.key)?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::with_queue_limits(config.subscriber_queue, metrics.clone());
        let selectors = Arc::new(SelectorCache::new(
            config.selector_cache_size,
            config.limits.max_selector_length,
        ));
        let auth = Authenticator::new(&config.auth, selectors.clone(), metrics.clone())?;
        auth.start().await;
        // Boxed: every bus's connect future is in it, and they are large.
        let started = Box::pin(bus::start(&config.bus_url, &config.bus, hub.clone())).await?;
        metrics.ready.set(i64::from(started.bus.is_ready()));
        let consumers = Consumers::start(
            &config.consumers,
            &started.bus,
            &config.limits,
            config.bus.backoff,
            config.bus.timeouts,
            &config.instance_id,
            &metrics,
        );
        let state = AppState::new(config, hub, started.bus, auth, selectors, consumers);
        if state.config().subscriptions {
            http::publish_subscription_events(&state);
        }
        let webhooks = match &state.config().webhooks {
            Some(settings) => Some(Arc::new(Webhooks::start(
                settings,
                state.hub(),
                state.bus().clone(),
                &state.config().instance_id,
            )?)),
            None => None,
        };
        Ok(Instance {
            state,
            tls,
            bus_failed: started.failed,
            webhooks,
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

    /// Takes what can change without a restart from `config`, the configuration read again
    /// (on SIGHUP): the JWT keys, algorithm and leeway, and the TLS certificate and key files,
    /// read again. New requests and connections get them; open streams and connections keep
    /// going. Each part that fails keeps what is in use and is logged.
    pub fn reload(&self, config: &Config) {
        match self.state.authenticator().reload(&config.auth) {
            Ok(()) => tracing::info!("JWT keys reloaded"),
            Err(e) => tracing::error!(error = %e, "JWT keys not reloaded; keeping the ones in use"),
        }
        if let Some(certificates) = &self.tls {
            match certificates.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; keeping the one in use")
                }
            }
        }
    }

    /// Serves on `listener` until `shutdown` completes, then drains in two stages:
    ///
    /// 1. The listener closes (the port is free for an instance restarted in place), readiness
    ///    turns 503 and new streams are refused with 503 on the connections already open
    ///    (other requests on them, such as a publish in flight, are still served), while each
    ///    open stream ends with a `retry:` hint at a random moment of the drain window.
    /// 2. When every stream has ended, or the window is over, every connection is asked to
    ///    close once its request is answered and gets one more second, then serving stops
    ///    whatever is left.
    ///
    /// # Errors
    /// [`StartError::Io`] when the listener's address cannot be read.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let addr = listener.local_addr()?;
        let config = self.state.config().clone();
        let acceptor = self.tls.as_ref().map(|c| c.acceptor()).transpose()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        // The others are told where this instance listens (a port 0 is known only now).
        self.state
            .cluster()
            .listening_on(format!("{scheme}://{addr}"));
        let status = match self.state.bus().is_ready() {
            true => "tidings ready",
            false => "tidings waiting for its bus (not ready yet)",
        };
        // (Each stream holds a file: in a container the runtime sets the limit, and operators
        // look for it here. The command line raised the soft limit to the hard one already.)
        let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
        tracing::info!(
            listen = %addr,
            bus = %bus::redact(&config.bus_url),
            instance = %config.instance_id,
            open_files,
            "{status}, listening on {scheme}://{addr}"
        );
        let timeouts = Timeouts {
            header_read: config.header_read_timeout,
            write: config.write_timeout,
            h2_idle: config.connections.h2_idle,
            heartbeat: config.heartbeat,
        };
        let router = self.router();
        let graceful = GracefulShutdown::new();
        // Told when the drain's second stage begins (HTTP/2 connections close then, as hyper's
        // graceful shutdown closes the others).
        let closing = CancellationToken::new();
        let places = connection::Places::new(
            config.connections,
            config.trusted_proxies.clone(),
            self.state.metrics().clone(),
        );
        tokio::pin!(shutdown);
        let mut bus_failed = self.bus_failed.clone();
        loop {
            tokio::select! {
                Ok(failed) = bus_failed.wait_for(Option::is_some) => {
                    if let Some(error) = failed.clone() {
                        return Err(StartError::Bus(error));
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Past a cap the connection is closed at once, unread.
                        let Some(place) = places.take(peer.ip()) else {
                            drop(tcp);
                            continue;
                        };
                        tokio::spawn(connection::serve(
                            tcp,
                            peer,
                            acceptor.clone(),
                            router.clone(),
                            timeouts,
                            (graceful.watcher(), closing.clone()),
                            place,
                        ));
                    }
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // pause briefly instead of spinning, and go on.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        // Not ready, and streams told to end, before the port is let go: whoever finds it
        // closed finds this instance draining on the connections it still has.
        self.state.begin_shutdown();
        // The port is free at once: an instance restarted in place binds it while this one
        // drains, and new connections (a load balancer's retry, a publisher's next request)
        // reach it, not this one. Connections already open are still served.
        drop(listener);
        tracing::info!(
            open_streams = self.state.metrics().connections.get(),
            "shutdown requested: stopped listening; draining open streams for up to {:?}",
            config.drain
        );
        // Every open stream ends itself within the window; the tracker says when the last
        // one has. The consumers (told to stop with the rest) finish the message each is
        // handling meanwhile.
        let drained = async {
            let _ = tokio::time::timeout(config.drain, self.state.streams().wait()).await;
        };
        tokio::join!(drained, self.state.consumers().stopped(config.drain));
        // No stream left here: the others count this instance out now, not three heartbeats
        // from now.
        let _ = tokio::time::timeout(GRACE, self.state.cluster().stop()).await;
        let open = graceful.count();
        closing.cancel();
        match tokio::time::timeout(GRACE, graceful.shutdown()).await {
            Ok(()) => tracing::info!("drained; bye"),
            Err(_) => tracing::warn!(
                open_connections = open,
                "drain did not complete in {:?}; closing what is left",
                GRACE
            ),
        }
        // What the streams' ends queued is sent if the receiver takes it soon.
        if let Some(webhooks) = &self.webhooks {
            webhooks.flush(GRACE * 2).await;
        }
        Ok(())
    }
}
