//! Relaying a PostgreSQL outbox table: the application inserts an event row in the same
//! transaction as its business rows (`docs/outbox.sql` has the table and its trigger), and
//! Tidings publishes committed rows, then deletes them.
//!
//! - **Nothing skipped.** The relay keeps no high-water mark: it reads what is in the table,
//!   oldest id first, and deletes what it published. A row whose transaction commits after a
//!   younger one was relayed (ids are taken at insert, rows appear at commit) is simply found
//!   by the next read; a transaction that rolls back leaves no row to find.
//! - **One relay per partition.** Rows fall into `partitions` by their `partition_key` (the
//!   application sets it to the topic or session whose order matters); each partition is
//!   relayed by the instance that holds its advisory lock, so rows of one key are published
//!   in their order. An instance takes one more free partition per poll; the lock is the
//!   connection's, so it goes with an instance that dies, and another takes it within a poll.
//! - **Once.** An update's id is `urn:tidings:<consumer>:<table oid>.<row id>`: rows published
//!   by an instance that died before deleting them are published again by the next, and
//!   stored once. (The table's oid changes when it is created again, its ids starting over.)
//! - **Woken, and polled.** The table's trigger `NOTIFY`s at commit; the relay also reads
//!   every `poll` (default 1 s), so that rows are relayed without the trigger too.
//!
//! A row that cannot be mapped is deleted, counted and logged, as any skipped message.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_postgres::{AsyncMessage, Client};

use super::mapping::Message;
use super::run::{Farewell, Handled, Handler};
use super::spec::OutboxSource;
use crate::bus::reconnect::{self, Stop};
use crate::bus::{BusError, Cause};
use crate::update::UpdateId;

/// Rows read at once.
const BATCH: i64 = 256;

/// The connection a consumer's reconnect machine drives.
pub(super) struct Target {
    source: OutboxSource,
    handler: Arc<Handler>,
    timeout: Duration,
    /// The first key of the consumer's advisory locks (the second is the partition).
    lock_class: i32,
}

/// An open connection: its client, what wakes the relay, and whether it closed.
pub(super) struct Link {
    client: Client,
    notified: Arc<Notify>,
    closed: watch::Receiver<Option<String>>,
    driver: tokio::task::JoinHandle<()>,
    /// The table's oid: part of the ids.
    oid: u32,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Target {
    pub(super) fn new(source: OutboxSource, handler: Arc<Handler>, timeout: Duration) -> Self {
        // A stable hash of the consumer's name: instances of one consumer share its locks.
        let digest = ring::digest::digest(&ring::digest::SHA256, handler.name.as_bytes());
        let mut class = [0u8; 4];
        class.copy_from_slice(&digest.as_ref()[..4]);
        Target {
            source,
            handler,
            timeout,
            lock_class: i32::from_be_bytes(class),
        }
    }

    fn lost(&self, what: &str, e: tokio_postgres::Error) -> Stop {
        self.handler.lost(what, e)
    }

    /// One operation on the source, within the time limit.
    async fn timed<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, BusError> {
        self.handler.timed(self.timeout, what, f).await
    }

    /// Reads a partition's oldest rows (with one partition, the table needs no
    /// `partition_key` column).
    async fn oldest(
        &self,
        client: &Client,
        partition: i32,
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let table = &self.source.table;
        if self.source.partitions == 1 {
            let select = format!(
                "SELECT id, payload::text, ''::text FROM {table} ORDER BY id LIMIT {BATCH}"
            );
            client.query(&select, &[]).await
        } else {
            let select = format!(
                "SELECT id, payload::text, partition_key FROM {table} \
                 WHERE (hashtext(partition_key) & 2147483647) % {} = $1 ORDER BY id LIMIT {BATCH}",
                self.source.partitions
            );
            client.query(&select, &[&partition]).await
        }
    }

    /// Relays partition `partition` until it is empty; `Ok(false)` when the instance stops.
    async fn relay(&self, link: &Link, partition: i32) -> Result<bool, Stop> {
        let delete = format!("DELETE FROM {} WHERE id = ANY($1)", self.source.table);
        loop {
            let rows = match self.oldest(&link.client, partition).await {
                Ok(rows) => rows,
                Err(e) => return Err(self.lost("reading the outbox failed", e)),
            };
            if rows.is_empty() {
                return Ok(true);
            }
            let mut done: Vec<i64> = Vec::with_capacity(rows.len());
            let mut stopped = false;
            {
                let _busy = self.handler.busy.lock().await;
                for row in &rows {
                    if self.handler.stop.is_cancelled() {
                        stopped = true;
                        break;
                    }
                    let id: i64 = row.get(0);
                    let payload: Option<&str> = row.get(1);
                    let key: &str = row.get(2);
                    let message = Message {
                        body: payload.unwrap_or("null").as_bytes(),
                        name: &self.source.table,
                        captures: Vec::new(),
                        key: Some(key),
                    };
                    let place = format!("row {id} of {}", self.source.table);
                    let (consumer, oid) = (self.handler.name.clone(), link.oid);
                    let update_id = move || UpdateId::derived(format!("{consumer}:{oid}.{id}"));
                    match self.handler.handle(&message, &place, update_id).await {
                        Handled::Published | Handled::Skipped => done.push(id),
                        Handled::Stopped => {
                            stopped = true;
                            break;
                        }
                    }
                }
                if !done.is_empty() {
                    if let Err(e) = link.client.execute(&delete, &[&done]).await {
                        // Published, not deleted: the next read publishes them again, and
                        // the bus stores each once.
                        return Err(self.lost("deleting relayed rows failed", e));
                    }
                }
            }
            if stopped {
                return Ok(false);
            }
        }
    }

    /// Tries to take one more partition's lock; the partitions this instance holds.
    async fn take_one(&self, link: &Link, held: &mut BTreeSet<i32>) -> Result<(), Stop> {
        for partition in 0..self.source.partitions as i32 {
            if held.contains(&partition) {
                continue;
            }
            let taken = link
                .client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&self.lock_class, &partition],
                )
                .await
                .map_err(|e| self.lost("taking a partition's lock failed", e))?;
            if taken.get::<_, bool>(0) {
                tracing::info!(consumer = %self.handler.name, partition, "consumer: relaying a partition of the outbox");
                held.insert(partition);
                return Ok(());
            }
        }
        Ok(())
    }
}

/// TLS for `sslmode=require`: the server's certificate verified against the system's roots,
/// and `sslrootcert`'s when given.
fn tls_config(root_cert: Option<&str>) -> Result<rustls::ClientConfig, BusError> {
    use rustls::pki_types::pem::PemObject;
    let config_error = |what: String| BusError::Config(Cause::new(what));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = root_cert {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| config_error(format!("sslrootcert {path:?}: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| config_error(format!("sslrootcert {path:?}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| config_error(format!("sslrootcert {path:?}: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| config_error(format!("TLS for PostgreSQL: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

/// Connects with `tls`, and starts the connection's own task: it carries the queries, hands
/// notifications to `wake`, and says in `closed` why it ended.
async fn open<T>(
    config: &tokio_postgres::Config,
    tls: T,
    wake: Arc<Notify>,
    closed: watch::Sender<Option<String>>,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    let driver = tokio::spawn(async move {
        let why = loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => break e.to_string(),
                None => break "the connection closed".to_owned(),
            }
        };
        closed.send_replace(Some(why));
    });
    Ok((client, driver))
}

/// The partitions' advisory locks go with the session when its connection closes.
impl Farewell for Target {}

impl reconnect::Target for Target {
    type Connection = Link;

    async fn connect(&mut self) -> Result<Link, BusError> {
        let notified = Arc::new(Notify::new());
        let (closed_tx, closed) = watch::channel(None);
        let config = &self.source.config;
        // Encrypted, and verified, with sslmode=require; in the clear otherwise (libpq's
        // `prefer` would encrypt without verifying anything: no better than the clear).
        let opened = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
                self.source.root_cert.as_deref(),
            )?);
            let connect = open(config, tls, notified.clone(), closed_tx);
            self.timed("cannot connect", connect).await?
        } else {
            let mut config = config.clone();
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let connect = open(&config, tokio_postgres::NoTls, notified.clone(), closed_tx);
            self.timed("cannot connect", connect).await?
        };
        let (client, driver) = opened;
        let table = &self.source.table;
        let oid = self
            .timed(
                "cannot find the outbox table",
                client.query_one("SELECT $1::text::regclass::oid", &[table]),
            )
            .await
            .map_err(|e| {
                e.context(format_args!(
                    "the table {table:?} must exist (docs/outbox.sql creates it)"
                ))
            })?
            .get::<_, u32>(0);
        let listen = format!("LISTEN {}", self.source.channel);
        self.timed("cannot LISTEN", client.batch_execute(&listen))
            .await?;
        tracing::info!(consumer = %self.handler.name, table, "consumer: connected");
        Ok(Link {
            client,
            notified,
            closed,
            driver,
            oid,
        })
    }

    async fn deliver(&mut self, mut link: Link) -> Stop {
        let mut held = BTreeSet::new();
        let mut polled: Option<Instant> = None;
        loop {
            if self.handler.stop.is_cancelled() {
                return std::future::pending().await;
            }
            // Partitions are taken, and the backlog counted, at each poll only: every
            // instance is woken at each commit, and most of them hold nothing.
            if polled.is_none_or(|at| at.elapsed() >= self.source.poll) {
                polled = Some(Instant::now());
                if let Err(stop) = self.take_one(&link, &mut held).await {
                    return stop;
                }
                let count = format!("SELECT count(*) FROM {}", self.source.table);
                match link.client.query_one(&count, &[]).await {
                    Ok(row) => self.handler.lag(row.get::<_, i64>(0).max(0) as u64),
                    Err(e) => return self.lost("counting the outbox's rows failed", e),
                }
            }
            for &partition in &held {
                match self.relay(&link, partition).await {
                    Ok(true) => {}
                    Ok(false) => return std::future::pending().await,
                    Err(stop) => return stop,
                }
            }
            let next_poll = self
                .source
                .poll
                .saturating_sub(polled.map_or(Duration::ZERO, |at| at.elapsed()));
            tokio::select! {
                () = self.handler.stop.cancelled() => {}
                () = link.notified.notified(), if !held.is_empty() => {}
                () = tokio::time::sleep(next_poll) => {}
                why = async {
                    link.closed
                        .wait_for(Option::is_some)
                        .await
                        .map(|why| why.clone().unwrap_or_default())
                        .unwrap_or_default()
                } => {
                    return Stop::Lost(Cause::new(format!("consumer {}: {why}", self.handler.name)));
                }
            }
        }
    }
}
