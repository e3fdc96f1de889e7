//! `weir._native`, the native core of the `weir` Python package: a [`Weir`] gateway on a Tokio
//! runtime of its own inside the Python process, and the few calls the package's Python code
//! (`weir/_gateway.py`, `weir/_transport.py`) builds the httpx transports and `Gateway` on.
//!
//! Every call that waits releases the GIL (`Python::detach`), so other Python threads run while
//! the gateway works. Blocking waits are sliced (`SLICE`) so that Ctrl-C reaches Python within a
//! fraction of a second; a request interrupted that way is cancelled, as a client disconnect is.
//! Async calls spawn on the runtime and report through a Python callable, which the package turns
//! into an asyncio future; cancelling that future aborts the task (`Task::cancel`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyTuple};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::mpsc;
use weir::LoadError;
use weir::body::Body;
use weir::embed::Weir;
use weir::spend::Group;

create_exception!(weir, WeirError, PyException, "Base class of the errors the weir package raises.");
create_exception!(
    weir,
    ConfigError,
    WeirError,
    "The configuration is not valid (or could not be read); the message lists every problem with its field path."
);
create_exception!(weir, GatewayClosed, WeirError, "The gateway was shut down; it takes no more requests.");

/// How long a blocking wait runs with the GIL released before it checks for Ctrl-C.
const SLICE: Duration = Duration::from_millis(100);

/// One header, as the transports pass it both ways: raw name and value bytes.
type Header = (PyBackedBytes, PyBackedBytes);

/// The gateway and the runtime it runs on.
#[pyclass(module = "weir._native", frozen)]
#[derive(Debug)]
struct Core {
    weir: Weir,
    /// Taken by `shutdown` (or the drop) and shut down without waiting: a worker thread may be
    /// waiting for the GIL that the thread dropping the runtime holds.
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    /// Set when `shutdown` begins; it runs once.
    stopping: AtomicBool,
    /// Set when `shutdown` has drained, before the runtime stops; shared with the streams, so
    /// that nothing waits on a stopped runtime.
    closed: Arc<AtomicBool>,
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (config_file=None, config=None))]
    fn new(py: Python<'_>, config_file: Option<PathBuf>, config: Option<String>) -> PyResult<Self> {
        if config_file.is_some() && config.is_some() {
            return Err(PyValueError::new_err("give config_file or config, not both"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("weir").build()?;
        let started = py.detach(|| {
            runtime.block_on(async {
                match (config_file, config) {
                    (Some(path), _) => Weir::from_file(path).await,
                    (None, Some(text)) => Weir::from_toml(&text).await,
                    (None, None) => Weir::from_default_config().await,
                }
            })
        });
        let weir = started.map_err(load_error)?;
        let handle = runtime.handle().clone();
        Ok(Self {
            weir,
            runtime: Mutex::new(Some(runtime)),
            handle,
            stopping: AtomicBool::new(false),
            closed: Arc::default(),
        })
    }

    /// Answers one request: `(status, headers, body)`, the body `bytes` when the answer is whole
    /// and a `Stream` when it streams. With `principal`, `(key_name, team)`, the request is served
    /// as that key of that team whatever its headers say (`Weir::handle_as`).
    #[pyo3(signature = (method, target, headers, body, principal=None))]
    fn handle(
        &self,
        py: Python<'_>,
        method: &str,
        target: &str,
        headers: Vec<Header>,
        body: PyBackedBytes,
        principal: Option<Principal>,
    ) -> PyResult<Py<PyTuple>> {
        self.check_open()?;
        let request = request(method, target, headers, body)?;
        // A task rather than `block_on(weir.handle(…))` itself, so that an interrupted wait can
        // abort it (cancelling the upstream) instead of leaving it half done.
        let weir = self.weir.clone();
        let mut task = self.handle.spawn(async move { answer_parts(answer(&weir, request, principal).await).await });
        loop {
            // The timer is made inside `block_on`, where the runtime's context is.
            let waited = py.detach(|| {
                on_runtime(&self.closed, || {
                    self.handle.block_on(async { tokio::time::timeout(SLICE, &mut task).await })
                })
            });
            match waited.map_err(|()| GatewayClosed::new_err("the gateway was shut down"))? {
                Ok(joined) => {
                    let parts = joined.map_err(|e| WeirError::new_err(format!("the request failed: {e}")))?;
                    return parts.into_py(py, &self.handle, &self.closed);
                }
                Err(_elapsed) => {
                    if let Err(interrupted) = py.check_signals() {
                        task.abort();
                        return Err(interrupted);
                    }
                }
            }
        }
    }

    /// Starts answering one request on the runtime and returns at once; `done` is called, on a
    /// runtime thread, with the `(status, headers, body)` tuple that `handle` returns.
    #[pyo3(signature = (method, target, headers, body, done, principal=None))]
    fn handle_async(
        &self,
        method: &str,
        target: &str,
        headers: Vec<Header>,
        body: PyBackedBytes,
        done: Py<PyAny>,
        principal: Option<Principal>,
    ) -> PyResult<Task> {
        self.check_open()?;
        let request = request(method, target, headers, body)?;
        let weir = self.weir.clone();
        let (handle, closed) = (self.handle.clone(), self.closed.clone());
        let done = Callback::new(done, &self.closed);
        let task = self.handle.spawn(async move {
            let parts = answer_parts(answer(&weir, request, principal).await).await;
            done.call(|py| parts.into_py(py, &handle, &closed).map(Py::into_any));
        });
        Ok(Task { abort: task.abort_handle() })
    }

    /// Serves the gateway over HTTP on `address` (`host:port`; port 0 picks a free one) until
    /// shutdown; returns `http://ADDR`.
    fn serve(&self, py: Python<'_>, address: &str) -> PyResult<String> {
        self.check_open()?;
        let weir = self.weir.clone();
        let served = py.detach(|| {
            self.handle.block_on(async {
                let listener = tokio::net::TcpListener::bind(address).await?;
                weir.serve(listener)
            })
        })?;
        Ok(served.url())
    }

    /// Re-reads the configuration file, or loads `config` (TOML text) in its place.
    #[pyo3(signature = (config=None))]
    fn reload(&self, py: Python<'_>, config: Option<String>) -> PyResult<()> {
        self.check_open()?;
        let weir = self.weir.clone();
        py.detach(|| {
            self.handle.block_on(async {
                match config {
                    None => weir.reload().await,
                    Some(text) => {
                        let config = weir_config::load_str(&text, &weir_config::ProcessEnv, Path::new("."))?;
                        weir.reload_config(config).await
                    }
                }
            })
        })
        .map_err(load_error)
    }

    /// The ledger summed as `weir spend --json` sums it: a JSON list of rows, the total last.
    #[pyo3(signature = (by, since=None, until=None))]
    fn spend(&self, py: Python<'_>, by: Vec<String>, since: Option<String>, until: Option<String>) -> PyResult<String> {
        let mut groups = by.into_iter().map(|name| group(&name)).collect::<PyResult<Vec<_>>>()?;
        groups.sort();
        groups.dedup();
        let day = |d: Option<String>, default: u64| d.map_or(Ok(default), |d| weir::spend::parse_day(&d));
        let since = day(since, 0).map_err(PyValueError::new_err)?;
        let until = day(until, u64::MAX).map_err(PyValueError::new_err)?;
        let path = self.weir.core().current().config.state.ledger.clone();
        let entries = py
            .detach(|| weir::state::ledger::Ledger::read(&path))
            .map_err(|e| WeirError::new_err(format!("cannot read the ledger {}: {e}", path.display())))?;
        let rows = weir::spend::report(&entries, &groups, since, until);
        serde_json::to_string(&rows).map_err(|e| WeirError::new_err(e.to_string()))
    }

    /// The path of the ledger the current configuration writes.
    fn ledger_path(&self) -> PathBuf {
        self.weir.core().current().config.state.ledger.clone()
    }

    /// Shuts down gracefully (see `Weir::shutdown`) and stops the runtime; returns whether every
    /// request in flight ended within `server.shutdown_grace`. Idempotent.
    fn shutdown(&self, py: Python<'_>) -> bool {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return true;
        }
        let weir = self.weir.clone();
        // Streams in flight can still be read while it drains: `closed` is set only afterwards.
        let drained = py.detach(|| self.handle.block_on(weir.shutdown()));
        self.closed.store(true, Ordering::Release);
        if let Some(runtime) = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take() {
            runtime.shutdown_background();
        }
        drained
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Core {
    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(GatewayClosed::new_err("the gateway was shut down"));
        }
        Ok(())
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            runtime.shutdown_background();
        }
    }
}

/// A streamed response body. Reading it yields each event as the gateway relays it; closing (or
/// dropping) it before its end drops the body, which cancels the upstream request and is
/// accounted as a client disconnect.
///
/// A task of its own on the runtime reads the body ahead of Python, into a buffer of at most
/// `READ_AHEAD` frames, so that a burst of events costs Python one read (one hand-over between
/// threads, one GIL round) rather than one per event: hyper reads the upstream only while the
/// body is polled, so without it the next event would not be there yet when Python asks.
#[pyclass(module = "weir._native", frozen)]
#[derive(Debug)]
struct Stream {
    /// The frames read ahead; `None` from it at the end. An async mutex: an async read holds it
    /// across the wait for the next frame, on a runtime thread.
    frames: Arc<AsyncMutex<mpsc::Receiver<Bytes>>>,
    /// The task reading the body ahead: aborting it drops the body.
    reader: tokio::task::AbortHandle,
    handle: Handle,
    closed: Arc<AtomicBool>,
    /// Set when the reader has read the body to its end: an end of the frames without it means
    /// the reader was stopped (by `close`, or by the runtime stopping at shutdown).
    finished: Arc<AtomicBool>,
}

/// How many frames a stream reads ahead of Python.
const READ_AHEAD: usize = 32;

/// What one read hands Python at most: the frames already there are joined up to this.
const READ_MAX: usize = 64 * 1024;

impl Stream {
    /// Starts reading `body` ahead, on the runtime.
    fn new(body: Body, handle: &Handle, closed: &Arc<AtomicBool>) -> Self {
        let (sender, frames) = mpsc::channel(READ_AHEAD);
        let finished = Arc::new(AtomicBool::new(false));
        let read_all = finished.clone();
        let reader = handle.spawn(async move {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame;
                // Trailers (none today) and empty frames carry nothing for the client.
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                    && sender.send(data).await.is_err()
                {
                    // Python closed the stream: the body is dropped here, with the task.
                    return;
                }
            }
            read_all.store(true, Ordering::Release);
        });
        Self {
            frames: Arc::new(AsyncMutex::new(frames)),
            reader: reader.abort_handle(),
            handle: handle.clone(),
            closed: closed.clone(),
            finished,
        }
    }
}

/// What a read that found `chunk` returns: the end of the frames is the end of the answer, unless
/// the gateway shut down before the body was read to its end (`finished`) — then the answer was
/// cut, and saying so beats a silent, truncated end.
fn ended(closed: &AtomicBool, finished: &AtomicBool, chunk: Option<Bytes>) -> Result<Option<Bytes>, ()> {
    if chunk.is_none() && closed.load(Ordering::Acquire) && !finished.load(Ordering::Acquire) {
        return Err(());
    }
    Ok(chunk)
}

/// The `done` callback of an async call. Called once with the call's value, or with the error it
/// raised; and if the task is dropped unfinished because the gateway shut down (its runtime
/// stopping drops every task), with `GatewayClosed`, so that no Python await waits forever.
/// Dropped unfinished otherwise — `Task.cancel()` — it says nothing: the caller cancelled.
struct Callback {
    done: Option<Py<PyAny>>,
    closed: Arc<AtomicBool>,
}

impl Callback {
    fn new(done: Py<PyAny>, closed: &Arc<AtomicBool>) -> Self {
        Self { done: Some(done), closed: closed.clone() }
    }

    fn call(mut self, value: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>) {
        let Some(done) = self.done.take() else { return };
        Python::attach(|py| {
            let value = value(py).unwrap_or_else(|error| error.into_value(py).into_any());
            if let Err(error) = done.call1(py, (value,)) {
                error.write_unraisable(py, None);
            }
        });
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        let Some(done) = self.done.take() else { return };
        if !self.closed.load(Ordering::Acquire) {
            return;
        }
        // At interpreter exit there is nobody left to tell.
        let _ = Python::try_attach(|py| {
            let error = GatewayClosed::new_err("the gateway was shut down").into_value(py).into_any();
            if let Err(error) = done.call1(py, (error,)) {
                error.write_unraisable(py, None);
            }
        });
    }
}

#[pymethods]
impl Stream {
    /// The next chunk, or `None` at the end (or once closed). Blocks with the GIL released.
    fn read(&self, py: Python<'_>) -> PyResult<Option<Py<PyBytes>>> {
        self.check_open()?;
        loop {
            let frames = self.frames.clone();
            // `next_data` is cancel-safe (a frame not yet taken stays in the buffer), so a slice
            // that runs out simply reads again.
            let next = py.detach(|| {
                on_runtime(&self.closed, || {
                    self.handle.block_on(async { tokio::time::timeout(SLICE, next_data(frames)).await })
                })
            });
            match next.map_err(|()| stream_closed())? {
                Ok(chunk) => {
                    let chunk = ended(&self.closed, &self.finished, chunk).map_err(|()| stream_closed())?;
                    return Ok(chunk.map(|c| PyBytes::new(py, &c).unbind()));
                }
                Err(_elapsed) => {
                    py.check_signals()?;
                    self.check_open()?;
                }
            }
        }
    }

    /// Reads the next chunk on the runtime; `done` is called, on a runtime thread, with the chunk
    /// (`bytes`) or `None` at the end.
    fn read_async(&self, done: Py<PyAny>) -> PyResult<Task> {
        self.check_open()?;
        let frames = self.frames.clone();
        let (closed, finished) = (self.closed.clone(), self.finished.clone());
        let done = Callback::new(done, &self.closed);
        let task = self.handle.spawn(async move {
            let chunk = ended(&closed, &finished, next_data(frames).await);
            done.call(|py| match chunk {
                Ok(Some(chunk)) => Ok(PyBytes::new(py, &chunk).into_any().unbind()),
                Ok(None) => Ok(py.None()),
                Err(()) => Err(stream_closed()),
            });
        });
        Ok(Task { abort: task.abort_handle() })
    }

    /// Drops the body now: the reading task is aborted, and reads from now on find the end (a
    /// read in flight is cancelled first by its caller, or finds the end when the task is gone).
    fn close(&self) {
        self.reader.abort();
        if let Ok(mut frames) = self.frames.try_lock() {
            frames.close();
            while frames.try_recv().is_ok() {}
        }
    }
}

impl Stream {
    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(stream_closed());
        }
        Ok(())
    }
}

fn stream_closed() -> PyErr {
    GatewayClosed::new_err("the gateway was shut down while this answer streamed")
}

/// Runs `wait` (a `block_on` on the gateway's runtime) from a Python thread. A wait that races
/// `shutdown` — the runtime stopping under it, which makes tokio panic — is `Err(())` once the
/// gateway is marked closed (it is, before its runtime stops), for the caller to raise as
/// `GatewayClosed`; any other panic stays one.
fn on_runtime<T>(closed: &AtomicBool, wait: impl FnOnce() -> T) -> Result<T, ()> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(wait)) {
        Ok(value) => Ok(value),
        Err(_) if closed.load(Ordering::Acquire) => Err(()),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // The body is dropped on the runtime, with its task (its accounting may spawn there).
        self.reader.abort();
    }
}

/// A call running on the runtime: `cancel()` aborts it (dropping whatever it was waiting on).
#[pyclass(module = "weir._native", frozen)]
#[derive(Debug)]
struct Task {
    abort: tokio::task::AbortHandle,
}

#[pymethods]
impl Task {
    fn cancel(&self) {
        self.abort.abort();
    }
}

/// A response split for Python: status, headers, and the body whole or still streaming.
struct Parts {
    status: u16,
    headers: Vec<(Bytes, Bytes)>,
    body: Answer,
}

enum Answer {
    Whole(Bytes),
    Streaming(Body),
}

impl Parts {
    fn into_py(self, py: Python<'_>, handle: &Handle, closed: &Arc<AtomicBool>) -> PyResult<Py<PyTuple>> {
        let headers: Vec<(Bound<'_, PyBytes>, Bound<'_, PyBytes>)> =
            self.headers.iter().map(|(name, value)| (PyBytes::new(py, name), PyBytes::new(py, value))).collect();
        let body = match self.body {
            Answer::Whole(bytes) => PyBytes::new(py, &bytes).into_any().unbind(),
            Answer::Streaming(body) => Py::new(py, Stream::new(body, handle, closed))?.into_any(),
        };
        Ok((self.status, headers, body).into_pyobject(py)?.unbind())
    }
}

/// Splits a response; a body of known length is already whole in memory and is collected here.
async fn answer_parts(response: http::Response<Body>) -> Parts {
    let (parts, body) = response.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (Bytes::copy_from_slice(name.as_ref()), Bytes::copy_from_slice(value.as_bytes())))
        .collect();
    let body = if http_body::Body::size_hint(&body).exact().is_some() {
        match body.collect().await {
            Ok(collected) => Answer::Whole(collected.to_bytes()),
            Err(never) => match never {},
        }
    } else {
        Answer::Streaming(body)
    };
    Parts { status: parts.status.as_u16(), headers, body }
}

/// The next chunk: the next frame read ahead, joined with every frame already there behind it
/// (up to `READ_MAX`); a stream paced by its upstream still gets each event as it comes. `None`
/// at the end, or once closed.
async fn next_data(frames: Arc<AsyncMutex<mpsc::Receiver<Bytes>>>) -> Option<Bytes> {
    let mut frames = frames.lock().await;
    let first = frames.recv().await?;
    let mut joined: Option<bytes::BytesMut> = None;
    while joined.as_ref().map_or(first.len(), bytes::BytesMut::len) < READ_MAX {
        let Ok(next) = frames.try_recv() else { break };
        joined.get_or_insert_with(|| bytes::BytesMut::from(&first[..])).extend_from_slice(&next);
    }
    Some(joined.map_or(first, bytes::BytesMut::freeze))
}

/// Who the application vouches for: `(key_name, team)`.
type Principal = (String, String);

/// The gateway's answer, as the key of the request or as the principal the application set.
async fn answer(
    weir: &Weir,
    request: http::Request<Full<Bytes>>,
    principal: Option<Principal>,
) -> http::Response<Body> {
    match principal {
        Some((key_name, team)) => weir.handle_as(&key_name, &team, request).await,
        None => weir.handle(request).await,
    }
}

/// The request a transport hands over. The body is the Python `bytes` object itself, not a copy.
fn request(
    method: &str,
    target: &str,
    headers: Vec<Header>,
    body: PyBackedBytes,
) -> PyResult<http::Request<Full<Bytes>>> {
    let mut request = http::Request::builder().method(method).uri(target);
    for (name, value) in headers {
        request = request.header(&*name, &*value);
    }
    request
        .body(Full::new(Bytes::from_owner(body)))
        .map_err(|e| PyValueError::new_err(format!("not a valid HTTP request: {e}")))
}

fn group(name: &str) -> PyResult<Group> {
    match name {
        "day" => Ok(Group::Day),
        "key" => Ok(Group::Key),
        "team" => Ok(Group::Team),
        "model" => Ok(Group::Model),
        other => Err(PyValueError::new_err(format!("cannot group by {other:?}: use day, key, team or model"))),
    }
}

fn load_error(error: LoadError) -> PyErr {
    match error {
        LoadError::Config(error) => ConfigError::new_err(error.to_string()),
        other => WeirError::new_err(other.to_string()),
    }
}

#[pymodule(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Core>()?;
    m.add_class::<Stream>()?;
    m.add_class::<Task>()?;
    m.add("WeirError", py.get_type::<WeirError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("GatewayClosed", py.get_type::<GatewayClosed>())?;
    Ok(())
}
