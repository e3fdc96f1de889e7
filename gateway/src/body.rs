//! The response body type every stage returns, constructors for it, and what a request body may be.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// A response body. Streams never fail at the body level: an upstream failure mid-stream becomes an
/// OpenAI error event inside the body, so the body's error type is `Infallible`.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A request body the pipeline can read: hyper's `Incoming` from a socket, or any body an embedding
/// application builds (`Full<Bytes>`, `String`, `Empty<Bytes>` …). Implemented for every body that
/// fits; the one bound the pipeline is generic over, so that the server and in-process callers take
/// the same path.
pub trait RequestBody: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> RequestBody for B
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
}

/// The error of a request body, boxed: how `http-body-util` carries any body's error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body whose frames that come ready together go out as one.
///
/// hyper writes a response's buffered frames to the socket whenever the body answers `Pending`.
/// A relayed stream gets its upstream's events one at a time from hyper's client connection task
/// (one chunk per hand-off), so without this every event cost the client connection a `writev`
/// (and a TCP segment, and a wake-up of the reader), although the upstream had sent them in one
/// read. Here, when the inner body has nothing more *right now*, the task yields (`wake_by_ref`,
/// then `Pending` with nothing new buffered in hyper, so hyper's flush writes nothing) so that the
/// connection task can hand over what it already holds; only when [`Coalesce::YIELDS`] yields in
/// a row bring nothing do the gathered bytes go out, as one frame. Twice, because a task whose
/// poll used up tokio's cooperative budget has the task it woke queued *behind* its own yield,
/// not ahead of it. Nothing waits on a timer: an event that arrives alone goes out after two
/// trips through the scheduler, so streaming stays streaming. At most [`Coalesce::LIMIT`] bytes
/// are gathered.
#[derive(Debug)]
pub struct Coalesce<B: http_body::Body> {
    inner: B,
    /// Data frames gathered, not yet handed to hyper.
    parts: Vec<Bytes>,
    len: usize,
    /// What the inner body gave after the gathered data (a trailer frame, an error, its end),
    /// handed on once that data has gone.
    next: Option<Option<Result<http_body::Frame<Bytes>, B::Error>>>,
    /// Yields in a row since data last came.
    yields: u8,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> Coalesce<B> {
    /// The most bytes gathered into one frame.
    pub const LIMIT: usize = 16 * 1024;
    /// Yields in a row that bring nothing before the gathered data goes out.
    pub const YIELDS: u8 = 2;

    pub fn new(inner: B) -> Self {
        Self { inner, parts: Vec::new(), len: 0, next: None, yields: 0 }
    }

    /// The gathered data as one frame: the part itself when there is one, else one copy of all.
    fn gathered(&mut self) -> http_body::Frame<Bytes> {
        self.yields = 0;
        self.len = 0;
        let data = match self.parts.len() {
            1 => self.parts.pop().unwrap_or_default(),
            _ => {
                let mut all = bytes::BytesMut::with_capacity(self.parts.iter().map(Bytes::len).sum());
                for part in self.parts.drain(..) {
                    all.extend_from_slice(&part);
                }
                all.freeze()
            }
        };
        http_body::Frame::data(data)
    }
}

// Nothing in it is pinned: the inner body is polled through `Pin::new`, and the error a frame
// may carry is only moved.
impl<B: http_body::Body + Unpin> Unpin for Coalesce<B> {}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Coalesce<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some(next) = this.next.take() {
            return Poll::Ready(next);
        }
        loop {
            let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
            let after = match polled {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => {
                        this.yields = 0;
                        this.len += data.len();
                        this.parts.push(data);
                        if this.len >= Self::LIMIT {
                            return Poll::Ready(Some(Ok(this.gathered())));
                        }
                        continue;
                    }
                    Err(frame) => Some(Ok(frame)),
                },
                Poll::Ready(other) => other,
                Poll::Pending if this.parts.is_empty() => return Poll::Pending,
                Poll::Pending if this.yields < Self::YIELDS => {
                    this.yields += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Ready(Some(Ok(this.gathered()))),
            };
            if this.parts.is_empty() {
                return Poll::Ready(after);
            }
            this.next = Some(after);
            return Poll::Ready(Some(Ok(this.gathered())));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty() && self.next.is_none() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use http_body::{Body as _, Frame};

    use super::*;

    /// A body that plays a script: `Some(frame)` is ready, `None` is one `Pending` (with a wake,
    /// as a source that has just been handed data would give).
    struct Script(VecDeque<Option<Frame<Bytes>>>);

    impl http_body::Body for Script {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.pop_front() {
                Some(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn data(s: &str) -> Option<Frame<Bytes>> {
        Some(Frame::data(Bytes::from(s.to_owned())))
    }

    /// Polls to the end: each poll's outcome, a frame's data as text ("trailers" for trailers),
    /// `Pending` as "-".
    fn drain(script: Vec<Option<Frame<Bytes>>>) -> (Vec<String>, usize) {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut body = Coalesce::new(Script(script.into()));
        let mut seen = Vec::new();
        for _ in 0..100 {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Pending => seen.push("-".to_owned()),
                Poll::Ready(None) => return (seen, wakes.0.load(Ordering::Relaxed)),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => seen.push(String::from_utf8_lossy(&data).into_owned()),
                    Err(_) => seen.push("trailers".to_owned()),
                },
            }
        }
        panic!("no end after 100 polls: {seen:?}");
    }

    #[test]
    fn frames_ready_together_go_out_as_one() {
        let (seen, _) = drain(vec![data("a"), data("b"), data("c")]);
        assert_eq!(seen, ["abc"]);
    }

    #[test]
    fn a_lull_yields_once_and_gathers_what_the_yield_brought() {
        // a; the source's hand-off (one Pending); b; nothing more for a while (three Pendings).
        let (seen, wakes) = drain(vec![data("a"), None, data("b"), None, None, None, data("c")]);
        // The lull after "a" yields and finds "b"; the lull after "b" yields twice, finds nothing
        // the third time, and lets "ab" go; "c" goes out with the end behind it.
        assert_eq!(seen, ["-", "-", "-", "ab", "c"]);
        assert!(wakes >= 2, "every Pending with data gathered must have woken the task ({wakes})");
    }

    #[test]
    fn a_pending_with_nothing_gathered_is_passed_on() {
        let (seen, _) = drain(vec![None, data("a")]);
        assert_eq!(seen, ["-", "a"]);
    }

    #[test]
    fn trailers_and_the_end_wait_for_the_data_before_them() {
        let trailers = Some(Frame::trailers(http::HeaderMap::new()));
        let (seen, _) = drain(vec![data("a"), data("b"), trailers, data("c")]);
        assert_eq!(seen, ["ab", "trailers", "c"]);
    }

    #[test]
    fn no_frame_is_larger_than_the_limit_allows() {
        let part = "x".repeat(Coalesce::<Script>::LIMIT / 4 + 1);
        let (seen, _) = drain((0..8).map(|_| data(&part)).collect());
        assert_eq!(seen.concat().len(), 8 * part.len(), "nothing lost");
        assert!(seen.len() >= 2, "split into several frames");
        assert!(
            seen.iter().all(|s| s.len() < Coalesce::<Script>::LIMIT + part.len()),
            "{:?}",
            seen.iter().map(String::len).collect::<Vec<_>>()
        );
    }
}
