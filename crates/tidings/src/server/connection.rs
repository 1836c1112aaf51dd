//! One accepted connection: its socket options, the guard around its I/O, and serving HTTP on
//! it.
//!
//! (Over 600 lines: one connection's life — its caps, its guarded I/O, HTTP/1.1 or HTTP/2 with
//! the idle close — read top to bottom; the stream writer is `h1_stream.rs` already. The caps'
//! `Places` would be the next seam to cut.)
//!
//! A hub on the open internet holds connections from clients it does not trust, so each one is
//! bounded in time wherever a client could otherwise hold it for free:
//! - the request head must arrive within `header-read-timeout` (hyper's own timer for HTTP/1.1;
//!   for HTTP/2, whose preface and first request hyper waits for without one, a deadline in
//!   [`Guarded`] for the first request);
//! - a write that makes no progress for `write-timeout` means the client stopped reading (or
//!   vanished): the connection is closed. The kernel is told the same (`TCP_USER_TIMEOUT`), so
//!   a peer that disappeared without a word is noticed when the next heartbeat goes unanswered;
//! - the hub can close the connection at once through [`ConnectionInfo::closer`], even while
//!   hyper is blocked writing to a socket nobody reads (a slow consumer): hyper never polls the
//!   response body then, so ending the body would not be enough.
//!
//! Connections are capped (`max-connections`, and `max-connections-per-address` for peers that
//! are not trusted proxies: [`Places`]): past a cap a connection is closed at once, unread. An
//! HTTP/2 connection without a request open for `h2-idle-timeout` is closed with `GOAWAY`
//! (hyper's pings alone would keep it forever).
//!
//! Both ways of giving up on a client that does not read (the close switch and the write
//! timeout) end the connection with a reset (`SO_LINGER` 0) rather than a FIN: what is still
//! queued for the client in the kernel is of no use to it (it resumes from history), and a
//! graceful close would keep that queue, up to the socket's send buffer, in kernel memory
//! until the client reads it or `TCP_USER_TIMEOUT` passes.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::ServiceExt;

use ipnet::IpNet;

use super::h1_stream;
use super::rewind::Rewind;
use crate::admission::{address_key, Capped, ConnectionLimits, Tally};
use crate::http::ConnectionInfo;
use crate::metrics::{Metrics, StreamLimit};
use crate::throttle::LogOncePerSecond;

/// The time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// `header-read-timeout`: from the connection's start (or the end of the previous
    /// request) to a complete request head. Also bounds the TLS handshake.
    pub(crate) header_read: Duration,
    /// `write-timeout`: how long a write may make no progress.
    pub(crate) write: Duration,
    /// `h2-idle-timeout`: how long an HTTP/2 connection may have no request open.
    pub(crate) h2_idle: Duration,
    /// `heartbeat`: the longest a stream is silent; TCP keepalive starts after it
    /// ([`keepalive_idle`]).
    pub(crate) heartbeat: Duration,
}

/// The connections open, counted against the caps.
#[derive(Debug)]
pub(crate) struct Places {
    limits: ConnectionLimits,
    trusted_proxies: Vec<IpNet>,
    open: Mutex<Tally<IpAddr>>,
    metrics: Arc<Metrics>,
    /// Refusals are logged at most once a second.
    log_gate: LogOncePerSecond,
}

/// One connection's place; dropping it (the connection ended) gives it back.
pub(crate) struct Place {
    places: Arc<Places>,
    address: Option<IpAddr>,
}

impl Places {
    pub(crate) fn new(
        limits: ConnectionLimits,
        trusted_proxies: Vec<IpNet>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Places {
            limits,
            trusted_proxies,
            open: Mutex::default(),
            metrics,
            log_gate: LogOncePerSecond::default(),
        })
    }

    /// A place for a connection from `peer`, unless a cap is reached (counted and logged).
    pub(crate) fn take(self: &Arc<Self>, peer: IpAddr) -> Option<Place> {
        let trusted = self.trusted_proxies.iter().any(|net| net.contains(&peer));
        let address = (!trusted).then(|| address_key(peer));
        let taken = crate::locks::lock(&self.open).take(
            address.as_ref(),
            self.limits.per_instance,
            self.limits.per_address,
        );
        let limit = match taken {
            Ok(()) => {
                self.metrics.open_connections.inc();
                return Some(Place {
                    places: self.clone(),
                    address,
                });
            }
            Err(Capped::Total) => StreamLimit::Instance,
            Err(Capped::Key) => StreamLimit::Address,
        };
        self.metrics.refused_connection(limit);
        if self.log_gate.allow() {
            tracing::warn!(%peer, "connection refused: max-connections or max-connections-per-address reached (tidings_connections_refused_total)");
        }
        None
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        crate::locks::lock(&self.places.open).give_back(self.address.as_ref());
        self.places.metrics.open_connections.dec();
    }
}

/// How often an HTTP/2 connection is pinged; unanswered for as long again, it is closed.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The most a request head may hold: request line and headers over HTTP/1.1 (past it, `431`),
/// the decoded header list over HTTP/2.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Requests (streams) one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 200;

/// How long a connection may be silent before TCP keepalive probes it: 60 s, or twice the
/// heartbeat when that is longer. Past the user timeout (`write-timeout`, 30 s by default) the
/// kernel aborts a connection at its first keepalive probe left unanswered (Linux:
/// `TCP_USER_TIMEOUT` decides keepalive failures, from the last thing the peer sent), so a
/// probe must never be what a healthy stream relies on: the heartbeat's acknowledgement comes
/// first and keepalive stays quiet. With `--heartbeat 60` and keepalive after 60 s, both came
/// together on every stream; on a box holding 1,000,000 loopback streams the kernel dropped
/// some probes' answers in bursts (its backlog full), and 18,000 healthy streams were reset,
/// most without their client knowing (the reset was dropped too).
fn keepalive_idle(heartbeat: Duration) -> Duration {
    Duration::from_secs(60).max(heartbeat * 2)
}

/// Sets the socket options every connection gets: no Nagle delay (events are small and
/// latency matters), TCP keepalive after [`keepalive_idle`], and a user timeout as long as the
/// write timeout.
fn configure(tcp: &TcpStream, timeouts: Timeouts) {
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(keepalive_idle(timeouts.heartbeat))
        .with_interval(Duration::from_secs(10));
    let result = tcp
        .set_nodelay(true)
        .and_then(|()| socket.set_tcp_keepalive(&keepalive));
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let result = result.and_then(|()| socket.set_tcp_user_timeout(Some(timeouts.write)));
    if let Err(e) = result {
        tracing::debug!(error = %e, "cannot set socket options");
    }
}

/// Serves HTTP on one accepted connection until it ends: TLS first when `tls` is set
/// (HTTP/2 when the client chose it by ALPN, else HTTP/1.1), plain HTTP/1.1 otherwise.
///
/// `shutdown` holds hyper's watcher of the instance's graceful shutdown, and the token
/// cancelled when it begins (HTTP/2 connections, served without the watcher, close on it);
/// `_place` is the connection's place under the caps, held until it ends.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    timeouts: Timeouts,
    shutdown: (Watcher, CancellationToken),
    _place: Place,
) {
    let (watcher, closing) = shutdown;
    configure(&tcp, timeouts);
    let (io, h2) = match tls {
        None => (Either::Left(tcp), false),
        Some(acceptor) => {
            let handshake = Box::pin(acceptor.accept(tcp));
            match tokio::time::timeout(timeouts.header_read, handshake).await {
                Ok(Ok(stream)) => {
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    // Boxed: a plain connection's state is then no bigger than it needs.
                    (Either::Right(Box::new(stream)), h2)
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let close = CancellationToken::new();
    let info = Arc::new(ConnectionInfo::new(peer, close.clone()));
    let served = Arc::new(AtomicBool::new(false));
    let first_request = h2.then(|| served.clone());
    let mut io = Guarded::new(io, close, timeouts, first_request);
    let prefix = if h2 {
        Bytes::new()
    } else {
        let head = Box::pin(h1_stream::read_head(
            &mut io,
            timeouts.header_read,
            MAX_HEAD_BYTES,
        ));
        match head.await {
            h1_stream::Head::Stream(mut request) => {
                request
                    .extensions_mut()
                    .insert(ConnectionInfo::clone(&info));
                // Held until the stream ends: a graceful shutdown waits for it.
                let _watching = watcher;
                if let Err(e) = h1_stream::serve(&mut io, *request, router).await {
                    tracing::debug!(%peer, error = %e, "stream connection ended");
                }
                return;
            }
            h1_stream::Head::Other(prefix) => prefix,
            h1_stream::Head::Nothing => return,
        }
    };
    // Boxed, like the TLS handshake: hyper's connection state is big, and a connection that
    // became a stream above does not need room for it.
    Box::pin(serve_with_hyper(
        Rewind::new(prefix, io),
        info,
        served,
        router,
        h2,
        timeouts,
        (watcher, closing),
    ))
    .await;
}

/// Serves the connection with hyper, HTTP/2 or HTTP/1.1, until it ends.
async fn serve_with_hyper(
    io: Rewind<Guarded<Io>>,
    info: Arc<ConnectionInfo>,
    served: Arc<AtomicBool>,
    router: Router,
    h2: bool,
    timeouts: Timeouts,
    shutdown: (Watcher, CancellationToken),
) {
    let (watcher, closing) = shutdown;
    let peer = info.peer;
    let io = TokioIo::new(io);
    // Requests on the connection (open ones, their responses' bodies included), for the idle
    // limit.
    let activity = Arc::new(Activity::default());
    let counted = activity.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        served.store(true, Ordering::Relaxed);
        request
            .extensions_mut()
            .insert(ConnectionInfo::clone(&info));
        let open = OpenRequest::new(&counted);
        let answered = router.clone().oneshot(request);
        async move {
            let Ok(response) = answered.await;
            Ok::<_, std::convert::Infallible>(
                response.map(|body| axum::body::Body::new(Counted { body, _open: open })),
            )
        }
    });
    let result = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_KEEP_ALIVE))
            .keep_alive_timeout(H2_KEEP_ALIVE)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .max_concurrent_streams(H2_MAX_STREAMS);
        // Counted by the graceful shutdown while it runs; closed on `closing` instead of
        // through the watcher, so that it can be closed when idle too.
        let _watching = watcher;
        let connection = builder.serve_connection(io, service);
        serve_h2(connection, &activity, timeouts.h2_idle, closing).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Some(timeouts.header_read))
            .max_header_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        watcher.watch(builder.serve_connection(io, service)).await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Drives an HTTP/2 connection to its end, closing it gracefully (`GOAWAY`, the requests open
/// finish) when the instance shuts down, or when a whole `idle` period went by without a
/// request, and none is open (so between `idle` and twice that after the last one).
async fn serve_h2<C, E>(
    connection: C,
    activity: &Activity,
    idle: Duration,
    closing: CancellationToken,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>> + GracefulH2,
{
    let mut connection = std::pin::pin!(connection);
    let mut idle_check = tokio::time::interval(idle);
    idle_check.reset();
    let mut requests_seen = 0;
    let mut closed = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            () = closing.cancelled(), if !closed => {
                closed = true;
                connection.as_mut().close_gracefully();
            }
            _ = idle_check.tick(), if !closed => {
                let requests = activity.requests.load(Ordering::Relaxed);
                if requests == requests_seen && activity.open.load(Ordering::Relaxed) == 0 {
                    closed = true;
                    connection.as_mut().close_gracefully();
                }
                requests_seen = requests;
            }
        }
    }
}

/// The requests of one connection: how many came, and how many are open.
#[derive(Debug, Default)]
struct Activity {
    requests: AtomicU64,
    open: AtomicUsize,
}

/// An HTTP/2 connection hyper can close gracefully.
trait GracefulH2 {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S, B, E> GracefulH2 for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// One request open on a connection; counted until its response's body ends (or is dropped).
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::Relaxed);
        OpenRequest(activity.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as open.
struct Counted {
    body: axum::body::Body,
    _open: OpenRequest,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket: plain, or TLS over it.
type Io = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// The TCP socket under a connection's I/O, plain or TLS.
trait TcpSocket {
    fn tcp(&self) -> &TcpStream;

    /// Makes the coming close a reset, dropping what the kernel still holds for the peer.
    fn abort_on_close(&self) {
        if let Err(e) = socket2::SockRef::from(self.tcp()).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, "cannot set SO_LINGER");
        }
    }
}

impl TcpSocket for Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Either::Left(tcp) => tcp,
            Either::Right(tls) => tls.get_ref().0,
        }
    }
}

/// A connection's I/O with the deadlines and the close switch of the module's doc.
struct Guarded<IO> {
    io: IO,
    close: CancellationToken,
    /// Created the first time the connection waits, so that a close wakes it.
    closed: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    write_timeout: Duration,
    /// The deadline of the write that is pending now; kept (and reset) once created.
    stall: Option<Pin<Box<Sleep>>>,
    /// True while a write is pending.
    stalling: bool,
    /// Until the first request has reached the service (HTTP/2 only, where hyper has no
    /// header-read timer): the moment it is too late for it, and the flag the service sets.
    first_request: Option<(Pin<Box<Sleep>>, Arc<AtomicBool>)>,
}

impl<IO: TcpSocket> Guarded<IO> {
    /// `first_request`: for HTTP/2, the flag the service sets when a request arrives.
    fn new(
        io: IO,
        close: CancellationToken,
        timeouts: Timeouts,
        first_request: Option<Arc<AtomicBool>>,
    ) -> Self {
        Guarded {
            io,
            close,
            closed: None,
            write_timeout: timeouts.write,
            stall: None,
            stalling: false,
            first_request: first_request
                .map(|served| (Box::pin(tokio::time::sleep(timeouts.header_read)), served)),
        }
    }

    /// Ready when the connection was closed by the hub; otherwise registers for the close.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let close = &self.close;
        let closed = self
            .closed
            .get_or_insert_with(|| Box::pin(close.clone().cancelled_owned()));
        match closed.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.abort_closed()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Runs after a write-side operation: a finished one clears the stall deadline, a pending
    /// one starts it (once) and fails when it has passed or the hub closed the connection.
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalling = false;
            return result;
        }
        if let Poll::Ready(e) = self.poll_closed(cx) {
            return Poll::Ready(Err(e));
        }
        let deadline = Instant::now() + self.write_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.stalling {
            stall.as_mut().reset(deadline);
            self.stalling = true;
        }
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.io.abort_on_close();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client has not read for write-timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn refuse_if_closed(&self) -> Option<io::Error> {
        self.close.is_cancelled().then(|| self.abort_closed())
    }

    /// The hub closed the connection: it is to be reset, with this error for hyper.
    fn abort_closed(&self) -> io::Error {
        self.io.abort_on_close();
        io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the hub")
    }
}

impl<IO: AsyncRead + TcpSocket + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.refuse_if_closed() {
            return Poll::Ready(Err(e));
        }
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => {
                if let Poll::Ready(e) = this.poll_closed(cx) {
                    return Poll::Ready(Err(e));
                }
                if this
                    .first_request
                    .as_ref()
                    .is_some_and(|(_, served)| served.load(Ordering::Relaxed))
                {
                    this.first_request = None;
                }
                if let Some((deadline, _)) = &mut this.first_request {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no request within header-read-timeout",
                        )));
                    }
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl<IO: AsyncWrite + TcpSocket + Unpin> Guarded<IO> {
    /// Runs a write-side operation unless the hub closed the connection, under the write
    /// timeout.
    fn write_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut IO>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Some(e) = self.refuse_if_closed() {
            return Poll::Ready(Err(e));
        }
        let result = op(Pin::new(&mut self.io), cx);
        self.after_write(cx, result)
    }
}

impl<IO: AsyncWrite + TcpSocket + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().write_with(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A connection the hub gave up on gets no FIN queued behind what it never read: it
        // is reset when it is dropped. TLS sends close_notify first, which a client that does
        // not read holds up: it gets the same write timeout.
        self.get_mut().write_with(cx, |io, cx| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's socket is probed by keepalive only after a silence longer than its
    /// heartbeat: with keepalive no later than the heartbeat, the kernel reset healthy streams
    /// whose one probe went unanswered (see `keepalive_idle`). Read back from a real socket.
    #[tokio::test]
    async fn keepalive_waits_longer_than_the_heartbeat() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        for heartbeat in [1, 15, 30, 60, 300] {
            let timeouts = Timeouts {
                header_read: Duration::from_secs(10),
                write: Duration::from_secs(30),
                h2_idle: Duration::from_secs(180),
                heartbeat: Duration::from_secs(heartbeat),
            };
            configure(&accepted, timeouts);
            let socket = socket2::SockRef::from(&accepted);
            let idle = socket.tcp_keepalive_time().unwrap();
            assert!(
                idle > Duration::from_secs(heartbeat) && idle >= Duration::from_secs(60),
                "heartbeat {heartbeat} s: keepalive after {idle:?}"
            );
            assert_eq!(socket.tcp_user_timeout().unwrap(), Some(timeouts.write));
        }
    }
}
