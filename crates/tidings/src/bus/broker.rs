//! What the broker buses share: their failures, named after the broker, and time limits on
//! the operations they send.

use super::BusError;

/// The failure of an operation on a broker, named after it (`redis: …`).
pub(super) fn broker_error(broker: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{broker}: {e}"))
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
