//! Where plugin code runs. A call starts on the request worker that made it (handing every call
//! to another pool would cost a cross-thread wake-up per hook, more than a whole warm call of a
//! well-behaved plugin), under a gate that lets at most [`permits`] workers be *inside* a plugin
//! at once: a call takes a permit for each poll and gives it back when the poll returns (at its
//! next yield), so at least one worker always serves requests that need no plugin, and the queue
//! waits its turn, first come first served.
//!
//! A call that has run for [`MOVE_AFTER`] on request workers — which only a busy or hostile plugin
//! reaches — moves off them for good, onto the *long pool*: threads of their own. There it yields
//! as before (fuel, epoch ticks) and still ends at its deadline, but it no longer sits in a request
//! worker's queue: the kernel time-slices it against the workers like any other thread, so
//! spinning plugins cost healthy traffic about what a busy process beside the gateway would. The
//! pool keeps its normal priority on purpose: under `SCHED_IDLE` (tried, `bench/README.md`) a
//! machine under full load starved legitimate calls that had merely been preempted past
//! `MOVE_AFTER` until they missed their deadlines, and the healthy p99 was no better. The pool's
//! runtime starts with the first long call, so a gateway whose plugins behave never has it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// How much time a call may spend running on request workers — the sum of its polls there, not
/// the time it waits for the host (a Redis reply, a permit) — before it moves to the long pool: a
/// warm call of a well-behaved plugin takes microseconds. Measured with the hostile fixtures
/// (`weir-bench --isolation`): at 1 ms their first millisecond on the workers alone tripled the
/// healthy p99; at 100 µs it is within the goal.
pub const MOVE_AFTER: Duration = Duration::from_micros(100);

/// How long a call runs (the time it is charged, `clock.rs`) before the epoch ticks make it yield
/// at each tick; ticks are what makes a plugin that spends its time in host calls (which burn no
/// fuel) yield.
pub const YIELD_AFTER: Duration = MOVE_AFTER;

/// One less than the cores (the runtime's worker count), and at least one.
pub fn permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).max(1)
}

/// When a long call last ran, shared with the long pool's tasks and the epoch ticker (which ticks
/// faster while one does, see `wasm.rs`).
#[derive(Debug)]
struct LongSeen {
    /// Milliseconds after `origin`; 0 when no long call has run yet.
    ms: AtomicU64,
    origin: Instant,
}

impl LongSeen {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
    }

    fn mark(&self) {
        self.ms.store(self.now_ms(), Ordering::Relaxed);
    }
}

/// The long pool's runtime. Dropped without waiting for its tasks (a dropped gate has no caller
/// left to wait for), which is also safe from inside another runtime.
#[derive(Debug)]
struct LongPool(Option<tokio::runtime::Runtime>);

impl Drop for LongPool {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl LongPool {
    fn start(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("weir-plugin-long")
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

/// The gate of one plugin engine (one per process in `weir serve`).
#[derive(Debug)]
pub struct Gate {
    main: Arc<Semaphore>,
    long_threads: usize,
    long_pool: OnceLock<Option<LongPool>>,
    long_seen: Arc<LongSeen>,
}

impl Gate {
    pub fn new(permits: usize) -> Arc<Self> {
        Arc::new(Self {
            main: Arc::new(Semaphore::new(permits.max(1))),
            long_threads: permits.max(1),
            long_pool: OnceLock::new(),
            long_seen: Arc::new(LongSeen { ms: AtomicU64::new(0), origin: Instant::now() }),
        })
    }

    /// Runs `call` through this gate.
    pub fn run<F>(self: &Arc<Self>, call: F) -> Gated<F>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Gated { state: State::Inline(Box::pin(call)), gate: self.clone(), ran: Duration::ZERO, waiting: None }
    }

    /// Whether a long call ran within the last `within`.
    pub fn long_call_within(&self, within: Duration) -> bool {
        let seen = self.long_seen.ms.load(Ordering::Relaxed);
        seen != 0
            && self.long_seen.now_ms().saturating_sub(seen) <= u64::try_from(within.as_millis()).unwrap_or(u64::MAX)
    }

    /// The long pool, started on first use; `None` if its threads could not be started (long
    /// calls then stay where they are, under the gate, as every call did before the pool).
    fn long_pool(&self) -> Option<&tokio::runtime::Handle> {
        self.long_pool
            .get_or_init(|| match LongPool::start(self.long_threads) {
                Ok(pool) => Some(pool),
                Err(e) => {
                    tracing::warn!(error = %e, "could not start the plugin long pool; long plugin calls stay on the request workers");
                    None
                }
            })
            .as_ref()
            .and_then(LongPool::handle)
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

enum State<F: Future> {
    /// Polled by whoever polls the `Gated`, one permit per poll.
    Inline(Pin<Box<F>>),
    /// Running on the long pool.
    Moved(JoinHandle<F::Output>),
    Done,
}

/// A plugin call that holds a permit of the gate whenever it runs on a request worker, and moves
/// to the long pool once it is long. Dropping it cancels the call wherever it runs.
pub struct Gated<F: Future> {
    state: State<F>,
    gate: Arc<Gate>,
    /// The time its polls took on request workers so far.
    ran: Duration,
    waiting: Option<Acquire>,
}

impl<F: Future> std::fmt::Debug for Gated<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Inline(_) => "inline",
            State::Moved(_) => "moved",
            State::Done => "done",
        };
        f.debug_struct("Gated").field("state", &state).finish_non_exhaustive()
    }
}

impl<F: Future> Drop for Gated<F> {
    fn drop(&mut self) {
        if let State::Moved(task) = &self.state {
            task.abort();
        }
    }
}

/// A permit of `gate`: at once if one is free and nobody queues, else in turn.
fn acquire(
    gate: &Arc<Semaphore>,
    waiting: &mut Option<Acquire>,
    cx: &mut Context<'_>,
) -> Poll<Option<OwnedSemaphorePermit>> {
    if waiting.is_none() {
        match gate.clone().try_acquire_owned() {
            Ok(permit) => return Poll::Ready(Some(permit)),
            Err(_) => *waiting = Some(Box::pin(gate.clone().acquire_owned())),
        }
    }
    let Some(pending) = waiting.as_mut() else { return Poll::Ready(None) };
    match pending.as_mut().poll(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(permit) => {
            *waiting = None;
            // The gates are never closed; without a permit the call simply runs.
            Poll::Ready(permit.ok())
        }
    }
}

/// A moved call, marking the gate's `long_seen` at each poll so that the epoch ticker ticks fast
/// while it runs.
struct Marked<F> {
    call: Pin<Box<F>>,
    seen: Arc<LongSeen>,
}

impl<F: Future> Future for Marked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.seen.mark();
        self.call.as_mut().poll(cx)
    }
}

impl<F> Future for Gated<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Every field is `Unpin` (the call is boxed), so the gate is too.
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done => return Poll::Pending,
                State::Moved(task) => {
                    return match Pin::new(task).poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(done) => {
                            this.state = State::Done;
                            match done {
                                Ok(out) => Poll::Ready(out),
                                // A panic in the call is the caller's, as if it had run here.
                                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                                // Only `Drop` aborts the task, and the pool lives as long as
                                // the gate this future holds: a cancelled task is never seen.
                                Err(_) => Poll::Pending,
                            }
                        }
                    };
                }
                State::Inline(call) => {
                    let permit = match acquire(&this.gate.main, &mut this.waiting, cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(permit) => permit,
                    };
                    let poll_started = Instant::now();
                    let out = call.as_mut().poll(cx);
                    this.ran += poll_started.elapsed();
                    drop(permit);
                    if out.is_ready() {
                        this.state = State::Done;
                        return out;
                    }
                    if this.ran < MOVE_AFTER {
                        return Poll::Pending;
                    }
                    let Some(pool) = this.gate.long_pool() else { return Poll::Pending };
                    this.gate.long_seen.mark();
                    let State::Inline(call) = std::mem::replace(&mut this.state, State::Done) else {
                        return Poll::Pending;
                    };
                    this.state = State::Moved(pool.spawn(Marked { call, seen: this.gate.long_seen.clone() }));
                    // Polled once more at once, so that this task is woken when the moved call ends.
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    fn on_long_pool() -> bool {
        std::thread::current().name() == Some("weir-plugin-long")
    }

    /// A future that sleeps `each` per poll and yields `yields` times; it counts how many of its
    /// kind are polled at once on request workers, notes where each poll ran, and whether it was
    /// dropped before it finished.
    struct Busy {
        yields: usize,
        each: Duration,
        inside: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
        threads: Arc<Mutex<Vec<bool>>>,
        dropped: Arc<AtomicBool>,
    }

    impl Busy {
        fn new(yields: usize, each: Duration) -> Self {
            Self::sharing(yields, each, &Arc::default(), &Arc::default())
        }

        fn sharing(yields: usize, each: Duration, inside: &Arc<AtomicUsize>, most: &Arc<AtomicUsize>) -> Self {
            Self {
                yields,
                each,
                inside: inside.clone(),
                most: most.clone(),
                threads: Arc::default(),
                dropped: Arc::default(),
            }
        }
    }

    impl Drop for Busy {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    impl Future for Busy {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            let long = on_long_pool();
            self.threads.lock().expect("threads").push(long);
            if !long {
                let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
            }
            std::thread::sleep(self.each);
            if !long {
                self.inside.fetch_sub(1, Ordering::SeqCst);
            }
            if self.yields == 0 {
                return Poll::Ready(self.threads.lock().expect("threads").len());
            }
            self.yields -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_call_runs_where_it_was_made() {
        let gate = Gate::new(1);
        let busy = Busy::new(3, Duration::ZERO);
        let threads = busy.threads.clone();
        assert_eq!(gate.run(busy).await, 4);
        assert_eq!(*threads.lock().expect("threads"), vec![false; 4]);
        assert!(gate.long_pool.get().is_none(), "no long call, so no long pool");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_call_moves_to_the_long_pool_and_still_finishes() {
        let gate = Gate::new(1);
        let busy = Busy::new(5, Duration::from_millis(2));
        let threads = busy.threads.clone();
        assert_eq!(gate.run(busy).await, 6);
        // Its first poll ran past MOVE_AFTER where it was made; every later one on the pool.
        assert_eq!(*threads.lock().expect("threads"), vec![false, true, true, true, true, true]);
        assert!(gate.long_call_within(Duration::from_secs(5)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_a_moved_call_cancels_it_on_the_pool() {
        let gate = Gate::new(1);
        let busy = Busy::new(usize::MAX, Duration::from_millis(2));
        let (threads, dropped) = (busy.threads.clone(), busy.dropped.clone());
        let mut call = Box::pin(gate.run(busy));
        let moved = async {
            loop {
                std::future::poll_fn(|cx| {
                    let _ = call.as_mut().poll(cx);
                    Poll::Ready(())
                })
                .await;
                if threads.lock().expect("threads").last() == Some(&true) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), moved).await.expect("the call moves to the pool");
        drop(call);
        let cancelled = async {
            while !dropped.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), cancelled).await.expect("the pool drops the call");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_on_the_long_pool_reaches_the_caller() {
        let gate = Gate::new(1);
        let call = gate.run(async {
            std::thread::sleep(Duration::from_millis(2));
            tokio::task::yield_now().await;
            if on_long_pool() {
                panic!("plugin host bug");
            }
        });
        let err = tokio::spawn(call).await.expect_err("the caller's task panics");
        assert!(err.is_panic());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn long_and_short_calls_all_finish_and_never_exceed_the_permits_on_request_workers() {
        let gate = Gate::new(2);
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let each = Duration::from_micros(if i % 2 == 0 { 300 } else { 5 });
                tokio::spawn(gate.run(Busy::sharing(30, each, &inside, &most)))
            })
            .collect();
        let all = async {
            for task in tasks {
                assert_eq!(task.await.expect("task"), 31);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all).await.expect("no call waits forever");
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} ran at once on request workers with 2 permits");
    }
}
