//! The open client connections: how many there are, which have a request in flight and which have
//! been idle since when, so that a connection that sends nothing (or nothing more) is closed after
//! its timeout, and so that at `server.max_connections` the longest-idle one makes room for a new
//! one instead of the gateway refusing everyone once idle sockets fill the table.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;

use crate::body::Body;
use crate::metrics::{ConnectionClosedLabels, Metrics};

/// How often, at most, the "limit reached" line is logged; the lines in between are counted.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Every open client connection of one listener.
#[derive(Debug)]
pub struct Connections {
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    limit: usize,
    /// A new connection must start its first request within this.
    first_request: Duration,
    /// A connection with nothing in flight is closed after this.
    idle: Duration,
    /// The origin of the millisecond timestamps in [`Conn`].
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// When the limit was last logged, and how many times it was hit since.
    limit_log: Mutex<(Option<Instant>, u64)>,
}

/// One connection's state, shared by its task, its requests' bodies and the table.
#[derive(Debug)]
pub struct Conn {
    in_flight: AtomicUsize,
    /// Milliseconds after [`Connections::epoch`] when the connection last had nothing in flight
    /// (it opened, or its last request ended).
    idle_since_ms: AtomicU64,
    /// Whether it has served a request: a connection that never did is the first to go.
    served: AtomicBool,
    /// Set when the table chose it to make room; it closes as soon as its task sees the notice.
    closing: AtomicBool,
    close: Notify,
}

/// A connection's place in the table; dropping it (when the connection's task ends) frees it.
#[derive(Debug)]
pub struct Registered {
    id: u64,
    pub conn: Arc<Conn>,
    table: Arc<Connections>,
}

/// Why [`Connections::watch`] ended a connection before the protocol did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    IdleTimeout,
    Evicted,
}

impl Connections {
    pub fn new(limit: usize, first_request: Duration, idle: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            limit: limit.max(1),
            first_request,
            idle,
            epoch: Instant::now(),
            metrics,
            limit_log: Mutex::new((None, 0)),
        })
    }

    /// Takes a new connection into the table. At the limit, the longest-idle connection (one that
    /// never sent a request first) is told to close and the new one takes its place; when every
    /// connection has a request in flight, `None`: the caller closes the new one at once.
    pub fn admit(self: &Arc<Self>) -> Option<Registered> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Connections told to close still count until they are gone; the scan runs at the limit only.
        let at_limit = open.len() >= self.limit
            && open.len() - open.values().filter(|c| c.closing.load(Ordering::Relaxed)).count() >= self.limit;
        if at_limit {
            let victim = open
                .values()
                .filter(|c| c.in_flight.load(Ordering::Relaxed) == 0 && !c.closing.load(Ordering::Relaxed))
                .min_by_key(|c| (c.served.load(Ordering::Relaxed), c.idle_since_ms.load(Ordering::Relaxed)));
            let evicted = match victim {
                Some(victim) => {
                    victim.closing.store(true, Ordering::Relaxed);
                    victim.close.notify_one();
                    true
                }
                None => false,
            };
            drop(open);
            self.at_limit(evicted);
            if !evicted {
                return None;
            }
            open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            served: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        });
        open.insert(id, conn.clone());
        drop(open);
        self.metrics.connections_open.inc();
        Some(Registered { id, conn, table: self.clone() })
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Runs `connection` (the protocol's own future) until it ends, or until it has had nothing
    /// in flight for its timeout, or until the table chose it to make room; dropping the
    /// protocol's future closes the socket.
    pub async fn watch<F: Future>(&self, conn: &Conn, connection: F) -> Result<F::Output, Closed> {
        tokio::pin!(connection);
        loop {
            let wait = self.idle_left(conn);
            tokio::select! {
                out = &mut connection => return Ok(out),
                () = conn.close.notified() => {
                    self.closed(Closed::Evicted);
                    return Err(Closed::Evicted);
                }
                () = tokio::time::sleep(wait) => {
                    if conn.in_flight.load(Ordering::Acquire) == 0 && self.idle_left(conn).is_zero() {
                        self.closed(Closed::IdleTimeout);
                        return Err(Closed::IdleTimeout);
                    }
                }
            }
        }
    }

    /// Marks a request in flight on `conn` until the returned guard (carried by the response
    /// body) is dropped.
    pub fn begin(self: &Arc<Self>, conn: &Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { conn: conn.clone(), table: self.clone() }
    }

    /// How long `conn` may still stay as it is: the time left of its idle timeout (the first
    /// request's, until it served one), or a whole timeout while a request is in flight.
    fn idle_left(&self, conn: &Conn) -> Duration {
        let timeout = if conn.served.load(Ordering::Relaxed) { self.idle } else { self.first_request };
        if conn.in_flight.load(Ordering::Acquire) > 0 {
            return timeout;
        }
        let idle_for = Duration::from_millis(self.now_ms().saturating_sub(conn.idle_since_ms.load(Ordering::Relaxed)));
        timeout.saturating_sub(idle_for)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn closed(&self, why: Closed) {
        let reason = match why {
            Closed::IdleTimeout => "idle_timeout",
            Closed::Evicted => "evicted",
        };
        self.metrics.connections_closed.get_or_create(&ConnectionClosedLabels { reason }).inc();
    }

    /// Counts and (at most every [`LIMIT_LOG_EVERY`]) logs that the limit was reached.
    fn at_limit(&self, evicted: bool) {
        if !evicted {
            self.metrics.connections_closed.get_or_create(&ConnectionClosedLabels { reason: "refused" }).inc();
        }
        let mut log = self.limit_log.lock().unwrap_or_else(|e| e.into_inner());
        log.1 += 1;
        if log.0.is_some_and(|at| at.elapsed() < LIMIT_LOG_EVERY) {
            return;
        }
        let times = std::mem::take(&mut log.1);
        log.0 = Some(Instant::now());
        drop(log);
        if evicted {
            tracing::warn!(
                limit = self.limit,
                times,
                "connection limit reached (server.max_connections): closing the longest-idle connections to make room"
            );
        } else {
            tracing::warn!(
                limit = self.limit,
                times,
                "connection limit reached (server.max_connections) with a request in flight on every connection: refusing new connections"
            );
        }
    }
}

impl Registered {
    /// The table this connection is in.
    pub fn table(&self) -> Arc<Connections> {
        self.table.clone()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        self.table.metrics.connections_open.dec();
    }
}

/// A request in flight on a connection; when the last one ends, the connection's idle time starts.
#[derive(Debug)]
pub struct InFlight {
    conn: Arc<Conn>,
    table: Arc<Connections>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.served.store(true, Ordering::Relaxed);
        self.conn.idle_since_ms.store(self.table.now_ms(), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until the body is done (a
    /// stream may be silent for minutes while its connection must stay open).
    pub struct Tracked {
        #[pin]
        body: Body,
        in_flight: InFlight,
    }
}

impl Tracked {
    pub fn new(body: Body, in_flight: InFlight) -> Self {
        Self { body, in_flight }
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").finish_non_exhaustive()
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
