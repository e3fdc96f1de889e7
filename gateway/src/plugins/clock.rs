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
//!
//! What is not charged still has a bound: a call also ends once it is [`wall_limit`] old from
//! start to end, however little of that it ran. Without it, calls that each need their whole
//! deadline of CPU, arriving faster than the plugin threads can run them (a hostile plugin
//! hammered), queue without end: each waits its turn uncharged, and its request waits with it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::gate::YIELD_AFTER;
use super::wasm::TICK;

/// No value in an optional field below.
const NONE: u64 = u64::MAX;

/// The least a call's [`wall_limit`] adds to its deadline.
pub const WALL_GRACE: Duration = Duration::from_secs(1);

/// How old a call with `deadline` may grow, from start to end, before it ends as if over its
/// deadline: the deadline, plus the deadline again or [`WALL_GRACE`], whichever is longer. Generous
/// on purpose: it is there to bound how long a request can wait on a plugin that cannot get its
/// turn, not to fault healthy calls on a busy machine (which the charged time is for).
pub fn wall_limit(deadline: Duration) -> Duration {
    deadline.saturating_add(deadline.max(WALL_GRACE))
}

/// The clock of one instance's current call, shared by its store (the epoch callback, the imports)
/// and the [`Clocked`] future that polls the call.
///
/// Only the task running the call touches it, one poll at a time (the runtime orders one poll
/// before the next, on whatever thread), so each field is a relaxed atomic: a plain load or store,
/// where a lock would cost more than a warm call's whole bookkeeping. A call that finishes in one
/// poll, the usual case, reads the wall clock once, in [`CallClock::reset`].
#[derive(Debug)]
pub struct CallClock {
    origin: Instant,
    /// When the current call began, in nanoseconds after `origin`.
    started: AtomicU64,
    /// Nanoseconds charged so far, not counting the open segment since `mark`.
    charged: AtomicU64,
    /// The open segment (a poll in progress): when it began, or was last charged up to, in
    /// nanoseconds after `origin`; [`NONE`] between polls.
    mark: AtomicU64,
    /// The thread's CPU time at `mark`, once read in this segment; else [`NONE`].
    cpu_mark: AtomicU64,
    /// A state call is in progress: if the call is suspended now, it is waiting for the host.
    waiting: AtomicBool,
    /// A suspension during a state call began here (after `origin`); it is charged when the next
    /// segment begins. [`NONE`]: no such suspension.
    gap: AtomicU64,
}

impl Default for CallClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            started: AtomicU64::new(0),
            charged: AtomicU64::new(0),
            mark: AtomicU64::new(NONE),
            cpu_mark: AtomicU64::new(NONE),
            waiting: AtomicBool::new(false),
            gap: AtomicU64::new(NONE),
        }
    }
}

impl CallClock {
    /// A new call begins at `now`, which is also where its first poll begins (the caller polls it
    /// at once): nothing charged yet.
    pub fn reset(&self, now: Instant) {
        let now = self.at(now);
        self.started.store(now, Relaxed);
        self.charged.store(0, Relaxed);
        self.mark.store(now, Relaxed);
        self.cpu_mark.store(NONE, Relaxed);
        self.waiting.store(false, Relaxed);
        self.gap.store(NONE, Relaxed);
    }

    /// What the call has been charged so far, without reading the CPU clock (the open segment at
    /// wall time since it was last charged). For the wait a state call is given.
    pub fn charged(&self) -> Duration {
        let mut ns = self.charged.load(Relaxed);
        let mark = self.mark.load(Relaxed);
        if mark != NONE {
            let open = self.at(Instant::now()).saturating_sub(mark);
            ns += if self.cpu_mark.load(Relaxed) == NONE { open.min(tick_ns()) } else { open };
        }
        Duration::from_nanos(ns)
    }

    /// The call was made at `at`, before [`Self::reset`] (it waited for an instance to be made, say):
    /// its [age](Self::age) counts from there.
    pub fn began(&self, at: Instant) {
        self.started.store(self.at(at), Relaxed);
    }

    /// How old the current call is: wall time since [`Self::reset`] (or [`Self::began`]), charged
    /// or not.
    pub fn age(&self) -> Duration {
        Duration::from_nanos(self.at(Instant::now()).saturating_sub(self.started.load(Relaxed)))
    }

    /// At an epoch callback, inside a segment: charges the segment so far and returns the total,
    /// and the call's [age](Self::age).
    pub fn tick(&self) -> (Duration, Duration) {
        let now = self.at(Instant::now());
        let mark = self.mark.load(Relaxed);
        if mark != NONE {
            let cpu = thread_cpu();
            self.charged.fetch_add(portion(mark, self.cpu_mark.load(Relaxed), now, cpu), Relaxed);
            self.mark.store(now, Relaxed);
            self.cpu_mark.store(cpu, Relaxed);
        }
        let age = now.saturating_sub(self.started.load(Relaxed));
        (Duration::from_nanos(self.charged.load(Relaxed)), Duration::from_nanos(age))
    }

    /// A state call is in progress until the guard is dropped: time suspended meanwhile is the
    /// plugin's.
    pub fn waiting(&self) -> Waiting<'_> {
        self.waiting.store(true, Relaxed);
        Waiting(self)
    }

    /// A poll begins: a segment opens, unless the call's first one is open since [`Self::reset`].
    fn enter(&self) {
        if self.mark.load(Relaxed) != NONE {
            return;
        }
        let now = self.at(Instant::now());
        let mut charged = self.charged.load(Relaxed);
        let gap = self.gap.swap(NONE, Relaxed);
        if gap != NONE {
            charged += now.saturating_sub(gap);
            self.charged.store(charged, Relaxed);
        }
        self.mark.store(now, Relaxed);
        // A call that is already long has its polls measured exactly from their start: it is the
        // kind that runs through many segments, and its polls are long enough to afford it.
        let exact = Duration::from_nanos(charged) >= YIELD_AFTER;
        self.cpu_mark.store(if exact { thread_cpu() } else { NONE }, Relaxed);
    }

    /// A poll ends. When the call is over (`done`) nothing needs its last segment.
    fn exit(&self, done: bool) {
        let mark = self.mark.swap(NONE, Relaxed);
        if done || mark == NONE {
            return;
        }
        let now = self.at(Instant::now());
        let cpu_mark = self.cpu_mark.swap(NONE, Relaxed);
        let cpu = if cpu_mark == NONE { NONE } else { thread_cpu() };
        self.charged.fetch_add(portion(mark, cpu_mark, now, cpu), Relaxed);
        if self.waiting.load(Relaxed) {
            self.gap.store(now, Relaxed);
        }
    }

    /// `t` in nanoseconds after `origin`.
    fn at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(NONE - 1)
    }
}

fn tick_ns() -> u64 {
    TICK.as_nanos() as u64
}

/// The part of a segment from `mark` to `now`: CPU time when it was read at both ends, else wall
/// time capped at a tick.
fn portion(mark: u64, cpu_mark: u64, now: u64, cpu: u64) -> u64 {
    if cpu_mark != NONE && cpu != NONE { cpu.saturating_sub(cpu_mark) } else { now.saturating_sub(mark).min(tick_ns()) }
}

/// A state call in progress (see [`CallClock::waiting`]).
#[derive(Debug)]
pub struct Waiting<'a>(&'a CallClock);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.store(false, Relaxed);
    }
}

/// The CPU time of the calling thread in nanoseconds; [`NONE`] where the system has no such clock
/// (wall time, capped per tick, is used instead).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "freebsd"))]
fn thread_cpu() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    match (u64::try_from(t.tv_sec), u64::try_from(t.tv_nsec)) {
        (Ok(s), Ok(ns)) => s.saturating_mul(1_000_000_000).saturating_add(ns).min(NONE - 1),
        _ => NONE,
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "freebsd")))]
fn thread_cpu() -> u64 {
    NONE
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
        this.clock.exit(out.is_ready());
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
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let d_ns = d.as_nanos() as u64;
        let done = || if cpu == NONE { wall.elapsed() >= d } else { thread_cpu() >= cpu + d_ns };
        while !done() {
            std::hint::black_box(0);
        }
    }

    /// Polls `call` once, as one segment of a call that is not over.
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
        clock.reset(Instant::now());
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
        clock.reset(Instant::now());
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
        if thread_cpu() == NONE {
            return;
        }
        let clock = CallClock::default();
        clock.reset(Instant::now());
        // A long segment with callbacks every few milliseconds, as epoch ticks make: the spinning
        // is charged, the sleeping (a thread the kernel took away) only up to the first callback,
        // and never more than a tick.
        segment(&clock, || {
            sleep(Duration::from_millis(30));
            let (at_first, _) = clock.tick();
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
        clock.reset(Instant::now());
        segment(&clock, || sleep(Duration::from_millis(30)));
        assert_eq!(clock.charged(), TICK);
        // A new call: nothing charged but its own first moments.
        clock.reset(Instant::now());
        assert!(clock.charged() < Duration::from_millis(1));
    }

    #[test]
    fn a_calls_age_counts_the_time_it_is_not_charged_and_starts_again_with_the_next_call() {
        let clock = CallClock::default();
        clock.reset(Instant::now());
        segment(&clock, || {});
        // Waiting its turn: not charged, but the call grows older.
        sleep(Duration::from_millis(30));
        segment(&clock, || {});
        let (charged, age) = clock.tick();
        assert!(charged < Duration::from_millis(10), "{charged:?}");
        assert!(age >= Duration::from_millis(30) && clock.age() >= age, "{age:?}");
        clock.reset(Instant::now());
        assert!(clock.age() < Duration::from_millis(10));
        // A call made a while before it could begin is as old as that.
        let made = Instant::now();
        sleep(Duration::from_millis(20));
        clock.reset(Instant::now());
        clock.began(made);
        assert!(clock.age() >= Duration::from_millis(20) && clock.charged() < Duration::from_millis(10));
    }

    #[test]
    fn the_wall_limit_is_the_deadline_plus_the_longer_of_itself_and_the_grace() {
        assert_eq!(wall_limit(Duration::from_millis(10)), Duration::from_millis(1010));
        assert_eq!(wall_limit(Duration::from_millis(50)), Duration::from_millis(1050));
        assert_eq!(wall_limit(Duration::from_secs(3)), Duration::from_secs(6));
        assert_eq!(wall_limit(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn a_segment_is_charged_from_the_reset_that_begins_the_call() {
        let clock = CallClock::default();
        let started = Instant::now();
        clock.reset(started);
        spin(Duration::from_millis(2));
        // The first poll, already open since the reset, goes on.
        segment(&clock, || spin(Duration::from_millis(1)));
        let charged = clock.charged();
        assert!(charged >= Duration::from_millis(3), "{charged:?}");
        assert!(charged <= started.elapsed(), "{charged:?}");
    }
}
