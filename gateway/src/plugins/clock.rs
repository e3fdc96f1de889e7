//! The time a plugin call is charged against its deadline: the time it runs, and the time it
//! waits for the host's state (a Redis reply, a ledger sync), which it asked for. Never the time
//! the gateway keeps it waiting: queued for the gate's permit or for a worker after a yield, or
//! off the CPU because the kernel gave the thread's core to something else (a loaded machine, a
//! container whose CPU quota is spent).
//!
//! Wall time since the call began, which this replaces, faulted healthy calls whenever the machine
//! was busy: on two loaded cores a call of a millisecond was now and then off the CPU for ten, so
//! the cost policy's `on_complete` lost its ledger record, and a pod throttled by its CPU limit
//! would fault every call in flight and soon quarantine every plugin.
//!
//! A call's future is polled in *segments* ([`Clocked`] marks where each begins and ends). Inside
//! one, time is the thread's CPU time, which a descheduled thread does not accrue; reading it is a
//! system call (about a microsecond on a VM), more than a warm call of a well-behaved plugin, so
//! it is read only at the epoch callbacks (at most one per tick, and only a call that runs that
//! long sees one), at the end of a segment that had one, and at the start of every segment of a
//! call already long. Before a segment's first callback the time is wall time capped at
//! [`TICK`]: guest code reaches a callback within a tick of running, so the cap never undercounts
//! code that runs, and it bounds what one preemption costs a short call. Between segments nothing
//! is charged, unless the call was waiting on a state call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::gate::YIELD_AFTER;
use super::wasm::TICK;

/// The clock of one instance's current call, shared by its store (the epoch callback, the imports)
/// and the [`Clocked`] future that polls the call.
#[derive(Debug, Default)]
pub struct CallClock(Mutex<Segments>);

#[derive(Debug, Default)]
struct Segments {
    /// Charged so far, not counting the open segment since `mark`.
    charged: Duration,
    /// The open segment (a poll in progress): when it began, or was last charged up to.
    mark: Option<Instant>,
    /// The thread's CPU time at `mark`, once read in this segment.
    cpu_mark: Option<Duration>,
    /// A state call is in progress: if the call is suspended now, it is waiting for the host.
    waiting: bool,
    /// A suspension during a state call began here; it is charged when the next segment begins.
    gap: Option<Instant>,
}

impl CallClock {
    /// A new call begins: nothing charged yet.
    pub fn reset(&self) {
        *self.lock() = Segments::default();
    }

    /// What the call has been charged so far, without reading the CPU clock (the open segment at
    /// wall time since it was last charged). For the wait a state call is given.
    pub fn charged(&self) -> Duration {
        let s = self.lock();
        let open = s.mark.map_or(Duration::ZERO, |mark| {
            let wall = mark.elapsed();
            if s.cpu_mark.is_some() { wall } else { wall.min(TICK) }
        });
        s.charged + open
    }

    /// At an epoch callback, inside a segment: charges the segment so far and returns the total.
    pub fn tick(&self) -> Duration {
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(mark) = s.mark {
            let now = Instant::now();
            let cpu = thread_cpu();
            let portion = portion(mark, s.cpu_mark, now, cpu);
            s.charged += portion;
            s.mark = Some(now);
            s.cpu_mark = cpu;
        }
        s.charged
    }

    /// A state call is in progress until the guard is dropped: time suspended meanwhile is the
    /// plugin's.
    pub fn waiting(&self) -> Waiting<'_> {
        self.lock().waiting = true;
        Waiting(self)
    }

    fn enter(&self) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let now = Instant::now();
        if let Some(gap) = s.gap.take() {
            s.charged += now.saturating_duration_since(gap);
        }
        s.mark = Some(now);
        // A call that is already long has its polls measured exactly from their start: it is the
        // kind that runs through many segments, and its polls are long enough to afford it.
        s.cpu_mark = if s.charged >= YIELD_AFTER { thread_cpu() } else { None };
    }

    fn exit(&self) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let now = Instant::now();
        if let Some(mark) = s.mark.take() {
            let cpu = s.cpu_mark.and_then(|_| thread_cpu());
            s.charged += portion(mark, s.cpu_mark, now, cpu);
        }
        s.cpu_mark = None;
        if s.waiting {
            s.gap = Some(now);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The part of a segment from `mark` to `now`: CPU time when it was read at both ends, else wall
/// time capped at a tick.
fn portion(mark: Instant, cpu_mark: Option<Duration>, now: Instant, cpu: Option<Duration>) -> Duration {
    match (cpu_mark, cpu) {
        (Some(from), Some(to)) => to.saturating_sub(from),
        _ => now.saturating_duration_since(mark).min(TICK),
    }
}

/// A state call in progress (see [`CallClock::waiting`]).
#[derive(Debug)]
pub struct Waiting<'a>(&'a CallClock);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting = false;
    }
}

/// The CPU time of the calling thread; `None` where the system has no such clock (wall time,
/// capped per tick, is used instead).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "freebsd"))]
fn thread_cpu() -> Option<Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(Duration::new(u64::try_from(t.tv_sec).ok()?, u32::try_from(t.tv_nsec).ok()?))
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "freebsd")))]
fn thread_cpu() -> Option<Duration> {
    None
}

pin_project_lite::pin_project! {
    /// A plugin call's future, each poll of which is a segment of its [`CallClock`].
    pub struct Clocked<'c, F> {
        clock: &'c CallClock,
        #[pin]
        call: F,
    }
}

impl<'c, F> Clocked<'c, F> {
    pub fn new(clock: &'c CallClock, call: F) -> Self {
        Self { clock, call }
    }
}

impl<F: Future> Future for Clocked<'_, F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        this.clock.enter();
        let out = this.call.poll(cx);
        this.clock.exit();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::thread::sleep;

    use super::*;

    /// Burns about `d` of this thread's CPU time.
    fn spin(d: Duration) {
        let started = (Instant::now(), thread_cpu());
        let done = || match started {
            (_, Some(cpu)) => thread_cpu().is_some_and(|now| now >= cpu + d),
            (wall, None) => wall.elapsed() >= d,
        };
        while !done() {
            std::hint::black_box(0);
        }
    }

    /// Polls `call` once, as one segment.
    fn segment(clock: &CallClock, call: impl FnOnce()) {
        let mut once = Some(call);
        let clocked = pin!(Clocked::new(
            clock,
            std::future::poll_fn(|_| {
                (once.take().expect("polled once"))();
                Poll::Pending::<()>
            })
        ));
        assert!(clocked.poll(&mut Context::from_waker(Waker::noop())).is_pending());
    }

    #[test]
    fn time_between_polls_is_not_charged() {
        let clock = CallClock::default();
        segment(&clock, || spin(Duration::from_millis(1)));
        // Queued for a permit or a worker: the call is not running.
        sleep(Duration::from_millis(40));
        segment(&clock, || spin(Duration::from_millis(1)));
        let charged = clock.charged();
        assert!(charged >= Duration::from_millis(2), "{charged:?}");
        assert!(charged < Duration::from_millis(20), "the 40 ms between the polls were charged: {charged:?}");
    }

    #[test]
    fn a_wait_for_the_hosts_state_is_charged() {
        let clock = CallClock::default();
        let waiting = clock.waiting();
        segment(&clock, || {});
        sleep(Duration::from_millis(30));
        // The answer arrives: the state call returns within the poll that resumes it.
        segment(&clock, || drop(waiting));
        // Suspended again, no longer in a state call: not charged.
        sleep(Duration::from_millis(30));
        segment(&clock, || {});
        let charged = clock.charged();
        assert!(charged >= Duration::from_millis(30), "{charged:?}");
        assert!(charged < Duration::from_millis(50), "{charged:?}");
    }

    #[test]
    fn running_code_is_charged_and_a_descheduled_thread_is_not() {
        if thread_cpu().is_none() {
            return;
        }
        let clock = CallClock::default();
        // A long segment with callbacks every few milliseconds, as epoch ticks make: the spinning
        // is charged, the sleeping (a thread the kernel took away) only up to the first callback,
        // and never more than a tick.
        segment(&clock, || {
            sleep(Duration::from_millis(30));
            let at_first = clock.tick();
            assert!(at_first <= TICK, "{at_first:?}");
            for _ in 0..4 {
                spin(Duration::from_millis(5));
                clock.tick();
            }
            sleep(Duration::from_millis(30));
            clock.tick();
            spin(Duration::from_millis(5));
        });
        let charged = clock.charged();
        assert!(charged >= Duration::from_millis(25), "{charged:?}");
        assert!(charged <= Duration::from_millis(25) + TICK + Duration::from_millis(5), "{charged:?}");

        // Once long, a call's segments are CPU time from their start.
        segment(&clock, || sleep(Duration::from_millis(30)));
        let again = clock.charged();
        assert!(again - charged < Duration::from_millis(2), "{charged:?} then {again:?}");
    }

    #[test]
    fn a_short_preempted_segment_costs_at_most_a_tick() {
        let clock = CallClock::default();
        segment(&clock, || sleep(Duration::from_millis(30)));
        assert_eq!(clock.charged(), TICK);
        clock.reset();
        assert_eq!(clock.charged(), Duration::ZERO);
    }
}
