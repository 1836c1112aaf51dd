//! One subscriber stream of a run: opened over its own TCP connection from a chosen loopback
//! source address, then read until the run stops it, checking every update it receives.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};
use hyper_util::rt::TokioIo;
use tidings_client::sse::Decoder;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::plan::Stamp;
use super::profile::Target;
use super::tally::Tally;

/// One stream's assignment.
pub(super) struct StreamSpec {
    pub(super) target: Arc<Target>,
    /// Path and query to request.
    pub(super) path: String,
    pub(super) token: Option<Arc<str>>,
    /// The local address to connect from (`None`: the kernel's choice).
    pub(super) source: Option<IpAddr>,
    pub(super) topic: u64,
    /// How many updates the topic gets.
    pub(super) expected: u64,
}

/// What a stream shares with the rest of the run.
pub(super) struct StreamContext {
    pub(super) tally: Arc<Tally>,
    /// Bounds the connections being opened at once.
    pub(super) opening: Arc<Semaphore>,
    pub(super) open_timeout: Duration,
    /// Cancelled when the run ends.
    pub(super) stop: CancellationToken,
}

type Connection = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// Opens the stream, then reads it until the run stops; everything it sees goes to the tally.
pub(super) async fn run(spec: StreamSpec, context: Arc<StreamContext>) {
    let tally = &context.tally;
    let Ok(permit) = context.opening.clone().acquire_owned().await else {
        return;
    };
    let began = Instant::now();
    let opened = tokio::select! {
        opened = tokio::time::timeout(context.open_timeout, open(&spec)) => opened,
        () = context.stop.cancelled() => return tally.stream_failed("the run ended before the stream opened".into(), spec.expected),
    };
    drop(permit);
    let (connection, body) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return tally.stream_failed(e, spec.expected),
        Err(_) => {
            return tally.stream_failed(
                format!(
                    "no response within {:?} (--open-timeout)",
                    context.open_timeout
                ),
                spec.expected,
            )
        }
    };
    tally.stream_opened(began.elapsed());
    let mut seen = Seen::new(spec.topic, spec.expected);
    let ended = follow(connection, body, &mut seen, tally, &context.stop).await;
    if let Some(reason) = ended {
        tally.stream_dropped(reason, spec.expected - seen.unique);
    }
}

/// Connects and sends the request; returns the connection and the body of a 2xx response.
async fn open(spec: &StreamSpec) -> Result<(Connection, Incoming), String> {
    let target = &spec.target;
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("cannot create a socket: {e}"))?;
    if let Some(source) = spec.source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("cannot bind to {source}: {e}"))?;
    }
    let tcp = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.addr))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    let (mut sender, mut connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP handshake with {}: {e}", target.addr))?;
    let mut request = hyper::Request::get(&spec.path)
        .header(HOST, &target.authority)
        .header(ACCEPT, "text/event-stream");
    if let Some(token) = &spec.token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| format!("bad request for {}: {e}", spec.path))?;
    let response = tokio::select! {
        response = sender.send_request(request) => response.map_err(|e| format!("request to {}: {e}", target.url))?,
        ended = &mut connection => return Err(format!("{} closed the connection before answering: {ended:?}", target.url)),
    };
    let status = response.status();
    if status.is_success() {
        return Ok((connection, response.into_body()));
    }
    // Drive the connection while reading a bounded excerpt of the refusal's body.
    let excerpt = async {
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                text.extend_from_slice(&data);
            }
            if text.len() > 300 {
                break;
            }
        }
        String::from_utf8_lossy(&text[..text.len().min(300)]).into_owned()
    };
    let excerpt = tokio::select! {
        text = excerpt => text,
        _ = connection => String::new(),
        () = tokio::time::sleep(Duration::from_secs(2)) => String::new(),
    };
    Err(format!(
        "{} answered {status}: {}",
        target.url,
        excerpt.trim()
    ))
}

/// Reads the stream until `stop`; returns why it ended early, if it did.
async fn follow(
    mut connection: Connection,
    mut body: Incoming,
    seen: &mut Seen,
    tally: &Tally,
    stop: &CancellationToken,
) -> Option<String> {
    let mut decoder = Decoder::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    for event in decoder.feed(&data) {
                        match Stamp::parse(&event.data) {
                            Some(stamp) if stamp.k == seen.topic => match seen.record(stamp.s) {
                                Arrival::First { in_order } => {
                                    tally.delivered(stamp.t, true);
                                    if !in_order {
                                        tally.out_of_order.fetch_add(1, Relaxed);
                                    }
                                }
                                Arrival::Repeat => tally.delivered(stamp.t, false),
                                Arrival::Unknown => tally.error(format!("update {} on topic {} is past the topic's last", stamp.s, stamp.k)),
                            },
                            _ => {
                                tally.stray.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
                Some(Err(e)) => return Some(format!("stream broke: {e}")),
                None => return Some("the server ended the stream".into()),
            },
            ended = &mut connection => return Some(match ended {
                Ok(()) => "the server closed the connection".into(),
                Err(e) => format!("connection failed: {e}"),
            }),
        }
    }
}

/// Which of its topic's updates a stream has received.
struct Seen {
    topic: u64,
    bits: Vec<u64>,
    expected: u64,
    unique: u64,
    /// The highest sequence number received so far.
    highest: Option<u64>,
}

/// What one received update was to its stream.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// Received for the first time; `in_order` unless a later one came first.
    First { in_order: bool },
    /// Received before.
    Repeat,
    /// A number the topic never gets.
    Unknown,
}

impl Seen {
    fn new(topic: u64, expected: u64) -> Seen {
        Seen {
            topic,
            bits: vec![0; expected.div_ceil(64) as usize],
            expected,
            unique: 0,
            highest: None,
        }
    }

    fn record(&mut self, seq: u64) -> Arrival {
        if seq >= self.expected {
            return Arrival::Unknown;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.bits[word] & bit != 0 {
            return Arrival::Repeat;
        }
        self.bits[word] |= bit;
        self.unique += 1;
        let in_order = self.highest.is_none_or(|h| seq > h);
        self.highest = self.highest.max(Some(seq));
        Arrival::First { in_order }
    }
}

#[cfg(test)]
mod tests {
    use super::{Arrival, Seen};

    #[test]
    fn a_stream_tells_first_deliveries_from_repeats_late_ones_and_strays() {
        let mut seen = Seen::new(0, 130);
        assert_eq!(seen.record(0), Arrival::First { in_order: true });
        assert_eq!(seen.record(129), Arrival::First { in_order: true });
        assert_eq!(seen.record(5), Arrival::First { in_order: false });
        assert_eq!(seen.record(0), Arrival::Repeat);
        assert_eq!(seen.record(130), Arrival::Unknown);
        assert_eq!(seen.unique, 3);
    }
}
