//! What the broker buses share: their failures, named after the broker, and time limits on
//! the operations they send.

use std::sync::Arc;

use super::BusError;

/// The failure of an operation on a broker, named after it (`redis: …`).
pub(super) fn broker_error(broker: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{broker}: {e}"))
}

/// True when `error`, or an error under it, says the broker's TLS certificate is not to be
/// trusted: retrying cannot cure that, the configuration (or the certificate) must change.
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
                    .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
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
/// [`BusError::Unavailable`], named after the broker.
pub(super) async fn with_limit<T, E: std::fmt::Display>(
    broker: &str,
    limit: std::time::Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result.map_err(|e| broker_error(broker, e)),
        Err(_) => Err(broker_error(broker, format!("no answer within {limit:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_error_is_found_under_io_and_shared_errors() {
        let untrusted = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            )
        };
        assert!(is_certificate_error(&untrusted()));
        let shared: Arc<dyn std::error::Error + Send + Sync> = Arc::new(untrusted());
        assert!(is_certificate_error(&shared));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_certificate_error(&refused));
        let other =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(!is_certificate_error(&other));
    }
}
