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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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

/// The process's gate, and the one for long calls.
fn gates() -> &'static (Arc<Semaphore>, Arc<Semaphore>) {
    static GATES: OnceLock<(Arc<Semaphore>, Arc<Semaphore>)> = OnceLock::new();
    GATES.get_or_init(|| (Arc::new(Semaphore::new(permits())), Arc::new(Semaphore::new(1))))
}

/// Milliseconds after [`origin`] when a long call last ran, so that the epoch ticker can tick
/// faster while one does (see `wasm.rs`).
static LONG_SEEN_MS: AtomicU64 = AtomicU64::new(0);

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(origin().elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
}

/// Whether a long call ran within the last `within`.
pub fn long_call_within(within: Duration) -> bool {
    let seen = LONG_SEEN_MS.load(Ordering::Relaxed);
    seen != 0 && now_ms().saturating_sub(seen) <= u64::try_from(within.as_millis()).unwrap_or(u64::MAX)
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

pin_project_lite::pin_project! {
    /// A plugin call that holds a permit of the gate whenever it runs.
    pub struct Gated<F> {
        #[pin]
        inner: F,
        started: Option<Instant>,
        waiting: Option<Acquire>,
        waiting_long: Option<Acquire>,
        // Held between polls only while waiting for the main gate.
        long: Option<OwnedSemaphorePermit>,
    }
}

/// Runs `call` through the process's gate.
pub fn gated<F: Future>(call: F) -> Gated<F> {
    Gated { inner: call, started: None, waiting: None, waiting_long: None, long: None }
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
        let (gate, long_gate) = gates();
        let started = *this.started.get_or_insert_with(Instant::now);
        if this.long.is_none() && started.elapsed() >= LONG_AFTER {
            LONG_SEEN_MS.store(now_ms(), Ordering::Relaxed);
            match acquire(long_gate, this.waiting_long, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(permit) => *this.long = permit,
            }
        }
        let permit = match acquire(gate, this.waiting, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(permit) => permit,
        };
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
    async fn no_more_calls_run_at_once_than_there_are_permits() {
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| tokio::spawn(gated(Busy { yields: 5, inside: inside.clone(), most: most.clone() })))
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most >= 1 && most <= permits(), "{most} ran at once with {} permits", permits());
    }
}
