//! The body of a stream's HTTP/1.1 response, unframed as it arrives: chunked, or read until the
//! server closes the connection. Hand-written so that reading one delivery costs a read and
//! a few comparisons, not a client library's connection and body machinery: with thousands of
//! streams on one core, the load generator must not be what a latency figure measures.

use bytes::{Buf, BytesMut};

/// How the response's body is framed.
#[derive(Debug)]
pub(super) enum Body {
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunks),
    /// No framing: the body ends when the connection does.
    UntilClose,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Default)]
pub(super) struct Chunks {
    /// Data bytes left in the current chunk.
    remaining: u64,
    /// The current chunk's data has been read; its CRLF has not.
    crlf: bool,
    /// The last (empty) chunk arrived: the body is complete.
    ended: bool,
}

impl Body {
    /// The framing the response head announces.
    pub(super) fn of(headers: &[httparse::Header<'_>]) -> Result<Body, String> {
        let header = |name: &'static str| {
            headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        match header("transfer-encoding").next_back() {
            Some(coding) if coding == "chunked" => Ok(Body::Chunked(Chunks::default())),
            Some(coding) => Err(format!("unsupported transfer-encoding {coding:?}")),
            // An event stream has no length; a length would end it.
            None if header("content-length").next().is_some() => {
                Err("the stream has a content-length: it is not an event stream".into())
            }
            None => Ok(Body::UntilClose),
        }
    }

    /// Takes what `input` holds of the body, handing its data to `data` in order, and leaves
    /// an incomplete chunk-size line in `input` for the next read. Returns whether the body
    /// is complete.
    pub(super) fn decode(
        &mut self,
        input: &mut BytesMut,
        mut data: impl FnMut(&[u8]),
    ) -> Result<bool, String> {
        let chunks = match self {
            Body::UntilClose => {
                data(input);
                input.clear();
                return Ok(false);
            }
            Body::Chunked(chunks) => chunks,
        };
        while !chunks.ended && !input.is_empty() {
            if chunks.remaining > 0 {
                let n = input
                    .len()
                    .min(usize::try_from(chunks.remaining).unwrap_or(usize::MAX));
                data(&input[..n]);
                input.advance(n);
                chunks.remaining -= n as u64;
                chunks.crlf = chunks.remaining == 0;
            } else if chunks.crlf {
                if input.len() < 2 {
                    break;
                }
                if &input[..2] != b"\r\n" {
                    return Err("a chunk does not end with CRLF".into());
                }
                input.advance(2);
                chunks.crlf = false;
            } else {
                match httparse::parse_chunk_size(input) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        input.advance(used);
                        chunks.ended = true;
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        input.advance(used);
                        chunks.remaining = size;
                    }
                    Ok(httparse::Status::Partial) => break,
                    Err(_) => return Err("a malformed chunk size line".into()),
                }
            }
        }
        Ok(chunks.ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked() -> Body {
        Body::of(&[httparse::Header {
            name: "Transfer-Encoding",
            value: b"chunked",
        }])
        .unwrap()
    }

    /// Feeds `wire` to a chunked body `step` bytes at a time; returns the data and whether it
    /// ended.
    fn feed(wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), String> {
        let mut body = chunked();
        let mut input = BytesMut::new();
        let mut out = Vec::new();
        let mut ended = false;
        for piece in wire.chunks(step) {
            input.extend_from_slice(piece);
            ended = body.decode(&mut input, |d| out.extend_from_slice(d))?;
        }
        Ok((out, ended))
    }

    #[test]
    fn chunks_are_unframed_however_the_bytes_are_split() {
        let wire = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, ended) = feed(wire, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert!(ended, "step {step}");
        }
        let (data, ended) = feed(b"3\r\nabc\r\n4\r\nde", 1).unwrap();
        assert_eq!((data.as_slice(), ended), (&b"abcde"[..], false));
    }

    #[test]
    fn broken_framing_is_an_error() {
        assert!(feed(b"3\r\nabcX\r\n", 4).is_err());
        assert!(feed(b"zz\r\n", 4).is_err());
        let header = |name, value| [httparse::Header { name, value }];
        assert!(Body::of(&header("Transfer-Encoding", b"gzip")).is_err());
        assert!(Body::of(&header("Content-Length", b"10")).is_err());
        assert!(Body::of(&header("Transfer-Encoding", b"gzip, chunked")).is_err());
        assert!(matches!(Body::of(&[]), Ok(Body::UntilClose)));
    }
}
