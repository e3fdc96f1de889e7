//! What a plugin writes to its standard output and error — a Rust panic's message, `println!`,
//! `eprintln!` — goes into the gateway's log a line at a time (stdout at info, stderr at warn,
//! tagged with the plugin's name), within the plugin's log budget that the `log` import also
//! draws on; lines over the budget are counted in `weir_plugin_logs_dropped_total`. The last
//! bytes a call wrote to stderr are also kept for that call, so that the warning line of a fault
//! says why the plugin panicked instead of only "`unreachable` executed".
//!
//! Written here rather than with one of `wasmtime-wasi`'s pipes: those either drop what is written
//! (the sink) or keep all of it in memory (`MemoryOutputPipe`), and neither logs.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::host::PluginMeta;
use crate::metrics::PluginLabel;

/// The longest line logged; the rest of a longer line is cut (and the cut marked).
const MAX_LINE: usize = 4096;
/// How much of a call's stderr a fault's warning line carries (the last bytes written).
const MAX_TAIL: usize = 1024;
/// What Rust's panic hook adds after every message; a plugin has no environment to set it in.
const BACKTRACE_NOTE: &str = "note: run with `RUST_BACKTRACE=1`";

/// One instance's output: where its lines go, and what the current call wrote to stderr.
#[derive(Debug)]
pub struct Output {
    meta: Arc<PluginMeta>,
    tail: Mutex<Tail>,
}

impl Output {
    pub fn new(meta: Arc<PluginMeta>) -> Arc<Self> {
        Arc::new(Self { meta, tail: Mutex::new(Tail::default()) })
    }

    /// The instance's stdout or stderr, for its WASI context.
    pub fn stream(self: &Arc<Self>, stream: Stream) -> impl StdoutStream + 'static {
        Endpoint { output: self.clone(), stream }
    }

    /// A call begins: what earlier calls wrote is theirs.
    pub fn begin_call(&self) {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).0.clear();
    }

    /// What the current call wrote to stderr (the last [`MAX_TAIL`] bytes), its lines joined by
    /// spaces, without Rust's note about `RUST_BACKTRACE`; empty if nothing.
    pub fn said(&self) -> String {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).said()
    }

    fn remember(&self, bytes: &[u8]) {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).push(bytes);
    }

    fn emit(&self, stream: Stream, line: &[u8], cut: bool) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        // Blank lines (a panic message starts with one) and Rust's note say nothing here.
        if text.trim().is_empty() || text.starts_with(BACKTRACE_NOTE) {
            return;
        }
        if !self.meta.may_log() {
            let metrics = &self.meta.services.metrics;
            metrics.plugin_logs_dropped.get_or_create(&PluginLabel { plugin: self.meta.name.clone() }).inc();
            return;
        }
        let plugin = &*self.meta.name;
        let cut = if cut { " [cut]" } else { "" };
        match stream {
            Stream::Stdout => tracing::info!(plugin, stream = "stdout", "{text}{cut}"),
            Stream::Stderr => tracing::warn!(plugin, stream = "stderr", "{text}{cut}"),
        }
    }
}

/// The last [`MAX_TAIL`] bytes written to stderr.
#[derive(Debug, Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(MAX_TAIL)..];
        let over = (self.0.len() + bytes.len()).saturating_sub(MAX_TAIL);
        self.0.drain(..over);
        self.0.extend_from_slice(bytes);
    }

    fn said(&self) -> String {
        String::from_utf8_lossy(&self.0)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(BACKTRACE_NOTE))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Which of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What the WASI context hands out a stream from (each `get-stdout` / `get-stderr` gets its own).
#[derive(Debug)]
struct Endpoint {
    output: Arc<Output>,
    stream: Stream,
}

impl IsTerminal for Endpoint {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Endpoint {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Writer::new(self.output.clone(), self.stream))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(Writer::new(self.output.clone(), self.stream))
    }
}

/// One stream: assembles lines (a panic message arrives in several writes) and logs each whole
/// one; a line left unfinished is logged when the stream goes (with its instance, at the latest).
#[derive(Debug)]
struct Writer {
    output: Arc<Output>,
    stream: Stream,
    line: Vec<u8>,
    cut: bool,
}

impl Writer {
    fn new(output: Arc<Output>, stream: Stream) -> Self {
        Self { output, stream, line: Vec::new(), cut: false }
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.stream == Stream::Stderr {
            self.output.remember(bytes);
        }
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let room = MAX_LINE - self.line.len();
            self.line.extend_from_slice(&piece[..piece.len().min(room)]);
            self.cut |= piece.len() > room;
            if piece.ends_with(b"\n") {
                self.finish_line();
            }
        }
    }

    fn finish_line(&mut self) {
        self.output.emit(self.stream, &self.line, self.cut);
        self.line.clear();
        self.cut = false;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.finish_line();
        }
    }
}

impl OutputStream for Writer {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    /// Always ready: a line costs a copy into the buffer, and is logged (or dropped) at once.
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Writer {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Writer {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_written_in_pieces_reads_as_one_line_without_the_backtrace_note() {
        let mut tail = Tail::default();
        for piece in [
            "\nthread '<unnamed>' panicked at src/lib.rs:15:9:\n",
            "config needs a prefix",
            "\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        ] {
            tail.push(piece.as_bytes());
        }
        assert_eq!(tail.said(), "thread '<unnamed>' panicked at src/lib.rs:15:9: config needs a prefix");
    }

    #[test]
    fn the_tail_keeps_the_last_bytes_only() {
        let mut tail = Tail::default();
        tail.push(&[b'a'; 3000]);
        tail.push(b"b");
        assert_eq!(tail.0.len(), MAX_TAIL);
        assert!(tail.said().ends_with("ab"));
        tail.push(&[b'c'; 5000]);
        assert_eq!(tail.said(), "c".repeat(MAX_TAIL));
    }
}
