//! Event streams over HTTP/1.1, written by the hub itself.
//!
//! An idle stream is most of what a hub holds, so what each one costs is the hub's capacity.
//! Served by hyper, a stream keeps hyper's connection state for as long as it is open: an
//! 8 KiB read buffer (kept to notice the client leaving) and an 8 KiB buffer for the response
//! head, on top of the stream itself. So the first request of each plain HTTP/1.1 connection
//! is read here: when it is a `GET` of an event stream, with no body and no upgrade, the
//! router answers it and the response is written here — the head once, then each update as
//! a chunk written straight from its shared bytes, several in one write when the stream is
//! behind — while a 64-byte read notices the client
//! leaving. Everything else (any other request, a head that does not parse, is too large or
//! asks for anything unusual) is handed to hyper with the bytes already read, and hyper
//! answers it as before.
//!
//! The connection's guard ([`super::connection`]) is underneath both: the write timeout, the
//! hub's close switch and the reset on giving up apply the same way.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower::ServiceExt;

use crate::http::STREAM_PATHS;

/// Headers a request head may have to be parsed here (hyper takes more).
const MAX_HEADERS: usize = 64;

/// Bytes a client may send while its stream is open (HTTP/1.1 allows pipelining a next
/// request, which a stream never reaches); past this the connection is closed.
const MAX_DISCARDED: usize = 64 * 1024;

/// The biggest error body written here (the router's error bodies are small JSON).
const MAX_ANSWER_BODY: usize = 64 * 1024;

/// What the first bytes of a connection turned out to be.
pub(super) enum Head {
    /// A `GET` of an event stream, ready for the router.
    Stream(Box<Request<Body>>),
    /// Something for hyper, which gets these bytes first.
    Other(Bytes),
    /// The client left, or sent no complete head within the timeout: close without a word
    /// (as hyper does).
    Nothing,
}

/// Reads the connection's first request head, within `timeout` and `max_bytes`.
pub(super) async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    timeout: Duration,
    max_bytes: usize,
) -> Head {
    let read = async move {
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if buf.len() >= max_bytes {
                return Head::Other(buf.freeze());
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Head::Nothing,
                Ok(_) => {}
            }
            match parse(&buf) {
                Parsed::Partial => {}
                Parsed::Stream(request) => return Head::Stream(request),
                Parsed::Other => return Head::Other(buf.freeze()),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Head::Nothing)
}

enum Parsed {
    Stream(Box<Request<Body>>),
    Other,
    Partial,
}

/// Parses a head; only a plain stream `GET` becomes a request, anything else is hyper's.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    }
    let (Some("GET"), Some(1), Some(target)) = (head.method, head.version, head.path) else {
        return Parsed::Other;
    };
    let path = target.split('?').next().unwrap_or_default();
    if !STREAM_PATHS.contains(&path) {
        return Parsed::Other;
    }
    let mut request = Request::get(target).version(hyper::Version::HTTP_11);
    for header in head.headers.iter() {
        let unusual = match header.name.to_ascii_lowercase().as_str() {
            "transfer-encoding" | "upgrade" | "expect" => true,
            "content-length" => header.value != b"0",
            "connection" => header
                .value
                .to_ascii_lowercase()
                .windows(7)
                .any(|w| w == b"upgrade"),
            _ => false,
        };
        if unusual {
            return Parsed::Other;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return Parsed::Other;
        };
        request = request.header(name, value);
    }
    match request.body(Body::empty()) {
        Ok(request) => Parsed::Stream(Box::new(request)),
        Err(_) => Parsed::Other,
    }
}

/// Answers a stream request: the stream when the router opens one, else its answer (an
/// error), after which the connection is closed.
pub(super) async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    request: Request<Body>,
    router: Router,
) -> io::Result<()> {
    // Boxed, as is everything else that lives only until the stream opens, so that the
    // connection's task keeps no room for it while the stream is open. A client that hangs
    // up before the answer drops it: whatever it was waiting for (the application's
    // authorization callback) is not waited for on its behalf.
    let answered = Box::pin(router.oneshot(request));
    let response = tokio::select! {
        // The answer first: a client that half-closed after its request still gets it.
        biased;
        Ok(response) = answered => response,
        () = hung_up(io) => return Ok(()),
    };
    let streaming = response.status() == hyper::StatusCode::OK
        && response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streaming {
        return Box::pin(answer(io, response)).await;
    }
    let (parts, body) = response.into_parts();
    // The hub closes the connection after the stream (see `Stream`): a proxy told so does
    // not pool it for the next request, which would meet a closed socket (a 502).
    let head = head(
        &parts,
        "transfer-encoding: chunked\r\nconnection: close\r\n",
    );
    // The response's headers are not kept while the stream is open.
    drop(parts);
    Box::pin(io.write_all(&head)).await?;
    drop(head);
    let mut stream = Stream {
        body,
        pending: VecDeque::new(),
        ended: false,
        discarded: 0,
        scratch: [0; 64],
    };
    poll_fn(|cx| stream.poll(io, cx)).await?;
    io.write_all(b"0\r\n\r\n").await?;
    io.shutdown().await
}

/// Completes when the client closes its side of the connection (or sends more than
/// [`MAX_DISCARDED`] bytes, which no stream request does); what it sends is dropped.
async fn hung_up<IO: AsyncRead + Unpin>(io: &mut IO) {
    let mut scratch = [0u8; 64];
    let mut discarded = 0;
    while discarded <= MAX_DISCARDED {
        match io.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// Writes a whole (error) answer with `connection: close`.
async fn answer<IO: AsyncWrite + Unpin>(io: &mut IO, response: Response<Body>) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_ANSWER_BODY)
        .await
        .unwrap_or_default();
    let framing = format!("content-length: {}\r\nconnection: close\r\n", body.len());
    io.write_all(&head(&parts, &framing)).await?;
    io.write_all(&body).await?;
    io.shutdown().await
}

/// The status line and headers, with `framing` headers added in place of any the response
/// carried (axum gives a whole body its `content-length`).
fn head(parts: &hyper::http::response::Parts, framing: &str) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(framing.as_bytes());
    head.extend_from_slice(b"\r\n");
    head
}

/// An open stream: its body, the chunks being written, and the watch on the client's side.
struct Stream {
    body: Body,
    /// Chunks taken from the body and not yet wholly written: one write takes them all.
    /// Emptied (and freed) whenever the body has nothing more for now, so that an idle
    /// stream holds no buffer.
    pending: VecDeque<Chunk>,
    /// The body has ended.
    ended: bool,
    discarded: usize,
    /// Where whatever the client sends is read, and dropped.
    scratch: [u8; 64],
}

/// The most chunks one write takes: an update queue that has fallen behind is caught up
/// with one system call per batch instead of one per update.
const MAX_BATCH: usize = 32;

/// One body frame as an HTTP/1.1 chunk: size line, data, CRLF.
struct Chunk {
    size_line: [u8; 18],
    size_len: usize,
    data: Bytes,
    /// Bytes of the whole chunk already written.
    written: usize,
}

impl Chunk {
    fn new(data: Bytes) -> Chunk {
        // Written in place: no allocation per update and subscriber (16 hex digits and CRLF
        // always fit).
        let mut size_line = [0u8; 18];
        let mut rest = &mut size_line[..];
        let _ = write!(rest, "{:x}\r\n", data.len());
        let size_len = 18 - rest.len();
        Chunk {
            size_line,
            size_len,
            data,
            written: 0,
        }
    }

    fn total(&self) -> usize {
        self.size_len + self.data.len() + 2
    }

    /// What is left to write, as up to three slices.
    fn slices(&self) -> [io::IoSlice<'_>; 3] {
        let parts: [&[u8]; 3] = [&self.size_line[..self.size_len], &self.data, b"\r\n"];
        let mut skip = self.written;
        parts.map(|part| {
            let from = skip.min(part.len());
            skip -= from;
            io::IoSlice::new(&part[from..])
        })
    }
}

impl Stream {
    /// Ready when the body ended and all of it was written (`Ok`), or the client left or the
    /// connection failed (`Err`).
    fn poll<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(result) = self.poll_client(io, cx) {
            return Poll::Ready(result);
        }
        loop {
            ready!(self.poll_write_pending(io, cx))?;
            while !self.ended && self.pending.len() < MAX_BATCH {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            if !data.is_empty() {
                                self.pending.push_back(Chunk::new(data));
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                    Poll::Ready(None) => self.ended = true,
                    Poll::Pending => break,
                }
            }
            if self.pending.is_empty() {
                if self.ended {
                    return Poll::Ready(Ok(()));
                }
                self.pending = VecDeque::new();
                return Poll::Pending;
            }
        }
    }

    /// Writes the pending chunks, as many as the socket takes at once each time.
    fn poll_write_pending<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); MAX_BATCH * 3];
            let mut count = 0;
            for slice in self.pending.iter().flat_map(Chunk::slices) {
                if !slice.is_empty() {
                    slices[count] = slice;
                    count += 1;
                }
            }
            let mut n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while let Some(chunk) = self.pending.front_mut() {
                let left = chunk.total() - chunk.written;
                if n < left {
                    chunk.written += n;
                    break;
                }
                n -= left;
                self.pending.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads (and drops) what the client sends: ready with an error when it left (end of
    /// file, or a half close), sent too much, or the connection failed or was closed by the
    /// hub; pending otherwise.
    fn poll_client<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut buf = ReadBuf::new(&mut self.scratch);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.discarded += n;
            if self.discarded > MAX_DISCARDED {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the client sent too much on an event stream",
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_stream(head: &str) -> bool {
        matches!(parse(head.as_bytes()), Parsed::Stream(_))
    }

    #[test]
    fn only_a_plain_stream_get_is_served_here() {
        assert!(is_stream(
            "GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x\r\n\r\n"
        ));
        assert!(is_stream(
            "GET /sse/event-stream?eventName=e HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        for other in [
            "POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /.well-known/mercure/subscriptions HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /.well-known/mercure?topic=a HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET /.well-known/mercure?topic=a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET /.well-known/mercure?topic=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /.well-known/mercure?topic=a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET /.well-known/mercure?topic=a HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(!is_stream(other), "{other}");
        }
        assert!(matches!(
            parse(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost:"),
            Parsed::Partial
        ));
    }

    #[test]
    fn the_head_frames_the_body_once() {
        let (parts, _) = Response::builder()
            .status(503)
            .header("content-type", "application/json")
            .header("content-length", "2")
            .header("connection", "keep-alive")
            .body(())
            .unwrap()
            .into_parts();
        let head =
            String::from_utf8(head(&parts, "content-length: 5\r\nconnection: close\r\n")).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_chunk_is_written_in_pieces_correctly() {
        let mut chunk = Chunk::new(Bytes::from_static(b"data: x\n\n"));
        assert_eq!(chunk.total(), 3 + 9 + 2);
        let all: Vec<u8> = chunk.slices().iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(all, b"9\r\ndata: x\n\n\r\n");
        chunk.written = 5;
        let rest: Vec<u8> = chunk.slices().iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(rest, b"ta: x\n\n\r\n");
    }
}
