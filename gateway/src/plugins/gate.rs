//! How many threads may run plugin code at once. Plugin calls run on the request workers (handing
//! each to another pool would cost a cross-thread wake-up per hook, more than a whole warm call);
//! with a plugin yielding every few microseconds (fuel) that is cheap, but a few plugins spinning
//! until their deadlines could still hold every worker in turn. The gate lets at most
//! [`permits`] workers be *inside* a plugin at any moment: a plugin call takes a permit for each
//! poll and gives it back when the poll returns (at the next yield), so at least one worker always
//! serves requests that need no plugin, and the rest of the queue waits its turn, first come first
//! served. A call that has run for [`LONG_AFTER`] also needs the one permit of the *long* gate for
//! each poll: however many plugins spin, a short call waits for at most one of them.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a call runs before it counts as long: a warm call of a well-behaved plugin takes
/// microseconds.
pub const LONG_AFTER: Duration = Duration::from_millis(1);

/// One less than the cores (the runtime's worker count), and at least one.
pub fn permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).max(1)
}

/// The gate of one plugin engine (one per process in `weir serve`).
#[derive(Debug)]
pub struct Gate {
    main: Arc<Semaphore>,
    long: Arc<Semaphore>,
    /// Milliseconds after `origin` when a long call last ran, so that the epoch ticker can tick
    /// faster while one does (see `wasm.rs`).
    long_seen_ms: AtomicU64,
    origin: Instant,
}

impl Gate {
    pub fn new(permits: usize) -> Arc<Self> {
        Arc::new(Self {
            main: Arc::new(Semaphore::new(permits.max(1))),
            long: Arc::new(Semaphore::new(1)),
            long_seen_ms: AtomicU64::new(0),
            origin: Instant::now(),
        })
    }

    /// Runs `call` through this gate.
    pub fn run<F: Future>(self: &Arc<Self>, call: F) -> Gated<F> {
        Gated { inner: call, gate: self.clone(), started: None, waiting: None, waiting_long: None, long: None }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// Whether a long call ran within the last `within`.
    pub fn long_call_within(&self, within: Duration) -> bool {
        let seen = self.long_seen_ms.load(Ordering::Relaxed);
        seen != 0 && self.now_ms().saturating_sub(seen) <= u64::try_from(within.as_millis()).unwrap_or(u64::MAX)
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

pin_project_lite::pin_project! {
    /// A plugin call that holds a permit of the gate whenever it runs.
    pub struct Gated<F> {
        #[pin]
        inner: F,
        gate: Arc<Gate>,
        started: Option<Instant>,
        waiting: Option<Acquire>,
        waiting_long: Option<Acquire>,
        // Held between polls only while waiting for the main gate.
        long: Option<OwnedSemaphorePermit>,
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

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let gate = this.gate.clone();
        // The long permit is taken before queueing for the main one, never while a main permit
        // may already be granted to this call: waiting for the long permit with a main one in
        // hand would deadlock against the long call that waits for it.
        let is_long = this.started.is_some_and(|started| started.elapsed() >= LONG_AFTER);
        if is_long && this.long.is_none() && this.waiting.is_none() {
            gate.long_seen_ms.store(gate.now_ms(), Ordering::Relaxed);
            match acquire(&gate.long, this.waiting_long, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(permit) => *this.long = permit,
            }
        }
        let permit = match acquire(&gate.main, this.waiting, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(permit) => permit,
        };
        // A call's time starts when it first runs, not while it queues.
        this.started.get_or_insert_with(Instant::now);
        let out = this.inner.poll(cx);
        drop(permit);
        // Given back after each poll, like the main permit: long calls take turns.
        *this.long = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A future that counts how many of its kind are being polled at once, and yields `n` times.
    struct Busy {
        yields: usize,
        inside: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Future for Busy {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(1));
            self.inside.fetch_sub(1, Ordering::SeqCst);
            if self.yields == 0 {
                return Poll::Ready(());
            }
            self.yields -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn long_and_short_calls_all_finish_and_never_exceed_the_permits() {
        let gate = Gate::new(2);
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        // Each poll sleeps 1 ms, so every call past its first poll is long.
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let busy = Busy { yields: if i % 2 == 0 { 30 } else { 1 }, inside: inside.clone(), most: most.clone() };
                tokio::spawn(gate.run(busy))
            })
            .collect();
        let all = async {
            for task in tasks {
                task.await.expect("task");
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), all).await.expect("no call waits forever");
        assert!(most.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_calls_run_at_once_than_there_are_permits() {
        let gate = Gate::new(2);
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| tokio::spawn(gate.run(Busy { yields: 5, inside: inside.clone(), most: most.clone() })))
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} ran at once with 2 permits");
    }
}
