//! Start-up that waits for the broker: an instance whose broker cannot be reached yet (it is
//! starting too, or restarting, or a declaration raced another instance's) serves anyway —
//! `/readyz` answers 503, publishes and new streams are refused as for a lost connection —
//! and keeps trying with the reconnect machine's backoff until the bus connects. Only a
//! configuration error (a bad URL, credentials or a certificate the broker or this machine
//! refuses, an unknown vhost) ends it, with its message.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::sync::watch;

use super::reconnect::{ConnectionState, Reconnect};
use super::{
    connect, Bus, BusError, BusOptions, Cause, Published, Registry, Replay, ReplayFrom,
    SubscriberRecord,
};
use crate::hub::Hub;
use crate::update::{SessionId, Update};

/// A bus that is being connected: every call is refused as unavailable until it is, and
/// passed on after. Neither trait it implements has a default method, so a method added to
/// one cannot be left unforwarded here.
#[derive(Debug)]
struct Starting {
    kind: super::Kind,
    bus: Arc<OnceLock<Arc<dyn Bus>>>,
    /// Handed out before the bus connects, when its kind keeps a registry: callers may keep
    /// it, and it answers for the bus's own registry once there is one.
    registry: Option<Arc<dyn Registry>>,
}

/// The connected bus, or why there is none yet.
fn connected(kind: super::Kind, bus: &OnceLock<Arc<dyn Bus>>) -> Result<&Arc<dyn Bus>, BusError> {
    bus.get().ok_or_else(|| {
        BusError::Unavailable(Cause::new(format!(
            "{}: not connected yet since start-up",
            kind.name()
        )))
    })
}

#[async_trait]
impl Bus for Starting {
    fn kind(&self) -> &'static str {
        self.kind.name()
    }

    async fn publish(&self, update: Update) -> Result<Published, BusError> {
        connected(self.kind, &self.bus)?.publish(update).await
    }

    async fn listening(&self) -> Result<(), BusError> {
        connected(self.kind, &self.bus)?.listening().await
    }

    async fn replay(
        &self,
        from: &ReplayFrom,
        topics: Option<&[Arc<str>]>,
    ) -> Result<Replay, BusError> {
        connected(self.kind, &self.bus)?.replay(from, topics).await
    }

    fn state(&self) -> ConnectionState {
        self.bus
            .get()
            .map_or(ConnectionState::Connecting, |bus| bus.state())
    }

    fn registry(&self) -> Option<Arc<dyn Registry>> {
        self.registry.clone()
    }

    async fn signal(&self, signal: bytes::Bytes) -> Result<(), BusError> {
        connected(self.kind, &self.bus)?.signal(signal).await
    }
}

/// The registry of a bus that is being connected (see [`Starting::registry`]).
#[derive(Debug)]
struct StartingRegistry {
    kind: super::Kind,
    bus: Arc<OnceLock<Arc<dyn Bus>>>,
}

impl StartingRegistry {
    fn registry(&self) -> Result<Arc<dyn Registry>, BusError> {
        connected(self.kind, &self.bus)?.registry().ok_or_else(|| {
            BusError::Unavailable(Cause::new(format!(
                "{}: connected without a registry",
                self.kind.name()
            )))
        })
    }
}

#[async_trait]
impl Registry for StartingRegistry {
    async fn sessions_presence(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<Vec<(String, usize)>>, BusError> {
        self.registry()?.sessions_presence(sessions).await
    }

    async fn session_online(&self, session: &SessionId, streams: usize) -> Result<bool, BusError> {
        self.registry()?.session_online(session, streams).await
    }

    async fn session_offline(&self, session: &SessionId) -> Result<bool, BusError> {
        self.registry()?.session_offline(session).await
    }

    async fn sweep_sessions(&self) -> Result<Vec<SessionId>, BusError> {
        self.registry()?.sweep_sessions().await
    }

    async fn subscribers(&self) -> Result<Option<Vec<SubscriberRecord>>, BusError> {
        self.registry()?.subscribers().await
    }
}

/// A bus that may still be connecting, and where a configuration error found later is told.
#[derive(Debug)]
pub struct Started {
    /// The bus: connected, or connecting (not ready) until it is.
    pub bus: Arc<dyn Bus>,
    /// Holds the error that ended the attempts, if one did: the instance must stop with it.
    pub failed: watch::Receiver<Option<BusError>>,
}

/// Connects the bus named by `url`. A configuration error is returned at once; a broker that
/// cannot be reached yet gives a bus that is not ready, connected in the background with
/// `options.backoff` between attempts (a configuration error met then is sent on
/// [`Started::failed`]).
///
/// # Errors
/// [`BusError::Config`] when the URL or the options are wrong, or the broker refuses this
/// instance for a reason retrying cannot cure.
pub async fn start(url: &str, options: &BusOptions, hub: Hub) -> Result<Started, BusError> {
    let (failure, failed) = watch::channel(None);
    let first = match Box::pin(connect(url, options, hub.clone())).await {
        Ok(bus) => return Ok(Started { bus, failed }),
        Err(e @ BusError::Config(_)) => return Err(e),
        Err(e) => e,
    };
    // `connect` refused any URL that names no bus.
    let kind = super::Kind::of(url).unwrap_or(super::Kind::Memory);
    let broker = kind.broker();
    let bus = Arc::new(OnceLock::new());
    let registry = kind.keeps_registry().then(|| {
        Arc::new(StartingRegistry {
            kind,
            bus: bus.clone(),
        }) as Arc<dyn Registry>
    });
    let starting = Arc::new(Starting {
        kind,
        bus,
        registry,
    });
    let mut reconnect = Reconnect::new(
        broker,
        options.backoff,
        hub.metrics().bus_reconnects.clone(),
    );
    reconnect.failed(&first);
    let (url, options, pending) = (url.to_owned(), options.clone(), starting.clone());
    tokio::spawn(async move {
        loop {
            reconnect.wait().await;
            match Box::pin(connect(&url, &options, hub.clone())).await {
                Ok(bus) => {
                    debug_assert_eq!(bus.registry().is_some(), kind.keeps_registry());
                    tracing::info!("{broker}: connected");
                    let _ = pending.bus.set(bus);
                    return;
                }
                Err(e @ BusError::Config(_)) => {
                    failure.send_replace(Some(e));
                    return;
                }
                Err(e) => reconnect.failed(&e),
            }
        }
    });
    Ok(Started {
        bus: starting,
        failed,
    })
}
