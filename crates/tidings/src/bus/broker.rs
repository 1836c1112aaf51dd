//! What the broker buses share: their failures, named after the broker, and time limits on
//! the operations they send.

use super::{BusError, Cause, Kind};
#[cfg(any(feature = "amqp", feature = "kafka"))]
use crate::locks::lock;

/// The failure of an operation on a broker, named after it (`redis: …`).
pub(super) fn broker_error(broker: Kind, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(Cause::new(format!("{}: {e}", broker.broker())))
}

/// The failure of a broker client's operation, named after the broker, with the client's
/// error as its source.
pub(super) fn client_error(
    broker: Kind,
    e: impl std::error::Error + Send + Sync + 'static,
) -> BusError {
    BusError::Unavailable(Cause::caused_by(format!("{}: {e}", broker.broker()), e))
}

/// True when `error`, or an error under it, says the broker's TLS certificate is not to be
/// trusted: retrying cannot cure that, the configuration (or the certificate) must change.
#[cfg(any(feature = "redis", feature = "amqp"))]
pub(super) fn is_certificate_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(_)) = e.downcast_ref::<rustls::Error>() {
            return true;
        }
        // An I/O error's `source` skips the error it wraps, and a shared error hides its type
        // behind the `Arc`: look at those too.
        let wrapped: Option<&(dyn std::error::Error + 'static)> =
            match e.downcast_ref::<std::io::Error>() {
                Some(io) => io.get_ref().map(|inner| inner as _),
                None => e
                    .downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
                    .map(|shared| &**shared as _),
            };
        if wrapped.is_some_and(is_certificate_error) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Runs one operation on a broker with a time limit: its failure, or no answer in time, is
/// [`BusError::Unavailable`], named after the broker. (The consumers of the application's own
/// sources use it too.)
pub(crate) async fn with_limit<T, E: std::error::Error + Send + Sync + 'static>(
    broker: Kind,
    limit: std::time::Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result.map_err(|e| client_error(broker, e)),
        Err(_) => Err(broker_error(broker, format!("no answer within {limit:?}"))),
    }
}

/// What a broker bus publishes through (a channel, a client) while its connection is up and
/// has caught up with the broker's log, and whether it is: opened and closed by the
/// connection task, read by publishes, readiness and start-up.
#[cfg(any(feature = "amqp", feature = "kafka"))]
#[derive(Debug)]
pub(super) struct Publishing<T> {
    current: std::sync::Mutex<Option<T>>,
    open: tokio::sync::watch::Sender<bool>,
}

#[cfg(any(feature = "amqp", feature = "kafka"))]
impl<T: Clone> Publishing<T> {
    /// Closed.
    pub(super) fn new() -> Self {
        Publishing {
            current: std::sync::Mutex::new(None),
            open: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Opens publishing through `through`, or closes it (`None`).
    pub(super) fn set(&self, through: Option<T>) {
        let open = through.is_some();
        *lock(&self.current) = through;
        self.open.send_replace(open);
    }

    /// What publishes go through, while open.
    pub(super) fn get(&self) -> Option<T> {
        lock(&self.current).clone()
    }

    /// True while open.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(super) fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// True once open, if that comes within `limit`.
    pub(super) async fn opened_within(&self, limit: std::time::Duration) -> bool {
        let mut open = self.open.subscribe();
        tokio::time::timeout(limit, open.wait_for(|o| *o))
            .await
            .is_ok_and(|o| o.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_operation_keeps_the_client_error_as_its_source() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let failed = with_limit(Kind::Redis, std::time::Duration::from_secs(1), async {
            Err::<(), _>(refused)
        })
        .await
        .unwrap_err();
        assert!(matches!(failed, BusError::Unavailable(_)));
        assert!(
            failed.to_string().starts_with("bus unavailable: redis: "),
            "{failed}"
        );
        let source = std::error::Error::source(&failed).expect("the client's error");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an I/O error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        let slow = with_limit(Kind::Nats, std::time::Duration::from_millis(10), async {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap_err();
        assert_eq!(
            slow.to_string(),
            "bus unavailable: nats: no answer within 10ms"
        );
        assert!(
            std::error::Error::source(&slow).is_none(),
            "no client error under a timeout"
        );
        let declared = failed.context("cannot declare the exchange \"x\"");
        assert!(declared
            .cause()
            .message()
            .starts_with("cannot declare the exchange \"x\": redis: "));
        assert!(
            declared.cause().source().is_some(),
            "context keeps the source"
        );
    }

    #[cfg(any(feature = "amqp", feature = "kafka"))]
    #[tokio::test]
    async fn publishing_opens_and_closes_and_is_waited_for() {
        let publishing = std::sync::Arc::new(Publishing::new());
        assert!(!publishing.is_open() && publishing.get().is_none());
        let limit = std::time::Duration::from_millis(20);
        assert!(!publishing.opened_within(limit).await);
        let opener = publishing.clone();
        tokio::spawn(async move { opener.set(Some(7)) });
        assert!(
            publishing
                .opened_within(std::time::Duration::from_secs(5))
                .await
        );
        assert_eq!((publishing.is_open(), publishing.get()), (true, Some(7)));
        publishing.set(None);
        assert!(!publishing.is_open() && publishing.get().is_none());
    }

    #[cfg(any(feature = "redis", feature = "amqp"))]
    #[test]
    fn a_certificate_error_is_found_under_io_and_shared_errors() {
        let untrusted = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            )
        };
        assert!(is_certificate_error(&untrusted()));
        let shared: std::sync::Arc<dyn std::error::Error + Send + Sync> =
            std::sync::Arc::new(untrusted());
        assert!(is_certificate_error(&shared));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_certificate_error(&refused));
        let other =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(!is_certificate_error(&other));
    }
}
