//! The Redis key by which one instance at a time reads a Redis source (a stream, Pub/Sub
//! channels): its value names the holder, and it expires unless renewed. What the two sources
//! share of it: giving it up.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// Deletes the lease if `ARGV[1]` holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Gives the lease `key` up if `holder` holds it, so that another instance takes over
/// without waiting for it to expire (best effort, within `timeout`: it expires anyway);
/// whether it did.
pub(super) async fn release(
    conn: &mut MultiplexedConnection,
    key: String,
    holder: &str,
    timeout: Duration,
) -> bool {
    let script = redis::Script::new(RELEASE);
    let mut release = script.key(key);
    release.arg(holder);
    matches!(
        tokio::time::timeout(timeout, release.invoke_async::<i64>(conn)).await,
        Ok(Ok(1))
    )
}
