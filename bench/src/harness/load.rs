//! The load generator: keep-alive HTTP/1.1 connection pools, open and closed loops, latency summaries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Latency percentiles of the successful requests of a run.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// The outcome of one measured run against one target.
#[derive(Debug, Clone)]
pub struct Run {
    pub sent: usize,
    pub ok: usize,
    pub errors: usize,
    /// Successful responses per second, from the first send to the last response.
    pub rate: f64,
    /// To the last byte of the response; in open loops from the *scheduled* send time.
    pub latency: Option<Latency>,
    /// To the first byte of the response body, measured like `latency`.
    pub first_byte: Option<Latency>,
    /// Server-sent events per successful response (`data: [DONE]` included); 0 for JSON answers.
    pub events_per_response: f64,
    pub first_error: Option<String>,
}

/// The two request shapes every target is driven with.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    /// A small non-streaming chat completion.
    Chat,
    /// A streamed chat completion; the response must end with `data: [DONE]`.
    Stream,
    /// A prediction of one instance of the fraud model (`:predict`).
    Predict,
}

/// Where requests go: a pool of connections to one address plus the request bodies for it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pool: Arc<Pool>,
    host: HeaderValue,
    chat_body: Bytes,
    stream_body: Bytes,
    /// `/v1/models/{model}:predict`, for targets that serve predictions.
    predict_path: Option<Uri>,
}

/// The body of the prediction workload: one card transaction for the fraud model.
const PREDICT_BODY: &str = r#"{"instances":[{"amount":4200.0,"hour":3,"merchant_risk":0.9,"distance_km":2500.0,"new_device":1,"failed_attempts":3}]}"#;

/// No single request may hold up a run for longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CHAT_PATH: &str = "/v1/chat/completions";

impl Target {
    pub fn new(name: &'static str, addr: SocketAddr, model: &str, stream_model: &str, connections: usize) -> Self {
        let body = |model: &str, stream: bool| {
            Bytes::from(
                json!({
                    "model": model,
                    "stream": stream,
                    "max_tokens": 16,
                    "messages": [
                        {"role": "system", "content": "You are a terse assistant."},
                        {"role": "user", "content": "Say hello to the benchmark."},
                    ],
                })
                .to_string(),
            )
        };
        Self {
            name,
            pool: Arc::new(Pool::new(addr, connections)),
            // A socket address is always a valid header value.
            host: HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("localhost")),
            chat_body: body(model, false),
            stream_body: body(stream_model, true),
            predict_path: None,
        }
    }

    /// A target of the prediction workload only (a `weir worker`).
    pub fn predict_only(name: &'static str, addr: SocketAddr, model: &str, connections: usize) -> Result<Self> {
        let mut target = Self::new(name, addr, "", "", connections);
        (target.chat_body, target.stream_body) = (Bytes::new(), Bytes::new());
        target.predicting(model)
    }

    /// This target with predictions to `model` (`POST /v1/models/{model}:predict`).
    pub fn predicting(mut self, model: &str) -> Result<Self> {
        self.predict_path = Some(format!("/v1/models/{model}:predict").parse().context("a prediction path")?);
        Ok(self)
    }

    /// Whether this target serves the prediction workload.
    pub fn predicts(&self) -> bool {
        self.predict_path.is_some()
    }

    /// Sends one request of each workload, so a misconfigured target fails loudly before any run.
    pub async fn preflight(&self) -> Result<()> {
        let chats = (!self.chat_body.is_empty()).then_some([Workload::Chat, Workload::Stream]);
        let predicts = self.predicts().then_some(Workload::Predict);
        for workload in chats.into_iter().flatten().chain(predicts) {
            self.send(workload)
                .await
                .with_context(|| format!("{}: {workload:?} preflight request failed", self.name))?;
        }
        Ok(())
    }

    async fn send(&self, workload: Workload) -> Result<Exchange> {
        let (body, expect_done, path) = match (workload, &self.predict_path) {
            (Workload::Chat, _) => (self.chat_body.clone(), false, Uri::from_static(CHAT_PATH)),
            (Workload::Stream, _) => (self.stream_body.clone(), true, Uri::from_static(CHAT_PATH)),
            (Workload::Predict, Some(path)) => (Bytes::from_static(PREDICT_BODY.as_bytes()), false, path.clone()),
            (Workload::Predict, None) => bail!("{} serves no predictions", self.name),
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = path;
        req.headers_mut().insert(HOST, self.host.clone());
        req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match tokio::time::timeout(REQUEST_TIMEOUT, self.pool.exchange(req, expect_done)).await {
            Ok(result) => result,
            Err(_) => bail!("no complete response within {REQUEST_TIMEOUT:?}"),
        }
    }
}

/// Sends `rate` requests per second for `duration`, each at its scheduled time whether or not
/// earlier ones have completed, and measures latency from that scheduled time, so a slow
/// response cannot hide the requests queued behind it (no coordinated omission).
pub async fn open_loop(target: &Target, workload: Workload, rate: u32, duration: Duration) -> Run {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    // Rounded and at least 1: the count is what bounds the loop.
    let total = ((f64::from(rate) * duration.as_secs_f64()).round() as usize).max(1);
    let begin = Instant::now() + Duration::from_millis(10);

    // A dedicated thread paces the sends: tokio's timer has millisecond resolution, which would
    // bunch requests at 1000 req/s and add up to a millisecond to every latency measured from
    // the schedule. Linux's nanosleep is accurate to tens of microseconds.
    let (schedule, mut due) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for i in 0..total {
            let at = begin + interval.mul_f64(i as f64);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if schedule.send(at).is_err() {
                return;
            }
        }
    });

    let mut in_flight = JoinSet::new();
    while let Some(scheduled) = due.recv().await {
        let target = target.clone();
        in_flight.spawn(async move { Outcome { start: scheduled, result: target.send(workload).await } });
    }
    let mut outcomes = Vec::with_capacity(total);
    while let Some(joined) = in_flight.join_next().await {
        outcomes.push(joined.unwrap_or_else(|err| Outcome {
            start: begin,
            result: Err(anyhow::anyhow!("request task failed: {err}")),
        }));
    }
    summarise(&outcomes, begin)
}

/// Keeps `workers` requests in flight back to back for `duration`; measures maximum throughput.
pub async fn closed_loop(target: &Target, workload: Workload, workers: usize, duration: Duration) -> Run {
    let begin = Instant::now();
    let deadline = begin + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let target = target.clone();
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                let result = target.send(workload).await;
                let failed = result.is_err();
                outcomes.push(Outcome { start, result });
                if failed {
                    // A target that refuses connections fails in microseconds; without a pause
                    // the loop would spin and pile up millions of errors in one run.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            outcomes
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(mut worker) => outcomes.append(&mut worker),
            Err(err) => {
                outcomes.push(Outcome { start: begin, result: Err(anyhow::anyhow!("worker task failed: {err}")) })
            }
        }
    }
    summarise(&outcomes, begin)
}

struct Outcome {
    start: Instant,
    result: Result<Exchange>,
}

/// When the response body started and finished arriving.
#[derive(Debug, Clone, Copy)]
struct Exchange {
    first_byte: Instant,
    last_byte: Instant,
    /// Server-sent events in the body: blank lines (`\n\n`) that end one.
    events: usize,
}

fn summarise(outcomes: &[Outcome], begin: Instant) -> Run {
    let mut latency = Vec::with_capacity(outcomes.len());
    let mut first_byte = Vec::with_capacity(outcomes.len());
    let mut errors = 0;
    let mut first_error = None;
    let mut end = begin;
    let mut events = 0;
    for outcome in outcomes {
        match &outcome.result {
            Ok(exchange) => {
                events += exchange.events;
                latency.push(exchange.last_byte.saturating_duration_since(outcome.start));
                first_byte.push(exchange.first_byte.saturating_duration_since(outcome.start));
                end = end.max(exchange.last_byte);
            }
            Err(err) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }
    let wall = end.saturating_duration_since(begin).as_secs_f64();
    Run {
        sent: outcomes.len(),
        ok: latency.len(),
        errors,
        rate: if wall > 0.0 { latency.len() as f64 / wall } else { 0.0 },
        latency: Latency::of(&mut latency),
        first_byte: Latency::of(&mut first_byte),
        events_per_response: if latency.is_empty() { 0.0 } else { events as f64 / latency.len() as f64 },
        first_error,
    }
}

impl Latency {
    /// Nearest-rank percentiles; `None` without samples.
    fn of(samples: &mut [Duration]) -> Option<Self> {
        samples.sort_unstable();
        let max = *samples.last()?;
        let at = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
        Some(Self { p50: at(0.50), p90: at(0.90), p99: at(0.99), max })
    }
}

/// At most `size` keep-alive connections to one address, opened on demand and reused.
///
/// Hand-rolled rather than hyper-util's pooling client because that one opens a new connection
/// whenever none is idle at that instant, so the connection count would drift with load.
#[derive(Debug)]
struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    permits: Semaphore,
}

impl Pool {
    fn new(addr: SocketAddr, size: usize) -> Self {
        Self { addr, idle: Mutex::new(Vec::with_capacity(size)), permits: Semaphore::new(size) }
    }

    /// Sends `req` on a pooled connection and reads the whole response.
    async fn exchange(&self, req: Request<Full<Bytes>>, expect_done: bool) -> Result<Exchange> {
        const DONE: &[u8] = b"data: [DONE]\n\n";
        let _permit = self.permits.acquire().await.context("connection pool closed")?;
        let mut sender = self.checkout().await?;
        let response = sender.send_request(req).await.context("sending the request")?;
        let status = response.status();
        let mut body = response.into_body();
        let mut first_byte = None;
        // Enough of the body to explain an error and to see how a stream ended, without keeping
        // every response of a long run.
        let mut head = Vec::new();
        let mut tail = Vec::new();
        let mut events = 0;
        // Whether the previous frame ended in `\n`, so a `\n\n` split across frames counts.
        let mut newline = false;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.context("reading the response body")?.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            first_byte.get_or_insert_with(Instant::now);
            events += data.windows(2).filter(|w| w == b"\n\n").count();
            events += usize::from(newline && data[0] == b'\n');
            newline = data.ends_with(b"\n");
            if head.len() < 256 {
                head.extend_from_slice(&data[..data.len().min(256 - head.len())]);
            }
            tail.extend_from_slice(&data[data.len().saturating_sub(DONE.len())..]);
            tail.drain(..tail.len().saturating_sub(DONE.len()));
        }
        let last_byte = Instant::now();
        // The body was read to its end, so the connection can carry the next request.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(sender);
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&head));
        }
        if expect_done && tail != DONE {
            bail!("stream ended without `data: [DONE]`");
        }
        Ok(Exchange { first_byte: first_byte.unwrap_or(last_byte), last_byte, events })
    }

    /// An idle connection that is still usable, or a new one.
    async fn checkout(&self) -> Result<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let Some(mut sender) = idle else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let tcp = TcpStream::connect(self.addr).await.with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
        // Connection errors surface through the sender; the driver task only has to run.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockUpstream;

    fn target(mock: &MockUpstream) -> Target {
        Target::new("direct", mock.addr(), "mock-model", "fixture:text_a", 4)
    }

    #[tokio::test]
    async fn open_loop_sends_the_scheduled_count_at_the_rate() {
        let mock = MockUpstream::builder().start().await;
        let run = open_loop(&target(&mock), Workload::Chat, 100, Duration::from_millis(500)).await;
        assert_eq!((run.sent, run.ok, run.errors), (50, 50, 0), "{:?}", run.first_error);
        assert_eq!(mock.request_count(), 50);
        // Paced, not a burst: 50 requests spread over 490 ms (slower only on a starved machine).
        assert!((50.0..=110.0).contains(&run.rate), "rate {}", run.rate);
        let stream = open_loop(&target(&mock), Workload::Stream, 50, Duration::from_millis(200)).await;
        assert_eq!((stream.ok, stream.errors), (10, 0), "{:?}", stream.first_error);
        let (Some(first), Some(last)) = (stream.first_byte, stream.latency) else { panic!("no samples") };
        assert!(first.p50 <= last.p50);
        // text_a's recorded events and `data: [DONE]`, however hyper split them into frames, less
        // the usage event, which the mock sends only when `stream_options.include_usage` asks.
        let recorded = include_str!("../../fixtures/openai/text_a.sse").matches("\n\n").count();
        assert!(recorded > 5, "{recorded}");
        assert_eq!(stream.events_per_response, (recorded - 1) as f64);
        assert_eq!(run.events_per_response, 0.0);
    }

    #[tokio::test]
    async fn latency_counts_from_the_schedule_not_the_send() {
        // One connection and a 50 ms upstream at 100 req/s: requests queue behind each other, and
        // an honest open loop reports the queueing, far above the 50 ms service time.
        let mock = MockUpstream::builder().latency(Duration::from_millis(50)).start().await;
        let target = Target::new("direct", mock.addr(), "m", "m", 1);
        let run = open_loop(&target, Workload::Chat, 100, Duration::from_millis(300)).await;
        assert_eq!(run.ok, 30, "{:?}", run.first_error);
        let Some(latency) = run.latency else { panic!("no samples") };
        assert!(latency.max > Duration::from_millis(1000), "max {:?}", latency.max);
    }

    #[tokio::test]
    async fn failures_are_counted_with_their_cause() {
        let down = MockUpstream::builder().always_fail(503).start().await;
        let run = open_loop(&target(&down), Workload::Chat, 100, Duration::from_millis(100)).await;
        assert_eq!((run.ok, run.errors), (0, 10));
        assert!(run.first_error.as_deref().is_some_and(|e| e.contains("503")), "{:?}", run.first_error);
        assert!(run.latency.is_none());

        let broken = MockUpstream::builder().break_stream_after(2).start().await;
        let run = open_loop(&target(&broken), Workload::Stream, 100, Duration::from_millis(50)).await;
        assert_eq!((run.ok, run.errors), (0, 5), "{:?}", run.first_error);

        let gone = target(&down);
        drop(down);
        let run = closed_loop(&gone, Workload::Chat, 2, Duration::from_millis(100)).await;
        assert!(run.errors > 0 && run.errors < 100, "{} errors: failing fast must back off", run.errors);
        assert!(gone.preflight().await.is_err());
    }

    #[tokio::test]
    async fn closed_loop_reuses_its_connections() {
        let mock = MockUpstream::builder().start().await;
        let target = target(&mock);
        let run = closed_loop(&target, Workload::Chat, 4, Duration::from_millis(200)).await;
        assert!(run.ok > 100 && run.errors == 0, "{run:?}");
        assert!(mock.connection_count() <= 4, "{} connections", mock.connection_count());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let latency = Latency::of(&mut samples);
        let Some(latency) = latency else { panic!("samples were given") };
        assert_eq!(latency.p50, Duration::from_millis(50));
        assert_eq!(latency.p90, Duration::from_millis(90));
        assert_eq!(latency.p99, Duration::from_millis(99));
        assert_eq!(latency.max, Duration::from_millis(100));
        assert!(Latency::of(&mut []).is_none());
        let mut one = [Duration::from_millis(7)];
        assert!(Latency::of(&mut one).is_some_and(|l| l.p50 == l.max));
    }
}
