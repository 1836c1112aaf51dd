//! One subscriber stream of a run: opened over its own TCP connection from a chosen loopback
//! source address, then read until the run stops it, checking every update it receives.
//!
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tidings_client::sse::Decoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::body::Body;
use super::profile::{Profile, Target};
use super::seen::Seen;
use super::tally::Tally;

/// One stream's assignment.
pub(super) struct StreamSpec {
    /// Every instance the run's streams connect to.
    pub(super) targets: Arc<[Arc<Target>]>,
    /// The one this stream connects to first (later ones, in turn, when it reconnects).
    pub(super) first: usize,
    pub(super) profile: Profile,
    /// The topic's name on the hub.
    pub(super) topic_name: String,
    pub(super) token: Option<Arc<str>>,
    /// The local address to connect from (`None`: the kernel's choice).
    pub(super) source: Option<IpAddr>,
    pub(super) topic: u64,
    /// How many updates the topic gets.
    pub(super) expected: u64,
}

/// The topic every stream holds besides its own (`--broadcasts`).
pub(super) struct Broadcasts {
    /// The number its updates carry as their topic.
    pub(super) topic: u64,
    /// How many it gets.
    pub(super) count: u64,
    /// Its name, for a stream that names it (Mercure's second `topic=`).
    pub(super) name: Option<String>,
}

/// Streams closing and coming back at random (`--churn`).
pub(super) struct Churn {
    /// How long a stream stays between two closes, on average.
    pub(super) mean: Duration,
    /// Cancelled when the churn starts, and when it ends.
    pub(super) began: CancellationToken,
    pub(super) ended: CancellationToken,
}

impl Churn {
    /// Resolves when this stream is to close next: a random time (exponentially distributed,
    /// so that the closes over all streams come at the asked rate) after the churn began and
    /// before it ends.
    async fn next(&self) {
        self.began.cancelled().await;
        let wait = self.mean.mul_f64(-(1.0 - rand::random::<f64>()).ln());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.ended.cancelled() => std::future::pending().await,
        }
    }
}

/// What a stream shares with the rest of the run.
pub(super) struct StreamContext {
    pub(super) tally: Arc<Tally>,
    /// Bounds the connections being opened at once.
    pub(super) opening: Arc<Semaphore>,
    pub(super) open_timeout: Duration,
    /// With `--reconnect`: a stream whose connection ends comes back, after its `retry:` hint
    /// or a random wait up to this long.
    pub(super) reconnect_within: Option<Duration>,
    pub(super) broadcasts: Broadcasts,
    pub(super) churn: Option<Churn>,
    /// Cancelled when the run ends.
    pub(super) stop: CancellationToken,
}

/// The longest response head a stream accepts.
const MAX_HEAD: usize = 16 * 1024;
/// What one read may bring (a stream that is behind gets several updates per read).
const READ_BUFFER: usize = 8 * 1024;

/// An open stream: its connection, the bytes read past the response head, and its framing.
struct Open {
    tcp: TcpStream,
    input: BytesMut,
    body: Body,
}

/// Opens the stream, then reads it until the run stops; everything it sees goes to the tally.
/// With `--reconnect`, a stream whose connection ends comes back as a browser's `EventSource`
/// does: after the `retry:` hint, to the next instance, with the last event id it saw.
pub(super) async fn run(spec: StreamSpec, context: Arc<StreamContext>) {
    let tally = &context.tally;
    let Ok(permit) = context.opening.clone().acquire_owned().await else {
        return;
    };
    let began = Instant::now();
    let mut at = spec.first;
    let opened = tokio::select! {
        opened = tokio::time::timeout(context.open_timeout, open(&spec, &context, at, "")) => opened,
        () = context.stop.cancelled() => return tally.stream_failed("the run ended before the stream opened".into(), spec.topic, spec.expected),
    };
    drop(permit);
    let mut connection = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return tally.stream_failed(e.message, spec.topic, spec.expected),
        Err(_) => {
            return tally.stream_failed(
                format!(
                    "no response within {:?} (--open-timeout)",
                    context.open_timeout
                ),
                spec.topic,
                spec.expected,
            )
        }
    };
    tally.stream_opened(began.elapsed());
    let mut seen = Seen::new(spec.topic, spec.expected, &context.broadcasts);
    // Kept across connections: the last event id and the retry hint, as in a browser.
    let mut decoder = Decoder::new();
    let reconnection = &tally.reconnection;
    // (Boxed: a stream of a run without churn carries no timer in its state.)
    let next_churn = || context.churn.as_ref().map(|churn| Box::pin(churn.next()));
    let mut churn = next_churn();
    loop {
        let ended = follow(
            connection,
            &mut seen,
            &mut decoder,
            tally,
            &context.stop,
            &mut churn,
        )
        .await;
        let Some(within) = context.reconnect_within else {
            match ended {
                Ended::Dropped { reason, .. } => {
                    tally.stream_dropped(reason, spec.topic, spec.expected, seen.unique())
                }
                Ended::Stopped | Ended::Churned => {}
            }
            return;
        };
        // A page reloaded comes straight back; a stream dropped, after a wait.
        let mut wait = Duration::ZERO;
        match ended {
            Ended::Stopped => {
                if seen.moved {
                    reconnection.resumed.fetch_add(1, Relaxed);
                }
                return;
            }
            Ended::Churned => {
                reconnection.churned.fetch_add(1, Relaxed);
                churn = next_churn();
            }
            Ended::Dropped { deferred, .. } => {
                if deferred {
                    reconnection.deferred.fetch_add(1, Relaxed);
                } else if !seen.moved {
                    seen.moved = true;
                    reconnection.moved.fetch_add(1, Relaxed);
                }
                wait = retry_wait(&decoder, within);
            }
        }
        decoder.reconnected();
        seen.reconnected();
        connection = loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = context.stop.cancelled() => return,
            }
            at = (at + 1) % spec.targets.len();
            reconnection.attempts.fetch_add(1, Relaxed);
            let attempt = open(&spec, &context, at, decoder.last_event_id());
            match tokio::time::timeout(context.open_timeout, attempt).await {
                Ok(Ok(open)) => break open,
                Ok(Err(e)) => tally.reconnect_failed(e.message, e.answered),
                Err(_) => tally.reconnect_failed(
                    format!(
                        "no response within {:?} (--open-timeout)",
                        context.open_timeout
                    ),
                    false,
                ),
            }
            wait = retry_wait(&decoder, within);
        };
    }
}

/// When the churn closes this stream next (never without `--churn`).
async fn churned<F: Future<Output = ()>>(churn: &mut Option<Pin<Box<F>>>) {
    match churn {
        Some(next) => next.as_mut().await,
        None => std::future::pending().await,
    }
}

/// How long a stream waits before coming back: the `retry:` hint, as a browser's
/// `EventSource` does, or a random wait up to `within`.
fn retry_wait(decoder: &Decoder, within: Duration) -> Duration {
    decoder
        .retry()
        .unwrap_or_else(|| within.mul_f64(rand::random::<f64>()))
}

/// Why a stream could not be opened.
struct NotOpen {
    message: String,
    /// The instance answered, with something other than a stream.
    answered: bool,
}

impl NotOpen {
    fn unreachable(message: String) -> NotOpen {
        NotOpen {
            message,
            answered: false,
        }
    }
}

/// Connects to instance `at`, sends the request (resuming after `last_event_id` when it is
/// not empty) and reads the response head; returns the open stream of a 2xx response.
async fn open(
    spec: &StreamSpec,
    context: &StreamContext,
    at: usize,
    last_event_id: &str,
) -> Result<Open, NotOpen> {
    let target = &spec.targets[at];
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| NotOpen::unreachable(format!("cannot create a socket: {e}")))?;
    // Closed with a reset, not a FIN: the bench closes first, and each close would otherwise
    // hold its source port in TIME_WAIT for a minute — 20,000 streams per source address
    // would leave the next run (or a churn's reconnections) without ports.
    socket
        .set_zero_linger()
        .map_err(|e| NotOpen::unreachable(format!("cannot set SO_LINGER: {e}")))?;
    if let Some(source) = spec.source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| NotOpen::unreachable(format!("cannot bind to {source}: {e}")))?;
    }
    let mut tcp = socket
        .connect(target.addr)
        .await
        .map_err(|e| NotOpen::unreachable(format!("cannot connect to {}: {e}", target.addr)))?;
    tcp.set_nodelay(true)
        .map_err(|e| NotOpen::unreachable(format!("cannot set TCP_NODELAY: {e}")))?;
    let broadcast = context.broadcasts.name.as_deref();
    let path = spec
        .profile
        .stream_path(target, &spec.topic_name, broadcast);
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n",
        target.authority
    );
    if let Some(token) = &spec.token {
        request.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    if !last_event_id.is_empty() {
        request.push_str(&format!("last-event-id: {last_event_id}\r\n"));
    }
    request.push_str("\r\n");
    let failed =
        |e: std::io::Error| NotOpen::unreachable(format!("request to {}: {e}", target.url));
    tcp.write_all(request.as_bytes()).await.map_err(failed)?;
    let mut input = BytesMut::with_capacity(READ_BUFFER);
    loop {
        if tcp.read_buf(&mut input).await.map_err(failed)? == 0 {
            return Err(NotOpen::unreachable(format!(
                "{} closed the connection before answering",
                target.url
            )));
        }
        let answered = |message: String| NotOpen {
            message,
            answered: true,
        };
        let head = match Head::parse(&input) {
            Ok(Some(head)) => head,
            Ok(None) if input.len() < MAX_HEAD => continue,
            Ok(None) => {
                return Err(answered(format!(
                    "{} sent a response head over {MAX_HEAD} bytes",
                    target.url
                )))
            }
            Err(e) => {
                return Err(answered(format!(
                    "{} sent a malformed response: {e}",
                    target.url
                )))
            }
        };
        let status = head.status;
        input.advance(head.len);
        if (200..300).contains(&status) {
            let body = head
                .body
                .map_err(|e| answered(format!("{} answered {status}: {e}", target.url)))?;
            return Ok(Open { tcp, input, body });
        }
        let body = head.body.unwrap_or(Body::UntilClose);
        let limit = head.length.unwrap_or(EXCERPT).min(EXCERPT);
        let excerpt = refusal(tcp, input, body, limit).await;
        return Err(answered(format!(
            "{} answered {status}: {excerpt}",
            target.url
        )));
    }
}

/// A response head, parsed.
struct Head {
    status: u16,
    /// Its length in bytes.
    len: usize,
    /// How its body is framed (or why that cannot be read).
    body: Result<Body, String>,
    /// Its `content-length`, if it has one.
    length: Option<usize>,
}

impl Head {
    /// The head at the start of `input`; `None` while it is incomplete. (A function of its
    /// own, not inline in `open`: its header array would otherwise be part of every stream's
    /// task for as long as the stream lives.)
    fn parse(input: &[u8]) -> Result<Option<Head>, httparse::Error> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = response.parse(input)? else {
            return Ok(None);
        };
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
        Ok(Some(Head {
            status: response.code.unwrap_or(0),
            len,
            body: Body::of(response.headers),
            length,
        }))
    }
}

/// The most of a refusal's body an error quotes.
const EXCERPT: usize = 300;

/// The first `limit` bytes of a refusal's body, read for at most two seconds.
async fn refusal(mut tcp: TcpStream, mut input: BytesMut, mut body: Body, limit: usize) -> String {
    let mut text = Vec::new();
    let read = async {
        loop {
            match body.decode(&mut input, |d| text.extend_from_slice(d)) {
                Ok(false) if text.len() < limit => {}
                _ => break,
            }
            if !matches!(tcp.read_buf(&mut input).await, Ok(n) if n > 0) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    String::from_utf8_lossy(&text[..text.len().min(limit)])
        .trim()
        .to_owned()
}

/// How reading a stream ended.
enum Ended {
    /// The run stopped it.
    Stopped,
    /// It ended before the run did; `deferred` when the server ended it cleanly before any
    /// event (an instance turning the client away with a `retry:` hint).
    Dropped { reason: String, deferred: bool },
    /// The churn closed it (`--churn`).
    Churned,
}

/// Reads the stream until `stop`, its end, or `churn` closes it.
async fn follow(
    open: Open,
    seen: &mut Seen,
    decoder: &mut Decoder,
    tally: &Tally,
    stop: &CancellationToken,
    churn: &mut Option<Pin<Box<impl Future<Output = ()>>>>,
) -> Ended {
    let Open {
        tcp,
        mut input,
        mut body,
    } = open;
    let mut events = 0u64;
    let dropped = |reason: &str| Ended::Dropped {
        reason: reason.to_owned(),
        deferred: false,
    };
    loop {
        let decoded = body.decode(&mut input, |data| {
            for event in decoder.feed(data) {
                events += 1;
                seen.event(&event.event_type, &event.data, tally);
            }
        });
        match decoded {
            Ok(false) => {}
            Ok(true) => {
                return Ended::Dropped {
                    reason: "the server ended the stream".into(),
                    deferred: events == 0,
                }
            }
            Err(e) => return dropped(&format!("stream broke: {e}")),
        }
        // An idle stream holds no buffer: what it reads goes through its thread's.
        if input.is_empty() {
            input = BytesMut::new();
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ended::Stopped,
            () = churned(churn) => return Ended::Churned,
            ready = tcp.readable() => if let Err(e) = ready {
                return dropped(&format!("connection failed: {e}"));
            },
        }
        match read_into(&tcp, &mut input) {
            Ok(0) => return dropped("the server closed the connection"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return dropped(&format!("connection failed: {e}")),
        }
    }
}

/// Reads what `tcp` has (without waiting) onto the end of `input`, through a buffer its
/// thread's streams share: with a buffer of its own, each of a million idle streams would
/// hold 8 KiB for nothing.
fn read_into(tcp: &TcpStream, input: &mut BytesMut) -> std::io::Result<usize> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Box<[u8]>> =
            std::cell::RefCell::new(vec![0; READ_BUFFER].into_boxed_slice());
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let n = tcp.try_read(&mut scratch)?;
        input.extend_from_slice(&scratch[..n]);
        Ok(n)
    })
}
