//! Server-sent events: splitting an upstream byte stream into whole events without changing a byte.
//!
//! The relay forwards each event exactly as the upstream wrote it, so only the boundaries and the
//! `data:` payload are needed. Written by hand because the SSE crates decode into owned strings and
//! re-encode on the way out, which would both cost time and alter what the client receives.

use bytes::{Bytes, BytesMut};

/// The largest event the gateway buffers: an upstream that sends more without an event boundary
/// has its stream ended (chat chunks are a few hundred bytes; the largest legitimate events, whole
/// tool-call arguments or images, stay well below this).
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One event: its raw bytes (terminator included) and its `data:` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub raw: Bytes,
    /// The `data:` lines joined with `\n`; empty for comments and data-less events.
    pub data: Bytes,
}

/// Accumulates bytes and yields complete events.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: BytesMut,
    /// Where to resume looking for a boundary, so a slow stream is not rescanned from the start.
    scanned: usize,
}

impl Splitter {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received that do not yet form a whole event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Whether the event being received is over [`MAX_EVENT_BYTES`]: once the complete events are
    /// taken, nothing else should be buffered.
    pub fn oversized(&self) -> bool {
        self.buf.len() > MAX_EVENT_BYTES
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Option<Event> {
        let end = self.boundary()?;
        let raw = self.buf.split_to(end).freeze();
        self.scanned = 0;
        Some(Event { data: data_of(&raw), raw })
    }

    /// The index just past the first blank line (`\n\n`, `\r\n\r\n`, or `\r\r`).
    fn boundary(&mut self) -> Option<usize> {
        let b = &self.buf[..];
        let start = self.scanned.saturating_sub(3);
        // Line ends are a few per event: jump between them (SIMD) instead of testing every byte.
        for i in memchr::memchr2_iter(b'\n', b'\r', &b[start..]).map(|i| start + i) {
            match b[i] {
                b'\n' if b.get(i + 1) == Some(&b'\n') => return Some(i + 2),
                b'\n' if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                b'\r' if b.get(i + 1) == Some(&b'\r') => return Some(i + 2),
                _ => {}
            }
        }
        self.scanned = b.len();
        None
    }
}

/// A JSON value as one `data: …` event (a canonical chunk, say).
pub fn data_event(value: &serde_json::Value) -> Event {
    let data = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
    let mut raw = Vec::with_capacity(data.len() + 8);
    raw.extend_from_slice(b"data: ");
    raw.extend_from_slice(&data);
    raw.extend_from_slice(b"\n\n");
    Event { raw: Bytes::from(raw), data }
}

/// `data: [DONE]`.
pub fn done_event() -> Event {
    Event { raw: Bytes::from_static(b"data: [DONE]\n\n"), data: Bytes::from_static(b"[DONE]") }
}

/// An OpenAI error event that ends a stream (built by `error.rs`, like every error body).
pub fn error_event(error: &crate::error::Error) -> Event {
    let raw = error.sse_event();
    let data = raw.strip_prefix(b"data: ").unwrap_or(&raw).trim_ascii_end().to_vec();
    Event { raw, data: Bytes::from(data) }
}

/// The error for a stream event over [`MAX_EVENT_BYTES`]: the stream is ended there.
pub fn event_too_large(upstream: &str) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::Kind::UpstreamFailed,
        format!(
            "The upstream '{upstream}' sent a stream event larger than {} MiB; the gateway stopped reading it.",
            MAX_EVENT_BYTES >> 20
        ),
    )
    .code("upstream_event_too_large")
}

fn data_of(raw: &Bytes) -> Bytes {
    // The lines between line ends, found with a SIMD search rather than a test of every byte.
    let ends = memchr::memchr2_iter(b'\n', b'\r', raw).chain(std::iter::once(raw.len()));
    let mut begin = 0;
    let lines = ends.map(|end| {
        let line = &raw[begin..end];
        begin = end + 1;
        line
    });
    let mut lines = lines.filter_map(|line| {
        let value = line.strip_prefix(b"data:")?;
        Some(value.strip_prefix(b" ").unwrap_or(value))
    });
    let Some(first) = lines.next() else { return Bytes::new() };
    match lines.next() {
        // The common case, one data line: a zero-copy slice of the event.
        None => raw.slice_ref(first),
        Some(second) => {
            let mut joined = first.to_vec();
            for line in std::iter::once(second).chain(lines) {
                joined.push(b'\n');
                joined.extend_from_slice(line);
            }
            Bytes::from(joined)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<Event> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c);
            while let Some(e) = s.next_event() {
                out.push(e);
            }
        }
        assert_eq!(s.pending(), 0, "left over");
        out
    }

    #[test]
    fn splits_across_arbitrary_chunk_boundaries_and_keeps_bytes() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\nevent: x\ndata: one\ndata: two\r\n\r\ndata:[DONE]\n\n";
        for cut in 1..stream.len() {
            let got = events(&[&stream[..cut], &stream[cut..]]);
            let raws: Vec<&[u8]> = got.iter().map(|e| &e.raw[..]).collect();
            assert_eq!(raws.concat(), stream.to_vec(), "cut at {cut}");
            let datas: Vec<&[u8]> = got.iter().map(|e| &e.data[..]).collect();
            assert_eq!(datas, vec![&b"{\"a\":1}"[..], b"", b"one\ntwo", b"[DONE]"], "cut at {cut}");
        }
    }

    #[test]
    fn an_event_without_end_is_oversized_past_the_cap() {
        let mut s = Splitter::default();
        s.push(b"data: {\"a\":1}\n\n");
        assert!(s.next_event().is_some() && s.next_event().is_none());
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..MAX_EVENT_BYTES >> 20 {
            s.push(&chunk);
            assert!(s.next_event().is_none());
        }
        assert!(!s.oversized(), "exactly at the cap is still allowed");
        s.push(b"x");
        assert!(s.oversized());
    }

    #[test]
    fn replays_a_recorded_openai_stream_byte_for_byte() {
        let fixture = include_bytes!("../../../bench/fixtures/openai/parallel_tool_calls.sse");
        let got = events(&fixture.chunks(7).collect::<Vec<_>>());
        assert_eq!(got.iter().map(|e| e.raw.to_vec()).collect::<Vec<_>>().concat(), fixture.to_vec());
        assert_eq!(&got.last().unwrap().data[..], b"[DONE]");
    }
}
