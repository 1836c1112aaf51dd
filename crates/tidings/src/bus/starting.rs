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
use super::{connect, Bus, BusError, BusOptions, Published, Replay, ReplayFrom, SubscriberRecord};
use crate::hub::Hub;
use crate::update::{SessionId, Update};

/// A bus that is being connected: every call is refused as unavailable until it is, and
/// passed on after.
#[derive(Debug)]
struct Starting {
    kind: &'static str,
    bus: OnceLock<Arc<dyn Bus>>,
}

impl Starting {
    fn bus(&self) -> Result<&Arc<dyn Bus>, BusError> {
        self.bus.get().ok_or_else(|| {
            BusError::Unavailable(format!("{}: not connected yet since start-up", self.kind).into())
        })
    }
}

#[async_trait]
impl Bus for Starting {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn publish(&self, update: Update) -> Result<Published, BusError> {
        self.bus()?.publish(update).await
    }

    async fn listening(&self) -> Result<(), BusError> {
        self.bus()?.listening().await
    }

    async fn replay(&self, from: &ReplayFrom) -> Result<Replay, BusError> {
        self.bus()?.replay(from).await
    }

    async fn replay_topics(
        &self,
        from: &ReplayFrom,
        topics: &[Arc<str>],
    ) -> Result<Replay, BusError> {
        self.bus()?.replay_topics(from, topics).await
    }

    fn state(&self) -> ConnectionState {
        self.bus
            .get()
            .map_or(ConnectionState::Connecting, |bus| bus.state())
    }

    async fn session_presence(
        &self,
        session: &SessionId,
    ) -> Result<Option<Vec<(String, usize)>>, BusError> {
        self.bus()?.session_presence(session).await
    }

    async fn subscribers(&self) -> Result<Option<Vec<SubscriberRecord>>, BusError> {
        self.bus()?.subscribers().await
    }

    async fn session_online(
        &self,
        session: &SessionId,
        streams: usize,
    ) -> Result<Option<bool>, BusError> {
        self.bus()?.session_online(session, streams).await
    }

    async fn session_offline(&self, session: &SessionId) -> Result<Option<bool>, BusError> {
        self.bus()?.session_offline(session).await
    }

    async fn sweep_sessions(&self) -> Result<Vec<SessionId>, BusError> {
        self.bus()?.sweep_sessions().await
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
    let starting = Arc::new(Starting {
        kind: kind.name(),
        bus: OnceLock::new(),
    });
    let mut reconnect = Reconnect::new(broker, options.backoff, hub.metrics().clone());
    reconnect.failed(&first);
    let (url, options, pending) = (url.to_owned(), options.clone(), starting.clone());
    tokio::spawn(async move {
        loop {
            reconnect.wait().await;
            match Box::pin(connect(&url, &options, hub.clone())).await {
                Ok(bus) => {
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
