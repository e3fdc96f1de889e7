//! How many threads may run plugin code at once. Plugin calls run on the request workers (handing
//! each to another pool would cost a cross-thread wake-up per hook, more than a whole warm call);
//! with a plugin yielding every few microseconds (fuel) that is cheap, but a few plugins spinning
//! until their deadlines could still hold every worker in turn. The gate lets at most
//! [`permits`] workers be *inside* a plugin at any moment: a plugin call takes a permit for each
//! poll and gives it back when the poll returns (at the next yield), so at least one worker always
//! serves requests that need no plugin, and the rest of the queue waits its turn, first come first
//! served.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One less than the cores (the runtime's worker count), and at least one.
pub fn permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).max(1)
}

/// The process's gate.
fn gate() -> &'static Arc<Semaphore> {
    static GATE: OnceLock<Arc<Semaphore>> = OnceLock::new();
    GATE.get_or_init(|| Arc::new(Semaphore::new(permits())))
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

pin_project_lite::pin_project! {
    /// A plugin call that holds a permit of the gate whenever it runs.
    pub struct Gated<F> {
        #[pin]
        inner: F,
        waiting: Option<Acquire>,
    }
}

/// Runs `call` through the process's gate.
pub fn gated<F: Future>(call: F) -> Gated<F> {
    Gated { inner: call, waiting: None }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let permit = match this.waiting.as_mut() {
            // Queued behind others: wait for the permit handed over in turn.
            Some(waiting) => match waiting.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(permit) => {
                    *this.waiting = None;
                    permit.ok()
                }
            },
            None => match gate().clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let mut waiting: Acquire = Box::pin(gate().clone().acquire_owned());
                    match waiting.as_mut().poll(cx) {
                        Poll::Pending => {
                            *this.waiting = Some(waiting);
                            return Poll::Pending;
                        }
                        Poll::Ready(permit) => permit.ok(),
                    }
                }
            },
        };
        let out = this.inner.poll(cx);
        drop(permit);
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
